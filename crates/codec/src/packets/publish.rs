//! PUBLISH (spec 3.3). Its fixed header flags carry DUP, QoS and RETAIN, and its
//! payload is whatever follows the variable header.

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{DecodeError, EncodeError, ProtocolVersion, Publish, PublishProperties, QoS};

const DUP: u8 = 0b1000;
const QOS_SHIFT: u8 = 1;
const RETAIN: u8 = 0b0001;

/// Validates the fixed header flags, before the rest of the packet has arrived.
pub(crate) fn check_flags(flags: u8) -> Result<QoS, DecodeError> {
    let qos = (flags >> QOS_SHIFT) & 0b11;
    let qos = QoS::from_u8(qos).ok_or(DecodeError::InvalidQos(qos))?;
    if qos == QoS::AtMostOnce && flags & DUP != 0 {
        return Err(DecodeError::InvalidFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    Ok(qos)
}

pub(crate) fn read(
    r: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = check_flags(flags)?;
    let topic = r.arc_str("topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(read_packet_id(r, "PUBLISH")?),
    };
    let properties = if version.is_v5() {
        PublishProperties::read(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    Ok(Publish {
        dup: flags & DUP != 0,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// The fixed header flags. DUP is dropped for QoS 0, where the spec requires 0
/// (a QoS 1 retransmission downgraded for a QoS 0 subscriber keeps no DUP).
pub(crate) fn flags(publish: &Publish) -> u8 {
    let mut flags = publish.qos.as_u8() << QOS_SHIFT;
    if publish.dup && publish.qos != QoS::AtMostOnce {
        flags |= DUP;
    }
    if publish.retain {
        flags |= RETAIN;
    }
    flags
}

/// `packet_id` is ignored for QoS 0.
pub(crate) fn write<S: Sink>(
    publish: &Publish,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    if publish.topic.is_empty() && !(v5 && publish.properties.topic_alias.is_some()) {
        return Err(EncodeError::EmptyTopicName);
    }
    s.write_str(&publish.topic)?;
    if publish.qos != QoS::AtMostOnce {
        let id = publish
            .packet_id
            .ok_or(EncodeError::MissingPacketId("PUBLISH"))?;
        write_packet_id(s, id, "PUBLISH")?;
    }
    if v5 {
        write_properties(s, &publish.properties)?;
    }
    s.write_slice(&publish.payload);
    Ok(())
}
