//! Decode and encode errors. Every decode error maps to the MQTT 5 reason code
//! the server sends in its DISCONNECT (or CONNACK) before closing the connection.

use crate::ReasonCode;

/// Why a byte stream is not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length is longer than 4 bytes or not minimally encoded")]
    MalformedRemainingLength,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("reserved packet type {0}")]
    InvalidPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("packet ends before its content: {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left over after the packet's content")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains the disallowed character U+0000")]
    DisallowedCharacter,
    #[error("protocol name {0:?} is not MQTT or MQIsdp")]
    InvalidProtocolName(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("invalid CONNECT flags: {0}")]
    InvalidConnectFlags(&'static str),
    #[error("invalid QoS {0}")]
    InvalidQos(u8),
    #[error("packet identifier 0 is not allowed in {0}")]
    ZeroPacketId(&'static str),
    #[error("invalid reason code {code:#04x} in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { packet: &'static str, id: u8 },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    #[error("invalid subscription options byte {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    #[error("subscription asks for QoS 3 (options byte {0:#04x})")]
    InvalidSubscriptionQos(u8),
    #[error("retain handling 3 is not defined (options byte {0:#04x})")]
    InvalidRetainHandling(u8),
    #[error("{0} carries no topic filter")]
    NoTopicFilters(&'static str),
    #[error("invalid variable byte integer")]
    InvalidVariableByteInteger,
    #[error("invalid CONNACK acknowledge flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    #[error("PUBLISH has an empty topic name and no topic alias")]
    EmptyTopicName,
}

impl DecodeError {
    /// The reason code to send before closing the connection (MQTT 5 spec 4.13).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            // The v5 spec calls these well-formed packets with forbidden values
            // (e.g. 3.1.2.11.3, 3.8.3.1); an identifier not valid for the packet
            // type is malformed instead (2.2.2.2).
            DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::InvalidSubscriptionQos(_)
            | DecodeError::InvalidRetainHandling(_)
            | DecodeError::ZeroPacketId(_)
            | DecodeError::NoTopicFilters(_)
            | DecodeError::EmptyTopicName => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet value cannot be written for the given protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of {0} bytes exceeds the 268,435,455 byte MQTT limit")]
    PacketTooLarge(usize),
    #[error("string or binary data of {0} bytes exceeds 65,535 bytes")]
    StringTooLong(usize),
    #[error("{0} requires a packet identifier for QoS 1 and 2")]
    MissingPacketId(&'static str),
    #[error("{0} does not exist in MQTT 3.1/3.1.1")]
    NotInProtocol(&'static str),
    #[error("variable byte integer {0} exceeds 268,435,455")]
    VariableByteIntegerTooLarge(u32),
    #[error("string contains the disallowed character U+0000")]
    DisallowedCharacter,
    #[error("packet identifier 0 is not allowed in {0}")]
    ZeroPacketId(&'static str),
    #[error("reason code {code:#04x} is not allowed in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    #[error("{0} must carry at least one topic filter")]
    NoTopicFilters(&'static str),
    #[error("PUBLISH needs a topic name or a topic alias")]
    EmptyTopicName,
    #[error("MQTT 3.1/3.1.1 CONNECT cannot carry a password without a user name")]
    PasswordWithoutUsername,
}
