//! Wiring: opens the stores a [`Settings`] value names, builds the service, binds the listener
//! and runs the server with its background tasks and graceful shutdown.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::jwt::TokenSettings;
use crate::domain::password::PasswordHasher;
use crate::domain::secret::{b64, random_32};
use crate::http::browser::Cookies;
use crate::http::pages::Templates;
use crate::http::{self, AppState, HttpSettings};
use crate::service::{Auth, PROFILE_CACHE_TTL, Policy};
use crate::store::cache::MemoryProfileCache;
use crate::store::keyfile::KeyFile;
use crate::store::limits::MemoryLimits;
use crate::store::postgres::PgUserStore;
use crate::store::redis::{RedisStore, Topology};
use crate::store::sqlite::SqliteStore;
use crate::store::{Stores, UserStore};

/// How often expired sessions are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the key ring is re-read (API.md §1: a rotation is seen within 10 s).
const KEY_RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Password hashes allowed to wait for a hashing slot before new ones get 503.
const HASH_QUEUE: usize = 64;

/// The policy a settings value describes.
pub fn policy(s: &Settings) -> Policy {
    Policy {
        tokens: TokenSettings {
            issuer: s.issuer(),
            audience: s.audience.clone(),
            ttl: s.access_token_ttl,
            leeway: s.jwt_leeway,
        },
        signing_alg: s.signing_alg,
        idle_timeout: s.session_idle_timeout,
        lifetime: s.session_lifetime,
        max_sessions_per_user: s.max_sessions_per_user as usize,
        refresh_reuse_grace: s.refresh_reuse_grace,
        login_max_failures: u64::from(s.login_max_failures),
        login_failure_window: s.login_failure_window,
        login_ip_max_failures: u64::from(s.login_ip_max_failures),
        login_ip_window: s.login_ip_window,
        allow_registration: s.allow_registration,
    }
}

/// Chooses and opens the backends `settings` name: the one place a backend is chosen.
pub async fn open_stores(settings: &Settings) -> anyhow::Result<Stores> {
    let timeout = settings.store_timeout;
    let embedded = if settings.uses_embedded_store() {
        create_data_dir(&settings.data_dir)?;
        Some(
            SqliteStore::open_file(&settings.embedded_db_path(), timeout)
                .await
                .with_context(|| format!("embedded store in {}", settings.data_dir.display()))?,
        )
    } else {
        None
    };
    let users: Arc<dyn UserStore> = match (&settings.database_url, &embedded) {
        (Some(url), _) if settings.uses_postgres() => Arc::new(
            PgUserStore::connect(url, timeout)
                .await
                .context("database_url (PostgreSQL)")?,
        ),
        (Some(url), _) => Arc::new(
            SqliteStore::connect(url, timeout)
                .await
                .context("database_url (SQLite)")?,
        ),
        (None, Some(db)) => Arc::new(db.clone()),
        (None, None) => anyhow::bail!("no user store configured"),
    };
    if let Some(url) = &settings.redis_url {
        let topology = Topology::parse(url).map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let redis = RedisStore::connect(
            &topology,
            &settings.redis_key_prefix,
            timeout,
            settings.session_cache_ttl,
        )
        .await
        .with_context(|| format!("redis_url ({})", redact(url)))?;
        // Anything but `noeviction` may drop auth keys under memory pressure (every key of
        // ours has a TTL, so `volatile-*` can too).
        match redis.server_setting("maxmemory-policy").await.as_deref() {
            Some("noeviction") | None => {}
            Some(policy) => tracing::warn!(
                %policy,
                "Redis maxmemory-policy may evict sessions and log users out; set noeviction"
            ),
        }
        let redis = Arc::new(redis);
        return Ok(Stores {
            users,
            sessions: redis.clone(),
            limits: redis.clone(),
            keys: redis.clone(),
            profiles: redis,
        });
    }
    let Some(db) = embedded else {
        anyhow::bail!("no session store configured")
    };
    Ok(Stores {
        users,
        sessions: Arc::new(db),
        limits: Arc::new(MemoryLimits::default()),
        keys: Arc::new(KeyFile::in_dir(&settings.data_dir)),
        profiles: Arc::new(MemoryProfileCache::new(100_000, PROFILE_CACHE_TTL)),
    })
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Opens the stores named by `settings` and builds the service. Used by `serve` and by every
/// CLI command, so both see the same data.
pub async fn open_service(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<Auth>> {
    let stores = open_stores(settings).await?;
    let threads = settings.password_hash_threads();
    let hasher = PasswordHasher::new(
        PasswordHasher::owasp_params(),
        threads,
        HASH_QUEUE,
        Some(Box::new(crate::observability::requests_taken)),
    )?;
    Ok(Arc::new(
        Auth::new(stores, hasher, clock, policy(settings)).await?,
    ))
}

fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))
}

/// Takes the exclusive `serve` lock of a data directory, so two servers never share one
/// embedded store. The OS drops the lock when the process dies, `kill -9` included.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("tessera.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another tessera server is already using data_dir {} (lock {} is held); \
             stop it or choose another --data-dir",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A built server, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    shutdown_grace: Duration,
    _lock: Option<File>,
}

impl Application {
    /// Builds the server on the wall clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds the server with an injected clock (tests move time instead of sleeping).
    pub async fn build_with_clock(
        mut settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        // Bind first, so an unset `public_url` names the real port (port 0 in tests).
        crate::observability::handle();
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let bound = listener.local_addr()?;
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => {
                // One crypto provider for the whole process, whatever else links rustls.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let config = http::server::tls_config(cert, key).with_context(|| {
                    format!(
                        "tls_cert/tls_key: cannot load {} and {}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some(config)
            }
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        settings
            .public_url
            .get_or_insert_with(|| format!("{scheme}://{bound}"));
        let lock = if settings.uses_embedded_store() {
            create_data_dir(&settings.data_dir)?;
            Some(lock_data_dir(&settings.data_dir)?)
        } else {
            None
        };
        let auth = open_service(&settings, clock).await?;
        bootstrap_admin(&auth, settings.admin_password.clone()).await?;
        let public = settings.issuer();
        let state = AppState::new(http::Shared {
            auth,
            http: HttpSettings {
                trusted_proxies: settings.trusted_proxies.clone(),
                max_body_bytes: settings.max_body_bytes as usize,
                cookies: Cookies::new(public.starts_with("https://"), settings.session_lifetime),
                public_origin: origin_of(&public),
                allowed_redirect_hosts: settings.allowed_redirect_hosts.clone(),
            },
            templates: Templates::new()?,
            shutting_down: Arc::new(AtomicBool::new(false)),
        });
        Ok(Self {
            listener,
            tls,
            state,
            shutdown_grace: settings.shutdown_grace,
            _lock: lock,
        })
    }

    /// The bound address (port 0 in tests becomes a real port here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The service, for tests that need to look behind the HTTP surface.
    pub fn auth(&self) -> Arc<Auth> {
        Arc::clone(&self.state.auth)
    }

    /// Serves until SIGTERM or SIGINT, then drains for at most `shutdown_grace`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let signal = shutdown_signal();
        tracing::info!(addr = %self.local_addr(), "listening");
        self.run_until(signal).await
    }

    /// Serves until `stop` completes, then drains for at most `shutdown_grace`.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            state,
            shutdown_grace,
            _lock,
        } = self;
        let background = spawn_background(Arc::clone(&state.auth));
        let flag = Arc::clone(&state.shutting_down);
        let on_stop = async move {
            stop.await;
            flag.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: draining in-flight requests");
        };
        let max_body = state.http.max_body_bytes;
        let service = http::service(http::Routes::new(state), max_body);
        // A task of its own, so that it runs on a worker thread: awaited in place, it would run
        // wherever this future is polled, in the binary the main thread's `block_on`, and each
        // connection accepted or ended would have to wake that thread as well. In a `JoinSet`,
        // which aborts it if this future is dropped (the server stops with it, as before).
        let mut server = tokio::task::JoinSet::new();
        server.spawn(http::server::serve(
            listener,
            tls,
            service,
            on_stop,
            shutdown_grace,
        ));
        if let Some(Err(e)) = server.join_next().await
            && e.is_panic()
        {
            // As if it had been awaited in place.
            std::panic::resume_unwind(e.into_panic());
        }
        for task in background {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn spawn_background(auth: Arc<Auth>) -> Vec<tokio::task::JoinHandle<()>> {
    let sweeper = {
        let auth = Arc::clone(&auth);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                match auth.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "expired sessions swept"),
                    Err(e) => tracing::warn!(error = %e, "session sweep failed"),
                }
            }
        })
    };
    let keys = tokio::spawn(async move {
        loop {
            // Until the ring is loaded (a store down at start-up), look every second.
            let pause = if auth.keys_loaded() {
                KEY_RELOAD_EVERY
            } else {
                Duration::from_secs(1)
            };
            tokio::time::sleep(pause).await;
            if let Err(e) = auth.reload_keys().await {
                tracing::warn!(error = %e, "key ring reload failed");
            }
        }
    });
    vec![sweeper, keys, crate::observability::spawn_upkeep()]
}

/// On an empty user table, creates `admin` with `TESSERA_ADMIN_PASSWORD` or a random password
/// printed once on stderr. A weak `TESSERA_ADMIN_PASSWORD` stops start-up when the table is
/// empty; a user store that does not answer yet (PostgreSQL down) does not: the check is tried
/// again in the background, after 1, 2, 4 and then every 10 s, until the store answers (and a
/// weak password found then is logged as an error).
async fn bootstrap_admin(auth: &Arc<Auth>, given: Option<SecretString>) -> anyhow::Result<()> {
    let (password, print) = match given {
        Some(p) => (p, false),
        None => (SecretString::from(b64(&random_32()[..18])), true),
    };
    match first_admin(auth, &password, print).await {
        Err(crate::service::AuthError::Unavailable) => {
            tracing::warn!(
                "the user store does not answer; the first admin is created once it does"
            );
            let auth = Arc::clone(auth);
            tokio::spawn(async move {
                // Each try that finds the store down logs a warning: back off to one per 10 s.
                let mut wait = Duration::from_secs(1);
                loop {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                    match first_admin(&auth, &password, print).await {
                        Err(crate::service::AuthError::Unavailable) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot create the first admin user");
                            return;
                        }
                        Ok(()) => return,
                    }
                }
            });
            Ok(())
        }
        done => done.context(
            "cannot create the first admin user (is TESSERA_ADMIN_PASSWORD strong enough?)",
        ),
    }
}

/// Creates `admin` if there is no user at all.
async fn first_admin(
    auth: &Auth,
    password: &SecretString,
    print: bool,
) -> Result<(), crate::service::AuthError> {
    if auth.user_count().await? > 0 {
        return Ok(());
    }
    auth.create_user("admin", password.clone(), &["admin".to_owned()])
        .await?;
    if print {
        eprintln!(
            "tessera: first start, created user 'admin' with role admin; admin password: {}",
            password.expose_secret()
        );
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    )
}

/// SIGTERM or SIGINT. The handlers are registered when this is called, not when the future is
/// first polled, so a signal that arrives right after start-up is not lost.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
