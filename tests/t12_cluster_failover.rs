//! Node failure in a three-node cluster (ARCHITECTURE.md, "The promise"): while
//! publishers on every node stream QoS 1 and QoS 2 messages to persistent
//! subscribers on every node, one node dies (SIGKILL) or every node restarts in
//! turn. Every message whose PUBACK/PUBREC its publisher received reaches every
//! subscriber; QoS 2 is never delivered twice; each publisher's messages of one QoS
//! arrive in order (first deliveries: QoS 1 may be redelivered); a subscriber whose
//! node died resumes its session on a survivor (session_present = 1); retained
//! messages and subscriptions survive; writes resume within seconds; the restarted
//! node catches up; wills of the dead node's clients are published by the cluster.
//!
//! Publishers and subscribers are `cluster::Publisher` and
//! `cluster::DurableSubscriber`: raw MQTT 3.1.1 clients that reconnect by themselves
//! (to their node, else the next one) and keep QoS 2 receive state across
//! connections as a compliant client must. A message is never resent after a lost
//! connection, so a QoS 2 payload delivered twice is the broker's doing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ProtocolVersion, QoS as CQoS};
use fleetmq_tests::cluster::{
    check_delivery, wait_delivered, wait_more_acked, warm_up, DurableSubscriber, Publisher,
    PublisherSpec,
};
use fleetmq_tests::raw::{connect_packet, publish_packet};
use fleetmq_tests::{
    text, unique_id, v4_options, v5_options, Cluster, RawClient, Recv, V4Client, V5Client, QUIET,
};
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;

/// A QoS 1 PUBLISH for persistent subscribers must be acknowledged again this soon
/// after a node died.
const WRITES_RESUME_WITHIN: Duration = Duration::from_secs(10);
/// How long subscribers may take to receive everything once publishers stopped.
const DELIVERY_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Leader,
    Follower,
}

fn pick_victim(cluster: &mut Cluster, victim: Victim) -> (u64, u64) {
    let leader = cluster.leader();
    let id = match victim {
        Victim::Leader => leader,
        Victim::Follower => cluster
            .ids()
            .into_iter()
            .rev()
            .find(|id| *id != leader)
            .expect("a follower"),
    };
    (leader, id)
}

/// Waits until every publisher has at least `n` messages acknowledged.
async fn wait_acked(cluster: &Cluster, pubs: &[Publisher], n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts: Vec<usize> = pubs.iter().map(Publisher::acked).collect();
        if counts.iter().all(|c| *c >= n) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = pubs
                .iter()
                .map(|p| format!("{:?}", p.snapshot().connections))
                .collect();
            panic!(
                "publishers should have {n} messages acknowledged each within {timeout:?}; they have \
                 {counts:?}\nconnections: {logs:?}\n{}",
                cluster.log_tails(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a write probe found.
struct Probes {
    /// How long after `since` the first probe was acknowledged.
    resumed_after: Option<Duration>,
    acked: HashSet<String>,
    sent: HashSet<String>,
    attempts: Vec<String>,
}

/// Publishes QoS 1 probes to `topic` (which persistent subscribers match) on the
/// nodes `nodes` in turn, each on a fresh connection with 3 s to be acknowledged,
/// until one is or `timeout` has passed since `since`.
async fn probe_writes(
    nodes: &[(u64, SocketAddr)],
    topic: &str,
    since: Instant,
    timeout: Duration,
) -> Probes {
    let mut probes = Probes {
        resumed_after: None,
        acked: HashSet::new(),
        sent: HashSet::new(),
        attempts: Vec::new(),
    };
    for k in 0.. {
        if since.elapsed() > timeout {
            break;
        }
        let (node, addr) = nodes[k % nodes.len()];
        let payload = format!("probe-{k}");
        let connect = connect_packet(ProtocolVersion::V3_1_1, &unique_id("t12-probe"), true, 30);
        let mut c =
            match tokio::time::timeout(Duration::from_secs(3), RawClient::connect(addr, connect))
                .await
            {
                Ok(Ok((c, ack))) if !ack.reason_code.is_error() => c,
                other => {
                    let why = match other {
                        Ok(Ok((_, ack))) => format!("CONNACK {ack:?}"),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(_) => "no CONNACK within 3 s".to_string(),
                    };
                    probes.attempts.push(format!("node {node}: connect: {why}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        probes.sent.insert(payload.clone());
        if let Err(e) = c
            .send(Packet::Publish(publish_packet(
                topic,
                CQoS::AtLeastOnce,
                Some(1),
                payload.as_bytes(),
            )))
            .await
        {
            probes.attempts.push(format!("node {node}: send {e:#}"));
            continue;
        }
        match c.recv(Duration::from_secs(3)).await {
            Ok(Recv::Packet(Packet::PubAck(a)))
                if a.packet_id == 1 && !a.reason_code.is_error() =>
            {
                probes.acked.insert(payload);
                probes.resumed_after = Some(since.elapsed());
                c.disconnect().await;
                break;
            }
            other => probes
                .attempts
                .push(format!("node {node}: {payload} got {other:?}")),
        }
    }
    probes
}

/// One PUBLISH QoS 1 that must be acknowledged (a fresh clean session on `node`).
async fn must_publish_on(cluster: &Cluster, node: u64, topic: &str, retain: bool, payload: &str) {
    let mut c = V4Client::must_connect(cluster.node(node), &unique_id("t12-one")).await;
    c.must_publish(topic, QoS::AtLeastOnce, retain, payload)
        .await;
    c.disconnect().await;
}

fn must_check(
    cluster: &Cluster,
    subs: &[DurableSubscriber],
    pubs: &[fleetmq_tests::cluster::PubLog],
    extra_acked: &HashSet<String>,
    known: &HashSet<String>,
    what: &str,
) -> String {
    let logs: Vec<_> = subs.iter().map(DurableSubscriber::snapshot).collect();
    match check_delivery(&logs, pubs, extra_acked, known) {
        Ok(summary) => summary,
        Err(report) => panic!(
            "{what}: the promise was broken:\n{report}\n{}",
            cluster.log_tails(40)
        ),
    }
}

async fn failover_under_load(victim: Victim) {
    let mut cluster = Cluster::start();
    let prefix = format!("t12/{}", unique_id("fo"));
    let filter = format!("{prefix}/#");
    let retained_topic = format!("{prefix}-retained");

    let mut subs = Vec::new();
    for n in cluster.ids() {
        subs.push(
            DurableSubscriber::start(&cluster, n, &unique_id(&format!("t12-sub-n{n}")), &filter)
                .await,
        );
    }
    let refs: Vec<&DurableSubscriber> = subs.iter().collect();
    let mut known = warm_up(
        &cluster,
        &cluster.ids(),
        &refs,
        &prefix,
        Duration::from_secs(20),
    )
    .await;
    must_publish_on(
        &cluster,
        1,
        &retained_topic,
        true,
        "retained before the kill",
    )
    .await;

    let mut pubs: Vec<Publisher> = cluster
        .ids()
        .into_iter()
        .map(|n| Publisher::start(&cluster, n, PublisherSpec::new(&format!("p{n}"), &prefix)))
        .collect();
    wait_acked(&cluster, &pubs, 30, Duration::from_secs(30)).await;

    let (leader, victim_id) = pick_victim(&mut cluster, victim);
    let killed_at = Instant::now();
    cluster.kill9(victim_id);
    let survivors = cluster.live_ids();
    let acked_at_kill: usize = pubs.iter().map(Publisher::acked).sum();

    // Writes resume: a QoS 1 PUBLISH for the persistent subscribers is acknowledged.
    let endpoints: Vec<(u64, SocketAddr)> = cluster
        .endpoints()
        .into_iter()
        .filter(|(id, _)| survivors.contains(id))
        .collect();
    let probes = probe_writes(
        &endpoints,
        &format!("{prefix}/probe"),
        killed_at,
        WRITES_RESUME_WITHIN,
    )
    .await;
    let Some(resumed_after) = probes.resumed_after else {
        panic!(
            "after SIGKILL of node {victim_id} ({victim:?}; leader was {leader}) no QoS 1 PUBLISH for \
             persistent sessions was acknowledged by nodes {survivors:?} within {WRITES_RESUME_WITHIN:?}: \
             {:?}\n{}",
            probes.attempts,
            cluster.log_tails(40)
        );
    };
    let new_leader = cluster.must_agree_on_leader(&survivors);

    // The stream goes on a little on the survivors (every publisher, the dead
    // node's too, on a survivor now), then stops.
    wait_more_acked(&cluster, &pubs, 30, Duration::from_secs(30)).await;
    let mut pub_logs = Vec::new();
    for p in pubs.iter_mut() {
        pub_logs.push(p.finish(Duration::from_secs(30)).await);
    }

    // Subscriptions are intact: a message published now reaches every subscriber.
    must_publish_on(
        &cluster,
        survivors[0],
        &format!("{prefix}/after"),
        false,
        "after-recovery",
    )
    .await;

    let mut extra_acked = probes.acked.clone();
    extra_acked.insert("after-recovery".to_string());
    known.extend(probes.sent.iter().cloned());
    known.insert("after-recovery".to_string());
    let mut expected: HashSet<String> = extra_acked.clone();
    for l in &pub_logs {
        expected.extend(l.acked.iter().cloned());
    }
    wait_delivered(&refs, &expected, DELIVERY_WINDOW, Duration::from_secs(2)).await;
    let summary = must_check(
        &cluster,
        &subs,
        &pub_logs,
        &extra_acked,
        &known,
        &format!("SIGKILL of the {victim:?}"),
    );

    // The victim's subscriber resumed its session on a survivor.
    let moved = subs[(victim_id - 1) as usize].snapshot();
    assert!(
        moved.connections.iter().skip(1).any(|c| c.node != victim_id && c.session_present),
        "{} (connected to node {victim_id}) should have resumed its session on a survivor; connections: {:?}; notes: {:?}",
        moved.client_id,
        moved.connections,
        moved.notes
    );

    // Retained messages survived.
    for &n in &survivors {
        cluster
            .must_see_retained(
                n,
                &retained_topic,
                Some("retained before the kill"),
                Duration::from_secs(20),
            )
            .await;
    }

    // The killed node comes back, catches up and agrees with the others.
    cluster.restart(victim_id);
    let applied = cluster.must_agree(&cluster.ids());
    for n in cluster.ids() {
        cluster
            .must_see_retained(
                n,
                &retained_topic,
                Some("retained before the kill"),
                Duration::from_secs(20),
            )
            .await;
    }
    // And it routes again: a message published on it reaches every subscriber.
    must_publish_on(
        &cluster,
        victim_id,
        &format!("{prefix}/after"),
        false,
        "after-restart",
    )
    .await;
    let again: HashSet<String> = ["after-restart".to_string()].into();
    wait_delivered(&refs, &again, Duration::from_secs(20), Duration::ZERO).await;
    for s in &subs {
        let l = s.snapshot();
        assert!(
            l.has("after-restart"),
            "{} did not get a message published on the restarted node {victim_id}\n{}",
            l.client_id,
            cluster.log_tails(30)
        );
    }
    cluster.must_be_running();
    eprintln!(
        "{victim:?} {victim_id} killed (leader was {leader}, now {new_leader}) with {acked_at_kill} messages \
         acknowledged; writes resumed after {resumed_after:?}; all nodes at last_applied {applied}\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_under_a_qos1_qos2_stream_loses_nothing_acknowledged() {
    failover_under_load(Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_follower_under_a_qos1_qos2_stream_loses_nothing_acknowledged() {
    failover_under_load(Victim::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node_under_a_qos1_qos2_stream_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start();
    let prefix = format!("t12/{}", unique_id("roll"));
    let filter = format!("{prefix}/#");

    let mut subs = Vec::new();
    for n in cluster.ids() {
        subs.push(
            DurableSubscriber::start(
                &cluster,
                n,
                &unique_id(&format!("t12-roll-sub-n{n}")),
                &filter,
            )
            .await,
        );
    }
    let refs: Vec<&DurableSubscriber> = subs.iter().collect();
    let mut known = warm_up(
        &cluster,
        &cluster.ids(),
        &refs,
        &prefix,
        Duration::from_secs(20),
    )
    .await;

    let mut pubs: Vec<Publisher> = cluster
        .ids()
        .into_iter()
        .map(|n| Publisher::start(&cluster, n, PublisherSpec::new(&format!("r{n}"), &prefix)))
        .collect();
    wait_acked(&cluster, &pubs, 20, Duration::from_secs(30)).await;

    let mut notes = Vec::new();
    for id in cluster.ids() {
        let stopping = Instant::now();
        let exited_cleanly = cluster.stop(id);
        let stopped_after = stopping.elapsed();
        assert!(
            exited_cleanly,
            "node {id} should drain and exit within 10 s of SIGTERM\n{}",
            cluster.node(id).log_tail(40)
        );
        cluster.restart(id);
        let leader = cluster.must_agree_on_leader(&cluster.ids());
        // The stream goes on through the restarted cluster before the next node.
        wait_more_acked(&cluster, &pubs, 20, Duration::from_secs(30)).await;
        let note =
            format!("node {id} exited {stopped_after:?} after SIGTERM, restarted; leader {leader}");
        eprintln!("{note}");
        notes.push(note);
    }
    let mut pub_logs = Vec::new();
    for p in pubs.iter_mut() {
        pub_logs.push(p.finish(Duration::from_secs(30)).await);
    }
    must_publish_on(
        &cluster,
        2,
        &format!("{prefix}/after"),
        false,
        "after-rolling-restart",
    )
    .await;
    let extra_acked: HashSet<String> = ["after-rolling-restart".to_string()].into();
    known.extend(extra_acked.iter().cloned());
    let mut expected = extra_acked.clone();
    for l in &pub_logs {
        expected.extend(l.acked.iter().cloned());
    }
    wait_delivered(&refs, &expected, DELIVERY_WINDOW, Duration::from_secs(2)).await;
    let summary = must_check(
        &cluster,
        &subs,
        &pub_logs,
        &extra_acked,
        &known,
        "rolling restart",
    );
    let applied = cluster.must_agree(&cluster.ids());
    cluster.must_be_running();
    eprintln!("rolling restart: {notes:?}; all nodes at last_applied {applied}\n{summary}");
}

/// Clients with persistent sessions and wills on one node, a watcher on another;
/// the node is killed: the cluster publishes the wills (MQTT 5: after the will delay).
async fn wills_of_a_killed_node(victim: Victim) {
    let mut cluster = Cluster::start();
    let prefix = format!("t12/{}", unique_id("will"));
    let (_, victim_id) = pick_victim(&mut cluster, victim);
    let watcher_node = cluster
        .ids()
        .into_iter()
        .find(|n| *n != victim_id)
        .expect("a survivor");

    let mut o5 = v5_options(cluster.node(victim_id), &unique_id("t12-will-v5"));
    o5.set_clean_start(false);
    o5.set_session_expiry_interval(Some(300));
    let props = LastWillProperties {
        delay_interval: Some(1),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o5.set_last_will(LastWill::new(
        format!("{prefix}/v5"),
        "v5 client gone",
        Q5::AtLeastOnce,
        false,
        Some(props),
    ));
    let w5 = V5Client::must_connect_with(o5).await;

    let mut o4 = v4_options(cluster.node(victim_id), &unique_id("t12-will-v4"));
    o4.set_clean_session(false);
    o4.set_last_will(rumqttc::LastWill::new(
        format!("{prefix}/v4"),
        "v4 client gone",
        QoS::AtLeastOnce,
        false,
    ));
    let w4 = V4Client::must_connect_with(o4).await;

    let mut watcher =
        V5Client::must_connect(cluster.node(watcher_node), &unique_id("t12-will-watch")).await;
    watcher
        .must_subscribe(&format!("{prefix}/+"), Q5::AtLeastOnce)
        .await;
    cluster.must_catch_up(&cluster.ids());
    watcher.must_not_recv_publish(QUIET).await;

    let killed_at = Instant::now();
    cluster.kill9(victim_id);
    drop(w5);
    drop(w4);

    let mut got: Vec<(String, Duration)> = Vec::new();
    let deadline = killed_at + Duration::from_secs(30);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(p) = watcher.recv_publish(Duration::from_millis(200)).await {
            got.push((text(&p.payload), killed_at.elapsed()));
        }
    }
    for p in watcher.drain_publishes(Duration::from_secs(3)).await {
        got.push((text(&p.payload), killed_at.elapsed()));
    }
    let payloads: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    let mut sorted = payloads.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec!["v4 client gone", "v5 client gone"],
        "after SIGKILL of node {victim_id} ({victim:?}) the watcher on node {watcher_node} must get each \
         will exactly once within 30 s; got {got:?}\n{}",
        cluster.log_tails(40)
    );
    let v5_at = got
        .iter()
        .find(|(p, _)| p == "v5 client gone")
        .map(|(_, t)| *t)
        .expect("seen above");
    assert!(
        v5_at >= Duration::from_secs(1),
        "the MQTT 5 will has a delay of 1 s but arrived {v5_at:?} after the kill"
    );
    eprintln!("wills after SIGKILL of node {victim_id} ({victim:?}): {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_of_clients_on_a_killed_follower_are_published_by_the_cluster() {
    wills_of_a_killed_node(Victim::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_of_clients_on_a_killed_leader_are_published_by_the_cluster() {
    wills_of_a_killed_node(Victim::Leader).await;
}
