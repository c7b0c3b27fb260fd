//! PUBLISH forwarding between nodes: a real `GrpcForwarder` sending to a real
//! `PeerGrpcServer` on 127.0.0.1, with the test standing in for the receiving router.
//! Waits are generous and nothing asserts on timing.

mod net_common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleetmq_broker::{
    DropReason, Event, ForwardTarget, ForwardedPublish, Forwarder, Message, MessageProperties,
    Metrics,
};
use fleetmq_cluster::{
    ForwardSink, ForwarderConfig, GrpcForwarder, NodeId, PeerAddressLookup, PeerGrpcServer,
    TypeConfig,
};
use fleetmq_codec::QoS;
use net_common::{must_start_node, test_config, TestCluster, WAIT};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Message `i`: every field set, varying with `i`, so that a swapped or mangled
/// message shows.
fn message(i: u64, payload_len: usize) -> ForwardedPublish {
    let mut payload = vec![(i % 251) as u8; payload_len];
    payload.extend_from_slice(&i.to_be_bytes());
    ForwardedPublish {
        origin_node: 1,
        message: Arc::new(Message {
            topic: Arc::from(format!("fleet/{}/state", i % 7)),
            payload: Bytes::from(payload),
            qos: QoS::from_u8((i % 3) as u8).expect("qos"),
            retain: i % 2 == 0,
            properties: MessageProperties {
                payload_format_indicator: Some((i % 2) as u8),
                content_type: Some(format!("type/{i}")),
                response_topic: (i % 3 == 0).then(|| Arc::from(format!("reply/{i}"))),
                correlation_data: Some(Bytes::from(i.to_le_bytes().to_vec())),
                user_properties: vec![("seq".to_owned(), i.to_string())],
            },
            publisher: Some(Arc::from(format!("publisher-{}", i % 5))),
            expires_at_ms: (i % 4 == 0).then_some(1_800_000_000_000 + i),
        }),
        targets: vec![
            ForwardTarget {
                client: Arc::from(format!("sub-{i}")),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![1, (i % 100) as u32],
            },
            ForwardTarget {
                client: Arc::from("sub-all"),
                qos: QoS::AtMostOnce,
                retain: true,
                subscription_ids: vec![],
            },
        ],
    }
}

/// The sequence number a message from [`message`] carries at the end of its payload.
fn sequence_of(publish: &ForwardedPublish) -> u64 {
    let payload = &publish.message.payload;
    let tail: [u8; 8] = payload[payload.len() - 8..]
        .try_into()
        .expect("eight bytes");
    u64::from_be_bytes(tail)
}

/// The next forwarded message the "router" got, within [`WAIT`].
async fn must_receive(router: &mut mpsc::Receiver<Event>) -> ForwardedPublish {
    match tokio::time::timeout(WAIT, router.recv()).await {
        Ok(Some(Event::Forwarded(publish))) => publish,
        Ok(Some(_)) => panic!("the server sent the router something else than Forwarded"),
        Ok(None) => panic!("the router channel closed"),
        Err(_) => panic!("nothing forwarded within {WAIT:?}"),
    }
}

/// Polls `condition` every 20 ms until it holds, for at most [`WAIT`].
async fn must_eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// A `PeerService` with a forward sink on a fixed port, that can be stopped and started
/// again on the same port.
struct ForwardServer {
    addr: SocketAddr,
    raft: Raft<TypeConfig>,
    running: Option<(oneshot::Sender<()>, ServerTask)>,
}

impl ForwardServer {
    async fn must_start(raft: Raft<TypeConfig>, sink: ForwardSink) -> ForwardServer {
        let mut server = ForwardServer {
            addr: "127.0.0.1:0".parse().expect("address"),
            raft,
            running: None,
        };
        server.must_restart(sink).await;
        server
    }

    /// Serves on `self.addr` (a new port the first time) with `sink`.
    async fn must_restart(&mut self, sink: ForwardSink) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e}", self.addr));
        self.addr = listener.local_addr().expect("local addr");
        let service = PeerGrpcServer::with_forward_sink(
            self.raft.clone(),
            sink,
            Arc::new(Metrics::default()),
            fleetmq_broker::RoutingView::default(),
            Default::default(),
        )
        .into_service(MAX_MESSAGE);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stopped.await;
                }),
        );
        self.running = Some((stop, handle));
    }

    /// Stops the server; the caller drops its router receiver first, which ends the open
    /// streams, so the graceful shutdown does not wait for them.
    async fn must_stop(&mut self) {
        let (stop, handle) = self.running.take().expect("server running");
        let _ = stop.send(());
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

/// An address lookup the test points where it wants.
fn fixed_lookup(addr: SocketAddr) -> (PeerAddressLookup, Arc<Mutex<Option<String>>>) {
    let current = Arc::new(Mutex::new(Some(addr.to_string())));
    let shared = Arc::clone(&current);
    let lookup: PeerAddressLookup =
        Arc::new(move |_node: NodeId| shared.lock().expect("lookup lock").clone());
    (lookup, current)
}

/// A sink already connected to a fresh "router" channel of `capacity`.
fn router_sink(capacity: usize) -> (ForwardSink, mpsc::Receiver<Event>) {
    let sink = ForwardSink::default();
    let (tx, rx) = mpsc::channel(capacity);
    assert!(sink.set(tx).is_ok(), "fresh sink");
    (sink, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_peer_in_order_with_every_field_and_target() {
    let cluster = TestCluster::must_start_initialized(2, test_config()).await;
    let (router_tx, mut router) = mpsc::channel(64);
    assert!(cluster.node(2).forward_sink.set(router_tx).is_ok());

    let metrics = Arc::new(Metrics::default());
    // The address of node 2 comes from the Raft membership.
    let forwarder = GrpcForwarder::new(1, cluster.node(1).raft.clone(), Arc::clone(&metrics));

    const COUNT: u64 = 3_000;
    let sender = tokio::spawn({
        async move {
            for i in 0..COUNT {
                forwarder.forward(2, message(i, 16));
                // Stay below the queue's capacity: this test is about order and fields.
                if i % 1_000 == 999 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            forwarder
        }
    });
    for i in 0..COUNT {
        let received = must_receive(&mut router).await;
        let expected = message(i, 16);
        assert_eq!(sequence_of(&received), i, "messages out of order");
        assert_eq!(received.origin_node, 1);
        assert_eq!(received.message, expected.message, "message {i}");
        assert_eq!(received.targets, expected.targets, "targets of message {i}");
    }
    let _forwarder = sender.await.expect("sender task");
    assert_eq!(metrics.forwarded_out.load(Ordering::Relaxed), COUNT);
    assert_eq!(metrics.dropped_count(DropReason::ForwardQueueFull), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_and_what_was_sent_arrives_in_order() {
    let node = must_start_node(
        9,
        Arc::new(test_config().validate().expect("config")),
        Default::default(),
    )
    .await;
    // A router that takes one message and then nothing until the test reads.
    let (sink, mut router) = router_sink(1);
    let server = ForwardServer::must_start(node.raft.clone(), sink).await;
    let (lookup, _) = fixed_lookup(server.addr);
    let metrics = Arc::new(Metrics::default());
    let config = ForwarderConfig {
        queue_capacity: 64,
        max_batch: 8,
        ..ForwarderConfig::default()
    };
    let forwarder = GrpcForwarder::with_address_lookup(1, lookup, Arc::clone(&metrics), config);

    // Open the link first, so that what follows meets a stalled stream, not a
    // connecting one.
    forwarder.forward(2, message(0, 4096));
    let first = must_receive(&mut router).await;
    assert_eq!(sequence_of(&first), 0);

    // Flow control stops the stream once the server waits on the router; then the
    // queue fills and the rest is dropped without the caller ever waiting.
    const TOTAL: u64 = 5_000;
    for i in 1..TOTAL {
        forwarder.forward(2, message(i, 4096));
    }
    let dropped = metrics.dropped_count(DropReason::ForwardQueueFull);
    assert!(dropped > 0, "a stalled peer must make the queue drop");

    // Everything not dropped arrives, in order, once the router reads again.
    let mut received = 1;
    let mut last = 0;
    loop {
        let sent = metrics.forwarded_out.load(Ordering::Relaxed);
        let dropped = metrics.dropped_count(DropReason::ForwardQueueFull);
        if sent + dropped == TOTAL && received == sent {
            break;
        }
        let publish = must_receive(&mut router).await;
        let sequence = sequence_of(&publish);
        assert!(sequence > last, "message {sequence} after {last}");
        last = sequence;
        received += 1;
    }
    assert!(received < TOTAL, "some messages were dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_waits_for_the_router_and_reconnects_after_the_peer_restarts() {
    let node = must_start_node(
        9,
        Arc::new(test_config().validate().expect("config")),
        Default::default(),
    )
    .await;
    // The peer's router is not running yet: Forward answers UNAVAILABLE.
    let sink = ForwardSink::default();
    let mut server = ForwardServer::must_start(node.raft.clone(), Arc::clone(&sink)).await;
    let (lookup, _) = fixed_lookup(server.addr);
    let metrics = Arc::new(Metrics::default());
    let forwarder = GrpcForwarder::with_address_lookup(
        1,
        lookup,
        Arc::clone(&metrics),
        ForwarderConfig::default(),
    );
    forwarder.forward(2, message(0, 8));
    must_eventually("the refused stream drops the queued message", || {
        metrics.dropped_count(DropReason::ForwardQueueFull) >= 1
    })
    .await;

    // The router starts: messages flow once the forwarder has retried.
    let (router_tx, mut router) = mpsc::channel(1024);
    assert!(sink.set(router_tx).is_ok());
    let first = must_deliver_after_link_is_back(&forwarder, &mut router, 1).await;

    // The peer restarts on the same port: the old stream fails, the new one opens.
    drop(router);
    server.must_stop().await;
    let (sink, mut router) = router_sink(1024);
    server.must_restart(sink).await;
    let second = must_deliver_after_link_is_back(&forwarder, &mut router, first + 1).await;

    // And the new stream keeps order.
    for i in second + 1..second + 100 {
        forwarder.forward(2, message(i, 8));
    }
    for i in second + 1..second + 100 {
        assert_eq!(sequence_of(&must_receive(&mut router).await), i);
    }
}

/// Forwards messages numbered from `from`, one every 50 ms (those sent while the link
/// is down are dropped), until one arrives; returns the last number sent.
async fn must_deliver_after_link_is_back(
    forwarder: &GrpcForwarder,
    router: &mut mpsc::Receiver<Event>,
    from: u64,
) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut next = from;
    loop {
        forwarder.forward(2, message(next, 8));
        next += 1;
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(50), router.recv()).await
        {
            let Event::Forwarded(publish) = event else {
                panic!("the server sent the router something else than Forwarded");
            };
            let got = sequence_of(&publish);
            assert!((from..next).contains(&got), "unexpected message {got}");
            // Drain what is in flight, so the caller starts from a clean stream.
            let mut last = got;
            while let Ok(Some(Event::Forwarded(publish))) =
                tokio::time::timeout(Duration::from_millis(200), router.recv()).await
            {
                let sequence = sequence_of(&publish);
                assert!(sequence > last, "message {sequence} after {last}");
                last = sequence;
            }
            return next - 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forwarder did not deliver again within {WAIT:?}"
        );
    }
}
