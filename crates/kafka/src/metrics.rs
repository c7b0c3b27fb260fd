//! The bridge's counters; the server exposes them in `/metrics`. Labels are rule names
//! (a handful, from the configuration), never topics or client ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters for the whole bridge of one node.
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    /// Records waiting in the outbox, and their bytes.
    pub outbox_records: AtomicU64,
    pub outbox_bytes: AtomicU64,
    /// Records refused because the outbox was full (`when_full = "refuse"`).
    pub refused_outbox_full: AtomicU64,
    /// Records dropped to make room (`when_full = "drop-oldest"`).
    pub dropped_outbox_full: AtomicU64,
    /// Per rule.
    pub rules: BTreeMap<Arc<str>, RuleMetrics>,
    /// Per ingress rule.
    pub ingress: BTreeMap<Arc<str>, IngressMetrics>,
}

/// Counters of one ingress rule.
#[derive(Debug, Default)]
pub struct IngressMetrics {
    /// Records handed to the router.
    pub consumed: AtomicU64,
    /// Records that could not become an MQTT message (no key, no such header,
    /// not a valid topic name), skipped for good.
    pub skipped: AtomicU64,
    /// Records in this node's partitions not yet read: the high watermark less the
    /// consumer's position, summed (a gauge, refreshed every few seconds).
    pub lag: AtomicU64,
    /// Whether `lag` has been measured yet; until then it is not reported.
    pub lag_measured: std::sync::atomic::AtomicBool,
}

/// Counters of one egress rule.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    /// Records Kafka acknowledged.
    pub produced: AtomicU64,
    /// Records Kafka refused for good (dropped, logged with the rule's name).
    pub failed: AtomicU64,
    /// Records produced again after a failed attempt (a restart, a producer error).
    pub retried: AtomicU64,
}

impl BridgeMetrics {
    /// Counters for the rules named `rules`.
    pub fn for_rules<'a>(rules: impl IntoIterator<Item = &'a Arc<str>>) -> BridgeMetrics {
        BridgeMetrics {
            rules: rules
                .into_iter()
                .map(|name| (name.clone(), RuleMetrics::default()))
                .collect(),
            ..BridgeMetrics::default()
        }
    }

    pub fn rule(&self, name: &str) -> Option<&RuleMetrics> {
        self.rules.get(name)
    }

    /// Adds counters for the ingress rules named `rules`.
    pub fn with_ingress<'a>(mut self, rules: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        self.ingress = rules
            .into_iter()
            .map(|name| (name.clone(), IngressMetrics::default()))
            .collect();
        self
    }

    pub fn ingress_rule(&self, name: &str) -> Option<&IngressMetrics> {
        self.ingress.get(name)
    }

    /// Prometheus text for these counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicU64, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        gauge(
            out,
            "fleetmq_kafka_outbox_records",
            "Records waiting in the Kafka outbox.",
            &self.outbox_records,
            "gauge",
        );
        gauge(
            out,
            "fleetmq_kafka_outbox_bytes",
            "Bytes waiting in the Kafka outbox.",
            &self.outbox_bytes,
            "gauge",
        );
        gauge(
            out,
            "fleetmq_kafka_outbox_refused_total",
            "Records refused because the Kafka outbox was full.",
            &self.refused_outbox_full,
            "counter",
        );
        gauge(
            out,
            "fleetmq_kafka_outbox_dropped_total",
            "Oldest records dropped because the Kafka outbox was full.",
            &self.dropped_outbox_full,
            "counter",
        );
        for (metric, help, pick) in [
            (
                "fleetmq_kafka_records_produced_total",
                "Records Kafka acknowledged, per egress rule.",
                (|r: &RuleMetrics| &r.produced) as fn(&RuleMetrics) -> &AtomicU64,
            ),
            (
                "fleetmq_kafka_records_failed_total",
                "Records Kafka refused for good, per egress rule.",
                |r: &RuleMetrics| &r.failed,
            ),
            (
                "fleetmq_kafka_records_retried_total",
                "Records produced again after a failed attempt, per egress rule.",
                |r: &RuleMetrics| &r.retried,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (rule, counters) in &self.rules {
                let _ = writeln!(
                    out,
                    "{metric}{{rule=\"{rule}\"}} {}",
                    pick(counters).load(Ordering::Relaxed)
                );
            }
        }
        for (metric, help, pick) in [
            (
                "fleetmq_kafka_ingress_consumed_total",
                "Kafka records handed to the router, per ingress rule.",
                (|r: &IngressMetrics| &r.consumed) as fn(&IngressMetrics) -> &AtomicU64,
            ),
            (
                "fleetmq_kafka_ingress_skipped_total",
                "Kafka records that could not become an MQTT message, per ingress rule.",
                |r: &IngressMetrics| &r.skipped,
            ),
            (
                "fleetmq_kafka_ingress_lag_records",
                "Records in this node's partitions not yet read, per ingress rule.",
                |r: &IngressMetrics| &r.lag,
            ),
        ] {
            let kind = if metric.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (rule, counters) in &self.ingress {
                if kind == "gauge" && !counters.lag_measured.load(Ordering::Relaxed) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{metric}{{rule=\"{rule}\"}} {}",
                    pick(counters).load(Ordering::Relaxed)
                );
            }
        }
    }
}
