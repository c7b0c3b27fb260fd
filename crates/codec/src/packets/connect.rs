//! CONNECT (spec 3.1). It carries its own protocol level, so it is read before
//! the connection's version is known.

use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{
    Connect, ConnectProperties, DecodeError, EncodeError, LastWill, ProtocolVersion, QoS,
    WillProperties,
};

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

pub(crate) fn read(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQTT" | "MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName(name)),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8("connect flags")?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::InvalidConnectFlags("reserved bit is set"));
    }
    let has_will = flags & WILL != 0;
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    if !has_will && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidConnectFlags(
            "will QoS or retain set without a will",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQos(will_qos))?;
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    // MQTT 5 dropped this rule so that a password can carry a token alone.
    if has_password && !has_username && !v5 {
        return Err(DecodeError::InvalidConnectFlags(
            "password without user name",
        ));
    }

    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        ConnectProperties::read(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if has_will {
        let properties = if v5 {
            WillProperties::read(r)?
        } else {
            WillProperties::default()
        };
        Some(LastWill {
            topic: r.arc_str("will topic")?,
            payload: r.binary("will payload")?,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };

    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Writes `connect` for its own `protocol`, whatever the connection's version.
pub(crate) fn write<S: Sink>(connect: &Connect, s: &mut S) -> Result<(), EncodeError> {
    let v5 = connect.protocol.is_v5();
    if !v5 && connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    let name = match connect.protocol {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    };
    s.write_str(name)?;
    s.write_u8(connect.protocol.level());

    let mut flags = 0;
    if connect.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | (will.qos.as_u8() << WILL_QOS_SHIFT);
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }
    s.write_u8(flags);
    s.write_u16(connect.keep_alive);

    if v5 {
        write_properties(s, &connect.properties)?;
    }
    s.write_str(&connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            write_properties(s, &will.properties)?;
        }
        s.write_str(&will.topic)?;
        s.write_binary(&will.payload)?;
    }
    if let Some(username) = &connect.username {
        s.write_str(username)?;
    }
    if let Some(password) = &connect.password {
        s.write_binary(password)?;
    }
    Ok(())
}
