//! postcard encoding of openraft values for the protobuf `bytes` fields.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::NetworkError;

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, NetworkError> {
    postcard::to_stdvec(value).map_err(|source| NetworkError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, NetworkError> {
    postcard::from_bytes(bytes).map_err(|source| NetworkError::Decode { what, source })
}
