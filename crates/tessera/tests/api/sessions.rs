use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn list(app: &TestApp, access: &str) -> Vec<Value> {
    let res = app.get_auth("/sessions", access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["sessions"].as_array().unwrap().clone()
}

fn sid(app_token: &str) -> String {
    use base64::Engine as _;
    let payload = app_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn each_login_is_a_device_listed_with_the_current_one_marked() {
    let app = spawn_app().await;
    app.add_user("rita", &[]).await;
    let phone = app
        .client
        .post(app.url("/login"))
        .header("user-agent", "Phone/1.0")
        .json(&json!({"username": "rita", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(phone.status(), StatusCode::OK);
    let laptop = app.login("rita", PASSWORD).await;

    let sessions = list(&app, &laptop.access).await;
    assert_eq!(sessions.len(), 2);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], sid(&laptop.access));
    let other = sessions.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(other["user_agent"], "Phone/1.0");
    assert_eq!(other["ip"], "127.0.0.1");
    for k in ["created_at", "last_seen_at", "expires_at"] {
        assert!(other[k].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn deleting_a_session_revokes_only_that_one_and_only_for_its_owner() {
    let app = spawn_app().await;
    app.add_user("sam", &[]).await;
    let a = app.login("sam", PASSWORD).await;
    let b = app.login("sam", PASSWORD).await;
    let eve = app.user_session("eve").await;

    // Someone else's session id is "not found", not "forbidden": ids are not confirmed.
    let res = app
        .client
        .delete(app.url(&format!("/sessions/{}", sid(&b.access))))
        .bearer_auth(&eve.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.verify_status(&b.access).await, StatusCode::OK);

    let res = app
        .client
        .delete(app.url(&format!("/sessions/{}", sid(&b.access))))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.verify_status(&b.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.verify_status(&a.access).await, StatusCode::OK);

    for id in ["00000000-0000-0000-0000-000000000000", "not-an-id"] {
        let res = app
            .client
            .delete(app.url(&format!("/sessions/{id}")))
            .bearer_auth(&a.access)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(res).await, "not_found");
    }

    // Deleting the current session logs the caller out.
    let res = app
        .client
        .delete(app.url(&format!("/sessions/{}", sid(&a.access))))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.verify_status(&a.access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_scopes_current_others_and_all() {
    let app = spawn_app().await;
    app.add_user("tom", &[]).await;
    let a = app.login("tom", PASSWORD).await;
    let b = app.login("tom", PASSWORD).await;
    let c = app.login("tom", PASSWORD).await;

    let res = app
        .client
        .post(app.url("/logout?scope=others"))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["revoked"], 2);
    assert_eq!(app.verify_status(&a.access).await, StatusCode::OK);
    assert_eq!(app.verify_status(&b.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.verify_status(&c.access).await, StatusCode::UNAUTHORIZED);

    let d = app.login("tom", PASSWORD).await;
    let res = app
        .client
        .post(app.url("/logout"))
        .bearer_auth(&d.access)
        .json(&json!({"scope": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["revoked"], 2);
    assert_eq!(app.verify_status(&a.access).await, StatusCode::UNAUTHORIZED);
    // A refresh token of a logged-out session is dead too.
    assert_eq!(
        app.refresh(&a.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );

    let e = app.login("tom", PASSWORD).await;
    let res = app
        .client
        .post(app.url("/logout?scope=everything"))
        .bearer_auth(&e.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.verify_status(&e.access).await, StatusCode::OK);
}

#[tokio::test]
async fn an_idle_session_expires_and_every_use_slides_the_idle_timeout() {
    let app = spawn_app_with(&[
        ("TESSERA_SESSION_IDLE_TIMEOUT", "10m"),
        ("TESSERA_ACCESS_TOKEN_TTL", "1h"),
    ])
    .await;
    let t = app.user_session("uma").await;
    for _ in 0..3 {
        app.advance(Duration::from_secs(9 * 60));
        assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    }
    app.advance(Duration::from_secs(10 * 60));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_absolute_lifetime_ends_even_an_active_session() {
    let app = spawn_app_with(&[
        ("TESSERA_SESSION_IDLE_TIMEOUT", "10m"),
        ("TESSERA_SESSION_LIFETIME", "30m"),
        ("TESSERA_ACCESS_TOKEN_TTL", "1h"),
    ])
    .await;
    let t = app.user_session("vic").await;
    let mut refresh = t.refresh.clone();
    for _ in 0..3 {
        app.advance(Duration::from_secs(9 * 60));
        let res = app.refresh(&refresh).await;
        assert_eq!(res.status(), StatusCode::OK);
        refresh = res.json::<Value>().await.unwrap()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    app.advance(Duration::from_secs(3 * 60 + 1));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn logging_in_past_max_sessions_evicts_the_oldest() {
    let app = spawn_app_with(&[("TESSERA_MAX_SESSIONS_PER_USER", "2")]).await;
    app.add_user("walt", &[]).await;
    let first = app.login("walt", PASSWORD).await;
    app.advance(Duration::from_millis(5));
    let second = app.login("walt", PASSWORD).await;
    app.advance(Duration::from_millis(5));
    let third = app.login("walt", PASSWORD).await;
    assert_eq!(
        app.verify_status(&first.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.verify_status(&second.access).await, StatusCode::OK);
    assert_eq!(app.verify_status(&third.access).await, StatusCode::OK);
    assert_eq!(list(&app, &third.access).await.len(), 2);
}

#[tokio::test]
async fn changing_the_password_revokes_every_other_session() {
    let app = spawn_app().await;
    app.add_user("xena", &[]).await;
    let here = app.login("xena", PASSWORD).await;
    let there = app.login("xena", PASSWORD).await;
    let change = |current: &str, new: &str| {
        app.client
            .post(app.url("/password"))
            .bearer_auth(&here.access)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };

    let res = change("wrong password", "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "invalid_credentials");
    let res = change(PASSWORD, "password123").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(res).await, "weak_password");
    assert_eq!(app.verify_status(&there.access).await, StatusCode::OK);

    let res = change(PASSWORD, "a brand new passphrase").await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.verify_status(&here.access).await, StatusCode::OK);
    assert_eq!(
        app.verify_status(&there.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login_raw("xena", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.login("xena", "a brand new passphrase").await;
}

#[tokio::test]
async fn wrong_current_passwords_share_the_login_throttle() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_MAX_FAILURES", "2")]).await;
    let t = app.user_session("yara").await;
    for _ in 0..2 {
        let res = app
            .client
            .post(app.url("/password"))
            .bearer_auth(&t.access)
            .json(&json!({"current_password": "nope nope", "new_password": "another good one"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        app.login_raw("yara", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
