//! Fault injection against real processes: stores die, stall and come back; tessera answers
//! only 200 or 503 meanwhile (never 401 for a valid token, never 500), answers within
//! `store_timeout` plus a margin, and heals without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;
use crate::servers::{self, RedisProcess};

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
    let backend = vec![
        ("TESSERA_REDIS_URL".to_owned(), redis.url()),
        (
            "TESSERA_REDIS_KEY_PREFIX".to_owned(),
            servers::unique_prefix(),
        ),
        (
            "TESSERA_DATABASE_URL".to_owned(),
            servers::postgres().fresh_database().await,
        ),
    ];
    let app = Arc::new(
        spawn_in(
            Arc::new(tempfile::tempdir().unwrap()),
            backend,
            &[("TESSERA_STORE_TIMEOUT", "300ms")],
        )
        .await,
    );
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
    let res = app
        .client
        .post(app.url("/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
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
    assert!(
        seen.keys().all(|s| *s == 200 || *s == 503),
        "statuses: {seen:?}"
    );
    assert!(
        seen.contains_key(&503) && seen.contains_key(&200),
        "{seen:?}"
    );
    assert!(
        slowest < Duration::from_millis(300 + 700),
        "slowest answer {slowest:?}"
    );
    assert_eq!(app.get_status("/readyz").await, StatusCode::OK);
    println!("healed in {healed:?}; statuses {seen:?}; slowest {slowest:?}");
    drop(back);
}

#[tokio::test]
async fn a_paused_redis_gives_503_within_the_store_timeout() {
    let redis = RedisProcess::start(&[]);
    let backend = vec![
        ("TESSERA_REDIS_URL".to_owned(), redis.url()),
        (
            "TESSERA_REDIS_KEY_PREFIX".to_owned(),
            servers::unique_prefix(),
        ),
        (
            "TESSERA_DATABASE_URL".to_owned(),
            servers::postgres().fresh_database().await,
        ),
    ];
    let app = spawn_in(
        Arc::new(tempfile::tempdir().unwrap()),
        backend,
        &[("TESSERA_STORE_TIMEOUT", "300ms")],
    )
    .await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "client",
            "pause",
            "2000",
            "ALL",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let started = Instant::now();
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    until_ok(&app, &t.access, Duration::from_secs(5)).await;
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

#[tokio::test]
async fn a_redis_that_comes_back_empty_logs_everyone_out_and_revives_nothing() {
    let redis = RedisProcess::start(&[]);
    let backend = vec![
        ("TESSERA_REDIS_URL".to_owned(), redis.url()),
        (
            "TESSERA_REDIS_KEY_PREFIX".to_owned(),
            servers::unique_prefix(),
        ),
        (
            "TESSERA_DATABASE_URL".to_owned(),
            servers::postgres().fresh_database().await,
        ),
    ];
    let app = spawn_in(Arc::new(tempfile::tempdir().unwrap()), backend, &[]).await;
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
    let before = app.auth.keys().active_kid().to_owned();
    app.auth.reload_keys().await.unwrap();
    assert_ne!(app.auth.keys().active_kid(), before);
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
