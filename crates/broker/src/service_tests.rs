//! The broker core with its router, gates and committer running: what goes out when.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_codec::{ProtocolVersion, QoS};
use fleetmq_storage::MemoryEngine;
use fleetmq_topic::TopicFilter;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{ConnectionEnd, ConnectionHandle, Next, Outgoing};
use crate::metrics::Metrics;
use crate::peer::NoForwarder;
use crate::persist::Snapshot;
use crate::router::{ConnectRequest, Event};
use crate::router_tests::{opts, publish};
use crate::service::{BrokerParts, BrokerService, CommitError, Committer, RoutingView};
use crate::BrokerConfig;

/// Writes to memory until told to stall, then never resolves: a node cut off from
/// the majority, whose durable writes wait for as long as the partition lasts.
struct StallingCommitter {
    engine: Arc<MemoryEngine>,
    stalled: Arc<AtomicBool>,
}

impl Committer for StallingCommitter {
    fn commit(
        &mut self,
        commands: Vec<crate::command::Command>,
    ) -> impl Future<Output = Result<u64, CommitError>> + Send {
        let stalled = self.stalled.load(Ordering::SeqCst);
        let written = crate::command::apply_all(&self.engine, &commands);
        async move {
            if stalled {
                std::future::pending::<()>().await;
            }
            written?;
            Ok(0)
        }
    }
}

async fn next_item(end: &mut ConnectionEnd) -> Option<Outgoing> {
    match tokio::time::timeout(Duration::from_secs(5), end.next()).await {
        Ok(Next::Item(item)) => Some(item),
        _ => None,
    }
}

async fn connect(events: &mpsc::Sender<Event>, conn: u64, id: &str, clean: bool) -> ConnectionEnd {
    let (handle, end) = ConnectionHandle::new(conn, 64);
    let (reply, replied) = oneshot::channel();
    events
        .send(Event::Connect {
            conn: handle,
            request: ConnectRequest {
                client_id: Arc::from(id),
                protocol: ProtocolVersion::V5,
                clean_start: clean,
                session_expiry_interval: if clean { 0 } else { 600 },
                receive_maximum: u16::MAX,
                will: None,
            },
            reply,
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), replied)
        .await
        .expect("CONNACK decision")
        .expect("router alive");
    end
}

async fn subscribe(events: &mpsc::Sender<Event>, conn: u64, end: &mut ConnectionEnd, filter: &str) {
    events
        .send(Event::Subscribe {
            conn,
            packet_id: 1,
            filters: vec![Ok((
                TopicFilter::parse(filter).unwrap(),
                opts(QoS::AtLeastOnce),
            ))],
            subscription_id: None,
        })
        .await
        .unwrap();
    assert!(next_item(end).await.is_some(), "SUBACK");
}

/// What CI once caught on a node cut off from its cluster: the router took a durable
/// PUBLISH and a clean session's QoS 0 message in one pass, and the QoS 0 message
/// waited behind a write that could not commit. Sent before the router runs (one
/// thread), the events are surely taken in one pass.
#[tokio::test(flavor = "current_thread")]
async fn a_write_that_cannot_commit_holds_back_only_what_depends_on_it() {
    let engine = Arc::new(MemoryEngine::new());
    let stalled = Arc::new(AtomicBool::new(false));
    let service = BrokerService::start(BrokerParts {
        config: BrokerConfig::default(),
        snapshot: Snapshot::default(),
        engine: engine.clone(),
        committer: StallingCommitter {
            engine: engine.clone(),
            stalled: stalled.clone(),
        },
        forwarder: Arc::new(NoForwarder),
        metrics: Arc::new(Metrics::default()),
        event_capacity: 64,
        applied: None,
        sweeps: Arc::new(|| false),
        view: RoutingView::default(),
        visibility: None,
    });
    let events = service.events();
    let mut durable_sub = connect(&events, 1, "durable-sub", false).await;
    subscribe(&events, 1, &mut durable_sub, "d/#").await;
    let mut clean_sub = connect(&events, 2, "clean-sub", true).await;
    subscribe(&events, 2, &mut clean_sub, "c/#").await;
    let mut durable_pub = connect(&events, 3, "durable-pub", true).await;
    let mut clean_pub = connect(&events, 4, "clean-pub", true).await;

    stalled.store(true, Ordering::SeqCst);
    for (conn, publish) in [
        (3, publish("d/x", "stored", QoS::AtLeastOnce, false, 7)),
        (4, publish("c/x", "q0", QoS::AtMostOnce, false, 0)),
        (4, publish("c/x", "q1", QoS::AtLeastOnce, false, 1)),
    ] {
        events.try_send(Event::Publish { conn, publish }).unwrap();
    }

    for want in ["q0", "q1"] {
        match next_item(&mut clean_sub).await {
            Some(Outgoing::Publish(p)) => assert_eq!(p.message.payload, want),
            other => panic!("expected {want} on the clean session, got {other:?}"),
        }
    }
    assert!(
        matches!(
            next_item(&mut clean_pub).await,
            Some(Outgoing::Ack { packet_id: 1, .. })
        ),
        "the clean publisher's QoS 1 needs no write: acknowledged"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), durable_pub.next())
            .await
            .is_err(),
        "a PUBLISH for a persistent session is not acknowledged before it is stored"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), durable_sub.next())
            .await
            .is_err(),
        "nor delivered"
    );
}

/// Commits at once, at index 0 (which every router has taken) until `later` is set,
/// then at an index the test's router is never told about.
struct IndexedCommitter {
    engine: Arc<MemoryEngine>,
    later: Arc<AtomicBool>,
}

impl Committer for IndexedCommitter {
    fn commit(
        &mut self,
        commands: Vec<crate::command::Command>,
    ) -> impl Future<Output = Result<u64, CommitError>> + Send {
        let written = crate::command::apply_all(&self.engine, &commands);
        let index = if self.later.load(Ordering::SeqCst) {
            100
        } else {
            0
        };
        async move {
            written?;
            Ok(index)
        }
    }
}

/// Whether the log refused a PUBLISH is known only once this node's router takes the
/// entry; a router that has not within its time must not let the PUBLISH's outputs go
/// (they would deliver a message the log refused: a QoS 2 message twice).
// Real time (12 s): the router's timers read the system clock, which a paused tokio
// clock leaves behind.
#[tokio::test(flavor = "current_thread")]
async fn outputs_a_refusal_could_withdraw_wait_for_the_router_and_never_go_without_it() {
    let engine = Arc::new(MemoryEngine::new());
    let later = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());
    let (applied_tx, applied_rx) = mpsc::channel(16);
    applied_tx
        .send(crate::router::Applied::Members(3))
        .await
        .unwrap();
    let service = BrokerService::start(BrokerParts {
        config: BrokerConfig::default(),
        snapshot: Snapshot::default(),
        engine: engine.clone(),
        committer: IndexedCommitter {
            engine: engine.clone(),
            later: later.clone(),
        },
        forwarder: Arc::new(NoForwarder),
        metrics: metrics.clone(),
        event_capacity: 64,
        applied: Some(applied_rx),
        sweeps: Arc::new(|| false),
        view: RoutingView::default(),
        visibility: None,
    });
    let events = service.events();
    let mut sub = connect(&events, 1, "sub", false).await;
    subscribe(&events, 1, &mut sub, "t/#").await;
    let mut publisher = connect(&events, 2, "pub", false).await;

    later.store(true, Ordering::SeqCst);
    events
        .send(Event::Publish {
            conn: 2,
            publish: publish("t/x", "fenced", QoS::AtLeastOnce, false, 9),
        })
        .await
        .unwrap();

    // Past the router's time (10 s).
    assert!(
        tokio::time::timeout(Duration::from_secs(12), publisher.next())
            .await
            .is_err(),
        "no PUBACK before the router knows the PUBLISH was not refused"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err(),
        "nor a delivery"
    );
    assert_eq!(
        metrics
            .outputs_withdrawn
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the PUBACK and the delivery are withheld and counted"
    );
    drop(applied_tx);
}
