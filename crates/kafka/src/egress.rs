//! MQTT → Kafka: every message matching an egress rule becomes a record. Records of
//! `after-outbox` rules go through the durable [`Outbox`] and a task that produces them
//! in order; records of `after-kafka` rules are produced at once and the publisher's
//! acknowledgement waits for Kafka's.
//!
//! The producer is idempotent with `acks=all` and never gives up on a record
//! (`message.timeout.ms = 0`): during a Kafka outage records wait in librdkafka's queue
//! and in the outbox, in order, and nothing is lost. Only a record Kafka refuses for
//! good (too large, not authorized) is dropped, counted and logged with its rule.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fleetmq_storage::KvEngine;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{AckMode, EgressRule, KafkaConfig};
use crate::errors::BridgeError;
use crate::metrics::BridgeMetrics;
use crate::outbox::Outbox;
use crate::record::{BridgedMessage, KafkaRecord};

/// Records produced and not yet acknowledged by Kafka, at most.
const IN_FLIGHT: usize = 10_000;
/// How long the producer task waits for new records before it looks again anyway.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Pause after librdkafka said its own queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Resolves once a bridged message is where its rules' acknowledgement modes say:
/// the publisher's acknowledgement may go then. Owns what it waits for.
pub struct BridgeAck(Pin<Box<dyn Future<Output = Result<(), BridgeError>> + Send>>);

impl BridgeAck {
    /// An acknowledgement already refused, answered in its turn like the others.
    pub fn refused(error: BridgeError) -> BridgeAck {
        BridgeAck(Box::pin(std::future::ready(Err(error))))
    }
}

impl Future for BridgeAck {
    type Output = Result<(), BridgeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for BridgeAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeAck")
    }
}

/// The MQTT → Kafka side of one node's bridge.
pub struct Egress {
    rules: Vec<EgressRule>,
    outbox: Arc<Outbox>,
    producer: FutureProducer,
    metrics: Arc<BridgeMetrics>,
    stop: watch::Sender<bool>,
    drain: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("rules", &self.rules.len())
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

/// The librdkafka producer settings the bridge needs, with the user's extras.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.client {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give up on a record: an outage of any length delays, loses nothing, and
        // keeps each partition's order.
        .set("message.timeout.ms", "0");
    client
}

impl Egress {
    /// Opens the outbox in `engine` (what an earlier run left is produced first) and
    /// starts producing. `metrics` must have counters for every rule.
    pub fn start(
        config: &KafkaConfig,
        engine: Arc<dyn KvEngine>,
        metrics: Arc<BridgeMetrics>,
    ) -> Result<Arc<Egress>, BridgeError> {
        let rules = config.rules()?;
        let producer: FutureProducer = producer_config(config).create()?;
        let outbox = Outbox::open(engine, config.outbox.clone(), metrics.clone())?;
        let left = outbox.len();
        if left > 0 {
            info!(
                records = left,
                "producing what the outbox kept from the last run"
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let egress = Arc::new(Egress {
            rules,
            outbox: outbox.clone(),
            producer: producer.clone(),
            metrics: metrics.clone(),
            stop,
            drain: std::sync::Mutex::new(None),
        });
        let handle = tokio::spawn(run_drain(outbox, producer, metrics, left, stop_rx));
        if let Ok(mut slot) = egress.drain.lock() {
            *slot = Some(handle);
        }
        Ok(egress)
    }

    /// The rules that take messages on `topic` (none, for most topics: no allocation).
    pub fn rules_for(&self, topic: &str) -> Vec<&EgressRule> {
        self.rules
            .iter()
            .filter(|r| r.filter.matches(topic))
            .collect()
    }

    /// Bridges `message` with `rules` ([`Egress::rules_for`] its topic): hands its
    /// records to the outbox and to librdkafka behind everything submitted before, and
    /// returns what resolves once every rule has it where its acknowledgement mode says
    /// (the outbox, durable; or Kafka). Waits only while the outbox writer's or
    /// librdkafka's queue is full, so one publisher can have many messages on their way.
    /// Errors, now or from the returned future: the outbox is full under
    /// `when_full = "refuse"` ([`BridgeError::OutboxFull`]), or Kafka refused an
    /// `after-kafka` record for good.
    pub async fn submit(
        &self,
        rules: &[&EgressRule],
        message: &BridgedMessage,
    ) -> Result<BridgeAck, BridgeError> {
        let mut to_outbox = Vec::new();
        let mut direct = Vec::new();
        for rule in rules {
            let record = KafkaRecord::build(rule, message);
            if record.topic.is_empty() {
                // The template names a topic level this message's topic lacks: no
                // Kafka topic can take it, now or later, so it is not stored.
                self.metrics.count(&rule.name, |c| &c.failed);
                warn!(rule = %rule.name, topic = %message.topic, "the kafka topic template renders empty for this message; not bridged");
                if rule.ack == AckMode::AfterKafka {
                    return Err(BridgeError::NoKafkaTopic {
                        rule: rule.name.to_string(),
                    });
                }
                continue;
            }
            match rule.ack {
                AckMode::AfterOutbox => to_outbox.push(record),
                AckMode::AfterKafka => direct.push(record),
            }
        }
        let mut deliveries = Vec::with_capacity(direct.len());
        for record in direct {
            deliveries.push((record.rule.clone(), enqueue(&self.producer, &record).await?));
        }
        let durable = self.outbox.submit(to_outbox).await?;
        let metrics = self.metrics.clone();
        Ok(BridgeAck(Box::pin(async move {
            durable.await?;
            for (rule, delivery) in deliveries {
                let result = delivery.await.map_err(|_| BridgeError::Stopped)?;
                settle(&metrics, &rule, result).map_err(BridgeError::Kafka)?;
            }
            Ok(())
        })))
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Stops producing from the outbox, waits up to `grace` for Kafka to acknowledge
    /// what is in flight, and makes the outbox's removals durable. What is left is
    /// produced after the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let handle = self.drain.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(grace))).await;
        if let Err(e) = self.outbox.flush() {
            warn!(error = %e, "flushing the kafka outbox at shutdown failed");
        }
    }
}

/// Counts what Kafka said of one record of `rule`, and logs a refusal (for good: the
/// producer never gives up on a record that can still be delivered).
fn settle(
    metrics: &BridgeMetrics,
    rule: &str,
    result: OwnedDeliveryResult,
) -> Result<(), KafkaError> {
    match result {
        Ok(_) => {
            metrics.count(rule, |c| &c.produced);
            Ok(())
        }
        Err((e, _)) => {
            metrics.count(rule, |c| &c.failed);
            error!(rule = %rule, error = %e, "kafka refused a record for good");
            Err(e)
        }
    }
}

/// Hands `record` to librdkafka, waiting while its queue is full.
async fn enqueue(
    producer: &FutureProducer,
    record: &KafkaRecord,
) -> Result<DeliveryFuture, BridgeError> {
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut future = FutureRecord::<Vec<u8>, Vec<u8>>::to(&record.topic)
            .payload(&record.value)
            .headers(headers)
            .timestamp(record.timestamp_ms as i64);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        match producer.send_result(future) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((e, _)) => return Err(BridgeError::Kafka(e)),
        }
    }
}

/// Produces the outbox's records in order, keeping up to [`IN_FLIGHT`] unacknowledged,
/// and removes each once Kafka has it.
async fn run_drain(
    outbox: Arc<Outbox>,
    producer: FutureProducer,
    metrics: Arc<BridgeMetrics>,
    mut replayed: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0u64;
    let mut in_flight: VecDeque<(u64, String, DeliveryFuture)> = VecDeque::new();
    loop {
        if *stop.borrow() {
            return;
        }
        // Fill the window.
        let room = IN_FLIGHT - in_flight.len();
        if room > 0 {
            match outbox.read(next, room) {
                Ok(records) => {
                    for (seq, record) in records {
                        match enqueue(&producer, &record).await {
                            Ok(delivery) => {
                                if replayed > 0 {
                                    replayed -= 1;
                                    metrics.count(&record.rule, |c| &c.retried);
                                }
                                in_flight.push_back((seq, record.rule, delivery));
                                next = seq + 1;
                            }
                            Err(e) => {
                                // A record librdkafka will not take at all (bad topic
                                // name, too large): it can never be produced.
                                error!(rule = %record.rule, error = %e, "dropping a record kafka cannot take");
                                metrics.count(&record.rule, |c| &c.failed);
                                if let Err(e) = outbox.remove(&[seq]) {
                                    error!(error = %e, "removing a record from the kafka outbox failed");
                                }
                                next = seq + 1;
                            }
                        }
                    }
                }
                Err(e) => {
                    error!(error = %e, "reading the kafka outbox failed");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
        let has_room = in_flight.len() < IN_FLIGHT;
        let Some((_, _, front)) = in_flight.front_mut() else {
            tokio::select! {
                () = outbox.appended() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        // Wait for the oldest record; meanwhile new appends refill the window.
        let result = tokio::select! {
            result = front => result,
            () = outbox.appended(), if has_room => continue,
            _ = stop.changed() => continue,
        };
        let mut done = Vec::new();
        let mut settle_in_flight = |seq: u64, rule: &str, result: Result<_, _>| {
            // The producer is gone (shutting down): keep the record for next time.
            let Ok(result) = result else {
                return;
            };
            // Refused for good: dropped (settle logs and counts it).
            let _ = settle(&metrics, rule, result);
            done.push(seq);
        };
        if let Some((seq, rule, _)) = in_flight.pop_front() {
            settle_in_flight(seq, &rule, result);
        }
        // Everything behind it that is already acknowledged, in one removal.
        while let Some((_, _, next_front)) = in_flight.front_mut() {
            let Some(result) = next_front.now_or_never() else {
                break;
            };
            if let Some((seq, rule, _)) = in_flight.pop_front() {
                settle_in_flight(seq, &rule, result);
            }
        }
        if let Err(e) = outbox.remove(&done) {
            error!(error = %e, "removing produced records from the kafka outbox failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_storage::MemoryEngine;
    use std::sync::atomic::Ordering;

    /// Egress with the rules in `rules_toml`; nothing listens at its bootstrap address,
    /// so what reaches the outbox stays there.
    fn egress(rules_toml: &str) -> (Arc<Egress>, Arc<BridgeMetrics>) {
        let text = format!("bootstrap_servers = \"127.0.0.1:9\"\n{rules_toml}");
        let config: KafkaConfig = toml::from_str(&text).unwrap();
        let rules = config.rules().unwrap();
        let metrics = Arc::new(BridgeMetrics::for_rules(rules.iter().map(|r| &r.name)));
        let engine = Arc::new(MemoryEngine::new());
        (
            Egress::start(&config, engine, metrics.clone()).unwrap(),
            metrics,
        )
    }

    fn message(topic: &str) -> BridgedMessage {
        BridgedMessage {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"21.5"),
            qos: 1,
            retain: false,
            client_id: "dev-1".into(),
            username: None,
            user_properties: vec![],
            content_type: None,
            received_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_message_whose_kafka_topic_renders_empty_is_counted_failed_and_not_stored() {
        let (egress, metrics) = egress(
            r##"
[[egress]]
name = "third-level"
mqtt_filter = "#"
kafka_topic = "${topic.3}"
"##,
        );
        let rules = egress.rules_for("a/b");
        let ack = egress.submit(&rules, &message("a/b")).await.unwrap();
        ack.await.unwrap();
        assert_eq!(egress.outbox().len(), 0);
        assert_eq!(
            metrics
                .rule("third-level")
                .unwrap()
                .failed
                .load(Ordering::Relaxed),
            1
        );
        // A topic with a third level goes to the outbox.
        let rules = egress.rules_for("a/b/c");
        let ack = egress.submit(&rules, &message("a/b/c")).await.unwrap();
        ack.await.unwrap();
        assert_eq!(egress.outbox().len(), 1);
    }

    #[tokio::test]
    async fn with_ack_after_kafka_a_message_with_no_kafka_topic_is_refused() {
        let (egress, _) = egress(
            r##"
[[egress]]
name = "third-level"
mqtt_filter = "#"
kafka_topic = "${topic.3}"
ack = "after-kafka"
"##,
        );
        let rules = egress.rules_for("a/b");
        let err = egress.submit(&rules, &message("a/b")).await.unwrap_err();
        assert!(matches!(err, BridgeError::NoKafkaTopic { .. }), "{err}");
    }

    #[tokio::test]
    async fn submissions_keep_their_order_in_the_outbox() {
        let (egress, _) = egress(
            r##"
[[egress]]
name = "all"
mqtt_filter = "#"
kafka_topic = "t"
"##,
        );
        let mut acks = Vec::new();
        for n in 0..50u64 {
            let mut m = message("a/b");
            m.received_at_ms = n;
            let rules = egress.rules_for("a/b");
            acks.push(egress.submit(&rules, &m).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        let stamps: Vec<u64> = egress
            .outbox()
            .read(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, r)| r.timestamp_ms)
            .collect();
        assert_eq!(stamps, (0..50).collect::<Vec<_>>());
    }
}
