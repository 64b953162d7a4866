use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn users_sessions_and_keys_survive_a_restart() {
    let app = spawn_app().await;
    let t = app.user_session("pat").await;
    let (dir, backend) = app.stop().await;

    let app = spawn_in(dir, backend, &[]).await;
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
    let (dir, backend) = app.stop().await;
    let app = spawn_in(dir, backend, &[]).await;
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    if !embedded() {
        return; // only the embedded store is single-owner
    }
    let app = spawn_app().await;
    let second = tessera::Application::build(settings(app.dir.path(), &[], &[])).await;
    let err = second.err().expect("second server refused").to_string();
    assert!(err.contains("already using data_dir"), "{err}");
}

#[tokio::test]
async fn expired_sessions_are_swept_from_the_store() {
    if !embedded() {
        return; // Redis expires keys by itself
    }
    let app = spawn_app_with(&[("TESSERA_SESSION_IDLE_TIMEOUT", "1m")]).await;
    let _t = app.user_session("rex").await;
    app.advance(std::time::Duration::from_secs(61));
    assert_eq!(app.auth.sweep().await.unwrap(), 1);
    assert_eq!(app.auth.sweep().await.unwrap(), 0);
}

#[tokio::test]
async fn a_store_that_does_not_answer_in_time_gives_503_never_401() {
    if !embedded() {
        return; // this one blocks SQLite; Redis outages are the reliability suite's
    }
    use sqlx::Connection as _;
    let app = spawn_app_with(&[("TESSERA_STORE_TIMEOUT", "300ms")]).await;
    let t = app.user_session("sid").await;

    // Another process holds the write lock: every write now waits past store_timeout.
    let opts =
        sqlx::sqlite::SqliteConnectOptions::new().filename(app.dir.path().join("tessera.db"));
    let mut blocker = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let res = app.login_raw("sid", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_code(res).await, "store_unavailable");
    let res = app.logout(&t.access).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a logout that did not happen is not a success"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::OK,
        "the session was never lost"
    );
    app.login("sid", PASSWORD).await;
}
