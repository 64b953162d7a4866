//! Metrics and migration in.

use std::process::{Command, Stdio};
use std::time::Duration;

use argon2::password_hash::PasswordHasher as _;
use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn metrics_count_requests_logins_refreshes_and_reuse() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    app.login_raw("admin", "wrong password").await;
    app.refresh(&t.refresh).await;
    app.advance(std::time::Duration::from_secs(60));
    app.refresh(&t.refresh).await; // reuse after the grace window

    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for needle in [
        "tessera_logins_total{outcome=\"success\"}",
        "tessera_logins_total{outcome=\"invalid_credentials\"}",
        "tessera_refreshes_total{outcome=\"rotated\"}",
        "tessera_refreshes_total{outcome=\"reuse\"}",
        "tessera_refresh_reuse_detected_total",
        "tessera_http_requests_total{method=\"POST\",route=\"/login\",status=\"200\"}",
        "tessera_http_request_duration_seconds",
        "tessera_store_duration_seconds",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(
        !text.contains(ADMIN_PASSWORD) && !text.contains("tsr1."),
        "no secret in metrics"
    );
}

#[tokio::test]
async fn imported_bcrypt_and_argon2_users_log_in_and_are_upgraded() {
    let app = spawn_app().await;
    let bcrypt_hash = bcrypt::hash("bcrypt user password", 4).unwrap();
    let weak = argon2::Params::new(4096, 1, 1, None).unwrap();
    let argon_hash = argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, weak)
        .hash_password(b"argon user password")
        .unwrap()
        .to_string();
    // Cost 31: 2^31 rounds, days of a hashing thread at every login of the user.
    let too_costly = bcrypt_hash.replacen("$04$", "$31$", 1);
    let file = app.dir.path().join("users.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"username\":\"Bea\",\"password_hash\":\"{bcrypt_hash}\",\"roles\":[\"ops\"]}}\n\
             {{\"username\":\"arne\",\"password_hash\":\"{argon_hash}\"}}\n\
             this line is broken\n\
             {{\"username\":\"md5\",\"password_hash\":\"5f4dcc3b5aa765d61d8327deb882cf99\"}}\n\
             {{\"username\":\"admin\",\"password_hash\":\"{bcrypt_hash}\"}}\n\
             {{\"username\":\"slow\",\"password_hash\":\"{too_costly}\"}}\n"
        ),
    )
    .unwrap();
    let (dir, backend) = (app.dir.path().to_owned(), app.backend.clone());
    let run = move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.env_clear()
            .arg("--data-dir")
            .arg(&dir)
            .envs(backend.iter().map(|(k, v)| (k, v)));
        cmd.args(["user", "import"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("imported 2 users, skipped 4"), "{stdout}");
    assert!(
        ["line 3", "line 4", "line 5", "line 6"]
            .iter()
            .all(|line| stderr.contains(line)),
        "{stderr}"
    );
    assert!(stderr.contains("exists"), "{stderr}");

    app.login("bea", "bcrypt user password").await;
    app.login("arne", "argon user password").await;
    for name in ["bea", "arne"] {
        let u = app.auth.find_user(name).await.unwrap();
        assert!(
            u.password_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{name}: {}",
            u.password_hash
        );
    }
    assert_eq!(
        app.auth.find_user("bea").await.unwrap().roles.to_csv(),
        "ops"
    );

    let again = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("imported 0 users"),
        "idempotent"
    );
}

#[tokio::test]
async fn tls_serves_http2_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let app = spawn_app_with(&[
        ("TESSERA_TLS_CERT", cert.to_str().unwrap()),
        ("TESSERA_TLS_KEY", key.to_str().unwrap()),
    ])
    .await;
    let url = format!("https://127.0.0.1:{}", app.addr.port());
    // A client that connects and never starts the handshake holds nothing for long.
    let addr = app.addr;
    let silent = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a silent connection was still open after 20 s"
        );
        started.elapsed()
    });
    let curl = |args: Vec<String>| {
        let cert = cert.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--http2", "--cacert"])
                .arg(&cert)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    // HTTP/2 by ALPN, and HTTP/1.1 for clients that do not offer h2 (curl takes the last
    // version flag).
    for (version, expected) in [("--http2", "2 200"), ("--http1.1", "1.1 200")] {
        let out = curl(vec![
            version.into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_version} %{http_code}".into(),
            format!("{url}/healthz"),
        ])
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let body = format!("{{\"username\":\"admin\",\"password\":\"{ADMIN_PASSWORD}\"}}");
    let out = curl(vec![
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        body,
        format!("{url}/login"),
    ])
    .await
    .unwrap();
    let login: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(login["access_token"].is_string(), "{login}");
    // Plain HTTP on the TLS port is refused.
    let plain = app
        .client
        .get(format!("http://127.0.0.1:{}/healthz", app.addr.port()))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
    let waited = silent.await.unwrap();
    assert!(
        waited >= Duration::from_secs(9),
        "the handshake timeout came early: {waited:?}"
    );
}
