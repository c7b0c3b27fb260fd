//! `failover`: SIGKILL the leader of a three-node cluster and time the recovery.
//!
//! On each node `--clients-per-node` persistent clients (MQTT 3.1.1, clean session
//! = 0) subscribe at QoS 1, one topic each; a publisher on a node that survives
//! publishes QoS 1 every `--publish-interval` to the topics of the leader's clients.
//! Then the leader is killed with SIGKILL, and the run measures, from the instant the
//! signal was sent:
//! - (a) until both survivors name the same new leader (`ClusterStatus` polled on
//!   each every `--poll-interval`);
//! - (b) until every client of the dead node, having seen its connection end and
//!   reconnected at once to a survivor (client i tries survivor i mod 2 first, then
//!   alternates), has a CONNACK with session present = 1;
//! - (c) until the publisher gets the PUBACK of a PUBLISH it handed over after the
//!   kill (a message that can only be acknowledged once the cluster commits again).
//!
//! Afterwards every acknowledged message must reach its (resumed) client.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, Packet};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::fleetmq::{cluster_status, status_client, Cluster, LogIssues, NodeMetrics, RaftState};
use crate::payload::{us_of, Stamp};
use crate::publisher::{lock, Publisher, PublisherSpec};
use crate::stats::{self, Aim, Spread};
use crate::sysinfo::{self, note, LoadGate};
use crate::{clients, parse_duration, Common, Outcome};

/// How long one reconnection attempt may wait for its CONNACK. Longer than the
/// broker's `mqtt.connect_timeout` (10 s), so that its own answer is seen.
const CONNACK_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause after a failed reconnection attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// `failover` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Persistent clients on each of the three nodes.
    #[arg(long, default_value_t = 100)]
    pub clients_per_node: usize,
    /// Repetitions, each on a fresh cluster.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Time between the publisher's QoS 1 PUBLISH packets.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub publish_interval: Duration,
    /// How often each survivor is asked for the leader after the kill.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Publishing before the kill.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// How long after the kill the three measurements may take in all.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Payload bytes per message (at least 20, the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// How one client of the dead node came back.
#[derive(Debug, Clone, Serialize)]
pub struct Resume {
    /// Milliseconds from the kill until the client saw its connection end.
    pub lost_ms: f64,
    /// What the client saw when its connection ended.
    pub lost_reason: String,
    /// Milliseconds from the kill until the accepted CONNACK.
    pub connack_ms: f64,
    pub node: u64,
    pub session_present: bool,
    pub attempts: u32,
}

#[derive(Default)]
struct ClientState {
    received: HashSet<u64>,
    duplicates: u64,
    /// Connection losses seen, with the instant of the first.
    losses: u32,
    first_loss: Option<(Instant, String)>,
    resume: Option<(Instant, u64, bool, u32)>,
    /// Failed reconnection attempts: "node N: error".
    attempt_errors: Vec<String>,
}

struct Client {
    id: String,
    node: u64,
    state: Arc<Mutex<ClientState>>,
}

/// Figures of one run.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub load: LoadGate,
    pub load1_at_end: f64,
    pub killed_leader: u64,
    pub new_leader: Option<u64>,
    /// (a) kill → both survivors name the same new leader.
    pub leader_ms: Option<f64>,
    /// (b) kill → the last client of the dead node resumed its session.
    pub all_resumed_ms: Option<f64>,
    /// Median over the dead node's clients of kill → CONNACK.
    pub resumed_median_ms: Option<f64>,
    /// Slowest kill → connection loss seen by a client of the dead node.
    pub loss_seen_max_ms: Option<f64>,
    /// (c) kill → PUBACK of the first PUBLISH handed over after the kill.
    pub first_puback_ms: Option<f64>,
    /// Kill → the first PUBACK of any message (some were committed before the kill).
    pub first_any_puback_ms: Option<f64>,
    pub clients_of_dead_node: usize,
    pub resumed: usize,
    pub resumed_without_session: Vec<String>,
    pub not_resumed: Vec<String>,
    /// Clients of the surviving nodes whose connection ended (should be none).
    pub survivor_clients_disconnected: Vec<String>,
    pub reconnect_attempts_failed: usize,
    pub reconnect_error_samples: Vec<String>,
    pub published: u64,
    pub acked: u64,
    /// Acknowledged messages that never reached their client.
    pub lost: u64,
    pub lost_samples: Vec<String>,
    pub duplicates: u64,
    pub client_errors: Vec<String>,
    pub node_exits: Vec<String>,
    pub metrics: Vec<NodeMetrics>,
    pub log_issues: Vec<LogIssues>,
    /// The survivors' Raft state at the end of the run.
    pub raft_at_end: Vec<RaftState>,
    pub resumes: BTreeMap<String, Resume>,
}

pub async fn run(args: &Args, common: &Common) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.clients_per_node > 0,
        "--clients-per-node must be at least 1"
    );
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for i in 1..=args.runs {
        note(&format!(
            "failover run {i}/{}: 3 nodes, {} persistent clients per node",
            args.runs, args.clients_per_node
        ));
        match run_once(args, common, i).await {
            Ok(r) => {
                problems.extend(run_problems(&r));
                note(&format!(
                    "run {i}: new leader {} ms, all resumed {} ms, first PUBACK {} ms",
                    ms_text(r.leader_ms),
                    ms_text(r.all_resumed_ms),
                    ms_text(r.first_puback_ms)
                ));
                runs.push(Ok(r));
            }
            Err(e) => {
                problems.push(format!("run {i} failed: {e:#}"));
                runs.push(Err(format!("{e:#}")));
            }
        }
    }
    let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut summary: BTreeMap<&'static str, Spread> = BTreeMap::new();
    type Figure = (&'static str, fn(&RunResult) -> Option<f64>);
    let figures: [Figure; 6] = [
        ("leader_ms", |r| r.leader_ms),
        ("all_resumed_ms", |r| r.all_resumed_ms),
        ("resumed_median_ms", |r| r.resumed_median_ms),
        ("first_puback_ms", |r| r.first_puback_ms),
        ("loss_seen_max_ms", |r| r.loss_seen_max_ms),
        ("load1_at_start", |r| Some(r.load.load1_at_start)),
    ];
    for (key, f) in figures {
        // A run that never reached the figure counts as infinitely slow, so the
        // median cannot hide it.
        let values: Vec<f64> = ok.iter().map(|r| f(r).unwrap_or(f64::INFINITY)).collect();
        if let Some(s) = Spread::of(&values) {
            summary.insert(key, s);
        }
    }
    let median = |k: &str| summary.get(k).map(|s| s.median);
    let mut aims = Vec::new();
    if let Some(v) = median("leader_ms") {
        aims.push(Aim {
            aim: "new leader under 1 s after SIGKILL of the leader".into(),
            measured: format!("{v:.0} ms"),
            met: v < 1000.0,
        });
    }
    if let Some(v) = median("all_resumed_ms") {
        aims.push(Aim {
            aim: "all clients of the dead node resumed under 3 s".into(),
            measured: format!("{v:.0} ms"),
            met: v < 3000.0,
        });
    }
    let mut text = format!(
        "failover: 3 nodes, {} persistent clients per node, publisher every {:?}, {} run(s) ({} ok)\n",
        args.clients_per_node,
        args.publish_interval,
        args.runs,
        ok.len()
    );
    for r in &ok {
        text.push_str(&format!(
            "  run {}: killed leader {}, new leader {:?}: (a) {} ms; (b) all {} resumed {} ms \
             (median client {} ms); (c) first PUBACK {} ms; lost {}; load {:.2}\n",
            r.run,
            r.killed_leader,
            r.new_leader,
            ms_text(r.leader_ms),
            r.clients_of_dead_node,
            ms_text(r.all_resumed_ms),
            ms_text(r.resumed_median_ms),
            ms_text(r.first_puback_ms),
            r.lost,
            r.load.load1_at_start
        ));
    }
    for (label, key) in [
        ("(a) new leader", "leader_ms"),
        ("(b) all resumed", "all_resumed_ms"),
        ("(c) first PUBACK", "first_puback_ms"),
    ] {
        if let Some(s) = summary.get(key) {
            text.push_str(&format!("  {label:<17} median {}\n", s.line(0, "ms")));
        }
    }
    text.push_str(&stats::aim_lines(&aims));
    let runs_json = stats::runs_json(&runs);
    Ok(Outcome {
        scenario: "failover",
        params: json!({
            "nodes": 3,
            "clients_per_node": args.clients_per_node,
            "runs": args.runs,
            "publish_interval_ms": args.publish_interval.as_secs_f64() * 1000.0,
            "poll_interval_ms": args.poll_interval.as_secs_f64() * 1000.0,
            "settle_s": args.settle.as_secs_f64(),
            "timeout_s": args.timeout.as_secs_f64(),
            "payload_bytes": args.payload,
        }),
        runs: runs_json,
        summary: serde_json::to_value(&summary)?,
        aims,
        problems,
        text,
    })
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_string(), |v| format!("{v:.0}"))
}

fn run_problems(r: &RunResult) -> Vec<String> {
    let run = r.run;
    let mut p = Vec::new();
    if r.lost > 0 {
        p.push(format!(
            "run {run}: {} acknowledged message(s) never delivered, e.g. {:?}",
            r.lost, r.lost_samples
        ));
    }
    if !r.resumed_without_session.is_empty() {
        p.push(format!(
            "run {run}: CONNACK with session present = 0 for {:?}",
            r.resumed_without_session
        ));
    }
    if !r.not_resumed.is_empty() {
        p.push(format!(
            "run {run}: {} client(s) of the dead node never resumed: {:?}",
            r.not_resumed.len(),
            r.not_resumed.iter().take(10).collect::<Vec<_>>()
        ));
    }
    if !r.survivor_clients_disconnected.is_empty() {
        p.push(format!(
            "run {run}: clients of surviving nodes lost their connection: {:?}",
            r.survivor_clients_disconnected
        ));
    }
    for (what, v) in [
        ("a new leader", r.leader_ms),
        ("a PUBACK after the kill", r.first_puback_ms),
    ] {
        if v.is_none() {
            p.push(format!("run {run}: no {what} within the time limit"));
        }
    }
    for e in r.client_errors.iter().chain(&r.node_exits) {
        p.push(format!("run {run}: {e}"));
    }
    for m in &r.metrics {
        if m.dropped > 0.0 || m.slow_consumer_disconnects > 0.0 {
            p.push(format!(
                "run {run}: node {} dropped {} message(s), {} slow-consumer disconnect(s)",
                m.node, m.dropped, m.slow_consumer_disconnects
            ));
        }
    }
    for l in &r.log_issues {
        if l.panic > 0 {
            p.push(format!(
                "run {run}: node {} panicked: {:?}",
                l.node, l.samples
            ));
        }
    }
    p
}

async fn run_once(args: &Args, common: &Common, run: usize) -> anyhow::Result<RunResult> {
    let load = sysinfo::wait_for_load(common.max_load, common.load_wait).await;
    note(&format!(
        "1-minute load at start: {:.2}",
        load.load1_at_start
    ));
    let mut cluster = Cluster::start(
        &common.fleetmq_bin,
        3,
        &common.work_dir,
        common.keep_dirs,
        None,
    )
    .await
    .context("start the cluster")?;
    let leader = cluster.wait_leader().await?;
    let survivors: Vec<(u64, SocketAddr)> = cluster
        .nodes
        .iter()
        .filter(|n| n.addrs.id != leader)
        .map(|n| (n.addrs.id, n.addrs.mqtt))
        .collect();
    if survivors.len() != 2 {
        bail!("expected two nodes besides the leader {leader}");
    }
    let nodes: Vec<(u64, SocketAddr)> = cluster
        .nodes
        .iter()
        .map(|n| (n.addrs.id, n.addrs.mqtt))
        .collect();

    // The clients, connected a few at a time (each CONNECT and SUBSCRIBE is a write).
    let (stop, stop_rx) = watch::channel(false);
    let mut clients: Vec<Client> = Vec::new();
    let mut connecting = JoinSet::new();
    let gate = Arc::new(Semaphore::new(32));
    for &(node, addr) in &nodes {
        for i in 0..args.clients_per_node {
            let id = format!("fo-{run}-{node}-{i}");
            let topic = format!("fo/{run}/{node}/{i}");
            let targets: Vec<(u64, SocketAddr)> = if node == leader {
                vec![survivors[i % 2], survivors[(i + 1) % 2]]
            } else {
                let other = survivors.iter().copied().filter(|s| s.0 != node);
                std::iter::once((node, addr)).chain(other).collect()
            };
            let state = Arc::new(Mutex::new(ClientState::default()));
            clients.push(Client {
                id: id.clone(),
                node,
                state: state.clone(),
            });
            let gate = gate.clone();
            let stop_rx = stop_rx.clone();
            connecting.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let (client, mut eventloop, _) =
                    clients::connect(clients::options(&id, addr, false, 100), 16, CONNACK_TIMEOUT)
                        .await?;
                clients::subscribe_qos1(&client, &mut eventloop, &topic, CONNACK_TIMEOUT).await?;
                tokio::spawn(client_loop(id, client, eventloop, targets, state, stop_rx));
                anyhow::Ok(())
            });
        }
    }
    while let Some(joined) = connecting.join_next().await {
        joined
            .context("a connecting task")?
            .context("connect a client")?;
    }

    // The publisher on a survivor, to the leader's clients.
    let topics: Vec<String> = (0..args.clients_per_node)
        .map(|i| format!("fo/{run}/{leader}/{i}"))
        .collect();
    let publisher = Publisher::start(PublisherSpec {
        index: 0,
        client_id: format!("fo-pub-{run}"),
        addr: survivors[0].1,
        topics: Arc::new(topics),
        offset: 0,
        payload: args.payload,
        inflight: 100,
        start: Instant::now(),
        interval: Some(args.publish_interval),
    })
    .await
    .context("connect the publisher")?;
    tokio::time::sleep(args.settle).await;
    if publisher.failed() || lock(&publisher.state).acks.is_empty() {
        bail!("the publisher got no PUBACK before the kill");
    }

    // The kill, and (a): both survivors name the same new leader.
    let status: Vec<_> = survivors
        .iter()
        .map(|(id, _)| cluster.node(*id).map(|n| n.addrs.grpc))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .map(status_client)
        .collect::<anyhow::Result<_>>()?;
    // Open the gRPC connections before the kill, so that (a) does not include them.
    for c in &status {
        let _ = cluster_status(c).await;
    }
    let killed_at = cluster.node_mut(leader)?.kill9();
    let killed_us = us_of(killed_at);
    let deadline = killed_at + args.timeout;
    let mut new_leader = None;
    let mut leader_ms = None;
    let mut poll = tokio::time::interval(args.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        poll.tick().await;
        let (a, b) = tokio::join!(cluster_status(&status[0]), cluster_status(&status[1]));
        let (a, b) = (
            a.ok().and_then(|s| s.leader_id),
            b.ok().and_then(|s| s.leader_id),
        );
        if let (Some(a), Some(b)) = (a, b) {
            if a == b && a != leader {
                leader_ms = Some(killed_at.elapsed().as_secs_f64() * 1000.0);
                new_leader = Some(a);
                break;
            }
        }
    }

    // (b) and (c): wait until every client of the dead node resumed and a PUBACK came.
    let dead: Vec<&Client> = clients.iter().filter(|c| c.node == leader).collect();
    let first_puback = |p: &Publisher| {
        lock(&p.state)
            .acks
            .iter()
            .filter(|a| a.sent_us >= killed_us)
            .map(|a| a.ack_us)
            .min()
    };
    while Instant::now() < deadline {
        let all_resumed = dead.iter().all(|c| lock(&c.state).resume.is_some());
        if all_resumed && first_puback(&publisher).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_puback_ms =
        first_puback(&publisher).map(|us| us.saturating_sub(killed_us) as f64 / 1000.0);
    let first_any_puback_ms = lock(&publisher.state)
        .acks
        .iter()
        .map(|a| a.ack_us)
        .filter(|us| *us >= killed_us)
        .min()
        .map(|us| (us - killed_us) as f64 / 1000.0);

    // Publish a little longer, then check every acknowledged message arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    publisher.stop_sending();
    let drain_end = Instant::now() + Duration::from_secs(15);
    while publisher.outstanding() > 0 && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut missing = missing_messages(&publisher, &dead);
    while !missing.is_empty() && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        missing = missing_messages(&publisher, &dead);
    }

    // Figures.
    let ms_since_kill = |t: Instant| t.saturating_duration_since(killed_at).as_secs_f64() * 1000.0;
    let mut resumes = BTreeMap::new();
    let mut resumed_without_session = Vec::new();
    let mut not_resumed = Vec::new();
    let mut survivor_clients_disconnected = Vec::new();
    let mut reconnect_attempts_failed = 0;
    let mut reconnect_error_samples = Vec::new();
    let mut duplicates = 0;
    for c in &clients {
        let st = lock(&c.state);
        duplicates += st.duplicates;
        reconnect_attempts_failed += st.attempt_errors.len();
        for e in &st.attempt_errors {
            if reconnect_error_samples.len() < 20 {
                reconnect_error_samples.push(format!("{}: {e}", c.id));
            }
        }
        if c.node != leader {
            if st.losses > 0 {
                survivor_clients_disconnected.push(format!("{} ({} losses)", c.id, st.losses));
            }
            continue;
        }
        match (&st.first_loss, st.resume) {
            (Some((lost, reason)), Some((at, node, session_present, attempts))) => {
                if !session_present {
                    resumed_without_session.push(c.id.clone());
                }
                resumes.insert(
                    c.id.clone(),
                    Resume {
                        lost_ms: ms_since_kill(*lost),
                        lost_reason: reason.clone(),
                        connack_ms: ms_since_kill(at),
                        node,
                        session_present,
                        attempts,
                    },
                );
            }
            _ => not_resumed.push(c.id.clone()),
        }
    }
    let mut connack: Vec<f64> = resumes.values().map(|r| r.connack_ms).collect();
    connack.sort_by(f64::total_cmp);
    let all_resumed_ms = (not_resumed.is_empty() && !connack.is_empty())
        .then(|| connack.last().copied())
        .flatten();
    let resumed_median_ms = connack.get(connack.len() / 2).copied();
    let loss_seen_max_ms = resumes.values().map(|r| r.lost_ms).max_by(f64::total_cmp);
    let (published, acked, mut client_errors) = {
        let st = lock(&publisher.state);
        let mut errors = Vec::new();
        if let Some(e) = &st.error {
            errors.push(format!("publisher: {e}"));
        }
        if st.unknown_acks > 0 {
            errors.push(format!(
                "publisher: {} PUBACK(s) for unknown packet ids",
                st.unknown_acks
            ));
        }
        (st.sent, st.acks.len() as u64, errors)
    };
    if publisher.outstanding() > 0 {
        client_errors.push(format!(
            "publisher: {} message(s) still unacknowledged 15 s after it stopped",
            publisher.outstanding()
        ));
    }
    let node_exits = cluster
        .exited()
        .into_iter()
        .map(|(id, status)| format!("node {id} exited with {status}"))
        .collect();
    let metrics = cluster.metrics().await;
    let raft_at_end = cluster.raft_states().await;
    let log_issues = cluster.log_issues();
    let load1_at_end = sysinfo::loadavg().map_or(f64::NAN, |l| l[0]);
    let _ = stop.send(true);
    publisher.shutdown().await;
    if let Some(dir) = cluster.kept_dir() {
        note(&format!("nodes' directories kept in {}", dir.display()));
    }
    drop(cluster);
    Ok(RunResult {
        run,
        load,
        load1_at_end,
        killed_leader: leader,
        new_leader,
        leader_ms,
        all_resumed_ms,
        resumed_median_ms,
        loss_seen_max_ms,
        first_puback_ms,
        first_any_puback_ms,
        clients_of_dead_node: dead.len(),
        resumed: resumes.len(),
        resumed_without_session,
        not_resumed,
        survivor_clients_disconnected,
        reconnect_attempts_failed,
        reconnect_error_samples,
        published,
        acked,
        lost: missing.len() as u64,
        lost_samples: missing.iter().take(20).cloned().collect(),
        duplicates,
        client_errors,
        node_exits,
        metrics,
        log_issues,
        raft_at_end,
        resumes,
    })
}

/// Acknowledged messages not (yet) at their client: "seq -> client".
fn missing_messages(publisher: &Publisher, dead: &[&Client]) -> Vec<String> {
    let st = lock(&publisher.state);
    let mut missing = Vec::new();
    for a in &st.acks {
        let i = (a.seq % dead.len().max(1) as u64) as usize;
        let Some(c) = dead.get(i) else { continue };
        if !lock(&c.state).received.contains(&a.seq) {
            missing.push(format!("seq {} -> {}", a.seq, c.id));
        }
    }
    missing
}

/// Receives messages; when the connection ends, reconnects at once to `targets` in
/// turn (persistent session) until a CONNACK accepts, and records how that went.
async fn client_loop(
    id: String,
    client: AsyncClient,
    mut eventloop: EventLoop,
    targets: Vec<(u64, SocketAddr)>,
    state: Arc<Mutex<ClientState>>,
    mut stop: watch::Receiver<bool>,
) {
    // Held so that the event loop keeps its request channel.
    let mut _client = client;
    loop {
        let ended = tokio::select! {
            ended = receive(&mut eventloop, &state) => ended,
            _ = stop.wait_for(|s| *s) => return,
        };
        let lost_at = Instant::now();
        {
            let mut st = lock(&state);
            st.losses += 1;
            st.first_loss.get_or_insert((lost_at, ended));
        }
        let mut attempts = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let (node, addr) = targets[attempts as usize % targets.len().max(1)];
            attempts += 1;
            let attempt =
                clients::connect(clients::options(&id, addr, false, 100), 16, CONNACK_TIMEOUT);
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match result {
                Ok((client, new_loop, ack)) => {
                    let mut st = lock(&state);
                    if st.resume.is_none() {
                        st.resume = Some((Instant::now(), node, ack.session_present, attempts));
                    }
                    _client = client;
                    eventloop = new_loop;
                    break;
                }
                Err(e) => {
                    lock(&state)
                        .attempt_errors
                        .push(format!("node {node}: {e:#}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// Polls until the connection ends; returns why.
async fn receive(eventloop: &mut EventLoop, state: &Mutex<ClientState>) -> String {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(stamp) = Stamp::decode(&p.payload) {
                    let mut st = lock(state);
                    if !st.received.insert(stamp.seq) {
                        st.duplicates += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
}
