//! The HTML pages: login, dashboard, sessions, change password, registration. Templates are
//! compiled into the binary (minijinja, autoescaped); the only script-free CSS and icon are
//! embedded too, so the pages work with `Content-Security-Policy: default-src 'self'`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{Environment, Value, context};
use serde::Deserialize;

use super::AppState;
use super::browser::{cookie, describe_user_agent, safe_redirect};
use super::extract::{Client, Query};
use crate::domain::clock::Timestamp;
use crate::domain::cookie::{LoginCsrf, login_nonce};
use crate::domain::session::SessionId;
use crate::service::{AuthError, Credential, LogoutScope, Principal};

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads the embedded templates.
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("login.html", include_str!("../../templates/login.html")),
            (
                "register.html",
                include_str!("../../templates/register.html"),
            ),
            (
                "dashboard.html",
                include_str!("../../templates/dashboard.html"),
            ),
            (
                "password.html",
                include_str!("../../templates/password.html"),
            ),
            ("message.html", include_str!("../../templates/message.html")),
        ] {
            env.add_template(name, src)?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, ctx: Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, template = name, "template failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Html("<h1>Something went wrong</h1>"),
                )
                    .into_response()
            }
        }
    }
}

fn with_status(status: StatusCode, mut res: Response) -> Response {
    *res.status_mut() = status;
    res
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The signed-in browser user, if the session cookie is valid. A store outage is an error,
/// not "signed out".
async fn browser_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, AuthError> {
    let Some(value) = cookie(headers, state.http.cookies.session) else {
        return Ok(None);
    };
    match state.auth.authenticate(Credential::Cookie(value)).await {
        Ok(p) => Ok(Some(p)),
        Err(AuthError::InvalidToken) => Ok(None),
        Err(e) => Err(e),
    }
}

fn unavailable_page(state: &AppState) -> Response {
    let mut res = with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        state.templates.render(
            "message.html",
            context! { heading => "Temporarily unavailable", text => "We cannot reach our session store right now. Please try again in a moment.", link => "/", link_text => "Try again" },
        ),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// The pre-login CSRF nonce of this browser, and a `Set-Cookie` when it needs a new one (none
/// yet, a malformed one, or `fresh` after a refused form).
fn login_nonce_for(
    state: &AppState,
    headers: &HeaderMap,
    fresh: bool,
) -> (String, Option<HeaderValue>) {
    match cookie(headers, state.http.cookies.login_csrf) {
        Some(n) if n.len() == 43 && !fresh => (n.to_owned(), None),
        _ => {
            let n = login_nonce();
            let c = state.http.cookies.set_login_csrf(&n);
            (n, Some(c))
        }
    }
}

struct LoginView<'a> {
    error: Option<String>,
    notice: Option<&'a str>,
    username: &'a str,
    rd: Option<String>,
}

fn login_page_response(
    state: &AppState,
    headers: &HeaderMap,
    view: LoginView<'_>,
    fresh_nonce: bool,
) -> Response {
    let (nonce, set) = login_nonce_for(state, headers, fresh_nonce);
    let Ok(login_csrf) = state.auth.login_csrf(&nonce) else {
        return unavailable_page(state);
    };
    let mut res = state.templates.render(
        "login.html",
        context! {
            login_csrf => login_csrf,
            error => view.error,
            notice => view.notice,
            username_value => view.username,
            rd => view.rd,
            allow_registration => state.auth.policy().allow_registration,
        },
    );
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// `?rd=` and notices on the login page.
#[derive(Deserialize, Default)]
pub struct LoginQuery {
    rd: Option<String>,
    registered: Option<String>,
}

fn checked_rd(state: &AppState, rd: Option<&str>) -> Option<String> {
    rd.and_then(|rd| {
        safe_redirect(
            rd,
            &state.http.public_origin,
            &state.http.allowed_redirect_hosts,
        )
    })
}

/// `GET /`: the login page, or the dashboard when signed in.
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match browser_user(&state, &headers).await {
        Ok(Some(_)) => see_other("/dashboard"),
        Ok(None) => {
            let view = LoginView {
                error: None,
                notice: None,
                username: "",
                rd: None,
            };
            login_page_response(&state, &headers, view, false)
        }
        Err(_) => unavailable_page(&state),
    }
}

/// `GET /login`: the login form (with `rd` carried in a hidden field when it is acceptable).
pub async fn login_page(
    State(state): State<AppState>,
    Query(q): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    let notice = q
        .registered
        .is_some()
        .then_some("Your account was created. You can sign in now.");
    let view = LoginView {
        error: None,
        notice,
        username: "",
        rd: checked_rd(&state, q.rd.as_deref()),
    };
    login_page_response(&state, &headers, view, false)
}

/// The login form's fields.
#[derive(Deserialize, Default)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    rd: Option<String>,
}

fn wait_text(d: std::time::Duration) -> String {
    let s = d.as_secs().max(1);
    if s < 90 {
        format!("{s} seconds")
    } else {
        format!("{} minutes", s.div_ceil(60))
    }
}

/// `POST /login` with a form: checks login CSRF, then signs in with a brand-new session cookie.
pub async fn login_form(
    state: AppState,
    client: crate::service::ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: LoginForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let rd = checked_rd(&state, form.rd.as_deref());
    let username = if form.username.len() <= 64 {
        form.username.as_str()
    } else {
        ""
    };
    let refuse = |status, error: String, fresh| {
        let view = LoginView {
            error: Some(error),
            notice: None,
            username,
            rd: rd.clone(),
        };
        with_status(status, login_page_response(&state, &headers, view, fresh))
    };
    let nonce = cookie(&headers, state.http.cookies.login_csrf).unwrap_or("");
    match state.auth.check_login_csrf(nonce, &form.csrf_token) {
        Err(_) => return unavailable_page(&state),
        Ok(LoginCsrf::Valid) => {}
        Ok(LoginCsrf::Expired) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "The sign-in form expired. Please sign in again.".into(),
                true,
            );
        }
        Ok(LoginCsrf::Invalid) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "The sign-in form could not be verified (cookies must be enabled). Please try again.".into(),
                true,
            );
        }
    }
    match state
        .auth
        .login_browser(&form.username, form.password.into(), &client)
        .await
    {
        Ok((_, cookie_value)) => {
            let mut res = see_other(rd.as_deref().unwrap_or("/dashboard"));
            res.headers_mut().append(
                header::SET_COOKIE,
                state.http.cookies.set_session(&cookie_value),
            );
            res
        }
        Err(AuthError::InvalidCredentials) => refuse(
            StatusCode::UNAUTHORIZED,
            "Invalid username or password.".into(),
            false,
        ),
        Err(AuthError::RateLimited(wait)) => {
            let mut res = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many failed attempts. Try again in {}.",
                    wait_text(wait)
                ),
                false,
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            res
        }
        Err(AuthError::Overloaded | AuthError::Unavailable) => unavailable_page(&state),
        Err(e) => {
            tracing::error!(error = %e, "login form failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong. Please try again.".into(),
                false,
            )
        }
    }
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    let s = then.until(now).as_secs();
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Dashboard notices by `?notice=`.
#[derive(Deserialize, Default)]
pub struct DashboardQuery {
    notice: Option<String>,
}

/// `GET /dashboard`: welcome, sessions with revoke buttons, log out other devices.
pub async fn dashboard(
    State(state): State<AppState>,
    Query(q): Query<DashboardQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match browser_user(&state, &headers).await {
        Ok(Some(p)) => p,
        Ok(None) => return see_other("/login"),
        Err(_) => return unavailable_page(&state),
    };
    let sessions = match state.auth.sessions(&who).await {
        Ok(s) => s,
        Err(_) => return unavailable_page(&state),
    };
    let now = state.auth.now();
    let mut rows: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let (browser, os) = describe_user_agent(s.user_agent.as_deref());
            context! {
                id => s.id.to_string(),
                current => s.id == who.session_id,
                browser => browser,
                os => os,
                ip => s.ip.clone(),
                last_seen_at => s.last_seen_at.to_rfc3339(),
                last_seen_human => ago(now, s.last_seen_at),
                created_at => s.created_at.to_rfc3339(),
                created_human => ago(now, s.created_at),
            }
        })
        .collect();
    // This device first, then the most recently used.
    rows.reverse();
    rows.sort_by_key(|r| !r.get_attr("current").is_ok_and(|v| v.is_true()));
    let notice = match q.notice.as_deref() {
        Some("password") => Some("Your password was changed. Your other devices were logged out."),
        Some("others") => Some("Your other devices were logged out."),
        Some("revoked") => Some("The session was revoked."),
        _ => None,
    };
    let roles: Vec<String> = who.roles.iter().map(str::to_owned).collect();
    let Ok(csrf_token) = state.auth.csrf_token(who.session_id) else {
        return unavailable_page(&state);
    };
    state.templates.render(
        "dashboard.html",
        context! {
            username => who.username.as_str(),
            roles => roles,
            sessions => rows,
            csrf_token => csrf_token,
            notice => notice,
        },
    )
}

/// `POST /logout` with a form (the CSRF guard has checked the token).
pub async fn logout_form(state: &AppState, who: &Principal, body: &[u8]) -> Response {
    let scope = match super::browser::form_field(body, "scope").as_deref() {
        None | Some("") | Some("current") => LogoutScope::Current,
        Some("others") => LogoutScope::Others,
        Some("all") => LogoutScope::All,
        Some(_) => {
            return super::error::ApiError::bad_request(
                "invalid_request",
                "scope must be current, others or all",
            )
            .into_response();
        }
    };
    match state.auth.logout(who, scope).await {
        Ok(_) if scope == LogoutScope::Others => see_other("/dashboard?notice=others"),
        Ok(_) => {
            let mut res = see_other("/login");
            res.headers_mut()
                .append(header::SET_COOKIE, state.http.cookies.clear_session());
            res
        }
        Err(_) => unavailable_page(state),
    }
}

/// `POST /sessions/{id}/revoke`: the dashboard's revoke button.
pub async fn revoke_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match browser_user(&state, &headers).await {
        Ok(Some(p)) => p,
        Ok(None) => return see_other("/login"),
        Err(_) => return unavailable_page(&state),
    };
    let Some(id) = SessionId::parse(&id) else {
        return see_other("/dashboard");
    };
    match state.auth.revoke_session(&who, id).await {
        Ok(()) if id == who.session_id => {
            let mut res = see_other("/login");
            res.headers_mut()
                .append(header::SET_COOKIE, state.http.cookies.clear_session());
            res
        }
        Ok(()) => see_other("/dashboard?notice=revoked"),
        Err(AuthError::NotFound(_)) => see_other("/dashboard"),
        Err(_) => unavailable_page(&state),
    }
}

/// `GET /account/password`.
pub async fn password_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match browser_user(&state, &headers).await {
        Ok(Some(who)) => render_password(&state, &who, None),
        Ok(None) => see_other("/login"),
        Err(_) => unavailable_page(&state),
    }
}

fn render_password(state: &AppState, who: &Principal, error: Option<String>) -> Response {
    let Ok(csrf_token) = state.auth.csrf_token(who.session_id) else {
        return unavailable_page(state);
    };
    state.templates.render(
        "password.html",
        context! {
            username => who.username.as_str(),
            csrf_token => csrf_token,
            error => error,
        },
    )
}

#[derive(Deserialize, Default)]
struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
}

/// `POST /account/password` (form; the CSRF guard has checked the token).
pub async fn password_form(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match browser_user(&state, &headers).await {
        Ok(Some(p)) => p,
        Ok(None) => return see_other("/login"),
        Err(_) => return unavailable_page(&state),
    };
    let form: PasswordForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let result = state
        .auth
        .change_password(
            &who,
            form.current_password.into(),
            form.new_password.into(),
            &client,
        )
        .await;
    match result {
        Ok(()) => see_other("/dashboard?notice=password"),
        Err(AuthError::WrongPassword) => with_status(
            StatusCode::FORBIDDEN,
            render_password(&state, &who, Some("The current password is wrong.".into())),
        ),
        Err(AuthError::WeakPassword(w)) => with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            render_password(
                &state,
                &who,
                Some(format!("{}.", capitalise(&w.to_string()))),
            ),
        ),
        Err(AuthError::RateLimited(wait)) => with_status(
            StatusCode::TOO_MANY_REQUESTS,
            render_password(
                &state,
                &who,
                Some(format!(
                    "Too many failed attempts. Try again in {}.",
                    wait_text(wait)
                )),
            ),
        ),
        Err(_) => unavailable_page(&state),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn render_register(
    state: &AppState,
    headers: &HeaderMap,
    username: &str,
    error: Option<String>,
    fresh: bool,
) -> Response {
    let (nonce, set) = login_nonce_for(state, headers, fresh);
    let Ok(login_csrf) = state.auth.login_csrf(&nonce) else {
        return unavailable_page(state);
    };
    let mut res = state.templates.render(
        "register.html",
        context! { login_csrf => login_csrf, username_value => username, error => error },
    );
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

fn registration_closed(state: &AppState) -> Response {
    with_status(
        StatusCode::NOT_FOUND,
        state.templates.render(
            "message.html",
            context! { heading => "Registration is closed", text => "Ask an administrator for an account.", link => "/login", link_text => "Sign in" },
        ),
    )
}

/// `GET /register` (404 unless `allow_registration`).
pub async fn register_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.auth.policy().allow_registration {
        return registration_closed(&state);
    }
    render_register(&state, &headers, "", None, false)
}

#[derive(Deserialize, Default)]
struct RegisterForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf_token: String,
}

/// `POST /register` (form, login-CSRF protected). Does not sign in.
pub async fn register_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.auth.policy().allow_registration {
        return registration_closed(&state);
    }
    let form: RegisterForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let username = if form.username.len() <= 64 {
        form.username.as_str()
    } else {
        ""
    };
    let nonce = cookie(&headers, state.http.cookies.login_csrf).unwrap_or("");
    let checked = state.auth.check_login_csrf(nonce, &form.csrf_token);
    if checked.is_err() {
        return unavailable_page(&state);
    }
    if checked.ok() != Some(LoginCsrf::Valid) {
        let error = Some("The form expired or could not be verified. Please try again.".into());
        return with_status(
            StatusCode::FORBIDDEN,
            render_register(&state, &headers, username, error, true),
        );
    }
    match state
        .auth
        .register(&form.username, form.password.into())
        .await
    {
        Ok(_) => see_other("/login?registered=1"),
        Err(e @ (AuthError::InvalidUsername(_) | AuthError::WeakPassword(_))) => with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            render_register(
                &state,
                &headers,
                username,
                Some(format!("{}.", capitalise(&e.to_string()))),
                false,
            ),
        ),
        Err(AuthError::UsernameTaken) => with_status(
            StatusCode::CONFLICT,
            render_register(
                &state,
                &headers,
                username,
                Some("This username is taken.".into()),
                false,
            ),
        ),
        Err(_) => unavailable_page(&state),
    }
}

/// `GET /static/tessera.css`.
pub async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/tessera.css"),
    )
}

/// `GET /static/favicon.svg`.
pub async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("../../static/favicon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}
