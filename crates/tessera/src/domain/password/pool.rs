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
//! Instead one more thread, the rescuer, runs at nice 10 and watches: when jobs wait, no
//! hashing thread has finished one for [`STALL`], and the hashing threads are not getting the
//! CPU (their CPU clocks, read over [`STALL`] / 5), it runs the oldest job itself, whether a
//! starved thread has started it or not. The first answer wins; the other run is the wasted work
//! of a thread that gets almost no CPU anyway. A hash that is slow but running (an imported
//! bcrypt or argon2 hash costlier than ours) is left to its thread, not run twice.
//!
//! Where the idle class is refused (not Linux, a seccomp policy) the hashing threads run at
//! nice 10, as the rescuer does.
//!
//! The idle class is not enough on its own: a request thread woken on a core that is busy,
//! even with an idle-class thread, waits for a reschedule interrupt, where one woken on an idle
//! core runs at once. In every run of the harness on the project's 2-vCPU VM, one hashing
//! thread kept the verify p99 during a login burst lower than one per core (1.75× its idle
//! value against 2.20×, 1.76× against 2.11×; bench/NOTES.md), at half the logins a second. So
//! while other requests than logins come in ([`RequestLoad`], [`TRAFFIC_PER_SECOND`]), at
//! most one thread fewer than the pool's hashes at once (never fewer than one); with no such
//! traffic every thread hashes, and a login burst alone gets every core. Nor is a core held
//! back behind a slow hash (an imported one costlier than ours, which the rescuer's probe tells
//! from a starved one): it would hold up every login queued behind it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Memory;

/// How long jobs may wait with no hashing thread finishing one before the rescuer looks at
/// whether the hashing threads get the CPU. A hash of ours takes ~20 ms of CPU, so a quarter
/// second without one finished means starved threads or a costlier imported hash, which the
/// threads' CPU clocks tell apart.
pub(super) const STALL: Duration = Duration::from_millis(250);

/// Below this share of one core, summed over the hashing threads while jobs are stalled, they
/// are starved (the idle class gets ~0.3% of a core beside one busy normal thread); a thread
/// hashing on a core of its own gets all of it.
const STARVED_BELOW: u32 = 4; // 1/4 of a core

/// How often, at most, the pool reads the request count, and the window that reading covers:
/// short against a burst of logins (a hash takes ~20 ms), long enough to count something.
const LOAD_SAMPLE: Duration = Duration::from_millis(50);

/// Requests a second other than the logins themselves (requests that queued no hash) that count
/// as traffic to leave a core to: a few percent of a core of verification.
const TRAFFIC_PER_SECOND: u64 = 1_000;

/// How many requests the server has taken so far (every route, logins included): how the pool
/// tells request traffic from a login burst alone, whose requests match its hashes.
pub type RequestLoad = Box<dyn Fn() -> u64 + Send>;

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
    /// The server's request count; `None` hashes on every thread always.
    pub requests: Option<RequestLoad>,
    /// Hashing threads in the idle class (else at the caller's priority). Always, but in tests
    /// whose premise is a hashing thread that gets the CPU: on a machine busy with anything
    /// else (a compiler beside the test run) an idle-class thread gets none.
    pub idle_class: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Hashing threads wait here for a job nobody has started.
    work: Condvar,
    /// The rescuer waits here.
    watch: Condvar,
    max_waiting: usize,
    /// Hashing threads (the rescuer not counted).
    threads: usize,
}

struct State {
    /// Jobs not yet finished, oldest first: queued, running, or abandoned by their caller and
    /// not yet skipped. Each holds its place against `max_waiting` until a thread is done with
    /// it, so a caller that stops waiting gives its place back without leaking it.
    jobs: VecDeque<Entry>,
    /// When a hashing thread last finished a job.
    last_progress: Instant,
    /// The hashing threads' CPU clocks (empty where the platform has none).
    clocks: Vec<cpu::ThreadClock>,
    /// Jobs a hashing thread is running now.
    hashing: usize,
    /// Jobs ever submitted.
    submitted: u64,
    /// Whether requests are being served, as last read.
    traffic: Option<Traffic>,
    /// The pool was dropped: the threads end.
    closed: bool,
}

struct Entry {
    job: Arc<Job>,
    started: bool,
    /// The rescuer found the jobs stalled while this one ran with its thread getting the CPU:
    /// a slow hash, beside which the thread held back for requests may start the next job.
    slow: bool,
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
                clocks: Vec::new(),
                hashing: 0,
                submitted: 0,
                traffic: tuning.requests.map(Traffic::new),
                closed: false,
            }),
            work: Condvar::new(),
            watch: Condvar::new(),
            max_waiting: tuning.max_waiting,
            threads: tuning.threads.max(1),
        });
        let (keep, idle) = (tuning.keep_memory_for, tuning.idle_class);
        for i in 0..shared.threads {
            let (shared, memory) = (Arc::clone(&shared), memory());
            std::thread::Builder::new()
                .name(format!("tessera-hash-{i}"))
                .spawn(move || hashing_thread(&shared, memory, keep, idle))?;
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
            slow: false,
        });
        state.submitted += 1;
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
            if let Some(i) = state.jobs.iter().position(|e| !e.started) {
                if state.may_start(self.threads) {
                    state.hashing += 1;
                    state.jobs[i].started = true;
                    return Some(Arc::clone(&state.jobs[i].job));
                }
                // Held back to leave a core to requests: look again when the load is read anew
                // (a finishing hash takes the next job on its own thread meanwhile).
                state = self
                    .work
                    .wait_timeout(state, LOAD_SAMPLE)
                    .map_or_else(|e| e.into_inner().0, |(s, _)| s);
                continue;
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

    /// `job` is done (answered, failed or skipped) on some thread; `progress` when that was a
    /// hashing thread.
    fn finished(&self, job: &Arc<Job>, progress: bool) {
        let mut state = self.lock();
        if let Some(i) = state.jobs.iter().position(|e| Arc::ptr_eq(&e.job, job)) {
            state.jobs.remove(i);
        }
        if progress {
            state.last_progress = Instant::now();
            state.hashing -= 1;
        }
    }
}

impl State {
    /// How long until the jobs count as stalled: `Some(ZERO)` once the oldest has waited
    /// `stall` with no hashing thread finishing one and none seen busy since `busy_at`; `None`
    /// when no job waits.
    fn stall_left(&self, stall: Duration, busy_at: Instant) -> Option<Duration> {
        let oldest = self.jobs.front()?;
        let stalled_for = oldest
            .job
            .since
            .max(self.last_progress)
            .max(busy_at)
            .elapsed();
        Some(stall.saturating_sub(stalled_for))
    }

    /// Whether a hashing thread may start a job now: always while another thread of the pool
    /// stays idle, and on the last one while no traffic but logins comes in or a slow hash runs.
    fn may_start(&mut self, threads: usize) -> bool {
        let submitted = self.submitted;
        self.hashing + 1 < threads.max(2)
            || self.jobs.iter().any(|e| e.slow)
            || !self.traffic.as_mut().is_some_and(|t| t.busy(submitted))
    }

    /// Marks the oldest job started by the rescuer and hands it over.
    fn rescue(&mut self) -> Option<Arc<Job>> {
        let oldest = self.jobs.front_mut()?;
        oldest.started = true;
        // Worth an operator's eye: the cores were saturated for a while.
        metrics::counter!("tessera_password_hash_rescues_total").increment(1);
        Some(Arc::clone(&oldest.job))
    }
}

/// Readings of [`RequestLoad`].
struct Traffic {
    load: RequestLoad,
    /// The last reading: when, the request count and the jobs submitted then.
    read_at: Instant,
    requests_then: u64,
    jobs_then: u64,
    /// The verdict of the last reading.
    busy: bool,
}

impl Traffic {
    fn new(load: RequestLoad) -> Self {
        let requests_then = load();
        Self {
            load,
            read_at: Instant::now(),
            requests_then,
            jobs_then: 0,
            busy: false,
        }
    }

    /// Whether more than [`TRAFFIC_PER_SECOND`] requests that queued no hash came in since the
    /// reading before (`jobs`: the jobs submitted so far), read at most every [`LOAD_SAMPLE`].
    /// The pool reads only while jobs wait, so a reading may cover a long quiet spell: the first
    /// jobs of a burst then see the average, and the next reading, 50 ms on, sees the burst.
    fn busy(&mut self, jobs: u64) -> bool {
        let window = self.read_at.elapsed();
        if window >= LOAD_SAMPLE {
            let requests = (self.load)();
            let others = requests
                .saturating_sub(self.requests_then)
                .saturating_sub(jobs.saturating_sub(self.jobs_then));
            self.busy = u128::from(others) * 1_000_000
                >= u128::from(TRAFFIC_PER_SECOND) * window.as_micros();
            self.read_at = Instant::now();
            (self.requests_then, self.jobs_then) = (requests, jobs);
        }
        self.busy
    }
}

fn hashing_thread(shared: &Shared, mut memory: Memory, keep: Duration, idle_class: bool) {
    if idle_class && !enter_idle_class() {
        lower_priority();
    }
    if let Some(clock) = cpu::ThreadClock::current() {
        shared.lock().clocks.push(clock);
    }
    while let Some(job) = shared.next_job(&mut memory, keep) {
        run(&job, &mut memory);
        shared.finished(&job, true);
    }
}

fn rescuer(shared: &Shared, mut memory: Memory, keep: Duration, stall: Duration) {
    lower_priority();
    let mut watch = Watch::new(stall);
    let mut last_job = Instant::now();
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                let mut wait = match watch.look(&state) {
                    Look::Rescue => match state.rescue() {
                        Some(job) => break job,
                        None => None,
                    },
                    Look::Slow(wait) => {
                        if let Some(running) = state.jobs.iter_mut().find(|e| e.started) {
                            running.slow = true;
                            shared.work.notify_one();
                        }
                        Some(wait)
                    }
                    Look::Wait(wait) => wait,
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

/// What the rescuer decides at a look.
enum Look {
    /// Run the oldest job now.
    Rescue,
    /// A slow hash has its thread's CPU: leave it, and look again after this long.
    Slow(Duration),
    /// Look again after this long (`None`: when woken).
    Wait(Option<Duration>),
}

/// The rescuer's memory between looks: when the hashing threads were last seen getting the
/// CPU, and the reading of their clocks that the current probe started from.
struct Watch {
    stall: Duration,
    /// How long a probe reads the clocks over.
    probe_for: Duration,
    busy_at: Instant,
    probe: Option<(Instant, Duration)>,
}

impl Watch {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            probe_for: stall / 5,
            busy_at: Instant::now(),
            probe: None,
        }
    }

    /// Jobs stalled for `stall` (none finished, the threads not seen busy since) and the
    /// hashing threads got less than a quarter of a core over a probe: rescue. A stall while
    /// they are busy is a slow hash, left to its thread.
    fn look(&mut self, state: &State) -> Look {
        match state.stall_left(self.stall, self.busy_at) {
            Some(left) if left.is_zero() => {}
            left => {
                self.probe = None;
                return Look::Wait(left);
            }
        }
        let Some(used) = cpu::used(&state.clocks) else {
            // Where no clock can be read, a stall is taken for starvation.
            return Look::Rescue;
        };
        let Some((since, before)) = self.probe else {
            self.probe = Some((Instant::now(), used));
            return Look::Wait(Some(self.probe_for));
        };
        let window = since.elapsed();
        if window < self.probe_for {
            return Look::Wait(Some(self.probe_for - window));
        }
        if used.saturating_sub(before) * STARVED_BELOW >= window {
            self.probe = None;
            self.busy_at = Instant::now();
            return Look::Slow(self.stall);
        }
        // Starved. The rescue's own run is the next probe's window, so a queue of starved jobs
        // is worked through one after the other, each after a fresh reading.
        self.probe = Some((Instant::now(), used));
        Look::Rescue
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

/// The CPU time of threads, read from other threads: what tells a starved hashing thread from
/// one running a slow hash.
mod cpu {
    use std::time::Duration;

    /// One thread's CPU-time clock.
    pub(super) struct ThreadClock(#[cfg(target_os = "linux")] libc::clockid_t);

    impl ThreadClock {
        /// The calling thread's clock; `None` where the platform has none.
        #[cfg(target_os = "linux")]
        pub(super) fn current() -> Option<Self> {
            let mut clock: libc::clockid_t = 0;
            #[allow(unsafe_code)]
            // SAFETY: pthread_self names the calling thread, which is alive; the call writes one
            // clockid_t into `clock` and nothing else.
            let found = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
            (found == 0).then_some(Self(clock))
        }

        #[cfg(not(target_os = "linux"))]
        pub(super) fn current() -> Option<Self> {
            None
        }

        /// CPU time the thread has used. Read only while the pool's threads run: they end only
        /// once the pool is closed, when the rescuer, the only reader, ends too.
        #[cfg(target_os = "linux")]
        fn used(&self) -> Option<Duration> {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            #[allow(unsafe_code)]
            // SAFETY: clock_gettime writes one timespec into `t`; a clock of a thread that has
            // ended makes it fail (EINVAL), not misbehave.
            let read = unsafe { libc::clock_gettime(self.0, &mut t) };
            let secs = u64::try_from(t.tv_sec).ok()?;
            let nanos = u32::try_from(t.tv_nsec).ok()?;
            (read == 0).then(|| Duration::new(secs, nanos))
        }

        #[cfg(not(target_os = "linux"))]
        fn used(&self) -> Option<Duration> {
            None
        }
    }

    /// CPU time used by all of `clocks`' threads; `None` when there are none or one cannot be
    /// read.
    pub(super) fn used(clocks: &[ThreadClock]) -> Option<Duration> {
        if clocks.is_empty() {
            return None;
        }
        clocks.iter().map(ThreadClock::used).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::{LOAD_SAMPLE, Traffic};

    /// Requests that queued a hash (logins) are not traffic, however many; the same number of
    /// other requests in the same time is. Readings come no more often than every 50 ms.
    #[test]
    fn only_requests_that_queued_no_hash_count_as_traffic() {
        let requests = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&requests);
        let mut traffic = Traffic::new(Box::new(move || read.load(Ordering::SeqCst)));
        let after_a_window = || std::thread::sleep(LOAD_SAMPLE + Duration::from_millis(10));

        requests.store(500, Ordering::SeqCst);
        after_a_window();
        assert!(!traffic.busy(500), "500 logins, 500 hashes");
        requests.store(1000, Ordering::SeqCst);
        after_a_window();
        assert!(traffic.busy(500), "500 other requests in ~60 ms");
        requests.store(2000, Ordering::SeqCst);
        assert!(traffic.busy(500), "not read again within 50 ms");
        after_a_window();
        assert!(!traffic.busy(1500), "1000 more logins");
    }
}
