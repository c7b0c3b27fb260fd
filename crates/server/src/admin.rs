//! The admin HTTP listener: `/healthz` (the process answers), `/readyz` (joined and
//! caught up: 503 with the reason otherwise) and `/metrics`. A deliberately small
//! HTTP/1.1 responder; the JSON API arrives with the operations work.

use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::Metrics;
use fleetmq_cluster::health::RaftHealth;
use fleetmq_cluster::TypeConfig;
use fleetmq_kafka::BridgeMetrics;
use openraft::Raft;

use crate::access::AccessMetrics;
use crate::listener::ListenersMetrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    bridge: Option<Arc<BridgeMetrics>>,
    listeners: Arc<ListenersMetrics>,
    access: Arc<AccessMetrics>,
    raft: Option<Raft<TypeConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                let bridge = bridge.clone();
                let (listeners, access, raft) = (listeners.clone(), access.clone(), raft.clone());
                tokio::spawn(async move {
                    let extra = Extra {
                        bridge: bridge.as_deref(),
                        listeners: &listeners,
                        access: &access,
                        raft: raft.as_ref(),
                    };
                    if let Err(error) = answer(stream, &metrics, extra).await {
                        debug!(%error, "admin request failed");
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The server's metrics besides the broker core's.
struct Extra<'a> {
    bridge: Option<&'a BridgeMetrics>,
    listeners: &'a ListenersMetrics,
    access: &'a AccessMetrics,
    /// The node's Raft group; none with the memory engine (always ready).
    raft: Option<&'a Raft<TypeConfig>>,
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, extra: Extra<'_>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Only the request line matters; read until the end of the headers.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 16 * 1024 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(());
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    // Read only where it is answered: /healthz must not depend on Raft.
    let health = || {
        extra
            .raft
            .map(|raft| RaftHealth::read(&raft.metrics().borrow()))
    };
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        // Ready: joined and caught up (fleetmq_cluster::health).
        ("GET", "/readyz") => match health().and_then(|h| h.not_ready) {
            None => ("200 OK", "text/plain", "ready\n".to_string()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", "/metrics") => {
            let mut text = metrics.render();
            if let Some(health) = health() {
                health.render(&mut text);
            }
            extra.listeners.render(&mut text);
            extra.access.render(&mut text);
            if let Some(bridge) = extra.bridge {
                bridge.render(&mut text);
            }
            ("200 OK", "text/plain; version=0.0.4", text)
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
