//! The OpenAPI 3.1 document of the JSON routes, generated from the handlers' annotations, and
//! Swagger UI at `/docs` served from the binary (vendored assets, online validator off). The
//! OAuth2 password flow is declared so that Swagger UI's Authorize button signs in through
//! `/token`.

use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use axum::http::{HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;

use super::api;

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(title = "tessera", description = "Login and token verification: sessions, JWT access tokens, refresh rotation, forward-auth."),
    paths(
        api::login, api::token, api::logout, api::profile, api::verify, api::sessions,
        api::delete_session, api::change_password, api::register, api::admin_list,
        api::admin_create, api::admin_update, api::admin_delete, api::jwks, api::healthz,
        api::readyz, api::metrics,
    ),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Sign in, tokens, sign out"),
        (name = "account", description = "The caller's profile, sessions and password"),
        (name = "forward-auth", description = "For nginx auth_request, Traefik ForwardAuth, Caddy forward_auth"),
        (name = "users", description = "Self-service registration"),
        (name = "admin", description = "User administration (role admin)"),
        (name = "keys", description = "Public keys for stateless JWT verification"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/token",
                Scopes::new(),
            ))])),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "tessera_session",
                    "The browser session (`__Host-tessera_session` behind https); unsafe methods also need X-CSRF-Token",
                ),
            )),
        );
    }
}

/// The document, with the bearer and OAuth2 schemes applied to every authenticated route.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // Routes that accept "bearer" accept a token from the OAuth2 password flow too.
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(sec) = op.security.as_mut() {
                sec.push(utoipa::openapi::security::SecurityRequirement::new(
                    "oauth2",
                    Vec::<String>::new(),
                ));
            }
        }
    }
    doc
}

/// Swagger UI at `/docs` and the document at `/openapi.json`.
pub fn swagger() -> axum::Router<super::AppState> {
    // Swagger UI sets inline styles.
    const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; \
         style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'";
    axum::Router::from(
        SwaggerUi::new("/docs")
            .url("/openapi.json", document())
            .config(
                Config::new(["/openapi.json"])
                    .validator_url("none")
                    .persist_authorization(false),
            ),
    )
    .layer(SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    ))
}
