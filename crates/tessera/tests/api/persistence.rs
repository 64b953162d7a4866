use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn users_sessions_and_keys_survive_a_restart() {
    let app = spawn_app().await;
    let t = app.user_session("pat").await;
    let dir = app.stop().await;

    let app = spawn_in(dir, &[]).await;
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    let res = app.refresh(&t.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    app.login("pat", PASSWORD).await;
}

#[tokio::test]
async fn a_revoked_session_stays_revoked_after_a_restart() {
    let app = spawn_app().await;
    let t = app.user_session("quinn").await;
    app.client
        .post(app.url("/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    let dir = app.stop().await;
    let app = spawn_in(dir, &[]).await;
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let app = spawn_app().await;
    let second = tessera::Application::build(settings(app.dir.path(), &[])).await;
    let err = second.err().expect("second server refused").to_string();
    assert!(err.contains("already using data_dir"), "{err}");
}

#[tokio::test]
async fn expired_sessions_are_swept_from_the_store() {
    let app = spawn_app_with(&[("TESSERA_SESSION_IDLE_TIMEOUT", "1m")]).await;
    let _t = app.user_session("rex").await;
    app.advance(std::time::Duration::from_secs(61));
    assert_eq!(app.auth.sweep().await.unwrap(), 1);
    assert_eq!(app.auth.sweep().await.unwrap(), 0);
}
