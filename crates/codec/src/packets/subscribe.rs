//! SUBSCRIBE (spec 3.8): topic filters, each with a subscription options byte.

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::write_properties;
use crate::{
    DecodeError, EncodeError, ProtocolVersion, QoS, RetainHandling, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};

const QOS_MASK: u8 = 0b0000_0011;
const NO_LOCAL: u8 = 0b0000_0100;
const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;
/// Bits that must be 0: only the QoS exists in 3.x.
const RESERVED_V3: u8 = 0b1111_1100;
const RESERVED_V5: u8 = 0b1100_0000;

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = read_packet_id(r, "SUBSCRIBE")?;
    let properties = if version.is_v5() {
        SubscribeProperties::read(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let options = read_options(r.u8("subscription options")?, version)?;
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("SUBSCRIBE"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() {
        RESERVED_V5
    } else {
        RESERVED_V3
    };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_u8(byte & QOS_MASK).ok_or(DecodeError::InvalidSubscriptionQos(byte))?;
    let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNewSubscription,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling(byte)),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & NO_LOCAL != 0,
        retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn options_byte(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let mut byte = options.qos.as_u8();
    if version.is_v5() {
        if options.no_local {
            byte |= NO_LOCAL;
        }
        if options.retain_as_published {
            byte |= RETAIN_AS_PUBLISHED;
        }
        byte |= (options.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
    }
    byte
}

pub(crate) fn write<S: Sink>(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if subscribe.filters.is_empty() {
        return Err(EncodeError::NoTopicFilters("SUBSCRIBE"));
    }
    write_packet_id(s, subscribe.packet_id, "SUBSCRIBE")?;
    if version.is_v5() {
        write_properties(s, &subscribe.properties)?;
    }
    for filter in &subscribe.filters {
        s.write_str(&filter.filter)?;
        s.write_u8(options_byte(&filter.options, version));
    }
    Ok(())
}
