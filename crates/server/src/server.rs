//! Starts a node: storage, the broker core, the MQTT and admin listeners; and
//! stops it by draining (crate::drain): stop accepting, move the clients, let the
//! core flush, hand Raft leadership over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetmq_broker::{
    persist, BrokerParts, BrokerService, Forwarder, LocalCommitter, Metrics, NoForwarder,
    RoutingView,
};
use fleetmq_cluster::{GrpcForwarder, NodeOptions, RaftCommitter, RaftNode};
use fleetmq_kafka::{BridgeMetrics, Egress, Ingress, KafkaConfig};
use fleetmq_storage::{KvEngine, MemoryEngine, SledEngine};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::access::AccessMetrics;
use crate::admin::{serve_admin, AdminRaft, AdminState};
use crate::clients::ConnectedClients;
use crate::config::{StorageEngineKind, ValidConfig};
use crate::connection::ConnectionContext;
use crate::drain::Drain;
use crate::limits::LimitMetrics;
use crate::listener::{run_listener, ListenerMetrics, ListenersMetrics, REFUSALS_AT_ONCE};

/// Capacity of the channel from connection tasks to the router.
const ROUTER_EVENTS: usize = 16 * 1024;
/// Applied Raft entries waiting for the router; apply waits beyond this.
const APPLIED_QUEUE: usize = 1024;
/// The broker core's time for its last writes once the clients have gone.
const LAST_WRITES: Duration = Duration::from_secs(5);

pub async fn run(
    config: ValidConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    // With sled, every durable write goes through the node's Raft group (one member
    // for a single node); the memory engine keeps nothing and commits locally.
    let (broker, raft_node) = match config.storage {
        StorageEngineKind::Sled => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
            let raft_dir = config.data_dir.join("raft");
            let snapshot_file = raft_dir.join(fleetmq_cluster::SNAPSHOT_FILE);
            // Releases before this one kept the state machine in a sled store: its
            // state becomes the snapshot file the node starts from.
            let store = config.data_dir.join("store");
            let adopted = {
                let (from, file) = (store.clone(), snapshot_file.clone());
                tokio::task::spawn_blocking(move || {
                    fleetmq_cluster::adopt_engine_store(&from, &file, persist::TREES)
                })
                .await
                .context("the store upgrade task failed")?
                .with_context(|| {
                    format!(
                        "cannot move the state kept in {} into {} (is another fleetmq using this data_dir?)",
                        store.display(),
                        snapshot_file.display()
                    )
                })?
            };
            if let Some(renamed) = adopted {
                info!(
                    from = %renamed.display(),
                    to = %snapshot_file.display(),
                    "the state kept by an earlier release is now this node's snapshot file; the old store may be deleted"
                );
            }
            // The state machine lives in memory; the Raft log and the snapshot file are
            // what survives a restart (docs/cluster-design.md).
            let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
            let mut members = config.peers.clone();
            members
                .entry(config.node_id)
                .or_insert_with(|| config.grpc_listen.to_string());
            let mut node = RaftNode::start(NodeOptions {
                node_id: config.node_id,
                dir: raft_dir,
                engine: engine.clone(),
                durability: fleetmq_cluster::Durability::SnapshotFile(snapshot_file),
                trees: persist::TREES,
                grpc_listen: config.grpc_listen,
                members,
                metrics: metrics.clone(),
            })
            .await
            .with_context(|| {
                format!(
                    "cannot start the raft group (cluster.grpc_listen {}, data_dir {})",
                    config.grpc_listen,
                    config.data_dir.display()
                )
            })?;
            let (applied_tx, applied_rx) = tokio::sync::mpsc::channel(APPLIED_QUEUE);
            let snapshot = node
                .attach_feed(applied_tx)
                .await
                .context("cannot load the stored state")?;
            let forwarder: Arc<dyn Forwarder> = Arc::new(GrpcForwarder::new(
                config.node_id,
                node.raft.clone(),
                metrics.clone(),
            ));
            let broker = BrokerService::start(BrokerParts {
                config: config.broker.clone(),
                snapshot,
                engine,
                committer: RaftCommitter::new(node.raft.clone()),
                forwarder,
                metrics: metrics.clone(),
                event_capacity: ROUTER_EVENTS,
                applied: Some(applied_rx),
                sweeps: {
                    let raft = node.raft.clone();
                    let me = config.node_id;
                    Arc::new(move || raft.metrics().borrow().current_leader == Some(me))
                },
                view: node.routing_view(),
                visibility: Some(node.visibility()),
            });
            node.attach_router(broker.events());
            (broker, Some(node))
        }
        StorageEngineKind::Memory => {
            let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
            let broker = BrokerService::start(BrokerParts {
                config: config.broker.clone(),
                snapshot: persist::Snapshot::default(),
                engine: engine.clone(),
                committer: LocalCommitter::new(engine),
                forwarder: Arc::new(NoForwarder),
                metrics: metrics.clone(),
                event_capacity: ROUTER_EVENTS,
                applied: None,
                sweeps: Arc::new(|| true),
                view: RoutingView::default(),
                visibility: None,
            });
            (broker, None)
        }
    };

    let mut mqtt = Vec::with_capacity(config.listeners.len());
    for (i, spec) in config.listeners.iter().enumerate() {
        let listener = listen(spec.listen, config.listen_backlog).with_context(|| {
            // The first is mqtt.listen when that is set; the rest are [[listeners]].
            let key = if &*spec.name == "mqtt" && i == 0 {
                "mqtt.listen".to_string()
            } else {
                format!("listener {:?}", spec.name)
            };
            format!("cannot listen for MQTT on {} ({key})", spec.listen)
        })?;
        info!(
            listener = %spec.name,
            transport = spec.transport(),
            addr = %listener.local_addr()?,
            proxy_protocol = spec.proxy_protocol,
            "mqtt listener ready"
        );
        mqtt.push((listener, Arc::new(spec.clone())));
    }
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for admin HTTP on {} (admin.listen)",
                config.admin_listen
            )
        })?;
    info!(
        node_id = config.node_id,
        admin = %admin.local_addr()?,
        data_dir = %config.data_dir.display(),
        storage = ?config.storage,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "fleetmq listening"
    );
    info!(
        grpc = %raft_node.as_ref().map_or(config.grpc_listen, |node| node.grpc_addr),
        raft = raft_node.is_some(),
        members = config.peers.len().max(1),
        "cluster links ready"
    );

    let bridge = match &config.kafka {
        Some(kafka) => Some(start_bridge(&config, kafka, broker.events())?),
        None => None,
    };
    let (egress, ingress) = match bridge {
        Some((egress, ingress, metrics)) => (Some((egress, metrics)), Some(ingress)),
        None => (None, None),
    };
    // Listeners stop when the drain starts; the admin API answers until the end.
    let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let clients = Arc::new(ConnectedClients::default());
    let drain = Drain::new(config.drain.clone(), clients.clone());
    let limits = Arc::new(LimitMetrics::default());
    let rules = crate::rules::follow(
        config.acl_config.clone(),
        config.acl.clone(),
        broker.settings(),
    );
    let listener_metrics = Arc::new(ListenersMetrics {
        listeners: mqtt
            .iter()
            .map(|(_, spec)| {
                (
                    spec.name.clone(),
                    spec.transport(),
                    Arc::new(ListenerMetrics::default()),
                )
            })
            .collect(),
    });
    let access_metrics = Arc::new(AccessMetrics::default());
    let admin_task = tokio::spawn(serve_admin(
        admin,
        Arc::new(AdminState {
            node_id: config.node_id,
            metrics: metrics.clone(),
            bridge: egress.as_ref().map(|(_, m)| m.clone()),
            listeners: listener_metrics.clone(),
            access: access_metrics.clone(),
            raft: raft_node.as_ref().map(|node| AdminRaft {
                group: node.raft.clone(),
                committed_index: node.committed_index.clone(),
            }),
            drain: drain.clone(),
            storage_failure: broker.storage_failure(),
            clients: clients.clone(),
            events: broker.events(),
            api_token: config.api_token.clone(),
            rules: rules.clone(),
            limits: limits.clone(),
            auth: config.auth.clone(),
        }),
        admin_stop_rx,
    ));
    if let Some(node) = &raft_node {
        let drain = drain.clone();
        node.attach_drain(Arc::new(move || {
            drain.start("drain request from the cluster")
        }));
        let clients = clients.clone();
        node.attach_kick(Arc::new(move |client_id| clients.kick(client_id)));
    }
    let egress = egress.map(|(e, _)| e);
    let ctx = Arc::new(ConnectionContext {
        events: broker.events(),
        metrics: metrics.clone(),
        next_conn_id: AtomicU64::new(1),
        config: config.clone(),
        egress: egress.clone(),
        access: access_metrics.clone(),
        drain: drain.clone(),
        clients: clients.clone(),
        rules: rules.clone(),
        limits: limits.clone(),
    });
    // One limit for the node, shared by its listeners.
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut accepting = Vec::with_capacity(mqtt.len());
    for ((listener, spec), (_, _, counters)) in mqtt.into_iter().zip(&listener_metrics.listeners) {
        accepting.push(tokio::spawn(run_listener(
            listener,
            spec,
            ctx.clone(),
            slots.clone(),
            refusals.clone(),
            counters.clone(),
            accept_stop_rx.clone(),
        )));
    }
    let reloads = tokio::spawn(reload_on_sighup(config.auth.clone()));
    let mut storage_failure = broker.storage_failure();
    let failed = async {
        match storage_failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => std::future::pending().await,
        }
    };
    // A node that cannot store drains like one told to leave: clients move to nodes
    // that can and its listeners close; then it waits to be restarted, and exits with
    // an error when it is.
    let mut storage_error = None;
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => {
            drain.start("signal");
        }
        _ = drain.started() => {}
        reason = failed => {
            drain.start("storage failed");
            storage_error = reason;
        }
    }
    let order = drain.started().await;
    reloads.abort();
    let _ = accept_stop_tx.send(true);
    for task in accepting {
        let _ = task.await;
    }
    // Connection tasks hold permits: all are back once every client was told to move.
    // The core's last writes and the handover keep their share of the drain's time.
    let connections_done = order.started
        + (order.plan.timeout.saturating_sub(LAST_WRITES)).max(order.window + LAST_WRITES);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(connections_done, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            left = metrics.connections_current.load(Ordering::Relaxed),
            "connections still open at the end of the drain's time; closing anyway"
        );
    }
    if let Some(reason) = &storage_error {
        // Its clients have moved on and its listeners are closed; it stays up, failing
        // /healthz and /readyz with the reason and showing fleetmq_storage_failed, until
        // it is stopped (Kubernetes' liveness probe restarts it): a process that exited
        // would leave nothing to ask why.
        error!(
            %reason,
            "storage failed: no client is served until this node is restarted with room in its data directory"
        );
        stop.await;
    }
    drop(ctx);
    let broker_failure = broker.storage_failure();
    // A node without quorum cannot commit its last rounds; do not hang on them.
    if tokio::time::timeout(LAST_WRITES, broker.shutdown())
        .await
        .is_err()
    {
        warn!("the broker core did not finish its last writes within 5 s; stopping anyway");
    }
    if let Some(ingress) = ingress {
        ingress.shutdown().await;
    }
    if let Some(egress) = &egress {
        egress.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(node) = raft_node {
        node.shutdown().await;
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    info!(
        took_ms = order.started.elapsed().as_millis() as u64,
        "drained and stopped"
    );
    if let Some(reason) = storage_error.or_else(|| broker_failure.borrow().clone()) {
        anyhow::bail!(
            "storage failed ({reason}): the node drained and stopped; make room in the data \
             directory and start it again (docs/operations.md)"
        );
    }
    Ok(())
}

/// Reads the password file again on every SIGHUP, as Mosquitto does.
async fn reload_on_sighup(auth: Arc<fleetmq_auth::Authenticator>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP; the password file reloads through the admin API only");
            return;
        };
        while hangups.recv().await.is_some() {
            let _ = crate::access::reload_passwords(&auth, "SIGHUP");
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Opens the Kafka outbox (on disk with sled storage, in memory otherwise), starts
/// producing what it holds, and starts consuming for the ingress rules into `events`.
fn start_bridge(
    config: &ValidConfig,
    kafka: &KafkaConfig,
    events: tokio::sync::mpsc::Sender<fleetmq_broker::Event>,
) -> anyhow::Result<(Arc<Egress>, Ingress, Arc<BridgeMetrics>)> {
    let engine: Arc<dyn KvEngine> =
        match config.storage {
            StorageEngineKind::Sled => {
                let path = config.data_dir.join("kafka-outbox");
                Arc::new(SledEngine::open(&path).with_context(|| {
                    format!("cannot open the kafka outbox in {}", path.display())
                })?)
            }
            StorageEngineKind::Memory => Arc::new(MemoryEngine::new()),
        };
    let egress_names: Vec<Arc<str>> = kafka
        .rules()
        .context("kafka")?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let ingress_names: Vec<Arc<str>> = kafka
        .ingress_rules()
        .context("kafka")?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let metrics = Arc::new(BridgeMetrics::for_rules(&egress_names).with_ingress(&ingress_names));
    let egress = Egress::start(kafka, engine, metrics.clone()).with_context(|| {
        format!(
            "cannot start the kafka bridge ({})",
            kafka.bootstrap_servers
        )
    })?;
    let ingress = Ingress::start(kafka, events, metrics.clone()).with_context(|| {
        format!(
            "cannot start the kafka ingress ({})",
            kafka.bootstrap_servers
        )
    })?;
    info!(
        egress_rules = egress_names.len(),
        ingress_rules = ingress_names.len(),
        bootstrap = %kafka.bootstrap_servers,
        "kafka bridge started"
    );
    Ok((egress, ingress, metrics))
}

/// A listening socket with room for `backlog` connections not yet accepted (the
/// kernel caps it at `net.core.somaxconn`). In a reconnect storm the accept loop falls
/// behind; a connection the queue has no room for loses its SYN, and the client sends
/// it again only after a second.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's `bind` do: a restarted broker rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
