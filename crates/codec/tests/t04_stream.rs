//! Decoding as a stream: arbitrary input never panics, a decoded packet
//! consumes exactly its own bytes, and a partial packet is never consumed.

mod common;

use bytes::BytesMut;
use common::{any_packet, must_encode, version, versioned_packet, NO_LIMIT};
use fleetmq_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// The packet size the fixed header announces, worked out independently.
fn announced_size(bytes: &[u8]) -> Option<usize> {
    let mut remaining = 0;
    for (i, byte) in bytes.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}

/// Decodes `bytes` and checks what was consumed; re-encodes what was decoded.
fn decode_and_check(
    bytes: &[u8],
    version: ProtocolVersion,
    max: usize,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, max) {
        Ok(Some(packet)) => {
            let size = announced_size(bytes).expect("a decoded packet has a fixed header");
            prop_assert_eq!(buf.len(), bytes.len() - size, "consumed exactly one packet");
            prop_assert!(size <= max);
            // Whatever decodes must encode, and decode again to the same value.
            let again = must_encode(&packet, version);
            let mut again = BytesMut::from(&again[..]);
            prop_assert_eq!(decode(&mut again, version, NO_LIMIT), Ok(Some(packet)));
        }
        Ok(None) => prop_assert_eq!(&buf[..], bytes, "an incomplete packet is not consumed"),
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..64),
        version in version(),
        max in prop_oneof![Just(NO_LIMIT), 0..80usize],
    ) {
        decode_and_check(&bytes, version, max)?;
    }

    /// Random bytes rarely get past the fixed header: start from a valid packet
    /// and damage it, to reach the checks deep inside each packet type.
    #[test]
    fn damaged_packets_never_panic(
        (version, packet) in versioned_packet(),
        damage in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = must_encode(&packet, version);
        for (at, value) in damage {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_and_check(&bytes, version, NO_LIMIT)?;
        let cut = cut.index(bytes.len() + 1);
        decode_and_check(&bytes[..cut], version, NO_LIMIT)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn decoding_consumes_exactly_one_packet(
        (version, packet) in versioned_packet(),
        after in vec(any::<u8>(), 0..16),
    ) {
        let bytes = must_encode(&packet, version);
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(&after);
        prop_assert_eq!(decode(&mut buf, version, NO_LIMIT).unwrap(), Some(packet));
        prop_assert_eq!(&buf[..], &after[..]);
    }

    #[test]
    fn partial_packets_wait_for_the_rest((version, packet) in versioned_packet()) {
        let bytes = must_encode(&packet, version);
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let decoded = decode(&mut buf, version, NO_LIMIT).unwrap();
            if i + 1 < bytes.len() {
                prop_assert_eq!(decoded, None);
                prop_assert_eq!(buf.len(), i + 1);
            } else {
                prop_assert_eq!(decoded, Some(packet.clone()));
                prop_assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn back_to_back_packets_decode_in_order(
        (version, packets) in version().prop_flat_map(|v| (Just(v), vec(any_packet(v), 1..6))),
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, version, &mut buf).unwrap();
        }
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, version, NO_LIMIT).unwrap(), Some(packet));
        }
        prop_assert!(buf.is_empty());
    }
}
