//! Faults that are neither a clean death nor a clean restart, in a three-node
//! cluster under traffic:
//!
//! - The Raft leader's process frozen (SIGSTOP) for 8 s, then thawed (SIGCONT): a
//!   stalled VM or a long pause. Its sockets stay open and silent; its clients give
//!   it up by their own timeouts and resume their sessions on the other nodes,
//!   resending what was not acknowledged (same packet ids, DUP). The other nodes'
//!   publishers wait for acknowledgements that need the frozen leader, give up too
//!   and resend elsewhere, while their node still holds the batch it could not commit.
//! - The leader cut off from the other two for 10 s (the partition proxy), its
//!   clients moving to the majority the same way (its subscribers when the stream
//!   dries up: a cut-off node still answers PINGREQ).
//!
//!   In both, every persistent publisher streams QoS 1 and QoS 2 to persistent
//!   subscribers on every node: nothing acknowledged is lost, no QoS 2 message is
//!   delivered twice (a PUBLISH resent to a new node must not be routed again by the
//!   node that took it first and commits it late), each publisher's order is kept.
//!   QoS 1 duplicates are allowed and counted.
//! - Two clients on two nodes setting one retained topic at once, in rounds: after
//!   every round every node has the same retained message.
//! - Rolling restarts (SIGTERM; the leader first whenever it is left to restart)
//!   under MQTT 5 clients that go back and forth between the nodes with their
//!   sessions: no node hands out a session that is then taken over at once (CONNACK
//!   session present, then DISCONNECT 0x8E within 1 s, with no other connection of
//!   that client anywhere).
//!
//! The traffic clients are `cluster::Publisher` (persistent here) and
//! `cluster::DurableSubscriber`, with `Liveness::quick` timeouts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetmq_codec::{ConnectProperties, Packet, ProtocolVersion, PubResponse, QoS as CQoS};
use fleetmq_tests::cluster::{
    check_delivery, wait_delivered, wait_more_acked, warm_up, DurableSubscriber, Liveness, PubLog,
    Publisher, PublisherSpec, SubLog,
};
use fleetmq_tests::raw::{connect_packet, publish_packet};
use fleetmq_tests::{text, unique_id, Cluster, RawClient, Recv};

/// How long subscribers may take to receive everything once publishers stopped.
const DELIVERY_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGSTOP for 8 s, then SIGCONT.
    Pause,
    /// Cut off from the other nodes for 10 s, then healed.
    Isolate,
}

/// How long the other nodes may go without acknowledging a publish while the leader
/// is out: an election takes 1.2-1.8 s here (docs/cluster-design.md, "Node failure").
const SURVIVORS_ACK_WITHIN: Duration = Duration::from_secs(2);

/// The stretches over 300 ms within `from..to` without an acknowledgement: when each
/// began after `from`, and how long it was.
fn silences(acked_at: &[Instant], from: Instant, to: Instant) -> Vec<(Duration, Duration)> {
    let mut last = from;
    let mut out = Vec::new();
    for at in acked_at
        .iter()
        .copied()
        .filter(|at| *at > from && *at < to)
        .chain([to])
    {
        let gap = at.duration_since(last);
        if gap > Duration::from_millis(300) {
            out.push((last.duration_since(from), gap));
        }
        last = at;
    }
    out
}

/// The longest stretch within `from..to` without an acknowledgement in `acked_at`.
fn longest_silence(acked_at: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for at in acked_at.iter().filter(|at| **at > from && **at < to) {
        longest = longest.max(at.duration_since(last));
        last = *at;
    }
    longest.max(to.duration_since(last))
}

/// QoS 1 payloads each subscriber got more than once (allowed, reported).
fn qos1_duplicates(subs: &[SubLog], pubs: &[PubLog]) -> Vec<(String, usize)> {
    let qos1: HashSet<&str> = pubs
        .iter()
        .flat_map(|p| p.sent.iter())
        .filter(|(_, _, q)| *q == CQoS::AtLeastOnce)
        .map(|(_, p, _)| p.as_str())
        .collect();
    subs.iter()
        .map(|s| {
            let n = s
                .deliveries
                .iter()
                .filter(|(p, n)| **n > 1 && qos1.contains(p.as_str()))
                .count();
            (s.client_id.clone(), n)
        })
        .collect()
}

/// Persistent publishers and subscribers on every node; the leader suffers `fault`
/// while they stream; everything is judged by `check_delivery`.
async fn leader_fault_under_a_qos1_qos2_stream(fault: Fault) {
    let mut cluster = match fault {
        Fault::Pause => Cluster::start(),
        Fault::Isolate => Cluster::start_proxied(),
    };
    let prefix = format!("t18/{}", unique_id("fault"));
    let filter = format!("{prefix}/#");
    let liveness = match fault {
        Fault::Pause => Liveness::quick(),
        // A cut-off node still answers PINGREQ: its subscribers leave it when the
        // stream dries up.
        Fault::Isolate => Liveness::quick().quiet_after(Duration::from_secs(3)),
    };

    let mut subs = Vec::new();
    for n in cluster.ids() {
        subs.push(
            DurableSubscriber::start_with(
                &cluster,
                n,
                &unique_id(&format!("t18-sub-n{n}")),
                &filter,
                liveness,
            )
            .await,
        );
    }
    let refs: Vec<&DurableSubscriber> = subs.iter().collect();
    let known = warm_up(
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
        .map(|n| {
            let mut spec = PublisherSpec::new(&format!("p{n}"), &prefix).persistent();
            // Every third message QoS 2: many QoS 2 PUBLISHes in flight at the fault.
            spec.qos2_every = 3;
            Publisher::start(&cluster, n, spec)
        })
        .collect();
    wait_more_acked(&cluster, &pubs, 30, Duration::from_secs(30)).await;

    let leader = cluster.leader();
    let acked_before: usize = pubs.iter().map(Publisher::acked).sum();
    let faulted_at = Instant::now();
    let hold = match fault {
        Fault::Pause => {
            cluster.pause(leader);
            Duration::from_secs(8)
        }
        Fault::Isolate => {
            cluster.isolate(leader);
            Duration::from_secs(10)
        }
    };
    eprintln!("{fault:?} of the leader {leader} with {acked_before} messages acknowledged");
    tokio::time::sleep(hold).await;
    let acked_during = pubs.iter().map(Publisher::acked).sum::<usize>() - acked_before;
    match fault {
        Fault::Pause => cluster.resume(leader),
        Fault::Isolate => cluster.heal(leader),
    }
    let new_leader = cluster.must_agree_on_leader(&cluster.ids());

    // The stream goes on a while through the whole cluster again, then stops.
    wait_more_acked(&cluster, &pubs, 40, Duration::from_secs(30)).await;
    let mut pub_logs = Vec::new();
    for p in pubs.iter_mut() {
        pub_logs.push(p.finish(Duration::from_secs(40)).await);
    }
    let mut expected: HashSet<String> = HashSet::new();
    for l in &pub_logs {
        expected.extend(l.acked.iter().cloned());
    }
    wait_delivered(&refs, &expected, DELIVERY_WINDOW, Duration::from_secs(3)).await;
    let logs: Vec<SubLog> = subs.iter().map(DurableSubscriber::snapshot).collect();
    let dup1 = qos1_duplicates(&logs, &pub_logs);
    eprintln!("QoS 1 duplicates per subscriber (allowed): {dup1:?}");
    // The faulted node's clients resumed their sessions elsewhere meanwhile (so that
    // what follows tests a move).
    let i = (leader - 1) as usize;
    let moved_sub = &logs[i];
    let moved_pub = &pub_logs[i];
    let elsewhere = |c: &fleetmq_tests::cluster::Conn| {
        c.node != leader && c.session_present && c.at > faulted_at && c.at < faulted_at + hold
    };
    assert!(
        moved_sub.connections.iter().any(elsewhere),
        "{} (on node {leader}) should have resumed its session on another node while node \
         {leader} was out; connections {:?}, notes {:?}",
        moved_sub.client_id,
        moved_sub.connections,
        moved_sub.notes
    );
    assert!(
        moved_pub.connections.iter().any(elsewhere),
        "publisher {} (on node {leader}) should have resumed its session on another node \
         while node {leader} was out; connections {:?}, notes {:?}",
        moved_pub.name,
        moved_pub.connections,
        moved_pub.notes
    );
    // The other nodes' publishers are acknowledged again soon: their node's writes,
    // forwarded to the leader that froze or was cut off, go to the new leader as soon as
    // one is known (an election: lease plus timeout, 1.2-1.8 s).
    let survivors_silent = pub_logs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, l)| longest_silence(&l.acked_at, faulted_at, faulted_at + hold))
        .max()
        .unwrap_or_default();
    let gaps: Vec<(String, Vec<(Duration, Duration)>)> = pub_logs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, l)| {
            (
                l.name.clone(),
                silences(&l.acked_at, faulted_at, faulted_at + hold),
            )
        })
        .collect();
    eprintln!(
        "{fault:?}: the other nodes' publishers went at most {survivors_silent:?} without an \
         acknowledgement while the leader was out; gaps over 300 ms (start after the fault, \
         length): {gaps:?}"
    );
    assert!(
        survivors_silent < SURVIVORS_ACK_WITHIN,
        "{fault:?} of the leader {leader}: the other nodes acknowledged nothing for \
         {survivors_silent:?} (at most {SURVIVORS_ACK_WITHIN:?})\n{}",
        cluster.log_tails(30)
    );
    let summary = match check_delivery(&logs, &pub_logs, &HashSet::new(), &known) {
        Ok(s) => s,
        Err(report) => panic!(
            "{fault:?} of the leader {leader} for {hold:?} (new leader {new_leader}): the \
             promise was broken:\n{report}\n{}",
            cluster.log_tails(40)
        ),
    };

    let applied = cluster.must_agree(&cluster.ids());
    cluster.must_be_running();
    eprintln!(
        "{fault:?} of the leader {leader} for {hold:?}: {acked_during} messages acknowledged \
         meanwhile; new leader {new_leader}; all nodes at last_applied {applied}; QoS 1 \
         duplicates {dup1:?}\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_delivers_no_qos2_twice() {
    leader_fault_under_a_qos1_qos2_stream(Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_delivers_no_qos2_twice() {
    leader_fault_under_a_qos1_qos2_stream(Fault::Isolate).await;
}

// ---- one retained topic, two writers --------------------------------------------

/// Sends `count` retained QoS 1 messages `NAME-SEQ` (from `first`) to `topic` through
/// a window of 16 unacknowledged and waits for every PUBACK.
async fn retained_burst(c: &mut RawClient, topic: &str, name: &str, first: usize, count: usize) {
    let mut outstanding = 0usize;
    let mut acked = 0usize;
    let mut next = first;
    while acked < count {
        while next < first + count && outstanding < 16 {
            let payload = format!("{name}-{next:06}");
            let mut p = publish_packet(
                topic,
                CQoS::AtLeastOnce,
                Some((next % 60_000 + 1) as u16),
                payload.as_bytes(),
            );
            p.retain = true;
            c.must_send(Packet::Publish(p)).await;
            next += 1;
            outstanding += 1;
        }
        match c.recv(Duration::from_secs(10)).await {
            Ok(Recv::Packet(Packet::PubAck(a))) if !a.reason_code.is_error() => {
                acked += 1;
                outstanding -= 1;
            }
            other => panic!("{name}: {acked} of {count} acknowledged, then {other:?}"),
        }
    }
}

/// The retained messages a fresh clean session subscribing to `topic` on `addr` gets
/// (payloads), listening until 300 ms pass without one.
async fn retained_now(addr: SocketAddr, topic: &str) -> Result<Vec<String>, String> {
    let connect = connect_packet(
        ProtocolVersion::V3_1_1,
        &unique_id("t18-ret-probe"),
        true,
        30,
    );
    let (mut c, _) = RawClient::connect(addr, connect)
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    c.must_subscribe(1, topic, CQoS::AtLeastOnce).await;
    let mut got = Vec::new();
    loop {
        match c.recv(Duration::from_millis(300)).await {
            Ok(Recv::Packet(Packet::Publish(p))) if p.retain => got.push(text(&p.payload)),
            Ok(Recv::Packet(_)) => {}
            Ok(Recv::Timeout) => break,
            other => return Err(format!("while reading retained messages: {other:?}")),
        }
    }
    c.disconnect().await;
    Ok(got)
}

/// Two writers on two nodes set one retained topic at once, 1,000 times each, in 20
/// rounds of 50 started together; after every round a fresh subscriber on every node
/// must get the same single retained message (within 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_setting_one_retained_topic_concurrently_agree() {
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 50;
    let cluster = Cluster::start();
    let topic = format!("t18/{}/retained", unique_id("ret"));
    let mut writers = Vec::new();
    for (n, name) in [(1u64, "a"), (2u64, "b")] {
        let connect = connect_packet(
            ProtocolVersion::V3_1_1,
            &unique_id(&format!("t18-ret-{name}")),
            true,
            30,
        );
        let (c, _) = RawClient::must_connect_with(cluster.node(n).mqtt_addr, connect).await;
        writers.push((c, format!("n{n}{name}")));
    }
    let addrs: Vec<(u64, SocketAddr)> = cluster.endpoints();
    let mut disagreements = Vec::new();
    let mut last = Vec::new();
    for round in 0..ROUNDS {
        let [(a, an), (b, bn)] = &mut writers[..] else {
            unreachable!("two writers")
        };
        tokio::join!(
            retained_burst(a, &topic, an, round * PER_ROUND, PER_ROUND),
            retained_burst(b, &topic, bn, round * PER_ROUND, PER_ROUND),
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (r1, r2, r3) = tokio::join!(
                retained_now(addrs[0].1, &topic),
                retained_now(addrs[1].1, &topic),
                retained_now(addrs[2].1, &topic),
            );
            let seen: Vec<(u64, Result<Vec<String>, String>)> =
                vec![(addrs[0].0, r1), (addrs[1].0, r2), (addrs[2].0, r3)];
            let values: HashSet<&Vec<String>> =
                seen.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
            let agree = values.len() == 1
                && seen
                    .iter()
                    .all(|(_, r)| r.as_ref().is_ok_and(|v| v.len() == 1));
            if agree || Instant::now() > deadline {
                if !agree {
                    disagreements.push(format!("after round {round}: {seen:?}"));
                }
                last = seen;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let total = ROUNDS * PER_ROUND;
    eprintln!(
        "{total} retained PUBLISHes from each of two nodes: {} of {ROUNDS} rounds ended with \
         the nodes disagreeing for 3 s; at the end {last:?}",
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "two writers on nodes 1 and 2 set the retained message of {topic:?} at once ({ROUNDS} \
         rounds of {PER_ROUND} each): after {} rounds a fresh subscriber on each node still got \
         different retained messages 3 s later (node, what it got):\n{}\n{}",
        disagreements.len(),
        disagreements.join("\n"),
        cluster.log_tails(20)
    );
}

// ---- rolling restart, sessions that keep moving ---------------------------------

/// One connection of a [`Cycler`].
#[derive(Debug, Clone)]
struct CycleConn {
    node: u64,
    session_present: bool,
    connected: Instant,
    /// DISCONNECT reason the server sent, and when.
    server_disconnect: Option<(u8, Instant)>,
    /// Closed by the server without DISCONNECT.
    closed: Option<Instant>,
}

/// An MQTT 5 client with a persistent session (expiry 300 s) that goes back and
/// forth between its home node and the two others: home, another, home, the third,
/// ... It holds each connection `hold`, sends nothing but acks while there, and ends
/// it with a normal DISCONNECT. While its home node is down it retries it every 50 ms
/// for `patience` before going on, so that it is among the first CONNECTs a restarted
/// node takes, for a session that moved away meanwhile, and so that the clients of a
/// stopped node claim their sessions elsewhere at different moments of the cluster's
/// reaction (election, failover's move of the node's sessions). One connection at a time, so
/// nothing but the broker's own mistake can take its session over.
async fn cycler(
    client_id: String,
    endpoints: Vec<(u64, SocketAddr)>,
    home: usize,
    hold: Duration,
    patience: Duration,
    until: std::sync::Arc<std::sync::atomic::AtomicBool>,
    topic: String,
) -> (Vec<CycleConn>, Vec<String>) {
    use std::sync::atomic::Ordering;
    let others: Vec<usize> = (0..endpoints.len()).filter(|i| *i != home).collect();
    let mut conns = Vec::new();
    let mut odd = Vec::new();
    let mut k = 0usize;
    while !until.load(Ordering::SeqCst) {
        let to_home = k % 2 == 0;
        let target = if to_home {
            home
        } else {
            others[(k / 2) % others.len()]
        };
        k += 1;
        let (node, addr) = endpoints[target];
        let give_up = Instant::now() + patience;
        let got = loop {
            let mut connect = connect_packet(ProtocolVersion::V5, &client_id, false, 10);
            connect.properties = ConnectProperties {
                session_expiry_interval: Some(300),
                ..ConnectProperties::default()
            };
            let got =
                tokio::time::timeout(Duration::from_secs(5), RawClient::connect(addr, connect))
                    .await;
            match &got {
                Ok(Ok((_, ack))) if !ack.reason_code.is_error() => {}
                Ok(Ok((_, ack))) => odd.push(format!("node {node}: CONNACK {:?}", ack.reason_code)),
                Ok(Err(e)) if !format!("{e:#}").contains("refused") => {
                    odd.push(format!("node {node}: {e:#}"));
                }
                Ok(Err(_)) => {}
                Err(_) => odd.push(format!("node {node}: no CONNACK within 5 s")),
            }
            match got {
                Ok(Ok((c, ack))) if !ack.reason_code.is_error() => break Some((c, ack)),
                _ if to_home && Instant::now() < give_up && !until.load(Ordering::SeqCst) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => break None,
            }
        };
        let Some((mut c, ack)) = got else {
            continue;
        };
        let mut conn = CycleConn {
            node,
            session_present: ack.session_present,
            connected: Instant::now(),
            server_disconnect: None,
            closed: None,
        };
        if conns.is_empty() {
            // The session's state: one subscription.
            c.must_subscribe(1, &topic, CQoS::AtLeastOnce).await;
        }
        let end = conn.connected + hold;
        let mut open = true;
        while open && Instant::now() < end {
            match c.recv(Duration::from_millis(100)).await {
                Ok(Recv::Packet(Packet::Disconnect(d))) => {
                    conn.server_disconnect = Some((d.reason_code.as_u8(), Instant::now()));
                    open = false;
                }
                Ok(Recv::Packet(Packet::Publish(p))) => {
                    if let (CQoS::AtLeastOnce, Some(pid)) = (p.qos, p.packet_id) {
                        let _ = c.send(Packet::PubAck(PubResponse::new(pid))).await;
                    }
                }
                Ok(Recv::Packet(_)) | Ok(Recv::Timeout) => {}
                Ok(Recv::Closed) | Err(_) => {
                    conn.closed = Some(Instant::now());
                    open = false;
                }
            }
        }
        if open {
            c.disconnect().await;
        }
        conns.push(conn);
    }
    (conns, odd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_former_leader_never_serves_a_stale_session() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut cluster = Cluster::start();
    let prefix = format!("t18/{}", unique_id("roll"));
    let endpoints = cluster.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    // Times in the report are from here.
    let started = Instant::now();
    // Eight clients per node, staggered.
    let mut clients = Vec::new();
    for i in 0..24usize {
        let id = unique_id(&format!("t18-cycle-{i}"));
        let hold = Duration::from_millis(500 + 150 * (i as u64 % 4));
        let patience = Duration::from_millis(500 + 200 * (i as u64 / 3 % 8));
        clients.push((
            id.clone(),
            tokio::spawn(cycler(
                id.clone(),
                endpoints.clone(),
                i % endpoints.len(),
                hold,
                patience,
                stop.clone(),
                format!("{prefix}/{i}"),
            )),
        ));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Three rolling restarts. Each node is stopped once per round, each restarted
    // before the next is stopped, and the next is the leader whenever the leader has
    // not been restarted in this round yet: a leader's SIGTERM hands leadership over,
    // and it is the former leader that comes back.
    let mut notes = Vec::new();
    for _ in 0..3 {
        let mut left: Vec<u64> = cluster.ids();
        while !left.is_empty() {
            let leader = cluster.leader();
            let id = if left.contains(&leader) {
                leader
            } else {
                left[0]
            };
            left.retain(|n| *n != id);
            let stopping = Instant::now();
            let clean = cluster.stop(id);
            let stopped_after = stopping.elapsed();
            cluster.restart(id);
            let new_leader = cluster.must_agree_on_leader(&cluster.ids());
            notes.push(format!(
                "at {:?} node {id}{} stopped in {stopped_after:?} (clean {clean}), ready again \
                 at {:?}; leader {new_leader}",
                stopping.duration_since(started),
                if id == leader { " (the leader)" } else { "" },
                started.elapsed()
            ));
            // The clients go through the restarted node a few times.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);

    let mut stale = Vec::new();
    let mut lost = Vec::new();
    let mut other_takeovers = Vec::new();
    let mut failed_connects = Vec::new();
    let mut total = 0usize;
    for (id, task) in clients {
        let (conns, odd) = task.await.expect("cycler task");
        failed_connects.extend(odd.into_iter().map(|o| format!("{id}: {o}")));
        total += conns.len();
        for (k, c) in conns.iter().enumerate() {
            if k > 0 && !c.session_present {
                lost.push(format!("{id}: connection #{k} on node {}", c.node));
            }
            if let Some((0x8E, at)) = c.server_disconnect {
                let after = at.duration_since(c.connected);
                let what = format!(
                    "{id}: connection #{k} on node {} at {:?} (session present {}) got \
                     DISCONNECT 0x8E {after:?} after its CONNACK",
                    c.node,
                    c.connected.duration_since(started),
                    c.session_present
                );
                if c.session_present && after < Duration::from_secs(1) {
                    stale.push(what);
                } else {
                    other_takeovers.push(what);
                }
            }
        }
    }
    eprintln!(
        "rolling restart: {notes:#?}\n{total} connections; stale sessions served {}; sessions \
         lost {}; other takeovers {other_takeovers:?}; {} CONNECTs answered otherwise than by a \
         CONNACK or a refused TCP connection (first 20): {:#?}",
        stale.len(),
        lost.len(),
        failed_connects.len(),
        &failed_connects[..failed_connects.len().min(20)]
    );
    assert!(
        stale.is_empty() && lost.is_empty(),
        "during a rolling restart, clients that only ever hold one connection each were \
         handed a session a node no longer held ({} times: CONNACK session present, then \
         DISCONNECT 0x8E within 1 s) or lost their session ({} times):\n{stale:#?}\n{lost:#?}\n\
         the restarts: {notes:#?}\n{}",
        stale.len(),
        lost.len(),
        cluster.log_tails(30)
    );
    cluster.must_be_running();
}
