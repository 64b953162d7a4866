//! The example app (`examples/axum-app`), protected through `tessera-axum`, against a live tessera.

use reqwest::StatusCode;
use serde_json::Value;
use tessera_axum::Tessera;

use crate::helpers::*;

async fn example_app(tessera: Tessera) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, tessera_example_app::router(tessera)).await });
    format!("http://{addr}")
}

fn verifier(app: &TestApp, check_revocation: bool) -> Tessera {
    Tessera::builder(format!("http://{}", app.addr))
        .issuer(PUBLIC_URL)
        .check_revocation(check_revocation)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_example_app_accepts_a_tessera_token_and_rejects_it_after_logout() {
    let app = spawn_app().await;
    let base = example_app(verifier(&app, true)).await;
    let client = client_from("127.0.0.1");

    let res = client.get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        client
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "hello stranger"
    );

    app.add_user("iris", &["reader"]).await;
    let t = app.login("iris", PASSWORD).await;
    let res = client
        .get(format!("{base}/me"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(
        (me["username"].as_str(), me["roles"][0].as_str()),
        (Some("iris"), Some("reader"))
    );
    assert_eq!(
        client
            .get(format!("{base}/"))
            .bearer_auth(&t.access)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "hello iris"
    );
    let res = client
        .get(format!("{base}/admin"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    app.client
        .post(app.url("/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    let res = client
        .get(format!("{base}/me"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

#[tokio::test]
async fn the_extractor_follows_key_rotation_and_refuses_forgeries() {
    let app = spawn_app().await;
    let base = example_app(verifier(&app, false)).await;
    let client = client_from("127.0.0.1");
    let t = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(
        client
            .get(format!("{base}/admin"))
            .bearer_auth(&t.access)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    app.auth.rotate_keys().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the JWKS re-fetch limit
    let fresh = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(
        client
            .get(format!("{base}/me"))
            .bearer_auth(&fresh.access)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let mut parts: Vec<&str> = fresh.access.split('.').collect();
    let none_header = "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJub25lIn0";
    parts[0] = none_header;
    parts[2] = "";
    let forged = parts.join(".");
    for bad in [forged.as_str(), "garbage", t.refresh.as_str()] {
        let res = client
            .get(format!("{base}/me"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad:.40}");
    }
}

#[tokio::test]
async fn an_unreachable_tessera_is_503_not_401() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let verifier = verifier(&app, true);
    let base = example_app(verifier).await;
    app.stop().await;
    let res = client_from("127.0.0.1")
        .get(format!("{base}/me"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
}
