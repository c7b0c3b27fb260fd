//! Routing in a three-node cluster: a PUBLISH on any node reaches the matching
//! subscribers on every node exactly once and in its publisher's order; retained
//! messages are visible on every node; a shared subscription group spread over the
//! nodes gets each message once; a client id connecting to another node takes its
//! session over from the first one (DISCONNECT 0x8E there, session present here).
//!
//! A SUBACK goes out once every live node routes to the new subscription, so a
//! PUBLISH sent anywhere after it reaches the subscriber
//! (`a_publish_right_after_the_suback_on_another_node_reaches_the_subscriber`). The
//! older tests here still start with probe messages every subscriber must receive
//! from every node: a check that the cluster routes at all before they count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use fleetmq_tests::names::CONNECTIONS_CLOSED;
use fleetmq_tests::{
    text, unique_id, v4_options, v5_options, Cluster, V4Client, V5Client, QUIET, WAIT,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;

/// A subscriber of either protocol version, seen as (topic, payload, qos).
// A handful of them per test: boxing would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
enum AnySub {
    V4(V4Client),
    V5(V5Client),
}

impl AnySub {
    async fn recv(&mut self, timeout: Duration) -> Option<(String, String, u8)> {
        match self {
            AnySub::V4(c) => c
                .recv_publish(timeout)
                .await
                .map(|p| (p.topic.clone(), text(&p.payload), p.qos as u8)),
            AnySub::V5(c) => c.recv_publish(timeout).await.map(|p| {
                (
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    text(&p.payload),
                    p.qos as u8,
                )
            }),
        }
    }
}

struct Sub {
    label: String,
    client: AnySub,
    /// The QoS it subscribed with.
    max_qos: u8,
    /// Nodes whose publisher's messages it matches.
    matches_nodes: Vec<u64>,
    /// Everything received: (topic, payload, qos).
    got: Vec<(String, String, u8)>,
}

impl Sub {
    async fn pump(&mut self, timeout: Duration) -> bool {
        match self.client.recv(timeout).await {
            Some(m) => {
                self.got.push(m);
                true
            }
            None => false,
        }
    }
}

const PER_QOS: usize = 20;

fn main_payload(node: u64, qos: u8, seq: usize) -> String {
    format!("n{node}-q{qos}-{seq:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_reaches_every_matching_subscriber_on_every_node_exactly_once() {
    let cluster = Cluster::start();
    let prefix = format!("t11/{}", unique_id("route"));

    // On every node: a clean v3.1.1 subscriber and a persistent v5 subscriber to
    // everything, and a clean v3.1.1 subscriber (QoS 1) to node 2's publisher only.
    let mut subs: Vec<Sub> = Vec::new();
    for n in cluster.ids() {
        let mut a =
            V4Client::must_connect(cluster.node(n), &unique_id(&format!("t11-all-v4-n{n}"))).await;
        a.must_subscribe(&format!("{prefix}/#"), QoS::ExactlyOnce)
            .await;
        subs.push(Sub {
            label: format!("clean v3.1.1 subscriber on node {n} to {prefix}/#"),
            client: AnySub::V4(a),
            max_qos: 2,
            matches_nodes: cluster.ids(),
            got: Vec::new(),
        });
        let mut o = v5_options(cluster.node(n), &unique_id(&format!("t11-all-v5-n{n}")));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(300));
        let mut b = V5Client::must_connect_with(o).await;
        b.must_subscribe(&format!("{prefix}/#"), Q5::ExactlyOnce)
            .await;
        subs.push(Sub {
            label: format!("persistent v5 subscriber on node {n} to {prefix}/#"),
            client: AnySub::V5(b),
            max_qos: 2,
            matches_nodes: cluster.ids(),
            got: Vec::new(),
        });
        let mut c =
            V4Client::must_connect(cluster.node(n), &unique_id(&format!("t11-n2-v4-n{n}"))).await;
        c.must_subscribe(&format!("{prefix}/n2/+"), QoS::AtLeastOnce)
            .await;
        subs.push(Sub {
            label: format!("clean v3.1.1 subscriber on node {n} to {prefix}/n2/+ (QoS 1)"),
            client: AnySub::V4(c),
            max_qos: 1,
            matches_nodes: vec![2],
            got: Vec::new(),
        });
    }
    let mut publishers: BTreeMap<u64, V4Client> = BTreeMap::new();
    for n in cluster.ids() {
        publishers.insert(
            n,
            V4Client::must_connect(cluster.node(n), &unique_id(&format!("t11-pub-n{n}"))).await,
        );
    }

    // Warm-up: QoS 1 probes from every node until every subscriber has one from
    // every node it matches.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0;
    loop {
        for (n, p) in publishers.iter_mut() {
            p.must_publish(
                &format!("{prefix}/n{n}/warm"),
                QoS::AtLeastOnce,
                false,
                format!("warm-n{n}-{round}"),
            )
            .await;
        }
        round += 1;
        let mut missing = Vec::new();
        for s in subs.iter_mut() {
            while s.pump(Duration::from_millis(100)).await {}
            for n in &s.matches_nodes {
                let probe = format!("warm-n{n}-");
                if !s.got.iter().any(|(_, p, _)| p.starts_with(&probe)) {
                    missing.push(format!("{} has no probe from node {n}", s.label));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions were not routed cluster-wide within 20 s: {missing:#?}\n{}",
            cluster.log_tails(30)
        );
    }
    for s in subs.iter_mut() {
        while s.pump(Duration::from_millis(300)).await {}
        s.got.clear();
    }

    // Every node publishes PER_QOS messages at each QoS, interleaved, each to its
    // own topic per QoS; all three publishers at once.
    let mut tasks = Vec::new();
    for (n, mut p) in std::mem::take(&mut publishers) {
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_QOS {
                for (q, qos) in [
                    (0u8, QoS::AtMostOnce),
                    (1, QoS::AtLeastOnce),
                    (2, QoS::ExactlyOnce),
                ] {
                    p.must_publish(
                        &format!("{prefix}/n{n}/q{q}"),
                        qos,
                        false,
                        main_payload(n, q, seq),
                    )
                    .await;
                }
            }
            p
        }));
    }
    for t in tasks {
        let p = t.await.expect("a publisher panicked");
        p.disconnect().await;
    }

    let mut failures = Vec::new();
    for s in subs.iter_mut() {
        let expected: HashSet<String> = s
            .matches_nodes
            .iter()
            .flat_map(|n| {
                (0..PER_QOS).flat_map(move |seq| (0..3).map(move |q| main_payload(*n, q, seq)))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have: HashSet<&String> = s.got.iter().map(|(_, p, _)| p).collect();
            if expected.iter().all(|p| have.contains(p)) || Instant::now() > deadline {
                break;
            }
            s.pump(Duration::from_millis(200)).await;
        }
        // Anything more (a duplicate, a stranger) shows up now or not at all.
        while s.pump(QUIET).await {}

        let main: Vec<&(String, String, u8)> = s
            .got
            .iter()
            .filter(|(_, p, _)| !p.starts_with("warm-"))
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, p, _) in &main {
            *counts.entry(p.as_str()).or_default() += 1;
        }
        let mut missing: Vec<&String> = expected
            .iter()
            .filter(|p| !counts.contains_key(p.as_str()))
            .collect();
        missing.sort();
        let mut dups: Vec<(&str, usize)> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(p, n)| (*p, *n))
            .collect();
        dups.sort_unstable();
        let mut strangers: Vec<&str> = counts
            .keys()
            .copied()
            .filter(|p| !expected.contains(*p))
            .collect();
        strangers.sort_unstable();
        let mut wrong_qos = Vec::new();
        let mut disorder = Vec::new();
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (topic, payload, qos) in &main {
            // n{node}-q{qos}-{seq}
            let mut parts = payload.split('-');
            let (Some(_), Some(q), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let pub_qos: u8 = q[1..].parse().unwrap_or(9);
            let seq: usize = seq.parse().unwrap_or(usize::MAX);
            if *qos != pub_qos.min(s.max_qos) {
                wrong_qos.push(format!("{payload} at QoS {qos}"));
            }
            if let Some(prev) = last.get(topic.as_str()) {
                if seq <= *prev {
                    disorder.push(format!("{payload} after seq {prev} on {topic}"));
                }
            }
            last.insert(topic, seq);
        }
        if !missing.is_empty() {
            failures.push(format!(
                "{} MISSED {} of {}: {:?}",
                s.label,
                missing.len(),
                expected.len(),
                &missing[..missing.len().min(20)]
            ));
        }
        if !dups.is_empty() {
            failures.push(format!(
                "{} got DUPLICATES (payload, count): {dups:?}",
                s.label
            ));
        }
        if !strangers.is_empty() {
            failures.push(format!(
                "{} got messages its filter does not match: {strangers:?}",
                s.label
            ));
        }
        if !wrong_qos.is_empty() {
            failures.push(format!("{} got messages at the wrong QoS (expected min(published, granted)): {wrong_qos:?}", s.label));
        }
        if !disorder.is_empty() {
            failures.push(format!(
                "{} got messages out of their publisher's order: {disorder:?}",
                s.label
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "cross-node routing broke its promise:\n{}\n{}",
        failures.join("\n"),
        cluster.log_tails(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_visible_on_every_node() {
    let cluster = Cluster::start();
    let topic = format!("t11/{}/retained", unique_id("ret"));
    let window = Duration::from_secs(20);

    let mut p1 = V4Client::must_connect(cluster.node(1), &unique_id("t11-ret-p1")).await;
    p1.must_publish(&topic, QoS::AtLeastOnce, true, "set on node 1")
        .await;
    cluster
        .must_see_retained(3, &topic, Some("set on node 1"), window)
        .await;
    cluster
        .must_see_retained(2, &topic, Some("set on node 1"), window)
        .await;
    cluster
        .must_see_retained(1, &topic, Some("set on node 1"), window)
        .await;

    // Replaced on node 2: every node has the new one, and only it.
    let mut p2 = V4Client::must_connect(cluster.node(2), &unique_id("t11-ret-p2")).await;
    p2.must_publish(&topic, QoS::ExactlyOnce, true, "replaced on node 2")
        .await;
    for n in [3, 1, 2] {
        cluster
            .must_see_retained(n, &topic, Some("replaced on node 2"), window)
            .await;
    }

    // Cleared on node 3: no node has one any more.
    let mut p3 = V4Client::must_connect(cluster.node(3), &unique_id("t11-ret-p3")).await;
    p3.must_publish(&topic, QoS::AtLeastOnce, true, "").await;
    for n in [1, 2, 3] {
        cluster.must_see_retained(n, &topic, None, window).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_group_spread_over_the_nodes_gets_each_message_once() {
    let cluster = Cluster::start();
    let topic = format!("t11/{}/shared", unique_id("share"));
    let filter = format!("$share/g/{topic}");

    let mut members: BTreeMap<u64, V5Client> = BTreeMap::new();
    for n in cluster.ids() {
        let mut m =
            V5Client::must_connect(cluster.node(n), &unique_id(&format!("t11-member-n{n}"))).await;
        m.must_subscribe(&filter, Q5::AtLeastOnce).await;
        members.insert(n, m);
    }
    // Every node has applied the group's members.
    cluster.must_catch_up(&cluster.ids());

    const PER_NODE: usize = 30;
    let mut tasks = Vec::new();
    for n in cluster.ids() {
        let mut p =
            V5Client::must_connect(cluster.node(n), &unique_id(&format!("t11-share-pub-n{n}")))
                .await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_NODE {
                p.must_publish(&topic, Q5::AtLeastOnce, false, format!("s-n{n}-{seq:03}"))
                    .await;
            }
            p.disconnect().await;
        }));
    }
    for t in tasks {
        t.await.expect("a publisher panicked");
    }
    let expected: HashSet<String> = cluster
        .ids()
        .into_iter()
        .flat_map(|n| (0..PER_NODE).map(move |seq| format!("s-n{n}-{seq:03}")))
        .collect();

    let mut got: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut any = false;
        for (n, m) in members.iter_mut() {
            while let Some(p) = m.recv_publish(Duration::from_millis(50)).await {
                got.entry(*n).or_default().push(text(&p.payload));
                any = true;
            }
        }
        let have: HashSet<&String> = got.values().flatten().collect();
        if expected.iter().all(|p| have.contains(p)) || (!any && Instant::now() > deadline) {
            break;
        }
    }
    for (n, m) in members.iter_mut() {
        for p in m.drain_publishes(QUIET).await {
            got.entry(*n).or_default().push(text(&p.payload));
        }
    }

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for p in got.values().flatten() {
        *counts.entry(p.as_str()).or_default() += 1;
    }
    let mut missing: Vec<&String> = expected
        .iter()
        .filter(|p| !counts.contains_key(p.as_str()))
        .collect();
    missing.sort();
    let mut dups: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, n)| (*p, *n))
        .collect();
    dups.sort_unstable();
    let shares: Vec<(u64, usize)> = cluster
        .ids()
        .into_iter()
        .map(|n| (n, got.get(&n).map_or(0, Vec::len)))
        .collect();
    assert!(
        missing.is_empty() && dups.is_empty(),
        "the group must get each of the {} messages exactly once: missing {} {:?}, duplicated {dups:?}; \
         received per member node {shares:?}\n{}",
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(20)],
        cluster.log_tails(30)
    );
    let idle: Vec<u64> = shares
        .iter()
        .filter(|(_, k)| *k == 0)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        idle.is_empty(),
        "every member of the group should get some of the messages (publishers on every node); \
         members on nodes {idle:?} got none; per member node: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_taken_over_on_another_node_moves_with_its_queue() {
    let cluster = Cluster::start();
    let topic = format!("t11/{}/take", unique_id("take"));
    let id = unique_id("t11-taken");

    // On node 1: a persistent session that receives at most 2 unacknowledged
    // messages and acknowledges none.
    let mut o1 = v5_options(cluster.node(1), &id);
    o1.set_clean_start(false);
    o1.set_session_expiry_interval(Some(300));
    o1.set_receive_maximum(Some(2));
    o1.set_manual_acks(true);
    let mut first = V5Client::must_connect_with(o1).await;
    first.must_subscribe(&topic, Q5::AtLeastOnce).await;
    cluster.must_catch_up(&cluster.ids());

    // Five QoS 1 messages from node 3, each acknowledged to its publisher.
    let mut publisher = V5Client::must_connect(cluster.node(3), &unique_id("t11-take-pub")).await;
    let sent: Vec<String> = (0..5).map(|i| format!("take-{i}")).collect();
    for p in &sent {
        publisher
            .must_publish(&topic, Q5::AtLeastOnce, false, p.clone())
            .await;
    }
    let inflight = first.drain_publishes(Duration::from_secs(2)).await;
    let inflight: Vec<String> = inflight.iter().map(|p| text(&p.payload)).collect();
    assert!(
        inflight.first().map(String::as_str) == Some("take-0"),
        "the session on node 1 should have received take-0 (unacknowledged) before the takeover; got {inflight:?}"
    );

    // The same client id connects to node 2.
    let mut o2 = v5_options(cluster.node(2), &id);
    o2.set_clean_start(false);
    o2.set_session_expiry_interval(Some(300));
    let mut second = V5Client::must_connect_with(o2).await;
    assert!(
        second.connack.session_present,
        "connecting to node 2 must resume the session that lives on node 1 (session_present=1); connack {:?}",
        second.connack
    );
    let code = first.wait_server_disconnect(WAIT).await;
    assert_eq!(
        code,
        Some(0x8E),
        "the connection on node 1 must be closed with DISCONNECT 0x8E (session taken over)"
    );

    // Every message not acknowledged by the client arrives on node 2, in order.
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sent.iter().all(|p| got.contains(p)) && Instant::now() < deadline {
        if let Some(p) = second.recv_publish(Duration::from_millis(200)).await {
            got.push(text(&p.payload));
        }
    }
    got.extend(
        second
            .drain_publishes(QUIET)
            .await
            .iter()
            .map(|p| text(&p.payload)),
    );
    let mut firsts: Vec<String> = Vec::new();
    for p in &got {
        if !firsts.contains(p) {
            firsts.push(p.clone());
        }
    }
    assert_eq!(
        firsts, sent,
        "after the takeover node 2 must deliver every queued and unacknowledged QoS 1 message, in order \
         (received {got:?}; node 1 had sent {inflight:?} unacknowledged)"
    );

    // The subscription moved too: a new message published on node 3 reaches node 2.
    publisher
        .must_publish(&topic, Q5::AtLeastOnce, false, "after takeover")
        .await;
    let p = second.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "after takeover");

    cluster.node(1).must_metric_at_least(
        CONNECTIONS_CLOSED,
        &[("reason", "session_taken_over")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v311_session_taken_over_on_another_node_keeps_its_subscription() {
    let cluster = Cluster::start();
    let topic = format!("t11/{}/take4", unique_id("take4"));
    let id = unique_id("t11-taken-v4");

    let mut o3 = v4_options(cluster.node(3), &id);
    o3.set_clean_session(false);
    let mut first = V4Client::must_connect_with(o3).await;
    first.must_subscribe(&topic, QoS::AtLeastOnce).await;
    cluster.must_catch_up(&cluster.ids());

    let mut o1 = v4_options(cluster.node(1), &id);
    o1.set_clean_session(false);
    let mut second = V4Client::must_connect_with(o1).await;
    assert!(
        second.connack.session_present,
        "connecting to node 1 must resume the session that lives on node 3"
    );
    assert!(
        first.wait_closed(WAIT).await.is_some(),
        "the connection on node 3 must be closed when node 1 takes the session over"
    );

    let mut publisher = V4Client::must_connect(cluster.node(2), &unique_id("t11-take4-pub")).await;
    publisher
        .must_publish(&topic, QoS::AtLeastOnce, false, "to the new owner")
        .await;
    let p = second.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "to the new owner");
    second.must_not_recv_publish(QUIET).await;
}

/// `fleetmq ctl members list` asked at any node shows every member with its role and
/// the state each reports itself; a killed member shows as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_members_list_shows_every_nodes_state() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let asked = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let list = |cluster: &Cluster| -> serde_json::Value {
        let out = std::process::Command::new(fleetmq_tests::broker_binary())
            .args(["ctl", "members", "list", "--output", "json", "--admin"])
            .arg(cluster.node(asked).admin_addr.to_string())
            .output()
            .expect("run fleetmq ctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let json = list(&cluster);
    assert_eq!(json["leader_id"], leader);
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{json:#}");
    for m in members {
        let id = m["id"].as_u64().expect("id");
        let (role, state) = if id == leader {
            ("leader", "leader")
        } else {
            ("voter", "follower")
        };
        assert_eq!(m["role"], role, "{json:#}");
        assert_eq!(m["state"], state, "{json:#}");
        assert_eq!(m["reachable"], true, "{json:#}");
    }
    let victim = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != asked)
        .expect("a third node");
    cluster.kill9(victim);
    let json = list(&cluster);
    let dead = json["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == victim)
        .expect("the killed member is still a member");
    assert_eq!(dead["reachable"], false, "{json:#}");
}

/// What users do through a load balancer: subscribe on one node and, as soon as the
/// SUBACK is in, publish on another. The SUBACK waits until every node routes to the
/// new subscription, so no message sent after it may miss it: no probes, no waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_the_suback_on_another_node_reaches_the_subscriber() {
    let cluster = Cluster::start();
    let mut publishers = BTreeMap::new();
    for n in cluster.ids() {
        let client = V4Client::must_connect(cluster.node(n), &unique_id("t11-vis-pub")).await;
        publishers.insert(n, client);
    }
    let mut missed = Vec::new();
    for round in 0..30usize {
        // Every ordered pair of nodes, the leader on either side.
        let sub_node = (round % 3) as u64 + 1;
        let pub_node = ((round + 1 + round / 3 % 2) % 3) as u64 + 1;
        assert_ne!(sub_node, pub_node);
        let topic = format!("t11/{}/vis/{round}", unique_id("vis"));
        let mut sub =
            V4Client::must_connect(cluster.node(sub_node), &unique_id("t11-vis-sub")).await;
        sub.must_subscribe(&topic, QoS::AtLeastOnce).await;
        let publisher = publishers.get_mut(&pub_node).expect("a publisher per node");
        publisher
            .must_publish(&topic, QoS::AtLeastOnce, false, format!("r{round}"))
            .await;
        match sub.recv_publish(WAIT).await {
            Some(p) => assert_eq!(text(&p.payload), format!("r{round}")),
            None => missed.push(format!(
                "round {round}: subscribed on {sub_node}, published on {pub_node}"
            )),
        }
        sub.disconnect().await;
    }
    assert!(
        missed.is_empty(),
        "acknowledged messages published after the SUBACK never arrived:\n{}\n{}",
        missed.join("\n"),
        cluster.log_tails(20)
    );
}
