//! The node's `PeerService`: PUBLISHes forwarded by other nodes, cluster status,
//! proposals forwarded to the leader, membership changes, and how far this node's
//! router has taken the log. Cross-node takeover
//! arrives with the routing work (docs/cluster-design.md) and answers UNIMPLEMENTED
//! until then.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use fleetmq_broker::{DropReason, Event, Metrics, RoutingView};
use fleetmq_rpc::peer as pb;
use fleetmq_rpc::peer::peer_service_server::{PeerService, PeerServiceServer};
use openraft::Raft;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::forward_wire::decode_forwarded;
use crate::network::admin;
use crate::types::TypeConfig;

/// Where forwarded PUBLISHes go: the router's event channel, set once the router
/// runs. The gRPC server starts before the router exists (Raft needs it to replay the
/// log the router is built from), so the sender is filled in later.
pub type ForwardSink = Arc<OnceLock<mpsc::Sender<Event>>>;

/// What requests from other nodes (and `fleetmq ctl` through them) call on this node's
/// client-serving side; each is set once the node serves clients, and until then the
/// request is answered UNAVAILABLE.
#[derive(Clone, Default)]
pub struct ServingHooks {
    /// `Drain`: starts draining; false if a drain was under way.
    pub drain: Arc<OnceLock<DrainFn>>,
    /// `Kick`: closes a client connected here; false if none is.
    pub kick: Arc<OnceLock<KickFn>>,
}

pub type DrainFn = Arc<dyn Fn() -> bool + Send + Sync>;
pub type KickFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The hook in `cell`, or UNAVAILABLE while the node does not serve clients yet.
fn serving<T>(cell: &OnceLock<T>) -> Result<&T, Status> {
    cell.get()
        .ok_or_else(|| Status::unavailable("this node is not serving clients yet"))
}

/// Acknowledgements buffered per stream; the sender reads them continuously.
const ACK_BUFFER: usize = 16;

/// What the server needs to take forwarded PUBLISHes.
struct ForwardInbox {
    sink: ForwardSink,
    metrics: Arc<Metrics>,
}

/// The longest `AwaitApplied` wait a caller may ask for.
const AWAIT_APPLIED_MAX: Duration = Duration::from_secs(10);

/// Serves `PeerService` for one node.
pub struct PeerGrpcServer {
    raft: Raft<TypeConfig>,
    forward: ForwardInbox,
    view: RoutingView,
    hooks: ServingHooks,
}

impl std::fmt::Debug for PeerGrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerGrpcServer")
            .field("router_attached", &self.forward.sink.get().is_some())
            .finish_non_exhaustive()
    }
}

impl PeerGrpcServer {
    /// A server that hands forwarded PUBLISHes to the router whose sender is set in
    /// `sink`; until it is set, `Forward` and `AwaitApplied` answer UNAVAILABLE (the
    /// sending node retries). `metrics` counts forwarded messages the router could not
    /// take; `view` is how far that router has taken the log.
    pub fn with_forward_sink(
        raft: Raft<TypeConfig>,
        sink: ForwardSink,
        metrics: Arc<Metrics>,
        view: RoutingView,
        hooks: ServingHooks,
    ) -> Self {
        PeerGrpcServer {
            raft,
            forward: ForwardInbox { sink, metrics },
            view,
            hooks,
        }
    }

    pub fn into_service(self, max_message_size: usize) -> PeerServiceServer<Self> {
        PeerServiceServer::new(self)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size)
    }
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardAck, Status>> + Send>>;

/// Hands each batch of one `Forward` stream to the router, in order, and acknowledges
/// it once every message of it is in the router's channel.
///
/// Sending into the router waits when its channel is full: the wait reaches the sending
/// node through HTTP/2 flow control, whose queue then fills and drops. `forwarded_in`
/// is counted by the router as it takes each message.
async fn receive_forwarded(
    mut inbound: Streaming<pb::ForwardBatch>,
    router: mpsc::Sender<Event>,
    acks: mpsc::Sender<Result<pb::ForwardAck, Status>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let batch = tokio::select! {
            // The sender went away: nobody will read the acknowledgements.
            () = acks.closed() => return,
            // This node is shutting down: tell the sender now rather than at its next
            // message, so that it stops sending here.
            () = router.closed() => {
                let _ = acks.send(Err(Status::unavailable("the router has stopped"))).await;
                return;
            }
            next = inbound.message() => match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "forward stream from a peer ended");
                    return;
                }
            },
        };
        let origin_node = batch.origin_node;
        let mut messages = batch.messages.into_iter();
        while let Some(message) = messages.next() {
            let publish = match decode_forwarded(origin_node, message) {
                Ok(publish) => publish,
                Err(error) => {
                    // Another version's encoding: one bad message must not stop the
                    // stream, whose other messages are fine.
                    warn!(origin_node, %error, "dropping a forwarded message that does not decode");
                    continue;
                }
            };
            if router.send(Event::Forwarded(publish)).await.is_err() {
                // The router stopped (this node is shutting down): none of the
                // sessions the rest of the batch is for is here any more.
                for _ in 0..=messages.len() {
                    metrics.dropped(DropReason::NotLocal);
                }
                let _ = acks
                    .send(Err(Status::unavailable("the router has stopped")))
                    .await;
                return;
            }
        }
        let ack = pb::ForwardAck {
            batch_sequence: batch.batch_sequence,
        };
        if acks.send(Ok(ack)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl PeerService for PeerGrpcServer {
    type ForwardStream = AckStream;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let inbox = &self.forward;
        let Some(router) = inbox.sink.get().cloned() else {
            return Err(Status::unavailable("the router is not running yet"));
        };
        let (acks, ack_stream) = mpsc::channel(ACK_BUFFER);
        tokio::spawn(receive_forwarded(
            request.into_inner(),
            router,
            acks,
            Arc::clone(&inbox.metrics),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_stream))))
    }

    async fn takeover(
        &self,
        _request: Request<pb::TakeoverRequest>,
    ) -> Result<Response<pb::TakeoverReply>, Status> {
        Err(Status::unimplemented(
            "session takeover between nodes is not implemented yet",
        ))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        Ok(Response::new(admin::cluster_status(&self.raft)))
    }

    async fn client_write(
        &self,
        request: Request<pb::ClientWriteRequest>,
    ) -> Result<Response<pb::ClientWriteReply>, Status> {
        admin::client_write(&self.raft, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        admin::add_member(&self.raft, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        admin::remove_member(&self.raft, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn drain(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let start = serving(&self.hooks.drain)?;
        Ok(Response::new(pb::DrainReply { started: start() }))
    }

    async fn kick(
        &self,
        request: Request<pb::KickRequest>,
    ) -> Result<Response<pb::KickReply>, Status> {
        let kick = serving(&self.hooks.kick)?;
        let kicked = kick(&request.into_inner().client_id);
        Ok(Response::new(pb::KickReply { kicked }))
    }

    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignReply>, Status> {
        admin::campaign(&self.raft, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn await_applied(
        &self,
        request: Request<pb::AwaitAppliedRequest>,
    ) -> Result<Response<pb::AwaitAppliedReply>, Status> {
        if self.forward.sink.get().is_none() {
            return Err(Status::unavailable("the router is not running yet"));
        }
        let request = request.into_inner();
        let timeout = Duration::from_millis(request.timeout_ms.into()).min(AWAIT_APPLIED_MAX);
        let reached = self.view.wait_for(request.index, timeout).await;
        Ok(Response::new(pb::AwaitAppliedReply {
            reached,
            through: self.view.through(),
        }))
    }
}
