//! One contract per storage trait, run against every backend: embedded SQLite/in-memory, Redis
//! standalone and Redis Cluster for the session side; SQLite and PostgreSQL for users.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera::domain::clock::Timestamp;
use tessera::domain::jwt::{KeyRing, SigningAlg};
use tessera::domain::session::{RefreshState, Session, SessionId};
use tessera::domain::user::{Roles, User, UserId, Username};
use tessera::store::cache::MemoryProfileCache;
use tessera::store::keyfile::KeyFile;
use tessera::store::limits::MemoryLimits;
use tessera::store::postgres::PgUserStore;
use tessera::store::redis::{RedisStore, Topology};
use tessera::store::sqlite::SqliteStore;
use tessera::store::{CachedProfile, RefreshPresentation, Rotation, StoreError, Stores};

use crate::servers;

const T0: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

async fn sqlite(dir: &TempDir) -> SqliteStore {
    SqliteStore::open_file(&dir.path().join("c.db"), Duration::from_secs(5))
        .await
        .unwrap()
}

/// The session-side stores of `backend`, and the directory they may live in.
async fn session_side(backend: &str) -> (Stores, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let redis = |topology: Topology, cache_ttl: Duration| async move {
        let store = RedisStore::connect(
            &topology,
            &servers::unique_prefix(),
            Duration::from_secs(5),
            cache_ttl,
        )
        .await
        .unwrap();
        if !cache_ttl.is_zero() {
            let started = std::time::Instant::now();
            while !store.session_cache_active() {
                assert!(started.elapsed() < Duration::from_secs(5), "tracking is on");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Arc::new(store)
    };
    let stores = match backend {
        "embedded" => {
            let db = Arc::new(sqlite(&dir).await);
            Stores {
                users: db.clone(),
                sessions: db,
                limits: Arc::new(MemoryLimits::default()),
                keys: Arc::new(KeyFile::in_dir(dir.path())),
                profiles: Arc::new(MemoryProfileCache::new(100, Duration::from_secs(300))),
            }
        }
        "redis" | "redis_with_session_cache" | "cluster" | "cluster_with_session_cache" => {
            let topo = if backend.starts_with("cluster") {
                Topology::parse(&servers::cluster().url()).unwrap()
            } else {
                Topology::parse(&servers::redis().url()).unwrap()
            };
            let cache_ttl = if backend.ends_with("with_session_cache") {
                Duration::from_secs(60)
            } else {
                Duration::ZERO
            };
            let r = redis(topo, cache_ttl).await;
            Stores {
                users: Arc::new(sqlite(&dir).await),
                sessions: r.clone(),
                limits: r.clone(),
                keys: r.clone(),
                profiles: r,
            }
        }
        other => panic!("unknown backend {other}"),
    };
    (stores, dir)
}

fn session(user: UserId, created: i64) -> Session {
    Session {
        id: SessionId::new(),
        user_id: user,
        username: Username::parse("alice").unwrap(),
        roles: Roles::from_csv("a,b"),
        created_at: t(created),
        last_seen_at: t(created),
        idle_expires_at: t(created + 60 * MIN),
        absolute_expires_at: t(created + 24 * 60 * MIN),
        user_agent: Some("Agent/1 ünïcode".into()),
        ip: Some("127.0.0.9".into()),
        refresh: RefreshState {
            generation: 0,
            hash: [1; 32],
            prev_hash: None,
            rotated_at: None,
        },
        cookie_hash: Some([7; 32]),
    }
}

pub async fn a_created_session_reads_back_identically(s: &Stores) {
    let u = UserId::new();
    let sess = session(u, 0);
    assert!(s.sessions.create(&sess, 10, t(0)).await.unwrap().is_empty());
    assert_eq!(
        s.sessions.get(u, sess.id, t(1)).await.unwrap(),
        Some(sess.active()),
        "authentication reads its part of the record"
    );
    assert_eq!(
        s.sessions.list(u, t(1)).await.unwrap(),
        vec![sess.clone()],
        "the whole record"
    );
    assert_eq!(
        s.sessions.get(UserId::new(), sess.id, t(1)).await.unwrap(),
        None,
        "scoped to its user"
    );
    assert_eq!(
        s.sessions.get(u, sess.id, t(60 * MIN)).await.unwrap(),
        None,
        "idle-expired is absent"
    );
}

pub async fn creating_past_the_limit_evicts_the_oldest(s: &Stores) {
    let u = UserId::new();
    let a = session(u, 0);
    let b = session(u, 1);
    let c = session(u, 2);
    s.sessions.create(&a, 2, t(0)).await.unwrap();
    s.sessions.create(&b, 2, t(1)).await.unwrap();
    assert!(s.sessions.get(u, a.id, t(1)).await.unwrap().is_some());
    let evicted = s.sessions.create(&c, 2, t(2)).await.unwrap();
    assert_eq!(evicted, vec![a.id]);
    assert_eq!(
        s.sessions.get(u, a.id, t(2)).await.unwrap(),
        None,
        "an evicted session is gone at once, cached or not"
    );
    let ids: Vec<SessionId> = s
        .sessions
        .list(u, t(3))
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, vec![b.id, c.id]);
}

pub async fn expired_sessions_do_not_count_against_the_limit(s: &Stores) {
    let u = UserId::new();
    let mut old = session(u, 0);
    old.idle_expires_at = t(MIN);
    s.sessions.create(&old, 1, t(0)).await.unwrap();
    let fresh = session(u, 2 * MIN);
    assert!(
        s.sessions
            .create(&fresh, 1, t(2 * MIN))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.sessions.list(u, t(2 * MIN)).await.unwrap().len(), 1);
}

pub async fn touch_slides_idle_expiry(s: &Stores) {
    let u = UserId::new();
    let sess = session(u, 0);
    s.sessions.create(&sess, 10, t(0)).await.unwrap();
    s.sessions
        .touch(u, sess.id, t(50 * MIN), t(110 * MIN))
        .await
        .unwrap();
    let got = s
        .sessions
        .get(u, sess.id, t(100 * MIN))
        .await
        .unwrap()
        .expect("still alive");
    // Only the use changes: name, roles, cookie hash and absolute expiry stay as they were.
    let mut expected = sess.active();
    expected.last_seen_at = t(50 * MIN);
    expected.idle_expires_at = t(110 * MIN);
    assert_eq!(got, expected);
    // Touching an expired session does not revive it.
    s.sessions
        .touch(u, sess.id, t(200 * MIN), t(260 * MIN))
        .await
        .unwrap();
    assert_eq!(
        s.sessions.get(u, sess.id, t(200 * MIN)).await.unwrap(),
        None
    );
}

pub async fn revoke_and_revoke_all_remove_sessions(s: &Stores) {
    let u = UserId::new();
    let (a, b, c) = (session(u, 0), session(u, 1), session(u, 2));
    for x in [&a, &b, &c] {
        s.sessions.create(x, 10, t(3)).await.unwrap();
    }
    assert!(s.sessions.revoke(u, a.id).await.unwrap());
    assert!(!s.sessions.revoke(u, a.id).await.unwrap());
    assert!(
        !s.sessions.revoke(UserId::new(), b.id).await.unwrap(),
        "not another user's"
    );
    assert_eq!(s.sessions.revoke_all(u, Some(c.id)).await.unwrap(), 1);
    let left: Vec<SessionId> = s
        .sessions
        .list(u, t(4))
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, vec![c.id]);
    assert_eq!(s.sessions.revoke_all(u, None).await.unwrap(), 1);
    assert!(s.sessions.list(u, t(4)).await.unwrap().is_empty());
}

fn presentation(generation: u64, hash: u8, successor: u8) -> RefreshPresentation {
    RefreshPresentation {
        generation,
        hash: [hash; 32],
        successor_hash: [successor; 32],
        grace: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
    }
}

pub async fn refresh_rotation_grace_and_reuse(s: &Stores) {
    let u = UserId::new();
    let sess = session(u, 0);
    s.sessions.create(&sess, 10, t(0)).await.unwrap();

    let Rotation::Rotated(r) = s
        .sessions
        .rotate_refresh(u, sess.id, &presentation(0, 1, 2), t(MIN))
        .await
        .unwrap()
    else {
        panic!("the current token rotates");
    };
    assert_eq!(
        (r.refresh.generation, r.refresh.hash, r.refresh.prev_hash),
        (1, [2; 32], Some([1; 32]))
    );
    assert_eq!(r.idle_expires_at, t(61 * MIN), "a refresh is a use");
    let mut expected = sess.clone();
    expected.last_seen_at = t(MIN);
    expected.idle_expires_at = t(61 * MIN);
    expected.refresh = r.refresh.clone();
    assert_eq!(r, expected, "the rest of the record is kept");

    let grace = s
        .sessions
        .rotate_refresh(u, sess.id, &presentation(0, 1, 2), t(MIN + 9_000))
        .await
        .unwrap();
    assert!(
        matches!(grace, Rotation::Grace(ref g) if g.refresh.generation == 1),
        "{grace:?}"
    );

    let bogus = s
        .sessions
        .rotate_refresh(u, sess.id, &presentation(1, 9, 3), t(MIN + 9_000))
        .await
        .unwrap();
    assert_eq!(bogus, Rotation::Invalid);
    assert!(
        s.sessions
            .get(u, sess.id, t(MIN + 9_000))
            .await
            .unwrap()
            .is_some(),
        "invalid changes nothing"
    );

    let reused = s
        .sessions
        .rotate_refresh(u, sess.id, &presentation(0, 1, 2), t(MIN + 10_000))
        .await
        .unwrap();
    assert_eq!(reused, Rotation::Reused);
    assert_eq!(
        s.sessions.get(u, sess.id, t(MIN + 10_000)).await.unwrap(),
        None,
        "reuse revokes"
    );
    assert!(
        s.sessions
            .list(u, t(MIN + 10_000))
            .await
            .unwrap()
            .is_empty()
    );
    let gone = s
        .sessions
        .rotate_refresh(u, sess.id, &presentation(1, 2, 3), t(MIN + 10_000))
        .await
        .unwrap();
    assert_eq!(gone, Rotation::Invalid);
}

pub async fn set_roles_updates_live_sessions(s: &Stores) {
    let u = UserId::new();
    let sess = session(u, 0);
    s.sessions.create(&sess, 10, t(0)).await.unwrap();
    s.sessions
        .set_roles(u, &Roles::from_csv("ops"))
        .await
        .unwrap();
    let mut expected = sess.active();
    expected.roles = Roles::from_csv("ops");
    assert_eq!(
        s.sessions.get(u, sess.id, t(1)).await.unwrap(),
        Some(expected.clone())
    );
    // And to no role at all.
    s.sessions.set_roles(u, &Roles::from_csv("")).await.unwrap();
    expected.roles = Roles::from_csv("");
    assert_eq!(
        s.sessions.get(u, sess.id, t(2)).await.unwrap(),
        Some(expected)
    );
}

pub async fn limit_windows_count_reset_and_clear(s: &Stores) {
    let key = format!("k{}", UserId::new());
    let w = Duration::from_secs(60);
    assert_eq!(s.limits.get(&key, t(0)).await.unwrap(), (0, None));
    assert_eq!(s.limits.hit(&key, w, t(0)).await.unwrap(), 1);
    assert_eq!(s.limits.hit(&key, w, t(30_000)).await.unwrap(), 2);
    assert_eq!(
        s.limits.get(&key, t(59_999)).await.unwrap(),
        (2, Some(t(60_000)))
    );
    assert_eq!(
        s.limits.get(&key, t(60_000)).await.unwrap(),
        (0, None),
        "the window closed"
    );
    assert_eq!(
        s.limits.hit(&key, w, t(60_000)).await.unwrap(),
        1,
        "a new window"
    );
    s.limits.clear(&key).await.unwrap();
    assert_eq!(s.limits.get(&key, t(60_001)).await.unwrap(), (0, None));
}

pub async fn the_first_key_ring_wins_and_saves_replace_it(s: &Stores) {
    let a = KeyRing::generate(SigningAlg::EdDSA, t(0)).unwrap();
    let b = KeyRing::generate(SigningAlg::EdDSA, t(0)).unwrap();
    assert_eq!(s.keys.init(&a).await.unwrap().mac_key, a.mac_key);
    assert_eq!(
        s.keys.init(&b).await.unwrap().mac_key,
        a.mac_key,
        "a second init agrees"
    );
    s.keys.save(&b).await.unwrap();
    assert_eq!(s.keys.load().await.unwrap().unwrap().mac_key, b.mac_key);
}

pub async fn cached_profiles_read_back_until_invalidated(s: &Stores) {
    let p = CachedProfile {
        id: UserId::new(),
        username: "bo".into(),
        roles: "x".into(),
        created_at: 1,
        cached_at: 2,
    };
    assert_eq!(s.profiles.get(p.id).await.unwrap(), None);
    s.profiles.put(&p, Duration::from_secs(300)).await.unwrap();
    assert_eq!(s.profiles.get(p.id).await.unwrap(), Some(p.clone()));
    s.profiles.invalidate(p.id).await.unwrap();
    assert_eq!(s.profiles.get(p.id).await.unwrap(), None);
}

macro_rules! session_contract {
    ($backend:ident) => {
        mod $backend {
            session_contract!(@tests $backend;
                a_created_session_reads_back_identically,
                creating_past_the_limit_evicts_the_oldest,
                expired_sessions_do_not_count_against_the_limit,
                touch_slides_idle_expiry,
                revoke_and_revoke_all_remove_sessions,
                refresh_rotation_grace_and_reuse,
                set_roles_updates_live_sessions,
                limit_windows_count_reset_and_clear,
                the_first_key_ring_wins_and_saves_replace_it,
                cached_profiles_read_back_until_invalidated
            );
        }
    };
    (@tests $backend:ident; $($test:ident),*) => {
        $(
            #[tokio::test]
            async fn $test() {
                let (stores, _dir) = super::session_side(stringify!($backend)).await;
                super::$test(&stores).await;
            }
        )*
    };
}

session_contract!(embedded);
session_contract!(redis);
session_contract!(redis_with_session_cache);
session_contract!(cluster);
session_contract!(cluster_with_session_cache);

/// A Redis store on a server of its own, for tests that count the server's commands.
async fn private_redis(prefix: &str) -> (servers::RedisProcess, RedisStore) {
    let redis = servers::RedisProcess::start(&[]);
    let store = RedisStore::connect(
        &Topology::Standalone(redis.url()),
        prefix,
        Duration::from_secs(5),
        Duration::ZERO,
    )
    .await
    .unwrap();
    (redis, store)
}

#[tokio::test]
async fn on_redis_a_login_below_the_limit_reads_no_other_session_and_the_index_stays_bounded() {
    let (redis, store) = private_redis("bounded").await;
    let s: &dyn tessera::store::SessionStore = &store;
    let u = UserId::new();
    for i in 0..50 {
        s.create(&session(u, i), 1000, t(i)).await.unwrap();
    }
    // The script reads a session's expiry with GET; none of the 50 is read for the 51st.
    let before = servers::redis_calls(redis.port, "get");
    s.create(&session(u, 50), 1000, t(50)).await.unwrap();
    assert_eq!(servers::redis_calls(redis.port, "get"), before);
    assert_eq!(s.list(u, t(51)).await.unwrap().len(), 51);

    // Sessions that die without a logout stay listed in the index only until it is full.
    let v = UserId::new();
    let index = format!("bounded:{{u:{}}}:idx", v.0.simple());
    let zcard = || servers::redis_cli(redis.port, &["zcard", &index]);
    for round in 0..4 {
        for i in 0..3 {
            let at = round * 2 * 60 * MIN + i; // each round after the last one's idle expiry
            let evicted = s.create(&session(v, at), 3, t(at)).await.unwrap();
            assert!(evicted.is_empty(), "only dead sessions were pruned");
            assert!(zcard().unwrap().trim().parse::<u64>().unwrap() <= 3);
        }
    }
    assert_eq!(zcard().as_deref().map(str::trim), Some("3"));
    assert_eq!(s.list(v, t(6 * 60 * MIN + 3)).await.unwrap().len(), 3);
}

#[tokio::test]
async fn on_redis_a_login_at_the_limit_prunes_the_dead_not_the_used_or_refreshed() {
    let (_redis, store) = private_redis("atlimit").await;
    let s: &dyn tessera::store::SessionStore = &store;

    // Dead sessions are pruned before anything live is evicted, and a session whose idle
    // expiry slid (a use, a refresh) is not mistaken for dead.
    let v = UserId::new();
    let [used, refreshed, idle] = [0, 1, 2].map(|i| session(v, i));
    for sess in [&used, &refreshed, &idle] {
        s.create(sess, 3, t(0)).await.unwrap();
    }
    s.touch(v, used.id, t(50 * MIN), t(110 * MIN))
        .await
        .unwrap();
    assert!(matches!(
        s.rotate_refresh(v, refreshed.id, &presentation(0, 1, 9), t(50 * MIN))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    let new = session(v, 70 * MIN);
    let evicted = s.create(&new, 3, t(70 * MIN)).await.unwrap();
    assert!(
        evicted.is_empty(),
        "only the idle one, dead, was pruned: {evicted:?}"
    );
    let ids: Vec<SessionId> = s
        .list(v, t(70 * MIN))
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, vec![used.id, refreshed.id, new.id]);
    // A revoked session leaves the index: a full index again evicts the oldest live one.
    assert!(s.revoke(v, refreshed.id).await.unwrap());
    s.create(&session(v, 71 * MIN), 3, t(71 * MIN))
        .await
        .unwrap();
    let evicted = s
        .create(&session(v, 72 * MIN), 3, t(72 * MIN))
        .await
        .unwrap();
    assert_eq!(evicted, vec![used.id]);
}

/// How builds before the session record kept a session in Redis: a hash.
#[derive(Clone, Copy, Debug)]
enum EarlierLayout {
    /// `u r l i a k` as separate fields, `u` the bare username.
    Fields,
    /// The first six values packed into `u` (`<idle> <abs> <last> <cookie hex|-> <user>
    /// <roles>`), the rest in `c g h p t ua ip`.
    Packed,
}

/// Writes `sess` the way an earlier build did. Hashes must be printable bytes (they go through
/// redis-cli).
fn write_in_an_earlier_layout(port: u16, prefix: &str, sess: &Session, layout: EarlierLayout) {
    let tag = format!("{prefix}:{{u:{}}}", sess.user_id.0.simple());
    let key = format!("{tag}:s:{}", sess.id.0.simple());
    let ms = |t: Timestamp| t.as_millis().to_string();
    let text = |h: &[u8; 32]| String::from_utf8(h.to_vec()).unwrap();
    let mut args: Vec<String> = vec!["hset".into(), key.clone()];
    let mut field = |f: &str, v: String| args.extend([f.to_owned(), v]);
    match layout {
        EarlierLayout::Fields => {
            field("u", sess.username.as_str().into());
            field("r", sess.roles.to_csv());
            field("l", ms(sess.last_seen_at));
            field("i", ms(sess.idle_expires_at));
            field("a", ms(sess.absolute_expires_at));
            if let Some(k) = &sess.cookie_hash {
                field("k", text(k));
            }
        }
        EarlierLayout::Packed => {
            let cookie = sess.cookie_hash.map_or("-".into(), hex::encode);
            field(
                "u",
                format!(
                    "{} {} {} {cookie} {} {}",
                    ms(sess.idle_expires_at),
                    ms(sess.absolute_expires_at),
                    ms(sess.last_seen_at),
                    sess.username.as_str(),
                    sess.roles.to_csv()
                ),
            );
            if let Some(p) = &sess.refresh.prev_hash {
                field("p", text(p));
            }
            if let Some(t) = sess.refresh.rotated_at {
                field("t", ms(t));
            }
        }
    }
    field("c", ms(sess.created_at));
    field("g", sess.refresh.generation.to_string());
    field("h", text(&sess.refresh.hash));
    for (f, v) in [("ua", &sess.user_agent), ("ip", &sess.ip)] {
        if let Some(v) = v {
            field(f, v.clone());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    servers::redis_cli(port, &args).unwrap();
    let id = sess.id.0.simple().to_string();
    let (at, end) = (ms(sess.created_at), ms(sess.expires_at()));
    servers::redis_cli(port, &["zadd", &format!("{tag}:idx"), &at, &id]).unwrap();
    servers::redis_cli(port, &["pexpireat", &key, &end]).unwrap();
}

/// 32 printable bytes, all different: every base64 digit position of the rewrite is exercised.
fn printable_hash(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

#[tokio::test]
async fn on_redis_sessions_written_by_an_earlier_build_are_read_used_and_rewritten_in_place() {
    for layout in [EarlierLayout::Fields, EarlierLayout::Packed] {
        sessions_in_an_earlier_layout_are_read_used_and_rewritten(layout).await;
    }
}

async fn sessions_in_an_earlier_layout_are_read_used_and_rewritten(layout: EarlierLayout) {
    let (redis, store) = private_redis("legacy").await;
    let s: &dyn tessera::store::SessionStore = &store;
    let u = UserId::new();
    let older = |created: i64, cookie: Option<[u8; 32]>| {
        let mut sess = session(u, created);
        sess.refresh.hash = printable_hash(b'0');
        if let EarlierLayout::Packed = layout {
            sess.refresh.prev_hash = Some(printable_hash(b'A'));
            sess.refresh.rotated_at = Some(t(created));
        }
        sess.cookie_hash = cookie;
        write_in_an_earlier_layout(redis.port, "legacy", &sess, layout);
        sess
    };
    let key = |sess: &Session| format!("legacy:{{u:{}}}:s:{}", u.0.simple(), sess.id.0.simple());
    let kind = |sess: &Session| {
        servers::redis_cli(redis.port, &["type", &key(sess)]).map(|o| o.trim().to_owned())
    };
    let ttl = |sess: &Session| {
        servers::redis_cli(redis.port, &["pexpiretime", &key(sess)])
            .and_then(|o| o.trim().parse::<i64>().ok())
    };

    // Verification reads it, and rewrites it into a record once, its expiry kept.
    let browser = older(0, Some(printable_hash(b'K')));
    let bearer = older(1, None);
    assert_eq!(kind(&browser).as_deref(), Some("hash"), "{layout:?}");
    assert_eq!(
        s.get(u, browser.id, t(2)).await.unwrap(),
        Some(browser.active()),
        "{layout:?}"
    );
    assert_eq!(
        s.get(u, bearer.id, t(2)).await.unwrap(),
        Some(bearer.active())
    );
    assert_eq!(kind(&browser).as_deref(), Some("string"), "rewritten");
    assert_eq!(ttl(&browser), Some(browser.expires_at().as_millis()));
    assert_eq!(
        s.get(u, browser.id, t(3)).await.unwrap(),
        Some(browser.active())
    );

    // The session list and every script read the earlier layout as well, and whole.
    let listed = older(2, Some(printable_hash(b'L')));
    assert_eq!(
        s.list(u, t(3)).await.unwrap(),
        vec![browser.clone(), bearer.clone(), listed.clone()],
        "{layout:?}"
    );
    let touched = older(3, None);
    s.touch(u, touched.id, t(5), t(5 + 60 * MIN)).await.unwrap();
    let got = s.get(u, touched.id, t(6)).await.unwrap().unwrap();
    assert_eq!(
        (got.last_seen_at, got.idle_expires_at),
        (t(5), t(5 + 60 * MIN))
    );
    let roles_changed = older(3, Some(printable_hash(b'R')));
    s.set_roles(u, &Roles::from_csv("ops")).await.unwrap();
    let got = s.get(u, roles_changed.id, t(6)).await.unwrap().unwrap();
    assert_eq!(
        (got.roles.to_csv(), got.cookie_hash),
        ("ops".into(), Some(printable_hash(b'R')))
    );
    assert_eq!(
        ttl(&roles_changed),
        Some(roles_changed.expires_at().as_millis())
    );
    let rotated = older(4, None);
    let p = RefreshPresentation {
        hash: printable_hash(b'0'),
        ..presentation(0, 0, 9)
    };
    match s.rotate_refresh(u, rotated.id, &p, t(7)).await.unwrap() {
        Rotation::Rotated(after) => assert_eq!(
            (
                after.refresh.generation,
                after.refresh.prev_hash,
                after.username,
                after.last_seen_at
            ),
            (1, Some(printable_hash(b'0')), rotated.username, t(7))
        ),
        other => panic!("{layout:?}: {other:?}"),
    }
    // A login at the limit walks the index through the same reader: the earlier records count
    // as live (only the oldest session is evicted, none is pruned as dead) and are rewritten.
    let walked = [older(5, None), older(6, Some(printable_hash(b'W')))];
    let evicted = s.create(&session(u, 8), 8, t(8)).await.unwrap();
    assert_eq!(evicted, vec![browser.id], "{layout:?}");
    assert_eq!(s.list(u, t(9)).await.unwrap().len(), 8);
    for sess in &walked {
        assert_eq!(kind(sess).as_deref(), Some("string"), "rewritten");
        assert_eq!(s.get(u, sess.id, t(9)).await.unwrap(), Some(sess.active()));
    }
}

// ----- users -----------------------------------------------------------------------------------

fn user(name: &str) -> User {
    User {
        id: UserId::new(),
        username: Username::parse(name).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        roles: Roles::from_csv("admin"),
        disabled: false,
        created_at: t(0),
        updated_at: t(0),
    }
}

async fn users_contract(store: &dyn tessera::store::UserStore) {
    let a = user("ann");
    store.create(&a).await.unwrap();
    assert!(matches!(
        store.create(&user("ann")).await,
        Err(StoreError::Conflict)
    ));
    let got = store.by_username(&a.username).await.unwrap().unwrap();
    assert_eq!(
        (got.id, got.roles.to_csv(), got.created_at),
        (a.id, "admin".into(), t(0))
    );
    assert_eq!(
        store.by_id(a.id).await.unwrap().unwrap().username,
        a.username
    );
    assert!(store.by_id(UserId::new()).await.unwrap().is_none());

    let mut changed = got.clone();
    changed.disabled = true;
    changed.roles = Roles::from_csv("ops,billing");
    changed.password_hash = "$2b$04$abcdefghijklmnopqrstuu".into();
    changed.updated_at = t(5);
    assert!(store.update(&changed).await.unwrap());
    let got = store.by_id(a.id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.disabled,
            got.roles.to_csv(),
            got.password_hash.as_str(),
            got.updated_at
        ),
        (
            true,
            "billing,ops".into(),
            "$2b$04$abcdefghijklmnopqrstuu",
            t(5)
        )
    );

    store.create(&user("bea")).await.unwrap();
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|u| u.username.to_string())
        .collect();
    assert_eq!(names, ["ann", "bea"]);
    assert_eq!(store.count().await.unwrap(), 2);
    assert!(store.delete(a.id).await.unwrap());
    assert!(!store.delete(a.id).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 1);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn the_user_store_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    users_contract(&sqlite(&dir).await).await;
}

#[tokio::test]
async fn the_user_store_contract_holds_on_postgres() {
    let url = servers::postgres().fresh_database().await;
    let store = PgUserStore::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    users_contract(&store).await;
}
