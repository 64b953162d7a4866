//! What only browsers need: cookies, CSRF defences, redirect-target checks, security headers and
//! a readable description of a User-Agent.
//!
//! CSRF has two layers. [`csrf_guard`] runs before every handler: an unsafe request that carries
//! the session cookie (and no bearer token) must not come cross-site (`Sec-Fetch-Site` when the
//! browser sends it, else `Origin` against `Host` and `public_url`) and must carry the session's
//! CSRF token (`X-CSRF-Token` header or `csrf_token` form field). The login and registration
//! forms, which have no session yet, check a pre-session token in their handlers.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::domain::cookie::SessionCookie;

/// Cookie names and attributes, fixed at start-up from `public_url`.
#[derive(Clone, Debug)]
pub struct Cookies {
    /// Name of the session cookie.
    pub session: &'static str,
    /// Name of the pre-login CSRF nonce cookie.
    pub login_csrf: &'static str,
    /// `Secure` (and the `__Host-` prefix) when `public_url` is https.
    pub secure: bool,
    /// Session cookie lifetime (the absolute session lifetime).
    pub max_age: Duration,
}

impl Cookies {
    /// The cookie settings for a deployment.
    pub fn new(https: bool, max_age: Duration) -> Self {
        if https {
            Self {
                session: "__Host-tessera_session",
                login_csrf: "__Host-tessera_csrf",
                secure: true,
                max_age,
            }
        } else {
            Self {
                session: "tessera_session",
                login_csrf: "tessera_csrf",
                secure: false,
                max_age,
            }
        }
    }

    fn build(&self, name: &str, value: &str, same_site: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let s = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
        );
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }

    /// `Set-Cookie` for a new session.
    pub fn set_session(&self, value: &str) -> HeaderValue {
        self.build(self.session, value, "Lax", self.max_age.as_secs())
    }

    /// `Set-Cookie` that removes the session cookie.
    pub fn clear_session(&self) -> HeaderValue {
        self.build(self.session, "", "Lax", 0)
    }

    /// `Set-Cookie` for the login form's nonce.
    pub fn set_login_csrf(&self, nonce: &str) -> HeaderValue {
        self.build(self.login_csrf, nonce, "Strict", 2 * 3600)
    }
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Where `rd` may send the browser after login: a relative path on this site (`/x`, never
/// `//x` or `/\x`), or an absolute http(s) URL on `public_url`'s origin or an allowed host.
pub fn safe_redirect(rd: &str, public_origin: &str, allowed_hosts: &[String]) -> Option<String> {
    if rd.is_empty() || rd.len() > 2048 || rd.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    if rd.starts_with('/') {
        return (!rd.starts_with("//")).then(|| rd.to_owned());
    }
    let (scheme, rest) = rd.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let origin = format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    );
    let host_ok = allowed_hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        h == authority.to_ascii_lowercase()
            || h == authority
                .split(':')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
    });
    (origin == public_origin.to_ascii_lowercase() || host_ok).then(|| rd.to_owned())
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a request is cross-site, by Fetch Metadata when present (Chromium sends
/// `Origin: null` with `Sec-Fetch-Site: same-origin` under `Referrer-Policy: no-referrer`, so
/// `Origin` alone would break same-origin forms), else by `Origin` against `Host` and the
/// public origin. No header at all means not a browser: allowed, the token still applies.
pub fn is_cross_site(headers: &HeaderMap, public_origin: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origin.eq_ignore_ascii_case(public_origin) {
        return false;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    host.is_empty() || !origin_host.eq_ignore_ascii_case(host)
}

fn csrf_refused(form: bool, why: &'static str) -> Response {
    if form {
        let mut res = (
            StatusCode::FORBIDDEN,
            axum::response::Html(format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Form expired · tessera</title>\
                 <link rel=\"stylesheet\" href=\"/static/tessera.css\"></head><body><main><section class=\"card narrow\">\
                 <h1>This form has expired</h1><p>{why} Go back, reload the page and try again.</p>\
                 <p><a class=\"button\" href=\"/dashboard\">Back to the dashboard</a></p></section></main></body></html>"
            )),
        )
            .into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    } else {
        ApiError::new(StatusCode::FORBIDDEN, "csrf_failed", why).into_response()
    }
}

/// The session-bound CSRF check for cookie-authenticated unsafe requests (see the module doc).
pub async fn csrf_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = is_safe(req.method())
        || req.headers().contains_key(header::AUTHORIZATION)
        || path == "/login"
        || path == "/register"
        || path == "/token";
    let cookie_value = cookie(req.headers(), state.http.cookies.session).map(str::to_owned);
    let (Some(value), false) = (cookie_value, exempt) else {
        return next.run(req).await;
    };
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_cross_site(req.headers(), &state.http.public_origin) {
        return csrf_refused(is_form, "Cross-site requests are not accepted.");
    }
    let Some(session) = SessionCookie::decode(&value) else {
        // Not a cookie we issued: authentication will refuse it.
        return next.run(req).await;
    };
    let header_token = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (req, token) = match header_token {
        Some(t) => (req, Some(t)),
        None if is_form => {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, state.http.max_body_bytes).await else {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
                .into_response();
            };
            let token = form_field(&bytes, "csrf_token");
            (Request::from_parts(parts, Body::from(bytes)), token)
        }
        None => (req, None),
    };
    match token.map(|t| state.auth.check_csrf(session.session_id, &t)) {
        Some(Ok(true)) => next.run(req).await,
        Some(Err(e)) => ApiError::from(e).into_response(),
        Some(Ok(false)) => csrf_refused(
            is_form,
            "The security token of this request is not valid for your session.",
        ),
        None => csrf_refused(
            is_form,
            "This request has no security token (X-CSRF-Token or csrf_token).",
        ),
    }
}

/// One field of an urlencoded form.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The policy for HTML: our pages need nothing beyond 'self' (Swagger UI's own is in
/// [`super::openapi`]).
pub const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Security headers on every response (`nosniff`, a referrer policy, `no-store` unless the
/// handler set a cache policy); HTML also gets a CSP (unless its route set one) and
/// `X-Frame-Options`.
pub fn security_headers<B>(mut res: axum::http::Response<B>) -> axum::http::Response<B> {
    let h = res.headers_mut();
    let is_html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        h.entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(PAGE_CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Auth answers are per user: never cached, unless a handler said otherwise (static files).
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// "Firefox", "Chrome", … and "Linux", "macOS", … from a User-Agent; for the session list, not
/// for any decision.
pub fn describe_user_agent(ua: Option<&str>) -> (&'static str, &'static str) {
    let Some(ua) = ua else {
        return ("Unknown browser", "unknown system");
    };
    let browser = if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("OPR/") || ua.contains("Opera") {
        "Opera"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chromium/") {
        "Chromium"
    } else if ua.contains("Chrome/") || ua.contains("CriOS/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else if ua.starts_with("curl/") {
        "curl"
    } else {
        "Unknown browser"
    };
    let os = if ua.contains("Android") {
        "Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        "iOS"
    } else if ua.contains("Windows") {
        "Windows"
    } else if ua.contains("Mac OS X") || ua.contains("Macintosh") {
        "macOS"
    } else if ua.contains("CrOS") {
        "ChromeOS"
    } else if ua.contains("Linux") || ua.contains("X11") {
        "Linux"
    } else {
        "unknown system"
    };
    (browser, os)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_this_site_or_allowed_hosts() {
        let allowed = vec![
            "app.example.com".to_owned(),
            "api.example.com:8443".to_owned(),
        ];
        let ok = |rd: &str| safe_redirect(rd, "https://auth.example.com", &allowed);
        assert_eq!(ok("/x?y=1").as_deref(), Some("/x?y=1"));
        assert_eq!(
            ok("https://auth.example.com/a").as_deref(),
            Some("https://auth.example.com/a")
        );
        assert_eq!(
            ok("https://app.example.com/").as_deref(),
            Some("https://app.example.com/")
        );
        assert_eq!(
            ok("https://api.example.com:8443/v").as_deref(),
            Some("https://api.example.com:8443/v")
        );
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "https://auth.example.com.evil.com/",
            "https://app.example.com@evil.com/",
            "javascript:alert(1)",
            "http://api.example.com:9999/",
            "",
            "evil.com",
            "https://evil.com/\nx",
            "https://sub.app.example.com/",
        ] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fetch_metadata_wins_over_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("auth.test"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!is_cross_site(&h, "http://auth.test"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(is_cross_site(&h, "http://auth.test"));
        h.remove("sec-fetch-site");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(is_cross_site(&h, "http://auth.test"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://auth.test"));
        assert!(!is_cross_site(&h, "http://other"));
    }

    #[test]
    fn user_agents_are_described() {
        let ff = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(describe_user_agent(Some(ff)), ("Firefox", "Linux"));
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
        assert_eq!(describe_user_agent(Some(chrome)), ("Chrome", "Windows"));
        assert_eq!(describe_user_agent(None).0, "Unknown browser");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tessera_session=v.1; b=2"),
        );
        assert_eq!(cookie(&h, "tessera_session"), Some("v.1"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
