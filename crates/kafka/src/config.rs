//! The `[kafka]` section of the configuration file, and the rules compiled from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetmq_codec::QoS;
use fleetmq_topic::TopicFilter;
use serde::Deserialize;

use crate::errors::ConfigError;
use crate::template::{IngressTemplate, Template};

/// `[kafka]`: where Kafka is and what goes to it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` of the Kafka brokers.
    pub bootstrap_servers: String,
    /// Extra librdkafka producer and consumer properties (`security.protocol`,
    /// `sasl.mechanism`, `compression.type`, …), passed through as they are.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[[kafka.egress]]`: MQTT → Kafka rules. A message matching several rules is
    /// produced once per rule.
    #[serde(default)]
    pub egress: Vec<EgressRuleConfig>,
    /// `[[kafka.ingress]]`: Kafka → MQTT rules.
    #[serde(default)]
    pub ingress: Vec<IngressRuleConfig>,
}

/// `[[kafka.ingress]]`, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngressRuleConfig {
    /// Names the rule in metrics and logs; unique among ingress rules.
    pub name: String,
    /// The Kafka topics to consume.
    pub kafka_topics: Vec<String>,
    /// The MQTT topic: fixed text, or a template with `${kafka_topic}`, `${key}` (the
    /// record's key) and `${header.NAME}` (a header's value).
    pub mqtt_topic: String,
    /// The QoS of the MQTT messages (0, 1 or 2; default 1).
    #[serde(default = "default_ingress_qos")]
    pub qos: u8,
    /// Whether the MQTT messages are retained (default false).
    #[serde(default)]
    pub retain: bool,
    /// The consumer group, the same on every node so that Kafka spreads the
    /// partitions over them; default `fleetmq-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
}

fn default_ingress_qos() -> u8 {
    1
}

/// An ingress rule ready to use.
#[derive(Debug, Clone)]
pub struct IngressRule {
    pub name: Arc<str>,
    pub kafka_topics: Vec<String>,
    pub mqtt_topic: IngressTemplate,
    pub qos: QoS,
    pub retain: bool,
    pub group_id: String,
}

/// `[kafka.outbox]`: the durable queue of records waiting for Kafka.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Records waiting at most (default 1,000,000).
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    /// Bytes waiting at most (default 1 GiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// What happens at the bound: `refuse` new publishes (PUBACK/PUBREC with reason
    /// 0x97 quota exceeded on MQTT 5; the connection is closed on 3.1.1, which has no
    /// way to refuse), or `drop-oldest` records. Both are counted.
    #[serde(default)]
    pub when_full: OutboxFullPolicy,
}

fn default_max_records() -> u64 {
    1_000_000
}

fn default_max_bytes() -> u64 {
    1 << 30
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            when_full: OutboxFullPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OutboxFullPolicy {
    #[default]
    Refuse,
    DropOldest,
}

/// `[[kafka.egress]]`, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressRuleConfig {
    /// Names the rule in metrics and logs; unique.
    pub name: String,
    /// Which MQTT topics the rule takes (`+` and `#` allowed).
    pub mqtt_filter: String,
    /// The Kafka topic, a template (see [`Template`]); characters Kafka does not allow
    /// in a topic name (`/` above all) become `_`.
    pub kafka_topic: String,
    /// The record key, a template; default `${clientid}`, so one device's records
    /// stay in one partition, in order. An empty string means no key.
    #[serde(default = "default_key")]
    pub key: String,
    /// `raw` (default): the MQTT payload unchanged, the metadata in headers; `json`:
    /// the documented JSON envelope.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// When the publisher is acknowledged: `after-outbox` (default), once the record
    /// is in the durable outbox; `after-kafka`, once Kafka has it (backpressure
    /// instead of a queue).
    #[serde(default)]
    pub ack: AckMode,
}

fn default_key() -> String {
    "${clientid}".to_string()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    #[default]
    Raw,
    Json,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    #[default]
    AfterOutbox,
    AfterKafka,
}

/// An egress rule ready to use.
#[derive(Debug, Clone)]
pub struct EgressRule {
    pub name: Arc<str>,
    pub filter: TopicFilter,
    pub kafka_topic: Template,
    /// `None`: records have no key.
    pub key: Option<Template>,
    pub payload: PayloadFormat,
    pub ack: AckMode,
}

impl KafkaConfig {
    /// Checks every key; errors name it as `kafka.…`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rules()?;
        self.ingress_rules().map(|_| ())
    }

    /// The ingress rules, compiled.
    pub fn ingress_rules(&self) -> Result<Vec<IngressRule>, ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(self.ingress.len());
        for (i, rule) in self.ingress.iter().enumerate() {
            let key = |field: &str| format!("kafka.ingress[{i}].{field}");
            check_name(&mut names, key("name"), &rule.name)?;
            if rule.kafka_topics.is_empty() || rule.kafka_topics.iter().any(String::is_empty) {
                return Err(ConfigError::invalid(
                    key("kafka_topics"),
                    "must list at least one topic, none empty",
                ));
            }
            let mqtt_topic = IngressTemplate::parse(&key("mqtt_topic"), &rule.mqtt_topic)?;
            let qos = QoS::from_u8(rule.qos).ok_or_else(|| {
                ConfigError::invalid(key("qos"), format!("{} is not 0, 1 or 2", rule.qos))
            })?;
            rules.push(IngressRule {
                name: Arc::from(rule.name.as_str()),
                kafka_topics: rule.kafka_topics.clone(),
                mqtt_topic,
                qos,
                retain: rule.retain,
                group_id: rule
                    .group_id
                    .clone()
                    .unwrap_or_else(|| format!("fleetmq-{}", rule.name)),
            });
        }
        Ok(rules)
    }

    /// The egress rules, compiled.
    pub fn rules(&self) -> Result<Vec<EgressRule>, ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must name at least one broker (host:port)",
            ));
        }
        for key in self.client.keys() {
            if matches!(
                key.as_str(),
                "bootstrap.servers" | "enable.idempotence" | "acks"
            ) {
                return Err(ConfigError::invalid(
                    format!("kafka.client.{key}"),
                    "is set by the bridge itself (bootstrap.servers from kafka.bootstrap_servers; \
                     the producer is always idempotent with acks=all)",
                ));
            }
        }
        if self.outbox.max_records == 0 {
            return Err(ConfigError::invalid(
                "kafka.outbox.max_records",
                "must be at least 1",
            ));
        }
        if self.outbox.max_bytes == 0 {
            return Err(ConfigError::invalid(
                "kafka.outbox.max_bytes",
                "must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(self.egress.len());
        for (i, rule) in self.egress.iter().enumerate() {
            let key = |field: &str| format!("kafka.egress[{i}].{field}");
            check_name(&mut names, key("name"), &rule.name)?;
            let filter = TopicFilter::parse(&rule.mqtt_filter)
                .map_err(|e| ConfigError::invalid(key("mqtt_filter"), e.to_string()))?;
            if filter.is_shared() {
                return Err(ConfigError::invalid(
                    key("mqtt_filter"),
                    "a $share filter chooses subscribers, not messages: use the plain filter",
                ));
            }
            let kafka_topic = Template::parse(&key("kafka_topic"), &rule.kafka_topic)?;
            if rule.kafka_topic.is_empty() {
                return Err(ConfigError::invalid(
                    key("kafka_topic"),
                    "must not be empty",
                ));
            }
            let key_template = if rule.key.is_empty() {
                None
            } else {
                Some(Template::parse(&key("key"), &rule.key)?)
            };
            rules.push(EgressRule {
                name: Arc::from(rule.name.as_str()),
                filter,
                kafka_topic,
                key: key_template,
                payload: rule.payload,
                ack: rule.ack,
            });
        }
        Ok(rules)
    }
}

/// A rule's name is not empty and no other rule of its kind has it.
fn check_name<'a>(
    names: &mut std::collections::HashSet<&'a str>,
    key: String,
    name: &'a str,
) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if !names.insert(name) {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} names another rule too"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KafkaConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse(
            r#"
            bootstrap_servers = "127.0.0.1:9092"
            [[egress]]
            name = "telemetry"
            mqtt_filter = "site/+/telemetry/#"
            kafka_topic = "telemetry"
            "#,
        );
        let rules = config.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].payload, PayloadFormat::Raw);
        assert_eq!(rules[0].ack, AckMode::AfterOutbox);
        assert_eq!(rules[0].key.as_ref().unwrap().source(), "${clientid}");
        assert_eq!(config.outbox.max_records, 1_000_000);
        assert_eq!(config.outbox.when_full, OutboxFullPolicy::Refuse);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                r#"bootstrap_servers = """#,
                "kafka.bootstrap_servers",
            ),
            (
                "bootstrap_servers = \"k:9092\"\n[client]\n\"acks\" = \"1\"",
                "kafka.client.acks",
            ),
            (
                "bootstrap_servers = \"k:9092\"\n[[egress]]\nname = \"a\"\nmqtt_filter = \"a/#/b\"\nkafka_topic = \"t\"",
                "kafka.egress[0].mqtt_filter",
            ),
            (
                "bootstrap_servers = \"k:9092\"\n[[egress]]\nname = \"a\"\nmqtt_filter = \"a\"\nkafka_topic = \"${nope}\"",
                "kafka.egress[0].kafka_topic",
            ),
            (
                "bootstrap_servers = \"k:9092\"\n[[egress]]\nname = \"a\"\nmqtt_filter = \"a\"\nkafka_topic = \"t\"\n[[egress]]\nname = \"a\"\nmqtt_filter = \"b\"\nkafka_topic = \"t\"",
                "kafka.egress[1].name",
            ),
            (
                "bootstrap_servers = \"k:9092\"\n[outbox]\nmax_records = 0",
                "kafka.outbox.max_records",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).validate().unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<KafkaConfig>(
            "bootstrap_servers = \"k:9092\"\n[[egress]]\nname = \"a\"\nmqtt_filter = \"a\"\nkafka_topic = \"t\"\nacks = \"all\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `acks`"), "{err}");
    }
}
