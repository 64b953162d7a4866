use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn registration_is_403_when_closed() {
    let app = spawn_app().await;
    let res = app
        .post_json("/users", &json!({"username": "zoe", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(app.auth.find_user("zoe").await.is_err());
}

#[tokio::test]
async fn registration_creates_a_user_without_logging_in() {
    let app = spawn_app_with(&[("TESSERA_ALLOW_REGISTRATION", "true")]).await;
    let res = app
        .post_json("/users", &json!({"username": "Zoe", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["username"], "zoe");
    assert_eq!(body["roles"], json!([]));
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    app.login("zoe", PASSWORD).await;

    let res = app
        .post_json("/users", &json!({"username": "ZOE", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "username_taken");
}

#[tokio::test]
async fn registration_enforces_the_username_and_password_policy() {
    let app = spawn_app_with(&[("TESSERA_ALLOW_REGISTRATION", "true")]).await;
    let long = "x".repeat(65);
    let long_pw = "y".repeat(129);
    let cases = [
        ("bad name", PASSWORD, "invalid_username"),
        (long.as_str(), PASSWORD, "invalid_username"),
        ("", PASSWORD, "invalid_username"),
        ("newuser", "short", "weak_password"),
        ("newuser", "", "weak_password"),
        ("newuser", long_pw.as_str(), "weak_password"),
        ("newuser", "iloveyou", "weak_password"),
        ("newuser", "qwertyuiop", "weak_password"),
        ("longusername", "LongUserName", "weak_password"),
    ];
    for (user, pw, code) in cases {
        let res = app
            .post_json("/users", &json!({"username": user, "password": pw}))
            .await;
        assert_eq!(
            res.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{user:.10} {pw:.10}"
        );
        assert_eq!(error_code(res).await, code);
    }
    assert_eq!(
        app.auth.list_users().await.unwrap().len(),
        1,
        "only the admin exists"
    );
}

async fn admin(app: &TestApp) -> Tokens {
    app.login("admin", ADMIN_PASSWORD).await
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_role() {
    let app = spawn_app().await;
    let user = app.user_session("amy").await;
    let res = app.get_auth("/admin/users", &user.access).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "forbidden");
    let res = app
        .client
        .get(app.url("/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn admins_list_create_patch_and_delete_users() {
    let app = spawn_app().await;
    let a = admin(&app).await;

    let res = app
        .client
        .post(app.url("/admin/users"))
        .bearer_auth(&a.access)
        .json(&json!({"username": "ben", "password": PASSWORD, "roles": ["ops"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let ben: Value = res.json().await.unwrap();
    assert_eq!(ben["roles"], json!(["ops"]));
    let id = ben["id"].as_str().unwrap().to_owned();

    let res = app.get_auth("/admin/users", &a.access).await;
    let list: Value = res.json().await.unwrap();
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ben"]);
    assert_eq!(list["users"][1]["disabled"], false);

    // Roles change: the live session sees them at once, the profile cache is invalidated.
    let t = app.login("ben", PASSWORD).await;
    let before: Value = app
        .get_auth("/profile", &t.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["roles"], json!(["ops"]));
    let res = app
        .client
        .patch(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(&a.access)
        .json(&json!({"roles": ["ops", "billing"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["roles"],
        json!(["billing", "ops"])
    );
    let verify = app.get_auth("/verify", &t.access).await;
    assert_eq!(verify.headers()["x-auth-roles"], "billing,ops");
    let after: Value = app
        .get_auth("/profile", &t.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["roles"], json!(["billing", "ops"]));

    // Disabling revokes sessions and blocks login; enabling lets them back.
    let res = app
        .client
        .patch(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(&a.access)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["disabled"], true);
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login_raw("ben", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.client
        .patch(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(&a.access)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    let t = app.login("ben", PASSWORD).await;

    // Deleting revokes sessions.
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    let res = app
        .client
        .delete(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_api_rejects_bad_input_without_changing_anything() {
    let app = spawn_app().await;
    let a = admin(&app).await;
    let res = app
        .client
        .post(app.url("/admin/users"))
        .bearer_auth(&a.access)
        .json(&json!({"username": "cy", "password": PASSWORD, "roles": ["Not A Role"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(res).await, "invalid_role");
    let res = app
        .client
        .patch(app.url("/admin/users/not-a-uuid"))
        .bearer_auth(&a.access)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let me = app.auth.find_user("admin").await.unwrap();
    let res = app
        .client
        .patch(app.url(&format!("/admin/users/{}", me.id)))
        .bearer_auth(&a.access)
        .json(&json!({"disabled": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .client
        .post(app.url("/admin/users"))
        .bearer_auth(&a.access)
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(app.auth.list_users().await.unwrap().len(), 1);
    assert!(!app.auth.find_user("admin").await.unwrap().disabled);
}

#[tokio::test]
async fn the_profile_is_served_from_the_cache_until_the_user_changes() {
    let app = spawn_app().await;
    let t = app.user_session("dora").await;
    let first: Value = app
        .get_auth("/profile", &t.access)
        .await
        .json()
        .await
        .unwrap();
    app.advance(std::time::Duration::from_secs(1));
    let second: Value = app
        .get_auth("/profile", &t.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["cached_at"], second["cached_at"],
        "served from the cache"
    );

    let res = app
        .client
        .post(app.url("/password"))
        .bearer_auth(&t.access)
        .json(&json!({"current_password": PASSWORD, "new_password": "dora's new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let third: Value = app
        .get_auth("/profile", &t.access)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(
        first["cached_at"], third["cached_at"],
        "a change invalidates the cache"
    );
}
