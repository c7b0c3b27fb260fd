//! UNSUBACK (spec 3.11). In 3.x it is a packet identifier alone.

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{AckProperties, DecodeError, EncodeError, ProtocolVersion, ReasonCode, UnsubAck};

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = read_packet_id(r, "UNSUBACK")?;
    if !version.is_v5() {
        return Ok(UnsubAck {
            packet_id,
            reason_codes: Vec::new(),
            properties: AckProperties::default(),
        });
    }
    let properties = AckProperties::read(r, "UNSUBACK")?;
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        let code = r.u8("reason code")?;
        let reason = ReasonCode::from_u8(code)
            .filter(|c| c.valid_in_unsuback())
            .ok_or(DecodeError::InvalidReasonCode {
                packet: "UNSUBACK",
                code,
            })?;
        reason_codes.push(reason);
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

/// `reason_codes` and `properties` are left out for 3.x.
pub(crate) fn write<S: Sink>(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(s, unsuback.packet_id, "UNSUBACK")?;
    if !version.is_v5() {
        return Ok(());
    }
    write_properties(s, &unsuback.properties)?;
    for &reason in &unsuback.reason_codes {
        if !reason.valid_in_unsuback() {
            return Err(EncodeError::InvalidReasonCode {
                packet: "UNSUBACK",
                code: reason.as_u8(),
            });
        }
        s.write_u8(reason.as_u8());
    }
    Ok(())
}
