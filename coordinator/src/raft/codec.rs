//! The explicit, versioned binary encoding of everything Ratify persists or sends
//! between nodes: one version byte, then bincode.
//!
//! A reader that meets an unknown version refuses the bytes instead of guessing.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current encoding version. 2: log entries carry a batch of commands; transactions
/// are numbered by the table. 3: one-phase hand-over, heuristic outcomes, outcome
/// retention by completion order.
const VERSION: u8 = 3;

/// Bytes that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Empty input.
    #[error("empty encoded value")]
    Empty,
    /// Written by a newer (or foreign) encoder.
    #[error("unsupported encoding version {0}")]
    Version(u8),
    /// bincode failed.
    #[error("bincode: {0}")]
    Bincode(#[from] bincode::Error),
}

/// Encodes a value.
///
/// # Errors
/// Only when serde refuses the value (never for Ratify's own types).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![VERSION];
    bincode::serialize_into(&mut out, value)?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
///
/// # Errors
/// [`CodecError`] on empty input, an unknown version, or malformed bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VERSION, rest)) => Ok(bincode::deserialize(rest)?),
        Some((&v, _)) => Err(CodecError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(&(1u64, "x".to_string())).expect("encode");
        assert_eq!(
            decode::<(u64, String)>(&bytes).expect("decode"),
            (1, "x".into())
        );
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 0]),
            Err(CodecError::Version(9))
        ));
        assert!(decode::<(u64, String)>(&[VERSION, 1]).is_err());
    }
}
