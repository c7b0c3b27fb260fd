//! Durability with the sled engine: SIGKILL the node in the middle of a stream of
//! QoS 1/2 publishes, restart it on the same data directory, and check that
//! everything the publisher saw acknowledged (PUBACK, PUBREC) reaches the
//! persistent subscriber (QoS 2 exactly once), that sessions, subscriptions, QoS 2
//! receive state and retained messages survived.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ProtocolVersion, PubResponse, QoS as CQoS, ReasonCode};
use fleetmq_tests::raw::{connect_packet, publish_packet};
use fleetmq_tests::{
    text, unique_id, v4_options, v5_options, BrokerOptions, BrokerProcess, RawClient, Recv,
    V4Client, V5Client, QUIET, WAIT,
};
use rumqttc::QoS;

fn sled_broker() -> BrokerProcess {
    BrokerProcess::start(BrokerOptions::new().storage("sled"))
}

fn persistent_v4(broker: &BrokerProcess, id: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(broker, id);
    o.set_clean_session(false);
    o
}

/// What the publisher knows.
#[derive(Default)]
struct PubState {
    /// Payloads whose PUBACK (QoS 1) or PUBREC (QoS 2) arrived.
    acked: HashSet<String>,
    /// QoS 2 payloads whose PUBCOMP arrived.
    completed: HashSet<String>,
    sent: usize,
    /// Why the publisher stopped.
    ended: Option<String>,
}

const TOTAL: usize = 600; // 500 at QoS 1, 100 at QoS 2
const WINDOW: usize = 16;

fn message(i: usize) -> (String, CQoS) {
    if i % 6 == 5 {
        (format!("q2-{i}"), CQoS::ExactlyOnce)
    } else {
        (format!("q1-{i}"), CQoS::AtLeastOnce)
    }
}

/// Publishes `TOTAL` messages with up to `WINDOW` unacknowledged, recording acks
/// in `state`, until done or the connection dies.
async fn publish_stream(addr: SocketAddr, state: Arc<Mutex<PubState>>) {
    let connect = connect_packet(ProtocolVersion::V3_1_1, &unique_id("t08-pub"), true, 60);
    let mut c = match RawClient::connect(addr, connect).await {
        Ok((c, _)) => c,
        Err(e) => {
            state.lock().expect("lock").ended = Some(format!("connect: {e:#}"));
            return;
        }
    };
    let mut outstanding: HashMap<u16, String> = HashMap::new();
    let mut next = 0usize;
    let mut pid: u16 = 0;
    let why = 'stream: loop {
        while outstanding.len() < WINDOW && next < TOTAL {
            let (payload, qos) = message(next);
            pid = pid % 60_000 + 1;
            let p = publish_packet("t08/data", qos, Some(pid), payload.as_bytes());
            if let Err(e) = c.send(Packet::Publish(p)).await {
                break 'stream format!("sending PUBLISH: {e:#}");
            }
            outstanding.insert(pid, payload);
            next += 1;
            state.lock().expect("lock").sent = next;
        }
        if next == TOTAL && outstanding.is_empty() {
            break "all acknowledged".to_string();
        }
        match c.recv(Duration::from_secs(10)).await {
            Ok(Recv::Packet(Packet::PubAck(a))) => {
                if let Some(p) = outstanding.remove(&a.packet_id) {
                    state.lock().expect("lock").acked.insert(p);
                }
            }
            Ok(Recv::Packet(Packet::PubRec(r))) => {
                if let Some(p) = outstanding.get(&r.packet_id) {
                    state.lock().expect("lock").acked.insert(p.clone());
                }
                if c.send(Packet::PubRel(PubResponse::new(r.packet_id)))
                    .await
                    .is_err()
                {
                    break "closed while sending PUBREL".to_string();
                }
            }
            Ok(Recv::Packet(Packet::PubComp(r))) => {
                if let Some(p) = outstanding.remove(&r.packet_id) {
                    state.lock().expect("lock").completed.insert(p);
                }
            }
            Ok(other) => break format!("{other:?}"),
            Err(e) => break format!("{e:#}"),
        }
    };
    state.lock().expect("lock").ended = Some(why);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_mid_stream() {
    let mut broker = sled_broker();

    // A persistent subscriber, away during the stream.
    let sub_id = unique_id("t08-sub");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &sub_id)).await;
    sub.must_subscribe("t08/data", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    // A retained message, acknowledged before the kill.
    let mut retainer = V4Client::must_connect(&broker, &unique_id("t08-retain")).await;
    retainer
        .must_publish(
            "t08/retained",
            QoS::AtLeastOnce,
            true,
            "kept across SIGKILL",
        )
        .await;
    drop(retainer);

    let state = Arc::new(Mutex::new(PubState::default()));
    let publisher = tokio::spawn(publish_stream(broker.mqtt_addr, state.clone()));
    // Kill once a third of the stream is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (acked, ended) = {
            let s = state.lock().expect("lock");
            (s.acked.len(), s.ended.clone())
        };
        if acked >= TOTAL / 3 {
            break;
        }
        if let Some(why) = ended {
            panic!("the publisher stopped before the kill ({acked} acknowledged): {why}");
        }
        assert!(
            Instant::now() < deadline,
            "only {acked} messages acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    broker.kill9();
    let _ = tokio::time::timeout(WAIT, publisher).await;
    let (acked, completed, sent, ended) = {
        let s = state.lock().expect("lock");
        (
            s.acked.clone(),
            s.completed.clone(),
            s.sent,
            s.ended.clone(),
        )
    };
    eprintln!(
        "killed with {} acknowledged ({} QoS 2 completed) of {sent} sent; publisher: {ended:?}",
        acked.len(),
        completed.len()
    );
    assert!(
        sent < TOTAL || acked.len() < TOTAL,
        "the kill should land mid-stream"
    );

    broker.restart();

    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &sub_id)).await;
    assert!(
        sub.connack.session_present,
        "the persistent session must survive SIGKILL"
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let quiet = if acked.iter().all(|p| counts.contains_key(p)) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(8)
        };
        match sub.recv_publish(quiet).await {
            Some(p) => *counts.entry(text(&p.payload)).or_default() += 1,
            None => break,
        }
        assert!(Instant::now() < deadline, "still receiving after 60 s");
    }
    let mut missing: Vec<&String> = acked.iter().filter(|p| !counts.contains_key(*p)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages were lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    let dup_qos2: Vec<(&String, &usize)> = counts
        .iter()
        .filter(|(p, n)| p.starts_with("q2-") && **n > 1)
        .collect();
    assert!(
        dup_qos2.is_empty(),
        "QoS 2 messages delivered more than once: {dup_qos2:?}"
    );
    let unknown: Vec<&String> = counts
        .keys()
        .filter(|p| !(0..sent).any(|i| message(i).0 == **p))
        .collect();
    assert!(
        unknown.is_empty(),
        "messages never sent were delivered: {unknown:?}"
    );

    // The retained message survived.
    let mut late = V4Client::must_connect(&broker, &unique_id("t08-late")).await;
    late.must_subscribe("t08/retained", QoS::AtLeastOnce).await;
    let p = late.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "kept across SIGKILL");
    assert!(p.retain);

    // And the node works as before.
    late.must_publish("t08/data", QoS::AtLeastOnce, false, "after restart")
        .await;
    assert_eq!(
        text(&sub.must_recv_publish(WAIT).await.payload),
        "after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_receive_state_survives_sigkill() {
    let mut broker = sled_broker();
    let sub_id = unique_id("t08-q2sub");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &sub_id)).await;
    sub.must_subscribe("t08/q2", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    // A persistent publisher gets PUBREC for packet id 9; then the node dies.
    let pub_id = unique_id("t08-q2pub");
    let connect = connect_packet(ProtocolVersion::V3_1_1, &pub_id, false, 60);
    let (mut p, _) = RawClient::must_connect_with(broker.mqtt_addr, connect.clone()).await;
    let publish = publish_packet("t08/q2", CQoS::ExactlyOnce, Some(9), b"in doubt");
    p.must_send(Packet::Publish(publish.clone())).await;
    match p.must_recv(WAIT).await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 9),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    broker.kill9();
    drop(p);
    broker.restart();

    // The publisher comes back, resends the PUBLISH (as if the PUBREC was lost),
    // then releases it.
    let (mut p, ack) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    assert!(
        ack.session_present,
        "the publisher's persistent session must survive"
    );
    let mut again = publish;
    again.dup = true;
    p.must_send(Packet::Publish(again)).await;
    match p.must_recv(WAIT).await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 9),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    p.must_send(Packet::PubRel(PubResponse::new(9))).await;
    match p.must_recv(WAIT).await {
        Packet::PubComp(c) => {
            assert_eq!(c.packet_id, 9);
            assert_eq!(c.reason_code, ReasonCode::Success);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }

    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &sub_id)).await;
    assert!(sub.connack.session_present);
    let got: Vec<String> = sub
        .drain_publishes(Duration::from_secs(3))
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, vec!["in doubt"], "exactly once across the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_delivery_survives_sigkill() {
    let mut broker = sled_broker();
    let id = unique_id("t08-inflight");
    let connect = connect_packet(ProtocolVersion::V3_1_1, &id, false, 60);
    let (mut raw, _) = RawClient::must_connect_with(broker.mqtt_addr, connect.clone()).await;
    raw.must_subscribe(1, "t08/inflight", CQoS::AtLeastOnce)
        .await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t08-inflight-pub")).await;
    publisher
        .must_publish("t08/inflight", QoS::AtLeastOnce, false, "not acked")
        .await;
    let first = raw.must_recv_publish(WAIT).await;
    assert_eq!(text(&first.payload), "not acked");
    // No PUBACK. The node dies.
    broker.kill9();
    drop(raw);
    drop(publisher);
    broker.restart();
    let (mut raw, ack) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    assert!(ack.session_present);
    let p = raw.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "not acked");
    raw.must_ack(&p).await;
    raw.must_stay_silent(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_and_subscription_survive_sigkill() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let mut broker = sled_broker();
    let id = unique_id("t08-v5");
    let mut o = v5_options(&broker, &id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    let mut sub = V5Client::must_connect_with(o.clone()).await;
    sub.must_subscribe("t08/v5", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    broker.kill9();
    broker.restart();
    // Published after the restart: the subscription must have been restored.
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t08-v5-pub")).await;
    publisher
        .must_publish("t08/v5", Q5::AtLeastOnce, false, "restored")
        .await;
    let mut sub = V5Client::must_connect_with(o).await;
    assert!(sub.connack.session_present);
    assert_eq!(text(&sub.must_recv_publish(WAIT).await.payload), "restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_keeps_nothing_across_restart() {
    let mut broker = BrokerProcess::start(BrokerOptions::new().storage("memory"));
    let id = unique_id("t08-mem");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    sub.must_subscribe("t08/mem", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t08-mem-pub")).await;
    publisher
        .must_publish("t08/mem", QoS::AtLeastOnce, true, "gone")
        .await;
    drop(publisher);
    broker.kill9();
    broker.restart();
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    assert!(
        !sub.connack.session_present,
        "--storage memory keeps no session"
    );
    sub.must_subscribe("t08/mem", QoS::AtLeastOnce).await;
    sub.must_not_recv_publish(QUIET).await; // no retained message either
}
