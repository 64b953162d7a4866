//! The Redis backend for sessions, refresh-token families, login-throttling counters, the
//! profile cache and the shared key ring: what lets any number of stateless instances share one
//! deployment (standalone, Sentinel or Cluster).
//!
//! Key layout (`P` is `redis_key_prefix`, default `tessera`):
//! - `P:{u:<user>}:s:<session>`  HASH, one session; PEXPIREAT = min(idle, absolute expiry).
//!   Field `u` packs all that authentication reads (see `AUTH_FIELD`); `c g h p t ua ip` hold
//!   the creation time, the refresh family and the device, for the session list and `/token`
//! - `P:{u:<user>}:idx`          ZSET of the user's session ids by creation time; at most
//!   `max_sessions_per_user` entries (pruned of dead ones when full), expires with the
//!   longest-lived session it lists
//! - `P:{u:<user>}:profile`      STRING, cached `/profile` (JSON), EX 300
//! - `P:rl:<counter>`            HASH {n, end}, one throttling window; PEXPIREAT = end
//! - `P:keyring`                 STRING, the key ring (JSON)
//!
//! Every multi-key operation is one Lua script over keys of one user, and all of a user's keys
//! share the `{u:<user>}` hash tag, so every script runs on Redis Cluster. Secrets are stored
//! only as SHA-256 hashes. Times are Unix milliseconds from the domain clock, passed in, so the
//! backend agrees with the embedded one on every expiry decision.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

use super::session_cache::SessionCache;
use super::{
    CachedProfile, KeyStore, LimitStore, ProfileCache, RefreshPresentation, Rotation, SessionStore,
    StoreError,
};
use crate::domain::clock::Timestamp;
use crate::domain::jwt::KeyRing;
use crate::domain::session::{ActiveSession, RefreshState, Session, SessionId};
use crate::domain::user::{Roles, UserId, Username};

/// Where the Redis deployment is, parsed from `redis_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// `redis://` or `rediss://` to one server.
    Standalone(String),
    /// `redis+sentinel://[user:pass@]h1:p1,h2:p2/<master name>[/<db>]`.
    Sentinel {
        /// Sentinel addresses as `redis://h:p` URLs.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// Password for the data nodes, if any.
        password: Option<String>,
        /// Database number.
        db: i64,
    },
    /// `redis+cluster://h1:p1,h2:p2,…` or a comma-separated list of `redis://` seed URLs.
    Cluster(Vec<String>),
}

impl Topology {
    /// Parses a `redis_url` setting.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((a, r)) => (Some(a), r),
                None => (None, rest),
            };
            let (hosts, path) = rest
                .split_once('/')
                .ok_or("redis+sentinel:// needs /<master name>")?;
            let mut parts = path.split('/');
            let master = parts
                .next()
                .filter(|m| !m.is_empty())
                .ok_or("missing master name")?;
            let db = match parts.next() {
                Some(d) if !d.is_empty() => d
                    .parse()
                    .map_err(|_| format!("bad database number {d:?}"))?,
                _ => 0,
            };
            let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned());
            let sentinels: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if sentinels.is_empty() {
                return Err("redis+sentinel:// needs at least one sentinel address".into());
            }
            return Ok(Self::Sentinel {
                sentinels,
                master: master.to_owned(),
                password,
                db,
            });
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if nodes.is_empty() {
                return Err("redis+cluster:// needs at least one seed node".into());
            }
            return Ok(Self::Cluster(nodes));
        }
        if url.contains(',') {
            let nodes: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).collect();
            if nodes
                .iter()
                .all(|n| n.starts_with("redis://") || n.starts_with("rediss://"))
            {
                return Ok(Self::Cluster(nodes));
            }
            return Err("a cluster list is comma-separated redis:// URLs".into());
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(Self::Standalone(url.to_owned()));
        }
        Err("expected redis://, rediss://, redis+sentinel://… or a cluster list".into())
    }
}

/// One connection handle over any topology.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How to (re)open a connection for the configured topology.
enum Connector {
    Standalone(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    /// The sentinel client is stateful (it remembers which sentinel answered), hence the lock.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// The Redis store. Cheap to clone.
///
/// The connection is opened lazily: a Redis that is down when tessera starts (or that a
/// Sentinel failover replaced) leaves the store without a connection, every call fails fast
/// with [`StoreError::Unavailable`], and the next call after Redis is reachable connects. So
/// tessera starts "up and not ready" and becomes ready by itself, without a restart.
#[derive(Clone)]
pub struct RedisStore {
    /// The connection and its generation (bumped on every reconnect).
    conn: Arc<std::sync::RwLock<Option<(u64, Conn)>>>,
    connector: Arc<Connector>,
    /// Held by the one caller that is connecting; the others fail fast instead of queueing
    /// connection attempts against a Redis that is down.
    connecting: Arc<tokio::sync::Mutex<()>>,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
    /// Session records served from memory (`session_cache_ttl`), standalone Redis only.
    cache: Option<Arc<SessionCache>>,
}

struct Scripts {
    create: Script,
    touch: Script,
    revoke: Script,
    revoke_all: Script,
    rotate: Script,
    set_roles: Script,
    limit_hit: Script,
    upgrade: Script,
}

/// No response timeout inside redis-rs: every command already runs under the store call's
/// deadline ([`RedisStore::run`]), and a second timer per command (one more timer-wheel insert
/// and removal) showed in the verification profile.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
        .set_response_timeout(None)
        .set_number_of_retries(1)
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Prepares the store for the deployment `topology` names and tries to connect once.
    /// Only a malformed configuration is an error; an unreachable Redis is logged and retried
    /// on use (see [`RedisStore`]).
    pub async fn connect(
        topology: &Topology,
        prefix: &str,
        timeout: Duration,
        session_cache_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let connector = match topology {
            Topology::Standalone(url) => Connector::Standalone(redis::Client::open(url.as_str())?),
            Topology::Cluster(nodes) => Connector::Cluster(
                redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout.max(Duration::from_millis(250)))
                    .response_timeout(timeout.max(Duration::from_millis(250)))
                    .build()?,
            ),
            Topology::Sentinel {
                sentinels,
                master,
                password,
                db,
            } => {
                let mut node = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(pw) = password {
                    node = node.set_password(pw);
                }
                let info = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(node);
                Connector::Sentinel(tokio::sync::Mutex::new(
                    redis::sentinel::SentinelClient::build(
                        sentinels.clone(),
                        master.clone(),
                        Some(info),
                        redis::sentinel::SentinelServerType::Master,
                    )?,
                ))
            }
        };
        let cache = match (&connector, session_cache_ttl.is_zero()) {
            (_, true) => None,
            (Connector::Standalone(client), false) => {
                let cache = Arc::new(SessionCache::new(prefix, session_cache_ttl));
                super::session_cache::spawn_tracker(Arc::clone(&cache), client.clone(), timeout);
                Some(cache)
            }
            (_, false) => {
                tracing::warn!(
                    "session_cache_ttl is ignored: the session cache needs a standalone redis_url"
                );
                None
            }
        };
        let store = Self {
            cache,
            conn: Arc::new(std::sync::RwLock::new(None)),
            connector: Arc::new(connector),
            connecting: Arc::new(tokio::sync::Mutex::new(())),
            prefix: prefix.into(),
            timeout,
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE),
                touch: Script::new(TOUCH),
                revoke: Script::new(REVOKE),
                revoke_all: Script::new(REVOKE_ALL),
                rotate: Script::new(ROTATE),
                set_roles: Script::new(SET_ROLES),
                limit_hit: Script::new(LIMIT_HIT),
                upgrade: Script::new(UPGRADE),
            }),
        };
        if let Err(e) = store.reconnect(None).await {
            tracing::error!(
                error = %e,
                "Redis is unreachable; tessera is up but not ready and keeps trying"
            );
        }
        Ok(store)
    }

    /// Whether session records are being served from memory right now (the tracking
    /// connection is up).
    pub fn session_cache_active(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.is_tracking())
    }

    /// A server setting (`CONFIG GET`), for the start-up advice; `None` when Redis does not
    /// have it or does not allow `CONFIG` (managed services often do not).
    pub async fn server_setting(&self, name: &str) -> Option<String> {
        let v: Vec<String> = self
            .run(|mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut c)
                    .await
            })
            .await
            .ok()?;
        v.get(1).cloned()
    }

    fn current(&self) -> Option<(u64, Conn)> {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Opens a new connection, unless another caller is already at it (then fails fast), or
    /// the connection of generation `broken` was replaced meanwhile (then there is nothing to
    /// do).
    async fn reconnect(&self, broken: Option<u64>) -> Result<(), StoreError> {
        let Ok(_guard) = self.connecting.try_lock() else {
            return Err(StoreError::Unavailable("redis: reconnecting".into()));
        };
        let current = self.current().map(|(generation, _)| generation);
        if current.is_some() && current != broken {
            return Ok(());
        }
        let fresh = match &*self.connector {
            Connector::Standalone(client) => {
                ConnectionManager::new_with_config(client.clone(), manager_config(self.timeout))
                    .await
                    .map(Conn::Single)
            }
            Connector::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            Connector::Sentinel(client) => {
                let master = client.lock().await.async_get_client().await;
                match master {
                    Ok(m) => ConnectionManager::new_with_config(m, manager_config(self.timeout))
                        .await
                        .map(Conn::Single),
                    Err(e) => Err(e),
                }
            }
        }
        .map_err(unavailable)?;
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((current.map_or(0, |g| g + 1), fresh));
        tracing::info!("connected to redis");
        Ok(())
    }

    /// Runs `f` on a connection under the store deadline (connecting first if need be). After
    /// a failure behind Sentinel it asks the sentinels for the current master, so a failover
    /// is followed without a restart; standalone and cluster connections heal by themselves.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let (generation, conn) = match self.current() {
                Some(c) => c,
                None => {
                    self.reconnect(None).await?;
                    self.current()
                        .ok_or_else(|| StoreError::Unavailable("redis: not connected".into()))?
                }
            };
            match f(conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if matches!(*self.connector, Connector::Sentinel(_)) && needs_rediscovery(&e) {
                        let _ = self.reconnect(Some(generation)).await;
                    }
                    Err(unavailable(e))
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "redis did not answer in time".into(),
            ))
        });
        crate::observability::store_call("redis", started, &result);
        if result.is_err()
            && matches!(*self.connector, Connector::Sentinel(_))
            && started.elapsed() >= self.timeout
        {
            // A master that stopped answering (rather than refusing): look for its successor
            // in the background so this request is not held past its deadline.
            let me = self.clone();
            let broken = self.current().map(|(generation, _)| generation);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(me.timeout * 4, me.reconnect(broken)).await;
            });
        }
        result
    }

    /// [`RedisStore::run`] for a write to the sessions of `user` (to session `id`, or to any
    /// of them): this instance's cached copies go at once, so it reads its own writes without
    /// waiting for Redis's invalidation push; other instances rely on the push.
    async fn run_write<T, F, Fut>(
        &self,
        user: UserId,
        id: Option<SessionId>,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result = self.run(f).await;
        if let Some(cache) = &self.cache {
            match id {
                Some(id) => cache.forget(user, id),
                None => cache.forget_user(user),
            }
        }
        result
    }

    fn user_tag(&self, user: UserId) -> String {
        format!("{}:{{u:{}}}", self.prefix, user.0.simple())
    }

    /// `<prefix>:{u:<user>}:s:<id>`, built without the formatting machinery and with one
    /// allocation: it is on every verification.
    fn session_key(&self, user: UserId, id: SessionId) -> String {
        let mut buf = uuid::Uuid::encode_buffer();
        let mut key = String::with_capacity(self.prefix.len() + 76);
        key.push_str(&self.prefix);
        key.push_str(":{u:");
        key.push_str(user.0.simple().encode_lower(&mut buf));
        key.push_str("}:s:");
        key.push_str(id.0.simple().encode_lower(&mut buf));
        key
    }

    fn session_prefix(&self, user: UserId) -> String {
        format!("{}:s:", self.user_tag(user))
    }

    fn index_key(&self, user: UserId) -> String {
        format!("{}:idx", self.user_tag(user))
    }

    fn limit_key(&self, key: &str) -> String {
        format!("{}:rl:{key}", self.prefix)
    }

    /// Runs [`UPGRADE`] on a session key: its packed auth value, or nil.
    async fn upgrade(&self, key: &str) -> Result<Value, StoreError> {
        self.run(|mut c| async move { self.scripts.upgrade.key(key).invoke_async(&mut c).await })
            .await
    }
}

fn needs_rediscovery(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// The hash field that holds everything authentication reads ([`ActiveSession`]), packed into
/// one value so that a verification is one `HGET` of one string (six fields read with `HMGET`
/// cost more than the rest of the Redis call to parse):
///
/// `<idle expiry> <absolute expiry> <last seen> <cookie hash, hex, or -> <username> <roles>`
///
/// Times are Unix milliseconds; roles are comma-separated and last because they may be empty.
/// Usernames and role names hold no spaces (see [`Username`], [`Role`]), so the layout splits
/// unambiguously, and the Lua scripts below read and rewrite it with the same patterns
/// (`auth_lua!`).
///
/// Sessions written by earlier builds kept these six values in the fields `u r l i a k`, with
/// the bare username in `u`: a `u` without a space is that older layout. The scripts rewrite it
/// to the packed one on first use and [`Record`] reads both, so an upgrade logs nobody out.
///
/// [`Role`]: crate::domain::user::Role
const AUTH_FIELD: &str = "u";

/// The value of [`AUTH_FIELD`] for a session.
fn pack_auth(s: &Session) -> Vec<u8> {
    use std::fmt::Write as _;
    let roles = s.roles.to_csv();
    let mut v = String::with_capacity(3 * 14 + 65 + s.username.as_str().len() + 1 + roles.len());
    let _ = write!(
        v,
        "{} {} {} ",
        s.idle_expires_at.as_millis(),
        s.absolute_expires_at.as_millis(),
        s.last_seen_at.as_millis()
    );
    match &s.cookie_hash {
        Some(h) => v.push_str(&hex::encode(h)),
        None => v.push('-'),
    }
    v.push(' ');
    v.push_str(s.username.as_str());
    v.push(' ');
    v.push_str(&roles);
    v.into_bytes()
}

fn session_fields(s: &Session) -> Vec<(&'static str, Vec<u8>)> {
    let mut f: Vec<(&'static str, Vec<u8>)> = vec![
        (AUTH_FIELD, pack_auth(s)),
        ("c", s.created_at.as_millis().to_string().into_bytes()),
        ("g", s.refresh.generation.to_string().into_bytes()),
        ("h", s.refresh.hash.to_vec()),
    ];
    if let Some(ua) = &s.user_agent {
        f.push(("ua", ua.as_bytes().to_vec()));
    }
    if let Some(ip) = &s.ip {
        f.push(("ip", ip.as_bytes().to_vec()));
    }
    f
}

/// A session hash as `HGETALL` returns it: field, value, field, value, … Read in place: a
/// session has a dozen fields, so a scan beats building a map (the map's allocations showed in
/// the verification profile).
fn field<'a>(flat: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    flat.chunks_exact(2)
        .find(|kv| kv[0] == name.as_bytes())
        .map(|kv| kv[1].as_slice())
}

fn parse_session_pairs(
    user: UserId,
    id: SessionId,
    flat: &[Vec<u8>],
) -> Result<Option<Session>, StoreError> {
    if flat.is_empty() {
        return Ok(None);
    }
    Record::new(|k| field(flat, k)).session(user, id).map(Some)
}

/// Whether a value of [`AUTH_FIELD`] is in the packed layout (an older record's bare username
/// has no space).
fn is_packed(v: &[u8]) -> bool {
    v.contains(&b' ')
}

fn corrupt(k: &str) -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("corrupt redis session field {k}"))
}

/// Reads a packed [`AUTH_FIELD`] value.
fn unpack_auth(user: UserId, id: SessionId, v: &[u8]) -> Result<ActiveSession, StoreError> {
    let bad = || corrupt(AUTH_FIELD);
    let v = std::str::from_utf8(v).map_err(|_| bad())?;
    let mut parts = v.splitn(6, ' ');
    let mut next = || parts.next().ok_or_else(bad);
    let time = |s: &str| s.parse().map(Timestamp::from_millis).map_err(|_| bad());
    let idle_expires_at = time(next()?)?;
    let absolute_expires_at = time(next()?)?;
    let last_seen_at = time(next()?)?;
    let cookie_hash = match next()? {
        "-" => None,
        k => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(k, &mut h).map_err(|_| bad())?;
            Some(h)
        }
    };
    let username = Username::parse(next()?).map_err(|_| bad())?;
    let roles = Roles::from_csv(next()?);
    Ok(ActiveSession {
        id,
        user_id: user,
        username,
        roles,
        last_seen_at,
        idle_expires_at,
        absolute_expires_at,
        cookie_hash,
    })
}

/// A session hash read back, by field name.
struct Record<F>(F);

impl<'a, F: Fn(&str) -> Option<&'a [u8]>> Record<F> {
    /// Reads fields through `field` (a name to its value).
    fn new(field: F) -> Self {
        Self(field)
    }

    fn text(&self, k: &str) -> Result<&'a str, StoreError> {
        let v = (self.0)(k).ok_or_else(|| corrupt(k))?;
        std::str::from_utf8(v).map_err(|_| corrupt(k))
    }

    fn time(&self, k: &str) -> Result<Timestamp, StoreError> {
        let ms = self.text(k)?.parse().map_err(|_| corrupt(k))?;
        Ok(Timestamp::from_millis(ms))
    }

    fn hash(&self, k: &str) -> Result<Option<[u8; 32]>, StoreError> {
        (self.0)(k)
            .map(|v| <[u8; 32]>::try_from(v).map_err(|_| corrupt(k)))
            .transpose()
    }

    fn opt_text(&self, k: &str) -> Option<String> {
        (self.0)(k)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    }

    /// The authentication fields, packed or in the older layout of separate fields.
    fn active(&self, user: UserId, id: SessionId) -> Result<ActiveSession, StoreError> {
        let auth = (self.0)(AUTH_FIELD).ok_or_else(|| corrupt(AUTH_FIELD))?;
        if is_packed(auth) {
            return unpack_auth(user, id, auth);
        }
        Ok(ActiveSession {
            id,
            user_id: user,
            username: Username::parse(self.text("u")?).map_err(|_| corrupt("u"))?,
            roles: Roles::from_csv(self.text("r")?),
            last_seen_at: self.time("l")?,
            idle_expires_at: self.time("i")?,
            absolute_expires_at: self.time("a")?,
            cookie_hash: self.hash("k")?,
        })
    }

    fn session(&self, user: UserId, id: SessionId) -> Result<Session, StoreError> {
        let active = self.active(user, id)?;
        let generation = self.text("g")?.parse().map_err(|_| corrupt("g"))?;
        Ok(Session {
            id,
            user_id: user,
            username: active.username,
            roles: active.roles,
            created_at: self.time("c")?,
            last_seen_at: active.last_seen_at,
            idle_expires_at: active.idle_expires_at,
            absolute_expires_at: active.absolute_expires_at,
            user_agent: self.opt_text("ua"),
            ip: self.opt_text("ip"),
            refresh: RefreshState {
                generation,
                hash: self.hash("h")?.ok_or_else(|| corrupt("h"))?,
                prev_hash: self.hash("p")?,
                rotated_at: self.time("t").ok(),
            },
            cookie_hash: active.cookie_hash,
        })
    }
}

/// The Lua side of [`AUTH_FIELD`]: `auth(key)` returns a session's idle and absolute expiry (as
/// numbers), its last-seen time and the rest of the packed value (`<cookie hash> <username>
/// <roles>`, as strings), or nothing when the key holds no session. A record in the older
/// layout is rewritten to the packed one first. Prepended to every script that reads a session.
macro_rules! auth_lua {
    () => {
        r"
local function auth(key)
  local v = redis.call('HGET', key, 'u')
  if not v then return nil end
  if not string.find(v, ' ', 1, true) then
    local o = redis.call('HMGET', key, 'r', 'l', 'i', 'a', 'k')
    if not (o[2] and o[3] and o[4]) then return nil end
    local k = '-'
    if o[5] then
      k = string.gsub(o[5], '.', function(c) return string.format('%02x', string.byte(c)) end)
    end
    v = o[3] .. ' ' .. o[4] .. ' ' .. o[2] .. ' ' .. k .. ' ' .. v .. ' ' .. (o[1] or '')
    redis.call('HSET', key, 'u', v)
    redis.call('HDEL', key, 'r', 'l', 'i', 'a', 'k')
  end
  local i, a, l, rest = string.match(v, '^(%d+) (%d+) (%d+) (.*)$')
  if not i then return nil end
  return tonumber(i), tonumber(a), l, rest
end
"
    };
}

/// Rewrites a session in the older field layout to the packed one (see [`AUTH_FIELD`]) and
/// returns the packed value; nil when there is no session. Only a verification that read an
/// older record runs it.
const UPGRADE: &str = concat!(
    auth_lua!(),
    r"
if not auth(KEYS[1]) then return false end
return redis.call('HGET', KEYS[1], 'u')
"
);

/// Creates a session and, when the index is full, prunes it of dead sessions and evicts the
/// oldest live ones beyond the limit. Below the limit it reads no other session: a script
/// blocks every other client of Redis while it runs, and walking all of a user's sessions on
/// every login made that pause grow with their number (measured as verification latency while
/// logins ran, with a limit of 1,000). The index therefore holds at most `max` entries, some of
/// them possibly dead; every reader of it already skips those.
const CREATE: &str = concat!(
    auth_lua!(),
    r"
local idx, prefix, now, max = KEYS[2], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local evicted = {}
if redis.call('ZCARD', idx) >= max then
  local live = {}
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    local i, a = auth(prefix .. m)
    if i and math.min(i, a) > now then
      table.insert(live, m)
    else
      redis.call('DEL', prefix .. m)
      redis.call('ZREM', idx, m)
    end
  end
  for i = 1, #live + 1 - max do
    redis.call('DEL', prefix .. live[i])
    redis.call('ZREM', idx, live[i])
    table.insert(evicted, live[i])
  end
end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
redis.call('ZADD', idx, ARGV[7], ARGV[1])
if redis.call('PEXPIRETIME', idx) < tonumber(ARGV[6]) then
  redis.call('PEXPIREAT', idx, ARGV[6])
end
return evicted
"
);

/// Records a use: last seen and the slid idle expiry.
const TOUCH: &str = concat!(
    auth_lua!(),
    r"
local i, a, _, rest = auth(KEYS[1])
if not i or math.min(i, a) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'u', ARGV[2] .. ' ' .. string.format('%d', a) .. ' ' .. ARGV[1] .. ' ' .. rest)
redis.call('PEXPIREAT', KEYS[1], math.min(tonumber(ARGV[2]), a))
return 1
"
);

/// Revokes one session.
const REVOKE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
";

/// Revokes every session of a user but one.
const REVOKE_ALL: &str = r"
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= ARGV[2] then
    n = n + redis.call('DEL', ARGV[1] .. m)
    redis.call('ZREM', KEYS[1], m)
  end
end
return n
";

/// Refresh rotation with reuse detection: the same rule as `RefreshState::decide`.
const ROTATE: &str = concat!(
    auth_lua!(),
    r"
local idle_at, abs, _, rest = auth(KEYS[1])
if not idle_at then return {'invalid'} end
local flat = redis.call('HGETALL', KEYS[1])
local h = {}
for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
local now = tonumber(ARGV[4])
if math.min(idle_at, abs) <= now then return {'invalid'} end
local gen, pgen = tonumber(h['g']), tonumber(ARGV[1])
if pgen == gen then
  if ARGV[2] ~= h['h'] then return {'invalid'} end
  local idle = math.min(now + tonumber(ARGV[6]), abs)
  local packed = string.format('%d %d ', idle, abs) .. ARGV[4] .. ' ' .. rest
  redis.call('HSET', KEYS[1], 'g', ARGV[8], 'h', ARGV[3], 'p', ARGV[2], 't', ARGV[4], 'u', packed)
  redis.call('PEXPIREAT', KEYS[1], idle)
  local out = {'rotated'}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
local t = tonumber(h['t'] or '0')
if pgen + 1 == gen and h['p'] == ARGV[2] and (now < t + tonumber(ARGV[5]) or now == t) then
  local out = {'grace'}
  for _, v in ipairs(flat) do out[#out + 1] = v end
  return out
end
if pgen < gen then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[7])
  return {'reused'}
end
return {'invalid'}
"
);

/// Copies new roles into every live session of a user.
const SET_ROLES: &str = concat!(
    auth_lua!(),
    r"
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local i, a, l, rest = auth(ARGV[1] .. m)
  local head = rest and string.match(rest, '^(%S+ %S+) ')
  if head then
    local packed = string.format('%d %d ', i, a) .. l .. ' ' .. head .. ' ' .. ARGV[2]
    redis.call('HSET', ARGV[1] .. m, 'u', packed)
  end
end
return 1
"
);

/// Counts a failure in a fixed window that starts at the first failure.
const LIMIT_HIT: &str = r"
local now = tonumber(ARGV[1])
local e = redis.call('HMGET', KEYS[1], 'n', 'end')
if e[2] and tonumber(e[2]) > now then
  return redis.call('HINCRBY', KEYS[1], 'n', 1)
end
local window_end = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'n', 1, 'end', window_end)
redis.call('PEXPIREAT', KEYS[1], window_end)
return 1
";

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(
        &self,
        session: &Session,
        max_per_user: usize,
        now: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError> {
        let key = self.session_key(session.user_id, session.id);
        let idx = self.index_key(session.user_id);
        let prefix = self.session_prefix(session.user_id);
        // A new session is in no cache; the sessions it evicted are forgotten below.
        let evicted: Result<Vec<String>, StoreError> = self
            .run(|mut c| async move {
                let mut inv = self.scripts.create.prepare_invoke();
                inv.key(&key)
                    .key(&idx)
                    .arg(session.id.0.simple().to_string())
                    .arg(&prefix)
                    .arg(now.as_millis())
                    .arg(max_per_user.max(1))
                    .arg(session.expires_at().as_millis())
                    .arg(session.absolute_expires_at.as_millis())
                    .arg(session.created_at.as_millis());
                for (k, v) in session_fields(session) {
                    inv.arg(k).arg(v);
                }
                inv.invoke_async(&mut c).await
            })
            .await;
        let evicted = match evicted {
            Ok(evicted) => evicted,
            Err(e) => {
                // Whether anything was evicted is unknown: forget all of the user's sessions.
                if let Some(cache) = &self.cache {
                    cache.forget_user(session.user_id);
                }
                return Err(e);
            }
        };
        let evicted: Vec<SessionId> = evicted.iter().filter_map(|s| SessionId::parse(s)).collect();
        if let Some(cache) = &self.cache {
            for id in &evicted {
                cache.forget(session.user_id, *id);
            }
        }
        Ok(evicted)
    }

    fn get_cached(&self, user: UserId, id: SessionId, now: Timestamp) -> Option<ActiveSession> {
        let cache = self.cache.as_ref()?;
        cache.get(user, id).filter(|s| s.is_alive(now))
    }

    async fn get(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<ActiveSession>, StoreError> {
        if let Some(s) = self.get_cached(user, id, now) {
            return Ok(Some(s));
        }
        let ticket = self.cache.as_ref().map(|cache| cache.ticket(user, id));
        let key = &self.session_key(user, id);
        let reply: Value = self
            .run(|mut c| async move {
                // Sized up front: grown argument by argument, the command's buffers were
                // reallocated per argument. The data buffer holds the arguments' bytes.
                let data = "HGET".len() + key.len() + AUTH_FIELD.len();
                let mut cmd = Cmd::with_capacity(3, data);
                cmd.arg("HGET").arg(key).arg(AUTH_FIELD);
                cmd.query_async(&mut c).await
            })
            .await?;
        let reply = match reply {
            // Written by an earlier build: rewrite it once, then read it as usual. Boxed: this
            // cold path would otherwise grow the future every verification moves.
            Value::BulkString(v) if !is_packed(&v) => Box::pin(self.upgrade(key)).await?,
            reply => reply,
        };
        let session = match &reply {
            Value::Nil => None,
            Value::BulkString(v) => Some(unpack_auth(user, id, v)?),
            _ => {
                return Err(StoreError::Unexpected(anyhow::anyhow!(
                    "redis answered HGET with something other than a string"
                )));
            }
        };
        if let (Some(cache), Some(ticket), Some(s)) = (&self.cache, ticket, &session) {
            cache.insert(ticket, s);
        }
        Ok(session.filter(|s| s.is_alive(now)))
    }

    async fn touch(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
        idle_expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let key = self.session_key(user, id);
        let _: i64 = self
            .run_write(user, Some(id), |mut c| async move {
                self.scripts
                    .touch
                    .key(&key)
                    .arg(now.as_millis())
                    .arg(idle_expires_at.as_millis())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn list(&self, user: UserId, now: Timestamp) -> Result<Vec<Session>, StoreError> {
        let idx = self.index_key(user);
        let ids: Vec<String> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&idx)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let ids: Vec<SessionId> = ids.iter().filter_map(|s| SessionId::parse(s)).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.session_key(user, *id)).collect();
        let all: Vec<Vec<Vec<u8>>> = self
            .run(|mut c| async move {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("HGETALL").arg(k);
                }
                p.query_async(&mut c).await
            })
            .await?;
        let mut out = Vec::new();
        for (id, flat) in ids.into_iter().zip(all) {
            if let Some(s) = parse_session_pairs(user, id, &flat)?
                && s.is_alive(now)
            {
                out.push(s);
            }
        }
        out.sort_by_key(|s| (s.created_at, s.id));
        Ok(out)
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool, StoreError> {
        let (key, idx) = (self.session_key(user, id), self.index_key(user));
        let n: i64 = self
            .run_write(user, Some(id), |mut c| async move {
                self.scripts
                    .revoke
                    .key(&key)
                    .key(&idx)
                    .arg(id.0.simple().to_string())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn revoke_all(&self, user: UserId, keep: Option<SessionId>) -> Result<u64, StoreError> {
        let (idx, prefix) = (self.index_key(user), self.session_prefix(user));
        let keep = keep.map(|k| k.0.simple().to_string()).unwrap_or_default();
        let n: u64 = self
            .run_write(user, None, |mut c| async move {
                self.scripts
                    .revoke_all
                    .key(&idx)
                    .arg(&prefix)
                    .arg(&keep)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n)
    }

    async fn rotate_refresh(
        &self,
        user: UserId,
        id: SessionId,
        p: &RefreshPresentation,
        now: Timestamp,
    ) -> Result<Rotation, StoreError> {
        let (key, idx) = (self.session_key(user, id), self.index_key(user));
        let reply: Vec<Vec<u8>> = self
            .run_write(user, Some(id), |mut c| async move {
                self.scripts
                    .rotate
                    .key(&key)
                    .key(&idx)
                    .arg(p.generation)
                    .arg(p.hash.as_slice())
                    .arg(p.successor_hash.as_slice())
                    .arg(now.as_millis())
                    .arg(p.grace.as_millis() as u64)
                    .arg(p.idle_timeout.as_millis() as u64)
                    .arg(id.0.simple().to_string())
                    .arg(p.generation + 1)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let Some((status, fields)) = reply.split_first() else {
            return Ok(Rotation::Invalid);
        };
        let session = || parse_session_pairs(user, id, fields);
        Ok(match status.as_slice() {
            b"rotated" => session()?.map_or(Rotation::Invalid, Rotation::Rotated),
            b"grace" => session()?.map_or(Rotation::Invalid, Rotation::Grace),
            b"reused" => Rotation::Reused,
            _ => Rotation::Invalid,
        })
    }

    async fn set_roles(&self, user: UserId, roles: &Roles) -> Result<(), StoreError> {
        let (idx, prefix, csv) = (
            self.index_key(user),
            self.session_prefix(user),
            roles.to_csv(),
        );
        let _: i64 = self
            .run_write(user, None, |mut c| async move {
                self.scripts
                    .set_roles
                    .key(&idx)
                    .arg(&prefix)
                    .arg(&csv)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn count_live(&self, _now: Timestamp) -> Result<Option<u64>, StoreError> {
        // Counting would need a SCAN over the key space; not worth it on every sweep.
        Ok(None)
    }

    async fn sweep(&self, _now: Timestamp) -> Result<u64, StoreError> {
        // Redis expires sessions by itself (PEXPIREAT) and indexes are pruned on every write.
        Ok(0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn get(&self, key: &str, now: Timestamp) -> Result<(u64, Option<Timestamp>), StoreError> {
        let key = self.limit_key(key);
        let (n, end): (Option<u64>, Option<i64>) = self
            .run(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("n")
                    .arg("end")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (n, end) {
            (Some(n), Some(end)) if now.as_millis() < end => (n, Some(Timestamp::from_millis(end))),
            _ => (0, None),
        })
    }

    async fn hit(&self, key: &str, window: Duration, now: Timestamp) -> Result<u64, StoreError> {
        let key = self.limit_key(key);
        self.run(|mut c| async move {
            self.scripts
                .limit_hit
                .key(&key)
                .arg(now.as_millis())
                .arg(window.as_millis() as u64)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    async fn clear(&self, key: &str) -> Result<(), StoreError> {
        let key = self.limit_key(key);
        let _: i64 = self
            .run(|mut c| async move { redis::cmd("DEL").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn load(&self) -> Result<Option<KeyRing>, StoreError> {
        let key = format!("{}:keyring", self.prefix);
        let raw: Option<String> = self
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Unexpected(e.into())))
            .transpose()
    }

    async fn init(&self, ring: &KeyRing) -> Result<KeyRing, StoreError> {
        let key = format!("{}:keyring", self.prefix);
        let json = serde_json::to_string(ring).map_err(|e| StoreError::Unexpected(e.into()))?;
        // SET NX: when several instances start at once, the first ring wins and all agree.
        let _: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.load()
            .await?
            .ok_or_else(|| StoreError::Unavailable("key ring vanished".into()))
    }

    async fn save(&self, ring: &KeyRing) -> Result<(), StoreError> {
        let key = format!("{}:keyring", self.prefix);
        let json = serde_json::to_string(ring).map_err(|e| StoreError::Unexpected(e.into()))?;
        let _: String = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ProfileCache for RedisStore {
    async fn get(&self, user: UserId) -> Result<Option<CachedProfile>, StoreError> {
        let key = format!("{}:profile", self.user_tag(user));
        let raw: Option<String> = self
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn put(&self, profile: &CachedProfile, ttl: Duration) -> Result<(), StoreError> {
        let key = format!("{}:profile", self.user_tag(profile.id));
        let json = serde_json::to_string(profile).map_err(|e| StoreError::Unexpected(e.into()))?;
        let _: String = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn invalidate(&self, user: UserId) -> Result<(), StoreError> {
        let key = format!("{}:profile", self.user_tag(user));
        let _: i64 = self
            .run(|mut c| async move { redis::cmd("DEL").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails on the first unexpected value"
)]
mod tests {
    use super::*;

    fn ids() -> (UserId, SessionId) {
        (
            UserId(uuid::Uuid::new_v4()),
            SessionId(uuid::Uuid::new_v4()),
        )
    }

    fn sample(cookie_hash: Option<[u8; 32]>, roles: &str) -> Session {
        let (user, id) = ids();
        let at = |ms| Timestamp::from_millis(ms);
        Session {
            id,
            user_id: user,
            username: Username::parse("alice.b@example-1").unwrap(),
            roles: Roles::from_csv(roles),
            created_at: at(1_700_000_000_000),
            last_seen_at: at(1_700_000_000_500),
            idle_expires_at: at(1_700_001_800_500),
            absolute_expires_at: at(1_702_592_000_000),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
            ip: Some("192.0.2.1".into()),
            refresh: RefreshState {
                generation: 3,
                hash: [7; 32],
                prev_hash: None,
                rotated_at: None,
            },
            cookie_hash,
        }
    }

    /// The packed auth field reads back as written, with and without a cookie, with no role and
    /// with several, and a whole record written by `session_fields` reads back whole.
    #[test]
    fn the_packed_auth_field_round_trips() {
        for (cookie, roles) in [
            (None, ""),
            (Some([0xa5; 32]), "admin"),
            (Some([0; 32]), "admin,ops:read,x.y-z"),
        ] {
            let s = sample(cookie, roles);
            let got = unpack_auth(s.user_id, s.id, &pack_auth(&s)).unwrap();
            assert_eq!(
                (got.username.as_str(), got.roles.to_csv(), got.cookie_hash),
                (s.username.as_str(), roles.to_owned(), cookie)
            );
            assert_eq!(
                (
                    got.last_seen_at,
                    got.idle_expires_at,
                    got.absolute_expires_at
                ),
                (s.last_seen_at, s.idle_expires_at, s.absolute_expires_at)
            );
            let flat: Vec<Vec<u8>> = session_fields(&s)
                .into_iter()
                .flat_map(|(k, v)| [k.as_bytes().to_vec(), v])
                .collect();
            let whole = parse_session_pairs(s.user_id, s.id, &flat)
                .unwrap()
                .unwrap();
            assert_eq!(whole, s);
        }
    }

    /// A session key holding something else than our record (another writer, a damaged value)
    /// must be a store error, never a panic and never an authenticated session.
    #[test]
    fn auth_fields_that_are_not_a_whole_record_are_refused() {
        let (user, id) = ids();
        let good = "1000 9000 500 - alice admin";
        assert!(unpack_auth(user, id, good.as_bytes()).is_ok());
        for bad in [
            "",
            "1000 9000 500 - alice", // roles missing (empty roles keep their space)
            "1000 9000 - alice admin", // a time missing
            "soon 9000 500 - alice admin", // not a time
            "1000 9000 500 abcd alice admin", // a cookie hash of the wrong length
            "1000 9000 500 - Al!ce admin", // not a username
        ] {
            assert!(unpack_auth(user, id, bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(unpack_auth(user, id, b"1000 9000 500 - \xff admin").is_err());
    }

    /// Records written by earlier builds (separate `u r l i a k` fields) are still read.
    #[test]
    fn a_record_in_the_older_field_layout_is_read() {
        let s = sample(Some([0x41; 32]), "admin");
        let ms = |t: Timestamp| t.as_millis().to_string().into_bytes();
        let old: Vec<(&str, Vec<u8>)> = vec![
            ("u", b"alice.b@example-1".to_vec()),
            ("r", b"admin".to_vec()),
            ("c", ms(s.created_at)),
            ("l", ms(s.last_seen_at)),
            ("i", ms(s.idle_expires_at)),
            ("a", ms(s.absolute_expires_at)),
            ("g", b"3".to_vec()),
            ("h", vec![7; 32]),
            ("ua", b"Mozilla/5.0 (X11; Linux x86_64)".to_vec()),
            ("ip", b"192.0.2.1".to_vec()),
            ("k", vec![0x41; 32]),
        ];
        let flat: Vec<Vec<u8>> = old
            .into_iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v])
            .collect();
        let got = parse_session_pairs(s.user_id, s.id, &flat)
            .unwrap()
            .unwrap();
        assert_eq!(got, s);
    }

    #[test]
    fn redis_urls_name_their_topology() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/0"),
            Ok(Topology::Standalone("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            Topology::parse("redis+cluster://a:1,b:2"),
            Ok(Topology::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(
            Topology::parse("redis://a:1,redis://b:2"),
            Ok(Topology::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(
            Topology::parse("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2"),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                password: Some("pw".into()),
                db: 2,
            })
        );
        assert!(Topology::parse("redis+sentinel://s1:26379").is_err());
        assert!(Topology::parse("http://x").is_err());
    }
}
