//! The spec's data representations (section 1.5): integers, variable byte
//! integers, UTF-8 strings and binary data, read from a packet's `Bytes` and
//! written to a [`Sink`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{DecodeError, EncodeError, MAX_REMAINING_LENGTH};

/// A cursor over one packet's bytes. Every read checks the length first, so
/// input can never make it panic; `what` names the field for the error.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Errors with [`DecodeError::TrailingBytes`] unless everything was read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer, at most four bytes and minimally encoded.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8(what)?;
            // A zero final byte after a continuation adds nothing: an overlong encoding.
            if i > 0 && byte == 0 {
                return Err(DecodeError::InvalidVariableByteInteger);
            }
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::InvalidVariableByteInteger)
    }

    /// The next `n` bytes, sharing memory with the packet.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything left, sharing memory with the packet.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let raw = self.binary(what)?;
        Ok(utf8(&raw)?.to_owned())
    }

    pub(crate) fn arc_str(&mut self, what: &'static str) -> Result<Arc<str>, DecodeError> {
        let raw = self.binary(what)?;
        Ok(Arc::from(utf8(&raw)?))
    }

    pub(crate) fn string_pair(
        &mut self,
        what: &'static str,
    ) -> Result<(String, String), DecodeError> {
        Ok((self.string(what)?, self.string(what)?))
    }
}

/// Validates an MQTT UTF-8 string (spec 1.5.4). Rust's UTF-8 check already
/// refuses the surrogates U+D800..U+DFFF; U+0000 is the one code point left that
/// the spec forbids outright. The "SHOULD NOT" code points are accepted.
fn utf8(raw: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::DisallowedCharacter);
    }
    Ok(s)
}

/// Where encoders write. Encoding runs twice over one code path: first into a
/// [`Counter`] to learn the remaining length, then into the output buffer.
pub(crate) trait Sink {
    fn write_u8(&mut self, value: u8);
    fn write_slice(&mut self, bytes: &[u8]);

    fn write_u16(&mut self, value: u16) {
        self.write_slice(&value.to_be_bytes());
    }

    fn write_u32(&mut self, value: u32) {
        self.write_slice(&value.to_be_bytes());
    }

    fn write_varint(&mut self, value: usize) -> Result<(), EncodeError> {
        if value > MAX_REMAINING_LENGTH {
            let shown = u32::try_from(value).unwrap_or(u32::MAX);
            return Err(EncodeError::VariableByteIntegerTooLarge(shown));
        }
        let mut rest = value;
        loop {
            // Truncation is the point: the low seven bits, then a continuation flag.
            let mut byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest > 0 {
                byte |= 0x80;
            }
            self.write_u8(byte);
            if rest == 0 {
                return Ok(());
            }
        }
    }

    fn write_binary(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len =
            u16::try_from(bytes.len()).map_err(|_| EncodeError::StringTooLong(bytes.len()))?;
        self.write_u16(len);
        self.write_slice(bytes);
        Ok(())
    }

    fn write_str(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.contains('\0') {
            return Err(EncodeError::DisallowedCharacter);
        }
        self.write_binary(s.as_bytes())
    }
}

impl Sink for BytesMut {
    fn write_u8(&mut self, value: u8) {
        self.put_u8(value);
    }

    fn write_slice(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// A sink that only counts, for the length pass.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn write_u8(&mut self, _: u8) {
        self.0 += 1;
    }

    fn write_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// How many bytes `value` takes as a variable byte integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
