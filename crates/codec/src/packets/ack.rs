//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4 to 3.7): a packet identifier,
//! then in MQTT 5 an optional reason code and optional properties.

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{AckProperties, DecodeError, EncodeError, ProtocolVersion, PubResponse, ReasonCode};

/// Which of the four the packet is; the names are the spec's packet names.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    fn name(self) -> &'static str {
        match self {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubRel => "PUBREL",
            AckKind::PubComp => "PUBCOMP",
        }
    }

    fn allows(self, code: ReasonCode) -> bool {
        match self {
            AckKind::PubAck | AckKind::PubRec => code.valid_in_puback(),
            AckKind::PubRel | AckKind::PubComp => code.valid_in_pubrel(),
        }
    }
}

pub(crate) fn read(
    r: &mut Reader,
    kind: AckKind,
    version: ProtocolVersion,
) -> Result<PubResponse, DecodeError> {
    let packet_id = read_packet_id(r, kind.name())?;
    // A remaining length of 2 means Success with no properties (spec 3.4.2.1).
    if !version.is_v5() || r.is_empty() {
        return Ok(PubResponse::new(packet_id));
    }
    let code = r.u8("reason code")?;
    let reason_code = ReasonCode::from_u8(code)
        .filter(|c| kind.allows(*c))
        .ok_or(DecodeError::InvalidReasonCode {
            packet: kind.name(),
            code,
        })?;
    // With a remaining length of 3 the property length is left out.
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        AckProperties::read(r, kind.name())?
    };
    Ok(PubResponse {
        packet_id,
        reason_code,
        properties,
    })
}

pub(crate) fn write<S: Sink>(
    ack: &PubResponse,
    kind: AckKind,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(s, ack.packet_id, kind.name())?;
    if !version.is_v5() {
        return Ok(());
    }
    if !kind.allows(ack.reason_code) {
        return Err(EncodeError::InvalidReasonCode {
            packet: kind.name(),
            code: ack.reason_code.as_u8(),
        });
    }
    let no_properties = ack.properties.is_empty();
    if ack.reason_code == ReasonCode::Success && no_properties {
        return Ok(());
    }
    s.write_u8(ack.reason_code.as_u8());
    // The property length may be left out here, but some clients (rumqttc 0.25)
    // cannot parse a reason code without it; a zero length is valid everywhere.
    write_properties(s, &ack.properties)
}
