//! The real Apache Kafka the bridge tests talk to: `deploy/kafka/kafka.sh` starts it
//! (fetching it from Maven Central the first time), and an independent rdkafka
//! consumer reads back what the bridge produced.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

/// `deploy/kafka/kafka.sh` in this workspace.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy/kafka/kafka.sh")
}

/// Runs `kafka.sh ARGS`; panics with its output when it fails. No test skips for want
/// of Kafka: the script starts it, or the test fails saying why.
pub fn must_kafka_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("run deploy/kafka/kafka.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "deploy/kafka/kafka.sh {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Starts Kafka if it is not running; returns its bootstrap address.
pub fn must_start_kafka() -> String {
    must_kafka_sh(&["start"]);
    bootstrap()
}

pub fn bootstrap() -> String {
    let port = std::env::var("FLEETMQ_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    format!("127.0.0.1:{port}")
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub partition: i32,
    pub offset: i64,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from the beginning until `count` records arrived or `timeout` passed.
pub fn read_records(topic: &str, count: usize, timeout: Duration) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set(
            "group.id",
            format!("fleetmq-test-{}", crate::unique_id("g")),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("create a kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = polled else {
            continue;
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        (
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ReadRecord {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            partition: message.partition(),
            offset: message.offset(),
        });
    }
    out
}

/// Produces `records` (key, value) to `topic`, in order, and waits until Kafka has them.
pub fn must_produce(topic: &str, records: &[(Option<&str>, &str)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("create a kafka producer");
    for (key, value) in records {
        let mut record = BaseRecord::<str, str>::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record).expect("queue a record");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("kafka acknowledged every record");
}
