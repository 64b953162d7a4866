//! Fault injection against real processes: stores die, stall and come back; tessera answers
//! only 200 or 503 meanwhile (never 401 for a valid token, never 500), answers within
//! `store_timeout` plus a margin, and heals without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;
use crate::proxy::FaultProxy;
use crate::servers::{self, RedisProcess};

/// The store timeout of these tests, and the most an answer may take beyond it.
const STORE_TIMEOUT: &str = "300ms";
const SLOWEST_ALLOWED: Duration = Duration::from_millis(300 + 700);

async fn spawn_on_redis(redis_url: String) -> TestApp {
    spawn_in(
        Arc::new(tempfile::tempdir().unwrap()),
        redis_postgres_env_on(redis_url).await,
        &[("TESSERA_STORE_TIMEOUT", STORE_TIMEOUT)],
    )
    .await
}

/// Asserts what every fault test promises of the answers seen meanwhile.
fn assert_failed_closed(seen: &BTreeMap<u16, u32>, slowest: Duration) {
    assert!(
        seen.keys().all(|s| *s == 200 || *s == 503),
        "only 200 and 503 while the store misbehaves: {seen:?}"
    );
    assert!(
        slowest < SLOWEST_ALLOWED,
        "slowest answer {slowest:?} (store timeout {STORE_TIMEOUT})"
    );
}

/// Verifies `access` in a loop until `stop`; returns the statuses seen and the slowest answer.
fn hammer(
    app: Arc<TestApp>,
    access: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(BTreeMap<u16, u32>, Duration)> {
    tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let status = app.verify_status(&access).await.as_u16();
            slowest = slowest.max(started.elapsed());
            *seen.entry(status).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (seen, slowest)
    })
}

async fn until_ok(app: &TestApp, access: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let last = match app.verify_status(access).await {
            StatusCode::OK => return started.elapsed(),
            s => s,
        };
        assert!(
            started.elapsed() < within,
            "no recovery within {within:?}; last status {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_killed_under_load_gives_503_then_heals_without_a_restart() {
    let mut redis = RedisProcess::start(&[]);
    let port = redis.port;
    let app = Arc::new(spawn_on_redis(redis.url()).await);
    let t = app.login("admin", ADMIN_PASSWORD).await;
    // Keep the data across the restart, as a production Redis with persistence would.
    let saved = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "save"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&saved.stdout).contains("OK"));

    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(Arc::clone(&app), t.access.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = app.login_raw("admin", ADMIN_PASSWORD).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "fails closed while Redis is down"
    );
    assert!(res.headers().contains_key("retry-after"));
    let res = app.logout(&t.access).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a logout that did not happen is not reported"
    );
    assert_eq!(
        app.get_status("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);

    // The same port, the saved data: Redis is back.
    let back = RedisProcess::start_on(port, redis.data_dir());
    let healed = until_ok(&app, &t.access, Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let (seen, slowest) = load.await.unwrap();
    assert_failed_closed(&seen, slowest);
    assert!(
        seen.contains_key(&503) && seen.contains_key(&200),
        "{seen:?}"
    );
    assert_eq!(app.get_status("/readyz").await, StatusCode::OK);
    println!("healed in {healed:?}; statuses {seen:?}; slowest {slowest:?}");
    drop(back);
}

/// Stalls Redis with `command` (for about 2 s) and checks that a verification and a profile
/// read meanwhile are each a 503 within the store timeout (both answered before the router,
/// with no request deadline of their own), and that verification succeeds again afterwards.
async fn stalled_redis_gives_503_in_time_then_heals(command: &[&str]) {
    let redis = RedisProcess::start(&[]);
    let app = spawn_on_redis(redis.url()).await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    // Answered in time first, on the connection the next calls reuse: their deadlines then
    // move the connection's timer (src/deadline.rs) instead of arming a new one.
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    let port = redis.port.to_string();
    let mut stall = std::process::Command::new("redis-cli")
        .args(["-p", &port])
        .args(command)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < SLOWEST_ALLOWED,
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(
        app.get_auth("/profile", &t.access).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < SLOWEST_ALLOWED,
        "/profile: {:?}",
        started.elapsed()
    );
    until_ok(&app, &t.access, Duration::from_secs(5)).await;
    assert!(stall.wait().unwrap().success());
}

#[tokio::test]
async fn a_paused_redis_gives_503_within_the_store_timeout() {
    stalled_redis_gives_503_in_time_then_heals(&["client", "pause", "2000", "ALL"]).await;
}

#[tokio::test]
async fn a_redis_slowed_by_debug_sleep_gives_503_within_the_store_timeout() {
    stalled_redis_gives_503_in_time_then_heals(&["debug", "sleep", "2"]).await;
}

/// A server whose store is down: alive (`/healthz`), not ready, logins 503 with `Retry-After`.
async fn up_not_ready_refusing_logins(app: &TestApp) {
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);
    assert_eq!(
        app.get_status("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let res = app.login_raw("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn started_while_redis_is_down_it_is_up_not_ready_and_becomes_ready_by_itself() {
    let port = servers::free_port();
    let app = spawn_on_redis(format!("redis://127.0.0.1:{port}")).await;
    up_not_ready_refusing_logins(&app).await;
    assert_eq!(
        app.get_status("/.well-known/jwks.json").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A token nobody can check yet is not called invalid.
    assert_eq!(
        app.verify_status("eyJhbGciOiJFZERTQSJ9.e30.c2ln").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let _redis = RedisProcess::start_on(port, tempfile::tempdir().unwrap().path());
    let started = Instant::now();
    while app.get_status("/readyz").await != StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not ready 5 s after Redis came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready {:?} after Redis came up", started.elapsed());
    let t = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    assert_eq!(
        app.get_status("/.well-known/jwks.json").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn connections_reset_or_partitioned_by_a_fault_proxy_give_only_200_or_503_and_heal() {
    let redis = RedisProcess::start(&[]);
    let proxy = FaultProxy::start(redis.port).await;
    let app = Arc::new(spawn_on_redis(proxy.redis_url()).await);
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let other = app.login("admin", ADMIN_PASSWORD).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(Arc::clone(&app), t.access.clone(), Arc::clone(&stop));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.reset_all();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.partition();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A refresh that cannot complete reports nothing it did not do...
    let res = app.refresh(&other.refresh).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.heal();
    let healed = until_ok(&app, &t.access, Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let (seen, slowest) = load.await.unwrap();
    assert_failed_closed(&seen, slowest);
    assert!(seen.contains_key(&503), "the faults were felt: {seen:?}");
    println!("healed in {healed:?}; statuses {seen:?}; slowest {slowest:?}");

    // ...and the token presented during the partition is still usable afterwards.
    let res = app.refresh(&other.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The store is consistent again: logout is real.
    let res = app.logout(&t.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn postgres_stopped_gives_503_for_logins_while_sessions_keep_verifying() {
    let pg = servers::Postgres::start();
    let redis = RedisProcess::start(&[]);
    let backend = vec![
        ("TESSERA_REDIS_URL".to_owned(), redis.url()),
        (
            "TESSERA_REDIS_KEY_PREFIX".to_owned(),
            servers::unique_prefix(),
        ),
        ("TESSERA_DATABASE_URL".to_owned(), pg.fresh_database().await),
    ];
    let app = spawn_in(
        Arc::new(tempfile::tempdir().unwrap()),
        backend,
        &[("TESSERA_STORE_TIMEOUT", "500ms")],
    )
    .await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    pg.stop();
    let res = app.login_raw("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::OK,
        "verification never reads the user table"
    );
    pg.restart();
    let started = Instant::now();
    loop {
        match app.login_raw("admin", ADMIN_PASSWORD).await.status() {
            StatusCode::OK => break,
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("only 200 or 503, got {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A PostgreSQL that is down when the server starts: the server starts anyway (it used to wait
/// 30 s and exit), answers `/healthz`, says not ready and refuses logins with 503 meanwhile,
/// and once the database is up migrates it, creates the first admin and logs in, without a
/// restart.
#[tokio::test]
async fn a_server_started_while_postgres_is_down_serves_503_and_heals_when_it_comes_up() {
    let pg = servers::Postgres::start();
    let url = pg.fresh_database().await;
    pg.stop();
    let backend = vec![("TESSERA_DATABASE_URL".to_owned(), url)];
    let app = spawn_in(
        Arc::new(tempfile::tempdir().unwrap()),
        backend,
        &[("TESSERA_STORE_TIMEOUT", "500ms")],
    )
    .await;
    up_not_ready_refusing_logins(&app).await;
    pg.restart();
    // Ready once migrated; the first admin follows within a second (polled through the
    // service, since failed logins meanwhile would count against the login limits).
    let started = Instant::now();
    while app.get_status("/readyz").await != StatusCode::OK
        || !matches!(app.auth.user_count().await, Ok(1))
    {
        assert!(started.elapsed() < Duration::from_secs(15), "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.login("admin", ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn a_redis_that_comes_back_empty_logs_everyone_out_and_revives_nothing() {
    let redis = RedisProcess::start(&[]);
    let app = spawn_on_redis(redis.url()).await;
    let live = app.login("admin", ADMIN_PASSWORD).await;
    let revoked = app.login("admin", ADMIN_PASSWORD).await;
    app.client
        .post(app.url("/logout"))
        .bearer_auth(&revoked.access)
        .send()
        .await
        .unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "flushall"])
        .output()
        .unwrap();
    assert!(out.status.success());
    for t in [&live, &revoked] {
        assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            app.refresh(&t.refresh).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    // The key ring went too: the next reload makes a new one, shared through Redis.
    let before = app.auth.keys().unwrap().active_kid().to_owned();
    app.auth.reload_keys().await.unwrap();
    assert_ne!(app.auth.keys().unwrap().active_kid(), before);
    let fresh = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(app.verify_status(&fresh.access).await, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::cli::serve(dir.path(), &[("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    let base = format!("http://{}", server.addr);
    let client = client_from("127.0.0.1");
    let res = client
        .post(format!("{base}/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let access = res.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, base, access, stop) = (
            client.clone(),
            base.clone(),
            access.clone(),
            Arc::clone(&stop),
        );
        workers.spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                match client
                    .get(format!("{base}/verify"))
                    .bearer_auth(&access)
                    .send()
                    .await
                {
                    // A response that started must be complete and correct.
                    Ok(res) => {
                        assert_eq!(res.status(), StatusCode::OK);
                        res.bytes().await.expect("no truncated response");
                        ok += 1;
                    }
                    // After the listener closed, new connections are refused: expected.
                    Err(e) => {
                        assert!(e.is_connect() || e.is_request(), "{e}");
                        refused += 1;
                    }
                }
            }
            (ok, refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let code = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut served = 0;
    while let Some(r) = workers.join_next().await {
        served += r.unwrap().0;
    }
    assert_eq!(code.code(), Some(0));
    assert!(served > 0);
}

#[tokio::test]
async fn cluster_resharding_under_traffic_is_followed_through_ask_and_moved() {
    let cluster = servers::RedisCluster::start();
    let app = Arc::new(spawn_on_redis(cluster.url()).await);
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let uid = app.get_auth("/profile", &t.access).await;
    let uid = uid.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .replace('-', "");
    let cli = |port: u16, args: &[&str]| {
        servers::redis_cli(port, args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
            .trim()
            .to_owned()
    };
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let slot = cli(ports[0], &["cluster", "keyslot", &format!("{{u:{uid}}}")]);
    let owns = |port: u16| cli(port, &["cluster", "countkeysinslot", &slot]) != "0";
    let source = *ports.iter().find(|p| owns(**p)).expect("the slot has keys");
    let target = *ports.iter().find(|p| **p != source).unwrap();
    let (source_id, target_id) = (
        cli(source, &["cluster", "myid"]),
        cli(target, &["cluster", "myid"]),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(Arc::clone(&app), t.access.clone(), Arc::clone(&stop));
    cli(
        target,
        &["cluster", "setslot", &slot, "importing", &source_id],
    );
    cli(
        source,
        &["cluster", "setslot", &slot, "migrating", &target_id],
    );
    let keys = cli(source, &["cluster", "getkeysinslot", &slot, "100"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 2, "a session and its index: {keys:?}");
    let port = target.to_string();
    let migrate = |keys: &[&str]| {
        let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
        args.extend_from_slice(keys);
        assert_eq!(cli(source, &args), "OK");
    };
    // Half-way: some of the user's keys on each node; reads of moved keys are answered by ASK.
    for k in &keys {
        migrate(&[k]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for port in &ports {
        cli(*port, &["cluster", "setslot", &slot, "node", &target_id]);
    }
    // Now the old owner answers MOVED.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (seen, slowest) = load.await.unwrap();
    assert_failed_closed(&seen, slowest);
    assert!(seen.contains_key(&200), "{seen:?}");
    println!("statuses during resharding: {seen:?}; slowest {slowest:?}");
    assert!(owns(target) && !owns(source), "the slot moved");

    // Every operation, multi-key scripts included, works on the new owner.
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    let next = app.refresh(&t.refresh).await;
    assert_eq!(next.status(), StatusCode::OK);
    let other = app.login("admin", ADMIN_PASSWORD).await;
    let res = app
        .client
        .post(app.url("/logout?scope=all"))
        .bearer_auth(&other.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
}

/// The drain is bounded: a request still in flight when `shutdown_grace` runs out (here a
/// client that sends half its body and stops) is cut off, and the server stops then, not when
/// the request's own 30 s deadline would have ended it.
#[tokio::test]
async fn a_request_in_flight_past_the_shutdown_grace_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(&[("TESSERA_SHUTDOWN_GRACE", "1s")]).await;
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(
        b"POST /login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server stopped within 10 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "stopped after {waited:?}, not after the 1 s grace"
    );
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .expect("the connection was closed");
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "closed without an answer, not: {:?}",
        String::from_utf8_lossy(&buf)
    );
}
