//! SUBACK (spec 3.9): one reason code per filter of the SUBSCRIBE.

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{AckProperties, DecodeError, EncodeError, ProtocolVersion, ReasonCode, SubAck};

/// The one failure return code of MQTT 3.1.1.
const V3_FAILURE: u8 = 0x80;

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = read_packet_id(r, "SUBACK")?;
    let v5 = version.is_v5();
    let properties = if v5 {
        AckProperties::read(r, "SUBACK")?
    } else {
        AckProperties::default()
    };
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        let code = r.u8("reason code")?;
        let reason = if v5 {
            ReasonCode::from_u8(code).filter(|c| c.valid_in_suback())
        } else {
            match code {
                0x00 => Some(ReasonCode::Success),
                0x01 => Some(ReasonCode::GrantedQos1),
                0x02 => Some(ReasonCode::GrantedQos2),
                V3_FAILURE => Some(ReasonCode::UnspecifiedError),
                _ => None,
            }
        };
        reason_codes.push(reason.ok_or(DecodeError::InvalidReasonCode {
            packet: "SUBACK",
            code,
        })?);
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

pub(crate) fn write<S: Sink>(
    suback: &SubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(s, suback.packet_id, "SUBACK")?;
    let v5 = version.is_v5();
    if v5 {
        write_properties(s, &suback.properties)?;
    }
    for &reason in &suback.reason_codes {
        let code = if v5 {
            reason.valid_in_suback().then_some(reason.as_u8())
        } else {
            match reason {
                ReasonCode::Success | ReasonCode::GrantedQos1 | ReasonCode::GrantedQos2 => {
                    Some(reason.as_u8())
                }
                // 3.x has a single failure code, whatever the reason.
                _ if reason.is_error() => Some(V3_FAILURE),
                _ => None,
            }
        };
        let code = code.ok_or(EncodeError::InvalidReasonCode {
            packet: "SUBACK",
            code: reason.as_u8(),
        })?;
        s.write_u8(code);
    }
    Ok(())
}
