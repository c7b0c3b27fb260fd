//! Kafka → MQTT: each `[[kafka.ingress]]` rule consumes Kafka topics with a consumer
//! group (the same group on every node, so Kafka spreads the partitions over the
//! nodes) and publishes each record to MQTT through the router. A record's offset is
//! stored for commit only once the router has routed it and made it durable: at least
//! once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetmq_broker::{Event, Message, MessageProperties};
use fleetmq_topic::validate_topic_name;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{IngressRule, KafkaConfig};
use crate::errors::BridgeError;
use crate::metrics::BridgeMetrics;

/// Records handed to the router and not yet durable, per rule, at most.
const IN_FLIGHT: usize = 256;
/// How often stored offsets are committed to Kafka.
const COMMIT_INTERVAL_MS: &str = "1000";
/// How often the consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long one watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The Kafka → MQTT side of one node's bridge: one consumer task per rule.
pub struct Ingress {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("rules", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// Starts a consumer per ingress rule, publishing into `router`.
    pub fn start(
        config: &KafkaConfig,
        router: mpsc::Sender<Event>,
        metrics: Arc<BridgeMetrics>,
    ) -> Result<Ingress, BridgeError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for rule in config.ingress_rules()? {
            let mut client = ClientConfig::new();
            for (key, value) in &config.client {
                client.set(key, value);
            }
            client
                .set("bootstrap.servers", &config.bootstrap_servers)
                .set("group.id", &rule.group_id)
                // A group that never committed starts at the oldest record: records
                // written before the first start are bridged too.
                .set("auto.offset.reset", "earliest")
                // Offsets are stored by hand once the router has a record, and the
                // stored ones committed periodically: at least once.
                .set("enable.auto.offset.store", "false")
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", COMMIT_INTERVAL_MS);
            let consumer: StreamConsumer = client.create()?;
            let topics: Vec<&str> = rule.kafka_topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics)?;
            info!(rule = %rule.name, topics = ?rule.kafka_topics, group = %rule.group_id, "kafka ingress started");
            let consumer = Arc::new(consumer);
            tasks.push(tokio::spawn(run_lag(
                rule.name.clone(),
                consumer.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(run_rule(
                rule,
                consumer,
                router.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Ingress { stop, tasks })
    }

    /// Stops consuming; offsets stored so far are committed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the rule makes of one record: the MQTT message, or why it cannot be one.
pub fn to_message(rule: &IngressRule, record: &BorrowedMessage<'_>) -> Result<Message, String> {
    let key = record.key().map(String::from_utf8_lossy);
    let mut headers = Vec::new();
    if let Some(h) = record.headers() {
        for header in h.iter() {
            headers.push((
                header.key.to_string(),
                String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
            ));
        }
    }
    let topic = rule
        .mqtt_topic
        .render(record.topic(), key.as_deref(), &headers)?;
    validate_topic_name(&topic).map_err(|e| format!("MQTT topic {topic:?}: {e}"))?;
    Ok(Message {
        topic: Arc::from(topic),
        payload: Bytes::copy_from_slice(record.payload().unwrap_or_default()),
        qos: rule.qos,
        retain: rule.retain,
        properties: MessageProperties::default(),
        publisher: None,
        expires_at_ms: None,
    })
}

/// Measures the rule's consumer lag every [`LAG_INTERVAL`] (the queries block: they run
/// on a blocking thread).
async fn run_lag(
    rule: Arc<str>,
    consumer: Arc<StreamConsumer>,
    metrics: Arc<BridgeMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(LAG_INTERVAL) => {}
        }
        let consumer = consumer.clone();
        let measured = tokio::task::spawn_blocking(move || lag_of(&consumer)).await;
        match measured {
            Ok(Ok(lag)) => {
                if let Some(c) = metrics.ingress_rule(&rule) {
                    c.lag.store(lag, Ordering::Relaxed);
                    c.lag_measured.store(true, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => warn!(rule = %rule, error = %e, "kafka ingress: lag not measured"),
            Err(_) => return,
        }
    }
}

/// High watermark less position, summed over the partitions assigned to this consumer.
fn lag_of(consumer: &StreamConsumer) -> Result<u64, rdkafka::error::KafkaError> {
    let positions = consumer.position()?;
    let mut lag = 0u64;
    for element in positions.elements() {
        let (_, high) =
            consumer.fetch_watermarks(element.topic(), element.partition(), WATERMARK_TIMEOUT)?;
        let position = match element.offset() {
            rdkafka::Offset::Offset(at) => at,
            // Nothing read yet: everything up to the high watermark waits (the group
            // starts at the oldest record).
            _ => {
                consumer
                    .fetch_watermarks(element.topic(), element.partition(), WATERMARK_TIMEOUT)?
                    .0
            }
        };
        lag += u64::try_from(high.saturating_sub(position)).unwrap_or(0);
    }
    Ok(lag)
}

async fn run_rule(
    rule: IngressRule,
    consumer: Arc<StreamConsumer>,
    router: mpsc::Sender<Event>,
    metrics: Arc<BridgeMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let counters = metrics.ingress_rule(&rule.name);
    // Handed to the router, oldest first: (topic, partition, offset, durable).
    let mut in_flight: VecDeque<(String, i32, i64, oneshot::Receiver<()>)> = VecDeque::new();
    loop {
        // Store the offsets of what the router has made durable, in order.
        while let Some((_, _, _, done)) = in_flight.front_mut() {
            match done.try_recv() {
                Ok(()) => {}
                Err(oneshot::error::TryRecvError::Empty) => break,
                // The router dropped it (shutting down): not stored, read again later.
                Err(oneshot::error::TryRecvError::Closed) => return,
            }
            if let Some((topic, partition, offset, _)) = in_flight.pop_front() {
                store_offset(&consumer, &topic, partition, offset);
            }
        }
        if in_flight.len() >= IN_FLIGHT {
            if let Some((topic, partition, offset, done)) = in_flight.pop_front() {
                if done.await.is_err() {
                    return;
                }
                store_offset(&consumer, &topic, partition, offset);
            }
            continue;
        }
        let received = tokio::select! {
            _ = stop.changed() => break,
            received = consumer.recv() => received,
            // Nothing new for a moment: wait for what is in flight instead.
            () = tokio::time::sleep(Duration::from_millis(20)), if !in_flight.is_empty() => {
                if let Some((topic, partition, offset, done)) = in_flight.pop_front() {
                    if done.await.is_err() {
                        return;
                    }
                    store_offset(&consumer, &topic, partition, offset);
                }
                continue;
            }
        };
        let record = match received {
            Ok(record) => record,
            Err(e) => {
                warn!(rule = %rule.name, error = %e, "kafka ingress: consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (topic, partition, offset) = (
            record.topic().to_string(),
            record.partition(),
            record.offset(),
        );
        match to_message(&rule, &record) {
            Ok(message) => {
                let (done_tx, done_rx) = oneshot::channel();
                let event = Event::Ingest {
                    message: Arc::new(message),
                    done: done_tx,
                };
                if router.send(event).await.is_err() {
                    return;
                }
                if let Some(c) = counters {
                    c.consumed.fetch_add(1, Ordering::Relaxed);
                }
                in_flight.push_back((topic, partition, offset, done_rx));
            }
            Err(problem) => {
                // Never publishable as it is: skip it for good, counted and logged.
                warn!(rule = %rule.name, %topic, partition, offset, %problem, "kafka ingress: record skipped");
                if let Some(c) = counters {
                    c.skipped.fetch_add(1, Ordering::Relaxed);
                }
                if in_flight.is_empty() {
                    store_offset(&consumer, &topic, partition, offset);
                }
            }
        }
    }
    // Stopping: what is durable is stored, then committed once more.
    for (topic, partition, offset, done) in in_flight {
        if done.await.is_err() {
            break;
        }
        store_offset(&consumer, &topic, partition, offset);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        debug!(rule = %rule.name, error = %e, "kafka ingress: final commit");
    }
}

fn store_offset(consumer: &StreamConsumer, topic: &str, partition: i32, offset: i64) {
    let mut list = TopicPartitionList::new();
    // The committed offset is the next one to read.
    if list
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset + 1))
        .is_err()
    {
        return;
    }
    if let Err(e) = consumer.store_offsets(&list) {
        // A partition this consumer no longer owns (rebalanced away): its new owner
        // reads the record again; at least once.
        debug!(%topic, partition, offset, error = %e, "kafka ingress: offset not stored");
    }
}
