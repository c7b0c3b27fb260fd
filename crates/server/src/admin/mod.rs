//! The admin HTTP listener (axum). Open to anyone who reaches the port: `/healthz`
//! (the process answers and its storage has not failed), `/readyz` (joined and caught up, and not draining: 503 with
//! the reason otherwise) and `/metrics` (Prometheus). Behind a bearer token: the JSON
//! API under `/api/v1` ([`api`], described by docs/openapi.yaml).

mod api;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleetmq_broker::{DropReason, Event, Metrics};
use fleetmq_cluster::health::RaftHealth;
use fleetmq_cluster::TypeConfig;
use fleetmq_kafka::BridgeMetrics;
use openraft::Raft;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::access::AccessMetrics;
use crate::clients::ConnectedClients;
use crate::drain::Drain;
use crate::limits::{LimitMetrics, OtherLimitHits};
use crate::listener::ListenersMetrics;
use crate::rules::NodeRules;

/// What the admin listener reads and acts on.
pub struct AdminState {
    pub node_id: u64,
    pub metrics: Arc<Metrics>,
    pub bridge: Option<Arc<BridgeMetrics>>,
    pub listeners: Arc<ListenersMetrics>,
    pub access: Arc<AccessMetrics>,
    /// The node's Raft group; none with the memory engine (always ready).
    pub raft: Option<AdminRaft>,
    pub drain: Arc<Drain>,
    /// Set once the node's storage failed for good: `/healthz` fails from then on.
    pub storage_failure: fleetmq_broker::StorageFailure,
    pub clients: Arc<ConnectedClients>,
    /// The router's event channel, for what only the router knows.
    pub events: mpsc::Sender<Event>,
    /// The bearer token `/api/v1` requires; none: loopback callers only.
    pub api_token: Option<Arc<str>>,
    /// The access rules in force.
    pub rules: watch::Receiver<Arc<NodeRules>>,
    pub limits: Arc<LimitMetrics>,
    pub auth: Arc<fleetmq_auth::Authenticator>,
}

/// How long the listener waits for open requests once told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest(
            "/api/v1",
            api::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
        )
        .fallback(|| async { api::ApiError::not_found("no such path") })
        .with_state(state);
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
        let _ = stopped_tx.send(true);
    });
    // Keep-alive connections (Prometheus) may hold a graceful stop open: bound it.
    let bounded = async {
        let _ = stopped_rx.changed().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = serve => if let Err(error) = result {
            warn!(%error, "admin listener stopped");
        },
        () = bounded => {}
    }
}

/// The process answers and can store: a node whose storage failed, or whose Raft
/// stopped on an error (an entry it cannot decode, a failed log write), is not healthy
/// (its supervisor restarts it; it serves again once the cause is gone).
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(reason) = state.storage_failure.borrow().as_deref() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {reason}\n"),
        )
            .into_response();
    }
    let raft_stopped =
        state
            .raft
            .as_ref()
            .and_then(|raft| match &raft.group.metrics().borrow().running_state {
                Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
                Err(fatal) => Some(fatal.to_string()),
            });
    match raft_stopped {
        None => "ok\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {reason}\n"),
        )
            .into_response(),
    }
}

/// Why the node is not ready, or `None`.
/// The Raft group as the admin listener sees it.
pub struct AdminRaft {
    pub group: Raft<TypeConfig>,
    /// The last committed log index (openraft's metrics lack it).
    pub committed_index: Arc<AtomicU64>,
}

fn not_ready(state: &AdminState) -> Option<String> {
    if let Some(reason) = state.storage_failure.borrow().as_deref() {
        return Some(format!("storage failed: {reason}"));
    }
    if state.drain.order().is_some() {
        return Some("draining".into());
    }
    let raft = state.raft.as_ref()?;
    RaftHealth::read(&raft.group.metrics().borrow()).not_ready
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match not_ready(&state) {
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = state.metrics.render();
    if let Some(raft) = &state.raft {
        let committed = raft.committed_index.load(Ordering::Relaxed);
        RaftHealth::read(&raft.group.metrics().borrow()).render(committed, &mut text);
    }
    let draining = u8::from(state.drain.order().is_some());
    text.push_str(&format!(
        "# HELP fleetmq_draining 1 while the node drains (SIGTERM or a drain request).\n\
         # TYPE fleetmq_draining gauge\nfleetmq_draining {draining}\n"
    ));
    state.listeners.render(&mut text);
    state.access.render(&mut text);
    let broker = &state.metrics;
    let other = OtherLimitHits {
        connections: state.listeners.refused_at_limit(),
        inflight: broker.inflight_waits.load(Ordering::Relaxed),
        queued_messages: broker.dropped_count(DropReason::QueueFull),
        outbox: broker.dropped_count(DropReason::OutboxFull)
            + broker.slow_consumer_disconnects.load(Ordering::Relaxed),
    };
    state.limits.render(other, &mut text);
    if let Some(bridge) = &state.bridge {
        bridge.render(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// `/api/v1` needs `Authorization: Bearer <admin.api_token_file's token>`; without a
/// configured token, only callers on the loopback interface get in.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if may_call(state.api_token.as_deref(), presented, peer.ip()) {
        return next.run(request).await;
    }
    let message = if state.api_token.is_some() {
        "a valid bearer token is required (admin.api_token_file)"
    } else {
        "no admin.api_token_file is configured: only loopback callers may use the API"
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        Json(json!({ "error": message })),
    )
        .into_response()
}

/// Whether a caller at `peer` presenting `presented` may use the API.
fn may_call(token: Option<&str>, presented: Option<&str>, peer: IpAddr) -> bool {
    match (token, presented) {
        (Some(token), Some(presented)) => same_secret(token.as_bytes(), presented.as_bytes()),
        (Some(_), None) => false,
        (None, _) => peer.is_loopback(),
    }
}

/// Compares without stopping at the first difference, so the time taken says nothing
/// about how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{may_call, same_secret};
    use std::net::IpAddr;

    #[test]
    fn without_a_token_only_loopback_callers_get_in_and_with_one_only_its_holders() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(may_call(None, None, local) && may_call(None, None, local6));
        assert!(!may_call(None, None, remote));
        assert!(!may_call(None, Some("anything"), remote));
        let token = Some("0123456789abcdef");
        assert!(may_call(token, Some("0123456789abcdef"), remote));
        assert!(!may_call(token, Some("0123456789abcdeF"), local));
        assert!(
            !may_call(token, None, local),
            "a configured token binds loopback too"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdefgh", b"abcdefgh"));
        assert!(!same_secret(b"abcdefgh", b"abcdefgi"));
        assert!(!same_secret(b"abcdefgh", b"abcdefg"));
    }
}
