//! Prometheus metrics. The recorder is process-wide (the `metrics` facade is global), installed
//! once; several servers in one process (the tests) share it.
//!
//! Metric names:
//! - `tessera_http_requests_total{method,route,status}`, `tessera_http_request_duration_seconds{method,route}`
//! - `tessera_logins_total{outcome}` (`success`, `invalid_credentials`, `rate_limited`)
//! - `tessera_refreshes_total{outcome}` (`rotated`, `grace`, `reuse`, `invalid`)
//! - `tessera_refresh_reuse_detected_total`
//! - `tessera_active_sessions` (embedded store; counted by the sweeper)
//! - `tessera_store_duration_seconds{store}`, `tessera_store_errors_total{store}`

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds: 100 µs … 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The process's Prometheus handle, installing the recorder on first use. `None` if another
/// recorder was installed first (an embedding application's own).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Drains histogram buckets periodically (the exporter has no HTTP listener of its own here).
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Some(h) = handle() {
                h.run_upkeep();
            }
        }
    })
}

/// Request count and latency per route (the route pattern, never the raw path, so ids do not
/// explode the label space; unknown methods count as `OTHER` for the same reason).
pub struct HttpTracker {
    started: Instant,
    method: &'static str,
    route: Route,
}

enum Route {
    Matched(MatchedPath),
    Fixed(&'static str),
}

impl HttpTracker {
    /// Starts timing a routed request.
    pub fn start(req: &Request) -> Self {
        Self {
            started: Instant::now(),
            method: method_label(req.method()),
            route: req
                .extensions()
                .get::<MatchedPath>()
                .cloned()
                .map_or(Route::Fixed("unmatched"), Route::Matched),
        }
    }

    /// Starts timing a request to `route` that did not go through the router.
    pub fn fixed(method: &Method, route: &'static str) -> Self {
        Self {
            started: Instant::now(),
            method: method_label(method),
            route: Route::Fixed(route),
        }
    }

    /// Counts the answer and records the latency.
    pub fn finish(self, res: &Response) {
        let route = match &self.route {
            Route::Matched(m) => m.as_str(),
            Route::Fixed(r) => r,
        };
        let (count, latency) = http_metrics(self.method, route, res.status().as_u16());
        count.increment(1);
        latency.record(self.started.elapsed().as_secs_f64());
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The metric handles of one (method, status) of a route.
type HttpHandles = (&'static str, u16, metrics::Counter, metrics::Histogram);

/// Registered handles by route: building a metric key (labels, hashing, a registry lookup) on
/// every request showed in the profile; the set of (route, method, status) is small and fixed.
static HTTP_METRICS: LazyLock<RwLock<HashMap<Box<str>, Vec<HttpHandles>>>> =
    LazyLock::new(RwLock::default);

fn http_metrics(
    method: &'static str,
    route: &str,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    let find = |routes: &HashMap<Box<str>, Vec<HttpHandles>>| {
        routes.get(route).and_then(|hs| {
            hs.iter()
                .find(|(m, s, _, _)| *m == method && *s == status)
                .map(|(_, _, c, h)| (c.clone(), h.clone()))
        })
    };
    if let Some(found) = find(&HTTP_METRICS.read().unwrap_or_else(|e| e.into_inner())) {
        return found;
    }
    let mut routes = HTTP_METRICS.write().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = find(&routes) {
        return found;
    }
    handle(); // the recorder must exist before handles are made, or they are no-ops
    let counter = metrics::counter!("tessera_http_requests_total", "method" => method, "route" => route.to_owned(), "status" => status.to_string());
    let histogram = metrics::histogram!("tessera_http_request_duration_seconds", "method" => method, "route" => route.to_owned());
    routes.entry(route.into()).or_default().push((
        method,
        status,
        counter.clone(),
        histogram.clone(),
    ));
    (counter, histogram)
}

/// Request ids for requests that arrive without one: a random per-process prefix and a counter.
/// As unique as a UUID within a deployment's logs, without a `getrandom` system call per
/// request (which `Uuid::new_v4` makes, and which showed in the profile).
#[derive(Clone)]
pub struct RequestIds {
    prefix: u64,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [0u8; 8];
        crate::domain::secret::fill_random(&mut prefix);
        Self {
            prefix: u64::from_le_bytes(prefix),
            next: std::sync::Arc::default(),
        }
    }
}

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(
        &mut self,
        _: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.prefix.to_be_bytes());
        raw[8..].copy_from_slice(&n.to_be_bytes());
        let mut id = [0u8; 32];
        hex::encode_to_slice(raw, &mut id).ok()?;
        axum::http::HeaderValue::from_bytes(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// Times one store call and counts its failures.
pub fn store_call<T, E>(store: &'static str, started: Instant, result: &Result<T, E>) {
    static HANDLES: LazyLock<
        RwLock<HashMap<&'static str, (metrics::Histogram, metrics::Counter)>>,
    > = LazyLock::new(RwLock::default);
    let cached = HANDLES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(store)
        .cloned();
    let (latency, errors) = cached.unwrap_or_else(|| {
        handle(); // the recorder must exist before handles are made, or they are no-ops
        let made = (
            metrics::histogram!("tessera_store_duration_seconds", "store" => store),
            metrics::counter!("tessera_store_errors_total", "store" => store),
        );
        HANDLES
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store, made.clone());
        made
    });
    latency.record(started.elapsed().as_secs_f64());
    if result.is_err() {
        errors.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use tower_http::request_id::MakeRequestId as _;

    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_never_repeat() {
        let mut ids = RequestIds::default();
        let req = axum::http::Request::new(());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = ids.make_request_id(&req).map(|id| id.into_header_value());
            let id = id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(seen.insert(id), "a repeated id");
        }
    }
}
