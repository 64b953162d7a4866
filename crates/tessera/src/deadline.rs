//! Deadlines that reuse one timer per connection instead of arming a new one per request.
//!
//! Every request on a connection arms the same two deadlines: hyper's header-read timeout
//! (the slow-loris guard) and the store call's (`store_timeout`). Armed the usual way, each is
//! a new `tokio::time::Sleep`: an insert into the runtime's timer wheel and a removal, both
//! under the wheel's lock, for a deadline that is almost never reached. Switched off, the two
//! were worth 4.3% of the verifications per second and 5.8% of their CPU (bench/NOTES.md).
//!
//! A connection serves its requests one after another, and each deadline of a kind is later
//! than the one before. So each connection keeps one `Sleep` per kind ([`Slot`]) and lends it
//! to each request ([`Reused`]) still armed at an earlier request's deadline: if it goes off,
//! and the request is still waiting, it is moved to the request's own deadline then. Each
//! deadline still fires when it falls due; the connection pays one re-arming per timeout's
//! length instead of two wheel operations per request. A second deadline of a kind while the
//! first is out (the two store calls of `/profile`) takes a second `Sleep`.
//!
//! The slots live in a task-local set by [`Connection::serve`] around the connection's future,
//! so the store layer needs no handle passed down. A store call outside a connection (a
//! background job, an HTTP/2 stream, which hyper runs as a task of its own) finds none and
//! arms a new `Sleep`, as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CONNECTION: Connection;
}

/// The reusable timers of one connection.
#[derive(Default)]
pub(crate) struct Connection {
    header: Arc<Slot>,
    store: Arc<Slot>,
}

impl Connection {
    /// Runs `fut` (a connection) with these timers in reach of the deadlines armed inside it.
    pub(crate) fn serve<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CONNECTION.scope(self, fut)
    }
}

/// Idle `Sleep`s, put back by the [`Reused`] that drop: at most [`Slot::KEEP`], the one put
/// back last taken first.
#[derive(Default)]
struct Slot(Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>);

impl Slot {
    /// Two: `GET /profile` makes two store calls at once.
    const KEEP: usize = 2;

    /// A sleep until `deadline` on an idle `Sleep` of the slot's, or on a new one.
    fn sleep_until(self: &Arc<Self>, deadline: Instant) -> Reused {
        let idle = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let sleep = match idle {
            Some(mut sleep) => {
                // Armed later than this deadline (rare: every deadline of a kind is later than
                // the last, unless two stores' timeouts differ): bring it forward now.
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Reused {
            sleep: Some(sleep),
            deadline,
            home: Some(Arc::clone(self)),
        }
    }
}

/// A deadline on a `Sleep` on loan from a [`Slot`] (or on a plain one, with no slot to go
/// back to).
///
/// The loaned `Sleep` is left armed where it was, at an earlier request's deadline, and moved
/// to this one's only when it goes off first: the requests of a busy connection pay nothing
/// for their deadlines (not even `Sleep::reset`, which clones the runtime's handle, a counter
/// both cores write), and the connection one wake-up and one re-arming per timeout's length.
pub(crate) struct Reused {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
    home: Option<Arc<Slot>>,
}

impl Reused {
    fn plain(deadline: Instant) -> Self {
        Self {
            sleep: Some(Box::pin(tokio::time::sleep_until(deadline))),
            deadline,
            home: None,
        }
    }

    fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(sleep) = self.sleep.as_mut()
            && sleep.deadline() > deadline
        {
            sleep.as_mut().reset(deadline);
        }
    }
}

impl Future for Reused {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(sleep) = this.sleep.as_mut() else {
            return Poll::Ready(());
        };
        // At most twice round: once armed at `deadline`, the next time it goes off is ours.
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= this.deadline || Instant::now() >= this.deadline {
                return Poll::Ready(());
            }
            // An earlier deadline went off: now arm ours.
            sleep.as_mut().reset(this.deadline);
        }
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        if let (Some(sleep), Some(home)) = (self.sleep.take(), self.home.take()) {
            let mut idle = home.0.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < Slot::KEEP {
                idle.push(sleep);
            }
        }
    }
}

fn sleep_until(deadline: Instant, slot: fn(&Connection) -> &Arc<Slot>) -> Reused {
    CONNECTION
        .try_with(|c| slot(c).sleep_until(deadline))
        .unwrap_or_else(|_| Reused::plain(deadline))
}

/// `fut`'s output, or `None` if `deadline` comes first (as `tokio::time::timeout`, with the
/// connection's store timer when there is one).
pub(crate) async fn within<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let expired = sleep_until(deadline, |c| &c.store);
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = expired => None,
    }
}

/// hyper's timer (for the header-read timeout), with the connection's header timer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderTimer;

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(Instant::now() + duration, |c| &c.header))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(deadline.into(), |c| &c.header))
    }

    /// tokio's clock, which the deadlines are measured on (and which tests can pause).
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Reused>() {
            Some(ours) => ours.get_mut().reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl hyper::rt::Sleep for Reused {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    impl Slot {
        fn idle(&self) -> usize {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_reuses_its_timer_and_each_deadline_still_fires_on_time() {
        let conn = Connection::default();
        let slot = Arc::clone(&conn.store);
        conn.serve(async move {
            let start = Instant::now();
            // Answered in time: the slot's timer comes back, moved later on each call.
            for i in 1..=3u64 {
                let deadline = Instant::now() + 100 * MS;
                let answer = within(deadline, tokio::time::sleep(10 * MS)).await;
                assert_eq!(answer, Some(()));
                assert_eq!(slot.idle(), 1, "call {i} put it back");
            }
            // Late: the deadline fires exactly 100 ms after the call began, not at an earlier
            // call's deadline (which the reused timer was first filed at).
            let begun = Instant::now();
            let late = within(Instant::now() + 100 * MS, std::future::pending::<()>()).await;
            assert_eq!(late, None);
            assert_eq!(begun.elapsed(), 100 * MS);
            assert_eq!(start.elapsed(), 130 * MS);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn two_deadlines_at_once_each_get_a_timer_and_both_fire() {
        let conn = Connection::default();
        let slot = Arc::clone(&conn.store);
        conn.serve(async move {
            // The second round runs on the two timers the first put back.
            for round in 1..=2 {
                let a = within(Instant::now() + 50 * MS, std::future::pending::<()>());
                let b = within(Instant::now() + 80 * MS, std::future::pending::<()>());
                let begun = Instant::now();
                let timed = |f| async move {
                    let r = f.await;
                    (r, begun.elapsed())
                };
                let (a, b) = tokio::join!(timed(a), timed(b));
                assert_eq!((a, b), ((None, 50 * MS), (None, 80 * MS)), "round {round}");
                assert_eq!(slot.idle(), 2, "round {round}");
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_reused_timers_last_still_fires_on_time() {
        let conn = Connection::default();
        conn.serve(async {
            assert_eq!(
                within(Instant::now() + 10_000 * MS, std::future::ready(())).await,
                Some(())
            );
            let begun = Instant::now();
            let late = within(Instant::now() + 20 * MS, std::future::pending::<()>()).await;
            assert_eq!((late, begun.elapsed()), (None, 20 * MS));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_connection_a_deadline_is_a_plain_timer() {
        let begun = Instant::now();
        let late = within(Instant::now() + 30 * MS, std::future::pending::<()>()).await;
        assert_eq!((late, begun.elapsed()), (None, 30 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_reset_moves_our_sleep_in_place() {
        use hyper::rt::Timer as _;
        let conn = Connection::default();
        conn.serve(async {
            let begun = Instant::now();
            let mut sleep = HeaderTimer.sleep(1_000 * MS);
            HeaderTimer.reset(&mut sleep, HeaderTimer.now() + 40 * MS);
            sleep.await;
            assert_eq!(begun.elapsed(), 40 * MS);
        })
        .await;
    }
}
