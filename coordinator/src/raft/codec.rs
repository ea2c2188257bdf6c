//! The explicit, versioned binary encoding of everything Ratify persists or sends
//! between nodes: one version byte, then bincode.
//!
//! A reader that meets an unknown version refuses the bytes instead of guessing.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current encoding version. 2: log entries carry a batch of commands; transactions
/// are numbered by the table. 3: one-phase hand-over, heuristic outcomes, outcome
/// retention by completion order. 4: commit markers, acknowledgements, pinned
/// abandoned aborts (3 was only ever on a development branch: its variants were
/// numbered differently). 5: no Begin or Enlist entries; number reservations, `Open`
/// records and the forgotten mark (docs/design.md, rule 16). 6: operator audit trails
/// on decisions, settled heuristic outcomes (rule 17). 7: the participant registry
/// (`Register`, `Unregister`, and the table's last field). Any change to a persisted
/// type's layout bumps it.
const VERSION: u8 = 7;

/// The version before: every layout of version 7 but the table's, which ends with
/// the participant registry and the owner-token key that version 6 lacks. So a
/// version-6 value decodes as version 7, and a version-6 table (a snapshot, whose
/// table is its last field) decodes as version 7 with an empty registry and no key
/// appended (docs/design.md, "Upgrades").
const PREVIOUS: u8 = 6;

/// What version 7 adds at the end of a table, when empty, in bincode's fixed-width
/// layout: the registry's length (a u64 of 0), then `None` (a 0 byte).
const V6_TABLE_TAIL: [u8; 9] = [0; 9];

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
    // Same layout as `bincode::serialize` (fixed-width integers), but bytes left
    // over are an error: a value of another layout must not decode as a prefix.
    let strict = |b: &[u8]| -> Result<T, CodecError> {
        Ok(bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
            .deserialize(b)?)
    };
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VERSION, rest)) => strict(rest),
        // A version-6 value is a version-7 one, unless it ends with a table: then
        // it is short of the registry, which was empty (see PREVIOUS). A value that
        // decodes as is never gets the map appended.
        Some((&PREVIOUS, rest)) => strict(rest).or_else(|first| {
            let mut with_registry = rest.to_vec();
            with_registry.extend_from_slice(&V6_TABLE_TAIL);
            strict(&with_registry).map_err(|_| first)
        }),
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

    /// A version-6 snapshot (the table without the registry) is read by version 7
    /// with an empty registry, and version-6 commands as they were.
    #[test]
    fn version_6_data_is_read() {
        use crate::raft::SmData;
        use crate::txn::{Command, Proposal};
        let mut data = SmData::default();
        data.table.cluster_id = 42;
        data.table.next_txn = 9;
        let v7 = encode(&data).expect("encode");
        // The registry and the key are the last 9 bytes (an empty map, None);
        // version 6 had neither.
        assert_eq!(&v7[v7.len() - 9..], &V6_TABLE_TAIL);
        let mut v6 = v7[..v7.len() - 9].to_vec();
        v6[0] = PREVIOUS;
        let read: SmData = decode(&v6).expect("a version-6 snapshot");
        assert_eq!(read.table, data.table);
        assert_eq!(read.last_applied, data.last_applied);
        let p = Proposal {
            commands: vec![Command::Reserve { upto: 7 }],
        };
        let mut old = encode(&p).expect("encode");
        old[0] = PREVIOUS;
        assert_eq!(decode::<Proposal>(&old).expect("version-6 commands"), p);
        // Another version is still refused.
        v6[0] = 5;
        assert!(matches!(decode::<SmData>(&v6), Err(CodecError::Version(5))));
    }

    /// A value whose bytes are longer than its layout (another version's command
    /// read as this version's) is refused, not decoded as a prefix.
    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&7u64).expect("encode");
        bytes.push(0);
        assert!(decode::<u64>(&bytes).is_err());
    }

    /// The layout of the log's commands, pinned: changing a persisted type without
    /// bumping VERSION fails here.
    #[test]
    fn command_layout_is_pinned() {
        use crate::txn::{
            AuditEntry, AuditTrail, Command, Decision, OperatorAction, Proposal, Reason,
        };
        let p = Proposal {
            commands: vec![
                Command::Reserve { upto: 7 },
                Command::CommitStarted {
                    txn: 5,
                    branches: 2,
                    round: 3,
                },
                Command::Complete {
                    txns: vec![5],
                    now_ms: 9,
                    abandoned: vec![],
                },
                Command::Decide {
                    txn: 5,
                    decision: Decision {
                        commit: true,
                        reason: Reason::Operator,
                        detail: String::new(),
                        decided_ms: 9,
                        audit: AuditTrail::default(),
                    },
                    prepared_branches: Some(2),
                    skip_phase2: vec![],
                    complete: false,
                    round: 0,
                },
                Command::SettleHeuristic {
                    txn: 5,
                    bquals: vec![2],
                    audit: AuditEntry {
                        operator: "o".into(),
                        action: OperatorAction::Commit,
                        reason: "r".into(),
                        at_ms: 9,
                    },
                },
                Command::Register {
                    name: "p".into(),
                    endpoint: "h:1".into(),
                    by: "o".into(),
                    at_ms: 9,
                },
                Command::Unregister { name: "p".into() },
                Command::SetSecret { secret: [7; 32] },
            ],
        };
        let bytes = encode(&p).expect("encode");
        let expected: Vec<u8> = [
            &[VERSION][..],
            &8u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &7u64.to_le_bytes(),
            &9u32.to_le_bytes(),
            &5u64.to_le_bytes(),
            &2u32.to_le_bytes(),
            &3u64.to_le_bytes(),
            &5u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            &5u64.to_le_bytes(),
            &9u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            // Decide
            &4u32.to_le_bytes(),
            &5u64.to_le_bytes(),
            &[1u8],
            &6u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &9u64.to_le_bytes(),
            &[0u8],
            &[1u8],
            &2u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &[0u8],
            &0u64.to_le_bytes(),
            // SettleHeuristic
            &11u32.to_le_bytes(),
            &5u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &2u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            b"o",
            &1u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            b"r",
            &9u64.to_le_bytes(),
            // Register
            &12u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            b"p",
            &3u64.to_le_bytes(),
            b"h:1",
            &1u64.to_le_bytes(),
            b"o",
            &9u64.to_le_bytes(),
            // Unregister
            &13u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            b"p",
            // SetSecret
            &14u32.to_le_bytes(),
            &[7u8; 32],
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(decode::<Proposal>(&bytes).expect("decode"), p);
    }
}
