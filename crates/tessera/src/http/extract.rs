//! Extractors: they *parse* credentials and inputs; the service decides (kanidm's rule).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;

use super::AppState;
use super::error::ApiError;
use crate::service::{AuthError, ClientInfo, Credential, Principal};

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    /// axum's `Json`, but written into a buffer sized for the usual answer (axum starts at 128
    /// bytes, and a profile or a token answer grew it once or twice), and a value that cannot be
    /// serialized answers the JSON 500 of API.md §4 (axum's is a text/plain serde message).
    fn into_response(self) -> axum::response::Response {
        let mut body = Vec::with_capacity(512);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "answer not serializable");
                ApiError::internal().into_response()
            }
        }
    }
}

/// A form body whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Form), rejection(ApiError))]
pub struct Form<T>(pub T);

/// A raw body (for routes that accept several content types) whose rejections are
/// [`ApiError`]s.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::body::Bytes::from_request(req, state).await?))
    }
}

/// A query string whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The bearer token of the `Authorization` header, if any; `Err` when the header is present
/// but not a Bearer credential. Bytes: hyper has already refused control characters, and the
/// token is checked to be text only if verification has to parse it ([`Credential::Bearer`]).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let space = value
        .iter()
        .position(|b| *b == b' ')
        .ok_or(AuthError::InvalidToken)?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::InvalidToken);
    }
    // Spaces only (RFC 6750: `Bearer 1*SP token`); a tab stays part of the token, and fails.
    let start = token.iter().position(|b| *b != b' ').unwrap_or(token.len());
    let token = &token[start..];
    if token.is_empty() {
        return Err(AuthError::InvalidToken);
    }
    Ok(Some(token))
}

/// A request authenticated by an access token whose session is alive.
pub struct Authenticated(pub Principal);

/// The credential a request presents: its bearer token, else its session cookie. (The CSRF
/// guard has already vetted unsafe cookie-authenticated requests.)
pub fn credential<'a>(
    headers: &'a HeaderMap,
    state: &AppState,
) -> Result<Credential<'a>, AuthError> {
    if let Some(token) = bearer(headers)? {
        return Ok(Credential::Bearer(token));
    }
    super::browser::cookie(headers, state.http.cookies.session)
        .map(Credential::Cookie)
        .ok_or(AuthError::Unauthenticated)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = credential(&parts.headers, state)?;
        Ok(Self(state.auth.authenticate(credential).await?))
    }
}

impl OptionalFromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        let has_cookie =
            super::browser::cookie(&parts.headers, state.http.cookies.session).is_some();
        if bearer(&parts.headers)?.is_none() && !has_cookie {
            return Ok(None);
        }
        <Self as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// An authenticated caller with the admin role.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated(p) =
            <Authenticated as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
        if p.is_admin() {
            Ok(Self(p))
        } else {
            Err(AuthError::Forbidden("this needs the admin role").into())
        }
    }
}

/// Where the request came from: IP (trusted-proxy aware) and user agent.
pub struct Client(pub ClientInfo);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let ip = peer.map(|p| client_ip(p, &parts.headers, &state.http.trusted_proxies));
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self(ClientInfo { ip, user_agent }))
    }
}

/// The client's IP: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of it
/// were written by the client and are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    while let Some(ip) = chain.pop() {
        if !is_trusted(&ip) {
            return ip;
        }
    }
    peer
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            xff.parse().unwrap_or_else(|_| unreachable!()),
        );
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[tokio::test]
    async fn json_answers_carry_their_content_type_and_an_unserializable_value_is_a_json_500() {
        use axum::response::IntoResponse as _;
        let res = Json(serde_json::json!({"a": [1, 2]})).into_response();
        assert_eq!(res.status(), axum::http::StatusCode::OK);
        assert_eq!(
            res.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .unwrap_or_default();
        assert_eq!(&body[..], br#"{"a":[1,2]}"#);

        // JSON object keys must be strings: serde_json refuses this map.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let res = Json(bad).into_response();
        assert_eq!(res.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(r#""error":"internal_error""#), "{text}");
        assert!(!text.contains("key must be"), "{text}");
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_past_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        let h = headers("6.6.6.6, 198.51.100.7, 10.0.0.2");
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn bearer_parsing_is_strict_about_the_scheme() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Ok(None)));
        let cases: [(&str, Option<&[u8]>); 7] = [
            ("Basic abc", None),
            ("bearer abc", Some(b"abc")),
            ("Bearer   abc", Some(b"abc")),
            // Only spaces separate the scheme: a tab stays in the token (which then fails).
            ("Bearer \tabc", Some(b"\tabc")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ];
        for (value, token) in cases {
            h.insert(
                header::AUTHORIZATION,
                value.parse().unwrap_or_else(|_| unreachable!()),
            );
            match token {
                Some(token) => assert_eq!(bearer(&h).ok().flatten(), Some(token), "{value:?}"),
                None => assert!(bearer(&h).is_err(), "{value:?}"),
            }
        }
    }
}
