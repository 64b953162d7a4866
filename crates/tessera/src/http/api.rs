//! JSON routes (API.md §2).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorResponse;

use super::AppState;
use super::error::ApiError;
use super::extract::{Admin, Authenticated, Body, Client, Form, Json, Query};
use crate::domain::clock::Timestamp;
use crate::domain::session::SessionId;
use crate::domain::user::{Roles, User, UserId, Username};
use crate::service::{AuthError, Issued, LogoutScope, UserPatch};

/// `POST /login` JSON body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    #[schema(value_type = String, format = Password, example = "correct horse battery staple")]
    password: SecretString,
}

/// `POST /login` JSON answer; `token` equals `access_token` (seed compatibility).
#[derive(Serialize, ToSchema)]
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
#[utoipa::path(post, path = "/login", tag = "auth",
    request_body(content = LoginRequest, content_type = "application/json", description = "JSON credentials (the HTML form posts the same fields plus csrf_token)"),
    responses(
        (status = 200, description = "Signed in", body = LoginResponse),
        (status = 400, description = "Malformed body", body = ErrorResponse),
        (status = 401, description = "Invalid credentials (unknown user, wrong password and disabled user alike)", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 429, description = "Too many failures; see Retry-After", body = ErrorResponse),
        (status = 503, description = "Store unavailable; see Retry-After", body = ErrorResponse)))]
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
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    grant_type: Option<String>,
    username: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<SecretString>,
    refresh_token: Option<String>,
}

/// RFC 6749 §5.1 answer.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

/// `POST /token`: password and refresh-token grants.
#[utoipa::path(post, path = "/token", tag = "auth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded", description = "RFC 6749: grant_type=password (username, password) or grant_type=refresh_token (refresh_token)"),
    responses(
        (status = 200, description = "RFC 6749 §5.1 token response", body = TokenResponse),
        (status = 400, description = "RFC 6749 §5.2 error: invalid_request, invalid_grant, unsupported_grant_type", body = ErrorResponse),
        (status = 415, description = "Not a form", body = ErrorResponse),
        (status = 429, description = "Too many failures; see Retry-After", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
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
#[derive(Serialize, ToSchema)]
pub struct ProfileResponse {
    #[schema(value_type = String, format = Uuid)]
    id: UserId,
    #[schema(value_type = String, example = "alice")]
    username: Username,
    #[schema(value_type = String, example = "alice")]
    user: Username,
    #[schema(value_type = Vec<String>, example = json!(["admin"]))]
    roles: Roles,
    #[schema(value_type = String, format = DateTime, example = "2026-11-23T08:00:00.000Z")]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    cached_at: Timestamp,
}

/// `GET /profile`: from the profile cache for up to 300 s.
#[utoipa::path(get, path = "/profile", tag = "account", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's profile, cached for up to 300 s", body = ProfileResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn profile(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    profile_of(&state, &headers).await
}

/// The answer of `GET /profile` to a request with `headers`: [`profile`] and the unrouted
/// `GET /profile` of [`super::Routes`] share it.
pub async fn profile_of(state: &AppState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let credential = super::extract::credential(headers, state)?;
    let (p, cached_at) = state.auth.profile_of(credential).await?;
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
#[derive(Deserialize, Default, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogoutParams {
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "current")]
    #[param(value_type = Option<String>)]
    scope: Option<LogoutScope>,
}

/// `POST /logout` JSON answer.
#[derive(Serialize, ToSchema)]
pub struct LogoutResponse {
    detail: &'static str,
    revoked: u64,
}

/// `POST /logout`: revokes this session, the others, or all. The body is optional; when present
/// it must be JSON.
#[utoipa::path(post, path = "/logout", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    params(LogoutParams),
    request_body(content = Option<LogoutParams>, content_type = "application/json", description = "Optional {\"scope\": \"current\" | \"others\" | \"all\"}"),
    responses(
        (status = 200, description = "Logged out", body = LogoutResponse),
        (status = 303, description = "Form logout: to /login or /dashboard"),
        (status = 400, description = "Bad scope", body = ErrorResponse),
        (status = 415, description = "A body that is neither JSON nor a form", body = ErrorResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Cookie without a valid CSRF token, or cross-site", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
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
#[utoipa::path(get, path = "/verify", tag = "forward-auth", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Valid: identity in X-Auth-User, X-Auth-User-Id, X-Auth-Roles, X-Auth-Session",
            headers(("X-Auth-User" = String), ("X-Auth-User-Id" = String), ("X-Auth-Roles" = String), ("X-Auth-Session" = String))),
        (status = 401, description = "No valid token or cookie (never a redirect)", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn verify(Authenticated(who): Authenticated) -> Response {
    const USER: HeaderName = HeaderName::from_static("x-auth-user");
    const USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
    const ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
    const SESSION: HeaderName = HeaderName::from_static("x-auth-session");
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    // Ids are encoded on the stack: this answers every request of every app behind tessera.
    let mut buf = uuid::Uuid::encode_buffer();
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    h.reserve(12); // these five, the header policy's, the request id: one allocation
    h.insert(USER, value(who.username.as_str()));
    h.insert(
        USER_ID,
        value(who.user_id.0.hyphenated().encode_lower(&mut buf)),
    );
    h.insert(ROLES, value(who.roles.as_csv()));
    h.insert(
        SESSION,
        value(who.session_id.0.hyphenated().encode_lower(&mut buf)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// One entry of `GET /sessions`.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    #[schema(value_type = String, format = Uuid)]
    id: SessionId,
    #[schema(value_type = String, format = DateTime, example = "2026-11-23T08:00:00.000Z")]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    last_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    expires_at: Timestamp,
    user_agent: Option<String>,
    ip: Option<String>,
    current: bool,
}

/// `GET /sessions` answer.
#[derive(Serialize, ToSchema)]
pub struct SessionsResponse {
    sessions: Vec<SessionView>,
}

/// `GET /sessions`: the caller's live sessions.
#[utoipa::path(get, path = "/sessions", tag = "account", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionsResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
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
#[utoipa::path(delete, path = "/sessions/{id}", tag = "account", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Cookie without a valid CSRF token", body = ErrorResponse),
        (status = 404, description = "Not one of the caller's sessions", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    #[schema(value_type = String, format = Password)]
    current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

/// `POST /password`: change the caller's password; every other session is revoked.
#[utoipa::path(post, path = "/password", tag = "account", security(("bearer" = []), ("cookie" = [])),
    request_body(content = PasswordRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Changed; every other session of the user is revoked"),
        (status = 400, description = "Malformed body", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Wrong current password (invalid_credentials) or CSRF", body = ErrorResponse),
        (status = 422, description = "The new password fails the policy (weak_password)", body = ErrorResponse),
        (status = 429, description = "Too many failures", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
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
#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    #[schema(value_type = String, format = Uuid)]
    id: UserId,
    #[schema(value_type = String, example = "alice")]
    username: Username,
    #[schema(value_type = String, example = "alice")]
    user: Username,
    #[schema(value_type = Vec<String>, example = json!(["admin"]))]
    roles: Roles,
    #[schema(value_type = String, format = DateTime, example = "2026-11-23T08:00:00.000Z")]
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    username: String,
    #[schema(value_type = String, format = Password, example = "correct horse battery staple")]
    password: SecretString,
}

/// `POST /users`: self-service registration (when enabled); does not log in.
#[utoipa::path(post, path = "/users", tag = "users",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (does not sign in)", body = UserResponse),
        (status = 400, description = "Malformed body", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 403, description = "Registration is closed", body = ErrorResponse),
        (status = 409, description = "Username taken", body = ErrorResponse),
        (status = 422, description = "Invalid username or weak password", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let user = state.auth.register(&req.username, req.password).await?;
    Ok((StatusCode::CREATED, Json(UserResponse::from(&user))))
}

/// `GET /admin/users` answer.
#[derive(Serialize, ToSchema)]
pub struct UsersResponse {
    users: Vec<UserResponse>,
}

/// `GET /admin/users`.
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "All users", body = UsersResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse)))]
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateRequest {
    username: String,
    #[schema(value_type = String, format = Password, example = "correct horse battery staple")]
    password: SecretString,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST /admin/users`.
#[utoipa::path(post, path = "/admin/users", tag = "admin", security(("bearer" = []), ("cookie" = [])),
    request_body(content = AdminCreateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 400, description = "Malformed body", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 409, description = "Username taken", body = ErrorResponse),
        (status = 422, description = "Invalid username, role or weak password", body = ErrorResponse)))]
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
#[derive(Deserialize, ToSchema)]
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
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, description = "User id")),
    request_body(content = AdminPatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated (disabling revokes the user's sessions)", body = UserResponse),
        (status = 400, description = "Malformed body", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 422, description = "Invalid role", body = ErrorResponse)))]
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
#[utoipa::path(delete, path = "/admin/users/{id}", tag = "admin", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted; the user's sessions are revoked"),
        (status = 401, description = "No valid token or cookie", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse)))]
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
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    responses(
        (status = 200, description = "Public signing keys (JWK Set; EdDSA keys are OKP/Ed25519)", body = Object),
        (status = 503, description = "The key ring could not be read yet (store unreachable since start-up)", body = ErrorResponse)))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut res = axum::Json(state.auth.keys()?.jwks().clone()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(res)
}

/// `GET /healthz`: the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the stores answer and we are not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The stores answer", body = Object),
        (status = 503, description = "A store does not answer, or shutting down", body = ErrorResponse)))]
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
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
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
