//! FleetMQ's bridge between MQTT and Apache Kafka (`rdkafka`).
//!
//! Egress (MQTT → Kafka): rules in the configuration turn matching messages into
//! records ([`record`]) with templated topics and keys ([`template`]); records wait in a
//! durable, bounded [`outbox`] until Kafka acknowledges them ([`egress`]). Each node
//! bridges only what its own clients published, so no record is produced twice by two
//! nodes.
//!
//! Ingress (Kafka → MQTT): rules consume Kafka topics with a consumer group shared by
//! the nodes and hand each record to the router as a message ([`ingress`]); offsets
//! are committed once the router has made it durable.

pub mod config;
pub mod egress;
pub mod errors;
pub mod ingress;
pub mod metrics;
pub mod outbox;
pub mod record;
pub mod template;

pub use config::{
    AckMode, EgressRule, IngressRule, KafkaConfig, OutboxConfig, OutboxFullPolicy, PayloadFormat,
};
pub use egress::{BridgeAck, Egress};
pub use errors::{BridgeError, ConfigError};
pub use ingress::Ingress;
pub use metrics::BridgeMetrics;
pub use outbox::Outbox;
pub use record::{BridgedMessage, KafkaRecord};
