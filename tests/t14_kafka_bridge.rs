//! The Kafka bridge against a real Apache Kafka (`deploy/kafka/kafka.sh`, KRaft, one
//! node on 127.0.0.1) with real MQTT clients (rumqttc) and an independent rdkafka
//! consumer reading back: every acknowledged message is exactly one record, with its
//! key, headers and per-device order, through a Kafka outage and through a SIGKILL of
//! the broker while Kafka is down.
//!
//! The tests stop and start the one Kafka, so they run one at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetmq_tests::kafka::{must_kafka_sh, must_start_kafka, read_records, ReadRecord};
use fleetmq_tests::{unique_id, BrokerOptions, BrokerProcess, V4Client};
use rumqttc::QoS;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker with one egress rule taking `t14/<run>/+/temp` to Kafka topic `t14-<run>`.
fn bridged_broker(run: &str, bootstrap: &str) -> BrokerProcess {
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[[kafka.egress]]
name = "temperature"
mqtt_filter = "t14/{run}/+/temp"
kafka_topic = "t14-{run}"
"#
    );
    BrokerProcess::start(BrokerOptions::new().config(&config))
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
