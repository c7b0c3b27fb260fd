//! Rate limits: new connections per second per listener (`max_connect_rate`), and
//! PUBLISH packets and bytes per second per client (`mqtt.max_publish_rate`,
//! `mqtt.max_publish_bytes_rate`). Each is a token bucket that holds one second of its
//! rate, so short bursts pass and a steady excess does not.
//!
//! What a client sees when one is hit: a CONNECT over its listener's rate gets CONNACK
//! 0x9F (connection rate exceeded; MQTT 3.1.1: 3, server unavailable) before any
//! authentication work; a client over its PUBLISH rate gets DISCONNECT 0x96 (message
//! rate too high), over its byte rate DISCONNECT 0x97 (quota exceeded); MQTT 3.1.1
//! clients are closed. Counted in `fleetmq_limit_hits_total{limit}` and in
//! `fleetmq_connections_closed_total{reason}`.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `None` for 0 (no limit). The bucket starts full.
    pub fn per_second(rate: u64, burst: u64) -> Option<RateLimit> {
        (rate > 0).then(|| RateLimit {
            rate: rate as f64,
            burst: burst.max(rate) as f64,
            tokens: burst.max(rate) as f64,
            at: Instant::now(),
        })
    }

    /// Takes `n` tokens if there are that many now; `false` leaves the bucket as is.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connects,
    Publishes,
    PublishBytes,
    /// A PUBLISH topic or a SUBSCRIBE filter deeper than `mqtt.max_topic_levels`.
    TopicLevels,
}

/// `fleetmq_limit_hits_total{limit}`: every limit of the node, one family, so that one
/// query shows which limits clients run into. The counts of limits the router or the
/// listeners enforce live with them and are passed to [`LimitMetrics::render`].
#[derive(Debug, Default)]
pub struct LimitMetrics {
    connect_rate: AtomicU64,
    publish_rate: AtomicU64,
    publish_bytes_rate: AtomicU64,
    topic_levels: AtomicU64,
}

/// Limit hits counted elsewhere, rendered in the same family.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtherLimitHits {
    /// `mqtt.max_connections` (the listeners count them per listener too).
    pub connections: u64,
    /// `mqtt.max_inflight`: deliveries that waited for the client's window.
    pub inflight: u64,
    /// `mqtt.max_queued_messages`: deliveries dropped by `queue_full_policy`.
    pub queued_messages: u64,
    /// A client's outbox full: QoS 0 dropped, or the client closed with 0x97.
    pub outbox: u64,
}

impl LimitMetrics {
    pub fn hit(&self, limit: Limit) {
        let counter = match limit {
            Limit::Connects => &self.connect_rate,
            Limit::Publishes => &self.publish_rate,
            Limit::PublishBytes => &self.publish_bytes_rate,
            Limit::TopicLevels => &self.topic_levels,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, other: OtherLimitHits, out: &mut String) {
        use std::fmt::Write as _;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP fleetmq_limit_hits_total Times a configured limit was hit (connection refused or closed, packet refused, delivery waited or dropped), by limit.\n\
             # TYPE fleetmq_limit_hits_total counter"
        );
        let hits = [
            ("connections", other.connections),
            ("connect_rate", load(&self.connect_rate)),
            ("publish_rate", load(&self.publish_rate)),
            ("publish_bytes_rate", load(&self.publish_bytes_rate)),
            ("topic_levels", load(&self.topic_levels)),
            ("inflight", other.inflight),
            ("queued_messages", other.queued_messages),
            ("outbox", other.outbox),
        ];
        for (limit, count) in hits {
            let _ = writeln!(out, "fleetmq_limit_hits_total{{limit=\"{limit}\"}} {count}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_one_second_passes_and_then_the_rate_holds() {
        let start = Instant::now();
        let mut limit = RateLimit::per_second(10, 10).unwrap();
        limit.at = start;
        assert!((0..10).all(|_| limit.take(1, start)));
        assert!(!limit.take(1, start), "the burst is spent");
        // A tenth of a second buys one more.
        assert!(limit.take(1, start + Duration::from_millis(100)));
        assert!(!limit.take(1, start + Duration::from_millis(100)));
        // Idle time saves up one second's worth at most.
        let later = start + Duration::from_secs(60);
        assert!((0..10).all(|_| limit.take(1, later)));
        assert!(!limit.take(1, later));
        assert!(RateLimit::per_second(0, 0).is_none());
    }

    #[test]
    fn a_bigger_burst_lets_one_large_message_through_a_small_byte_rate() {
        let start = Instant::now();
        let mut bytes = RateLimit::per_second(100, 1000).unwrap();
        bytes.at = start;
        assert!(bytes.take(1000, start));
        assert!(!bytes.take(100, start));
        assert!(bytes.take(100, start + Duration::from_secs(1)));
    }
}
