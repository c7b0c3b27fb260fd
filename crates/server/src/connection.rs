//! One task per client connection: it owns the socket and the codec, and
//! `select!`s over reading, its outbox from the router, a close request, the
//! keep-alive deadline and shutdown. Connection-scoped protocol state lives here:
//! topic aliases both ways, the client's Receive Maximum quota, packet size limits.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleetmq_auth::{AclRules, Action, AuthError, Credentials, Identity, Who};
use fleetmq_broker::{
    now_ms, AckKind, CloseReason, ConnId, ConnectRequest, ConnectionEnd, ConnectionHandle,
    DropReason, Event, Metrics, Next, Outgoing, OutgoingPublish,
};
use fleetmq_codec::{
    decode, encode, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect,
    DisconnectProperties, Packet, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode,
    Subscribe,
};
use fleetmq_kafka::{BridgeAck, BridgeError, BridgedMessage, Egress};
use fleetmq_topic::{validate_topic_name, SmallMap, TopicFilter};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::access::AccessMetrics;
use crate::clients::{ConnectedClient, ConnectedClients};
use crate::config::ValidConfig;
use crate::drain::{Drain, DrainOrder};
use crate::limits::{Limit, LimitMetrics, RateLimit};
use crate::listener::{PeerInfo, ReadReady, Refusal};
use crate::rules::NodeRules;

/// What every connection task shares.
pub struct ConnectionContext {
    pub config: ValidConfig,
    pub events: mpsc::Sender<Event>,
    pub metrics: Arc<Metrics>,
    pub next_conn_id: AtomicU64,
    /// The Kafka bridge, when configured: PUBLISHes its rules take go there before
    /// the router, and the publisher's acknowledgement waits for it.
    pub egress: Option<Arc<Egress>>,
    pub access: Arc<AccessMetrics>,
    /// Tells connections when to ask their clients to move.
    pub drain: Arc<Drain>,
    /// Who is connected here, for the admin API.
    pub clients: Arc<ConnectedClients>,
    pub limits: Arc<LimitMetrics>,
    /// The node's access rules in force (the file's, or the cluster's runtime ones).
    pub rules: watch::Receiver<Arc<NodeRules>>,
}

/// How long a connection the server closed waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);
const CONNECT_PACKET_TYPE: u8 = 1;

/// Bytes of encoded output gathered before one socket write.
const WRITE_COALESCE_BYTES: usize = 64 * 1024;
/// Outbox items gathered before one socket write.
const WRITE_COALESCE_ITEMS: usize = 256;

/// Events held behind a bridge acknowledgement, beyond the server's Receive Maximum,
/// before the connection stops reading: room for QoS 0 PUBLISHes and acknowledgements
/// between a client's QoS 1/2 PUBLISHes.
const HELD_BEYOND_RECEIVE_MAXIMUM: usize = 256;
/// How long a DISCONNECT waits for the bridge acknowledgements it arrived behind.
const HELD_DRAIN_AT_DISCONNECT: Duration = Duration::from_secs(5);

/// An event of this connection for the router, waiting in arrival order.
struct HeldEvent {
    event: Event,
    /// For a PUBLISH a Kafka egress rule took: the bridge's word that the message is
    /// where the rule's acknowledgement mode says.
    bridged: Option<BridgeAck>,
}

/// One connection's MQTT 5 topic aliases, both ways.
#[derive(Default)]
struct TopicAliases {
    inbound: SmallMap<u16, Arc<str>>,
    outbound: SmallMap<Arc<str>, u16>,
}

/// Why the connection loop ended.
enum Ending {
    /// DISCONNECT from the client; `with_will` after reason 0x04.
    ClientDisconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// Socket closed or failed without DISCONNECT.
    Lost,
    /// The server closes with this reason (DISCONNECT sent first to MQTT 5 clients).
    Server(ReasonCode, Option<String>),
    /// The node drains: the client is told to move (MQTT 5: where, when configured).
    Drained(Arc<DrainOrder>),
    /// The node cannot commit what this client waits for (no majority reachable): it
    /// is told to move, like in a drain, while the node stays.
    Moved,
}

/// The task of one client connection, from its CONNECT to its close. Built here, not
/// in an async fn: an async fn's future keeps its arguments as well as what it makes
/// of them, and every idle connection would carry the stream and peer twice. `permit`
/// (the listener's connection slot) is released when the task ends.
pub fn serve_connection<S>(
    stream: S,
    peer: PeerInfo,
    ctx: Arc<ConnectionContext>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let conn_id = ctx.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        conn_id,
        peer = %peer.addr,
        listener = %peer.listener,
        client_id = tracing::field::Empty
    );
    ctx.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    Metrics::gauge_add(&ctx.metrics.connections_current, 1);
    let conn = Connection {
        stream,
        // Both allocated when there is something to read or write, and released once
        // empty again: most connections are idle most of the time.
        read_buf: BytesMut::new(),
        write_buf: BytesMut::new(),
        ctx: ctx.clone(),
        conn_id,
        version: ProtocolVersion::V3_1_1,
        client_id: Arc::from(""),
        username: None,
        keep_alive: None,
        session_expiry: 0,
        request_problem_info: true,
        client_max_packet: None,
        client_alias_max: 0,
        aliases: None,
        unacked_incoming: SmallMap::new(),
        held: VecDeque::new(),
        held_max: usize::from(ctx.config.broker.receive_maximum) + HELD_BEYOND_RECEIVE_MAXIMUM,
        acl: ctx.rules.borrow().rules.clone(),
        node_rules: Some(ctx.rules.clone()),
        peer,
        publish_rate: RateLimit::per_second(
            u64::from(ctx.config.max_publish_rate),
            u64::from(ctx.config.max_publish_rate),
        )
        .map(Box::new),
        // One message of the largest size allowed always fits the bucket.
        publish_bytes_rate: RateLimit::per_second(
            ctx.config.max_publish_bytes_rate,
            u64::from(ctx.config.broker.max_packet_size),
        )
        .map(Box::new),
    };
    // Boxed: the connection's future would otherwise hold it twice (the receiver of
    // `run` and the local it is moved into), ~400 bytes more per connection.
    Box::new(conn).run(permit).instrument(span)
}

struct Connection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    ctx: Arc<ConnectionContext>,
    conn_id: ConnId,
    version: ProtocolVersion,
    client_id: Arc<str>,
    username: Option<String>,
    keep_alive: Option<Duration>,
    session_expiry: u32,
    request_problem_info: bool,
    client_max_packet: Option<usize>,
    client_alias_max: u16,
    /// MQTT 5 topic aliases, made at their first use: most clients use none, and
    /// every field here is kept for the connection's whole life.
    aliases: Option<Box<TopicAliases>>,
    /// Packet ids of QoS 1/2 PUBLISHes received and not yet fully acknowledged;
    /// its size is what the server's Receive Maximum limits.
    unacked_incoming: SmallMap<u16, ()>,
    /// Events waiting, in arrival order, behind a bridged PUBLISH whose acknowledgement
    /// has not come: the router takes a connection's events in the order they arrived,
    /// while the client goes on sending. At `held_max` the connection stops reading.
    held: VecDeque<HeldEvent>,
    held_max: usize,
    /// The access rules for this client: the node's, or its token's.
    acl: Arc<AclRules>,
    /// Where the node's rules change at runtime; `None` when the token's rules apply.
    node_rules: Option<watch::Receiver<Arc<NodeRules>>>,
    peer: PeerInfo,
    /// Boxed, like everything a connection rarely needs: both are off by default, and
    /// every connection task carries its fields for its whole life.
    publish_rate: Option<Box<RateLimit>>,
    publish_bytes_rate: Option<Box<RateLimit>>,
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send> Connection<S> {
    async fn run(mut self: Box<Self>, permit: OwnedSemaphorePermit) {
        self.serve_until_closed().await;
        // The slot first: a gauge of 0 then means every slot is free again.
        drop(permit);
        Metrics::gauge_add(&self.ctx.metrics.connections_current, -1);
    }

    /// CONNECT, the session's traffic, then the close and its DISCONNECT.
    async fn serve_until_closed(&mut self) {
        let connect_timeout = self.ctx.config.connect_timeout;
        // The handshake's states are boxed: they are needed once, and held inline they
        // would size the future every idle connection keeps for its lifetime.
        let connect =
            match tokio::time::timeout(connect_timeout, Box::pin(self.read_connect())).await {
                Ok(Ok(Some(connect))) => connect,
                Ok(Ok(None)) => {
                    self.ctx.metrics.closed(CloseReason::ConnectionLost);
                    return;
                }
                Ok(Err(reason)) => {
                    self.ctx.metrics.closed(CloseReason::Server(reason));
                    return;
                }
                Err(_) => {
                    debug!("no CONNECT within the connect timeout");
                    self.ctx
                        .metrics
                        .closed(CloseReason::Server(ReasonCode::MaximumConnectTime));
                    return;
                }
            };
        let Some(end) = Box::pin(self.accept(connect)).await else {
            return;
        };
        self.ctx.clients.connected(ConnectedClient {
            conn_id: self.conn_id,
            client_id: self.client_id.clone(),
            username: self.username.as_deref().map(Arc::from),
            peer: self.peer.addr,
            listener: self.peer.listener.clone(),
            protocol: self.version,
            keep_alive_s: self.keep_alive.map_or(0, |k| k.as_secs() as u16),
            session_expiry_s: self.session_expiry,
            connected_at_ms: now_ms(),
            signal: end.signal(),
        });
        let ending = self.serve(end).await;
        self.ctx.clients.gone(&self.client_id, self.conn_id);
        for held in self.held.drain(..) {
            if let Event::Publish { .. } = held.event {
                self.ctx.metrics.dropped(DropReason::BridgePending);
            }
        }
        let (publish_will, session_expiry, close_reason) = match &ending {
            Ending::ClientDisconnect {
                with_will,
                session_expiry,
            } => (*with_will, *session_expiry, CloseReason::ClientDisconnect),
            Ending::Lost => (true, None, CloseReason::ConnectionLost),
            Ending::Server(code, text) => {
                Box::pin(self.send_disconnect(*code, text.clone(), None)).await;
                (true, None, CloseReason::Server(*code))
            }
            Ending::Drained(order) => {
                let code = order.reason_code();
                let reference = order.plan.server_reference.as_deref().map(str::to_string);
                Box::pin(self.send_disconnect(code, None, reference)).await;
                (true, None, CloseReason::Server(code))
            }
            Ending::Moved => {
                let code = ReasonCode::UseAnotherServer;
                let reference = self.ctx.drain.server_reference().map(|r| r.to_string());
                let why = Some("this node cannot reach a majority of the cluster".to_string());
                Box::pin(self.send_disconnect(code, why, reference)).await;
                (true, None, CloseReason::Server(code))
            }
        };
        let _ = self
            .ctx
            .events
            .send(Event::Disconnect {
                conn: self.conn_id,
                publish_will,
                session_expiry_interval: session_expiry,
            })
            .await;
        // Counted once the router has the event queued: whoever sees the count can
        // rely on the router handling this disconnect before anything sent later.
        self.ctx.metrics.closed(close_reason);
        let _ = self.stream.shutdown().await;
        // Only a DISCONNECT is worth protecting: MQTT 3.x clients get none, and their
        // socket closes at once as before.
        if matches!(close_reason, CloseReason::Server(_)) && self.version.is_v5() {
            self.linger().await;
        }
        debug!(?close_reason, "connection closed");
    }

    /// After the server's DISCONNECT: reads what the client still sends until it
    /// closes too, for at most [`LINGER`]. Closing a socket with unread data sends a
    /// TCP reset, and a reset can destroy the DISCONNECT in the client's receive
    /// buffer before the client reads it: the client would never learn why.
    async fn linger(&mut self) {
        // On the heap, not in the future: the connection's future is as large as its
        // largest state, and an array here would be held by every idle connection.
        let mut scratch = vec![0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Reads until the first packet. `Ok(None)`: the peer went away; `Err`: refused.
    async fn read_connect(&mut self) -> Result<Option<Box<Connect>>, ReasonCode> {
        let max = self.ctx.config.broker.max_packet_size as usize;
        loop {
            // The type is known from the first byte: refuse anything but CONNECT
            // before trying to decode a body that has no business being here.
            if let Some(first) = self.read_buf.first() {
                if first >> 4 != CONNECT_PACKET_TYPE {
                    warn!(packet_type = first >> 4, "first packet is not CONNECT");
                    return Err(ReasonCode::ProtocolError);
                }
            }
            // Read before decoding: a failed decode may consume the bytes.
            let level = connect_level(&self.read_buf);
            match decode(&mut self.read_buf, ProtocolVersion::V5, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(Some(connect)),
                Ok(Some(other)) => {
                    warn!(packet = other.kind(), "first packet is not CONNECT");
                    return Err(ReasonCode::ProtocolError);
                }
                Ok(None) => {}
                Err(error) => {
                    self.ctx
                        .metrics
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(%error, "malformed CONNECT");
                    let code = error.reason_code();
                    self.refuse_connect(&error, code, level).await;
                    return Err(code);
                }
            }
            match read_more(&mut self.stream, &mut self.read_buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => Metrics::add(&self.ctx.metrics.bytes_received, n as u64),
            }
        }
    }

    /// Answers a CONNECT that could not be decoded, in the form its level asks for:
    /// a v5 CONNACK with the reason code, return code 1 for an unknown level, and a
    /// plain close for 3.x, which has no code for a malformed packet.
    async fn refuse_connect(&mut self, error: &DecodeError, code: ReasonCode, level: Option<u8>) {
        let version = match (error, level) {
            (DecodeError::UnsupportedProtocolVersion(_), Some(5)) => Some(ProtocolVersion::V5),
            (DecodeError::UnsupportedProtocolVersion(_), _) => Some(ProtocolVersion::V3_1_1),
            (DecodeError::InvalidProtocolName(_), _) => None,
            (_, Some(5)) => Some(ProtocolVersion::V5),
            _ => None,
        };
        if let Some(version) = version {
            let ack = ConnAck {
                session_present: false,
                reason_code: code,
                properties: ConnAckProperties::default(),
            };
            self.write_packet_now(&Packet::ConnAck(ack), version).await;
        }
    }

    /// Validates CONNECT, registers with the router and sends CONNACK.
    async fn accept(&mut self, connect: Box<Connect>) -> Option<ConnectionEnd> {
        let ctx = self.ctx.clone();
        let cfg = &ctx.config.broker;
        let connect = *connect;
        self.version = connect.protocol;
        let v5 = connect.protocol.is_v5();
        match self.peer.refusal {
            None => {}
            Some(Refusal::ConnectRate) => {
                ctx.limits.hit(Limit::Connects);
                debug!(client_id = %connect.client_id, "refused: over the listener's max_connect_rate");
                return self.refuse(ReasonCode::ConnectionRateExceeded).await;
            }
            Some(Refusal::ConnectionLimit) => {
                debug!(client_id = %connect.client_id, "refused: mqtt.max_connections reached");
                return self.refuse(ReasonCode::QuotaExceeded).await;
            }
        }
        let props = &connect.properties;

        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if v5 || (connect.protocol == ProtocolVersion::V3_1_1 && connect.clean_start) {
                let id = format!("fleetmq-{}-{}", cfg.node_id, unique_suffix(self.conn_id));
                assigned = Some(id.clone());
                Arc::from(id)
            } else {
                return self.refuse(ReasonCode::ClientIdentifierNotValid).await;
            }
        } else {
            Arc::from(connect.client_id.as_str())
        };
        if props.authentication_method.is_some() {
            // Enhanced authentication methods arrive with the auth work; refuse honestly.
            return self.refuse(ReasonCode::BadAuthenticationMethod).await;
        }
        if let Some(will) = &connect.will {
            if validate_topic_name(&will.topic).is_err() {
                return self.refuse(ReasonCode::TopicNameInvalid).await;
            }
            if will.retain && !cfg.retain_available {
                return self.refuse(ReasonCode::RetainNotSupported).await;
            }
        }
        self.client_id = client_id.clone();
        // Recorded before anything about this client is logged, refusals included.
        tracing::Span::current().record("client_id", &*self.client_id);
        let identity = match self.authenticate(&connect).await {
            Ok(identity) => identity,
            Err(error) => {
                let (code, counter) = match &error {
                    AuthError::BadCredentials(_) => (
                        ReasonCode::BadUserNameOrPassword,
                        &self.ctx.access.bad_credentials,
                    ),
                    AuthError::NotAuthorized(_) => {
                        (ReasonCode::NotAuthorized, &self.ctx.access.not_authorized)
                    }
                };
                AccessMetrics::count(counter);
                info!(client_id = %client_id, %error, "authentication failed");
                return self.refuse(code).await;
            }
        };
        self.username = identity.username;
        if let Some(acl) = identity.acl {
            self.acl = acl;
            self.node_rules = None;
        }
        if let Some(will) = &connect.will {
            if !self.allowed(Action::Publish, &will.topic) {
                AccessMetrics::count(&self.ctx.access.not_authorized);
                info!(client_id = %client_id, topic = %will.topic, "the access rules refuse the will's topic");
                return self.refuse(ReasonCode::NotAuthorized).await;
            }
        }
        self.session_expiry = if v5 {
            props
                .session_expiry_interval
                .unwrap_or(0)
                .min(cfg.max_session_expiry_interval)
        } else if connect.clean_start {
            0
        } else {
            cfg.max_session_expiry_interval
        };
        self.request_problem_info = props.request_problem_information.unwrap_or(true);
        self.client_max_packet = props.maximum_packet_size.map(|m| m as usize);
        self.client_alias_max = props.topic_alias_maximum.unwrap_or(0);
        let mut server_keep_alive = None;
        let mut keep_alive = connect.keep_alive;
        if cfg.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive) && v5 {
            keep_alive = cfg.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));

        let capacity = usize::from(cfg.max_inflight) + cfg.outbox_capacity;
        let (handle, end) = ConnectionHandle::new(self.conn_id, capacity);
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = ConnectRequest {
            client_id,
            protocol: connect.protocol,
            clean_start: connect.clean_start,
            session_expiry_interval: self.session_expiry,
            receive_maximum: if v5 {
                props.receive_maximum.unwrap_or(u16::MAX)
            } else {
                u16::MAX
            },
            will: connect.will,
        };
        let event = Event::Connect {
            conn: handle,
            request,
            reply: reply_tx,
        };
        if self.ctx.events.send(event).await.is_err() {
            return self.refuse(ReasonCode::ServerUnavailable).await;
        }
        // A session held by another node arrives once the cluster commits the move; a
        // node cut off from the majority cannot, so the client hears 0x88 and can try
        // another node instead of waiting forever.
        let reply = match tokio::time::timeout(self.ctx.config.connect_timeout, reply_rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return self.refuse(ReasonCode::ServerUnavailable).await,
            Err(_) => {
                let gone = Event::Disconnect {
                    conn: self.conn_id,
                    publish_will: false,
                    session_expiry_interval: None,
                };
                let _ = self.ctx.events.send(gone).await;
                warn!("the session could not be made ready in time (no quorum?)");
                return self.refuse(ReasonCode::ServerUnavailable).await;
            }
        };
        let properties = if v5 {
            ConnAckProperties {
                session_expiry_interval: props
                    .session_expiry_interval
                    .filter(|asked| *asked != self.session_expiry)
                    .map(|_| self.session_expiry),
                receive_maximum: Some(cfg.receive_maximum),
                retain_available: (!cfg.retain_available).then_some(false),
                maximum_packet_size: Some(cfg.max_packet_size),
                assigned_client_identifier: assigned,
                topic_alias_maximum: Some(cfg.topic_alias_maximum),
                server_keep_alive,
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(true),
                ..ConnAckProperties::default()
            }
        } else {
            ConnAckProperties::default()
        };
        let ack = Packet::ConnAck(ConnAck {
            session_present: reply.session_present,
            reason_code: ReasonCode::Success,
            properties,
        });
        if !self.write_packet_now(&ack, self.version).await {
            let _ = self
                .ctx
                .events
                .send(Event::Disconnect {
                    conn: self.conn_id,
                    publish_will: true,
                    session_expiry_interval: None,
                })
                .await;
            self.ctx.metrics.closed(CloseReason::ConnectionLost);
            return None;
        }
        info!(
            client_id = %self.client_id,
            username = self.username.as_deref().unwrap_or(""),
            protocol = ?self.version,
            session_present = reply.session_present,
            session_expiry = self.session_expiry,
            "client connected"
        );
        Some(end)
    }

    /// Who the client is: a verified certificate, a password, a token, or nobody. On a
    /// listener that names users by certificate the CONNECT's username is not believed.
    /// The check runs on a blocking thread where it verifies credentials (argon2 takes
    /// tens of milliseconds on purpose).
    fn authenticate(
        &self,
        connect: &Connect,
    ) -> impl std::future::Future<Output = Result<Identity, AuthError>> + Send + 'static {
        let auth = self.ctx.config.auth.clone();
        let (username, certificate_user) = if self.peer.cn_as_username {
            (None, self.peer.common_name.clone())
        } else {
            (connect.username.clone(), None)
        };
        let password = connect.password.clone();
        async move {
            let slow = auth.checks_credentials();
            let check = move || {
                auth.authenticate(Credentials {
                    username: username.as_deref(),
                    password: password.as_deref(),
                    certificate_user: certificate_user.as_deref(),
                })
            };
            if !slow {
                return check();
            }
            tokio::task::spawn_blocking(check)
                .await
                .unwrap_or_else(|e| Err(AuthError::NotAuthorized(format!("the check failed: {e}"))))
        }
    }

    /// Takes this PUBLISH from the client's rate limits; a client over one is closed
    /// (crate::limits).
    fn within_publish_limits(&mut self, publish: &Publish) -> Result<(), Ending> {
        // Both off (the default): no clock read on the per-message path.
        if self.publish_rate.is_none() && self.publish_bytes_rate.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(rate) = &mut self.publish_rate {
            if !rate.take(1, now) {
                self.ctx.limits.hit(Limit::Publishes);
                warn!("closed: over mqtt.max_publish_rate");
                let per_second = self.ctx.config.max_publish_rate;
                return Err(Ending::Server(
                    ReasonCode::MessageRateTooHigh,
                    Some(format!("more than {per_second} PUBLISH a second")),
                ));
            }
        }
        if let Some(bytes) = &mut self.publish_bytes_rate {
            let size = (publish.topic.len() + publish.payload.len()) as u64;
            if !bytes.take(size, now) {
                self.ctx.limits.hit(Limit::PublishBytes);
                warn!("closed: over mqtt.max_publish_bytes_rate");
                let per_second = self.ctx.config.max_publish_bytes_rate;
                return Err(Ending::Server(
                    ReasonCode::QuotaExceeded,
                    Some(format!("more than {per_second} bytes of PUBLISH a second")),
                ));
            }
        }
        Ok(())
    }

    /// Whether this client's access rules allow `action` on `target` (a topic for
    /// PUBLISH, a filter without `$share/group/` for SUBSCRIBE).
    fn allowed(&mut self, action: Action, target: &str) -> bool {
        if let Some(node) = &mut self.node_rules {
            // An atomic load per check; the rules are swapped only when they changed.
            if node.has_changed().unwrap_or(false) {
                self.acl = node.borrow_and_update().rules.clone();
            }
        }
        if self.acl.allows_everything() {
            return true;
        }
        let who = Who {
            username: self.username.as_deref(),
            client_id: &self.client_id,
        };
        self.acl.check(action, target, who).allowed()
    }

    async fn refuse<T>(&mut self, code: ReasonCode) -> Option<T> {
        let ack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: ConnAckProperties::default(),
        });
        self.write_packet_now(&ack, self.version).await;
        self.ctx.metrics.closed(CloseReason::Server(code));
        info!(?code, "connection refused");
        None
    }

    async fn serve(&mut self, mut end: ConnectionEnd) -> Ending {
        let grace = self.keep_alive.map(|k| k + k / 2);
        let mut deadline = grace.map(|g| Instant::now() + g);
        // A drain that started while this client was connecting counts too; one that
        // starts later nudges the connection through its outbox (Next::Nudged).
        let mut drain_order = self.ctx.drain.order();
        // One timer for both deadlines, armed once and moved only when a deadline
        // comes earlier than it is set for: every read pushes the keep-alive deadline
        // later, and re-arming a timer for each read cost more than the read's own
        // work (BENCHMARKS.md). When it fires early, it is set again to what is due.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let drain_at = drain_order.as_ref().map(|o| o.deadline_for(self.conn_id));
            // Packets already buffered are handled before reading more. Handling one
            // takes far more room than waiting does, so it is boxed, and only when there
            // is something to decode: the idle connection's future stays small.
            if !self.read_buf.is_empty() {
                match Box::pin(self.handle_buffered()).await {
                    Ok(None) => {}
                    Ok(Some(ending @ Ending::ClientDisconnect { .. })) => {
                        return Box::pin(self.drain_held()).await.err().unwrap_or(ending);
                    }
                    Ok(Some(ending)) | Err(ending) => return ending,
                }
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
                self.read_buf = BytesMut::new();
            }
            // While full of held events, the connection reads nothing, so the client's
            // silence is not its own: the keep-alive waits.
            let reading = self.held.len() < self.held_max;
            // One timer for both deadlines: each waiting timer takes room in the future
            // every connection keeps for its whole life.
            let keep_alive_at = deadline.filter(|_| reading);
            let wake_at = match (keep_alive_at, drain_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = wake_at {
                if armed.is_none_or(|armed| at < armed) {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
            }
            tokio::select! {
                read = read_more(&mut self.stream, &mut self.read_buf), if reading => match read {
                    Ok(0) | Err(_) => return Ending::Lost,
                    Ok(n) => {
                        Metrics::add(&self.ctx.metrics.bytes_received, n as u64);
                        deadline = grace.map(|g| Instant::now() + g);
                    }
                },
                result = head_of_held(&mut self.held), if !self.held.is_empty() => {
                    if let Err(ending) = Box::pin(self.release_held(result)).await {
                        return ending;
                    }
                    if !reading {
                        deadline = grace.map(|g| Instant::now() + g);
                    }
                }
                next = end.next() => match next {
                    Next::Item(item) => {
                        // Boxed like the reading side: the timer lives across every
                        // await here, and the write's state beside it would make the
                        // future every idle connection keeps larger.
                        if let Err(ending) = Box::pin(self.write_outgoing(item, &mut end)).await {
                            return ending;
                        }
                    }
                    Next::Nudged => {
                        if drain_order.is_none() {
                            drain_order = self.ctx.drain.order();
                        }
                    }
                    // The admin API's kick (the router never closes with 0x98).
                    Next::Close(ReasonCode::AdministrativeAction) => {
                        info!("closed by an administrator");
                        return Ending::Server(
                            ReasonCode::AdministrativeAction,
                            Some("closed by an administrator".into()),
                        );
                    }
                    // The committer: what this client waits for cannot commit here.
                    Next::Close(ReasonCode::UseAnotherServer) => return Ending::Moved,
                    // The router asked this connection to close, or dropped it.
                    Next::Close(reason) => return Ending::Server(reason, None),
                },
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    if keep_alive_at.is_some_and(|at| at <= now) {
                        debug!("keep alive expired");
                        return Ending::Server(ReasonCode::KeepAliveTimeout, None);
                    }
                    if drain_at.is_some_and(|at| at <= now) {
                        if let Some(order) = drain_order.take() {
                            return Ending::Drained(order);
                        }
                    }
                    // Fired for a deadline that has moved since: set again above.
                }
            }
        }
    }

    /// Hands the router the held event at the head, whose bridge acknowledgement
    /// resolved with `result`, and every event behind it that is ready too.
    async fn release_held(&mut self, result: Result<(), BridgeError>) -> Result<(), Ending> {
        let mut result = Some(result);
        while let Some(head) = self.held.front_mut() {
            let ready = match (result.take(), head.bridged.as_mut()) {
                (Some(result), _) => result,
                (None, None) => Ok(()),
                (None, Some(ack)) => match ack.now_or_never() {
                    Some(result) => result,
                    None => break,
                },
            };
            if let Some(held) = self.held.pop_front() {
                self.forward(held.event, ready).await?;
            }
        }
        Ok(())
    }

    /// After a DISCONNECT: waits for what the client sent before it, in order, for at
    /// most [`HELD_DRAIN_AT_DISCONNECT`]. What is still waiting then was never
    /// acknowledged, so the client knows to send it again.
    async fn drain_held(&mut self) -> Result<(), Ending> {
        let give_up = sleep_until(Instant::now() + HELD_DRAIN_AT_DISCONNECT);
        tokio::pin!(give_up);
        while !self.held.is_empty() {
            tokio::select! {
                result = head_of_held(&mut self.held) => self.release_held(result).await?,
                () = &mut give_up => {
                    warn!(held = self.held.len(), "gave up waiting for the kafka bridge at disconnect");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Decodes and handles every whole packet in the read buffer.
    async fn handle_buffered(&mut self) -> Result<Option<Ending>, Ending> {
        let max = self.ctx.config.broker.max_packet_size as usize;
        while self.held.len() < self.held_max {
            let packet = match decode(&mut self.read_buf, self.version, max) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.ctx
                        .metrics
                        .decode_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(%error, "malformed packet");
                    return Err(Ending::Server(error.reason_code(), Some(error.to_string())));
                }
            };
            if let Some(ending) = self.handle_packet(packet).await? {
                return Ok(Some(ending));
            }
        }
        Ok(None)
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<Option<Ending>, Ending> {
        let conn = self.conn_id;
        let event = match packet {
            Packet::Publish(publish) => {
                // A QoS 2 PUBLISH sent again before its PUBREL was bridged the first time.
                let resent = publish.qos == QoS::ExactlyOnce
                    && publish
                        .packet_id
                        .is_some_and(|id| self.unacked_incoming.contains_key(&id));
                let event = self.inbound_publish(publish)?;
                let Some(event) = self.publish_access(event) else {
                    return Ok(None);
                };
                // A refusal is not a PUBLISH: the bridge does not take it.
                let bridged = match resent {
                    true => None,
                    false => self.submit_to_bridge(&event).await,
                };
                if bridged.is_some() || !self.held.is_empty() {
                    self.held.push_back(HeldEvent { event, bridged });
                    return Ok(None);
                }
                event
            }
            Packet::PubAck(ack) => Event::PubAck {
                conn,
                packet_id: ack.packet_id,
            },
            Packet::PubRec(rec) => Event::PubRec {
                conn,
                packet_id: rec.packet_id,
                reason: rec.reason_code,
            },
            Packet::PubRel(rel) => Event::PubRel {
                conn,
                packet_id: rel.packet_id,
            },
            Packet::PubComp(comp) => Event::PubComp {
                conn,
                packet_id: comp.packet_id,
            },
            Packet::Subscribe(subscribe) => self.inbound_subscribe(subscribe)?,
            Packet::Unsubscribe(unsubscribe) => Event::Unsubscribe {
                conn,
                packet_id: unsubscribe.packet_id,
                filters: unsubscribe.filters,
            },
            Packet::PingReq => {
                self.write_packet_now(&Packet::PingResp, self.version).await;
                return Ok(None);
            }
            Packet::Disconnect(disconnect) => {
                let asked = disconnect.properties.session_expiry_interval;
                if self.session_expiry == 0 && asked.is_some_and(|e| e > 0) {
                    return Err(protocol_error(
                        "session expiry cannot be set at DISCONNECT when CONNECT set 0",
                    ));
                }
                return Ok(Some(Ending::ClientDisconnect {
                    with_will: disconnect.reason_code == ReasonCode::DisconnectWithWillMessage,
                    session_expiry: asked,
                }));
            }
            Packet::Connect(_) => return Err(protocol_error("second CONNECT")),
            Packet::Auth(_) => return Err(protocol_error("AUTH without an authentication method")),
            other => {
                return Err(protocol_error(&format!(
                    "{} is sent by servers, not clients",
                    other.kind()
                )))
            }
        };
        if self.held.is_empty() {
            self.forward(event, Ok(())).await?;
        } else {
            self.held.push_back(HeldEvent {
                event,
                bridged: None,
            });
        }
        Ok(None)
    }

    /// Applies the access rules to a PUBLISH: the event itself when allowed; when
    /// refused, a QoS 0 message is dropped (`None`) and a QoS 1/2 one is answered in
    /// turn with 0x87 (MQTT 3.1.1 has no refusal: a plain PUBACK/PUBREC, nothing
    /// routed, as Mosquitto does), so that the client does not send it again.
    fn publish_access(&mut self, event: Event) -> Option<Event> {
        let Event::Publish { conn, publish } = &event else {
            return Some(event);
        };
        if self.allowed(Action::Publish, &publish.topic) {
            return Some(event);
        }
        AccessMetrics::count(&self.ctx.access.denied_publish);
        debug!(topic = %publish.topic, "the access rules refuse the publish");
        self.refusal(*conn, publish, ReasonCode::NotAuthorized)
    }

    /// The refusal of a QoS 1/2 PUBLISH, answered in turn by the router with `reason`
    /// in its PUBACK/PUBREC, the packet id freed; `None` for QoS 0 (nothing to answer).
    fn refusal(&mut self, conn: ConnId, publish: &Publish, reason: ReasonCode) -> Option<Event> {
        let packet_id = publish
            .packet_id
            .filter(|_| publish.qos != QoS::AtMostOnce)?;
        self.unacked_incoming.remove(&packet_id);
        let kind = match publish.qos {
            QoS::ExactlyOnce => AckKind::PubRec,
            _ => AckKind::PubAck,
        };
        Some(Event::RefusePublish {
            conn,
            kind,
            packet_id,
            reason,
        })
    }

    fn inbound_publish(&mut self, mut publish: Publish) -> Result<Event, Ending> {
        self.ctx
            .metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        self.within_publish_limits(&publish)?;
        let cfg = &self.ctx.config.broker;
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > cfg.topic_alias_maximum {
                return Err(Ending::Server(
                    ReasonCode::TopicAliasInvalid,
                    Some(format!(
                        "topic alias {alias} is outside 1..={}",
                        cfg.topic_alias_maximum
                    )),
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => return Err(protocol_error("topic alias used before it was set")),
                }
            } else {
                self.aliases
                    .get_or_insert_default()
                    .inbound
                    .insert(alias, publish.topic.clone());
            }
        }
        if publish.topic.is_empty() {
            return Err(protocol_error("PUBLISH without topic or topic alias"));
        }
        if let Err(error) = validate_topic_name(&publish.topic) {
            return Err(Ending::Server(
                ReasonCode::TopicNameInvalid,
                Some(error.to_string()),
            ));
        }
        if publish.topic.split('/').count() > cfg.max_topic_levels {
            self.ctx.limits.hit(Limit::TopicLevels);
            return Err(Ending::Server(
                ReasonCode::TopicNameInvalid,
                Some(format!(
                    "topic has more than {} levels",
                    cfg.max_topic_levels
                )),
            ));
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(protocol_error(
                "clients must not send subscription identifiers",
            ));
        }
        if publish.retain && !cfg.retain_available {
            return Err(Ending::Server(ReasonCode::RetainNotSupported, None));
        }
        if let Some(packet_id) = publish.packet_id {
            if publish.qos != QoS::AtMostOnce
                && self.unacked_incoming.insert(packet_id, ()).is_none()
                && self.unacked_incoming.len() > usize::from(cfg.receive_maximum)
            {
                return Err(Ending::Server(
                    ReasonCode::ReceiveMaximumExceeded,
                    Some(format!(
                        "more than {} unacknowledged QoS 1/2 PUBLISH",
                        cfg.receive_maximum
                    )),
                ));
            }
        }
        Ok(Event::Publish {
            conn: self.conn_id,
            publish,
        })
    }

    /// Hands a PUBLISH that Kafka egress rules take to the bridge, behind the ones this
    /// connection sent before; what comes back resolves when the publisher may be
    /// acknowledged. None when no rule takes it.
    async fn submit_to_bridge(&mut self, event: &Event) -> Option<BridgeAck> {
        let (Some(egress), Event::Publish { publish, .. }) = (&self.ctx.egress, event) else {
            return None;
        };
        let rules = egress.rules_for(&publish.topic);
        if rules.is_empty() {
            return None;
        }
        let message = BridgedMessage {
            topic: publish.topic.to_string(),
            payload: publish.payload.clone(),
            qos: publish.qos as u8,
            retain: publish.retain,
            client_id: self.client_id.to_string(),
            username: self.username.clone(),
            user_properties: publish.properties.user_properties.clone(),
            content_type: publish.properties.content_type.clone(),
            received_at_ms: now_ms(),
        };
        Some(match egress.submit(&rules, &message).await {
            Ok(ack) => ack,
            Err(error) => BridgeAck::refused(error),
        })
    }

    /// Sends `event` to the router, or, when the Kafka bridge refused its PUBLISH
    /// (`bridged` is the error), refuses it: MQTT 5 gets PUBACK/PUBREC with 0x97 when
    /// the outbox is full and 0x80 when Kafka refused the record, in turn with the other
    /// acknowledgements; QoS 0 is dropped (and counted by the bridge). MQTT 3.1.1 cannot
    /// refuse a PUBLISH: the connection is closed, and the client sends it again once
    /// reconnected.
    async fn forward(
        &mut self,
        event: Event,
        bridged: Result<(), BridgeError>,
    ) -> Result<(), Ending> {
        let event = match (bridged, event) {
            (Ok(()), event) => event,
            (Err(error), Event::Publish { conn, publish }) => {
                let reason = match error {
                    BridgeError::OutboxFull { .. } => ReasonCode::QuotaExceeded,
                    _ => ReasonCode::UnspecifiedError,
                };
                warn!(topic = %publish.topic, %error, "the kafka bridge refused a publish");
                if publish.qos == QoS::AtMostOnce {
                    return Ok(());
                }
                if !self.version.is_v5() {
                    return Err(Ending::Server(reason, Some(error.to_string())));
                }
                match self.refusal(conn, &publish, reason) {
                    Some(refusal) => refusal,
                    None => return Ok(()),
                }
            }
            // Only PUBLISHes are bridged.
            (Err(_), event) => event,
        };
        if self.ctx.events.send(event).await.is_err() {
            return Err(Ending::Server(ReasonCode::ServerShuttingDown, None));
        }
        Ok(())
    }

    fn inbound_subscribe(&mut self, subscribe: Subscribe) -> Result<Event, Ending> {
        let max_levels = self.ctx.config.broker.max_topic_levels;
        let mut filters = Vec::with_capacity(subscribe.filters.len());
        for item in subscribe.filters {
            let parsed = TopicFilter::parse(&item.filter).ok().filter(|f| {
                let within = f.filter().split('/').count() <= max_levels;
                if !within {
                    self.ctx.limits.hit(Limit::TopicLevels);
                }
                within
            });
            match parsed {
                Some(filter) => {
                    if filter.share_group().is_some() && item.options.no_local {
                        return Err(protocol_error("No Local on a shared subscription"));
                    }
                    if self.allowed(Action::Subscribe, filter.filter()) {
                        filters.push(Ok((filter, item.options)));
                    } else {
                        AccessMetrics::count(&self.ctx.access.denied_subscribe);
                        debug!(filter = %item.filter, "the access rules refuse the subscription");
                        filters.push(Err(if self.version.is_v5() {
                            ReasonCode::NotAuthorized
                        } else {
                            ReasonCode::UnspecifiedError
                        }));
                    }
                }
                None => {
                    debug!(filter = %item.filter, "invalid topic filter");
                    filters.push(Err(if self.version.is_v5() {
                        ReasonCode::TopicFilterInvalid
                    } else {
                        ReasonCode::UnspecifiedError
                    }));
                }
            }
        }
        Ok(Event::Subscribe {
            conn: self.conn_id,
            packet_id: subscribe.packet_id,
            filters,
            subscription_id: subscribe.properties.subscription_identifier,
        })
    }

    /// Encodes `first` and whatever else the outbox holds, then writes once.
    async fn write_outgoing(
        &mut self,
        first: Outgoing,
        end: &mut ConnectionEnd,
    ) -> Result<(), Ending> {
        self.encode_outgoing(first)?;
        let mut items = 1;
        while items < WRITE_COALESCE_ITEMS && self.write_buf.len() < WRITE_COALESCE_BYTES {
            match end.try_recv() {
                Some(item) => {
                    self.encode_outgoing(item)?;
                    items += 1;
                }
                None => break,
            }
        }
        self.flush_write_buf().await
    }

    fn encode_outgoing(&mut self, item: Outgoing) -> Result<(), Ending> {
        match item {
            Outgoing::Publish(publish) => self.encode_publish(publish),
            other => {
                let Some(mut packet) = other.into_packet() else {
                    return Ok(());
                };
                match &packet {
                    // MQTT 3.1.1 cannot refuse a PUBLISH: one this node could not store
                    // (the committer's refusals, 0x97 or 0x80) closes the connection
                    // instead, and the client resends elsewhere. (A PUBLISH the access
                    // rules refuse, 0x87, is acknowledged and dropped, as 3.1.1 allows.)
                    Packet::PubAck(ack) | Packet::PubRec(ack)
                        if !self.version.is_v5()
                            && matches!(
                                ack.reason_code,
                                ReasonCode::QuotaExceeded | ReasonCode::UnspecifiedError
                            ) =>
                    {
                        return Err(Ending::Server(
                            ack.reason_code,
                            Some("the message could not be stored".into()),
                        ));
                    }
                    Packet::PubAck(ack) | Packet::PubComp(ack) => {
                        self.unacked_incoming.remove(&ack.packet_id);
                    }
                    Packet::PubRec(rec) if rec.reason_code.is_error() => {
                        self.unacked_incoming.remove(&rec.packet_id);
                    }
                    _ => {}
                }
                if !self.request_problem_info {
                    strip_problem_info(&mut packet);
                }
                self.encode_into_buf(&packet)
            }
        }
    }

    fn encode_publish(&mut self, out: OutgoingPublish) -> Result<(), Ending> {
        let now = now_ms();
        let message = &out.message;
        let v5 = self.version.is_v5();
        let mut properties = PublishProperties::default();
        if v5 {
            let p = &message.properties;
            properties = PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: message.remaining_expiry_secs(now),
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: out.subscription_ids,
                content_type: p.content_type.clone(),
            };
        }
        if out.qos == QoS::AtMostOnce && message.is_expired(now) {
            self.ctx.metrics.dropped(DropReason::Expired);
            return Ok(());
        }
        // Server-to-client topic aliases: the first use sends topic and alias,
        // later uses the alias alone.
        let mut topic = message.topic.clone();
        let mut new_alias = None;
        if v5 && self.client_alias_max > 0 {
            let outbound = &self.aliases.get_or_insert_default().outbound;
            if let Some(alias) = outbound.get(&topic) {
                properties.topic_alias = Some(*alias);
                topic = Arc::from("");
            } else if outbound.len() < usize::from(self.client_alias_max) {
                let alias = outbound.len() as u16 + 1;
                properties.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        let packet = Packet::Publish(Publish {
            dup: out.dup,
            qos: out.qos,
            retain: out.retain,
            topic,
            packet_id: out.packet_id,
            properties,
            payload: message.payload.clone(),
        });
        let before = self.write_buf.len();
        self.encode_into_buf(&packet)?;
        let size = self.write_buf.len() - before;
        if self.client_max_packet.is_some_and(|max| size > max) {
            // The spec: discard as if sent. Tell the router so the window moves on.
            self.write_buf.truncate(before);
            self.ctx.metrics.dropped(DropReason::PacketTooLarge);
            if let Some(packet_id) = out.packet_id {
                let event = if out.qos == QoS::AtLeastOnce {
                    Event::PubAck {
                        conn: self.conn_id,
                        packet_id,
                    }
                } else {
                    Event::PubRec {
                        conn: self.conn_id,
                        packet_id,
                        reason: ReasonCode::PacketTooLarge,
                    }
                };
                if self.ctx.events.try_send(event).is_err() {
                    warn!("router busy; oversize message stays in flight until reconnect");
                }
            }
            return Ok(());
        }
        if let Some(alias) = new_alias {
            self.aliases
                .get_or_insert_default()
                .outbound
                .insert(message.topic.clone(), alias);
        }
        self.ctx
            .metrics
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn encode_into_buf(&mut self, packet: &Packet) -> Result<(), Ending> {
        encode(packet, self.version, &mut self.write_buf).map_err(|error| {
            warn!(%error, packet = packet.kind(), "cannot encode packet");
            Ending::Server(ReasonCode::ImplementationSpecificError, None)
        })
    }

    async fn flush_write_buf(&mut self) -> Result<(), Ending> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let n = self.write_buf.len();
        // Flushed too: TLS and WebSocket streams buffer what is written.
        if self.stream.write_all(&self.write_buf).await.is_err()
            || self.stream.flush().await.is_err()
        {
            return Err(Ending::Lost);
        }
        Metrics::add(&self.ctx.metrics.bytes_sent, n as u64);
        // Released, not cleared: an idle connection keeps no write buffer. The next
        // write allocates again, once per batch, which is cheap next to the syscall.
        self.write_buf = BytesMut::new();
        Ok(())
    }

    /// Writes one packet at once; false if the socket failed.
    async fn write_packet_now(&mut self, packet: &Packet, version: ProtocolVersion) -> bool {
        let saved = self.version;
        self.version = version;
        let encoded = self.encode_into_buf(packet).is_ok();
        self.version = saved;
        encoded && self.flush_write_buf().await.is_ok()
    }

    async fn send_disconnect(
        &mut self,
        code: ReasonCode,
        reason: Option<String>,
        server_reference: Option<String>,
    ) {
        if !self.version.is_v5() {
            return;
        }
        let packet = Packet::Disconnect(Disconnect {
            reason_code: code,
            properties: DisconnectProperties {
                reason_string: reason.filter(|_| self.request_problem_info),
                server_reference,
                ..DisconnectProperties::default()
            },
        });
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.write_packet_now(&packet, ProtocolVersion::V5),
        )
        .await;
    }
}

fn protocol_error(why: &str) -> Ending {
    Ending::Server(ReasonCode::ProtocolError, Some(why.to_string()))
}

/// Removes Reason String and User Properties where Request Problem Information = 0 forbids them.
fn strip_problem_info(packet: &mut Packet) {
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties = Default::default();
        }
        Packet::SubAck(a) => a.properties = Default::default(),
        Packet::UnsubAck(a) => a.properties = Default::default(),
        _ => {}
    }
}

/// The bridge acknowledgement of the oldest held event (ready at once for an event that
/// waits only for those before it).
async fn head_of_held(held: &mut VecDeque<HeldEvent>) -> Result<(), BridgeError> {
    match held.front_mut().and_then(|h| h.bridged.as_mut()) {
        Some(ack) => ack.await,
        None => Ok(()),
    }
}

/// Room made in the read buffer before each read: what one read takes at most when
/// the client sends a lot at once.
const READ_CHUNK: usize = 4096;

/// Reads more bytes into `buf`. It waits for the stream to have something before it
/// makes room: a connection waiting for its client holds no read buffer.
async fn read_more<S>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<usize>
where
    S: AsyncRead + ReadReady + Unpin,
{
    // Moved in as `&mut`: a shared borrow would need the stream to be `Sync` too.
    let ready = &mut *stream;
    std::future::poll_fn(move |cx| ready.poll_read_ready(cx)).await?;
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// The protocol level byte of a CONNECT still in the buffer, if it can be read.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Skip the fixed header: type byte and 1-4 remaining length bytes.
    let mut i = 1;
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    buf.get(i + 2 + name_len).copied()
}

fn unique_suffix(conn_id: ConnId) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos & 0xffff_ffff, conn_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_level_reads_the_level_byte() {
        // CONNECT, remaining length 10, "MQTT", level 5.
        let buf = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0];
        assert_eq!(connect_level(&buf), Some(5));
        assert_eq!(connect_level(&buf[..5]), None);
    }
}
