//! MQTT 5 properties (spec 2.2.2): a variable byte integer length, then
//! identifier and value pairs. Each packet's property struct reads only the
//! identifiers its packet allows; everything else is refused by identifier.

use bytes::Bytes;

use crate::primitives::{Counter, Reader, Sink};
use crate::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DecodeError,
    DisconnectProperties, EncodeError, PublishProperties, QoS, SubscribeProperties, UserProperty,
    WillProperties,
};

/// Property identifiers (spec table 2-4).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

    pub fn is_known(id: u8) -> bool {
        matches!(
            id,
            0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x1A | 0x1C | 0x1F | 0x21..=0x2A
        )
    }
}

use id::*;

const VALUE: &str = "property value";

/// The largest subscription identifier (a variable byte integer).
const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

// ---------------------------------------------------------------------------
// Reading

/// Reads a property block and hands each property to `on_property`, which reads
/// the value or refuses the identifier for its packet.
fn read_properties(
    r: &mut Reader,
    mut on_property: impl FnMut(u8, &mut Reader) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint("property length")?;
    let len = usize::try_from(len).map_err(|_| DecodeError::Truncated("properties"))?;
    let mut props = Reader::new(r.take(len, "properties")?);
    while !props.is_empty() {
        // The identifier is a variable byte integer in the spec, but every defined
        // one is below 0x80, so any first byte with the continuation bit is unknown.
        let id = props.u8("property identifier")?;
        if !is_known(id) {
            return Err(DecodeError::UnknownProperty(id));
        }
        on_property(id, &mut props)?;
    }
    Ok(())
}

fn not_allowed(packet: &'static str, id: u8) -> DecodeError {
    DecodeError::PropertyNotAllowed { packet, id }
}

/// Appends a property that may repeat.
fn push<T>(list: &mut Vec<T>, value: T) -> Result<(), DecodeError> {
    list.push(value);
    Ok(())
}

/// Stores a property that may appear at most once.
fn set<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn read_bool(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8(VALUE)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn read_nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16(VALUE)? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}

fn read_nonzero_u32(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.u32(VALUE)? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}

fn read_payload_format(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    match r.u8(VALUE)? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn read_subscription_identifier(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.varint(VALUE)? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}

impl ConnectProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnectProperties::default();
        read_properties(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, id, r.u32(VALUE)?),
            RECEIVE_MAXIMUM => set(&mut p.receive_maximum, id, read_nonzero_u16(r, id)?),
            MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, id, read_nonzero_u32(r, id)?),
            TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, id, r.u16(VALUE)?),
            REQUEST_RESPONSE_INFORMATION => {
                set(&mut p.request_response_information, id, read_bool(r, id)?)
            }
            REQUEST_PROBLEM_INFORMATION => {
                set(&mut p.request_problem_information, id, read_bool(r, id)?)
            }
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            AUTHENTICATION_METHOD => set(&mut p.authentication_method, id, r.string(VALUE)?),
            AUTHENTICATION_DATA => set(&mut p.authentication_data, id, r.binary(VALUE)?),
            _ => Err(not_allowed("CONNECT", id)),
        })?;
        Ok(p)
    }
}

impl WillProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = WillProperties::default();
        read_properties(r, |id, r| match id {
            WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, id, r.u32(VALUE)?),
            PAYLOAD_FORMAT_INDICATOR => set(
                &mut p.payload_format_indicator,
                id,
                read_payload_format(r, id)?,
            ),
            MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, id, r.u32(VALUE)?),
            CONTENT_TYPE => set(&mut p.content_type, id, r.string(VALUE)?),
            RESPONSE_TOPIC => set(&mut p.response_topic, id, r.arc_str(VALUE)?),
            CORRELATION_DATA => set(&mut p.correlation_data, id, r.binary(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            _ => Err(not_allowed("CONNECT will", id)),
        })?;
        Ok(p)
    }
}

impl ConnAckProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnAckProperties::default();
        read_properties(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, id, r.u32(VALUE)?),
            RECEIVE_MAXIMUM => set(&mut p.receive_maximum, id, read_nonzero_u16(r, id)?),
            MAXIMUM_QOS => {
                // Only 0 and 1 may be sent: a server that grants QoS 2 leaves it out.
                let qos = match r.u8(VALUE)? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue(id)),
                };
                set(&mut p.maximum_qos, id, qos)
            }
            RETAIN_AVAILABLE => set(&mut p.retain_available, id, read_bool(r, id)?),
            MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, id, read_nonzero_u32(r, id)?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                set(&mut p.assigned_client_identifier, id, r.string(VALUE)?)
            }
            TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, id, r.u16(VALUE)?),
            REASON_STRING => set(&mut p.reason_string, id, r.string(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => set(
                &mut p.wildcard_subscription_available,
                id,
                read_bool(r, id)?,
            ),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => set(
                &mut p.subscription_identifiers_available,
                id,
                read_bool(r, id)?,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => {
                set(&mut p.shared_subscription_available, id, read_bool(r, id)?)
            }
            SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, id, r.u16(VALUE)?),
            RESPONSE_INFORMATION => set(&mut p.response_information, id, r.string(VALUE)?),
            SERVER_REFERENCE => set(&mut p.server_reference, id, r.string(VALUE)?),
            AUTHENTICATION_METHOD => set(&mut p.authentication_method, id, r.string(VALUE)?),
            AUTHENTICATION_DATA => set(&mut p.authentication_data, id, r.binary(VALUE)?),
            _ => Err(not_allowed("CONNACK", id)),
        })?;
        Ok(p)
    }
}

impl PublishProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = PublishProperties::default();
        read_properties(r, |id, r| match id {
            PAYLOAD_FORMAT_INDICATOR => set(
                &mut p.payload_format_indicator,
                id,
                read_payload_format(r, id)?,
            ),
            MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, id, r.u32(VALUE)?),
            TOPIC_ALIAS => set(&mut p.topic_alias, id, read_nonzero_u16(r, id)?),
            RESPONSE_TOPIC => set(&mut p.response_topic, id, r.arc_str(VALUE)?),
            CORRELATION_DATA => set(&mut p.correlation_data, id, r.binary(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            // A message matching several of the receiver's subscriptions carries one each.
            SUBSCRIPTION_IDENTIFIER => {
                let value = read_subscription_identifier(r, id)?;
                push(&mut p.subscription_identifiers, value)
            }
            CONTENT_TYPE => set(&mut p.content_type, id, r.string(VALUE)?),
            _ => Err(not_allowed("PUBLISH", id)),
        })?;
        Ok(p)
    }
}

impl AckProperties {
    /// `packet` is the acknowledgement's name, for errors.
    pub(crate) fn read(r: &mut Reader, packet: &'static str) -> Result<Self, DecodeError> {
        let mut p = AckProperties::default();
        read_properties(r, |id, r| match id {
            REASON_STRING => set(&mut p.reason_string, id, r.string(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            _ => Err(not_allowed(packet, id)),
        })?;
        Ok(p)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl SubscribeProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = SubscribeProperties::default();
        read_properties(r, |id, r| match id {
            SUBSCRIPTION_IDENTIFIER => {
                let value = read_subscription_identifier(r, id)?;
                set(&mut p.subscription_identifier, id, value)
            }
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            _ => Err(not_allowed("SUBSCRIBE", id)),
        })?;
        Ok(p)
    }
}

/// UNSUBSCRIBE allows user properties only.
pub(crate) fn read_unsubscribe_properties(
    r: &mut Reader,
) -> Result<Vec<UserProperty>, DecodeError> {
    let mut user_properties = Vec::new();
    read_properties(r, |id, r| match id {
        USER_PROPERTY => push(&mut user_properties, r.string_pair(VALUE)?),
        _ => Err(not_allowed("UNSUBSCRIBE", id)),
    })?;
    Ok(user_properties)
}

impl DisconnectProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = DisconnectProperties::default();
        read_properties(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, id, r.u32(VALUE)?),
            REASON_STRING => set(&mut p.reason_string, id, r.string(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            SERVER_REFERENCE => set(&mut p.server_reference, id, r.string(VALUE)?),
            _ => Err(not_allowed("DISCONNECT", id)),
        })?;
        Ok(p)
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == DisconnectProperties::default()
    }
}

impl AuthProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = AuthProperties::default();
        read_properties(r, |id, r| match id {
            AUTHENTICATION_METHOD => set(&mut p.authentication_method, id, r.string(VALUE)?),
            AUTHENTICATION_DATA => set(&mut p.authentication_data, id, r.binary(VALUE)?),
            REASON_STRING => set(&mut p.reason_string, id, r.string(VALUE)?),
            USER_PROPERTY => push(&mut p.user_properties, r.string_pair(VALUE)?),
            _ => Err(not_allowed("AUTH", id)),
        })?;
        Ok(p)
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == AuthProperties::default()
    }
}

// ---------------------------------------------------------------------------
// Writing

/// A property block's content, written by the same code for counting and output.
pub(crate) trait WriteProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;
}

/// Writes the property length, then the properties.
pub(crate) fn write_properties<S: Sink, P: WriteProperties + ?Sized>(
    s: &mut S,
    properties: &P,
) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    properties.write_each(&mut counter)?;
    s.write_varint(counter.0)?;
    properties.write_each(s)
}

fn put_u8<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u8(value);
    }
}

fn put_bool<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    put_u8(s, id, value.map(u8::from));
}

fn put_u16<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u16(value);
    }
}

fn put_u32<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_u32(value);
    }
}

fn put_str<S: Sink>(s: &mut S, id: u8, value: Option<&str>) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_str(value)?;
    }
    Ok(())
}

fn put_binary<S: Sink>(s: &mut S, id: u8, value: Option<&Bytes>) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.write_u8(id);
        s.write_binary(value)?;
    }
    Ok(())
}

fn put_user_properties<S: Sink>(s: &mut S, pairs: &[UserProperty]) -> Result<(), EncodeError> {
    for (name, value) in pairs {
        s.write_u8(USER_PROPERTY);
        s.write_str(name)?;
        s.write_str(value)?;
    }
    Ok(())
}

fn put_subscription_identifier<S: Sink>(s: &mut S, value: u32) -> Result<(), EncodeError> {
    if value == 0 || value > MAX_SUBSCRIPTION_IDENTIFIER {
        return Err(EncodeError::InvalidPropertyValue(SUBSCRIPTION_IDENTIFIER));
    }
    s.write_u8(SUBSCRIPTION_IDENTIFIER);
    // Lossless: checked against the 28-bit maximum above.
    s.write_varint(value as usize)
}

/// Refuses values the decoder would refuse, so the codec never emits what it rejects.
fn check<T>(id: u8, value: Option<T>, valid: impl Fn(&T) -> bool) -> Result<(), EncodeError> {
    match value {
        Some(v) if !valid(&v) => Err(EncodeError::InvalidPropertyValue(id)),
        _ => Ok(()),
    }
}

impl WriteProperties for ConnectProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        check(RECEIVE_MAXIMUM, self.receive_maximum, |v| *v != 0)?;
        check(MAXIMUM_PACKET_SIZE, self.maximum_packet_size, |v| *v != 0)?;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_bool(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_user_properties(s, &self.user_properties)?;
        put_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

impl WriteProperties for WillProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        check(
            PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
            |v| *v <= 1,
        )?;
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(s, CONTENT_TYPE, self.content_type.as_deref())?;
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_deref())?;
        put_binary(s, CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for ConnAckProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        check(RECEIVE_MAXIMUM, self.receive_maximum, |v| *v != 0)?;
        check(MAXIMUM_PACKET_SIZE, self.maximum_packet_size, |v| *v != 0)?;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        // The spec allows only 0 and 1 on the wire; "at most QoS 2" is said by
        // leaving the property out, which is what Some(ExactlyOnce) means.
        let maximum_qos = self.maximum_qos.filter(|qos| *qos != QoS::ExactlyOnce);
        put_u8(s, MAXIMUM_QOS, maximum_qos.map(QoS::as_u8));
        put_bool(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_str(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        )?;
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(s, REASON_STRING, self.reason_string.as_deref())?;
        put_user_properties(s, &self.user_properties)?;
        put_bool(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_bool(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(
            s,
            RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        )?;
        put_str(s, SERVER_REFERENCE, self.server_reference.as_deref())?;
        put_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

impl WriteProperties for PublishProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        check(
            PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
            |v| *v <= 1,
        )?;
        check(TOPIC_ALIAS, self.topic_alias, |v| *v != 0)?;
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, TOPIC_ALIAS, self.topic_alias);
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_deref())?;
        put_binary(s, CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_user_properties(s, &self.user_properties)?;
        for id in &self.subscription_identifiers {
            put_subscription_identifier(s, *id)?;
        }
        put_str(s, CONTENT_TYPE, self.content_type.as_deref())
    }
}

impl WriteProperties for AckProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_str(s, REASON_STRING, self.reason_string.as_deref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for SubscribeProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(id) = self.subscription_identifier {
            put_subscription_identifier(s, id)?;
        }
        put_user_properties(s, &self.user_properties)
    }
}

/// UNSUBSCRIBE's properties are its user properties.
impl WriteProperties for [UserProperty] {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_user_properties(s, self)
    }
}

impl WriteProperties for DisconnectProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(s, REASON_STRING, self.reason_string.as_deref())?;
        put_user_properties(s, &self.user_properties)?;
        put_str(s, SERVER_REFERENCE, self.server_reference.as_deref())
    }
}

impl WriteProperties for AuthProperties {
    fn write_each<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())?;
        put_str(s, REASON_STRING, self.reason_string.as_deref())?;
        put_user_properties(s, &self.user_properties)
    }
}
