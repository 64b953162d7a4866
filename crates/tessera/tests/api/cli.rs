//! The built binary: CLI commands against a live server's store, and the server process itself.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

fn tessera(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c.arg("--data-dir").arg(dir);
    c
}

/// `tessera serve` on a free port of loopback, with `dir` as its data directory.
fn tessera_serve(dir: &Path) -> Command {
    let mut c = tessera(dir);
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--public-url",
        PUBLIC_URL,
    ]);
    c
}

/// Runs a CLI command against `app`'s stores, feeding `stdin`.
async fn run(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    let mut cmd = tessera(app.dir.path());
    cmd.envs(app.backend.iter().map(|(k, v)| (k, v)));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("binary runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The embedded store serves a session verified once from memory (see `store::wal_cache`); a
/// revocation by another process must still be refused at the very next request.
#[tokio::test]
async fn a_cli_revocation_is_refused_at_the_next_request_after_verifications_from_memory() {
    let app = spawn_app().await;
    ok(&run(
        &app,
        &["user", "add", "pat", "--password-stdin"],
        "pat's long passphrase\n",
    )
    .await);
    let revocations: [(&[&str], &str); 2] = [
        (
            &["user", "passwd", "pat", "--password-stdin"],
            "pat's long passphrase",
        ),
        (&["user", "disable", "pat"], "pat's second passphrase"),
    ];
    for (command, passphrase) in revocations {
        let t = app.login("pat", passphrase).await;
        for _ in 0..5 {
            assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
        }
        ok(&run(&app, command, "pat's second passphrase\n").await);
        assert_eq!(
            app.verify_status(&t.access).await,
            StatusCode::UNAUTHORIZED,
            "{command:?} is seen at the next request"
        );
    }
}

#[tokio::test]
async fn cli_user_commands_act_on_a_running_servers_store() {
    let app = spawn_app().await;

    ok(&run(
        &app,
        &[
            "user",
            "add",
            "Olive",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "olive's passphrase\n",
    )
    .await);
    let t = app.login("olive", "olive's passphrase").await;
    let list = ok(&run(&app, &["user", "list"], "").await);
    assert!(
        list.lines()
            .any(|l| l.starts_with("olive") && l.contains("admin") && l.contains("active")),
        "{list}"
    );

    let out = run(
        &app,
        &["user", "add", "olive", "--password-stdin"],
        "another passphrase\n",
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"));
    let out = run(
        &app,
        &["user", "add", "weakling", "--password-stdin"],
        "password\n",
    )
    .await;
    assert!(!out.status.success());

    ok(&run(
        &app,
        &["user", "passwd", "olive", "--password-stdin"],
        "olive's second passphrase\n",
    )
    .await);
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::UNAUTHORIZED,
        "passwd revokes sessions"
    );
    let t = app.login("olive", "olive's second passphrase").await;

    ok(&run(&app, &["user", "disable", "olive"], "").await);
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::UNAUTHORIZED,
        "disable revokes sessions"
    );
    assert_eq!(
        app.login_raw("olive", "olive's second passphrase")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(ok(&run(&app, &["user", "list"], "").await).contains("disabled"));
    ok(&run(&app, &["user", "enable", "olive"], "").await);
    let t = app.login("olive", "olive's second passphrase").await;

    ok(&run(&app, &["user", "delete", "olive"], "").await);
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::UNAUTHORIZED,
        "delete revokes sessions"
    );
    let out = run(&app, &["user", "delete", "olive"], "").await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn cli_key_rotation_reaches_a_running_server_within_ten_seconds() {
    let app = spawn_app().await;
    let before = app.login("admin", ADMIN_PASSWORD).await;

    let listed = ok(&run(&app, &["keys", "list"], "").await);
    assert_eq!(listed.lines().count(), 1);
    assert!(listed.contains(" EdDSA active "), "{listed}");

    ok(&run(&app, &["keys", "rotate"], "").await);
    let listed = ok(&run(&app, &["keys", "list"], "").await);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" active ")).count(),
        1,
        "{listed}"
    );
    assert_eq!(
        listed.lines().filter(|l| l.contains(" retired ")).count(),
        1,
        "{listed}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jwks: Value = app
            .client
            .get(app.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if jwks["keys"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "rotation not seen within 10 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        app.verify_status(&before.access).await,
        StatusCode::OK,
        "old tokens still verify"
    );
    let after = app.login("admin", ADMIN_PASSWORD).await;
    let kid = |t: &str| {
        use base64::Engine as _;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&h).unwrap()["kid"].clone()
    };
    assert_ne!(kid(&before.access), kid(&after.access));
}

/// A `tessera serve` process and the address it bound.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr_head: Vec<String>,
}

pub fn serve(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = tessera_serve(dir);
    cmd.envs(env.iter().copied());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("server starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut head = Vec::new();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        head.push(line.clone());
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        addr,
        stderr_head: head,
    }
}

#[tokio::test]
async fn first_start_prints_a_random_admin_password_once() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(dir.path(), &[]);
    let line = s
        .stderr_head
        .iter()
        .find(|l| l.contains("admin password: "))
        .expect("password printed")
        .clone();
    let password = line.rsplit("admin password: ").next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://{}/login", s.addr))
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let mut again = serve(dir.path(), &[]);
    assert!(
        !again
            .stderr_head
            .iter()
            .any(|l| l.contains("admin password"))
    );
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}

#[tokio::test]
async fn a_session_survives_kill_9_of_the_server() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let mut s = serve(dir.path(), &env);
    let client = reqwest::Client::new();
    let access = admin_access_token(&client, &s.addr).await;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();

    let mut s = serve(dir.path(), &env);
    let res = client
        .get(format!("http://{}/verify", s.addr))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

/// Logs the admin in on a server process; its access token.
async fn admin_access_token(client: &reqwest::Client, addr: &str) -> String {
    let body: Value = client
        .post(format!("http://{addr}/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// The server's count of SQLite calls, from its own `/metrics` (a process of its own: the
/// in-process test servers share one recorder).
async fn sqlite_calls(client: &reqwest::Client, addr: &str) -> u64 {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("tessera_store_duration_seconds_count{store=\"sqlite\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("/metrics counts the SQLite calls")
}

#[tokio::test]
async fn repeated_verifications_on_the_embedded_store_do_not_query_it() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(dir.path(), &[("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    let client = reqwest::Client::new();
    let access = admin_access_token(&client, &s.addr).await;
    let verify = || {
        client
            .get(format!("http://{}/verify", s.addr))
            .bearer_auth(&access)
            .send()
    };
    assert_eq!(verify().await.unwrap().status(), StatusCode::OK); // read, and kept
    let before = sqlite_calls(&client, &s.addr).await;
    for _ in 0..50 {
        assert_eq!(verify().await.unwrap().status(), StatusCode::OK);
    }
    let calls = sqlite_calls(&client, &s.addr).await - before;
    // Background work (the minute's sweep) may query once or twice meanwhile; without the
    // cache each verification is a query.
    assert!(calls < 5, "{calls} SQLite calls for 50 verifications");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

/// The server's connection metrics (accepted, open), read on a connection of their own that
/// the server closes after answering (`Connection: close`), so it counts itself in both.
async fn connection_metrics(addr: &str) -> (f64, f64) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    (
        value("tessera_http_connections_total"),
        value("tessera_http_connections_open"),
    )
}

/// Waits until the open-connections gauge reads `open` (a closed connection is counted once
/// the server has seen it close).
async fn until_open(addr: &str, open: f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let read = connection_metrics(addr).await;
        if read.1 == open || Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_connections_accepted_and_open_and_closed() {
    if !embedded() {
        return; // a process of its own: the in-process test servers share one recorder
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(dir.path(), &[("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    // Nothing has connected before: the reading connection is the first and only one.
    assert_eq!(connection_metrics(&s.addr).await, (1.0, 1.0));

    // A connection kept open over two requests counts once, and stays open.
    let mut kept = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    healthz_on(&mut kept).await;
    healthz_on(&mut kept).await;
    let (accepted, open) = until_open(&s.addr, 2.0).await;
    assert_eq!(open, 2.0, "the kept connection and the reading one");
    assert!(accepted >= 3.0, "{accepted}");

    // Closed by the client: no longer open.
    drop(kept);
    let (_, open) = until_open(&s.addr, 1.0).await;
    assert_eq!(open, 1.0, "only the reading connection");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_server_with_exit_code_0() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(dir.path(), &[("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    let pid = s.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || s.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0));
}

#[tokio::test]
async fn an_invalid_setting_stops_start_up_naming_the_key_and_its_source() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let serve_with_ttl = |ttl: &'static str| {
        let mut cmd = tessera(dir.path());
        cmd.env("TESSERA_ACCESS_TOKEN_TTL", ttl).arg("serve");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = serve_with_ttl("forever").await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access_token_ttl") && err.contains("TESSERA_ACCESS_TOKEN_TTL"),
        "{err}"
    );

    // A duration too long for the caches' arithmetic was a panic (exit 101) at start-up.
    let out = serve_with_ttl("400000d").await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access_token_ttl") && !err.contains("panicked"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("tessera.toml"),
        "max_sessions_per_user = \"many\"\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let mut cmd = tessera(dir.path());
        cmd.arg("--config")
            .arg(dir.path().join("tessera.toml"))
            .arg("serve");
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_sessions_per_user") && err.contains("tessera.toml"),
        "{err}"
    );
}

/// `user list` on a user store that does not answer fails with a message and prints nothing on
/// stdout: it printed the table's header first (seen with PostgreSQL down).
#[test]
fn user_list_on_a_store_that_does_not_answer_fails_without_printing_half_a_table() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let out = tessera(dir.path())
        .args(["user", "list", "--database-url"])
        .arg(format!("postgres://postgres@127.0.0.1:{port}/tessera"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unavailable"), "{err}");
}

/// jemalloc reads its options from an exported symbol whose name depends on the allocator
/// crate's prefix; a wrong name is silently ignored, and the memory figures in the README
/// depend on these options. `stats_print` makes jemalloc print the options in force at exit.
#[cfg(target_os = "linux")]
#[test]
fn the_binary_runs_on_jemalloc_with_its_configured_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 1",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option} missing from:\n{stats}");
    }
}

/// A `tessera serve` process on the embedded store in `dir`, with `args` and `env` added, its
/// stderr written to a file: the process, the file and the address it bound (read from its
/// log, text or JSON lines).
fn serve_logging_to_file(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, std::path::PathBuf, String) {
    let log = dir.join("stderr.log");
    let mut child = tessera_serve(dir)
        .args(args)
        .env("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let text_addr = text
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next());
        let json_addr = || {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|l| l["addr"].as_str().map(str::to_owned))
        };
        if let Some(addr) = text_addr.map(str::to_owned).or_else(json_addr) {
            break addr;
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("no address logged with {args:?} {env:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (child, log, addr)
}

/// What a server started by [`serve_logging_to_file`] logged, once it has had a moment to
/// write its last lines and has been stopped.
fn stop_and_read_log(mut child: Child, log: &Path) -> String {
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::read_to_string(log).unwrap()
}

/// `RUST_LOG` filters by target (the usual case, which tessera serves without any per-span
/// bookkeeping) and by span (`[request]=debug`: the debug events inside request spans), as
/// `EnvFilter` documents both; an empty `RUST_LOG` means the default (info). Lines logged in a
/// request end with its method, path and id.
#[tokio::test]
async fn rust_log_filters_by_target_and_by_span() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let cases = [
        // (RUST_LOG, a line that must be logged, a line that must not)
        (
            "warn,tessera::app=info",
            "listening",
            "started processing request",
        ),
        ("warn,tessera::app=info", "listening", "key ring loaded"),
        (
            "warn,tessera::app=info,[request]=debug",
            "started processing request method=GET path=/healthz request_id=",
            "key ring loaded",
        ),
        ("", "key ring loaded", "started processing request"),
    ];
    for (rust_log, logged, silent) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (child, log, addr) = serve_logging_to_file(dir.path(), &[], &[("RUST_LOG", rust_log)]);
        let res = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let text = stop_and_read_log(child, &log);
        assert!(
            text.contains(logged),
            "RUST_LOG={rust_log:?}: {logged:?} missing:\n{text}"
        );
        assert!(
            !text.contains(silent),
            "RUST_LOG={rust_log:?}: {silent:?} logged:\n{text}"
        );
    }
}

/// Authentication events go to the `audit` target with the user, the client's IP as an address
/// and the request's method, path and id, and no line of the log holds a password or a token.
#[tokio::test]
async fn audit_lines_name_the_user_client_and_request_and_never_a_secret() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, log, addr) = serve_logging_to_file(dir.path(), &["--log-format", "json"], &[]);
    let lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let client = reqwest::Client::new();
    let login = |password: &'static str, id: &'static str| {
        client
            .post(format!("http://{addr}/login"))
            .header("x-request-id", id)
            .json(&serde_json::json!({"username": "admin", "password": password}))
            .send()
    };
    let wrong = "not the admin password";
    let res = login(wrong, "audit-1").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = login(ADMIN_PASSWORD, "audit-2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let res = client
        .post(format!("http://{addr}/logout"))
        .header("x-request-id", "audit-3")
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = stop_and_read_log(child, &log);
    let audit: Vec<Value> = lines(&text)
        .into_iter()
        .filter(|l| l["target"] == "audit")
        .collect();
    let event = |name: &str| {
        audit
            .iter()
            .find(|l| l["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event in:\n{text}"))
    };
    let failed = event("login_failed");
    assert_eq!(failed["username"], "admin");
    assert_eq!(failed["ip"], "127.0.0.1");
    assert_eq!(failed["method"], "POST");
    assert_eq!(failed["path"], "/login");
    assert_eq!(failed["request_id"], "audit-1");
    let login = event("login");
    assert_eq!(login["user"], "admin");
    assert_eq!(login["ip"], "127.0.0.1");
    assert_eq!(login["request_id"], "audit-2");
    let logout = event("logout");
    assert_eq!(logout["user"], "admin");
    assert_eq!(logout["path"], "/logout");
    assert_eq!(logout["scope"], "current");
    assert_eq!(logout["request_id"], "audit-3");
    let signature = access.rsplit('.').next().unwrap();
    for secret in [wrong, ADMIN_PASSWORD, &access, signature, &refresh] {
        assert!(!text.contains(secret), "{secret:?} logged:\n{text}");
    }
}

/// A username tried at login reaches the text log escaped: it cannot end its line and write a
/// forged audit line after it.
#[tokio::test]
async fn a_username_tried_at_login_cannot_forge_a_log_line() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, log, addr) = serve_logging_to_file(dir.path(), &[], &[]);
    let forged = "evil\n2026-01-01T00:00:00.000000Z  INFO audit: event=\"login\" user=admin";
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/login"))
        .json(&serde_json::json!({"username": forged, "password": "not the admin password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let text = stop_and_read_log(child, &log);
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("login_failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(failed[0].contains("username=evil\\x0a2026-01-01"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("2026-01-01")), "{text}");
}

/// The running server hashes on `password_hash_threads` threads in the idle scheduling class
/// (`SCHED_IDLE`, policy 5) and has one rescuer at nice 10 (README, "Passwords"): read from
/// `/proc` of the real process, which also shows the setting reaches the pool.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_servers_hashing_threads_are_idle_class_and_its_rescuer_nice_10() {
    if !embedded() {
        return; // a process-level test of the embedded default
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, log, _addr) =
        serve_logging_to_file(dir.path(), &[], &[("TESSERA_PASSWORD_HASH_THREADS", "3")]);
    let pid = child.id();
    let threads = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let mut seen: Vec<(String, String, String)> = tasks
            .filter_map(|task| {
                let path = task.ok()?.path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the name, which is in parentheses: state is field 3, nice 19,
                // policy 41.
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                let (nice, policy) = (fields.get(16)?, fields.get(38)?);
                Some((name.trim().to_owned(), nice.to_string(), policy.to_string()))
            })
            .filter(|(name, _, _)| name.starts_with("tessera-hash") || name == "tessera-rescue")
            .collect();
        seen.sort();
        seen
    };
    let expected = [
        ("tessera-hash-0", "0", "5"),
        ("tessera-hash-1", "0", "5"),
        ("tessera-hash-2", "0", "5"),
        ("tessera-rescue", "10", "0"),
    ]
    .map(|(n, nice, policy)| (n.to_owned(), nice.to_owned(), policy.to_owned()));
    // Each thread sets its class as it starts, which may be just after the address is logged.
    let started = Instant::now();
    let mut seen = threads();
    while seen != expected && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = threads();
    }
    let _ = stop_and_read_log(child, &log);
    assert_eq!(seen, expected);
}

/// Records the first migration as applied with other contents, as a migration file edited
/// after it ran would leave a database: sqlx refuses to go on (`VersionMismatch`), and only an
/// operator can settle which is right.
async fn record_another_first_migration(url: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    for sql in [
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
         checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1, 'users', true, '\\x00', 0)",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

const REFUSED: &str = "cannot migrate the PostgreSQL database";

/// A PostgreSQL that answers but refuses the migrations stops start-up with the reason: that
/// is an operator's to fix, not an outage to wait out (a database that does not answer does
/// not stop it: `faults::a_server_started_while_postgres_is_down_…`).
#[tokio::test]
async fn a_postgres_that_refuses_the_migrations_stops_start_up() {
    if !embedded() {
        return; // a process-level test, run once
    }
    let url = crate::servers::postgres().fresh_database().await;
    record_another_first_migration(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tessera_serve(dir.path())
        .env("TESSERA_DATABASE_URL", &url)
        .env("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(err.contains(REFUSED), "{err}");
}

/// The same database found only after start-up (PostgreSQL was down then, so the server
/// started and retries in the background every second): once it answers and refuses the
/// migrations, the server says so as an error every 30 s, not every second, and stays unready.
#[tokio::test]
async fn refused_migrations_found_after_start_up_are_logged_every_30_s_not_every_second() {
    if !embedded() {
        return; // a process-level test, run once
    }
    let pg = crate::servers::Postgres::start();
    let url = pg.fresh_database().await;
    record_another_first_migration(&url).await;
    pg.stop();
    let dir = tempfile::tempdir().unwrap();
    let (child, log, addr) =
        serve_logging_to_file(dir.path(), &[], &[("TESSERA_DATABASE_URL", &url)]);
    pg.restart();
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains(REFUSED) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the refusal was never logged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Five retries at the pace of a database that does not answer.
    std::thread::sleep(Duration::from_secs(5));
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = stop_and_read_log(child, &log);
    assert_eq!(text.matches(REFUSED).count(), 1, "{text}");
}
