//! The baseline the benchmark compares tessera with: what a hand-rolled "token in Redis" check
//! costs at minimum. `GET /verify` with `Authorization: Bearer <token>` answers 200 when
//! `GET token:<token>` finds a value in Redis, 401 otherwise.
//! Usage: tessera-bench-baseline <listen addr> <redis url>

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

async fn verify(State(mut redis): State<ConnectionManager>, headers: HeaderMap) -> StatusCode {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return StatusCode::UNAUTHORIZED;
    };
    match redis
        .get::<_, Option<String>>(format!("token:{token}"))
        .await
    {
        Ok(Some(_)) => StatusCode::OK,
        Ok(None) => StatusCode::UNAUTHORIZED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18500".into());
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let redis = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
    let app = Router::new()
        .route("/verify", get(verify))
        .with_state(redis);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
