//! A small TCP fault proxy for the fault-injection tests: it forwards to an upstream port and,
//! on command, resets every open connection (RST, as a crashed peer or a load balancer would) or
//! stops delivering bytes in both directions (a partition: bytes are held, not lost, and flow
//! again when it ends, as TCP retransmission would deliver them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub port: u16,
    /// Bumped by [`FaultProxy::reset_all`]; every connection task watches it.
    resets: watch::Sender<u64>,
    partitioned: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (resets, _) = watch::channel(0u64);
        let partitioned = Arc::new(AtomicBool::new(false));
        let (tx, held) = (resets.clone(), Arc::clone(&partitioned));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue; // the client sees its connection closed
                };
                tokio::spawn(relay(client, server, tx.subscribe(), Arc::clone(&held)));
            }
        });
        Self {
            port,
            resets,
            partitioned,
            accept,
        }
    }

    /// `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Resets every open connection (new ones are accepted as usual).
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Holds every byte in both directions until [`FaultProxy::heal`].
    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.partitioned.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    mut resets: watch::Receiver<u64>,
    partitioned: Arc<AtomicBool>,
) {
    resets.mark_unchanged();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset = tokio::select! {
        _ = pump(&mut cr, &mut sw, &partitioned) => false,
        _ = pump(&mut sr, &mut cw, &partitioned) => false,
        _ = resets.changed() => true,
    };
    if reset {
        // SO_LINGER 0 makes the close an RST rather than a FIN.
        for stream in [cr.reunite(cw), sr.reunite(sw)].into_iter().flatten() {
            let _ = stream.set_zero_linger();
        }
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    partitioned: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while partitioned.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
