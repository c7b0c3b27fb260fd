//! CONNACK (spec 3.2).

use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{ConnAck, ConnAckProperties, DecodeError, EncodeError, ProtocolVersion, ReasonCode};

const SESSION_PRESENT: u8 = 0x01;

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connect acknowledge flags")?;
    let session_present = match version {
        // MQTT 3.1 reserves the whole byte and gives it no meaning.
        ProtocolVersion::V3_1 => false,
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => {
            if flags & !SESSION_PRESENT != 0 {
                return Err(DecodeError::InvalidConnAckFlags(flags));
            }
            flags & SESSION_PRESENT != 0
        }
    };
    let code = r.u8("reason code")?;
    let invalid = DecodeError::InvalidReasonCode {
        packet: "CONNACK",
        code,
    };
    if !version.is_v5() {
        let reason_code = ReasonCode::from_v3_connack(code).ok_or(invalid)?;
        return Ok(ConnAck {
            session_present,
            reason_code,
            properties: Default::default(),
        });
    }
    let reason_code = ReasonCode::from_u8(code)
        .filter(|c| c.valid_in_connack())
        .ok_or(invalid)?;
    let properties = ConnAckProperties::read(r)?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

/// In 3.x the reason code becomes the closest return code (`to_v3_connack`).
pub(crate) fn write<S: Sink>(
    connack: &ConnAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    let session_present = connack.session_present && version != ProtocolVersion::V3_1;
    s.write_u8(u8::from(session_present));
    if !version.is_v5() {
        s.write_u8(connack.reason_code.to_v3_connack());
        return Ok(());
    }
    if !connack.reason_code.valid_in_connack() {
        return Err(EncodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: connack.reason_code.as_u8(),
        });
    }
    s.write_u8(connack.reason_code.as_u8());
    write_properties(s, &connack.properties)
}
