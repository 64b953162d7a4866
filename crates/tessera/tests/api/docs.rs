//! `/openapi.json` (pinned by a snapshot) and Swagger UI at `/docs`, served from the binary.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/snapshots/openapi.json")
}

#[tokio::test]
async fn openapi_json_matches_the_pinned_snapshot() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let live: Value = res.json().await.unwrap();
    let pretty = serde_json::to_string_pretty(&live).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(snapshot_path(), &pretty).unwrap();
    }
    let pinned = std::fs::read_to_string(snapshot_path()).unwrap_or_default();
    assert!(
        pinned == pretty,
        "/openapi.json changed; if on purpose, run UPDATE_SNAPSHOTS=1 cargo test --test api docs and commit the snapshot"
    );
    assert_eq!(live["openapi"], "3.1.0");
    for path in [
        "/login",
        "/token",
        "/logout",
        "/profile",
        "/verify",
        "/sessions",
        "/sessions/{id}",
        "/password",
        "/users",
        "/admin/users",
        "/admin/users/{id}",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(live["paths"].get(path).is_some(), "{path} is documented");
    }
    assert_eq!(
        live["components"]["securitySchemes"]["oauth2"]["flows"]["password"]["tokenUrl"],
        "/token"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary_without_off_host_urls() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/docs")).send().await.unwrap();
    assert!(res.status().is_redirection());
    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Swagger UI needs inline styles, and only it: the pages' policy stays strict.
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("style-src 'self' 'unsafe-inline'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let page = app.client.get(app.url("/login")).send().await.unwrap();
    let page_csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(!page_csp.contains("unsafe-inline"), "{page_csp}");
    let html = res.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no off-host URL in the page"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
    ] {
        assert!(html.contains(asset));
        let res = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
    }
    let init = app.get_text("/docs/swagger-initializer.js").await;
    assert!(
        init.contains("\"validatorUrl\": \"none\""),
        "the online validator is off"
    );
}
