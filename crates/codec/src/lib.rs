//! MQTT 3.1, 3.1.1 and 5.0 control packets: [`decode`] from and [`encode`] into
//! byte buffers. No IO and no runtime: the connection task owns the socket and
//! calls these on its read and write buffers.

mod decode;
mod encode;
mod error;
mod packet;
mod packets;
mod primitives;
mod properties;
mod reason;

pub use decode::decode;
pub use encode::encode;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use reason::ReasonCode;

/// The largest remaining length the four-byte variable integer can express.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
