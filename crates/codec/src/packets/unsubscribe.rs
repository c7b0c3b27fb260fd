//! UNSUBSCRIBE (spec 3.10).

use crate::packets::{read_packet_id, write_packet_id};
use crate::primitives::{Reader, Sink};
use crate::properties::{read_unsubscribe_properties, write_properties};
use crate::{DecodeError, EncodeError, ProtocolVersion, Unsubscribe};

pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_packet_id(r, "UNSUBSCRIBE")?;
    let user_properties = if version.is_v5() {
        read_unsubscribe_properties(r)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

pub(crate) fn write<S: Sink>(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::NoTopicFilters("UNSUBSCRIBE"));
    }
    write_packet_id(s, unsubscribe.packet_id, "UNSUBSCRIBE")?;
    if version.is_v5() {
        write_properties(s, unsubscribe.user_properties.as_slice())?;
    }
    for filter in &unsubscribe.filters {
        s.write_str(filter)?;
    }
    Ok(())
}
