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
    /// Records produced again from the outbox after a restart (some may have reached
    /// Kafka before it).
    pub retried: AtomicU64,
    /// Records of this rule waiting in the outbox (a gauge).
    pub outbox_records: AtomicU64,
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

    /// Adds one to the counter `pick` chooses of rule `name` (none for a rule the
    /// configuration no longer has, as for a record an earlier run left).
    pub fn count(&self, name: &str, pick: fn(&RuleMetrics) -> &AtomicU64) {
        if let Some(counters) = self.rules.get(name) {
            pick(counters).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a record of rule `name` into the outbox's per-rule depth; returns the
    /// rule's shared name to uncount it with (None: no such rule configured now, as
    /// for a record an earlier configuration left).
    pub fn count_outbox(&self, name: &str) -> Option<Arc<str>> {
        let (name, counters) = self.rules.get_key_value(name)?;
        counters.outbox_records.fetch_add(1, Ordering::Relaxed);
        Some(name.clone())
    }

    /// Takes a record counted by [`BridgeMetrics::count_outbox`] out of the depth.
    pub fn uncount_outbox(&self, name: Option<&Arc<str>>) {
        if let Some(counters) = name.and_then(|name| self.rules.get(name)) {
            counters.outbox_records.fetch_sub(1, Ordering::Relaxed);
        }
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
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let single = |v: &AtomicU64| [(None, load(v))];
        family(
            out,
            "fleetmq_kafka_outbox_records",
            "gauge",
            "Records waiting in the Kafka outbox.",
            single(&self.outbox_records),
        );
        family(
            out,
            "fleetmq_kafka_outbox_bytes",
            "gauge",
            "Bytes waiting in the Kafka outbox.",
            single(&self.outbox_bytes),
        );
        family(
            out,
            "fleetmq_kafka_outbox_refused_total",
            "counter",
            "Records refused because the Kafka outbox was full.",
            single(&self.refused_outbox_full),
        );
        family(
            out,
            "fleetmq_kafka_outbox_dropped_total",
            "counter",
            "Oldest records dropped because the Kafka outbox was full.",
            single(&self.dropped_outbox_full),
        );
        let egress = |pick: fn(&RuleMetrics) -> &AtomicU64| {
            self.rules
                .iter()
                .map(move |(rule, m)| (Some(&**rule), load(pick(m))))
        };
        family(
            out,
            "fleetmq_kafka_records_produced_total",
            "counter",
            "Records Kafka acknowledged, per egress rule.",
            egress(|m| &m.produced),
        );
        family(
            out,
            "fleetmq_kafka_records_failed_total",
            "counter",
            "Records Kafka refused for good, per egress rule.",
            egress(|m| &m.failed),
        );
        family(
            out,
            "fleetmq_kafka_outbox_rule_records",
            "gauge",
            "Records waiting in the Kafka outbox, per egress rule.",
            egress(|m| &m.outbox_records),
        );
        family(
            out,
            "fleetmq_kafka_records_retried_total",
            "counter",
            "Records produced again from the outbox after a restart, per egress rule.",
            egress(|m| &m.retried),
        );
        let ingress = |pick: fn(&IngressMetrics) -> &AtomicU64| {
            self.ingress
                .iter()
                .map(move |(rule, m)| (Some(&**rule), load(pick(m))))
        };
        family(
            out,
            "fleetmq_kafka_ingress_consumed_total",
            "counter",
            "Kafka records handed to the router, per ingress rule.",
            ingress(|m| &m.consumed),
        );
        family(
            out,
            "fleetmq_kafka_ingress_skipped_total",
            "counter",
            "Kafka records that could not become an MQTT message, per ingress rule.",
            ingress(|m| &m.skipped),
        );
        // Reported once measured: before that it is not known, not 0.
        family(
            out,
            "fleetmq_kafka_ingress_lag_records",
            "gauge",
            "Records in this node's partitions not yet read, per ingress rule.",
            self.ingress
                .iter()
                .filter(|(_, m)| m.lag_measured.load(Ordering::Relaxed))
                .map(|(rule, m)| (Some(&**rule), load(&m.lag))),
        );
    }
}

/// One metric family: its HELP and TYPE lines, then a sample per `(rule, value)`.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Option<&'a str>, u64)>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (rule, value) in samples {
        let _ = match rule {
            Some(rule) => writeln!(out, "{name}{{rule=\"{rule}\"}} {value}"),
            None => writeln!(out, "{name} {value}"),
        };
    }
}
