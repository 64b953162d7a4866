//! The Redis backend for sessions, refresh-token families, login-throttling counters, the
//! profile cache and the shared key ring: what lets any number of stateless instances share one
//! deployment (standalone, Sentinel or Cluster).
//!
//! Key layout (`P` is `redis_key_prefix`, default `tessera`):
//! - `P:{u:<user>}:s:<session>`  STRING, one session's record (see [`record`]), what
//!   authentication reads first; PEXPIREAT = min(idle, absolute expiry)
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

mod record;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

use super::session_cache::{SessionCache, Watch};
use super::{
    CachedProfile, KeyStore, LimitStore, ProfileCache, RefreshPresentation, Rotation, SessionStore,
    StoreError,
};
use crate::domain::clock::Timestamp;
use crate::domain::jwt::KeyRing;
use crate::domain::secret::b64;
use crate::domain::session::{ActiveSession, Session, SessionId};
use crate::domain::user::{Roles, UserId};

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
    /// The cluster's client, and one client per seed node (to ask the cluster its masters).
    Cluster(redis::cluster::ClusterClient, Vec<redis::Client>),
    /// The sentinel client is stateful (it remembers which sentinel answered), hence the lock.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Connector {
    /// A client for the node sessions are written to, which the store connects to: behind
    /// Sentinel, the current master (as the sentinels say and the node confirms). Not defined
    /// for a Cluster.
    async fn node(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Standalone(client) => Ok(client.clone()),
            Self::Sentinel(client) => client.lock().await.async_get_client().await,
            Self::Cluster(..) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "a cluster has no single node",
            ))),
        }
    }

    /// Clients for every node sessions are written to, which the session cache tracks: the
    /// [`node`](Self::node), or every master of a Cluster (as the first seed that answers
    /// says).
    async fn nodes(&self, timeout: Duration) -> redis::RedisResult<Vec<redis::Client>> {
        let Self::Cluster(_, seeds) = self else {
            return Ok(vec![self.node().await?]);
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut last = RedisError::from((redis::ErrorKind::Client, "no seed node"));
        for seed in seeds {
            let asked = async {
                let mut conn = seed
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                super::session_cache::cluster_masters(&mut conn).await
            };
            match asked.await {
                Ok(masters) => {
                    return masters
                        .iter()
                        .map(|(host, port)| super::session_cache::client_at(seed, host, *port))
                        .collect();
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
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
    /// Session records served from memory (`session_cache_ttl`).
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
    read_all: Script,
}

/// A script that reads sessions: [`record::LUA`] and then `body`.
fn session_script(body: &str) -> Script {
    Script::new(&format!("{}{body}", record::LUA))
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
                nodes
                    .iter()
                    .map(|n| redis::Client::open(n.as_str()))
                    .collect::<Result<_, _>>()?,
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
        let connector = Arc::new(connector);
        let cache = (!session_cache_ttl.is_zero()).then(|| {
            let cache = Arc::new(SessionCache::new(prefix, session_cache_ttl));
            let watch = match *connector {
                Connector::Standalone(_) => Watch::Node,
                Connector::Sentinel(_) => Watch::Master,
                Connector::Cluster(..) => Watch::Masters,
            };
            let nodes = {
                let connector = Arc::clone(&connector);
                move || {
                    let connector = Arc::clone(&connector);
                    async move { connector.nodes(timeout).await }
                }
            };
            super::session_cache::spawn_tracker(Arc::clone(&cache), nodes, watch, timeout);
            cache
        });
        let store = Self {
            cache,
            conn: Arc::new(std::sync::RwLock::new(None)),
            connector,
            connecting: Arc::new(tokio::sync::Mutex::new(())),
            prefix: prefix.into(),
            timeout,
            scripts: Arc::new(Scripts {
                create: session_script(CREATE),
                touch: session_script(TOUCH),
                revoke: Script::new(REVOKE),
                revoke_all: Script::new(REVOKE_ALL),
                rotate: session_script(ROTATE),
                set_roles: session_script(SET_ROLES),
                limit_hit: Script::new(LIMIT_HIT),
                upgrade: session_script(UPGRADE),
                read_all: session_script(READ_ALL),
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
            Connector::Cluster(client, _) => client.get_async_connection().await.map(Conn::Cluster),
            single => match single.node().await {
                Ok(node) => ConnectionManager::new_with_config(node, manager_config(self.timeout))
                    .await
                    .map(Conn::Single),
                Err(e) => Err(e),
            },
        }
        .map_err(unavailable)?;
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((current.map_or(0, |g| g + 1), fresh));
        if let (Some(_), Connector::Sentinel(_), Some(cache)) =
            (current, &*self.connector, &self.cache)
        {
            // Maybe another master now, which the tracking connection may not be watching:
            // nothing from memory until it has followed.
            cache.suspend();
        }
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
        // tokio's clock, which the deadline is kept on (and tests can pause).
        let started = tokio::time::Instant::now();
        let result = crate::deadline::within(started + self.timeout, async {
            let (generation, conn) = match self.current() {
                Some(c) => c,
                None => {
                    // Boxed, here and below: the connect future is ~3.5 KB, and inline it made
                    // every store call's future that large, copied into its box on every call.
                    Box::pin(self.reconnect(None)).await?;
                    self.current()
                        .ok_or_else(|| StoreError::Unavailable("redis: not connected".into()))?
                }
            };
            match f(conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if matches!(*self.connector, Connector::Sentinel(_)) && needs_rediscovery(&e) {
                        let _ = Box::pin(self.reconnect(Some(generation))).await;
                    }
                    Err(unavailable(e))
                }
            }
        })
        .await
        .unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "redis did not answer in time".into(),
            ))
        });
        crate::observability::store_call("redis", started.into_std(), &result);
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

    /// Runs [`UPGRADE`] on a session key: its record, or nil.
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

/// Creates a session and, when the index is full, prunes it of dead sessions and evicts the
/// oldest live ones beyond the limit. Below the limit it reads no other session: a script
/// blocks every other client of Redis while it runs, and walking all of a user's sessions on
/// every login made that pause grow with their number (measured as verification latency while
/// logins ran, with a limit of 1,000). The index therefore holds at most `max` entries, some of
/// them possibly dead; every reader of it already skips those. Reads sessions through
/// [`record::LUA`].
const CREATE: &str = r"
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
redis.call('SET', KEYS[1], ARGV[8], 'PXAT', ARGV[5])
redis.call('ZADD', idx, ARGV[7], ARGV[1])
if redis.call('PEXPIRETIME', idx) < tonumber(ARGV[6]) then
  redis.call('PEXPIREAT', idx, ARGV[6])
end
return evicted
";

/// Records a use: last seen and the slid idle expiry.
const TOUCH: &str = r"
local i, a, _, rest = auth(KEYS[1])
if not i or math.min(i, a) <= tonumber(ARGV[1]) then return 0 end
local v = ARGV[2] .. ' ' .. string.format('%d', a) .. ' ' .. ARGV[1] .. ' ' .. rest
redis.call('SET', KEYS[1], v, 'PXAT', string.format('%d', math.min(tonumber(ARGV[2]), a)))
return 1
";

/// A session's record, rewritten from an earlier build's hash first if need be; nil when there
/// is none. Only a verification that found such a hash runs it.
const UPGRADE: &str = r"
return record(KEYS[1])
";

/// The records of one user's sessions (`KEYS`), nil for each that is gone.
const READ_ALL: &str = r"
local out = {}
for j, key in ipairs(KEYS) do out[j] = record(key) end
return out
";

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

/// Refresh rotation with reuse detection: the same rule as `RefreshState::decide`. Hashes
/// arrive as the record writes them; the answer is the status and, for `rotated` and `grace`,
/// the record.
const ROTATE: &str = r"
local v = record(KEYS[1])
if not v then return {'invalid'} end
local i, a, head, gen, h, p, t, tail = string.match(v,
  '^(%d+) (%d+) %d+ (%S+ %S+ %S* %d+) (%d+) (%S+) (%S+) (%S+) (.*)$')
if not i then return {'invalid'} end
local now, abs = tonumber(ARGV[4]), tonumber(a)
if math.min(tonumber(i), abs) <= now then return {'invalid'} end
local gen, pgen = tonumber(gen), tonumber(ARGV[1])
if pgen == gen then
  if ARGV[2] ~= h then return {'invalid'} end
  local idle = math.min(now + tonumber(ARGV[6]), abs)
  local rotated = string.format('%d %d ', idle, abs) .. ARGV[4] .. ' ' .. head .. ' ' ..
    ARGV[8] .. ' ' .. ARGV[3] .. ' ' .. ARGV[2] .. ' ' .. ARGV[4] .. ' ' .. tail
  redis.call('SET', KEYS[1], rotated, 'PXAT', string.format('%d', idle))
  return {'rotated', rotated}
end
local t = tonumber(t) or 0
if pgen + 1 == gen and p == ARGV[2] and (now < t + tonumber(ARGV[5]) or now == t) then
  return {'grace', v}
end
if pgen < gen then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[7])
  return {'reused'}
end
return {'invalid'}
";

/// Copies new roles into every session of a user.
const SET_ROLES: &str = r"
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. m
  local v, head, tail = record(key)
  if v then head, tail = string.match(v, '^(%d+ %d+ %d+ %S+ %S+) %S* (.*)$') end
  if head then
    redis.call('SET', key, head .. ' ' .. ARGV[2] .. ' ' .. tail, 'KEEPTTL')
  end
end
return 1
";

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
                    .arg(session.created_at.as_millis())
                    .arg(record::pack(session));
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
        let reply: Option<Value> = self
            .run(|mut c| async move {
                // Sized up front: grown argument by argument, the command's buffers were
                // reallocated per argument. The data buffer holds the arguments' bytes.
                let mut cmd = Cmd::with_capacity(2, "GET".len() + key.len());
                cmd.arg("GET").arg(key);
                match cmd.query_async(&mut c).await {
                    // A hash: a session written by an earlier build (see `record`).
                    Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
                    reply => reply.map(Some),
                }
            })
            .await?;
        let reply = match reply {
            Some(reply) => reply,
            // Rewritten once, then read as usual. Boxed: this cold path would otherwise grow
            // the future every verification moves.
            None => Box::pin(self.upgrade(key)).await?,
        };
        let session = match &reply {
            Value::Nil => None,
            Value::BulkString(v) => Some(record::unpack_active(user, id, v)?),
            _ => {
                return Err(StoreError::Unexpected(anyhow::anyhow!(
                    "redis answered GET with something other than a string"
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
        let all: Vec<Option<Vec<u8>>> = self
            .run(|mut c| async move {
                let mut inv = self.scripts.read_all.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        let mut out = Vec::new();
        for (id, v) in ids.into_iter().zip(all) {
            if let Some(v) = v {
                let s = record::unpack(user, id, &v)?;
                if s.is_alive(now) {
                    out.push(s);
                }
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
                    // As the record holds hashes (unpadded base64url), for the script to compare.
                    .arg(b64(&p.hash))
                    .arg(b64(&p.successor_hash))
                    .arg(now.as_millis())
                    .arg(p.grace.as_millis() as u64)
                    .arg(p.idle_timeout.as_millis() as u64)
                    .arg(id.0.simple().to_string())
                    .arg(p.generation + 1)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let (status, v) = match reply.as_slice() {
            [status] => (status, None),
            [status, v] => (status, Some(v)),
            _ => return Ok(Rotation::Invalid),
        };
        let session = || match v {
            Some(v) => record::unpack(user, id, v),
            None => Err(StoreError::Unexpected(anyhow::anyhow!(
                "refresh rotation answered without the session"
            ))),
        };
        Ok(match status.as_slice() {
            b"rotated" => Rotation::Rotated(session()?),
            b"grace" => Rotation::Grace(session()?),
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

    /// Every store call's future is moved into a box on every call: the connect path, ~3.5 KB
    /// of future, is boxed so it does not make every call that large (it made `get` 4,000
    /// bytes; 552 once boxed, in a release build).
    #[tokio::test]
    async fn a_store_calls_future_does_not_carry_the_connect_path() {
        let store = RedisStore::connect(
            &Topology::Standalone("redis://127.0.0.1:1/0".into()),
            "p",
            Duration::from_millis(50),
            Duration::ZERO,
        )
        .await
        .unwrap();
        let connect = std::mem::size_of_val(&store.reconnect(None));
        let get = SessionStore::get(
            &store,
            UserId(uuid::Uuid::nil()),
            SessionId(uuid::Uuid::nil()),
            Timestamp::from_millis(0),
        );
        let get = std::mem::size_of_val(&*get);
        assert!(get < connect, "get: {get} bytes, connect: {connect} bytes");
    }
}
