//! The global transaction id and the XA-shaped branch id, with their strict, printable
//! encodings: the one definition the coordinator and the SDK share (docs/design.md,
//! "Identifiers").
//!
//! A [`Gtrid`] is (cluster id, transaction number), rendered as 32 lowercase hex digits.
//! An [`Xid`] is (format id, gtrid, bqual) with the format id fixed to
//! [`XID_FORMAT_ID`]. Its rendered form `52544659.<gtrid>.<bqual>` is what resources
//! embed where bind parameters are not allowed (Postgres `PREPARE TRANSACTION '<gid>'`),
//! so validation is strict: only `[0-9a-f.]` can ever appear in it, and it is at most
//! [`MAX_RENDERED_LEN`] bytes.

use std::fmt;
use std::str::FromStr;

use ratify_proto::{pb, XID_FORMAT_ID};

/// Length of a gtrid: 32 lowercase hex digits (16 of cluster id, 16 of log index).
pub const GTRID_LEN: usize = 32;

/// Longest bqual: 8 decimal digits.
pub const MAX_BQUAL_LEN: usize = 8;

/// Longest rendered xid: 8 + 1 + 32 + 1 + 8 bytes.
pub const MAX_RENDERED_LEN: usize = 8 + 1 + GTRID_LEN + 1 + MAX_BQUAL_LEN;

use crate::wire::preview;

/// Why a gtrid, bqual or xid was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XidError {
    /// The gtrid is not exactly 32 lowercase hex digits.
    #[error("gtrid must be exactly 32 lowercase hex digits, got {0}")]
    Gtrid(String),
    /// The bqual is not 1 to 8 decimal digits without a leading zero.
    #[error("bqual must be 1 to 8 decimal digits without a leading zero, got {0}")]
    Bqual(String),
    /// The format id is not Ratify's.
    #[error("xid format id must be {XID_FORMAT_ID:#010x} (Ratify), got {0:#010x}")]
    FormatId(u32),
    /// A rendered xid is not `52544659.<gtrid>.<bqual>`.
    #[error("xid must look like 52544659.<32 hex digits>.<bqual>, got {0}")]
    Rendered(String),
}

impl XidError {
    /// Always false: a malformed id stays malformed however often it is retried.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks that `gtrid` is exactly 32 lowercase hex digits.
///
/// # Errors
/// [`XidError::Gtrid`] otherwise.
pub fn validate_gtrid(gtrid: &str) -> Result<(), XidError> {
    gtrid.parse::<Gtrid>().map(|_| ())
}

/// A global transaction id: the cluster id and the transaction's number, which the
/// coordinator's leader hands out (never reused, docs/design.md rule 16).
///
/// Rendered as 32 lowercase hex digits (16 for the cluster, 16 for the number), so it is
/// unique forever across leader changes and across clusters. Its serde form (two
/// integers) is part of the coordinator's log format: do not change it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Gtrid {
    /// Random id chosen once when the cluster was created.
    pub cluster: u64,
    /// The transaction's number (from 1).
    pub index: u64,
}

impl fmt::Display for Gtrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.cluster, self.index)
    }
}

impl FromStr for Gtrid {
    type Err = XidError;

    /// Exactly 32 lowercase hex digits; anything else is [`XidError::Gtrid`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || XidError::Gtrid(preview(s));
        if s.len() != GTRID_LEN || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let cluster = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let index = u64::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        Ok(Self { cluster, index })
    }
}

/// Checks that `bqual` is 1 to 8 decimal digits without a leading zero.
fn validate_bqual(bqual: &str) -> Result<(), XidError> {
    let ok = (1..=MAX_BQUAL_LEN).contains(&bqual.len())
        && bqual.bytes().all(|b| b.is_ascii_digit())
        && !bqual.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(XidError::Bqual(preview(bqual)))
    }
}

/// A transaction branch id: Ratify's format id, a global transaction id and a branch
/// qualifier. Only valid values can be constructed.
///
/// Serialized (serde) as its rendered string, so stored and logged forms agree.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Xid {
    /// 32 lowercase hex digits, validated.
    gtrid: String,
    /// 1 to 8 decimal digits without leading zero, validated.
    bqual: String,
}

impl Xid {
    /// Builds a branch id from its parts.
    ///
    /// # Errors
    /// [`XidError::Gtrid`] or [`XidError::Bqual`] when a part is malformed.
    pub fn new(gtrid: impl Into<String>, bqual: impl Into<String>) -> Result<Self, XidError> {
        let (gtrid, bqual) = (gtrid.into(), bqual.into());
        validate_gtrid(&gtrid)?;
        validate_bqual(&bqual)?;
        Ok(Self { gtrid, bqual })
    }

    /// Converts from the wire form, checking the format id too.
    ///
    /// # Errors
    /// [`XidError::FormatId`], [`XidError::Gtrid`] or [`XidError::Bqual`].
    pub fn from_pb(xid: &pb::Xid) -> Result<Self, XidError> {
        if xid.format_id != XID_FORMAT_ID {
            return Err(XidError::FormatId(xid.format_id));
        }
        Self::new(xid.gtrid.clone(), xid.bqual.clone())
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::Xid {
        pb::Xid {
            format_id: XID_FORMAT_ID,
            gtrid: self.gtrid.clone(),
            bqual: self.bqual.clone(),
        }
    }

    /// The global transaction id (32 lowercase hex digits).
    pub fn gtrid(&self) -> &str {
        &self.gtrid
    }

    /// The branch qualifier (1 to 8 decimal digits).
    pub fn bqual(&self) -> &str {
        &self.bqual
    }

    /// `52544659.<gtrid>.<bqual>`: only `[0-9a-f.]`, at most [`MAX_RENDERED_LEN`]
    /// bytes, safe to quote into SQL that cannot take bind parameters.
    pub fn render(&self) -> String {
        format!("{XID_FORMAT_ID:08x}.{}.{}", self.gtrid, self.bqual)
    }
}

/// The wire form of branch `bqual` of `gtrid`, built straight from the coordinator's
/// numbers (always valid for a bqual of 1 to 99,999,999).
pub fn branch_pb(gtrid: Gtrid, bqual: u32) -> pb::Xid {
    pb::Xid {
        format_id: XID_FORMAT_ID,
        gtrid: gtrid.to_string(),
        bqual: bqual.to_string(),
    }
}

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{XID_FORMAT_ID:08x}.{}.{}", self.gtrid, self.bqual)
    }
}

impl FromStr for Xid {
    type Err = XidError;

    /// Parses exactly the rendered form; anything else (other format id, upper case,
    /// extra dots, whitespace) is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rendered_err = || XidError::Rendered(preview(s));
        if s.len() > MAX_RENDERED_LEN {
            return Err(rendered_err());
        }
        let mut parts = s.split('.');
        let (Some(format), Some(gtrid), Some(bqual), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(rendered_err());
        };
        if format != format!("{XID_FORMAT_ID:08x}") {
            return Err(rendered_err());
        }
        Self::new(gtrid, bqual)
    }
}

impl TryFrom<String> for Xid {
    type Error = XidError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Xid> for String {
    fn from(xid: Xid) -> Self {
        xid.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GTRID: &str = "0123456789abcdef0000000000000001";

    #[test]
    fn valid_xid_renders_and_parses_back() -> anyhow::Result<()> {
        let xid = Xid::new(GTRID, "17")?;
        let rendered = xid.render();
        assert_eq!(rendered, format!("52544659.{GTRID}.17"));
        assert_eq!(rendered, xid.to_string());
        assert!(rendered.len() <= MAX_RENDERED_LEN);
        assert!(rendered.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'));
        assert_eq!(rendered.parse::<Xid>()?, xid);
        assert_eq!(Xid::from_pb(&xid.to_pb())?, xid);
        assert_eq!(xid.gtrid(), GTRID);
        assert_eq!(xid.bqual(), "17");
        Ok(())
    }

    #[test]
    fn gtrid_round_trips_and_rejects_garbage() {
        let g = Gtrid {
            cluster: 0xdead_beef,
            index: 42,
        };
        let s = g.to_string();
        assert_eq!(s.len(), GTRID_LEN);
        assert_eq!(s.parse::<Gtrid>(), Ok(g));
        assert_eq!(validate_gtrid(&s), Ok(()));
        let xid = branch_pb(g, 3);
        assert_eq!(
            Xid::from_pb(&xid).map(|x| x.render()),
            Ok(format!("52544659.{s}.3"))
        );
        for bad in [
            "",
            "xyz",
            &s.to_uppercase(),
            &format!("{s}0"),
            "00000000deadbeef000000000000002'",
            "0000000000000000000000000000000é",
        ] {
            assert!(bad.parse::<Gtrid>().is_err(), "{bad:?} parsed");
            assert!(validate_gtrid(bad).is_err(), "{bad:?} validated");
        }
    }

    #[test]
    fn longest_xid_fits() -> anyhow::Result<()> {
        let xid = Xid::new(GTRID, "99999999")?;
        assert_eq!(xid.render().len(), MAX_RENDERED_LEN);
        Ok(())
    }

    #[test]
    fn serde_uses_the_rendered_string() -> anyhow::Result<()> {
        let xid = Xid::new(GTRID, "1")?;
        let json = serde_json::to_string(&xid)?;
        assert_eq!(json, format!("\"52544659.{GTRID}.1\""));
        assert_eq!(serde_json::from_str::<Xid>(&json)?, xid);
        assert!(serde_json::from_str::<Xid>("\"52544659.nope.1\"").is_err());
        Ok(())
    }

    #[test]
    fn hostile_gtrids_are_refused() {
        let too_long = "a".repeat(10_000);
        let hostile = [
            "",
            "0123456789ABCDEF0000000000000001",  // upper case
            "0123456789abcdef000000000000001",   // 31 digits
            "0123456789abcdef00000000000000012", // 33 digits
            "0123456789abcdeg0000000000000001",  // not hex
            "'; DROP TABLE accounts; --000000",
            "0123456789abcdef000000000000000'",
            "0123456789abcdef00000000000000é",  // 32 bytes, unicode
            "０123456789abcdef000000000000001", // full-width digit
            " 0123456789abcdef000000000000001",
            "0123456789abcdef.000000000000001",
            too_long.as_str(),
        ];
        for g in hostile {
            assert!(
                matches!(Xid::new(g, "1"), Err(XidError::Gtrid(_))),
                "accepted gtrid {g:?}"
            );
            assert!(validate_gtrid(g).is_err(), "validate_gtrid accepted {g:?}");
        }
    }

    #[test]
    fn hostile_bquals_are_refused() {
        for b in [
            "",
            "0",
            "01",
            "123456789",
            "-1",
            "+1",
            "1a",
            "1 ",
            "1'",
            "١",
            "1.2",
            "ff",
        ] {
            assert!(
                matches!(Xid::new(GTRID, b), Err(XidError::Bqual(_))),
                "accepted bqual {b:?}"
            );
        }
    }

    #[test]
    fn wrong_format_id_is_refused() {
        let pb = pb::Xid {
            format_id: 0,
            gtrid: GTRID.into(),
            bqual: "1".into(),
        };
        assert_eq!(Xid::from_pb(&pb), Err(XidError::FormatId(0)));
    }

    #[test]
    fn parse_is_strict() {
        for s in [
            format!("52544659.{GTRID}"),
            format!("52544659.{GTRID}.1.2"),
            format!("52544659.{GTRID}.1 "),
            format!("5254465A.{GTRID}.1"),
            format!("52544658.{GTRID}.1"),
            format!("52544659.{}.1", GTRID.to_uppercase()),
            format!("0x52544659.{GTRID}.1"),
            format!("52544659..{GTRID}.1"),
            format!("52544659.{GTRID}.1'); DROP TABLE t; --"),
            format!("52544659.{GTRID}.{}", "1".repeat(500)),
        ] {
            assert!(s.parse::<Xid>().is_err(), "parsed {s:?}");
        }
    }

    #[test]
    fn error_messages_quote_only_a_short_escaped_preview() {
        let hostile = format!("\u{1b}[31m{}", "x".repeat(1_000));
        let msg = match Xid::new(hostile, "1") {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert!(msg.len() < 200, "message too long: {msg}");
        assert!(!msg.contains('\u{1b}'), "control character leaked: {msg:?}");
    }
}
