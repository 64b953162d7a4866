//! HTTP at the edge: the router, shared state and middleware. Handlers live in [`api`]; the one
//! error-to-status mapping in [`error`].

pub mod api;
pub mod browser;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod pages;
pub mod server;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use ipnet::IpNet;
use tower::{Layer as _, Service};
use tower_http::timeout::Timeout;

use crate::service::Auth;
use error::ApiError;

/// HTTP-only settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Cookie names and attributes.
    pub cookies: browser::Cookies,
    /// `scheme://host[:port]` of `public_url`.
    pub public_origin: String,
    /// Hosts besides ours that `rd` may point to.
    pub allowed_redirect_hosts: Vec<String>,
}

/// What every handler can reach: a handle on [`Shared`]. One `Arc`, because hyper clones the
/// service, and the state with it, for every request (and `GET /verify` clones it once more):
/// with an `Arc` per field that was eight shared counters bouncing between the cores per request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The state's parts.
pub struct Shared {
    /// The use cases.
    pub auth: Arc<Auth>,
    /// HTTP settings.
    pub http: HttpSettings,
    /// The HTML templates.
    pub templates: pages::Templates,
    /// Set on SIGTERM/SIGINT so `/readyz` turns 503 while in-flight requests drain.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    /// The state of one server.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Longest a request may take end to end; slow clients and stuck handlers get 408 instead of
/// holding a connection forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forward-auth's route: routed like every other, and also taken first by [`Routes`].
const VERIFY: &str = "/verify";
/// The profile route, also taken first by [`Routes`] for a `GET`.
const PROFILE: &str = "/profile";

/// The routes, with the state and the one middleware that needs the matched route (CSRF and
/// per-route metrics). Every other edge concern wraps the router once, in [`service`]:
/// `Router::layer` wraps each route in its own boxed service, which a request clones and
/// allocates anew at every layer (ten nested boxes showed in the verification profile).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/login", get(pages::login_page).post(api::login))
        .route("/dashboard", get(pages::dashboard))
        .route("/sessions/{id}/revoke", post(pages::revoke_form))
        .route(
            "/account/password",
            get(pages::password_page).post(pages::password_form),
        )
        .route(
            "/register",
            get(pages::register_page).post(pages::register_form),
        )
        .route("/static/tessera.css", get(pages::stylesheet))
        .route("/static/favicon.svg", get(pages::favicon))
        .route("/token", post(api::token))
        .route(PROFILE, get(api::profile))
        .route("/logout", post(api::logout))
        .route(VERIFY, get(api::verify))
        .route("/sessions", get(api::sessions))
        .route("/sessions/{id}", delete(api::delete_session))
        .route("/password", post(api::change_password))
        .route("/users", post(api::register))
        .route("/admin/users", get(api::admin_list).post(api::admin_create))
        .route(
            "/admin/users/{id}",
            patch(api::admin_update).delete(api::admin_delete),
        )
        .route("/.well-known/jwks.json", get(api::jwks))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(openapi::swagger())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            route_edge,
        ))
        .with_state(state)
}

/// The routes, with `GET /verify` and `GET /profile` taken before the router. Forward-auth
/// proxies call `/verify` on every request of every app behind tessera, and apps call
/// `/profile` as often, so they skip what they do not need: route matching, the route's
/// extensions, the boxed per-route middleware and handler (measured with bench/callgrind:
/// 93.4k → 87.4k instructions per verification), and the request deadline: neither reads a
/// body and their every wait is a store call under the store's own deadline, so one more timer
/// per request only cost time. They run the same code as the routed routes (which still
/// answer `HEAD` and other methods, and list the routes in the docs), and are counted under
/// the same metric labels. The CSRF guard has nothing to do for a `GET`.
#[derive(Clone)]
pub struct Routes {
    /// [`router`] under the request deadline ([`REQUEST_TIMEOUT`]).
    router: Timeout<Router>,
    state: AppState,
}

impl Routes {
    /// [`router`] with the fast `GET /verify`.
    pub fn new(state: AppState) -> Self {
        Self {
            router: Timeout::with_status_code(
                router(state.clone()),
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ),
            state,
        }
    }

    async fn verify(state: AppState, mut parts: axum::http::request::Parts) -> Response {
        use axum::extract::FromRequestParts as _;
        let tracked = crate::observability::HttpTracker::fixed(&parts.method, VERIFY);
        let res = match extract::Authenticated::from_request_parts(&mut parts, &state).await {
            Ok(who) => api::verify(who).await,
            Err(e) => e.into_response(),
        };
        tracked.finish(&res);
        res
    }

    async fn profile(state: AppState, parts: axum::http::request::Parts) -> Response {
        let tracked = crate::observability::HttpTracker::fixed(&parts.method, PROFILE);
        let res = api::profile_of(&state, &parts.headers)
            .await
            .unwrap_or_else(IntoResponse::into_response);
        tracked.finish(&res);
        res
    }
}

impl<B> Service<Request<B>> for Routes
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>,
        <Timeout<Router> as Service<Request<B>>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures_util::FutureExt as _;
        if req.method() == axum::http::Method::GET {
            match req.uri().path() {
                VERIFY => {
                    let (parts, _body) = req.into_parts();
                    let verify = Self::verify(self.state.clone(), parts);
                    return futures_util::future::Either::Left(verify.map(Ok).boxed());
                }
                PROFILE => {
                    let (parts, _body) = req.into_parts();
                    let profile = Self::profile(self.state.clone(), parts);
                    return futures_util::future::Either::Left(profile.map(Ok).boxed());
                }
                _ => {}
            }
        }
        futures_util::future::Either::Right(self.router.call(req))
    }
}

/// The whole HTTP service: `routes` ([`Routes`]) under the body limit, inside [`Edge`]. The
/// request deadline is [`Routes`]'s.
pub fn service<B, S>(
    routes: S,
    max_body: usize,
) -> Edge<
    impl Service<
        Request<B>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
>
where
    S: Service<Request<B>, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Edge {
        inner: DefaultBodyLimit::max(max_body).layer(routes),
        ids: crate::observability::RequestIds::default(),
    }
}

/// What every answer goes through, in one layer: the request id (made when absent, echoed on
/// the answer), credentials marked sensitive so no `Debug` of the request prints them, the
/// request's method, path and id on every line logged while serving it
/// ([`RequestContext`](crate::observability::RequestContext)), panics turned into an opaque
/// 500, the header policy on every answer (panics and timeouts included), and server errors
/// logged. tower-http has a layer for each of these, and this stack was built from them first;
/// but each layer wraps the request's future and its answer in its own type, which hyper moves
/// and the runtime polls through. Under callgrind a verification cost 70.1k instructions
/// through those layers, 67.5k through this one (with a tracing span per request, 4.2k of
/// it), and 59.4k with no edge at all (bench/NOTES.md).
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    ids: crate::observability::RequestIds,
}

impl<S, B> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::FutureExt as _;

        let headers = req.headers_mut();
        let n = self.ids.count();
        let id = match headers.get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.id(n);
                headers.insert(REQUEST_ID, id.clone());
                id
            }
        };
        for name in [header::AUTHORIZATION, header::COOKIE] {
            if let header::Entry::Occupied(mut values) = headers.entry(name) {
                values.iter_mut().for_each(|v| v.set_sensitive(true));
            }
        }
        let context = crate::observability::RequestContext::new(
            req.method().clone(),
            req.uri().clone(),
            id.clone(),
        );
        let started = std::time::Instant::now();
        // Outside the request's scope: `call` only builds the request's future (routing, no
        // handler code, nothing logged).
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(req)));
        let answer = async move {
            tracing::debug!("started processing request");
            let res = match call {
                Ok(fut) => match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(res)) => res,
                    Ok(Err(never)) => match never {},
                    Err(panic) => panic_response(panic),
                },
                Err(panic) => panic_response(panic),
            };
            let status = res.status();
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), latency = ?started.elapsed(), "response failed");
            } else {
                tracing::debug!(status = status.as_u16(), latency = ?started.elapsed(), "finished processing request");
            }
            let mut res = browser::security_headers(res);
            res.headers_mut().insert(REQUEST_ID, id);
            Ok(res)
        };
        context.scope(answer)
    }
}

/// The per-route middleware: the CSRF guard, timed and counted under the matched route.
async fn route_edge(state: State<AppState>, req: axum::extract::Request, next: Next) -> Response {
    let tracked = crate::observability::HttpTracker::start(&req);
    let res = browser::csrf_guard(state, req, next).await;
    tracked.finish(&res);
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic)");
    tracing::error!(panic = %what, "handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_an_opaque_500_json_under_the_header_policy() {
        async fn boom() -> &'static str {
            panic!("secret detail from a bug")
        }
        let app = service(Router::new().route("/boom", get(boom)), 1024);
        let res = app
            .oneshot(
                Request::get("/boom")
                    .body(Body::empty())
                    .unwrap_or_default(),
            )
            .await;
        assert_opaque_500(res.unwrap_or_else(|e| match e {})).await;
    }

    /// Every request is counted once, with an id of its own or without: the count the hashing
    /// pool reads to tell request traffic from logins alone.
    #[tokio::test]
    async fn every_request_is_counted_once_with_or_without_an_id() {
        async fn ok() -> &'static str {
            "ok"
        }
        let app = service(Router::new().route("/", get(ok)), 1024);
        let before = crate::observability::requests_taken();
        for id in [None, Some("from-the-proxy"), None] {
            let mut req = Request::get("/");
            if let Some(id) = id {
                req = req.header(REQUEST_ID, id);
            }
            let res = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap_or_default())
                .await;
            assert!(res.is_ok_and(|r| r.status() == StatusCode::OK));
        }
        // Other tests of this binary may count theirs meanwhile.
        assert!(crate::observability::requests_taken() - before >= 3);
    }

    /// A 500 under the header policy, with the request id, whose JSON body says nothing of the
    /// panic ("secret detail ...").
    async fn assert_opaque_500(res: Response) {
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let h = res.headers();
        assert_eq!(
            h.get(header::X_CONTENT_TYPE_OPTIONS).map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
        assert_eq!(
            h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"no-store"[..])
        );
        assert!(h.contains_key(&REQUEST_ID), "{h:?}");
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"error\":\"internal_error\""), "{text}");
        assert!(!text.contains("secret detail"), "{text}");
    }

    #[tokio::test]
    async fn a_service_that_panics_before_returning_its_future_also_becomes_an_opaque_500() {
        #[derive(Clone)]
        struct PanicsInCall;
        impl Service<Request<Body>> for PanicsInCall {
            type Response = Response;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<Body>) -> Self::Future {
                panic!("secret detail from call")
            }
        }
        let res = service(PanicsInCall, 1024)
            .oneshot(Request::get("/").body(Body::empty()).unwrap_or_default())
            .await
            .unwrap_or_else(|e| match e {});
        assert_opaque_500(res).await;
    }

    #[tokio::test]
    async fn a_server_error_is_logged_with_the_requests_method_path_and_id() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buf = crate::observability::LogBuf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(crate::observability::log_layer(
                crate::config::LogFormat::Text,
                false,
                move || sink.clone(),
            ));
        let _default = tracing::subscriber::set_default(subscriber);
        async fn down() -> StatusCode {
            StatusCode::SERVICE_UNAVAILABLE
        }
        async fn up() -> StatusCode {
            StatusCode::OK
        }
        let app = service(
            Router::new()
                .route("/down", get(down))
                .route("/up", get(up)),
            1024,
        );
        for (path, id) in [("/down", "down-id-1"), ("/up", "up-id-2")] {
            let req = Request::get(path)
                .header(&REQUEST_ID, id)
                .body(Body::empty())
                .unwrap_or_default();
            let res = app
                .clone()
                .oneshot(req)
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(
                res.headers().get(&REQUEST_ID).map(|v| v.as_bytes()),
                Some(id.as_bytes())
            );
        }
        let logged = buf.text();
        let line = logged.lines().find(|l| l.contains("response failed"));
        let line = line.unwrap_or_else(|| panic!("no error line in:\n{logged}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("status=503"), "{line}");
        assert!(
            line.ends_with(" method=GET path=/down request_id=down-id-1"),
            "{line}"
        );
        assert!(
            !logged.contains("up-id-2"),
            "a 200 logged at info:\n{logged}"
        );
    }

    /// What the handler saw, as text: whether each credential header was marked sensitive, and
    /// the request id.
    async fn seen(headers: axum::http::HeaderMap) -> String {
        let sensitive = |name| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.is_sensitive().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "authorization={} cookie={} id={}",
            sensitive(header::AUTHORIZATION),
            sensitive(header::COOKIE),
            headers
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
        )
    }

    async fn through_edge(req: Request<Body>) -> (Option<String>, String) {
        let app = service(Router::new().route("/seen", get(seen)), 1024);
        let res = app.oneshot(req).await.unwrap_or_else(|e| match e {});
        let id = res
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .unwrap_or_default();
        (id, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn credentials_reach_handlers_marked_sensitive_with_the_callers_request_id() {
        let req = Request::get("/seen")
            .header(header::AUTHORIZATION, "Bearer secret")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .header(&REQUEST_ID, "caller-id-7")
            .body(Body::empty())
            .unwrap_or_default();
        let (id, seen) = through_edge(req).await;
        assert_eq!(seen, "authorization=true cookie=true,true id=caller-id-7");
        assert_eq!(id.as_deref(), Some("caller-id-7"));
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_one_that_its_handler_and_its_answer_share() {
        let req = Request::get("/seen")
            .body(Body::empty())
            .unwrap_or_default();
        let (id, seen) = through_edge(req).await;
        let id = id.unwrap_or_default();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(seen, format!("authorization= cookie= id={id}"));
    }
}
