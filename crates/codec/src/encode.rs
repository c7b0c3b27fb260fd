//! The fixed header and dispatch to each packet type's writer.

use bytes::BytesMut;

use crate::packets::ack::AckKind;
use crate::packets::{
    ack, auth, connack, connect, disconnect, publish, suback, subscribe, unsuback, unsubscribe,
};
use crate::primitives::{varint_len, Counter, Sink};
use crate::{EncodeError, Packet, ProtocolVersion, MAX_REMAINING_LENGTH};

/// Appends `packet` encoded for `version` to `buf`. MQTT 5-only fields are
/// left out for 3.1/3.1.1. Acks with reason Success and no properties use the
/// spec's short forms.
///
/// A CONNECT is written for its own `protocol`, whatever `version` says. Values
/// the decoder would refuse (packet identifier 0, a reason code the packet does
/// not allow, U+0000 in a string, …) are refused here too, and `buf` is then
/// left as it was.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let first = first_byte(packet, version)?;
    // One code path for both passes: count first, so the remaining length can be
    // written before the body without a temporary buffer.
    let mut counter = Counter::default();
    write_body(packet, version, &mut counter)?;
    let remaining = counter.0;
    let size = 1 + varint_len(remaining) + remaining;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(size));
    }

    let start = buf.len();
    buf.reserve(size);
    buf.write_u8(first);
    let written = buf
        .write_varint(remaining)
        .and_then(|()| write_body(packet, version, buf));
    if written.is_err() {
        buf.truncate(start);
    }
    written
}

fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    let (kind, flags) = match packet {
        Packet::Connect(_) => (1, 0),
        Packet::ConnAck(_) => (2, 0),
        Packet::Publish(p) => (3, publish::flags(p)),
        Packet::PubAck(_) => (4, 0),
        Packet::PubRec(_) => (5, 0),
        Packet::PubRel(_) => (6, 0b0010),
        Packet::PubComp(_) => (7, 0),
        Packet::Subscribe(_) => (8, 0b0010),
        Packet::SubAck(_) => (9, 0),
        Packet::Unsubscribe(_) => (10, 0b0010),
        Packet::UnsubAck(_) => (11, 0),
        Packet::PingReq => (12, 0),
        Packet::PingResp => (13, 0),
        Packet::Disconnect(_) => (14, 0),
        Packet::Auth(_) if !version.is_v5() => return Err(EncodeError::NotInProtocol("AUTH")),
        Packet::Auth(_) => (15, 0),
    };
    Ok((kind << 4) | flags)
}

fn write_body<S: Sink>(
    packet: &Packet,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(p) => connect::write(p, s),
        Packet::ConnAck(p) => connack::write(p, version, s),
        Packet::Publish(p) => publish::write(p, version, s),
        Packet::PubAck(p) => ack::write(p, AckKind::PubAck, version, s),
        Packet::PubRec(p) => ack::write(p, AckKind::PubRec, version, s),
        Packet::PubRel(p) => ack::write(p, AckKind::PubRel, version, s),
        Packet::PubComp(p) => ack::write(p, AckKind::PubComp, version, s),
        Packet::Subscribe(p) => subscribe::write(p, version, s),
        Packet::SubAck(p) => suback::write(p, version, s),
        Packet::Unsubscribe(p) => unsubscribe::write(p, version, s),
        Packet::UnsubAck(p) => unsuback::write(p, version, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(p) => disconnect::write(p, version, s),
        Packet::Auth(p) => auth::write(p, s),
    }
}
