//! A network partition: one node of three is cut off from the other two. Every
//! node reaches the others through proxies of the test, which know which node
//! opened each connection; cutting a node off drops its open links and refuses new
//! ones, in both directions, while the other two keep talking.
//!
//! - The cut-off node never acknowledges a QoS 1/2 PUBLISH that a persistent
//!   session needs (no PUBACK, no PUBREC) while the majority keeps acknowledging;
//!   after healing, everything acknowledged on either side is delivered, and the
//!   three nodes agree again (same leader and last_applied, same retained message).
//!   Once with a follower cut off, once with the leader.
//! - The cut-off node keeps serving what needs no durable write
//!   (docs/cluster-design.md, "Minority side of a partition"): QoS 0, and QoS 1
//!   between clean sessions, among its own clients. In a test of its own, so that
//!   its failure does not hide the durability checks.
//!
//! MQTT clients and `fleetmq ctl` use the nodes' real ports, never the proxies.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ProtocolVersion, PubResponse, QoS as CQoS};
use fleetmq_tests::cluster::{
    check_delivery, wait_delivered, warm_up, DurableSubscriber, Publisher, PublisherSpec,
};
use fleetmq_tests::raw::publish_packet;
use fleetmq_tests::v4::Ev;
use fleetmq_tests::{text, unique_id, Cluster, RawClient, Recv, V4Client, WAIT};
use rumqttc::QoS;

/// The cut-off node must stay silent at least this long after receiving the PUBLISH.
/// How soon a cut-off node tells a client waiting for a durable acknowledgement to move:
/// it gives up on the commit after 3 s (crates/broker/src/service.rs).
const MOVED_WITHIN: Duration = Duration::from_secs(6);
const MINORITY_SILENCE: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// A follower is cut off: the leader keeps its majority.
    Follower,
    /// The leader is cut off: the other two elect a new one; the old one may
    /// believe it leads for a while.
    Leader,
}

/// The node to cut off, and the two others.
fn choose(cluster: &mut Cluster, cut: Cut) -> (u64, Vec<u64>) {
    let leader = cluster.leader();
    let m = match cut {
        Cut::Leader => leader,
        Cut::Follower => cluster
            .ids()
            .into_iter()
            .rev()
            .find(|id| *id != leader)
            .expect("a follower"),
    };
    let majority = cluster.ids().into_iter().filter(|id| *id != m).collect();
    (m, majority)
}

/// Checks that the nodes talk through the proxies and that each connection was
/// attributed to a node (else cutting node `m` off proves nothing), cuts it off,
/// and checks that none of its links is left open.
fn must_isolate(cluster: &Cluster, m: u64) -> Instant {
    let open = cluster.open_links();
    assert!(
        open.iter().any(|(from, to)| *from == Some(m) || *to == m),
        "no connection between node {m} and the others goes through the proxies: the nodes do \
         not dial the addresses of --peers, so the test cannot cut them off\n{}",
        cluster.describe_links()
    );
    assert!(
        open.iter().all(|(from, _)| from.is_some()),
        "some connections through the proxies come from a process that is not a node (or /proc \
         could not tell which): the test cannot cut node {m} off reliably\n{}",
        cluster.describe_links()
    );
    cluster.isolate(m);
    let at = Instant::now();
    let still_open: Vec<_> = cluster
        .open_links()
        .into_iter()
        .filter(|(from, to)| *from == Some(m) || *to == m)
        .collect();
    assert!(
        still_open.is_empty(),
        "links of node {m} still open after the cut: {still_open:?}"
    );
    eprintln!("node {m} cut off");
    at
}

/// What the publisher on the cut-off node received, and when.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

/// Reads everything the cut-off node sends to a raw publisher (answering PUBREC with
/// PUBREL), with the time it arrived.
fn watch_minority_publisher(mut c: RawClient, seen: Seen) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ev = c.recv(Duration::from_secs(1)).await;
            let now = Instant::now();
            let what = match ev {
                Ok(Recv::Timeout) => continue,
                Ok(Recv::Packet(Packet::PubAck(a))) => {
                    format!("PUBACK {} {:?}", a.packet_id, a.reason_code)
                }
                Ok(Recv::Packet(Packet::PubRec(r))) => {
                    let _ = c.send(Packet::PubRel(PubResponse::new(r.packet_id))).await;
                    format!("PUBREC {} {:?}", r.packet_id, r.reason_code)
                }
                Ok(Recv::Packet(Packet::PubComp(r))) => format!("PUBCOMP {}", r.packet_id),
                Ok(Recv::Packet(p)) => format!("{p:?}"),
                Ok(Recv::Closed) => "closed".to_string(),
                Err(e) => format!("error {e:#}"),
            };
            let end = what == "closed" || what.starts_with("error");
            seen.lock().expect("lock").push((now, what));
            if end {
                return;
            }
        }
    })
}

async fn must_publish_on(cluster: &Cluster, node: u64, topic: &str, retain: bool, payload: &str) {
    let mut p = V4Client::must_connect(cluster.node(node), &unique_id("t13-one")).await;
    p.must_publish(topic, QoS::AtLeastOnce, retain, payload)
        .await;
    p.disconnect().await;
}

async fn durability_across_a_partition(cut: Cut) {
    let mut cluster = Cluster::start_proxied();
    let prefix = format!("t13/{}", unique_id("part"));
    let durable = format!("{prefix}/durable");
    let retained_topic = format!("{prefix}-retained");
    let (m, majority) = choose(&mut cluster, cut);

    // Persistent subscribers on both sides.
    let sub_major = DurableSubscriber::start(
        &cluster,
        majority[0],
        &unique_id("t13-sub-major"),
        &format!("{durable}/#"),
    )
    .await;
    let sub_minor = DurableSubscriber::start(
        &cluster,
        m,
        &unique_id("t13-sub-minor"),
        &format!("{durable}/#"),
    )
    .await;
    let subs = [sub_major, sub_minor];
    let refs: Vec<&DurableSubscriber> = subs.iter().collect();
    let mut known = warm_up(
        &cluster,
        &cluster.ids(),
        &refs,
        &durable,
        Duration::from_secs(20),
    )
    .await;
    // The publisher whose PUBLISHes the cut-off node must not acknowledge, connected
    // before the cut.
    let (mut minority_pub, _) = RawClient::must_connect(
        cluster.node(m).mqtt_addr,
        ProtocolVersion::V3_1_1,
        &unique_id("t13-minority-pub"),
        true,
    )
    .await;
    must_publish_on(
        &cluster,
        majority[0],
        &retained_topic,
        true,
        "before the partition",
    )
    .await;
    cluster.must_catch_up(&cluster.ids());

    // ---- the partition ----
    let cut_at = must_isolate(&cluster, m);
    eprintln!("{cut:?} {m} cut off; majority {majority:?}");

    // On the cut-off node: QoS 1 and QoS 2 PUBLISHes for the persistent subscribers.
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    for (pid, qos, payload) in [
        (1, CQoS::AtLeastOnce, "minority-q1"),
        (2, CQoS::ExactlyOnce, "minority-q2"),
    ] {
        minority_pub
            .must_send(Packet::Publish(publish_packet(
                &format!("{durable}/minority"),
                qos,
                Some(pid),
                payload.as_bytes(),
            )))
            .await;
        known.insert(payload.to_string());
    }
    let sent_minority_at = Instant::now();
    let watcher = watch_minority_publisher(minority_pub, seen.clone());

    // The majority elects (or keeps) a leader and keeps acknowledging.
    let majority_leader = cluster.must_agree_on_leader(&majority);
    let majority_endpoints: Vec<(u64, SocketAddr)> = cluster
        .endpoints()
        .into_iter()
        .filter(|(id, _)| *id != m)
        .collect();
    let mut pubs: Vec<Publisher> = majority
        .iter()
        .map(|&n| {
            let mut spec = PublisherSpec::new(&format!("maj{n}"), &durable);
            spec.qos2_every = 4;
            spec.max = 40;
            spec.interval = Duration::from_millis(10);
            Publisher::start_on(majority_endpoints.clone(), n, spec)
        })
        .collect();
    must_publish_on(
        &cluster,
        majority[1],
        &retained_topic,
        true,
        "set during the partition",
    )
    .await;
    let mut pub_logs = Vec::new();
    for p in pubs.iter_mut() {
        pub_logs.push(p.join(Duration::from_secs(40)).await);
    }
    for l in &pub_logs {
        assert!(
            l.acked.len() == l.sent.len() && l.sent.len() == 40,
            "the majority side must keep acknowledging: publisher {} sent {} and got {} \
             acknowledged (connections {:?}, notes {:?})\n{}",
            l.name,
            l.sent.len(),
            l.acked.len(),
            l.connections,
            l.notes,
            cluster.log_tails(40)
        );
    }

    // The cut-off node has had ample time: it acknowledged nothing.
    let silent_until = sent_minority_at + MINORITY_SILENCE;
    if Instant::now() < silent_until {
        tokio::time::sleep(silent_until - Instant::now()).await;
    }
    let heal_at = Instant::now();
    let during: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, _)| *t < heal_at)
        .map(|(t, w)| format!("{w} after {:?}", t.duration_since(sent_minority_at)))
        .collect();
    let acked_while_cut: Vec<&String> = during
        .iter()
        .filter(|w| w.starts_with("PUBACK 1 ") || w.starts_with("PUBREC 2 "))
        .collect();
    // Nor does it keep the client waiting in silence: once it has known for a few
    // seconds that it cannot commit, it tells the client to move (3.1.1: closes it), so
    // that it reconnects through the load balancer to the majority.
    let told_to_move = seen
        .lock()
        .expect("lock")
        .iter()
        .find(|(_, w)| w == "closed")
        .map(|(t, _)| t.duration_since(sent_minority_at));
    assert!(
        told_to_move.is_some_and(|after| after < MOVED_WITHIN),
        "node {m}, cut off, kept its publisher waiting for acknowledgements that cannot come: \
         told to move after {told_to_move:?} (everything it sent: {during:?})\n{}",
        cluster.log_tails(40)
    );
    assert!(
        acked_while_cut.is_empty(),
        "node {m}, cut off from the majority for {:?}, acknowledged a PUBLISH for persistent \
         sessions: {acked_while_cut:?} (everything it sent: {during:?})\n{}",
        heal_at.duration_since(cut_at),
        cluster.log_tails(40)
    );

    // ---- heal ----
    cluster.heal(m);
    let applied = cluster.must_agree(&cluster.ids());
    // The healed node serves durable writes again.
    must_publish_on(
        &cluster,
        m,
        &format!("{durable}/after"),
        false,
        "after-heal",
    )
    .await;
    known.insert("after-heal".to_string());
    let mut extra_acked: HashSet<String> = ["after-heal".to_string()].into();
    // A PUBLISH of the cut-off node acknowledged after the heal must be delivered too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, _)| *t >= heal_at)
        .map(|(_, w)| w.clone())
        .collect();
    if after.iter().any(|w| w.starts_with("PUBACK 1 ")) {
        extra_acked.insert("minority-q1".to_string());
    }
    if after.iter().any(|w| w.starts_with("PUBREC 2 ")) {
        extra_acked.insert("minority-q2".to_string());
    }
    let mut expected = extra_acked.clone();
    for l in &pub_logs {
        expected.extend(l.acked.iter().cloned());
    }
    wait_delivered(
        &refs,
        &expected,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    let logs: Vec<_> = subs.iter().map(DurableSubscriber::snapshot).collect();
    let summary = match check_delivery(&logs, &pub_logs, &extra_acked, &known) {
        Ok(s) => s,
        Err(report) => panic!(
            "after healing the partition of node {m} ({cut:?}): {report}\n{}",
            cluster.log_tails(40)
        ),
    };
    for n in cluster.ids() {
        cluster
            .must_see_retained(
                n,
                &retained_topic,
                Some("set during the partition"),
                Duration::from_secs(20),
            )
            .await;
    }
    cluster.must_be_running();
    watcher.abort();
    eprintln!(
        "partition of node {m} ({cut:?}): majority leader {majority_leader}; while cut off the raw \
         publisher on node {m} got {during:?}, after the heal {after:?}; all nodes at \
         last_applied {applied}\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_acknowledges_nothing_durable_and_loses_nothing_after_healing() {
    durability_across_a_partition(Cut::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_acknowledges_nothing_durable_and_loses_nothing_after_healing() {
    durability_across_a_partition(Cut::Leader).await;
}

/// Sends a QoS 0 and a QoS 1 message from `publisher` to `sub` (clean sessions of
/// the cut-off node `m`, on a topic no persistent session matches): what happened.
async fn exchange(
    publisher: &mut V4Client,
    sub: &mut V4Client,
    topic: &str,
    label: &str,
) -> Vec<Result<String, String>> {
    let mut results = Vec::new();
    let q0 = format!("{label}: q0");
    publisher
        .must_publish(topic, QoS::AtMostOnce, false, q0.clone())
        .await;
    results.push(match sub.recv_publish(WAIT).await {
        Some(p) if text(&p.payload) == q0 => Ok(format!("{label}: QoS 0 delivered")),
        other => Err(format!(
            "{label}: QoS 0 between two clean sessions of the cut-off node: expected it within \
             {WAIT:?}, got {:?}",
            other.map(|p| text(&p.payload))
        )),
    });
    let q1 = format!("{label}: q1");
    publisher
        .client
        .publish(topic, QoS::AtLeastOnce, false, q1.clone())
        .await
        .expect("queue PUBLISH");
    let acked = publisher
        .wait_for(WAIT, |e| {
            matches!(e, Ev::In(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await;
    results.push(match acked {
        None => Err(format!(
            "{label}: QoS 1 between clean sessions of the cut-off node was not acknowledged \
             within {WAIT:?}"
        )),
        Some(()) => match sub.recv_publish(WAIT).await {
            Some(p) if text(&p.payload) == q1 => {
                Ok(format!("{label}: QoS 1 between clean sessions delivered"))
            }
            other => Err(format!(
                "{label}: QoS 1 between clean sessions of the cut-off node: acknowledged, but \
                 the subscriber got {:?}",
                other.map(|p| text(&p.payload))
            )),
        },
    });
    results
}

/// Cuts node `m` off and exchanges messages between two of its clean sessions:
/// first with nothing else going on, then while a QoS 1 PUBLISH for a persistent
/// session (on the majority side) waits on the cut-off node for a durable write that
/// cannot happen. Heals at the end.
async fn local_traffic(
    cluster: &Cluster,
    m: u64,
    cut: Cut,
    prefix: &str,
) -> Vec<Result<String, String>> {
    let local = format!("{prefix}/local");
    let durable = format!("{prefix}/durable");
    let majority_node = cluster
        .ids()
        .into_iter()
        .find(|id| *id != m)
        .expect("a node");
    let persistent = DurableSubscriber::start(
        cluster,
        majority_node,
        &unique_id("t13-local-durable"),
        &format!("{durable}/#"),
    )
    .await;
    let mut sub = V4Client::must_connect(cluster.node(m), &unique_id("t13-local-sub")).await;
    sub.must_subscribe(&local, QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(cluster.node(m), &unique_id("t13-local-pub")).await;
    let (mut durable_pub, _) = RawClient::must_connect(
        cluster.node(m).mqtt_addr,
        ProtocolVersion::V3_1_1,
        &unique_id("t13-local-durable-pub"),
        true,
    )
    .await;
    cluster.must_catch_up(&cluster.ids());
    must_isolate(cluster, m);

    let mut results = exchange(
        &mut publisher,
        &mut sub,
        &local,
        &format!("{cut:?} {m} cut off, idle"),
    )
    .await;
    durable_pub
        .must_send(Packet::Publish(publish_packet(
            &format!("{durable}/x"),
            CQoS::AtLeastOnce,
            Some(1),
            b"waits for the majority",
        )))
        .await;
    results.extend(
        exchange(
            &mut publisher,
            &mut sub,
            &local,
            &format!("{cut:?} {m} cut off, a durable PUBLISH pending"),
        )
        .await,
    );
    cluster.heal(m);
    drop(persistent);
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_keeps_serving_qos0_and_clean_sessions_among_its_own_clients() {
    let mut cluster = Cluster::start_proxied();
    let prefix = format!("t13/{}", unique_id("local"));

    let (m, _) = choose(&mut cluster, Cut::Follower);
    let mut results = local_traffic(&cluster, m, Cut::Follower, &format!("{prefix}/f")).await;
    cluster.must_agree(&cluster.ids());

    let (m, _) = choose(&mut cluster, Cut::Leader);
    results.extend(local_traffic(&cluster, m, Cut::Leader, &format!("{prefix}/l")).await);
    cluster.must_agree(&cluster.ids());
    cluster.must_be_running();

    eprintln!("local traffic on a cut-off node: {results:#?}");
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "a cut-off node must keep serving traffic that needs no durable write among its own \
         clients (docs/cluster-design.md, \"Minority side of a partition\"): {failures:#?}\n{}",
        cluster.log_tails(30)
    );
}

/// `GET /readyz` on `node` until `want` (200 or 503), within `within`; the last answer.
fn must_readyz(cluster: &Cluster, node: u64, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = cluster.node(node).http_get("/readyz");
        if let Ok((status, body)) = &answer {
            if *status == want {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: /readyz did not answer {want} within {within:?}; last: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_is_not_ready_until_it_rejoins() {
    let mut cluster = Cluster::start_proxied();
    for cut in [Cut::Follower, Cut::Leader] {
        let (m, majority) = choose(&mut cluster, cut);
        must_isolate(&cluster, m);
        // Within an election timeout or so it knows no leader (or, leading, hears no
        // quorum), and says why.
        let why = must_readyz(&cluster, m, 503, Duration::from_secs(10));
        assert!(why.starts_with("not ready: "), "{why}");
        for id in &majority {
            must_readyz(&cluster, *id, 200, Duration::from_secs(10));
        }
        let metrics = cluster.node(m).metrics();
        assert_eq!(metrics.value("fleetmq_ready", &[]), Some(0.0), "{cut:?}");
        cluster.heal(m);
        must_readyz(&cluster, m, 200, Duration::from_secs(15));
        cluster.must_agree(&cluster.ids());
        let leader = cluster.leader();
        let metrics = cluster.node(leader).metrics();
        assert_eq!(metrics.value("fleetmq_raft_is_leader", &[]), Some(1.0));
        assert_eq!(
            metrics.value("fleetmq_raft_leader_id", &[]),
            Some(leader as f64)
        );
    }
}
