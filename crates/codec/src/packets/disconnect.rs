//! DISCONNECT (spec 3.14). Empty in 3.x; in MQTT 5 the reason code and the
//! properties may each be left out.

use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{
    DecodeError, Disconnect, DisconnectProperties, EncodeError, ProtocolVersion, ReasonCode,
};

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    // Remaining length 0 means Success with no properties (spec 3.14.2.1).
    if !version.is_v5() || r.is_empty() {
        return Ok(Disconnect::new(ReasonCode::Success));
    }
    let code = r.u8("reason code")?;
    let reason_code = ReasonCode::from_u8(code)
        .filter(|c| c.valid_in_disconnect())
        .ok_or(DecodeError::InvalidReasonCode {
            packet: "DISCONNECT",
            code,
        })?;
    let properties = if r.is_empty() {
        DisconnectProperties::default()
    } else {
        DisconnectProperties::read(r)?
    };
    Ok(Disconnect {
        reason_code,
        properties,
    })
}

pub(crate) fn write<S: Sink>(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    let reason = disconnect.reason_code;
    if !reason.valid_in_disconnect() {
        return Err(EncodeError::InvalidReasonCode {
            packet: "DISCONNECT",
            code: reason.as_u8(),
        });
    }
    let no_properties = disconnect.properties.is_empty();
    if reason == ReasonCode::Success && no_properties {
        return Ok(());
    }
    s.write_u8(reason.as_u8());
    // The property length may be left out here, but some clients (rumqttc 0.25)
    // cannot parse a reason code without it; a zero length is valid everywhere.
    write_properties(s, &disconnect.properties)
}
