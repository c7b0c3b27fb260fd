//! One module per packet type, each with free `read` and `write` functions over
//! the packet's body (everything after the fixed header).

pub(crate) mod ack;
pub(crate) mod auth;
pub(crate) mod connack;
pub(crate) mod connect;
pub(crate) mod disconnect;
pub(crate) mod publish;
pub(crate) mod suback;
pub(crate) mod subscribe;
pub(crate) mod unsuback;
pub(crate) mod unsubscribe;

use crate::primitives::{Reader, Sink};
use crate::{DecodeError, EncodeError};

/// A packet identifier, which is never 0 (spec 2.2.1).
pub(crate) fn read_packet_id(r: &mut Reader, packet: &'static str) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId(packet)),
        id => Ok(id),
    }
}

pub(crate) fn write_packet_id<S: Sink>(
    s: &mut S,
    id: u16,
    packet: &'static str,
) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::ZeroPacketId(packet));
    }
    s.write_u16(id);
    Ok(())
}
