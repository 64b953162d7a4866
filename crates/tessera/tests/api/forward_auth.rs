//! A real nginx, started with the shipped example config (`examples/nginx/`), in front of
//! tessera and a small upstream that reports the identity headers it received.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::servers::free_port;

/// An upstream application: answers every request with the X-Auth-* headers it got.
async fn upstream() -> std::net::SocketAddr {
    async fn echo(headers: HeaderMap) -> axum::Json<Value> {
        let mut seen = serde_json::Map::new();
        for (k, v) in &headers {
            if k.as_str().starts_with("x-auth-") {
                let values = seen
                    .entry(k.as_str().to_owned())
                    .or_insert_with(|| json!([]));
                values
                    .as_array_mut()
                    .unwrap()
                    .push(json!(v.to_str().unwrap_or("")));
            }
        }
        axum::Json(Value::Object(seen))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(echo)).await });
    addr
}

struct Nginx {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(tessera: std::net::SocketAddr, upstream: std::net::SocketAddr) -> Nginx {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let identity = dir.path().join("tessera-identity.conf");
    std::fs::copy(examples.join("tessera-identity.conf"), &identity).unwrap();
    let site = std::fs::read_to_string(examples.join("tessera.conf"))
        .unwrap()
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:8080", &tessera.to_string())
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace(
            "/etc/nginx/tessera-identity.conf",
            identity.to_str().unwrap(),
        )
        .replace("https://auth.example.com", PUBLIC_URL);
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx runs (the test script installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        port,
        child,
        _dir: dir,
    }
}

#[tokio::test]
async fn nginx_auth_request_guards_an_upstream_with_tessera() {
    let app = spawn_app_with(&[("TESSERA_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let up = upstream().await;
    let proxy = nginx(app.addr, up);
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", proxy.port);
    let client = client_from("127.0.0.1");

    // Anonymous: the API gets 401, a browser is sent to the login page with its way back.
    let res = client.get(url("/api/orders")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = client.get(url("/reports?q=1")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let to = res.headers()["location"].to_str().unwrap();
    assert!(
        to.starts_with(&format!(
            "{PUBLIC_URL}/login?rd=http://127.0.0.1:{}/reports?q=1",
            proxy.port
        )),
        "{to}"
    );

    // A forged identity without credentials gets nowhere.
    let res = client
        .get(url("/api/orders"))
        .header("x-auth-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Signed in: the upstream receives the identity, and only tessera's.
    app.add_user("ned", &["reader"]).await;
    let t = app.login("ned", PASSWORD).await;
    let res = client
        .get(url("/api/orders"))
        .bearer_auth(&t.access)
        .header("x-auth-user", "admin")
        .header("x-auth-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["x-auth-user"], json!(["ned"]), "{seen}");
    assert_eq!(seen["x-auth-roles"], json!(["reader"]), "{seen}");
    assert_eq!(seen["x-auth-user-id"].as_array().map(Vec::len), Some(1));
    assert_eq!(seen["x-auth-session"].as_array().map(Vec::len), Some(1));

    // The browser case works with the session cookie.
    let b = Browser::new(&app);
    b.sign_in("ned", PASSWORD).await;
    let cookie = format!("tessera_session={}", b.cookie("tessera_session").unwrap());
    let res = client
        .get(url("/reports"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // After logout: 401 again.
    app.client
        .post(app.url("/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    let res = client
        .get(url("/api/orders"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// A TCP relay to `to` that counts the connections made through it.
async fn counting_relay(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// The shipped config keeps its connections to tessera open between checks (opening one per
/// protected request costs tessera more than the check: README, Performance), and a connection
/// left idle past tessera's 10 s limit does not turn the next check into an error.
#[tokio::test]
async fn nginx_reuses_its_connections_to_tessera_and_survives_their_idle_close() {
    let app = spawn_app_with(&[("TESSERA_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let (relay, connections) = counting_relay(app.addr).await;
    let proxy = nginx(relay, upstream().await);
    let url = format!("http://127.0.0.1:{}/api/orders", proxy.port);
    let client = client_from("127.0.0.1");
    app.add_user("kai", &["reader"]).await;
    let t = app.login("kai", PASSWORD).await;
    let check = || async {
        let res = client
            .get(&url)
            .bearer_auth(&t.access)
            .send()
            .await
            .unwrap();
        res.status()
    };

    for _ in 0..20 {
        assert_eq!(check().await, StatusCode::OK);
    }
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "20 checks opened {opened} connections to tessera"
    );

    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        check().await,
        StatusCode::OK,
        "the first check after idling"
    );
    assert_eq!(check().await, StatusCode::OK);
}
