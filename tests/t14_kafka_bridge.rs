//! The Kafka bridge against a real Apache Kafka (`deploy/kafka/kafka.sh`, KRaft, one
//! node on 127.0.0.1) with real MQTT clients (rumqttc) and an independent rdkafka
//! consumer reading back: every acknowledged message is exactly one record, with its
//! key, headers and per-device order, through a Kafka outage and through a SIGKILL of
//! the broker while Kafka is down; every Kafka record of an ingress rule reaches MQTT
//! subscribers once, in order, with its offset committed; and on a three-node cluster
//! each record is bridged once each way.
//!
//! The tests stop and start the one Kafka, so they run one at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetmq_tests::broker::free_port;
use fleetmq_tests::cluster::ClusterOptions;
use fleetmq_tests::kafka::{must_kafka_sh, must_start_kafka, read_records, ReadRecord};
use fleetmq_tests::v4::Ev;
use fleetmq_tests::v5::Ev as V5Ev;
use fleetmq_tests::{
    unique_id, v4_options, BrokerOptions, BrokerProcess, Cluster, V4Client, V5Client,
};
use rumqttc::{v5, Packet, QoS};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker with one egress rule, "temperature", taking `t14/<run>/+/temp` to Kafka
/// topic `t14-<run>`; `rule` is TOML added to the rule (its ack mode), `tables` TOML
/// added after it (`[kafka.outbox]`).
fn bridged_broker_with(run: &str, bootstrap: &str, rule: &str, tables: &str) -> BrokerProcess {
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[[kafka.egress]]
name = "temperature"
mqtt_filter = "t14/{run}/+/temp"
kafka_topic = "t14-{run}"
{rule}
{tables}
"#
    );
    BrokerProcess::start(BrokerOptions::new().config(&config))
}

fn bridged_broker(run: &str, bootstrap: &str) -> BrokerProcess {
    bridged_broker_with(run, bootstrap, "", "")
}

/// Publishes `per_device` QoS 1 messages from each device, interleaved, and waits for
/// every PUBACK. Payload: `<device>:<seq>`.
async fn publish_from(
    broker: &BrokerProcess,
    run: &str,
    devices: &[&str],
    seqs: std::ops::Range<usize>,
) {
    let mut clients = Vec::new();
    for device in devices {
        clients.push(V4Client::must_connect(broker, &format!("{run}-{device}")).await);
    }
    for seq in seqs {
        for (device, client) in devices.iter().zip(clients.iter_mut()) {
            client
                .must_publish(
                    &format!("t14/{run}/{device}/temp"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{device}:{seq}"),
                )
                .await;
        }
    }
    for client in clients {
        client.disconnect().await;
    }
}

/// Every device's payloads, in the order Kafka holds them.
fn by_device(records: &[ReadRecord]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records {
        out.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(String::from_utf8_lossy(&r.value).into_owned());
    }
    out
}

fn expected(run: &str, devices: &[&str], n: usize) -> BTreeMap<String, Vec<String>> {
    devices
        .iter()
        .map(|d| {
            (
                format!("{run}-{d}"),
                (0..n).map(|seq| format!("{d}:{seq}")).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_one_record_with_its_key_headers_and_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("n");
    let broker = bridged_broker(&run, &bootstrap);
    let devices = ["d1", "d2", "d3"];
    publish_from(&broker, &run, &devices, 0..100).await;
    // A message no rule takes stays out of Kafka.
    let mut other = V4Client::must_connect(&broker, &unique_id("t14-other")).await;
    other
        .must_publish(
            &format!("t14/{run}/d1/humidity"),
            QoS::AtLeastOnce,
            false,
            "x",
        )
        .await;

    // One more than expected, so that a duplicate would be seen.
    let records = read_records(&format!("t14-{run}"), 301, Duration::from_secs(20));
    assert_eq!(records.len(), 300, "exactly one record per message");
    assert_eq!(by_device(&records), expected(&run, &devices, 100));
    let first = &records[0];
    let device = first.key.clone().expect("keyed by client id");
    assert_eq!(first.header("mqtt.client_id"), Some(device.as_str()));
    assert_eq!(first.header("mqtt.qos"), Some("1"));
    assert_eq!(first.header("mqtt.retain"), Some("false"));
    let d = device.rsplit('-').next().expect("device suffix");
    assert_eq!(
        first.header("mqtt.topic"),
        Some(format!("t14/{run}/{d}/temp").as_str())
    );

    broker.must_metric_at_least(
        "fleetmq_kafka_records_produced_total",
        &[("rule", "temperature")],
        300.0,
        Duration::from_secs(10),
    );
    assert_eq!(
        broker.metric(
            "fleetmq_kafka_records_produced_total",
            &[("rule", "temperature")]
        ),
        300.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_mid_stream_loses_nothing_and_keeps_each_devices_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("o");
    let broker = bridged_broker(&run, &bootstrap);
    let devices = ["d1", "d2"];
    publish_from(&broker, &run, &devices, 0..40).await;
    must_kafka_sh(&["stop"]);
    // Acknowledged from the outbox while Kafka is away.
    publish_from(&broker, &run, &devices, 40..80).await;
    must_kafka_sh(&["start"]);
    publish_from(&broker, &run, &devices, 80..100).await;

    let records = read_records(&format!("t14-{run}"), 201, READ_TIMEOUT);
    assert_eq!(by_device(&records), expected(&run, &devices, 100));
    assert_eq!(records.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_while_kafka_is_down_produces_its_outbox_after_the_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("k");
    let mut broker = bridged_broker(&run, &bootstrap);
    let devices = ["d1", "d2"];
    publish_from(&broker, &run, &devices, 0..10).await;
    must_kafka_sh(&["stop"]);
    publish_from(&broker, &run, &devices, 10..60).await;
    broker.kill9();
    must_kafka_sh(&["start"]);
    broker.restart();

    let records = read_records(&format!("t14-{run}"), 121, READ_TIMEOUT);
    let got = by_device(&records);
    // At least once: records Kafka had before the kill may come again after the
    // restart, in order; nothing acknowledged is missing and each device's order holds.
    for (device, want) in expected(&run, &devices, 60) {
        let have = got.get(&device).cloned().unwrap_or_default();
        let firsts: Vec<&String> = {
            let mut seen = std::collections::HashSet::new();
            have.iter().filter(|p| seen.insert(*p)).collect()
        };
        assert_eq!(
            firsts.into_iter().cloned().collect::<Vec<_>>(),
            want,
            "{device}: every acknowledged message, in order (got {have:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_after_kafka_an_outage_holds_back_acknowledgements_not_the_connection() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("a");
    let broker = bridged_broker_with(&run, &bootstrap, r#"ack = "after-kafka""#, "");
    // The first record creates the Kafka topic while Kafka is up.
    publish_from(&broker, &run, &["d1"], 0..1).await;
    must_kafka_sh(&["stop"]);

    let mut options = v4_options(&broker, &format!("{run}-d1"));
    options.set_keep_alive(Duration::from_secs(2));
    let mut device = V4Client::must_connect_with(options).await;
    let plain = format!("t14/{run}/plain");
    device.must_subscribe(&plain, QoS::AtLeastOnce).await;
    for seq in 1..21 {
        device
            .client
            .publish(
                format!("t14/{run}/d1/temp"),
                QoS::AtLeastOnce,
                false,
                format!("d1:{seq}"),
            )
            .await
            .expect("queue PUBLISH");
    }
    // Deliveries to the waiting publisher go on.
    let mut other = V4Client::must_connect(&broker, &unique_id("t14-other")).await;
    other
        .must_publish(&plain, QoS::AtLeastOnce, false, "meanwhile")
        .await;
    let delivered = device.must_recv_publish(Duration::from_secs(5)).await;
    assert_eq!(&delivered.payload[..], b"meanwhile");
    // Three keep-alive periods: PINGREQs are answered (rumqttc drops a connection whose
    // PINGRESP does not come) while no PUBACK goes out, Kafka having nothing.
    let early = device
        .wait_for(Duration::from_secs(8), |e| match e {
            Ev::In(Packet::PubAck(ack)) => Some(format!("PUBACK {}", ack.pkid)),
            Ev::Error(e) => Some(format!("connection failed: {e}")),
            _ => None,
        })
        .await;
    assert_eq!(early, None, "nothing but PINGRESPs while Kafka is away");
    let pongs = device
        .wait_for(Duration::ZERO, |e| match e {
            Ev::In(Packet::PingResp) => Some(()),
            _ => None,
        })
        .await;
    assert!(
        pongs.is_some(),
        "PINGREQs were answered while Kafka was away"
    );

    must_kafka_sh(&["start"]);
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let ack = device
            .wait_for(READ_TIMEOUT, |e| match e {
                Ev::In(Packet::PubAck(ack)) => Some(ack.pkid),
                _ => None,
            })
            .await;
        acked.push(ack.expect("every PUBLISH acknowledged once Kafka is back"));
    }
    let mut in_order = acked.clone();
    in_order.sort_unstable();
    assert_eq!(acked, in_order, "PUBACKs in the order of the PUBLISHes");
    let records = read_records(&format!("t14-{run}"), 22, READ_TIMEOUT);
    assert_eq!(by_device(&records), expected(&run, &["d1"], 21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_mqtt5_publishes_with_0x97_in_turn() {
    // Nothing listens at the bootstrap address: every record stays in the outbox.
    let run = unique_id("f");
    let broker = bridged_broker_with(
        &run,
        &format!("127.0.0.1:{}", free_port()),
        "",
        "[kafka.outbox]\nmax_records = 5\nwhen_full = \"refuse\"",
    );
    let mut device = V5Client::must_connect(&broker, &format!("{run}-d1")).await;
    for seq in 0..8 {
        device
            .client
            .publish(
                format!("t14/{run}/d1/temp"),
                v5::mqttbytes::QoS::AtLeastOnce,
                false,
                format!("d1:{seq}"),
            )
            .await
            .expect("queue PUBLISH");
    }
    let mut acks = Vec::new();
    while acks.len() < 8 {
        let ack = device
            .wait_for(Duration::from_secs(10), |e| match e {
                V5Ev::In(v5::mqttbytes::v5::Packet::PubAck(ack)) => Some((ack.pkid, ack.reason)),
                _ => None,
            })
            .await;
        acks.push(ack.expect("every PUBLISH answered"));
    }
    use v5::mqttbytes::v5::PubAckReason::{QuotaExceeded, Success};
    let want: Vec<_> = (1..=8u16)
        .map(|pkid| (pkid, if pkid <= 5 { Success } else { QuotaExceeded }))
        .collect();
    assert_eq!(acks, want, "five taken, then refused, answered in order");
    assert_eq!(
        broker.metric("fleetmq_kafka_outbox_refused_total", &[]),
        3.0
    );
    assert_eq!(broker.metric("fleetmq_kafka_outbox_records", &[]), 5.0);
    // The connection stays usable.
    device
        .must_publish(
            &format!("t14/{run}/elsewhere"),
            v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "x",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_reach_mqtt_subscribers_once_and_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("i");
    let kafka_topic = format!("t14-in-{run}");
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[[kafka.ingress]]
name = "commands"
kafka_topics = ["{kafka_topic}"]
mqtt_topic = "t14/{run}/cmd/${{key}}"
qos = 1
group_id = "t14-{run}"
"#
    );
    let mut broker = BrokerProcess::start(BrokerOptions::new().config(&config));
    // A persistent session: whatever the broker publishes while it is away (a record
    // consumed again after the restart) waits for it.
    let sub_id = unique_id("t14-in-sub");
    let persistent = |broker: &BrokerProcess| {
        let mut options = v4_options(broker, &sub_id);
        options.set_clean_session(false);
        options
    };
    let mut sub = V4Client::must_connect_with(persistent(&broker)).await;
    sub.must_subscribe(&format!("t14/{run}/cmd/#"), QoS::AtLeastOnce)
        .await;

    let mut records: Vec<(Option<&str>, String)> = Vec::new();
    for seq in 0..20 {
        let key = if seq % 2 == 0 { "dev-1" } else { "dev-2" };
        records.push((Some(key), format!("{key}:{seq}")));
    }
    // A record without a key cannot name its MQTT topic: skipped and counted.
    records.insert(5, (None, "no key".to_string()));
    let borrowed: Vec<(Option<&str>, &str)> =
        records.iter().map(|(k, v)| (*k, v.as_str())).collect();
    fleetmq_tests::kafka::must_produce(&kafka_topic, &borrowed);

    let got = sub.must_recv_publishes(20, READ_TIMEOUT).await;
    let mut per_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &got {
        per_device
            .entry(p.topic.clone())
            .or_default()
            .push(String::from_utf8_lossy(&p.payload).into_owned());
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    for (device, parity) in [("dev-1", 0), ("dev-2", 1)] {
        let want: Vec<String> = (0..20)
            .filter(|s| s % 2 == parity)
            .map(|s| format!("{device}:{s}"))
            .collect();
        assert_eq!(
            per_device.get(&format!("t14/{run}/cmd/{device}")),
            Some(&want),
            "{device}: every record, in order"
        );
    }
    broker.must_metric_at_least(
        "fleetmq_kafka_ingress_skipped_total",
        &[("rule", "commands")],
        1.0,
        Duration::from_secs(10),
    );
    // Everything is read: the lag gauge, reported once measured (every 5 s), says 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = broker.metrics();
        let lag = metrics.value("fleetmq_kafka_ingress_lag_records", &[("rule", "commands")]);
        if lag == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer lag never reached 0: {lag:?}\n{}\nlog:\n{}",
            metrics.lines_for("fleetmq_kafka_ingress_lag_records"),
            broker.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Offsets were committed: a restarted broker (same consumer group) publishes none
    // of those records again. Any it did would be queued in the persistent session
    // ahead of the new record, which comes after them in the partition.
    sub.disconnect().await;
    assert!(broker.terminate(Duration::from_secs(20)), "graceful stop");
    broker.respawn().expect("restart the broker");
    broker
        .wait_listening(Duration::from_secs(30))
        .expect("the broker listens again");
    let mut again = V4Client::must_connect_with(persistent(&broker)).await;
    fleetmq_tests::kafka::must_produce(&kafka_topic, &[(Some("dev-3"), "after restart")]);
    let p = again.must_recv_publish(READ_TIMEOUT).await;
    assert_eq!(
        String::from_utf8_lossy(&p.payload),
        "after restart",
        "the first message after the restart is the new record, not an old one"
    );
    again.must_not_recv_publish(Duration::from_secs(2)).await;
}

/// A three-node cluster with the same egress and ingress rules on every node: each
/// node bridges what its own clients publish (no record twice), and the ingress
/// consumer group hands each Kafka record to exactly one node, whose router sends it
/// to subscribers on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_each_record_is_bridged_once_each_way() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = must_start_kafka();
    let run = unique_id("c");
    let kafka_in = format!("t14-cin-{run}");
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[[kafka.egress]]
name = "up"
mqtt_filter = "t14/{run}/+/temp"
kafka_topic = "t14-{run}"

[[kafka.ingress]]
name = "down"
kafka_topics = ["{kafka_in}"]
mqtt_topic = "t14/{run}/down/${{key}}"
group_id = "t14-{run}"
"#
    );
    let cluster = Cluster::start_with(ClusterOptions::new().config(&config));

    // Up: devices on every node.
    let mut devices = Vec::new();
    for n in cluster.ids() {
        let device = format!("n{n}");
        publish_from(cluster.node(n), &run, &[device.as_str()], 0..30).await;
        devices.push(device);
    }
    let records = read_records(&format!("t14-{run}"), 91, READ_TIMEOUT);
    assert_eq!(
        records.len(),
        90,
        "each message once, from the node that took it"
    );
    let want: BTreeMap<String, Vec<String>> = devices
        .iter()
        .map(|d| {
            (
                format!("{run}-{d}"),
                (0..30).map(|s| format!("{d}:{s}")).collect(),
            )
        })
        .collect();
    assert_eq!(by_device(&records), want);

    // Down: one subscriber per node, each gets every record exactly once.
    let mut subs = Vec::new();
    for n in cluster.ids() {
        let mut sub = V4Client::must_connect(cluster.node(n), &unique_id("t14-c-sub")).await;
        sub.must_subscribe(&format!("t14/{run}/down/#"), QoS::AtLeastOnce)
            .await;
        subs.push(sub);
    }
    let values: Vec<String> = (0..10).map(|i| format!("cmd-{i}")).collect();
    let borrowed: Vec<(Option<&str>, &str)> =
        values.iter().map(|v| (Some("dev"), v.as_str())).collect();
    fleetmq_tests::kafka::must_produce(&kafka_in, &borrowed);
    for sub in &mut subs {
        let got: Vec<String> = sub
            .must_recv_publishes(10, READ_TIMEOUT)
            .await
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        assert_eq!(got, values, "every record once, in order");
        sub.must_not_recv_publish(Duration::from_secs(1)).await;
    }
}
