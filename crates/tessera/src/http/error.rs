//! The one mapping from errors to HTTP responses (API.md §4).
//!
//! Handlers return `Result<_, ApiError>`; use-case errors arrive as [`AuthError`] and extractor
//! rejections as axum's rejection types, and both become an [`ApiError`] here and nowhere else.
//! Bodies never echo input (serde messages can contain the offending value, which may be a
//! password), and 5xx bodies are opaque.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, FormRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::AuthError;

/// An error response: status, stable snake_case code, a sentence for a person.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: Cow<'static, str>,
    retry_after: Option<Duration>,
    www_authenticate: Option<&'static str>,
    /// RFC 6749 §5.2 shape: adds `error_description` (the `/token` endpoint).
    oauth: bool,
}

/// The JSON error body (API.md §4), for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// Stable snake_case code.
    #[schema(example = "invalid_token")]
    pub error: String,
    /// A sentence for a person.
    #[schema(example = "the token is invalid, expired or revoked")]
    pub detail: String,
    /// RFC 6749 §5.2 (on `/token` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl ApiError {
    /// A plain error.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            www_authenticate: None,
            oauth: false,
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404.
    pub fn not_found(detail: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 415.
    pub fn unsupported_media_type(expected: &'static str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the request body must be {expected}"),
        )
    }

    /// Switches to the OAuth 2.0 error shape.
    pub fn oauth(mut self) -> Self {
        self.oauth = true;
        self
    }

    /// The status (for tests and logs).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    fn with_challenge(mut self, c: &'static str) -> Self {
        self.www_authenticate = Some(c);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            detail: &self.detail,
            error_description: self.oauth.then_some(&*self.detail),
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some(d) = self.retry_after {
            // Round up: telling a client to come back before the window ends only earns another 429.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        let detail = e.to_string();
        match e {
            AuthError::InvalidCredentials => {
                Self::new(S::UNAUTHORIZED, "invalid_credentials", detail).with_challenge("Bearer")
            }
            AuthError::Unauthenticated => {
                Self::new(S::UNAUTHORIZED, "unauthenticated", detail).with_challenge("Bearer")
            }
            AuthError::InvalidToken => Self::new(S::UNAUTHORIZED, "invalid_token", detail)
                .with_challenge("Bearer error=\"invalid_token\""),
            AuthError::InvalidGrant(_) => {
                Self::new(S::BAD_REQUEST, "invalid_grant", detail).oauth()
            }
            AuthError::RateLimited(wait) => {
                Self::new(S::TOO_MANY_REQUESTS, "rate_limited", detail).with_retry_after(wait)
            }
            AuthError::WrongPassword => Self::new(S::FORBIDDEN, "invalid_credentials", detail),
            AuthError::Forbidden(_) => Self::new(S::FORBIDDEN, "forbidden", detail),
            AuthError::NotFound(_) => Self::new(S::NOT_FOUND, "not_found", detail),
            AuthError::UsernameTaken => Self::new(S::CONFLICT, "username_taken", detail),
            AuthError::InvalidUsername(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "invalid_username", detail)
            }
            AuthError::InvalidRole(_) => Self::new(S::UNPROCESSABLE_ENTITY, "invalid_role", detail),
            AuthError::InvalidHash => Self::new(S::UNPROCESSABLE_ENTITY, "invalid_hash", detail),
            AuthError::WeakPassword(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "weak_password", detail)
            }
            AuthError::Overloaded => Self::new(S::SERVICE_UNAVAILABLE, "overloaded", detail)
                .with_retry_after(Duration::from_secs(1)),
            AuthError::Unavailable => {
                Self::new(S::SERVICE_UNAVAILABLE, "store_unavailable", detail)
                    .with_retry_after(Duration::from_secs(1))
            }
            AuthError::Unexpected(err) => {
                tracing::error!(error = ?err, "unexpected error");
                Self::internal()
            }
        }
    }
}

impl ApiError {
    /// The opaque 500.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong on our side; it has been logged",
        )
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is too large",
    )
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        tracing::debug!(rejection = %r.body_text(), "JSON body rejected");
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                Self::unsupported_media_type("JSON (Content-Type: application/json)")
            }
            JsonRejection::JsonSyntaxError(_) => {
                Self::bad_request("malformed_json", "the request body is not valid JSON")
            }
            JsonRejection::JsonDataError(_) => Self::bad_request(
                "invalid_request",
                "the JSON body does not have the expected fields and types",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Self::bad_request("invalid_request", "the request body could not be read"),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        tracing::debug!(rejection = %r.body_text(), "form body rejected");
        match r {
            FormRejection::InvalidFormContentType(_) => {
                Self::unsupported_media_type("a form (application/x-www-form-urlencoded)")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Self::bad_request(
                "invalid_request",
                "the form is missing fields or has invalid ones",
            ),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            Self::bad_request("invalid_request", "the request body could not be read")
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(_: QueryRejection) -> Self {
        Self::bad_request("invalid_request", "the query string is invalid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_error_has_the_contract_status() {
        let cases: Vec<(AuthError, u16, &str)> = vec![
            (AuthError::InvalidCredentials, 401, "invalid_credentials"),
            (AuthError::InvalidToken, 401, "invalid_token"),
            (AuthError::InvalidGrant("x"), 400, "invalid_grant"),
            (
                AuthError::RateLimited(Duration::from_millis(1500)),
                429,
                "rate_limited",
            ),
            (AuthError::WrongPassword, 403, "invalid_credentials"),
            (AuthError::UsernameTaken, 409, "username_taken"),
            (AuthError::Unavailable, 503, "store_unavailable"),
            (
                AuthError::Unexpected(anyhow::anyhow!("secret detail")),
                500,
                "internal_error",
            ),
        ];
        for (err, status, code) in cases {
            let e = ApiError::from(err);
            assert_eq!((e.status.as_u16(), e.code), (status, code));
            assert!(!e.detail.contains("secret detail"));
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let res =
            ApiError::from(AuthError::RateLimited(Duration::from_millis(1500))).into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    }
}
