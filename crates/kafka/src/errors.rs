//! The bridge's errors.

use fleetmq_storage::StorageError;

/// A configuration that cannot work, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("outbox storage: {0}")]
    Storage(#[from] StorageError),
    #[error("outbox record {seq} is corrupt: {detail}")]
    Corrupt { seq: u64, detail: String },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the outbox is full ({records} records, {bytes} bytes)")]
    OutboxFull { records: u64, bytes: u64 },
    #[error("rule {rule}: the kafka topic template renders empty for this message")]
    NoKafkaTopic { rule: String },
    #[error("the bridge has stopped")]
    Stopped,
}
