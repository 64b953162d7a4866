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

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
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
/// explode the label space).
pub async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("tessera_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tessera_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// Times one store call and counts its failures.
pub fn store_call<T, E>(store: &'static str, started: Instant, result: &Result<T, E>) {
    metrics::histogram!("tessera_store_duration_seconds", "store" => store)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("tessera_store_errors_total", "store" => store).increment(1);
    }
}
