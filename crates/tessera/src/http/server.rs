//! The accept loop: connections in, TLS if configured, HTTP/1.1 or HTTP/2 to the service, and
//! the drain on shutdown.
//!
//! Written here rather than taken from axum-server for what it saves on every verification
//! (bench/NOTES.md, the fourteenth session). axum-server's per-connection task polls two
//! shutdown `Notify`s each time it wakes, and each such poll takes a lock that every
//! connection shares, so both cores take turns on it several times per request; here each
//! connection learns of the shutdown through a `oneshot` of its own. Each connection runs
//! inside its [`deadline::Connection`], which lets its requests reuse their timers. And its
//! service is called in place ([`InPlace`]), not cloned for every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;

use crate::deadline;

/// Longest a client may take to send its request headers (slow-loris defence).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take over the TLS handshake (the same defence, one layer down).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head; larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// How long to wait before accepting again after `accept` failed (out of file descriptors,
/// say): the failure would only repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the loop serves: a tower service (ours: [`super::service`]) that never fails, cloned
/// once per connection.
pub trait Service:
    tower::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Service for S where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The TLS settings from a PEM certificate chain and a PEM private key; HTTP/2 offered first.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("no certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("no private key in {}", key.display()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `service` on `listener` until `stop` completes; then stops accepting, asks every
/// connection to finish its request in flight and close, and after `grace` closes the rest.
pub async fn serve<S: Service>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    service: S,
    stop: impl Future<Output = ()>,
    grace: Duration,
) {
    let builder = Arc::new(builder());
    let tls = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    // Each connection's shutdown signal, by its task.
    let mut stops = HashMap::new();
    let metrics = crate::observability::ConnectionMetrics::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = connections.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                stops.remove(&id);
                metrics.closed(1);
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    metrics.opened();
                    let (tx, rx) = oneshot::channel();
                    let service = axum::Extension(ConnectInfo(peer)).layer(service.clone());
                    let conn = connection(tcp, peer, tls.clone(), Arc::clone(&builder), service, rx);
                    let task = connections.spawn(deadline::Connection::default().serve(conn));
                    stops.insert(task.id(), tx);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    for (_, tx) in stops.drain() {
        let _ = tx.send(());
    }
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {
            metrics.closed(1);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing the connections still open after the grace period"
        );
        metrics.closed(connections.len());
        connections.shutdown().await;
    }
}

/// HTTP/1.1 and HTTP/2 (by prior knowledge, or ALPN over TLS), with connection-level limits.
fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(deadline::HeaderTimer)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // At most 100 headers: hyper's default, left unset on purpose (an explicit limit, even
        // of 100, makes hyper initialise two 100-slot arrays per request, ~1.7k instructions).
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(256);
    builder
}

/// One connection, from the TLS handshake to its close; on `stop`, it finishes the request in
/// flight and closes.
async fn connection<S: Service>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<Builder<TokioExecutor>>,
    service: S,
    stop: oneshot::Receiver<()>,
) {
    let service = InPlace(std::cell::RefCell::new(service));
    match tls {
        None => run(&builder, TokioIo::new(tcp), service, stop).await,
        Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(stream)) => run(&builder, TokioIo::new(stream), service, stop).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

async fn run<I, S: Service>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: InPlace<S>,
    mut stop: oneshot::Receiver<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // The connection first: it is what wakes this task, nearly always.
    let finished = tokio::select! {
        biased;
        done = conn.as_mut() => Some(done),
        _ = &mut stop => None,
    };
    let done = match finished {
        Some(done) => done,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// A connection's tower service as hyper calls it: in place. hyper calls through `&self`, so
/// hyper-util's adapter clones the whole service for every request (and moves the clone into
/// the request's future): with it, the state and the router's reference counts, which every
/// connection shares, so both cores write them on each request. HTTP/1.1 calls one request at
/// a time, and HTTP/2 calls from its connection's task, so a `RefCell` is never contended.
struct InPlace<S>(std::cell::RefCell<S>);

impl<S> hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for InPlace<S>
where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
    >;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        use axum::response::IntoResponse as _;
        use futures_util::future::Either;
        let mut service = self.0.borrow_mut();
        // Every layer of ours is always ready; were one not, the request is turned away
        // rather than waited for with no one to wake this task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            std::task::Poll::Ready(Err(never)) => match never {},
            std::task::Poll::Pending => Either::Right(std::future::ready(Ok(
                super::error::ApiError::from(crate::service::AuthError::Overloaded).into_response(),
            ))),
        }
    }
}
