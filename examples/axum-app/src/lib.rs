//! An application protected by tessera: `/` is public (and greets signed-in callers by name),
//! `/me` needs a valid, unrevoked tessera access token, `/admin` needs the admin role.

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tessera_axum::{Tessera, TesseraUser};

async fn home(user: Option<TesseraUser>) -> String {
    match user {
        Some(u) => format!("hello {}", u.username),
        None => "hello stranger".to_owned(),
    }
}

async fn me(user: TesseraUser) -> Json<Value> {
    Json(
        json!({ "user_id": user.user_id, "username": user.username, "roles": user.roles, "session": user.session_id }),
    )
}

async fn admin(user: TesseraUser) -> Result<&'static str, StatusCode> {
    if user.has_role("admin") {
        Ok("welcome, admin")
    } else {
        Err(StatusCode::FORBIDDEN)
    }
}

/// The application's router.
pub fn router(tessera: Tessera) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/me", get(me))
        .route("/admin", get(admin))
        .with_state(tessera)
}
