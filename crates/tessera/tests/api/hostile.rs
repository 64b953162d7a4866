//! Bad input of every kind: the right 4xx JSON error, never a 500, and nothing changes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// The store's visible state: users and the admin's sessions.
async fn snapshot(app: &TestApp) -> (Vec<String>, usize) {
    let users = app
        .auth
        .list_users()
        .await
        .unwrap()
        .iter()
        .map(|u| format!("{}:{}", u.username, u.password_hash))
        .collect();
    let admin = app.auth.find_user("admin").await.unwrap();
    let who = tessera::service::Principal {
        user_id: admin.id,
        username: admin.username.clone(),
        roles: admin.roles.clone(),
        session_id: tessera::domain::session::SessionId::new(),
        via_cookie: false,
    };
    (users, app.auth.sessions(&who).await.unwrap().len())
}

#[tokio::test]
async fn malformed_login_bodies_get_4xx_json_and_change_nothing() {
    let app = spawn_app_with(&[("TESSERA_ALLOW_REGISTRATION", "true")]).await;
    let before = snapshot(&app).await;
    let big = format!(
        "{{\"username\":\"admin\",\"password\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let cases: Vec<(&str, Option<&str>, Vec<u8>, StatusCode)> = vec![
        (
            "/login",
            Some("application/json"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            b"{\"username\":\"admin\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            b"{\"username\":1,\"password\":2}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            br#"{"username":"admin","password":"x","admin":true}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("application/json"),
            b"{\"username\":\"\xff\xfe\",\"password\":\"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/login",
            Some("text/plain"),
            br#"{"username":"admin","password":"x"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/login",
            None,
            br#"{"username":"admin","password":"x"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/login",
            Some("application/json"),
            big.clone().into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/users",
            Some("application/json"),
            big.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/users",
            Some("application/json"),
            b"{\"username\":\"u\xc3\x28\",\"password\":\"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/users",
            Some("application/json"),
            br#"{"username":"ok","password":"correct horse battery","roles":["admin"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/users",
            Some("application/x-www-form-urlencoded"),
            b"username=a&password=b".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (path, ct, body, status) in cases {
        let mut req = app.client.post(app.url(path)).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        assert_eq!(
            res.status(),
            status,
            "{path} {ct:?} {:.40}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(res.headers()["content-type"], "application/json");
        let text = res.text().await.unwrap();
        assert!(
            !text.contains("xxxxxxxx") && !text.contains("correct horse"),
            "echoed input: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].is_string() && v["detail"].is_string());
    }
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn very_long_and_empty_credentials_are_plain_invalid_credentials() {
    let app = spawn_app().await;
    let long = "a".repeat(10_000);
    for (u, p) in [
        ("", ""),
        ("admin", ""),
        (long.as_str(), "password"),
        ("admin", long.as_str()),
    ] {
        let res = app.login_raw(u, p).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(res).await, "invalid_credentials");
    }
}

#[tokio::test]
async fn a_password_is_never_echoed_when_sent_with_the_wrong_type() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/login",
            &json!({"username": "admin", "password": 424242424242u64}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(!res.text().await.unwrap().contains("424242"));
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "not_found");
    let res = app.client.get(app.url("/login")).send().await.unwrap();
    // GET /login is the HTML page.
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.client.put(app.url("/verify")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(res).await, "method_not_allowed");
}

#[tokio::test]
async fn verify_without_or_with_a_malformed_credential_is_401_never_a_redirect() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/verify")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(res).await, "unauthenticated");
    for h in [
        &b"Basic YWRtaW46YWRtaW4="[..],
        b"Bearer",
        b"Bearer ",
        b"Token abc",
        b"bearer\x7fx",
        "Bearer ü.ü.ü".as_bytes(),
        b"Bearer \xff\xfe.\x80.\x81",
        b"Bearer\ta.b.c",
        b"Bearer a.b\t.c",
    ] {
        let Ok(value) = reqwest::header::HeaderValue::from_bytes(h) else {
            continue; // not sendable as a header value at all
        };
        let res = app
            .client
            .get(app.url("/verify"))
            .header("authorization", value)
            .send()
            .await;
        let Ok(res) = res else { continue }; // the client may refuse to send an invalid header
        let shown = String::from_utf8_lossy(h);
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{shown:?}");
        let code = error_code(res).await;
        assert!(
            code == "invalid_token" || code == "unauthenticated",
            "{shown:?}: {code}"
        );
    }
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);
    assert_eq!(app.get_status("/readyz").await, StatusCode::OK);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_nosniff() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_escape_the_ip_limit() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_IP_MAX_FAILURES", "3")]).await;
    let attacker = client_from("127.0.0.7");
    for i in 0..3 {
        let res = attacker
            .post(app.url("/login"))
            .header("x-forwarded-for", format!("10.9.8.{i}"))
            .json(&json!({"username": format!("u{i}"), "password": "wrong password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = attacker
        .post(app.url("/login"))
        .header("x-forwarded-for", "203.0.113.99")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the socket peer is the client"
    );
}

#[tokio::test]
async fn a_trusted_proxy_forwarded_for_names_the_client() {
    let app = spawn_app_with(&[
        ("TESSERA_LOGIN_IP_MAX_FAILURES", "2"),
        ("TESSERA_TRUSTED_PROXIES", "127.0.0.8/32"),
    ])
    .await;
    let proxy = client_from("127.0.0.8");
    for _ in 0..2 {
        proxy
            .post(app.url("/login"))
            .header("x-forwarded-for", "198.51.100.1")
            .json(&json!({"username": "x", "password": "wrong password"}))
            .send()
            .await
            .unwrap();
    }
    let other_client = proxy
        .post(app.url("/login"))
        .header("x-forwarded-for", "198.51.100.2")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other_client.status(),
        StatusCode::OK,
        "another client behind the same proxy is not throttled"
    );
    let same_client = proxy
        .post(app.url("/login"))
        .header("x-forwarded-for", "198.51.100.1")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(same_client.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn ten_thousand_distinct_invalid_tokens_cost_no_memory_and_no_waiting() {
    // A server process of its own, so its memory is measured alone.
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::cli::serve(dir.path(), &[("TESSERA_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    let pid = server.child.id();
    let rss_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let base = format!("http://{}", server.addr);
    let client = client_from("127.0.0.1");
    let res = client
        .post(format!("{base}/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let access = res.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = access.split_once('.').unwrap().0.to_owned();

    let mut slowest = std::time::Duration::ZERO;
    let mut before = 0;
    for batch in 0..110 {
        if batch == 10 {
            before = rss_kib(); // after a warm-up of 1,000
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            // A real header (so parsing goes all the way to the signature), random payloads.
            let token = format!("{header}.eyJzdWIiOiJ{batch}x{i}In0.c2lnbmF0dXJl{batch}{i}");
            let req = client.get(format!("{base}/verify")).bearer_auth(token);
            set.spawn(async move {
                let started = std::time::Instant::now();
                let status = req.send().await.unwrap().status();
                (status, started.elapsed())
            });
        }
        while let Some(done) = set.join_next().await {
            let (status, took) = done.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            slowest = slowest.max(took);
        }
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 4 * 1024,
        "server RSS grew by {grown} KiB over 10,000 invalid tokens"
    );
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "slowest {slowest:?} (store_timeout is 500ms)"
    );
    let ok = client
        .get(format!("{base}/verify"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[tokio::test]
async fn a_login_flood_past_the_hashing_queue_gets_503_not_unbounded_memory() {
    let app = spawn_app().await;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..6 {
        let client = client_from(&format!("127.0.2.{}", c + 1));
        for i in 0..25 {
            let req = client
                .post(app.url("/login"))
                .json(&json!({"username": format!("flood{c}x{i}"), "password": "wrong password"}));
            set.spawn(async move {
                let res = req.send().await.unwrap();
                (res.status(), res.headers().contains_key("retry-after"))
            });
        }
    }
    let mut seen = std::collections::BTreeMap::<u16, u32>::new();
    while let Some(r) = set.join_next().await {
        let (status, retry_after) = r.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "503 carries Retry-After");
        }
        *seen.entry(status.as_u16()).or_default() += 1;
    }
    assert!(seen.keys().all(|s| *s == 401 || *s == 503), "{seen:?}");
    assert!(
        seen.get(&503).copied().unwrap_or(0) > 0,
        "the queue is bounded: {seen:?}"
    );
    // The service is fine afterwards.
    app.login("admin", ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-big", "x".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);
}

/// At most 100 request headers (hyper's default, relied on rather than set: setting it, even to
/// the same value, made hyper initialise two 100-slot arrays per request).
#[tokio::test]
async fn a_request_with_more_than_100_headers_gets_431() {
    let app = spawn_app().await;
    let with = |n: usize| {
        let mut req = app.client.get(app.url("/healthz"));
        // reqwest adds `accept` and `host`; hyper counts every header.
        for i in 0..n - 2 {
            req = req.header(format!("x-h{i}"), "1");
        }
        req.send()
    };
    assert_eq!(with(100).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        with(101).await.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);
}

/// Sends `head` (an unfinished request head) on `conn` and waits for the server to close the
/// connection; how long that took.
async fn closed_after_stalling(
    conn: &mut tokio::net::TcpStream,
    head: &[u8],
) -> std::time::Duration {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    conn.write_all(head).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read(&mut buf)).await;
    let read = read.expect("the connection was still open after 20 s");
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "answered instead of closing: {:?}",
        &buf[..*read.as_ref().unwrap_or(&0)]
    );
    started.elapsed()
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_timeout() {
    let app = spawn_app().await;
    let partial = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    // On a new connection, and on one that was served before (whose requests reuse one timer
    // for their header deadlines, moved later for each: src/deadline.rs).
    let fresh = async {
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        closed_after_stalling(&mut conn, partial).await
    };
    let reused = async {
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        for _ in 0..3 {
            healthz_on(&mut conn).await;
        }
        closed_after_stalling(&mut conn, partial).await
    };
    let (fresh, reused) = tokio::join!(fresh, reused);
    for waited in [fresh, reused] {
        assert!(
            waited >= std::time::Duration::from_secs(9),
            "closed too early: {waited:?}"
        );
    }
    // The server keeps serving everyone else.
    assert_eq!(app.get_status("/healthz").await, StatusCode::OK);
}

/// `GET /verify` and `GET /profile` are answered before the router (the fast path); everything
/// around them must be as for any routed request: the edge headers, the metric under the route,
/// and the router still owning `HEAD`, other methods and near-miss paths.
#[tokio::test]
async fn the_unrouted_gets_keep_the_edge_headers_metrics_and_routing_of_every_route() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let bearer = format!("Bearer {}", t.access);

    for route in ["/verify", "/profile"] {
        let res = app
            .client
            .get(app.url(&format!("{route}?rd=https%3A%2F%2Fapp.example%2F")))
            .header("authorization", &bearer)
            .header("x-request-id", "fast-trace-1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{route}");
        let h = res.headers();
        assert_eq!(h["x-request-id"], "fast-trace-1");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "same-origin");
        assert_eq!(h["cache-control"], "no-store");
        if route == "/verify" {
            assert_eq!(h["x-auth-user"], "admin");
        } else {
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(h["pragma"], "no-cache");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["username"], "admin", "{body}");
        }
        let res = app.client.get(app.url(route)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{route}");
        assert!(res.headers().contains_key("x-request-id"));
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert_eq!(error_code(res).await, "unauthenticated");

        for (method, path, status) in [
            (Method::HEAD, route.to_owned(), StatusCode::OK),
            (
                Method::POST,
                route.to_owned(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::GET, format!("{route}/"), StatusCode::NOT_FOUND),
        ] {
            let res = app
                .client
                .request(method.clone(), app.url(&path))
                .header("authorization", &bearer)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), status, "{method} {path}");
            if method == Method::HEAD && route == "/verify" {
                assert_eq!(res.headers()["x-auth-user"], "admin");
            }
        }
    }

    let metrics = app.get_text("/metrics").await;
    for route in ["/verify", "/profile"] {
        for (method, status) in [("GET", 200), ("GET", 401), ("HEAD", 200), ("POST", 405)] {
            let needle = format!(
                "tessera_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
            );
            assert!(
                metrics.contains(&needle),
                "{needle} missing from:\n{metrics}"
            );
        }
    }
}
