//! AUTH (spec 3.15), MQTT 5 only. Either empty (Success, no properties) or a
//! reason code followed by properties: unlike DISCONNECT, never the code alone.

use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{Auth, AuthProperties, DecodeError, EncodeError, ReasonCode};

pub(crate) fn read(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth {
            reason_code: ReasonCode::Success,
            properties: AuthProperties::default(),
        });
    }
    let code = r.u8("reason code")?;
    let reason_code = ReasonCode::from_u8(code)
        .filter(|c| c.valid_in_auth())
        .ok_or(DecodeError::InvalidReasonCode {
            packet: "AUTH",
            code,
        })?;
    let properties = AuthProperties::read(r)?;
    Ok(Auth {
        reason_code,
        properties,
    })
}

pub(crate) fn write<S: Sink>(auth: &Auth, s: &mut S) -> Result<(), EncodeError> {
    let reason = auth.reason_code;
    if !reason.valid_in_auth() {
        return Err(EncodeError::InvalidReasonCode {
            packet: "AUTH",
            code: reason.as_u8(),
        });
    }
    if reason == ReasonCode::Success && auth.properties.is_empty() {
        return Ok(());
    }
    s.write_u8(reason.as_u8());
    write_properties(s, &auth.properties)
}
