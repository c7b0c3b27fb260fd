//! The node's MQTT listeners: plain TCP, TLS, WebSocket and secure WebSocket, each
//! optionally behind a load balancer that speaks the PROXY protocol. A listener
//! accepts, takes a connection slot, completes the transport's handshakes within the
//! connect timeout (PROXY header, then TLS, then the WebSocket upgrade) and hands the
//! byte stream to a connection task.

pub mod proxy;
pub mod tls;
pub mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

use crate::connection::{serve_connection, ConnectionContext};
use crate::limits::RateLimit;
pub use tls::TlsSettings;

/// How MQTT travels on a listener, as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn parse(text: &str) -> Option<Transport> {
        Some(match text {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// One listener, validated.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub listen: SocketAddr,
    pub proxy_protocol: bool,
    /// TLS listeners' settings.
    pub tls: Option<TlsSettings>,
    /// WebSocket listeners' HTTP path of the upgrade.
    pub ws_path: Option<String>,
    /// New connections a second this listener takes; 0: no limit.
    pub max_connect_rate: u32,
}

impl ListenerSpec {
    /// "tcp", "tls", "ws" or "wss", for logs and metric labels.
    pub fn transport(&self) -> &'static str {
        match (self.tls.is_some(), self.ws_path.is_some()) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

/// A byte stream that can tell when a read would find something (bytes, the end or an
/// error) without being handed a buffer, so that an idle connection holds none.
pub trait ReadReady {
    /// Ready when a read may make progress. The default is always ready: the read is
    /// then made at once, its buffer held while it waits.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

// TLS and WebSocket may hold decrypted or unframed bytes the socket no longer shows:
// only a read knows.
impl<S> ReadReady for tokio_rustls::server::TlsStream<S> {}
impl<S> ReadReady for ws::WsStream<S> {}

/// Who is on the other end of a connection, as its transport learned it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address: the socket's peer, or what the PROXY header said.
    pub addr: SocketAddr,
    pub listener: Arc<str>,
    /// The listener takes the client certificate's common name as the username (in
    /// place of the CONNECT's).
    pub cn_as_username: bool,
    /// The verified client certificate's common name, when there is one and the
    /// listener takes it.
    pub common_name: Option<String>,
    /// Set when the connection arrived over a limit: its CONNECT is refused so.
    pub refusal: Option<Refusal>,
}

/// Why a connection's CONNECT is refused before anything else is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the listener's `max_connect_rate`: CONNACK 0x9F.
    ConnectRate,
    /// The node holds `mqtt.max_connections` already: CONNACK 0x97.
    ConnectionLimit,
}

/// Connections being answered with a refusal at once, node-wide, beyond which a
/// refused connection is closed without a CONNACK: refusing must stay cheaper than
/// serving.
pub const REFUSALS_AT_ONCE: usize = 1024;

/// One listener's counters.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Closed before MQTT began: PROXY header, TLS or WebSocket handshake failed or
    /// took longer than the connect timeout.
    pub handshake_failed: AtomicU64,
    /// Refused because the node's connection limit was reached (CONNACK 0x97, or a
    /// plain close while too many refusals are under way).
    pub refused_at_limit: AtomicU64,
}

/// Every listener's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenersMetrics {
    pub listeners: Vec<(Arc<str>, &'static str, Arc<ListenerMetrics>)>,
}

impl ListenersMetrics {
    /// Connections refused at the node's connection limit, over every listener.
    pub fn refused_at_limit(&self) -> u64 {
        self.listeners
            .iter()
            .map(|(_, _, m)| m.refused_at_limit.load(Ordering::Relaxed))
            .sum()
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        type Pick = fn(&ListenerMetrics) -> &AtomicU64;
        let families: [(&str, &str, Pick); 3] = [
            (
                "fleetmq_listener_accepted_total",
                "TCP connections accepted, per listener.",
                |m| &m.accepted,
            ),
            (
                "fleetmq_listener_handshake_failed_total",
                "Connections closed before MQTT began (PROXY header, TLS or WebSocket handshake failed or too slow), per listener.",
                |m| &m.handshake_failed,
            ),
            (
                "fleetmq_listener_refused_total",
                "Connections refused because the node's connection limit was reached (CONNACK 0x97), per listener.",
                |m| &m.refused_at_limit,
            ),
        ];
        for (name, help, pick) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (listener, transport, m) in &self.listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{listener}\",transport=\"{transport}\"}} {}",
                    pick(m).load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Accepts on `listener` until `stop`; each connection takes one of `slots` for its
/// lifetime.
pub async fn run_listener(
    listener: TcpListener,
    spec: Arc<ListenerSpec>,
    ctx: Arc<ConnectionContext>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    metrics: Arc<ListenerMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let rate = u64::from(spec.max_connect_rate);
    let mut connect_rate = RateLimit::per_second(rate, rate);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = %spec.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let over_rate = connect_rate
            .as_mut()
            .is_some_and(|r| !r.take(1, Instant::now()));
        let slot = match over_rate {
            true => Err(Refusal::ConnectRate),
            false => slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::ConnectionLimit),
        };
        if matches!(slot, Err(Refusal::ConnectionLimit)) {
            metrics.refused_at_limit.fetch_add(1, Ordering::Relaxed);
            debug!(listener = %spec.name, %peer, max = ctx.config.max_connections, "connection limit reached; refusing");
        }
        // A refused connection holds a refusal permit instead of a slot, for the
        // moment it takes to read its CONNECT and answer.
        let (permit, refusal) = match slot {
            Ok(permit) => (permit, None),
            Err(refusal) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => (permit, Some(refusal)),
                Err(_) => continue,
            },
        };
        let (spec, ctx, metrics) = (spec.clone(), ctx.clone(), metrics.clone());
        tokio::spawn(async move {
            open(stream, peer, &spec, ctx, &metrics, refusal, permit).await;
        });
    }
}

/// The transport's handshakes, then the MQTT connection in a task of its own, which
/// holds `permit` until it ends.
async fn open(
    mut stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    ctx: Arc<ConnectionContext>,
    metrics: &ListenerMetrics,
    refusal: Option<Refusal>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.config.connect_timeout;
    let failed = |stage: &str, error: &dyn std::fmt::Display| {
        handshake_failed(metrics, spec, peer, stage, error)
    };
    let mut info = PeerInfo {
        addr: peer,
        listener: spec.name.clone(),
        cn_as_username: spec.tls.as_ref().is_some_and(|t| t.cn_as_username),
        common_name: None,
        refusal,
    };
    if spec.proxy_protocol {
        match timeout_at(deadline, proxy::read_header(&mut stream)).await {
            Ok(Ok(Some(client))) => info.addr = client,
            Ok(Ok(None)) => {}
            Ok(Err(error)) => return failed("proxy", &error),
            Err(_) => return failed("proxy", &"timed out"),
        }
    }
    let Some(settings) = &spec.tls else {
        return serve_transport(stream, spec, info, ctx, metrics, deadline, permit).await;
    };
    // The TLS and WebSocket handshakes are boxed: they take kilobytes, and a plain TCP
    // connection's handshake task would otherwise be as large (a storm of connections
    // has thousands of these tasks at once).
    let tls = match timeout_at(deadline, Box::pin(settings.acceptor.accept(stream))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return failed("tls", &error),
        Err(_) => return failed("tls", &"timed out"),
    };
    if settings.cn_as_username {
        info.common_name = tls::common_name(tls.get_ref().1.peer_certificates());
    }
    serve_transport(tls, spec, info, ctx, metrics, deadline, permit).await
}

/// Serves the MQTT connection on `stream` in a task of its own, which holds `permit`
/// until it ends. Not in the handshake's task: a task is as large as its future's
/// largest state, and that would keep the TLS or WebSocket handshake's room, and the
/// largest of the transports' connection states, for the whole life of every
/// connection, idle plain TCP ones included.
fn spawn_connection<S>(
    stream: S,
    info: PeerInfo,
    ctx: Arc<ConnectionContext>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    tokio::spawn(serve_connection(stream, info, ctx, permit));
}

/// Counts and logs a connection closed before MQTT began.
fn handshake_failed(
    metrics: &ListenerMetrics,
    spec: &ListenerSpec,
    peer: SocketAddr,
    stage: &str,
    error: &dyn std::fmt::Display,
) {
    metrics.handshake_failed.fetch_add(1, Ordering::Relaxed);
    debug!(listener = %spec.name, %peer, stage, %error, "connection closed before MQTT");
}

/// The MQTT connection on `stream`, after the WebSocket upgrade on a WebSocket listener.
async fn serve_transport<S>(
    stream: S,
    spec: &ListenerSpec,
    info: PeerInfo,
    ctx: Arc<ConnectionContext>,
    metrics: &ListenerMetrics,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let Some(path) = &spec.ws_path else {
        return spawn_connection(stream, info, ctx, permit);
    };
    let max_packet = ctx.config.broker.max_packet_size as usize;
    let peer = info.addr;
    match timeout_at(deadline, Box::pin(ws::accept(stream, path, max_packet))).await {
        Ok(Ok(ws)) => spawn_connection(ws, info, ctx, permit),
        Ok(Err(error)) => handshake_failed(metrics, spec, peer, "websocket", &error),
        Err(_) => handshake_failed(metrics, spec, peer, "websocket", &"timed out"),
    }
}
