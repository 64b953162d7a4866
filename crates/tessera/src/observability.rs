//! Prometheus metrics. The recorder is process-wide (the `metrics` facade is global), installed
//! once; several servers in one process (the tests) share it.
//!
//! Metric names:
//! - `tessera_http_requests_total{method,route,status}`, `tessera_http_request_duration_seconds{method,route}`
//! - `tessera_http_connections_total`, `tessera_http_connections_open` (requests per connection
//!   tell whether the proxy in front keeps its connections: README, Performance)
//! - `tessera_logins_total{outcome}` (`success`, `invalid_credentials`, `rate_limited`)
//! - `tessera_refreshes_total{outcome}` (`rotated`, `grace`, `reuse`, `invalid`)
//! - `tessera_refresh_reuse_detected_total`
//! - `tessera_active_sessions` (embedded store; counted by the sweeper)
//! - `tessera_store_duration_seconds{store}`, `tessera_store_errors_total{store}`
//! - `tessera_password_hash_rescues_total` (hashes the rescuer ran: see `domain::password`)

use std::sync::OnceLock;
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

/// How often histogram samples are folded into their buckets. The exporter keeps every sample
/// until then (~8 bytes each): at 75k verifications/s, each with a request and a store latency,
/// a 5 s period held ~6 MiB of samples at its peak, and the RSS measured at 256 connections
/// swung between 37 and 47 MiB with the moment it was read. Folding costs the same per sample
/// whatever the period.
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// Drains histogram buckets periodically (the exporter has no HTTP listener of its own here).
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
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
        let status = res.status().as_u16();
        let latency = self.started.elapsed().as_secs_f64();
        let method = self.method;
        let record = |count: &metrics::Counter, histogram: &metrics::Histogram| {
            count.increment(1);
            histogram.record(latency);
        };
        LOCAL_HTTP_METRICS.with_borrow_mut(|local| {
            let found = local
                .iter()
                .find(|(m, s, r, _, _)| *s == status && *m == method && **r == *route);
            if let Some((_, _, _, count, histogram)) = found {
                return record(count, histogram);
            }
            handle(); // the recorder must exist before handles are made, or they are no-ops
            let count = metrics::counter!("tessera_http_requests_total", "method" => method, "route" => route.to_owned(), "status" => status.to_string());
            let histogram = metrics::histogram!("tessera_http_request_duration_seconds", "method" => method, "route" => route.to_owned());
            record(&count, &histogram);
            local.push((method, status, route.into(), count, histogram));
        });
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

/// One thread's handles of one (method, status, route).
type RouteHandles = (
    &'static str,
    u16,
    Box<str>,
    metrics::Counter,
    metrics::Histogram,
);

thread_local! {
    /// The metric handles this thread has used, by (method, status, route), and by store. Making
    /// a handle builds its key (labels, hashing, a registry lookup), which showed in the
    /// profile, so each is made once per thread; the recorder gives every handle of one key the
    /// same storage. A map shared by the threads cost each request a read lock and two
    /// reference-count changes on cache lines both cores write to, and a SipHash of the route.
    static LOCAL_HTTP_METRICS: std::cell::RefCell<Vec<RouteHandles>> =
        const { std::cell::RefCell::new(Vec::new()) };

    static LOCAL_STORE_METRICS: std::cell::RefCell<
        Vec<(&'static str, metrics::Histogram, metrics::Counter)>,
    > = const { std::cell::RefCell::new(Vec::new()) };
}

/// The accept loop's connections: how many were accepted, and how many are open now.
pub struct ConnectionMetrics {
    accepted: metrics::Counter,
    open: metrics::Gauge,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        handle(); // the recorder must exist before handles are made, or they are no-ops
        Self {
            accepted: metrics::counter!("tessera_http_connections_total"),
            open: metrics::gauge!("tessera_http_connections_open"),
        }
    }
}

impl ConnectionMetrics {
    pub fn opened(&self) {
        self.accepted.increment(1);
        self.open.increment(1.0);
    }

    /// `n` connections closed. A gauge moved by steps, not set, so that several servers in one
    /// process (the tests) add up rather than overwrite each other.
    pub fn closed(&self, n: usize) {
        self.open.decrement(n as f64);
    }
}

/// Requests the HTTP edge has taken in this process, each counted once: the counter behind the
/// request ids, and how the password-hashing pool tells request traffic from a login burst
/// alone ([`requests_taken`]). One shared counter, so one contended add per request, as the ids
/// cost before it counted every request.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many requests the HTTP edge has taken so far in this process.
pub fn requests_taken() -> u64 {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Request ids for requests that arrive without one: a random per-process prefix and the
/// request counter. As unique as a UUID within a deployment's logs, without a `getrandom`
/// system call per request (which `Uuid::new_v4` makes, and which showed in the profile).
#[derive(Clone)]
pub struct RequestIds {
    prefix: u64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [0u8; 8];
        crate::domain::secret::fill_random(&mut prefix);
        Self {
            prefix: u64::from_le_bytes(prefix),
        }
    }
}

impl RequestIds {
    /// Counts a request, with an id of its own or not; its number, from which [`Self::id`]
    /// makes an id for one that came without.
    pub fn count(&self) -> u64 {
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The id of request number `n`: 32 hex digits.
    pub fn id(&self, n: u64) -> axum::http::HeaderValue {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.prefix.to_be_bytes());
        raw[8..].copy_from_slice(&n.to_be_bytes());
        let mut id = [0u8; 32];
        // 16 bytes always fit 32 hex digits, and hex digits always make a header value.
        let _ = hex::encode_to_slice(raw, &mut id);
        axum::http::HeaderValue::from_bytes(&id)
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("0"))
    }
}

tokio::task_local! {
    /// The request the current task is serving, for the log lines it writes.
    static REQUEST: Box<RequestContext>;
}

/// Whether requests also run inside a `request` span (see [`set_request_spans`]).
static REQUEST_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What every log line written while serving a request carries: its method, path and request
/// id. It rides in a task-local, read by [`WithRequest`] only when a line is written. A
/// tracing span carried the same fields before, but a span is paid for on every request
/// whether or not anything is logged in it: a registry slot, its fields formatted into a
/// buffer, an enter and exit at each poll, its close. Under `bench/callgrind` a verification
/// went from 62.8k to 60.1k instructions with this in its place. A task-local costs a swap of
/// one pointer-sized slot per poll.
pub struct RequestContext {
    method: Method,
    uri: axum::http::Uri,
    id: axum::http::HeaderValue,
}

impl RequestContext {
    /// The context of the request with this method, URI and request id.
    pub fn new(method: Method, uri: axum::http::Uri, id: axum::http::HeaderValue) -> Self {
        Self { method, uri, id }
    }

    /// Runs `fut` as this request: the lines it logs carry the request's fields. With
    /// [`set_request_spans`] on, it also runs inside an `info` span named `request`.
    pub fn scope<F>(self, fut: F) -> futures_util::future::BoxFuture<'static, F::Output>
    where
        F: std::future::Future + Send + 'static,
    {
        use futures_util::FutureExt as _;
        use tracing::Instrument as _;
        // Boxed, so that each poll swaps a pointer in and out of the task-local slot rather
        // than the whole context (~150 bytes, twice per poll): 370 instructions fewer per
        // verification under `bench/callgrind` than unboxed.
        let context = Box::new(self);
        if request_spans() {
            let span = tracing::info_span!("request");
            return REQUEST.scope(context, fut.instrument(span)).boxed();
        }
        REQUEST.scope(context, fut).boxed()
    }

    /// The fields as appended to a text line. The request id is written as sent, quoted when
    /// it holds a space, a tab or a quote, so that a caller's id cannot pass for more fields of
    /// the line; empty when it is not visible ASCII. Methods and paths hold no spaces (hyper
    /// refuses such requests).
    fn write_text(&self, line: &mut String) {
        use std::fmt::Write as _;
        let id = self.id.to_str().unwrap_or("");
        let _ = write!(line, " method={} path={}", self.method, self.uri.path());
        let _ = if id.contains([' ', '\t', '"']) {
            write!(line, " request_id={id:?}")
        } else {
            write!(line, " request_id={id}")
        };
    }

    /// The fields as keys added to a JSON object, escaped by `serde_json`.
    fn write_json(&self, line: &mut String) {
        use std::fmt::Write as _;
        let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let _ = write!(
            line,
            ",\"method\":{},\"path\":{},\"request_id\":{}",
            text(self.method.as_str()),
            text(self.uri.path()),
            text(self.id.to_str().unwrap_or("")),
        );
    }
}

/// Whether each request also runs in a tracing span named `request` (see
/// [`set_request_spans`]).
pub fn request_spans() -> bool {
    REQUEST_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes each request also run in a tracing span named `request`, off by default. Only span
/// directives need it (`RUST_LOG=warn,[request]=debug`: everything logged inside requests);
/// the log lines carry the request's fields either way.
pub fn set_request_spans(on: bool) {
    REQUEST_SPANS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// An event format that adds the current request's fields ([`RequestContext`]) to each line
/// written while serving one: after the event's own fields in text, as top-level keys in JSON.
/// Lines written outside a request are `inner`'s, untouched.
pub struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<F> WithRequest<F> {
    /// `inner`'s text lines, with the request's fields appended.
    pub fn text(inner: F) -> Self {
        Self { inner, json: false }
    }

    /// `inner`'s JSON objects, with the request's fields added as keys.
    pub fn json(inner: F) -> Self {
        Self { inner, json: true }
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequest<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::format::Writer;
        let line = REQUEST.try_with(|request| {
            // `inner` ends its line itself: written aside, so the fields go in before the end.
            let mut line = String::with_capacity(256);
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            let ended = line.ends_with('\n');
            if ended {
                line.pop();
            }
            if self.json && line.ends_with('}') {
                line.pop();
                request.write_json(&mut line);
                line.push('}');
            } else if !self.json {
                request.write_text(&mut line);
            }
            if ended {
                line.push('\n');
            }
            Ok(line)
        });
        match line {
            Ok(line) => writer.write_str(&line?),
            Err(_not_in_a_request) => self.inner.format_event(ctx, writer, event),
        }
    }
}

/// The log layer for `format`, writing to `writer`: text (coloured when `colours`) or JSON
/// lines, each written while serving a request carrying its fields ([`WithRequest`]).
pub fn log_layer<S, W>(
    format: crate::config::LogFormat,
    colours: bool,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use crate::config::LogFormat;
    use tracing_subscriber::fmt::format::{JsonFields, format as lines};
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(colours);
    match format {
        LogFormat::Json => Box::new(
            layer
                .fmt_fields(JsonFields::new())
                .event_format(WithRequest::json(lines().json().flatten_event(true))),
        ),
        // `Writer::new` (for the line written aside) has colours off; the format's own
        // setting turns them on again when asked.
        LogFormat::Text => Box::new(
            layer
                .fmt_fields(TextFields)
                .event_format(WithRequest::text(lines().with_ansi(colours))),
        ),
    }
}

/// The text log format's fields: `name=value` separated by spaces, the message unnamed, `log.*`
/// fields left out, as `tracing_subscriber`'s `DefaultFields` writes them, but with every
/// value and message stripped of line breaks and terminal control characters (written as
/// `\x0a`, `\x1b`, …). `DefaultFields` escapes only terminal controls, and only in messages
/// and errors: a username tried at login, logged with `%`, could end its line and write a
/// forged audit line after it. Written straight into the line: `DefaultFields` also styles
/// every name and `=` through `nu-ansi-term` even with colours off and grows the buffer field
/// by field, which cost 5k instructions per request while a span per request carried fields
/// (`bench/callgrind`, 83.7k → 78.8k).
pub struct TextFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            writer: Batched {
                out: writer,
                buf: [0; 256],
                len: 0,
            },
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result?;
        visitor.writer.flush()
    }
}

struct TextVisitor<'w> {
    writer: Batched<tracing_subscriber::fmt::format::Writer<'w>>,
    result: std::fmt::Result,
    first: bool,
}

/// Gathers small writes on the stack and passes them on in one piece, so the span's field
/// buffer (a `String` that starts empty) grows once instead of at every piece: its
/// reallocations were most of what formatting the request span's fields cost.
struct Batched<W> {
    out: W,
    buf: [u8; 256],
    len: usize,
}

impl<W: std::fmt::Write> Batched<W> {
    fn flush(&mut self) -> std::fmt::Result {
        let gathered = std::str::from_utf8(&self.buf[..self.len]).map_err(|_| std::fmt::Error)?;
        self.len = 0;
        self.out.write_str(gathered)
    }
}

impl<W: std::fmt::Write> std::fmt::Write for Batched<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.len + s.len() > self.buf.len() {
            self.flush()?;
            if s.len() > self.buf.len() {
                return self.out.write_str(s);
            }
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

impl TextVisitor<'_> {
    fn write(
        &mut self,
        field: &tracing::field::Field,
        value: &dyn std::fmt::Debug,
        sources: Option<&(dyn std::error::Error + 'static)>,
    ) -> std::fmt::Result {
        use std::fmt::Write as _;
        let name = field.name();
        if name.starts_with("log.") {
            return Ok(());
        }
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        if name == "message" {
            return write!(Escaped(&mut self.writer), "{value:?}");
        }
        self.writer.write_str(name)?;
        self.writer.write_char('=')?;
        match sources {
            None => write!(Escaped(&mut self.writer), "{value:?}"),
            Some(source) => {
                write!(Escaped(&mut self.writer), "{value:?}")?;
                write!(self.writer, " {name}.sources=[")?;
                let mut next = Some(source);
                while let Some(error) = next {
                    write!(Escaped(&mut self.writer), "{error}")?;
                    next = error.source();
                    if next.is_some() {
                        self.writer.write_str(", ")?;
                    }
                }
                self.writer.write_char(']')
            }
        }
    }
}

impl tracing::field::Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        if self.result.is_ok() {
            let shown = format_args!("{value}");
            self.result = match value.source() {
                Some(source) => self.write(field, &shown, Some(source)),
                None => {
                    let escaped = EscapedDisplay(value);
                    self.write(field, &escaped, None)
                }
            };
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.write(field, value, None);
        }
    }
}

/// Writes through, with control characters (C0 but the tab, DEL, C1) spelled out: a logged
/// value must neither drive the terminal nor end its line.
struct Escaped<'a, W>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Every C0 control but the tab (line breaks included), DEL, and the C1 controls.
        let is_control =
            |c: char| (c < ' ' && c != '\t') || matches!(c, '\x7f' | '\u{80}'..='\u{9f}');
        if !s.contains(is_control) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                c if (c as u32) < 0x80 && is_control(c) => write!(self.0, "\\x{:02x}", c as u32)?,
                c if is_control(c) => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// An error without sources, shown escaped.
struct EscapedDisplay<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Debug for EscapedDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        write!(Escaped(f), "{}", self.0)
    }
}

/// Times one store call and counts its failures.
pub fn store_call<T, E>(store: &'static str, started: Instant, result: &Result<T, E>) {
    let record = |latency: &metrics::Histogram, errors: &metrics::Counter| {
        latency.record(started.elapsed().as_secs_f64());
        if result.is_err() {
            errors.increment(1);
        }
    };
    LOCAL_STORE_METRICS.with_borrow_mut(|local| {
        if let Some((_, latency, errors)) = local.iter().find(|(s, _, _)| *s == store) {
            return record(latency, errors);
        }
        handle(); // the recorder must exist before handles are made, or they are no-ops
        let latency = metrics::histogram!("tessera_store_duration_seconds", "store" => store);
        let errors = metrics::counter!("tessera_store_errors_total", "store" => store);
        record(&latency, &errors);
        local.push((store, latency, errors));
    });
}

/// A log sink for tests: everything written to any of its clones, kept in memory.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl LogBuf {
    /// What was written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders one fixed sequence of spans and events as text without colours, with `fields`.
    fn render<N>(fields: N) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        #[derive(Debug, thiserror::Error)]
        #[error("outer \x1b[2J failed")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("middle \u{9b}")]
        struct Middle(#[source] Leaf);
        #[derive(Debug, thiserror::Error)]
        #[error("leaf cause")]
        struct Leaf;

        let buf = LogBuf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || sink.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", method = %"GET", path = %"/verify", request_id = %"0f3a");
            let _in = span.enter();
            tracing::info!("plain message");
            tracing::warn!(
                user = "bo\x1b",
                n = 3,
                ok = true,
                r#type = "x",
                "escapes \x1b[31m \u{9b} \x07 done"
            );
            let nested =
                tracing::debug_span!("inner", id = ?Some(7), empty = tracing::field::Empty);
            nested.record("empty", "later");
            let _inner = nested.enter();
            tracing::error!(
                error = &Outer(Middle(Leaf)) as &(dyn std::error::Error + 'static),
                "failed"
            );
            tracing::error!(error = &Leaf as &(dyn std::error::Error + 'static));
            tracing::info!(message = "str \x07 message", after = 1.5);
            tracing::info!(detail = ?Some("dbg"), text = "quoted \x1b", shown = %"disp\x1b");
            let long = tracing::info_span!("long", a = %"a".repeat(200), b = %"b".repeat(300));
            long.in_scope(|| tracing::info!(c = %"c".repeat(250), "{}", "m".repeat(260)));
        });
        buf.text()
    }

    #[test]
    fn text_fields_write_the_lines_of_the_default_formatter_with_every_value_escaped() {
        let ours = render(TextFields);
        let theirs = render(tracing_subscriber::fmt::format::DefaultFields::new());
        assert_eq!(ours.lines().count(), 7, "{ours}");
        // The one difference: `DefaultFields` writes a `%` value's controls as they are.
        assert!(theirs.contains("shown=disp\x1b"), "{theirs}");
        assert_eq!(ours, theirs.replace("shown=disp\x1b", "shown=disp\\x1b"));
        assert!(
            ours.contains("escapes \\x1b[31m \\u{9b} \\x07 done"),
            "{ours}"
        );
        assert!(
            ours.contains("leaf cause]") && ours.contains("error.sources=[middle"),
            "{ours}"
        );
    }

    #[test]
    fn no_value_or_message_can_end_its_line_and_forge_another() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buf = LogBuf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            crate::config::LogFormat::Text,
            false,
            move || sink.clone(),
        ));
        let forged = "x\n2026-01-01T00:00:00Z  INFO audit: event=\"login\" user=admin\r";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "audit", event = "login_failed", username = %forged);
            tracing::info!(target: "audit", username = forged, "{forged}");
        });
        let logged = buf.text();
        assert_eq!(logged.lines().count(), 2, "{logged}");
        assert!(!logged.contains('\r'), "{logged:?}");
        assert!(
            logged.contains("username=x\\x0a2026-01-01T00:00:00Z  INFO audit: event=\"login\""),
            "{logged}"
        );
    }

    /// What `log_layer(format)` writes, filtered by `directives`, for a line logged outside
    /// any request and two logged inside one whose id is `id` (an info and a debug line).
    fn logged_in_and_out_of_a_request(
        format: crate::config::LogFormat,
        colours: bool,
        directives: &str,
        id: &'static str,
    ) -> String {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buf = LogBuf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(directives))
            .with(log_layer(format, colours, move || sink.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            tracing::info!(n = 1, "outside");
            let request = RequestContext::new(
                Method::POST,
                "/login?rd=/x".parse().unwrap_or_default(),
                axum::http::HeaderValue::from_static(id),
            );
            request
                .scope(async {
                    tokio::task::yield_now().await;
                    tracing::info!(n = 2, "inside");
                    tracing::debug!("inside at debug");
                })
                .await;
        });
        buf.text()
    }

    #[test]
    fn text_lines_logged_while_serving_a_request_end_with_its_method_path_and_id() {
        let logged =
            logged_in_and_out_of_a_request(crate::config::LogFormat::Text, false, "info", "r-1");
        let lines: Vec<&str> = logged.lines().collect();
        assert_eq!(lines.len(), 2, "{logged}");
        assert!(lines[0].ends_with(": outside n=1"), "{logged}");
        assert!(
            lines[1].ends_with(": inside n=2 method=POST path=/login request_id=r-1"),
            "{logged}"
        );
    }

    #[test]
    fn a_request_id_with_spaces_is_quoted_so_it_cannot_pass_for_more_fields() {
        let logged = logged_in_and_out_of_a_request(
            crate::config::LogFormat::Text,
            false,
            "info",
            "r-2 user=admin",
        );
        assert!(
            logged.contains(r#" request_id="r-2 user=admin""#),
            "{logged}"
        );
    }

    #[test]
    fn json_lines_logged_while_serving_a_request_carry_its_method_path_and_id_as_keys() {
        let logged =
            logged_in_and_out_of_a_request(crate::config::LogFormat::Json, false, "info", "r-\"3");
        let lines: Vec<serde_json::Value> = logged
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{logged}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0].get("request_id"), None, "{logged}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["n"], 2);
        assert_eq!(lines[1]["method"], "POST");
        assert_eq!(lines[1]["path"], "/login");
        assert_eq!(lines[1]["request_id"], "r-\"3");
    }

    #[test]
    fn coloured_text_keeps_its_colours_and_the_requests_fields() {
        let logged =
            logged_in_and_out_of_a_request(crate::config::LogFormat::Text, true, "info", "r-4");
        assert!(logged.contains("\x1b["), "{logged:?}");
        let inside = logged.lines().nth(1).unwrap_or_default();
        assert!(
            inside.ends_with(" method=POST path=/login request_id=r-4"),
            "{logged:?}"
        );
    }

    #[test]
    fn a_request_span_directive_selects_what_requests_log_once_request_spans_are_on() {
        set_request_spans(true);
        let logged = logged_in_and_out_of_a_request(
            crate::config::LogFormat::Text,
            false,
            "warn,[request]=debug",
            "r-5",
        );
        set_request_spans(false);
        let lines: Vec<&str> = logged.lines().collect();
        assert_eq!(lines.len(), 2, "{logged}");
        assert!(lines[0].contains("inside n=2"), "{logged}");
        assert!(
            lines[1].ends_with("inside at debug method=POST path=/login request_id=r-5"),
            "{logged}"
        );
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_never_repeat() {
        let ids = RequestIds::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = ids.id(ids.count()).to_str().unwrap_or_default().to_owned();
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(seen.insert(id), "a repeated id");
        }
    }
}
