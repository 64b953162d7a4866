//! Zero-round-trip session reads for the Redis backend, with revocation still immediate.
//!
//! Each instance keeps recently read session records in memory and holds one extra Redis
//! connection with `CLIENT TRACKING ON BCAST PREFIX <prefix>:{u:` (RESP3). Redis then pushes the
//! name of every key under that prefix that anyone changes (a logout, an eviction, a role
//! change, a refresh rotation, a touch, an expiry, a `FLUSHALL`) on that connection, and the entry
//! is dropped when the push arrives. How long that takes is the staleness window; the benchmark
//! and the tests measure it.
//!
//! Correctness rules:
//! - A read that started before an invalidation of its key must not insert its (possibly older)
//!   answer after it: every read takes a ticket (the invalidation count of its shard) and
//!   inserts only if no invalidation happened in that shard since.
//! - When the tracking connection is down, nobody would tell us about changes: the cache is
//!   emptied and bypassed until the connection is back (and emptied again then, for what was
//!   missed meanwhile). A heartbeat finds a connection that died silently.
//! - The TTL bounds staleness if all of that fails (a silent partition shorter than the
//!   heartbeat).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};

use crate::domain::session::{ActiveSession, SessionId};
use crate::domain::user::UserId;

const SHARDS: usize = 64;

/// How often the tracking connection is pinged; with the store timeout, the longest a silently
/// dead connection goes unnoticed.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Proof that a read started at a given invalidation count of its shard.
pub struct Ticket {
    shard: usize,
    seen: u64,
}

/// The cache (see the module docs). Cheap to share behind an `Arc`.
pub struct SessionCache {
    entries: moka::sync::Cache<(UserId, SessionId), ActiveSession>,
    invalidations: [AtomicU64; SHARDS],
    tracking: AtomicBool,
    /// Bumped by [`SessionCache::suspend`]: a tracking connection opened before the last bump
    /// may watch a node the store has left, and must not serve.
    moves: AtomicU64,
    /// `<prefix>:{u:`: the tracked key prefix.
    user_prefix: String,
}

impl SessionCache {
    /// A cache of at most 100,000 sessions, each kept at most `ttl`.
    pub fn new(prefix: &str, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            invalidations: std::array::from_fn(|_| AtomicU64::new(0)),
            tracking: AtomicBool::new(false),
            moves: AtomicU64::new(0),
            user_prefix: format!("{prefix}:{{u:"),
        }
    }

    fn shard(user: UserId, id: SessionId) -> usize {
        let mixed = user.0.as_u128() ^ id.0.as_u128().rotate_left(64);
        (mixed as u64 ^ (mixed >> 64) as u64) as usize % SHARDS
    }

    /// The cached record, if the cache is trustworthy right now.
    pub fn get(&self, user: UserId, id: SessionId) -> Option<ActiveSession> {
        if !self.tracking.load(Ordering::Acquire) {
            return None;
        }
        self.entries.get(&(user, id))
    }

    /// Taken before reading a session from Redis.
    pub fn ticket(&self, user: UserId, id: SessionId) -> Ticket {
        let shard = Self::shard(user, id);
        Ticket {
            shard,
            seen: self.invalidations[shard].load(Ordering::Acquire),
        }
    }

    /// Keeps what a read returned, unless an invalidation may have overtaken it.
    pub fn insert(&self, ticket: Ticket, session: &ActiveSession) {
        if !self.tracking.load(Ordering::Acquire) {
            return;
        }
        self.entries
            .insert((session.user_id, session.id), session.clone());
        // Checked after the insert: an invalidation between the read and here either bumped
        // the count already (we undo the insert) or comes after the insert (it removes it).
        if self.invalidations[ticket.shard].load(Ordering::Acquire) != ticket.seen {
            self.entries.invalidate(&(session.user_id, session.id));
        }
    }

    /// Handles one push from the tracking connection.
    pub fn on_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key {
                            self.invalidate_key(key);
                        }
                    }
                }
                // A null list: FLUSHALL / FLUSHDB.
                _ => self.invalidate_all(),
            },
            PushKind::Disconnection => self.set_tracking(false),
            _ => {}
        }
    }

    fn invalidate_key(&self, key: &[u8]) {
        if let Some((user, id)) = self.parse_session_key(key) {
            self.forget(user, id);
        } // else an index or profile key: not cached here
    }

    /// Drops a session this instance has just changed, without waiting for the push, so this
    /// instance reads its own writes.
    pub fn forget(&self, user: UserId, id: SessionId) {
        self.invalidations[Self::shard(user, id)].fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(&(user, id));
    }

    /// Drops every session of a user this instance has just changed (revoke-all, roles).
    pub fn forget_user(&self, user: UserId) {
        for n in &self.invalidations {
            n.fetch_add(1, Ordering::AcqRel);
        }
        if self
            .entries
            .invalidate_entries_if(move |k, _| k.0 == user)
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    fn invalidate_all(&self) {
        for n in &self.invalidations {
            n.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
    }

    /// `<prefix>:{u:<user>}:s:<session>` → ids.
    fn parse_session_key(&self, key: &[u8]) -> Option<(UserId, SessionId)> {
        let rest = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.user_prefix.as_str())?;
        let (user, rest) = rest.split_once("}:s:")?;
        Some((UserId::parse(user)?, SessionId::parse(rest)?))
    }

    fn set_tracking(&self, on: bool) {
        // Empty on both edges: going down, nobody will tell us about changes; coming up, we
        // missed the changes made while down.
        self.invalidate_all();
        self.tracking.store(on, Ordering::Release);
        if on {
            self.invalidate_all();
        }
    }

    /// Stops serving entries until the tracker has reconnected: the store has just moved to
    /// another connection (behind Sentinel, maybe another master), which the tracking
    /// connection may not be watching.
    pub fn suspend(&self) {
        self.moves.fetch_add(1, Ordering::AcqRel);
        self.set_tracking(false);
    }

    /// Whether entries are being served.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Acquire)
    }
}

/// What the tracker checks at every heartbeat, besides that each connection answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// A standalone server: only that it answers.
    Node,
    /// Behind Sentinel: that the node is still the master (`ROLE`). A master demoted by a
    /// failover keeps its connections open but no longer takes the writes, so tracking it would
    /// hear of no logout.
    Master,
    /// A Cluster: that every tracked node is still a master, and that the cluster's masters
    /// (`CLUSTER SLOTS`) are still the tracked ones. A failover, or a master added and given
    /// slots, changes where sessions are written; the tracker then starts over on the new set.
    Masters,
}

/// Keeps tracking connections open for as long as the process runs, one per node that
/// sessions are written to, reconnecting after failures; the cache is bypassed while any of
/// them is missing.
///
/// `nodes` names those nodes, asked anew at every connection: the one server; behind Sentinel
/// whichever node is master now; on a Cluster, every master. `watch` says what each heartbeat
/// checks; when the check fails the tracker lets go and asks `nodes` again (meanwhile, like any
/// gap in tracking, the cache is bypassed).
pub fn spawn_tracker<F, Fut>(cache: Arc<SessionCache>, nodes: F, watch: Watch, timeout: Duration)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = redis::RedisResult<Vec<redis::Client>>> + Send,
{
    tokio::spawn(async move {
        loop {
            // Before asking where to connect: a move after this makes the answer suspect.
            let moves = cache.moves.load(Ordering::Acquire);
            // Under a deadline: behind Sentinel, `nodes` holds the lock the store's own
            // reconnection needs, and a sentinel that stops answering must not keep it.
            let tracked = match tokio::time::timeout(timeout * 4, nodes()).await {
                Ok(Ok(clients)) => track(&cache, &clients, moves, watch, timeout).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer on where to track",
                ))),
            };
            if let Err(e) = tracked {
                tracing::debug!(error = %e, "session cache tracking connection lost");
            }
            cache.set_tracking(false);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

async fn track(
    cache: &Arc<SessionCache>,
    clients: &[redis::Client],
    moves: u64,
    watch: Watch,
    timeout: Duration,
) -> redis::RedisResult<()> {
    if clients.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "no node to track",
        )));
    }
    let mut conns = Vec::with_capacity(clients.len());
    for client in clients {
        conns.push(tracking_connection(cache, client, timeout).await?);
    }
    let mut tracked: Vec<(String, u16)> = clients.iter().filter_map(host_and_port).collect();
    tracked.sort(); // as `cluster_masters` answers
    if !still_right(&mut conns, &tracked, watch).await? {
        return Ok(()); // the answer on where to track is already out of date: ask again
    }
    for conn in &mut conns {
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&cache.user_prefix)
            .exec_async(conn)
            .await?;
    }
    let moved = || cache.moves.load(Ordering::Acquire) != moves;
    if moved() {
        return Ok(());
    }
    cache.set_tracking(true);
    if moved() {
        // The store moved between the check and the switch: `suspend` may have switched off
        // before this switched on.
        return Ok(());
    }
    tracing::info!(
        nodes = conns.len(),
        "session cache on: Redis reports every change of a session"
    );
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if !still_right(&mut conns, &tracked, watch).await? {
            tracing::info!("session cache: the tracked Redis nodes no longer take the writes");
            return Ok(());
        }
        if !cache.is_tracking() || moved() {
            return Ok(()); // a disconnection was pushed, or the store moved, meanwhile
        }
    }
}

/// A RESP3 connection to `client`'s node whose invalidation pushes go to `cache`.
async fn tracking_connection(
    cache: &Arc<SessionCache>,
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let redis_settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
    let sink = Arc::clone(cache);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(move |push: PushInfo| {
            sink.on_push(&push);
            Ok::<(), std::convert::Infallible>(())
        });
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The heartbeat's check (see [`Watch`]), `tracked` being the tracked nodes, sorted; an error
/// when a node does not answer.
async fn still_right(
    conns: &mut [redis::aio::MultiplexedConnection],
    tracked: &[(String, u16)],
    watch: Watch,
) -> redis::RedisResult<bool> {
    for conn in conns.iter_mut() {
        if watch == Watch::Node {
            redis::cmd("PING").exec_async(conn).await?;
        } else if !is_master(conn).await? {
            return Ok(false);
        }
    }
    if watch == Watch::Masters {
        let Some(first) = conns.first_mut() else {
            return Ok(false);
        };
        return Ok(cluster_masters(first).await? == tracked);
    }
    Ok(true)
}

/// Whether the node behind `conn` says it is a master (`ROLE`).
async fn is_master(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<bool> {
    let role: redis::Role = redis::cmd("ROLE").query_async(conn).await?;
    Ok(matches!(role, redis::Role::Primary { .. }))
}

/// The masters of the cluster `conn` is a node of, as `(host, port)`, sorted: the first node
/// of each slot range of `CLUSTER SLOTS`.
pub(crate) async fn cluster_masters(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut masters = Vec::new();
    for range in ranges {
        // [first slot, last slot, [host, port, id, …] of the master, then its replicas]
        let Some(master) = range.into_iter().nth(2) else {
            continue;
        };
        let node: Vec<Value> = redis::from_redis_value(master)?;
        if let [host, port, ..] = node.as_slice() {
            let node = (
                redis::from_redis_value_ref::<String>(host)?,
                redis::from_redis_value_ref::<u16>(port)?,
            );
            if !masters.contains(&node) {
                masters.push(node);
            }
        }
    }
    masters.sort();
    Ok(masters)
}

/// A client for `host:port` with everything else (credentials, TLS, protocol) of `template`.
pub(crate) fn client_at(
    template: &redis::Client,
    host: &str,
    port: u16,
) -> redis::RedisResult<redis::Client> {
    use redis::ConnectionAddr;
    let info = template.get_connection_info().clone();
    let addr = match info.addr().clone() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure,
            tls_params,
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

fn host_and_port(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::Timestamp;
    use crate::domain::user::{Roles, Username};

    fn session() -> ActiveSession {
        let now = Timestamp::from_millis(1_000);
        ActiveSession {
            id: SessionId(uuid::Uuid::new_v4()),
            user_id: UserId(uuid::Uuid::new_v4()),
            username: Username::parse("alice").unwrap_or_else(|_| unreachable!()),
            roles: Roles::from_csv(""),
            last_seen_at: now,
            idle_expires_at: now,
            absolute_expires_at: now,
            cookie_hash: None,
        }
    }

    fn key(s: &ActiveSession) -> Vec<u8> {
        format!("p:{{u:{}}}:s:{}", s.user_id.0.simple(), s.id.0.simple()).into_bytes()
    }

    fn invalidate(keys: Vec<Vec<u8>>) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.into_iter().map(Value::BulkString).collect(),
            )],
        }
    }

    fn tracking_cache() -> SessionCache {
        let c = SessionCache::new("p", Duration::from_secs(60));
        c.set_tracking(true);
        c
    }

    #[test]
    fn a_pushed_key_drops_its_session() {
        let c = tracking_cache();
        let s = session();
        c.insert(c.ticket(s.user_id, s.id), &s);
        assert!(c.get(s.user_id, s.id).is_some());
        c.on_push(&invalidate(vec![key(&s)]));
        assert!(c.get(s.user_id, s.id).is_none());
    }

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let c = tracking_cache();
        let s = session();
        let ticket = c.ticket(s.user_id, s.id);
        c.on_push(&invalidate(vec![key(&s)])); // the logout lands while our read is in flight
        c.insert(ticket, &s);
        assert!(c.get(s.user_id, s.id).is_none());
    }

    #[test]
    fn flushall_and_a_lost_connection_empty_the_cache_and_stop_serving() {
        let c = tracking_cache();
        let s = session();
        c.insert(c.ticket(s.user_id, s.id), &s);
        c.on_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert!(c.get(s.user_id, s.id).is_none());
        c.insert(c.ticket(s.user_id, s.id), &s);
        c.on_push(&PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert!(c.get(s.user_id, s.id).is_none());
        c.insert(c.ticket(s.user_id, s.id), &s);
        assert!(c.get(s.user_id, s.id).is_none(), "bypassed while down");
    }

    #[test]
    fn other_keys_and_other_prefixes_are_ignored() {
        let c = tracking_cache();
        let s = session();
        c.insert(c.ticket(s.user_id, s.id), &s);
        c.on_push(&invalidate(vec![
            format!("p:{{u:{}}}:idx", s.user_id.0.simple()).into_bytes(),
            format!("q:{{u:{}}}:s:{}", s.user_id.0.simple(), s.id.0.simple()).into_bytes(),
        ]));
        assert!(c.get(s.user_id, s.id).is_some());
    }
}
