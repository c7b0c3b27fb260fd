//! Decodes arbitrary bytes as a stream of packets for each protocol version.
//! Decoding must never panic, must consume exactly the bytes of what it
//! returns, and whatever decodes must encode and decode again to the same value.

#![no_main]

use bytes::BytesMut;
use fleetmq_codec::{decode, encode, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const VERSIONS: [ProtocolVersion; 3] =
    [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decode(&mut buf, version, usize::MAX) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a decoded packet consumes its bytes");
                    let mut out = BytesMut::new();
                    encode(&packet, version, &mut out).expect("a decoded packet encodes");
                    let again = decode(&mut out, version, usize::MAX)
                        .expect("a re-encoded packet decodes")
                        .expect("a re-encoded packet is whole");
                    assert_eq!(again, packet);
                    assert!(out.is_empty(), "re-encoding wrote one packet");
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete packet is not consumed");
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
