//! The fixed header (spec 2.1) and dispatch to each packet type's reader.

use bytes::{Buf, BytesMut};

use crate::packets::ack::AckKind;
use crate::packets::{
    ack, auth, connack, connect, disconnect, publish, suback, subscribe, unsuback, unsubscribe,
};
use crate::primitives::Reader;
use crate::{DecodeError, Packet, ProtocolVersion};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` and leaves `buf` untouched when it does not yet hold a whole
/// packet. On success the packet's bytes are split off `buf` (payloads share that
/// memory, no copy). `version` is the connection's protocol version; a CONNECT
/// is decoded whatever it is. A packet larger than `max_packet_size` bytes in
/// total is refused as soon as its fixed header is read.
///
/// Errors are reported as early as the bytes allow (a bad first byte before the
/// rest arrives); after an error the connection must be closed, and `buf` may
/// have lost the offending packet's bytes.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((remaining, header_len)) = remaining_length(buf)? else {
        return Ok(None);
    };
    // Cannot overflow: the remaining length is below 2^28.
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut bytes = buf.split_to(size).freeze();
    bytes.advance(header_len);
    let mut r = Reader::new(bytes);
    let packet = read_body(first, version, &mut r)?;
    r.finish()?;
    Ok(Some(packet))
}

/// Checks the packet type and its fixed header flags (spec 2.1.3).
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    let valid = match kind {
        0 => return Err(DecodeError::InvalidPacketType(0)),
        15 if !version.is_v5() => return Err(DecodeError::InvalidPacketType(15)),
        3 => return publish::check_flags(flags).map(drop),
        // MQTT 3.1 sets DUP on these when it retransmits them; 3.1.1 made it reserved.
        6 | 8 | 10 => flags == 0b0010 || (version == ProtocolVersion::V3_1 && flags == 0b1010),
        _ => flags == 0,
    };
    if !valid {
        return Err(DecodeError::InvalidFlags {
            packet: name(kind),
            flags,
        });
    }
    Ok(())
}

fn name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

/// Reads the remaining length that follows the first byte: `None` while
/// incomplete, else the length and the size of the whole fixed header.
/// A fifth byte, or an overlong encoding, is refused as soon as it is seen.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        // A zero final byte after a continuation adds nothing: not minimal.
        if i > 0 && byte == 0 {
            return Err(DecodeError::MalformedRemainingLength);
        }
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, 2 + i)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

fn read_body(first: u8, version: ProtocolVersion, r: &mut Reader) -> Result<Packet, DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    Ok(match kind {
        1 => Packet::Connect(Box::new(connect::read(r)?)),
        2 => Packet::ConnAck(connack::read(r, version)?),
        3 => Packet::Publish(publish::read(r, flags, version)?),
        4 => Packet::PubAck(ack::read(r, AckKind::PubAck, version)?),
        5 => Packet::PubRec(ack::read(r, AckKind::PubRec, version)?),
        6 => Packet::PubRel(ack::read(r, AckKind::PubRel, version)?),
        7 => Packet::PubComp(ack::read(r, AckKind::PubComp, version)?),
        8 => Packet::Subscribe(subscribe::read(r, version)?),
        9 => Packet::SubAck(suback::read(r, version)?),
        10 => Packet::Unsubscribe(unsubscribe::read(r, version)?),
        11 => Packet::UnsubAck(unsuback::read(r, version)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(disconnect::read(r, version)?),
        15 if version.is_v5() => Packet::Auth(auth::read(r)?),
        _ => return Err(DecodeError::InvalidPacketType(kind)),
    })
}
