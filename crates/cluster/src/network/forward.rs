//! The sending side of PUBLISH forwarding: [`GrpcForwarder`], the broker's
//! [`Forwarder`] over `PeerService::Forward`.
//!
//! Per destination node, one task owns a bounded queue and one long-lived stream, so
//! messages reach each node in the order the router forwarded them (which keeps
//! per-publisher order). The router never waits: a full queue, or a link that is down,
//! drops the message and counts it as `forward_queue_full`. What travels here is QoS 0
//! and clean-session traffic, which nothing acknowledged depends on; messages for
//! persistent sessions go through Raft instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetmq_broker::{DropReason, ForwardedPublish, Forwarder, Metrics};
use fleetmq_rpc::peer as pb;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use openraft::Raft;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::forward_wire::encode_forwarded;
use crate::types::member_addr;
use crate::{NodeId, TypeConfig};

/// Tunables of the forward streams. The defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Messages waiting per destination node before new ones are dropped. Default 16,384.
    pub queue_capacity: usize,
    /// The most messages in one `ForwardBatch`. Default 512.
    pub max_batch: usize,
    /// The first wait before reconnecting a failed link; it doubles per failure up to
    /// `max_backoff`. Default 100 ms.
    pub min_backoff: Duration,
    /// Default 1 s.
    pub max_backoff: Duration,
    /// How long to wait for the TCP connection, and then for the stream to open.
    /// Default 1 s.
    pub connect_timeout: Duration,
    /// HTTP/2 pings on an open stream: a peer that does not answer one within
    /// `keepalive_timeout` is taken as gone even though TCP did not say so (a
    /// partition). Default every 1 s, 3 s timeout.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// The largest gRPC message sent; must not exceed what the peers accept. Default
    /// 64 MiB.
    pub max_message_size: usize,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            queue_capacity: 16_384,
            max_batch: 512,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(3),
            max_message_size: 64 * 1024 * 1024,
        }
    }
}

/// Finds the gRPC address (`host:port`) of a node; `None` when it is not a member.
pub type PeerAddressLookup = Arc<dyn Fn(NodeId) -> Option<String> + Send + Sync>;

/// The state of one link, shared by [`GrpcForwarder::forward`] and the link's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum LinkState {
    /// Opening a stream: messages queue, and go out if it opens.
    Connecting = 0,
    Up = 1,
    /// Waiting to reconnect: messages are dropped at once, so that the queue holds only
    /// fresh ones when the link comes back.
    Down = 2,
}

#[derive(Debug, Default)]
struct SharedLinkState(AtomicU8);

impl SharedLinkState {
    fn get(&self) -> LinkState {
        match self.0.load(Ordering::Acquire) {
            0 => LinkState::Connecting,
            1 => LinkState::Up,
            _ => LinkState::Down,
        }
    }

    fn set(&self, state: LinkState) {
        self.0.store(state as u8, Ordering::Release);
    }
}

/// The router's handle on one destination node's task.
struct PeerLink {
    queue: mpsc::Sender<ForwardedPublish>,
    state: Arc<SharedLinkState>,
}

/// Forwards PUBLISHes to other nodes over `PeerService::Forward`, one stream per node.
///
/// A link's task starts with the first message for its node, and ends when the
/// forwarder is dropped.
pub struct GrpcForwarder {
    node_id: NodeId,
    lookup: PeerAddressLookup,
    metrics: Arc<Metrics>,
    config: ForwarderConfig,
    runtime: tokio::runtime::Handle,
    // A std mutex: it guards only map lookups and `try_send`, never an await.
    links: Mutex<HashMap<NodeId, PeerLink>>,
}

impl std::fmt::Debug for GrpcForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcForwarder")
            .field("node_id", &self.node_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GrpcForwarder {
    /// A forwarder for node `node_id` that finds peers' addresses in the Raft
    /// membership, with the default [`ForwarderConfig`].
    ///
    /// # Panics
    /// Outside a tokio runtime, whose handle it keeps to spawn link tasks.
    pub fn new(node_id: NodeId, raft: Raft<TypeConfig>, metrics: Arc<Metrics>) -> GrpcForwarder {
        let lookup: PeerAddressLookup = Arc::new(move |peer| member_addr(&raft, peer));
        GrpcForwarder::with_address_lookup(node_id, lookup, metrics, ForwarderConfig::default())
    }

    /// A forwarder that asks `lookup` for peers' addresses each time it connects.
    ///
    /// # Panics
    /// Outside a tokio runtime, as [`GrpcForwarder::new`].
    pub fn with_address_lookup(
        node_id: NodeId,
        lookup: PeerAddressLookup,
        metrics: Arc<Metrics>,
        config: ForwarderConfig,
    ) -> GrpcForwarder {
        GrpcForwarder {
            node_id,
            lookup,
            metrics,
            config,
            runtime: tokio::runtime::Handle::current(),
            links: Mutex::default(),
        }
    }

    fn spawn_link(&self, peer: NodeId) -> PeerLink {
        let (queue, receiver) = mpsc::channel(self.config.queue_capacity.max(1));
        let state = Arc::new(SharedLinkState::default());
        let task = LinkTask {
            node_id: self.node_id,
            peer,
            lookup: Arc::clone(&self.lookup),
            metrics: Arc::clone(&self.metrics),
            config: self.config.clone(),
            queue: receiver,
            state: Arc::clone(&state),
        };
        self.runtime.spawn(task.run());
        PeerLink { queue, state }
    }
}

impl Forwarder for GrpcForwarder {
    fn forward(&self, node: u64, publish: ForwardedPublish) {
        if node == self.node_id {
            // The router delivers its own sessions itself; this is a routing bug.
            warn!(
                node_id = self.node_id,
                "asked to forward a message to this node; dropped"
            );
            self.metrics.dropped(DropReason::ForwardQueueFull);
            return;
        }
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let link = links.entry(node).or_insert_with(|| self.spawn_link(node));
        if link.state.get() == LinkState::Down {
            self.metrics.dropped(DropReason::ForwardQueueFull);
            return;
        }
        match link.queue.try_send(publish) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.dropped(DropReason::ForwardQueueFull),
            Err(TrySendError::Closed(_)) => {
                // The task only ends on its own when it panicked: start a new one with
                // the next message.
                warn!(
                    node_id = self.node_id,
                    peer = node,
                    "forward link task ended; restarting it"
                );
                links.remove(&node);
                self.metrics.dropped(DropReason::ForwardQueueFull);
            }
        }
    }
}

/// Why a stream to a peer is not (or no longer) usable.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("node {0} is not in the membership")]
    NoAddress(NodeId),
    #[error("invalid address {addr:?}: {source}")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Status(tonic::Status),
    #[error("the peer closed the stream")]
    Closed,
}

/// How a link's stream ended.
enum StreamEnd {
    /// The forwarder was dropped: the task ends.
    QueueClosed,
    Failed(LinkError),
}

/// An open `Forward` stream: batches go in, acknowledgements come out.
struct OpenStream {
    batches: mpsc::Sender<pb::ForwardBatch>,
    acks: Streaming<pb::ForwardAck>,
}

/// Batches handed to tonic ahead of the socket: enough to keep the stream busy while
/// the next batch is built, few enough that a failed stream loses little.
const STREAM_BUFFER: usize = 2;

struct LinkTask {
    node_id: NodeId,
    peer: NodeId,
    lookup: PeerAddressLookup,
    metrics: Arc<Metrics>,
    config: ForwarderConfig,
    queue: mpsc::Receiver<ForwardedPublish>,
    state: Arc<SharedLinkState>,
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = self.config.min_backoff;
        // Only the first failure after a working link is a warning; retries are debug.
        let mut was_up = true;
        loop {
            self.state.set(LinkState::Connecting);
            let end = match self.connect().await {
                Ok(stream) => {
                    info!(
                        node_id = self.node_id,
                        peer = self.peer,
                        "forward stream open"
                    );
                    self.state.set(LinkState::Up);
                    backoff = self.config.min_backoff;
                    was_up = true;
                    self.pump(stream).await
                }
                Err(error) => StreamEnd::Failed(error),
            };
            let error = match end {
                StreamEnd::QueueClosed => return,
                StreamEnd::Failed(error) => error,
            };
            self.state.set(LinkState::Down);
            let Some(dropped) = self.drop_queued() else {
                return;
            };
            if was_up {
                warn!(
                    node_id = self.node_id,
                    peer = self.peer,
                    %error,
                    dropped,
                    "forward stream down; dropping messages for the node until it is back"
                );
            } else {
                debug!(
                    node_id = self.node_id,
                    peer = self.peer,
                    %error,
                    dropped,
                    "forward stream still down"
                );
            }
            was_up = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
            // What raced into the queue as the link went down is stale by now.
            if self.drop_queued().is_none() {
                return;
            }
        }
    }

    /// Drops and counts everything queued; `None` once the forwarder is gone.
    fn drop_queued(&mut self) -> Option<u64> {
        let mut dropped = 0;
        loop {
            match self.queue.try_recv() {
                Ok(_) => {
                    dropped += 1;
                    self.metrics.dropped(DropReason::ForwardQueueFull);
                }
                Err(TryRecvError::Empty) => return Some(dropped),
                Err(TryRecvError::Disconnected) => return None,
            }
        }
    }

    async fn connect(&self) -> Result<OpenStream, LinkError> {
        let addr = (self.lookup)(self.peer).ok_or(LinkError::NoAddress(self.peer))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| LinkError::InvalidAddress {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.config.keepalive_interval)
            .keep_alive_timeout(self.config.keepalive_timeout)
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| LinkError::Connect { addr, source })?;
        let mut client = PeerServiceClient::new(channel)
            .max_encoding_message_size(self.config.max_message_size)
            .max_decoding_message_size(self.config.max_message_size);
        let (batches, outgoing) = mpsc::channel(STREAM_BUFFER);
        // The call returns once the peer answered the stream's headers: a peer whose
        // router is not running yet refuses here.
        let opened = tokio::time::timeout(
            self.config.connect_timeout,
            client.forward(ReceiverStream::new(outgoing)),
        )
        .await
        .map_err(|_| LinkError::Timeout(self.config.connect_timeout))?
        .map_err(LinkError::Status)?;
        Ok(OpenStream {
            batches,
            acks: opened.into_inner(),
        })
    }

    /// Sends batches until the stream fails or the forwarder is dropped.
    async fn pump(&mut self, stream: OpenStream) -> StreamEnd {
        let OpenStream { batches, mut acks } = stream;
        let mut batch_sequence = 0u64;
        // A batch built from the queue, waiting for room in the stream.
        let mut pending: Option<pb::ForwardBatch> = None;
        loop {
            // Acknowledgements are read all the time, even while waiting for room to
            // send: a peer blocked on sending an ack would otherwise never read again.
            let failure = tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        debug!(
                            peer = self.peer,
                            batch_sequence = ack.batch_sequence,
                            "forward batch acknowledged"
                        );
                        continue;
                    }
                    Ok(None) => LinkError::Closed,
                    Err(status) => LinkError::Status(status),
                },
                permit = batches.reserve(), if pending.is_some() => match (permit, pending.take()) {
                    (Ok(permit), Some(batch)) => {
                        Metrics::add(&self.metrics.forwarded_out, batch.messages.len() as u64);
                        permit.send(batch);
                        continue;
                    }
                    (_, batch) => {
                        // tonic dropped the request stream: the call has failed.
                        pending = batch;
                        LinkError::Closed
                    }
                },
                first = self.queue.recv(), if pending.is_none() => {
                    let Some(first) = first else {
                        return StreamEnd::QueueClosed;
                    };
                    batch_sequence += 1;
                    pending = Some(self.batch(first, batch_sequence));
                    continue;
                }
            };
            if let Some(batch) = pending {
                for _ in &batch.messages {
                    self.metrics.dropped(DropReason::ForwardQueueFull);
                }
            }
            return StreamEnd::Failed(failure);
        }
    }

    /// `first` and whatever else is queued, up to `max_batch` messages.
    fn batch(&mut self, first: ForwardedPublish, batch_sequence: u64) -> pb::ForwardBatch {
        let mut messages = Vec::with_capacity(self.queue.len().min(self.config.max_batch) + 1);
        messages.push(encode_forwarded(&first));
        while messages.len() < self.config.max_batch {
            match self.queue.try_recv() {
                Ok(publish) => messages.push(encode_forwarded(&publish)),
                Err(_) => break,
            }
        }
        pb::ForwardBatch {
            origin_node: self.node_id,
            messages,
            batch_sequence,
        }
    }
}
