//! Password policy (NIST 800-63B) and hashing (argon2id, with legacy bcrypt accepted).
//!
//! Hashing is CPU- and memory-heavy (19 MiB per argon2 hash), so it runs on a small pool of
//! dedicated threads (one per core, in the idle scheduling class: [`pool`]) behind a bounded
//! queue: past the queue a caller gets [`HashError::Overloaded`] (503) instead of the process
//! growing without bound. Dedicated threads, not tokio's blocking pool: the allocator keeps an
//! arena per thread, and 19 MiB buffers spread over hundreds of short-lived blocking threads
//! were measured to hold ~570 MiB of RSS after a login burst; a fixed pool holds one buffer's
//! worth per thread, and each thread reuses its buffer from one hash to the next ([`Memory`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::PasswordHasher as _;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::zeroize::Zeroize as _;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;

use super::user::Username;

mod pool;

pub use pool::RequestLoad;

/// Shortest accepted password, in Unicode code points.
pub const MIN_LEN: usize = 8;
/// Longest accepted password, in Unicode code points.
pub const MAX_LEN: usize = 128;

/// The bundled list of common passwords (the zxcvbn list, entries of 8+ characters; MIT).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .collect()
});

/// Why a new password was refused; every variant is a `422 weak_password`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than [`MIN_LEN`] code points.
    #[error("the password must have at least 8 characters")]
    TooShort,
    /// More than [`MAX_LEN`] code points.
    #[error("the password must have at most 128 characters")]
    TooLong,
    /// On the bundled list of common passwords.
    #[error("this password is too common; choose another")]
    Common,
    /// Equal to the username.
    #[error("the password must not be the username")]
    IsUsername,
}

/// Checks a new password against the policy: length, the common list, the username. No
/// composition rules, no trimming, no normalisation (API.md §5).
pub fn check_policy(password: &str, username: &Username) -> Result<(), WeakPassword> {
    // Cheap byte bound first: 128 code points are at most 512 bytes.
    if password.len() > MAX_LEN * 4 {
        return Err(WeakPassword::TooLong);
    }
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(WeakPassword::TooShort);
    }
    if chars > MAX_LEN {
        return Err(WeakPassword::TooLong);
    }
    let lower = password.to_lowercase();
    if lower == username.as_str() {
        return Err(WeakPassword::IsUsername);
    }
    if COMMON.contains(lower.as_str()) {
        return Err(WeakPassword::Common);
    }
    Ok(())
}

/// Hashing failed in a way the caller must surface.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes in flight and queued; try again shortly (503 with `Retry-After`).
    #[error("password hashing is saturated")]
    Overloaded,
    /// The hasher itself failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Wrong password, unknown user or unreadable hash: all the same to the caller.
    Mismatch,
    /// Right password, hash current.
    Match,
    /// Right password, but the hash is bcrypt or argon2 with old parameters: store a new one.
    MatchNeedsRehash,
}

/// Hashes and verifies passwords off the async runtime with bounded concurrency.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

/// How long a hashing thread keeps its argon2 memory after its last job.
const KEEP_MEMORY_FOR: Duration = Duration::from_secs(2);

/// A hashing thread's argon2 working memory (19 MiB with OWASP's parameters), reused from one
/// hash to the next. argon2 on its own allocates the memory zeroed for every hash, and a fresh
/// 19 MiB region costs ~5,000 page faults, each a trip into the kernel to map and zero a page:
/// measured on this project's 2-core VM, 32.6 ms of CPU per hash with fresh memory and 18.9 ms
/// with reused memory (`perf stat`, 40 hashes each). That kernel time was also taken from the
/// threads that verify tokens. Kept while logins keep coming; wiped and freed after
/// [`KEEP_MEMORY_FOR`] without a job, so an idle server holds none. Argon2 writes every block
/// it reads within a hash, so what an earlier hash left behind never enters the next.
struct Memory {
    blocks: Vec<Block>,
    /// Blocks kept: enough for the current parameters.
    keep: usize,
    /// Shared count of the threads holding their memory.
    holding: Arc<AtomicUsize>,
}

impl Memory {
    fn new(params: &Params, holding: Arc<AtomicUsize>) -> Self {
        Self {
            blocks: Vec::new(),
            keep: params.block_count(),
            holding,
        }
    }

    /// Hashes into `out` on the kept memory. A hash with more memory than the current
    /// parameters (an imported hash) gets memory of its own from argon2, freed afterwards.
    fn hash_into(
        &mut self,
        argon: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> argon2::Result<()> {
        let count = argon.params().block_count();
        if count > self.keep {
            return argon.hash_password_into(password, salt, out);
        }
        if self.blocks.is_empty() {
            self.blocks = vec![Block::default(); self.keep];
            self.holding.fetch_add(1, Ordering::Relaxed);
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut self.blocks[..count])
    }

    fn is_held(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// Wipes and frees the memory.
    fn release(&mut self) {
        self.blocks.zeroize();
        self.blocks = Vec::new();
        self.holding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wiped when its thread ends too (the hasher dropped).
impl Drop for Memory {
    fn drop(&mut self) {
        if self.is_held() {
            self.release();
        }
    }
}

struct Inner {
    params: Params,
    pool: pool::Pool,
    /// How many of the pool's threads (the rescuer included) hold their [`Memory`] now.
    holding: Arc<AtomicUsize>,
    /// A hash of a random password: verified against when the user does not exist, so an
    /// unknown username costs the same time as a wrong password (no user enumeration).
    dummy_hash: String,
}

impl PasswordHasher {
    /// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
    pub fn owasp_params() -> Params {
        Params::default()
    }

    /// A hasher with `concurrency` hashing threads (and the pool's rescuer: [`pool`]) and at
    /// most `max_waiting` jobs queued or running. Given how busy the request threads are
    /// (`requests`), it leaves a core to them while they serve traffic.
    pub fn new(
        params: Params,
        concurrency: usize,
        max_waiting: usize,
        requests: Option<RequestLoad>,
    ) -> Result<Self, HashError> {
        Self::tuned(
            params,
            pool::Tuning {
                threads: concurrency,
                max_waiting,
                keep_memory_for: KEEP_MEMORY_FOR,
                stall: pool::STALL,
                requests,
                idle_class: true,
            },
        )
    }

    fn tuned(params: Params, tuning: pool::Tuning) -> Result<Self, HashError> {
        let argon = Argon2::from(params.clone());
        let mut random = [0u8; 32];
        crate::domain::secret::fill_random(&mut random);
        let dummy_hash = argon
            .hash_password(&random)
            .map_err(|e| HashError::Internal(e.to_string()))?
            .to_string();
        let holding = Arc::new(AtomicUsize::new(0));
        let memory = || Memory::new(&params, Arc::clone(&holding));
        let pool =
            pool::Pool::start(tuning, memory).map_err(|e| HashError::Internal(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                pool,
                holding,
                dummy_hash,
            }),
        })
    }

    /// How many of the pool's threads (the rescuer included) hold their argon2 memory now (each
    /// the parameters' `m` KiB).
    pub fn threads_holding_memory(&self) -> usize {
        self.inner.holding.load(Ordering::Relaxed)
    }

    /// Hashes a new password with the current parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let inner = Arc::clone(&self.inner);
        self.run(move |memory| {
            let params = inner.params.clone();
            hash_argon2id(password.expose_secret().as_bytes(), params, memory)
        })
        .await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no user,
    /// so both paths cost the same.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verification, HashError> {
        let inner = Arc::clone(&self.inner);
        self.run(move |memory| {
            let pw = password.expose_secret().as_bytes();
            match &stored {
                None => {
                    let _ = verify_argon2(pw, &inner.dummy_hash, &inner.params, memory);
                    Verification::Mismatch
                }
                Some(hash) if is_bcrypt(hash) => {
                    // Non-truncating: a password longer than 72 bytes must not match on its
                    // first 72 bytes alone.
                    match bcrypt::non_truncating_verify(pw, hash) {
                        Ok(true) => Verification::MatchNeedsRehash,
                        _ => Verification::Mismatch,
                    }
                }
                Some(hash) => verify_argon2(pw, hash, &inner.params, memory),
            }
        })
        .await
    }

    /// Runs `f` on the hashing threads, or refuses at once when `max_waiting` jobs are already
    /// queued or running. `f` may run twice (the rescuer's run beside a starved thread's); the
    /// first answer is the one delivered, and a run that finds the answer given, or the caller
    /// gone, skips the work.
    async fn run<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Memory) -> T + Send + Sync + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let answer = Mutex::new(Some(tx));
        let work = move |memory: &mut Memory| {
            let lock = || {
                answer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            if lock().as_ref().is_none_or(oneshot::Sender::is_closed) {
                return; // answered by another run, or nobody waits any more
            }
            let out = f(memory);
            if let Some(tx) = lock().take() {
                let _ = tx.send(out);
            }
        };
        if !self.inner.pool.submit(Box::new(work)) {
            return Err(HashError::Overloaded);
        }
        rx.await
            .map_err(|_| HashError::Internal("a hashing thread died".into()))
    }
}

/// The costliest imported bcrypt hash: cost 16 takes seconds per check here (each step doubles).
const MAX_BCRYPT_COST: u32 = 16;
/// The costliest imported argon2 hash: 256 MiB (in KiB) and 32 passes, seconds per check at
/// most. A stored hash is checked on a hashing thread at every login of its user, and a cost
/// without a bound (bcrypt 31, or m = 4 TiB) would hold that thread for days or ask for the
/// memory of a whole machine.
const MAX_ARGON2_M_KIB: u32 = 256 * 1024;
const MAX_ARGON2_T: u32 = 32;

/// Whether `hash` is one [`PasswordHasher::verify`] can check, at a bounded cost: bcrypt with
/// a cost from 4 to [`MAX_BCRYPT_COST`], or an argon2 PHC string with a salt, a hash, a known
/// variant and version, and parameters within [`MAX_ARGON2_M_KIB`] and [`MAX_ARGON2_T`].
pub fn is_supported_hash(hash: &str) -> bool {
    if is_bcrypt(hash) {
        return hash.len() == 60
            && hash[4..6]
                .parse::<u32>()
                .is_ok_and(|c| (4..=MAX_BCRYPT_COST).contains(&c));
    }
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    argon2_inputs(&phc).is_some_and(|(_, _, params)| {
        params.m_cost() <= MAX_ARGON2_M_KIB && params.t_cost() <= MAX_ARGON2_T
    })
}

/// The variant, version and parameters `phc` was hashed with, when it is an argon2 hash with a
/// salt and a hash.
fn argon2_inputs(phc: &PasswordHash) -> Option<(Algorithm, Version, Params)> {
    phc.salt.as_ref()?;
    phc.hash.as_ref()?;
    let algorithm = Algorithm::try_from(phc.algorithm.as_str()).ok()?;
    let version = phc
        .version
        .map_or(Ok(Version::default()), Version::try_from)
        .ok()?;
    // The hash's own m, t, p and output length.
    let params = Params::try_from(phc).ok()?;
    Some((algorithm, version, params))
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// A new argon2id hash of `password` in PHC form, as the argon2 crate's own `hash_password`
/// writes it, computed on `memory`.
fn hash_argon2id(
    password: &[u8],
    params: Params,
    memory: &mut Memory,
) -> Result<String, HashError> {
    let internal = |e: &dyn std::fmt::Display| HashError::Internal(e.to_string());
    let mut salt = [0u8; 16];
    crate::domain::secret::fill_random(&mut salt);
    let salt = Salt::new(&salt).map_err(|e| internal(&e))?;
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    memory
        .hash_into(&argon, password, &salt, out)
        .map_err(|e| internal(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| internal(&e))?,
        salt: Some(salt),
        hash: Some(Output::new(out).map_err(|e| internal(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to `phc` (any argon2 variant and version, the hash's own
/// parameters), computed on `memory` and compared in constant time.
fn argon2_matches(password: &[u8], phc: &PasswordHash, memory: &mut Memory) -> bool {
    let (Some((algorithm, version, params)), Some(salt), Some(expected)) =
        (argon2_inputs(phc), &phc.salt, &phc.hash)
    else {
        return false;
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    memory.hash_into(&argon, password, salt, out).is_ok()
        && bool::from(expected.as_bytes().ct_eq(out))
}

fn verify_argon2(
    password: &[u8],
    hash: &str,
    current: &Params,
    memory: &mut Memory,
) -> Verification {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return Verification::Mismatch;
    };
    if !argon2_matches(password, &parsed, memory) {
        return Verification::Mismatch;
    }
    let outdated = parsed.algorithm.as_str() != "argon2id"
        || Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() < current.m_cost()
                || p.t_cost() < current.t_cost()
                || p.p_cost() != current.p_cost()
        });
    if outdated {
        Verification::MatchNeedsRehash
    } else {
        Verification::Match
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Username {
        Username::parse("alice").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn policy_counts_code_points_not_bytes() {
        assert_eq!(
            check_policy("ééééééé", &user()),
            Err(WeakPassword::TooShort)
        );
        assert_eq!(check_policy("éééééééé", &user()), Ok(()));
        assert_eq!(
            check_policy(&"é".repeat(129), &user()),
            Err(WeakPassword::TooLong)
        );
        assert_eq!(check_policy(&"x7".repeat(64), &user()), Ok(()));
    }

    #[test]
    fn policy_refuses_common_passwords_case_insensitively_and_the_username() {
        assert_eq!(
            check_policy("Password1", &user()),
            Err(WeakPassword::Common)
        );
        assert_eq!(check_policy("12345678", &user()), Err(WeakPassword::Common));
        let long_name = Username::parse("alice.long").unwrap_or_else(|_| unreachable!());
        assert_eq!(
            check_policy("Alice.Long", &long_name),
            Err(WeakPassword::IsUsername)
        );
        assert!(COMMON.len() >= 10_000);
    }

    #[test]
    fn policy_does_not_trim() {
        assert_eq!(check_policy(" correct horse ", &user()), Ok(()));
    }

    fn cheap() -> PasswordHasher {
        cheap_on(2, KEEP_MEMORY_FOR)
    }

    /// A hasher with 1 MiB argon2 parameters on `threads` threads, each keeping its memory
    /// for `keep` after a job. Its threads run at the test's priority, not in the idle class
    /// (which has tests of its own): these tests need their hashing threads to get the CPU
    /// whatever else the machine runs.
    fn cheap_on(threads: usize, keep: Duration) -> PasswordHasher {
        cheap_tuned(threads, keep, pool::STALL)
    }

    /// The same, with the rescuer stepping in after `stall`.
    fn cheap_tuned(threads: usize, keep: Duration, stall: Duration) -> PasswordHasher {
        cheap_pool(threads, keep, stall, None)
    }

    /// The same, with the pool seeing `requests` as the server's request count.
    fn cheap_pool(
        threads: usize,
        keep: Duration,
        stall: Duration,
        requests: Option<RequestLoad>,
    ) -> PasswordHasher {
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        PasswordHasher::tuned(
            params,
            pool::Tuning {
                threads,
                max_waiting: 8,
                keep_memory_for: keep,
                stall,
                requests,
                idle_class: false,
            },
        )
        .unwrap_or_else(|_| unreachable!())
    }

    /// Two hashing threads whose pool sees `requests` as the request count, returned once past
    /// the pool's first reading of it (which covers its first 50 ms).
    fn two_threads_seeing(
        requests: impl Fn() -> u64 + Send + 'static,
        stall: Duration,
    ) -> PasswordHasher {
        let h = cheap_pool(2, KEEP_MEMORY_FOR, stall, Some(Box::new(requests)));
        std::thread::sleep(Duration::from_millis(60));
        h
    }

    /// A request count that grows by 10,000 a second.
    fn ten_thousand_a_second() -> impl Fn() -> u64 + Send + 'static {
        let started = std::time::Instant::now();
        move || u64::try_from(started.elapsed().as_millis() * 10).unwrap_or(0)
    }

    #[tokio::test]
    async fn argon2_round_trip_and_mismatch() {
        let h = cheap();
        let hash = h.hash("a fine secret".into()).await.unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"));
        let ok = h
            .verify("a fine secret".into(), Some(hash.clone()))
            .await
            .ok();
        assert_eq!(ok, Some(Verification::Match));
        let bad = h.verify("a fine secreT".into(), Some(hash)).await.ok();
        assert_eq!(bad, Some(Verification::Mismatch));
    }

    #[tokio::test]
    async fn bcrypt_verifies_and_asks_for_a_rehash() {
        let h = cheap();
        let legacy = bcrypt::hash("legacy password", 4).unwrap_or_default();
        let ok = h
            .verify("legacy password".into(), Some(legacy.clone()))
            .await
            .ok();
        assert_eq!(ok, Some(Verification::MatchNeedsRehash));
        let bad = h.verify("legacy passworD".into(), Some(legacy)).await.ok();
        assert_eq!(bad, Some(Verification::Mismatch));
    }

    #[tokio::test]
    async fn weaker_argon2_parameters_ask_for_a_rehash() {
        let weak = Params::new(512, 1, 1, None).unwrap_or_else(|_| unreachable!());
        let old = Argon2::from(weak)
            .hash_password(b"some password")
            .map(|h| h.to_string());
        let h = cheap();
        let got = h.verify("some password".into(), old.ok()).await.ok();
        assert_eq!(got, Some(Verification::MatchNeedsRehash));
    }

    #[tokio::test]
    async fn unknown_user_and_garbage_hashes_never_match() {
        let h = cheap();
        assert_eq!(
            h.verify("x".into(), None).await.ok(),
            Some(Verification::Mismatch)
        );
        let junk = h.verify("x".into(), Some("not a hash".into())).await.ok();
        assert_eq!(junk, Some(Verification::Mismatch));
    }

    /// Hashes computed on a thread's reused memory are the argon2 crate's own, both ways: every
    /// variant, version and output length a stored hash can carry, with less memory than the
    /// current parameters (a part of the kept memory) and with more (memory of its own). One
    /// thread, so every hash runs on what the one before left in the memory.
    #[tokio::test]
    async fn hashes_on_reused_memory_are_the_argon2_crates_own() {
        use argon2::password_hash::PasswordVerifier as _;
        let h = cheap_on(1, KEEP_MEMORY_FOR);
        for _ in 0..3 {
            let ours = h.hash("a fine secret".into()).await.unwrap_or_default();
            let parsed = PasswordHash::new(&ours).unwrap_or_else(|e| panic!("{ours}: {e}"));
            assert!(ours.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
            assert!(
                Argon2::default()
                    .verify_password(b"a fine secret", &parsed)
                    .is_ok()
            );
            assert!(
                Argon2::default()
                    .verify_password(b"a fine secreT", &parsed)
                    .is_err()
            );
        }
        let theirs = [
            (Algorithm::Argon2id, Version::V0x13, 512, 1, 1, None),
            (Algorithm::Argon2i, Version::V0x13, 1024, 2, 1, Some(48)),
            (Algorithm::Argon2d, Version::V0x10, 1024, 1, 2, Some(16)),
            (Algorithm::Argon2id, Version::V0x13, 4096, 1, 1, None),
            (Algorithm::Argon2id, Version::V0x13, 1024, 1, 1, Some(64)),
        ];
        for (algorithm, version, m, t, p, len) in theirs {
            let params = Params::new(m, t, p, len).unwrap_or_else(|_| unreachable!());
            let hash = Argon2::new(algorithm, version, params)
                .hash_password(b"some password")
                .map(|h| h.to_string())
                .unwrap_or_default();
            let right = h.verify("some password".into(), Some(hash.clone())).await;
            assert!(
                matches!(
                    right,
                    Ok(Verification::Match | Verification::MatchNeedsRehash)
                ),
                "{hash}: {right:?}"
            );
            let wrong = h.verify("some passworD".into(), Some(hash.clone())).await;
            assert!(matches!(wrong, Ok(Verification::Mismatch)), "{hash}");
        }
    }

    #[tokio::test]
    async fn a_hashing_thread_keeps_its_memory_between_jobs_and_frees_it_once_they_stop() {
        let keep = Duration::from_secs(3);
        let h = cheap_on(2, keep);
        let holding = || h.threads_holding_memory();
        assert_eq!(holding(), 0);
        assert!(h.hash("a fine secret".into()).await.is_ok());
        assert_eq!(holding(), 1);
        let started = std::time::Instant::now();
        while holding() > 0 && started.elapsed() < keep * 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(holding(), 0, "the memory is still held after {keep:?} idle");
        assert!(started.elapsed() >= keep / 2);
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_alone_and_its_thread_goes_on_hashing() {
        // Memory kept long enough that no stall of a busy test machine lets it go by itself.
        let h = cheap_on(1, Duration::from_secs(600));
        assert!(h.hash("a fine secret".into()).await.is_ok());
        let boom = h
            .run(|_: &mut Memory| -> () { panic!("a bug in a hashing job") })
            .await;
        assert!(matches!(boom, Err(HashError::Internal(_))), "{boom:?}");
        // The caller hears of the failure as the panic unwinds, just before the thread lets go.
        let started = std::time::Instant::now();
        while h.threads_holding_memory() > 0 && started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            h.threads_holding_memory(),
            0,
            "the memory of a failed job is let go"
        );
        // The one thread is still there.
        assert!(h.hash("a fine secret".into()).await.is_ok());
        assert_eq!(h.threads_holding_memory(), 1);
    }

    #[tokio::test]
    async fn a_dropped_hasher_wipes_and_frees_its_threads_memory() {
        let h = cheap_on(1, Duration::from_secs(600));
        assert!(h.hash("a fine secret".into()).await.is_ok());
        let holding = Arc::clone(&h.inner.holding);
        assert_eq!(holding.load(Ordering::Relaxed), 1);
        drop(h);
        let started = std::time::Instant::now();
        while holding.load(Ordering::Relaxed) > 0 && started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(holding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_hashes_checkable_at_a_bounded_cost_are_supported() {
        let argon = |algorithm: &str, m: u32, t: u32| {
            format!(
                "${algorithm}$v=19$m={m},t={t},p=1$c29tZXNhbHRzb21lc2FsdA$\
                 YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY"
            )
        };
        let bcrypt = |cost: u32| format!("$2b${cost:02}${}", "a".repeat(53));
        for ok in [
            argon("argon2id", 19_456, 2),
            argon("argon2i", MAX_ARGON2_M_KIB, MAX_ARGON2_T),
            argon("argon2d", 8, 1),
            bcrypt(4),
            bcrypt(MAX_BCRYPT_COST),
        ] {
            assert!(is_supported_hash(&ok), "{ok}");
        }
        for costly_or_unknown in [
            argon("argon2id", MAX_ARGON2_M_KIB + 1, 1),
            argon("argon2id", u32::MAX, 1),
            argon("argon2id", 19_456, MAX_ARGON2_T + 1),
            argon("argon2x", 19_456, 2),
            "$argon2id$v=19$m=19456,t=2,p=1".to_owned(),
            bcrypt(MAX_BCRYPT_COST + 1),
            bcrypt(31),
            bcrypt(3),
        ] {
            assert!(
                !is_supported_hash(&costly_or_unknown),
                "{costly_or_unknown}"
            );
        }
    }

    /// Hashes run in the idle scheduling class (the rescuer, which would answer as nice 10, is
    /// kept out of it by an hour's stall).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_in_the_idle_scheduling_class() {
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        let tuning = pool::Tuning {
            threads: 1,
            max_waiting: 8,
            keep_memory_for: KEEP_MEMORY_FOR,
            stall: Duration::from_secs(3600),
            requests: None,
            idle_class: true,
        };
        let h = PasswordHasher::tuned(params, tuning).unwrap_or_else(|_| unreachable!());
        #[allow(unsafe_code)]
        // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
        let policy = h.run(|_| unsafe { libc::sched_getscheduler(0) }).await;
        assert_eq!(policy.ok(), Some(libc::SCHED_IDLE));
    }

    /// Held by the tests whose outcome depends on who gets the CPU: the one that takes every
    /// core must not run beside the one that needs its hashing thread to get some.
    static CORES: Mutex<()> = Mutex::new(());

    /// How many rescues the process's metrics have counted.
    fn rescues_counted() -> u64 {
        crate::observability::handle()
            .map(metrics_exporter_prometheus::PrometheusHandle::render)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("tessera_password_hash_rescues_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A job stalled while its thread gets no CPU (here a job that sleeps, as a starved thread
    /// would look) is run by the rescuer, and the rescue is counted in the metrics (`/metrics`),
    /// for an operator to see that the cores were saturated.
    #[test]
    fn a_rescue_is_counted_in_the_metrics() {
        let h = cheap_tuned(1, KEEP_MEMORY_FOR, Duration::from_millis(100));
        let rescues = rescues_counted();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let done = runtime.block_on(h.run(|_| std::thread::sleep(Duration::from_millis(600))));
        assert!(done.is_ok());
        assert!(rescues_counted() > rescues, "no rescue counted");
    }

    /// Threads of the idle class get next to no CPU while normal threads take every core: the
    /// rescuer (nice 10) answers the login instead, within a second or so here. Without it the
    /// hash (~40 ms of CPU) took its starved thread well over the bound.
    #[test]
    fn a_hash_is_answered_while_normal_threads_take_every_core() {
        use std::sync::atomic::AtomicBool;
        let _cores = CORES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let params = Params::new(19 * 1024, 4, 1, None).unwrap_or_else(|_| unreachable!());
        let h = PasswordHasher::new(params, cores, 8, None).unwrap_or_else(|_| unreachable!());
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let hashed = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), h.hash("a fine secret".into())).await
        });
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        spinners
            .into_iter()
            .for_each(|s| s.join().unwrap_or_default());
        assert!(matches!(hashed, Ok(Ok(_))), "{hashed:?}");
        assert!(took < Duration::from_secs(5), "the hash took {took:?}");
    }

    /// A job slower than the stall bound whose thread gets the CPU (an imported hash costlier
    /// than ours) is left to that thread: the rescuer reads the thread's CPU clock and does not
    /// run the job a second time. (Without the clock reading it did, after 200 ms.)
    #[test]
    fn a_slow_job_whose_thread_gets_the_cpu_is_not_run_twice() {
        let _cores = CORES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = cheap_tuned(1, KEEP_MEMORY_FOR, Duration::from_millis(200));
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let done = runtime.block_on(h.run(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_millis(1200) {
                std::hint::spin_loop();
            }
        }));
        assert!(done.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the job ran more than once");
    }

    /// A pool of two threads given `requests` as the server's request count; returns the most
    /// jobs it ran at once out of four submitted together, each holding its thread 100 ms. Each
    /// job is a request too, as a login is.
    fn most_at_once(requests: impl Fn() -> u64 + Send + 'static) -> usize {
        let logins = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&logins);
        let load = move || requests() + counted.load(Ordering::SeqCst);
        // A stall bound far off: the rescuer does not step in here.
        let h = two_threads_seeing(load, Duration::from_secs(10));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let jobs: Vec<_> = (0..4)
            .map(|_| {
                logins.fetch_add(1, Ordering::SeqCst);
                let (now, most) = (Arc::clone(&now), Arc::clone(&most));
                h.run(move |_| {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let done = runtime.block_on(futures_util::future::join_all(jobs));
        assert!(done.iter().all(Result::is_ok));
        most.load(Ordering::SeqCst)
    }

    /// While other requests than logins come in (10,000 a second), one of the two hashing
    /// threads stays idle and the jobs run one at a time, leaving a core to requests.
    #[test]
    fn while_other_requests_come_in_the_pool_hashes_on_one_core_fewer() {
        assert_eq!(most_at_once(ten_thousand_a_second()), 1);
    }

    /// With no requests but the logins themselves (a login burst alone), every hashing thread
    /// hashes.
    #[test]
    fn a_login_burst_alone_gets_every_hashing_thread() {
        assert_eq!(most_at_once(|| 0), 2);
    }

    /// The core left to requests is not held back behind a slow hash: while the one hashing
    /// thread runs a job that takes long on the CPU it gets (an imported hash costlier than
    /// ours; here 1.2 s), a login queued behind it starts on the other thread once the rescuer
    /// has seen the stall (200 ms here) and the thread busy, traffic or not. (Held back, it
    /// waited the 1.2 s.)
    #[test]
    fn a_slow_hash_does_not_hold_up_the_logins_behind_it_while_requests_come_in() {
        let _cores = CORES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = two_threads_seeing(ten_thousand_a_second(), Duration::from_millis(200));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let slow = h.run(|_| {
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_millis(1200) {
                std::hint::spin_loop();
            }
        });
        let queued = std::time::Instant::now();
        let quick = h.run(move |_| queued.elapsed());
        let (slow, waited) = runtime.block_on(futures_util::future::join(slow, quick));
        assert!(slow.is_ok());
        let waited = waited.unwrap_or(Duration::MAX);
        assert!(
            waited < Duration::from_millis(800),
            "the login waited {waited:?}"
        );
    }

    /// A caller that stops waiting (its future dropped: a request past its deadline, a cancelled
    /// task) gives its place in the queue back once its job has run or been skipped: otherwise
    /// 64 logins abandoned mid-hash would refuse every login after them with 503 until a restart.
    #[tokio::test]
    async fn a_caller_that_stops_waiting_gives_its_place_in_the_queue_back() {
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        let h = PasswordHasher::new(params, 1, 1, None).unwrap_or_else(|_| unreachable!());
        // A job that holds its thread until let go: still running when its caller leaves.
        let (let_go, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let held = h.run(move |_| {
            let gate = gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = gate.recv_timeout(Duration::from_secs(10));
        });
        // Polled once (queued), then dropped.
        let abandoned = tokio::time::timeout(Duration::ZERO, held).await;
        assert!(
            abandoned.is_err(),
            "the job finished before it was abandoned"
        );
        let _ = let_go.send(());
        let started = std::time::Instant::now();
        let next = loop {
            match h.hash("a fine secret".into()).await {
                Err(HashError::Overloaded) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other,
            }
        };
        assert!(next.is_ok(), "{next:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_instead_of_growing() {
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        let h = PasswordHasher::new(params, 1, 0, None).unwrap_or_else(|_| unreachable!());
        assert!(matches!(
            h.hash("whatever password".into()).await,
            Err(HashError::Overloaded)
        ));
    }
}
