//! JSON routes (API.md §2).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Admin, Authenticated, Body, Client, Form, Json, Query};
use crate::domain::clock::Timestamp;
use crate::domain::session::SessionId;
use crate::domain::user::{Roles, User, UserId, Username};
use crate::service::{AuthError, Issued, LogoutScope, UserPatch};

/// `POST /login` JSON body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: SecretString,
}

/// `POST /login` JSON answer; `token` equals `access_token` (seed compatibility).
#[derive(Serialize)]
pub struct LoginResponse {
    token: String,
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

fn is_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// `POST /login`: JSON credentials → tokens. (The HTML form variant comes with the pages.)
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    if is_content_type(&headers, "application/x-www-form-urlencoded") {
        return Ok(super::pages::login_form(state, client, headers, body).await);
    }
    if !is_content_type(&headers, "application/json") {
        return Err(ApiError::unsupported_media_type(
            "JSON (Content-Type: application/json)",
        ));
    }
    let req: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("malformed_json", "the request body is not valid JSON")
        } else {
            ApiError::bad_request(
                "invalid_request",
                "the JSON body must be {\"username\": string, \"password\": string}",
            )
        }
    })?;
    let issued = state
        .auth
        .login(&req.username, req.password, &client)
        .await?;
    let Issued {
        access_token,
        expires_in,
        refresh_token,
        ..
    } = issued;
    Ok(no_store(
        Json(LoginResponse {
            token: access_token.clone(),
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token,
        })
        .into_response(),
    ))
}

/// `POST /token` form (RFC 6749 §4.3 and §6). Unknown parameters are ignored, as the RFC says.
#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<SecretString>,
    refresh_token: Option<String>,
}

/// RFC 6749 §5.1 answer.
#[derive(Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

/// `POST /token`: password and refresh-token grants.
pub async fn token(
    State(state): State<AppState>,
    Client(client): Client,
    Form(req): Form<TokenRequest>,
) -> Result<Response, ApiError> {
    let invalid_request = |d: &'static str| ApiError::bad_request("invalid_request", d).oauth();
    let issued = match req.grant_type.as_deref() {
        Some("password") => {
            let (Some(username), Some(password)) = (req.username, req.password) else {
                return Err(invalid_request(
                    "the password grant needs username and password",
                ));
            };
            state
                .auth
                .login(&username, password, &client)
                .await
                .map_err(|e| match e {
                    AuthError::InvalidCredentials => {
                        AuthError::InvalidGrant("invalid username or password")
                    }
                    other => other,
                })?
        }
        Some("refresh_token") => {
            let Some(rt) = req.refresh_token else {
                return Err(invalid_request(
                    "the refresh_token grant needs refresh_token",
                ));
            };
            state.auth.refresh(&rt).await?
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            )
            .oauth());
        }
        None => return Err(invalid_request("grant_type is required")),
    };
    Ok(no_store(
        Json(TokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            refresh_token: issued.refresh_token,
        })
        .into_response(),
    ))
}

/// `/profile` answer.
#[derive(Serialize)]
pub struct ProfileResponse {
    id: UserId,
    username: Username,
    user: Username,
    roles: Roles,
    created_at: Timestamp,
    cached_at: Timestamp,
}

/// `GET /profile`: from the profile cache for up to 300 s.
pub async fn profile(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
) -> Result<Response, ApiError> {
    let (p, cached_at) = state.auth.profile(&who).await?;
    Ok(no_store(
        Json(ProfileResponse {
            id: p.id,
            username: p.username,
            user: p.user,
            roles: p.roles,
            created_at: p.created_at,
            cached_at,
        })
        .into_response(),
    ))
}

/// `?scope=` or `{"scope": …}` of `POST /logout`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogoutParams {
    #[serde(default)]
    scope: Option<LogoutScope>,
}

/// `POST /logout` JSON answer.
#[derive(Serialize)]
pub struct LogoutResponse {
    detail: &'static str,
    revoked: u64,
}

/// `POST /logout`: revokes this session, the others, or all. The body is optional; when present
/// it must be JSON.
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Query(query): Query<LogoutParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    if is_content_type(&headers, "application/x-www-form-urlencoded") {
        return Ok(super::pages::logout_form(&state, &who, &body).await);
    }
    let mut scope = query.scope;
    if !body.is_empty() {
        if !is_content_type(&headers, "application/json") {
            return Err(ApiError::unsupported_media_type(
                "JSON (Content-Type: application/json)",
            ));
        }
        let params: LogoutParams = serde_json::from_slice(&body).map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                "the body must be {\"scope\": \"current\" | \"others\" | \"all\"}",
            )
        })?;
        scope = params.scope.or(scope);
    }
    let scope = scope.unwrap_or_default();
    let revoked = state.auth.logout(&who, scope).await?;
    let mut res = Json(LogoutResponse {
        detail: "logged out",
        revoked,
    })
    .into_response();
    if who.via_cookie && scope != LogoutScope::Others {
        res.headers_mut()
            .append(header::SET_COOKIE, state.http.cookies.clear_session());
    }
    Ok(res)
}

/// `GET /verify`: forward-auth. 200 with identity headers, 401 otherwise, never a redirect.
pub async fn verify(Authenticated(who): Authenticated) -> Response {
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    h.insert("x-auth-user", value(who.username.as_str()));
    h.insert("x-auth-user-id", value(&who.user_id.to_string()));
    h.insert("x-auth-roles", value(&who.roles.to_csv()));
    h.insert("x-auth-session", value(&who.session_id.to_string()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// One entry of `GET /sessions`.
#[derive(Serialize)]
pub struct SessionView {
    id: SessionId,
    created_at: Timestamp,
    last_seen_at: Timestamp,
    expires_at: Timestamp,
    user_agent: Option<String>,
    ip: Option<String>,
    current: bool,
}

/// `GET /sessions` answer.
#[derive(Serialize)]
pub struct SessionsResponse {
    sessions: Vec<SessionView>,
}

/// `GET /sessions`: the caller's live sessions.
pub async fn sessions(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
) -> Result<Response, ApiError> {
    let list = state.auth.sessions(&who).await?;
    let sessions = list
        .into_iter()
        .map(|s| SessionView {
            current: s.id == who.session_id,
            id: s.id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at(),
            user_agent: s.user_agent,
            ip: s.ip,
        })
        .collect();
    Ok(no_store(
        Json(SessionsResponse { sessions }).into_response(),
    ))
}

/// `DELETE /sessions/{id}`: revokes one of the caller's sessions.
pub async fn delete_session(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = SessionId::parse(&id).ok_or(ApiError::not_found("no such session"))?;
    state.auth.revoke_session(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /password` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    current_password: SecretString,
    new_password: SecretString,
}

/// `POST /password`: change the caller's password; every other session is revoked.
pub async fn change_password(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Client(client): Client,
    Json(req): Json<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .change_password(&who, req.current_password, req.new_password, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public view of a user.
#[derive(Serialize)]
pub struct UserResponse {
    id: UserId,
    username: Username,
    user: Username,
    roles: Roles,
    created_at: Timestamp,
    disabled: bool,
}

impl From<&User> for UserResponse {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            user: u.username.clone(),
            roles: u.roles.clone(),
            created_at: u.created_at,
            disabled: u.disabled,
        }
    }
}

/// `POST /users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    username: String,
    password: SecretString,
}

/// `POST /users`: self-service registration (when enabled); does not log in.
pub async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let user = state.auth.register(&req.username, req.password).await?;
    Ok((StatusCode::CREATED, Json(UserResponse::from(&user))))
}

/// `GET /admin/users` answer.
#[derive(Serialize)]
pub struct UsersResponse {
    users: Vec<UserResponse>,
}

/// `GET /admin/users`.
pub async fn admin_list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<UsersResponse>, ApiError> {
    let users = state.auth.list_users().await?;
    Ok(Json(UsersResponse {
        users: users.iter().map(UserResponse::from).collect(),
    }))
}

/// `POST /admin/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateRequest {
    username: String,
    password: SecretString,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST /admin/users`.
pub async fn admin_create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Json(req): Json<AdminCreateRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let user = state
        .auth
        .create_user(&req.username, req.password, &req.roles)
        .await?;
    tracing::info!(target: "audit", event = "admin_user_created", admin = %admin.username, user = %user.username);
    Ok((StatusCode::CREATED, Json(UserResponse::from(&user))))
}

/// `PATCH /admin/users/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminPatchRequest {
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).ok_or(ApiError::not_found("no such user"))
}

/// `PATCH /admin/users/{id}`: disable/enable, set roles.
pub async fn admin_update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    Json(req): Json<AdminPatchRequest>,
) -> Result<Json<UserResponse>, ApiError> {
    let id = user_id(&id)?;
    let patch = UserPatch {
        disabled: req.disabled,
        roles: req.roles,
    };
    let user = state.auth.update_user(id, patch).await?;
    tracing::info!(target: "audit", event = "admin_user_updated", admin = %admin.username, user = %user.username);
    Ok(Json(UserResponse::from(&user)))
}

/// `DELETE /admin/users/{id}`: deletes the user and revokes their sessions.
pub async fn admin_delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = user_id(&id)?;
    state.auth.delete_user(id).await?;
    tracing::info!(target: "audit", event = "admin_user_deleted", admin = %admin.username, user = %id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut res = axum::Json(state.auth.keys().jwks().clone()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    res
}

/// `GET /healthz`: the process runs.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the stores answer and we are not shutting down.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .into_response();
    }
    if state.auth.ready().await {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        ApiError::from(AuthError::Unavailable).into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    let body = crate::observability::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
