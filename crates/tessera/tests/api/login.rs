use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn json_login_returns_tokens_in_the_seed_shape() {
    let app = spawn_app().await;
    let res = app.login_raw("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["refresh_token"].as_str().unwrap().starts_with("tsr1."));
}

#[tokio::test]
async fn the_original_flow_login_profile_logout_then_profile_is_401() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;

    let res = app.get_auth("/profile", &t.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let profile: Value = res.json().await.unwrap();
    assert_eq!(profile["username"], "admin");
    assert_eq!(profile["user"], "admin");
    assert_eq!(profile["roles"], json!(["admin"]));
    for key in ["id", "created_at", "cached_at"] {
        assert!(profile[key].is_string(), "{key} missing");
    }
    assert!(profile["created_at"].as_str().unwrap().ends_with('Z'));

    let res = app.logout(&t.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"detail": "logged out", "revoked": 1})
    );

    let res = app.get_auth("/profile", &t.access).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(error_code(res).await, "invalid_token");
}

#[tokio::test]
async fn unknown_user_wrong_password_disabled_user_and_malformed_name_answer_alike() {
    let app = spawn_app().await;
    app.add_user("bob", &[]).await;
    app.add_user("carol", &[]).await;
    let carol = app.auth.find_user("carol").await.unwrap();
    app.auth
        .update_user(
            carol.id,
            tessera::service::UserPatch {
                disabled: Some(true),
                roles: None,
            },
        )
        .await
        .unwrap();

    let mut bodies = Vec::new();
    for (user, pw) in [
        ("nobody", PASSWORD),
        ("bob", "wrong password!"),
        ("carol", PASSWORD),
        (" bob", PASSWORD),
    ] {
        let res = app.login_raw(user, pw).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        bodies.push(res.text().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "responses differ: {bodies:?}"
    );
    assert!(bodies[0].contains("invalid_credentials"));
}

#[tokio::test]
async fn usernames_log_in_case_insensitively() {
    let app = spawn_app().await;
    app.add_user("Dave", &[]).await;
    app.login("DAVE", PASSWORD).await;
    app.login("dave", PASSWORD).await;
}

#[tokio::test]
async fn a_legacy_bcrypt_hash_logs_in_and_is_rehashed_to_argon2id() {
    let app = spawn_app().await;
    // The original system's format: bcrypt `$2b$`.
    let legacy = bcrypt::hash("old system password", 4).unwrap();
    app.auth.import_user("legacy", &legacy, &[]).await.unwrap();

    assert_eq!(
        app.login_raw("legacy", "old system passworD")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    app.login("legacy", "old system password").await;

    let after = app.auth.find_user("legacy").await.unwrap();
    assert!(
        after
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        after.password_hash
    );
    app.login("legacy", "old system password").await;
}

#[tokio::test]
async fn after_max_failures_even_the_right_password_gets_429_with_retry_after() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_MAX_FAILURES", "3")]).await;
    app.add_user("erin", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            app.login_raw("erin", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = app.login_raw("ERIN", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    assert_eq!(error_code(res).await, "rate_limited");

    // Another client IP is not locked out by these failures.
    let other = client_from("127.0.0.2");
    let res = other
        .post(app.url("/login"))
        .json(&json!({"username": "erin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // The window passes; the right password works again.
    app.advance(std::time::Duration::from_secs(15 * 60));
    app.login("erin", PASSWORD).await;
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_count() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_MAX_FAILURES", "3")]).await;
    app.add_user("frank", &[]).await;
    for _ in 0..2 {
        app.login_raw("frank", "wrong password!").await;
    }
    app.login("frank", PASSWORD).await;
    for _ in 0..2 {
        assert_eq!(
            app.login_raw("frank", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    app.login("frank", PASSWORD).await;
}

#[tokio::test]
async fn one_client_ip_is_throttled_across_usernames() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_IP_MAX_FAILURES", "4")]).await;
    app.add_user("gina", &[]).await;
    let attacker = client_from("127.0.0.3");
    for i in 0..4 {
        let res = attacker
            .post(app.url("/login"))
            .json(&json!({"username": format!("user{i}"), "password": "whatever pass"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = attacker
        .post(app.url("/login"))
        .json(&json!({"username": "gina", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Everyone else is unaffected.
    app.login("gina", PASSWORD).await;
}

#[tokio::test]
async fn a_username_gets_429_everywhere_after_ten_times_the_pair_limit() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_MAX_FAILURES", "2")]).await;
    app.add_user("hank", &[]).await;
    // Pair limit 2 × 10 = 20 failures per username across all clients.
    for i in 0..10 {
        let c = client_from(&format!("127.0.1.{}", i + 1));
        for _ in 0..2 {
            let res = c
                .post(app.url("/login"))
                .json(&json!({"username": "hank", "password": "wrong password!"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let res = app.login_raw("hank", PASSWORD).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the username-wide cap applies"
    );
}

#[tokio::test]
async fn each_new_lockout_of_the_same_pair_lasts_twice_as_long() {
    let app = spawn_app_with(&[
        ("TESSERA_LOGIN_MAX_FAILURES", "2"),
        ("TESSERA_LOGIN_FAILURE_WINDOW", "10m"),
    ])
    .await;
    let retry_after = |res: &reqwest::Response| -> u64 {
        res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut waits = Vec::new();
    for _ in 0..3 {
        for _ in 0..2 {
            assert_eq!(
                app.login_raw("admin", "wrong password").await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        let res = app.login_raw("admin", ADMIN_PASSWORD).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait = retry_after(&res);
        waits.push(wait);
        app.advance(std::time::Duration::from_secs(wait));
    }
    assert_eq!(waits, [600, 1200, 2400], "growing lockouts");
    // The lock has passed: the right password works and forgives the past.
    app.login("admin", ADMIN_PASSWORD).await;
    for _ in 0..2 {
        app.login_raw("admin", "wrong password").await;
    }
    assert_eq!(
        retry_after(&app.login_raw("admin", ADMIN_PASSWORD).await),
        600
    );
}
