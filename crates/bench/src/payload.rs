//! What a benchmark PUBLISH carries: who sent it, its sequence number and when it was
//! sent, so that a subscriber can tell the publish→delivery latency and the end of a
//! run can tell which acknowledged message never arrived.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes taken by the stamp at the start of every payload.
pub const STAMP_LEN: usize = 20;

/// The identity and send time of one benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publisher in its run.
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
    /// Microseconds since [`origin`] when the message was handed to the client.
    pub sent_us: u64,
}

impl Stamp {
    /// The payload: the stamp, little endian, padded with zeros to `size` bytes (never
    /// shorter than the stamp).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(STAMP_LEN));
        out.extend_from_slice(&self.publisher.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sent_us.to_le_bytes());
        out.resize(size.max(STAMP_LEN), 0);
        out
    }

    /// The stamp at the start of `payload`; `None` when it is too short (a message
    /// the benchmark did not send).
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        let publisher = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
        let seq = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
        let sent_us = u64::from_le_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Stamp {
            publisher,
            seq,
            sent_us,
        })
    }
}

/// The instant all stamps of this process count from.
pub fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since [`origin`].
pub fn now_us() -> u64 {
    micros(origin().elapsed())
}

/// `instant` as microseconds since [`origin`] (0 if it came before).
pub fn us_of(instant: Instant) -> u64 {
    micros(instant.saturating_duration_since(origin()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = Stamp {
            publisher: 7,
            seq: 123_456_789,
            sent_us: 42,
        };
        let p = s.encode(100);
        assert_eq!(p.len(), 100);
        assert_eq!(Stamp::decode(&p), Some(s));
        assert_eq!(s.encode(3).len(), STAMP_LEN);
        assert_eq!(Stamp::decode(&p[..19]), None);
    }
}
