//! The threads that hash: one per core in Linux's idle scheduling class, and a rescuer.
//!
//! An argon2id hash takes a whole core for tens of milliseconds, and logins come in bursts.
//! Verification shares those cores and sits on the path of every request of every app behind
//! tessera, so the hashing threads run in the idle class (`SCHED_IDLE`): they get whatever CPU
//! time nothing else wants, all of it on an idle machine (login throughput is unchanged), and a
//! woken request thread takes their core at once. Measured with the harness on the project's
//! 2-vCPU VM (bench/NOTES.md, an A/B of two runs each): verify p99 during saturating logins
//! 1.93× and 2.05× its idle value against 2.31× and 2.44× for threads at nice 10 (the pool's
//! priority before), verification throughput during logins 16–28% higher.
//!
//! A thread of the idle class gets next to nothing while the cores are saturated (a weight of 3
//! against 1,024 for a normal thread): a login behind it would wait for seconds. Leaving the
//! idle class needs a privilege (`CAP_SYS_NICE`), so the pool cannot lift a starved thread.
//! Instead one more thread, the rescuer, runs at nice 10 and watches: when jobs wait and no
//! hashing thread has finished one for [`STALL`], it runs the oldest itself, whether a starved
//! thread has started it or not. The first answer wins; the other run is the wasted work of a
//! thread that gets almost no CPU anyway.
//!
//! Where the idle class is refused (not Linux, a seccomp policy) the hashing threads run at
//! nice 10, as the rescuer does.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Memory;

/// How long jobs may wait with no hashing thread finishing one before the rescuer steps in. A
/// hash takes ~20 ms of CPU, so a quarter second without one finished means starved threads,
/// not a long queue. (An imported hash with costlier parameters than ours may also take this
/// long; the rescuer then runs it a second time, on one thread.)
pub(super) const STALL: Duration = Duration::from_millis(250);

/// What a job does on a thread's memory; it delivers its own answer (so a second run of it,
/// by the rescuer, can find the answer given and skip the work).
pub(super) type Work = Box<dyn Fn(&mut Memory) + Send + Sync>;

/// The hashing threads and their queue. Dropping it stops the threads.
pub(super) struct Pool {
    shared: Arc<Shared>,
}

/// How a pool runs.
pub(super) struct Tuning {
    /// Hashing threads (the idle class); the rescuer comes on top.
    pub threads: usize,
    /// Jobs queued or running at most; past that [`Pool::submit`] refuses.
    pub max_waiting: usize,
    /// How long a thread keeps its argon2 memory after its last job.
    pub keep_memory_for: Duration,
    /// [`STALL`], but for tests.
    pub stall: Duration,
}

struct Shared {
    state: Mutex<State>,
    /// Hashing threads wait here for a job nobody has started.
    work: Condvar,
    /// The rescuer waits here.
    watch: Condvar,
    max_waiting: usize,
}

struct State {
    /// Jobs not yet finished, oldest first: queued, running, or abandoned by their caller and
    /// not yet skipped. Each holds its place against `max_waiting` until a thread is done with
    /// it, so a caller that stops waiting gives its place back without leaking it.
    jobs: VecDeque<Entry>,
    /// When a hashing thread last finished a job.
    last_progress: Instant,
    /// The pool was dropped: the threads end.
    closed: bool,
}

struct Entry {
    job: Arc<Job>,
    started: bool,
}

struct Job {
    work: Work,
    since: Instant,
}

impl Pool {
    /// Starts the threads, each with its own `memory()`.
    pub(super) fn start(tuning: Tuning, memory: impl Fn() -> Memory) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                last_progress: Instant::now(),
                closed: false,
            }),
            work: Condvar::new(),
            watch: Condvar::new(),
            max_waiting: tuning.max_waiting,
        });
        let keep = tuning.keep_memory_for;
        for i in 0..tuning.threads.max(1) {
            let (shared, memory) = (Arc::clone(&shared), memory());
            std::thread::Builder::new()
                .name(format!("tessera-hash-{i}"))
                .spawn(move || hashing_thread(&shared, memory, keep))?;
        }
        let (watched, memory, stall) = (Arc::clone(&shared), memory(), tuning.stall);
        std::thread::Builder::new()
            .name("tessera-rescue".into())
            .spawn(move || rescuer(&watched, memory, keep, stall))?;
        Ok(Self { shared })
    }

    /// Queues `work`; false when `max_waiting` jobs are queued or running already.
    pub(super) fn submit(&self, work: Work) -> bool {
        let mut state = self.shared.lock();
        if state.jobs.len() >= self.shared.max_waiting {
            return false;
        }
        let job = Arc::new(Job {
            work,
            since: Instant::now(),
        });
        state.jobs.push_back(Entry {
            job,
            started: false,
        });
        drop(state);
        self.shared.work.notify_one();
        self.shared.watch.notify_one();
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.watch.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; a poisoned one holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job nobody has started, or `None` once the pool is closed. Frees `memory` after
    /// `keep` without a job.
    fn next_job(&self, memory: &mut Memory, keep: Duration) -> Option<Arc<Job>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(entry) = state.jobs.iter_mut().find(|e| !e.started) {
                entry.started = true;
                return Some(Arc::clone(&entry.job));
            }
            if !memory.is_held() {
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let (guard, waited) = self
                .work
                .wait_timeout(state, keep)
                .unwrap_or_else(PoisonError::into_inner);
            state = guard;
            if waited.timed_out() {
                drop(state);
                memory.release();
                state = self.lock();
            }
        }
    }

    /// The job the rescuer should run now: the oldest, once jobs have waited [`STALL`] with
    /// no hashing thread finishing one. Otherwise how long to wait before looking again.
    fn stalled_job(
        &self,
        state: &mut State,
        stall: Duration,
    ) -> Result<Arc<Job>, Option<Duration>> {
        let last_progress = state.last_progress;
        let Some(oldest) = state.jobs.front_mut() else {
            return Err(None);
        };
        let stalled_for = oldest.job.since.max(last_progress).elapsed();
        if stalled_for < stall {
            return Err(Some(stall - stalled_for));
        }
        oldest.started = true;
        Ok(Arc::clone(&oldest.job))
    }

    /// `job` is done (answered, failed or skipped) on some thread; `progress` when that was a
    /// hashing thread.
    fn finished(&self, job: &Arc<Job>, progress: bool) {
        let mut state = self.lock();
        if let Some(i) = state.jobs.iter().position(|e| Arc::ptr_eq(&e.job, job)) {
            state.jobs.remove(i);
        }
        if progress {
            state.last_progress = Instant::now();
        }
    }
}

fn hashing_thread(shared: &Shared, mut memory: Memory, keep: Duration) {
    if !enter_idle_class() {
        lower_priority();
    }
    while let Some(job) = shared.next_job(&mut memory, keep) {
        run(&job, &mut memory);
        shared.finished(&job, true);
    }
}

fn rescuer(shared: &Shared, mut memory: Memory, keep: Duration, stall: Duration) {
    lower_priority();
    let mut last_job = Instant::now();
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                let mut wait = match shared.stalled_job(&mut state, stall) {
                    Ok(job) => {
                        // Worth an operator's eye: the cores were saturated for a while.
                        metrics::counter!("tessera_password_hash_rescues_total").increment(1);
                        break job;
                    }
                    Err(wait) => wait,
                };
                if memory.is_held() {
                    let Some(left) = keep.checked_sub(last_job.elapsed()) else {
                        drop(state);
                        memory.release();
                        state = shared.lock();
                        continue;
                    };
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
                state = match wait {
                    Some(wait) => shared
                        .watch
                        .wait_timeout(state, wait)
                        .map_or_else(|e| e.into_inner().0, |(s, _)| s),
                    None => shared
                        .watch
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        run(&job, &mut memory);
        shared.finished(&job, false);
        last_job = Instant::now();
    }
}

/// Runs a job. A panic fails its one job (its caller sees the answer dropped), not the thread:
/// the pool keeps its size.
fn run(job: &Job, memory: &mut Memory) {
    let work = std::panic::AssertUnwindSafe(|| (job.work)(memory));
    if std::panic::catch_unwind(work).is_err() && memory.is_held() {
        memory.release();
    }
}

/// Moves the calling thread to the idle scheduling class; false where that is refused.
#[cfg(target_os = "linux")]
fn enter_idle_class() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    #[allow(unsafe_code)]
    // SAFETY: with pid 0, sched_setscheduler changes only the calling thread's policy; moving to
    // SCHED_IDLE lowers it, which needs no privilege, and a failure leaves the policy as it was.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    set == 0
}

#[cfg(not(target_os = "linux"))]
fn enter_idle_class() -> bool {
    false
}

/// Lowers the calling thread's priority to nice 10: it still yields to request handling, but
/// gets a share of saturated cores (about a tenth of one against a normal thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: setpriority with the caller's own thread id changes only that thread's nice value;
    // raising one's nice value needs no privilege, and a failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}
