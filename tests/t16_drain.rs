//! Drain (crates/server/src/drain.rs) with real processes: SIGTERM on the leader of
//! a three-node cluster tells its MQTT 5 clients to move (DISCONNECT 0x8B), keeps
//! their sessions for the node they reconnect to, hands Raft leadership to another
//! node and exits cleanly; `fleetmq ctl members drain ID` asked of one node drains
//! another. The clients are rumqttc's.

use std::time::Duration;

use fleetmq_tests::cluster::ctl;
use fleetmq_tests::{unique_id, v5_options, Cluster, V5Client};
use rumqttc::v5::mqttbytes::QoS;

/// MQTT 5 "Server shutting down".
const SERVER_SHUTTING_DOWN: u8 = 0x8B;

async fn persistent_client(cluster: &Cluster, node: u64, client_id: &str) -> V5Client {
    let mut o = v5_options(cluster.node(node), client_id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    V5Client::must_connect_with(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_moves_its_clients_keeps_their_sessions_and_hands_leadership_over() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let topic = format!("t16/{}", unique_id("drain"));

    let ids: Vec<String> = (0..2)
        .map(|i| unique_id(&format!("t16-drain-{i}")))
        .collect();
    let mut clients = Vec::new();
    for id in &ids {
        let mut c = persistent_client(&cluster, leader, id).await;
        c.must_subscribe(&topic, QoS::AtLeastOnce).await;
        clients.push(c);
    }

    let exited_cleanly = cluster.stop(leader);
    assert!(
        exited_cleanly,
        "node {leader} should exit on SIGTERM within 10 s\n{}",
        cluster.node(leader).log_tail(40)
    );
    for c in clients.iter_mut() {
        assert_eq!(
            c.wait_server_disconnect(Duration::from_secs(5)).await,
            Some(SERVER_SHUTTING_DOWN),
            "{}: the draining node should say DISCONNECT 0x8B",
            c.client_id
        );
    }
    let log = cluster.node(leader).log_tail(60);
    let handover = log
        .lines()
        .find(|l| l.contains("handed raft leadership over"));
    let Some(handover) = handover else {
        panic!("the leaving leader should hand leadership over:\n{log}");
    };
    eprintln!("node {leader}: {handover}");
    assert!(log.contains("drained and stopped"), "{log}");
    let new_leader = cluster.must_agree_on_leader(&others);
    assert_ne!(new_leader, leader);

    // While the clients are away, a QoS 1 message for them is accepted by the others.
    let publisher_node = others[0];
    let mut publisher =
        V5Client::must_connect(cluster.node(publisher_node), &unique_id("t16-pub")).await;
    publisher
        .must_publish(&topic, QoS::AtLeastOnce, false, "while-moving")
        .await;
    publisher.disconnect().await;

    for (i, id) in ids.iter().enumerate() {
        let node = others[i % others.len()];
        let mut c = persistent_client(&cluster, node, id).await;
        assert!(
            c.connack.session_present,
            "{id}: its session should be resumed on node {node}"
        );
        let p = c.must_recv_publish(Duration::from_secs(10)).await;
        assert_eq!(&p.payload[..], b"while-moving", "{id}");
        c.disconnect().await;
    }

    cluster.restart(leader);
    cluster.must_agree_on_leader(&cluster.ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_members_drain_through_one_node_drains_another() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let mut c = V5Client::must_connect(cluster.node(follower), &unique_id("t16-ctl")).await;

    let admin = cluster.node(leader).admin_addr.to_string();
    let id = follower.to_string();
    let out = ctl(
        &[
            "members", "drain", &id, "--admin", &admin, "--output", "json",
        ],
        Duration::from_secs(20),
    )
    .expect("run fleetmq ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(reply["node_id"], follower);
    assert_eq!(reply["started"], true);

    assert_eq!(
        c.wait_server_disconnect(Duration::from_secs(10)).await,
        Some(SERVER_SHUTTING_DOWN)
    );
    let status = cluster.wait_exit(follower, Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "node {follower} should exit 0 after the drain, got {status:?}\n{}",
        cluster.node(follower).log_tail(40)
    );
    let rest: Vec<u64> = cluster.live_ids();
    assert_eq!(cluster.must_agree_on_leader(&rest), leader);
}
