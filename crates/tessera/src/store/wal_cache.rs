//! Query-free session reads for the embedded (SQLite) store, exact to the commit.
//!
//! A verification on the embedded store used to run one `SELECT`, which sqlx hands to the
//! connection's worker thread and back: four context switches per request, ~64 µs of CPU at 64
//! connections against ~20 for the same check on Redis (`bench/run`, this project's machine).
//!
//! In WAL mode every commit, by any connection of any process (the CLI's `user disable`, a
//! second server on the same file, our own writes), rewrites the WAL-index header at the start
//! of `<db>-shm` — its change counter and last valid frame — and that rewrite is what makes the
//! commit visible to readers (<https://www.sqlite.org/walformat.html>, "the WAL-index header").
//! So before a session is served from memory, the header's first copy (48 bytes, one `pread`
//! from the page cache) is compared with the one seen when the entry was stored: unchanged
//! proves that nothing has committed since, so the entry is what a query would return; any
//! change starts a new generation, and entries of older generations are never served. The
//! first request after any commit reads the database again: revocation stays immediate, for
//! other processes' writes too. One exception keeps the cache useful with many active
//! sessions: our own touch (once a minute per active session) drops only the session it wrote
//! when the header's change counter shows that no other commit came in between ([`Touch`]);
//! otherwise the header is compared as bytes, never interpreted.
//!
//! The cache holds a connection of its own for its whole life: SQLite deletes or resets the
//! `-shm` file only when the last connection to the database closes, which then can never
//! happen under the open handle.

use std::fs::File;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteConnectOptions;

use crate::domain::session::{ActiveSession, SessionId};
use crate::domain::user::UserId;

/// Length of one copy of the WAL-index header.
const HEADER: usize = 48;

/// Entries kept at most (a bound on memory; correctness does not depend on it).
const CAPACITY: u64 = 100_000;

/// How long an entry may stay unread (memory hygiene only: entries of an older generation are
/// never served, whatever their age).
const IDLE: Duration = Duration::from_secs(300);

/// See the module docs.
pub struct WalCache {
    shm: File,
    mark: Mutex<Mark>,
    entries: moka::sync::Cache<(UserId, SessionId), (u64, ActiveSession)>,
    /// Never used; held so that the `-shm` file outlives every other connection.
    _keeper: Mutex<SqliteConnection>,
    /// Held for the length of a [`Touch`], so that this process's touches never overlap: two at
    /// once would each see the counter move by two, and flush.
    touches: tokio::sync::Mutex<()>,
}

/// The header last seen and the generation it started.
struct Mark {
    header: [u8; HEADER],
    generation: u64,
    /// Set while one of our touches is between its write and [`Touch::committed`]: a header
    /// change seen then may be that touch, so readers go to the database meanwhile instead of
    /// starting a new generation (which the touch's own check may make unnecessary).
    touching: bool,
}

impl std::fmt::Debug for WalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl WalCache {
    /// A cache over the WAL-mode database `options` opens, or `None` where commits cannot be
    /// observed this way (an in-memory database, no `-shm` file): every read then queries.
    pub async fn open(options: &SqliteConnectOptions) -> Option<Self> {
        let keeper = options.connect().await.ok()?;
        let mut path = options.get_filename().as_os_str().to_owned();
        path.push("-shm");
        let shm = File::open(path).ok()?;
        let mut header = [0; HEADER];
        read_header(&shm, &mut header).ok()?;
        Some(Self {
            shm,
            mark: Mutex::new(Mark {
                header,
                generation: 0,
                touching: false,
            }),
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(IDLE)
                .build(),
            _keeper: Mutex::new(keeper),
            touches: tokio::sync::Mutex::new(()),
        })
    }

    /// The generation the database is at now: a new one if anything committed since the last
    /// look. `None` if the header cannot be read (then nothing is served from memory).
    pub fn generation(&self) -> Option<u64> {
        let now = self.header()?;
        let mut mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        if mark.header != now {
            if mark.touching {
                return None;
            }
            self.advance(&mut mark, now);
        }
        Some(mark.generation)
    }

    /// Starts a new generation at `header`.
    fn advance(&self, mark: &mut Mark, header: [u8; HEADER]) {
        mark.header = header;
        mark.generation += 1;
        // Older entries are unreachable already; this frees them sooner.
        self.entries.invalidate_all();
    }

    /// The session as the database holds it now, if it is in memory.
    pub fn get(&self, user: UserId, id: SessionId) -> Option<ActiveSession> {
        let generation = self.generation()?;
        self.entries
            .get(&(user, id))
            .filter(|(g, _)| *g == generation)
            .map(|(_, s)| s)
    }

    /// Starts a touch of ours (see [`Touch`]); `None` if another touch of this process is still
    /// running after `patience` (the touch then goes ahead unattributed: at worst a flush).
    pub async fn touch(&self, patience: Duration) -> Option<Touch<'_>> {
        let serial = tokio::time::timeout(patience, self.touches.lock())
            .await
            .ok()?;
        let before = self.header()?;
        let mut mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        if mark.header != before {
            self.advance(&mut mark, before); // an earlier commit nobody has looked at yet
        }
        mark.touching = true;
        Some(Touch {
            cache: self,
            before,
            _serial: serial,
        })
    }

    /// The WAL-index header now.
    fn header(&self) -> Option<[u8; HEADER]> {
        let mut now = [0; HEADER];
        read_header(&self.shm, &mut now).ok()?;
        Some(now)
    }

    /// Keeps what a query returned; `generation` must have been taken before the query began,
    /// so that a commit the query may have missed has started a newer generation.
    pub fn insert(&self, generation: u64, session: &ActiveSession) {
        self.entries
            .insert((session.user_id, session.id), (generation, session.clone()));
    }
}

/// One touch of ours (the one frequent write: a session's idle expiry, once a minute per active
/// session), attributed so that it drops only its own session instead of the whole cache.
/// Touches of this process run one at a time; while one is in flight, readers that see the
/// header change query the database rather than start a new generation. Afterwards
/// [`Touch::committed`] keeps the generation if the header's change counter moved by exactly
/// one, so that the only commit in between was this touch's; any other outcome, or dropping the
/// touch without that call (an error, no row changed), leaves the next look to start a new
/// generation as after any commit.
pub struct Touch<'a> {
    cache: &'a WalCache,
    before: [u8; HEADER],
    _serial: tokio::sync::MutexGuard<'a, ()>,
}

impl Touch<'_> {
    /// The touch committed one transaction that changed only the session `(user, id)`.
    pub fn committed(self, user: UserId, id: SessionId) {
        let cache = self.cache;
        if let Some(after) = cache.header() {
            let mut mark = cache.mark.lock().unwrap_or_else(PoisonError::into_inner);
            if change_counter(&after) == change_counter(&self.before).wrapping_add(1) {
                mark.header = after;
            } else {
                cache.advance(&mut mark, after);
            }
        }
        cache.entries.invalidate(&(user, id));
    }
}

impl Drop for Touch<'_> {
    fn drop(&mut self) {
        let mut mark = self
            .cache
            .mark
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        mark.touching = false;
    }
}

/// The header's transaction counter (`iChange`: a native-endian `u32` at offset 8, incremented
/// by every commit).
fn change_counter(header: &[u8; HEADER]) -> u32 {
    u32::from_ne_bytes([header[8], header[9], header[10], header[11]])
}

/// The WAL-index header's first copy, read without moving a file cursor (readers share the
/// handle).
#[cfg(unix)]
fn read_header(shm: &File, into: &mut [u8; HEADER]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(shm, into, 0)
}

/// Elsewhere the cache stays off.
#[cfg(not(unix))]
fn read_header(_shm: &File, _into: &mut [u8; HEADER]) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
