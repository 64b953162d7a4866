//! Password policy (NIST 800-63B) and hashing (argon2id, with legacy bcrypt accepted).
//!
//! Hashing is CPU- and memory-heavy (19 MiB per argon2 hash), so it runs on a small pool of
//! dedicated threads (one per core) behind a bounded queue: past the queue a caller gets
//! [`HashError::Overloaded`] (503) instead of the process growing without bound. Dedicated
//! threads, not tokio's blocking pool: the allocator keeps an arena per thread, and 19 MiB
//! buffers spread over hundreds of short-lived blocking threads were measured to hold ~570 MiB of
//! RSS after a login burst; a fixed pool holds one buffer's worth per thread.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash};
use argon2::{Argon2, Params};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use super::user::Username;

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

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    params: Params,
    jobs: std::sync::mpsc::SyncSender<Job>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// A hash of a random password: verified against when the user does not exist, so an
    /// unknown username costs the same time as a wrong password (no user enumeration).
    dummy_hash: String,
}

/// Lowers the calling hashing thread's scheduling priority (nice 10). On a machine with as
/// many hashing threads as cores, logins would otherwise take the cores from the threads that
/// verify tokens: measured on 2 cores, verification p99 tripled while logins saturated the pool.
/// With a lower priority the hashes still use every idle cycle (login throughput is unchanged
/// when nothing else runs) but yield to request handling.
fn yield_the_cpu_to_request_threads() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: setpriority with the caller's own thread id changes only that thread's nice value;
    // raising one's nice value needs no privilege, and a failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

impl PasswordHasher {
    /// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
    pub fn owasp_params() -> Params {
        Params::default()
    }

    /// A hasher running at most `concurrency` hashes at once and queueing at most `max_waiting`.
    pub fn new(params: Params, concurrency: usize, max_waiting: usize) -> Result<Self, HashError> {
        let argon = Argon2::from(params.clone());
        let mut random = [0u8; 32];
        crate::domain::secret::fill_random(&mut random);
        let dummy_hash = argon
            .hash_password(&random)
            .map_err(|e| HashError::Internal(e.to_string()))?
            .to_string();
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(max_waiting.max(1));
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("tessera-hash-{i}"))
                .spawn(move || {
                    yield_the_cpu_to_request_threads();
                    loop {
                        // The lock is held only while waiting for the next job, not while hashing.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the hasher was dropped
                        }
                    }
                })
                .map_err(|e| HashError::Internal(e.to_string()))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                jobs,
                waiting: AtomicUsize::new(0),
                max_waiting,
                dummy_hash,
            }),
        })
    }

    /// Hashes a new password with the current parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let params = self.inner.params.clone();
        self.run(move || {
            Argon2::from(params)
                .hash_password(password.expose_secret().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError::Internal(e.to_string()))
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
        self.run(move || {
            let pw = password.expose_secret().as_bytes();
            match stored {
                None => {
                    let _ = verify_argon2(pw, &inner.dummy_hash, &inner.params);
                    Verification::Mismatch
                }
                Some(hash) if is_bcrypt(&hash) => {
                    // Non-truncating: a password longer than 72 bytes must not match on its
                    // first 72 bytes alone.
                    match bcrypt::non_truncating_verify(pw, &hash) {
                        Ok(true) => Verification::MatchNeedsRehash,
                        _ => Verification::Mismatch,
                    }
                }
                Some(hash) => verify_argon2(pw, &hash, &inner.params),
            }
        })
        .await
    }

    /// Runs `f` on the hashing threads, or refuses at once when `max_waiting` jobs are already
    /// queued or running.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let inner = &self.inner;
        if inner.waiting.fetch_add(1, Ordering::SeqCst) >= inner.max_waiting {
            inner.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(HashError::Overloaded);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = inner.jobs.try_send(job);
        let result = match sent {
            Ok(()) => rx
                .await
                .map_err(|_| HashError::Internal("a hashing thread died".into())),
            Err(_) => Err(HashError::Overloaded),
        };
        inner.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Whether `hash` is a format [`PasswordHasher::verify`] understands: bcrypt with a valid cost,
/// or an argon2 PHC string.
pub fn is_supported_hash(hash: &str) -> bool {
    if is_bcrypt(hash) {
        return hash.len() == 60
            && hash[4..6]
                .parse::<u32>()
                .is_ok_and(|c| (4..=31).contains(&c));
    }
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

fn verify_argon2(password: &[u8], hash: &str, current: &Params) -> Verification {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return Verification::Mismatch;
    };
    if Argon2::default()
        .verify_password(password, &parsed)
        .is_err()
    {
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
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        PasswordHasher::new(params, 2, 8).unwrap_or_else(|_| unreachable!())
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

    #[tokio::test]
    async fn a_full_queue_is_refused_instead_of_growing() {
        let params = Params::new(1024, 1, 1, None).unwrap_or_else(|_| unreachable!());
        let h = PasswordHasher::new(params, 1, 0).unwrap_or_else(|_| unreachable!());
        assert!(matches!(
            h.hash("whatever password".into()).await,
            Err(HashError::Overloaded)
        ));
    }
}
