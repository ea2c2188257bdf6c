//! Postgres global transaction ids (gids), rendered from an [`Xid`] and a resource tag.
//!
//! `PREPARE TRANSACTION` cannot take a bind parameter, so the gid is quoted into SQL
//! text. It is therefore only ever built from validated parts: a [`Tag`] (checked
//! against `[a-z0-9_-]{1,40}` when the resource is configured) and an [`Xid`] (whose
//! rendered form is `[0-9a-f.]` only). The result has no quote, backslash or
//! whitespace and is at most [`MAX_GID_LEN`] bytes, below Postgres's 200-byte limit.
//!
//! Format: `rtfy.<tag>.<xid>`, e.g. `rtfy.bank_a.52544659.<32 hex>.<bqual>`. The
//! `rtfy.<tag>.` prefix is how [`super::PgResource::recover`] tells its own prepared
//! transactions from other applications' and from other Ratify resources on the
//! same server.

use std::fmt;

use crate::wire::preview;
use crate::xid::{Xid, MAX_RENDERED_LEN};

/// First part of every gid Ratify prepares.
pub const GID_PREFIX: &str = "rtfy.";

/// Longest resource tag.
pub const MAX_TAG_LEN: usize = 40;

/// Longest gid: prefix, tag, dot, rendered xid.
pub const MAX_GID_LEN: usize = GID_PREFIX.len() + MAX_TAG_LEN + 1 + MAX_RENDERED_LEN;

/// Postgres's own limit on a gid (`GIDSIZE` is 200 including the terminating NUL).
pub const POSTGRES_GID_LIMIT: usize = 199;

// The whole point of the format: every gid fits.
const _: () = assert!(MAX_GID_LEN <= POSTGRES_GID_LIMIT);

/// A malformed tag or gid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GidError {
    /// The tag is not 1 to 40 characters of `[a-z0-9_-]`.
    #[error("resource tag must be 1 to {MAX_TAG_LEN} characters of [a-z0-9_-], got {0}")]
    Tag(String),
    /// The text is not a Ratify gid.
    #[error("not a Ratify gid (rtfy.<tag>.<xid>): {0}")]
    NotRatify(String),
}

/// Identifies one Postgres resource in gids: `[a-z0-9_-]{1,40}`. Two resources
/// sharing a server must use different tags (Postgres gids are unique server-wide); the same resource must keep its tag
/// across restarts, or recovery will not find its prepared branches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// Validates a tag.
    ///
    /// # Errors
    /// [`GidError::Tag`] when it is empty, too long or has other characters.
    pub fn new(tag: impl Into<String>) -> Result<Self, GidError> {
        let tag = tag.into();
        let ok = (1..=MAX_TAG_LEN).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(tag))
        } else {
            Err(GidError::Tag(preview(&tag)))
        }
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `rtfy.<tag>.`: what every gid of this resource starts with.
    pub fn gid_prefix(&self) -> String {
        format!("{GID_PREFIX}{}.", self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gid built from validated parts; [`Gid::quoted`] is safe to paste into SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gid(String);

impl Gid {
    /// The gid of branch `xid` of the resource tagged `tag`.
    pub fn new(tag: &Tag, xid: &Xid) -> Self {
        Self(format!("{GID_PREFIX}{}.{}", tag.0, xid.render()))
    }

    /// The gid text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The gid as a SQL string literal: `'<gid>'`. Needs no escaping because the
    /// alphabet has no quote or backslash; checked again here so that a future change
    /// of the format cannot silently open an injection.
    pub fn quoted(&self) -> String {
        debug_assert!(is_gid_alphabet(&self.0));
        if is_gid_alphabet(&self.0) {
            format!("'{}'", self.0)
        } else {
            // Unreachable by construction; an invalid literal fails the statement
            // instead of running anything.
            "NULL".to_owned()
        }
    }

    /// Parses a gid read back from `pg_prepared_xacts`, returning its tag and xid.
    ///
    /// # Errors
    /// [`GidError::NotRatify`] when `s` is anything but exactly what [`Gid::new`]
    /// renders (other applications' gids, hostile text).
    pub fn parse(s: &str) -> Result<(Tag, Xid), GidError> {
        let bad = || GidError::NotRatify(preview(s));
        if s.len() > MAX_GID_LEN {
            return Err(bad());
        }
        let rest = s.strip_prefix(GID_PREFIX).ok_or_else(bad)?;
        let (tag, xid) = rest.split_once('.').ok_or_else(bad)?;
        let tag = Tag::new(tag).map_err(|_| bad())?;
        let xid: Xid = xid.parse().map_err(|_| bad())?;
        Ok((tag, xid))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when every byte of `s` may appear in a gid: `[a-z0-9_.-]`.
fn is_gid_alphabet(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GTRID: &str = "0123456789abcdef0000000000000001";

    #[test]
    fn renders_and_parses_back() -> anyhow::Result<()> {
        let tag = Tag::new("bank_a")?;
        let xid = Xid::new(GTRID, "2")?;
        let gid = Gid::new(&tag, &xid);
        assert_eq!(gid.as_str(), format!("rtfy.bank_a.52544659.{GTRID}.2"));
        assert_eq!(gid.quoted(), format!("'rtfy.bank_a.52544659.{GTRID}.2'"));
        assert!(gid.as_str().starts_with(&tag.gid_prefix()));
        assert_eq!(Gid::parse(gid.as_str())?, (tag, xid));
        Ok(())
    }

    #[test]
    fn longest_gid_fits_postgres() -> anyhow::Result<()> {
        let tag = Tag::new("t".repeat(MAX_TAG_LEN))?;
        let xid = Xid::new("f".repeat(32), "99999999")?;
        let gid = Gid::new(&tag, &xid);
        assert_eq!(gid.as_str().len(), MAX_GID_LEN);
        assert!(gid.as_str().len() <= POSTGRES_GID_LIMIT);
        assert_eq!(Gid::parse(gid.as_str())?.1, xid);
        Ok(())
    }

    #[test]
    fn hostile_tags_are_refused() {
        for t in [
            "",
            "Bank",
            "bank a",
            "bank.a",
            "bank'a",
            "a\\b",
            "a;b",
            "é",
            "x'); DROP TABLE t; --",
            &"a".repeat(MAX_TAG_LEN + 1),
        ] {
            assert!(Tag::new(t).is_err(), "accepted tag {t:?}");
        }
    }

    #[test]
    fn only_exact_ratify_gids_parse() {
        let ok = format!("rtfy.bank_a.52544659.{GTRID}.2");
        assert!(Gid::parse(&ok).is_ok());
        for s in [
            String::new(),
            "some_other_app_gid".into(),
            format!("RTFY.bank_a.52544659.{GTRID}.2"),
            format!("rtfy.bank_a.52544659.{GTRID}.2'; ROLLBACK PREPARED 'x"),
            format!("rtfy.bank_a.52544659.{GTRID}"),
            format!("rtfy.Bank.52544659.{GTRID}.2"),
            format!("rtfy..52544659.{GTRID}.2"),
            format!("rtfy.bank_a.52544659.{GTRID}.02"),
            format!("rtfy.bank_a.52544658.{GTRID}.2"),
            format!(" rtfy.bank_a.52544659.{GTRID}.2"),
            format!("rtfy.{}.52544659.{GTRID}.2", "a".repeat(200)),
        ] {
            assert!(Gid::parse(&s).is_err(), "parsed {s:?}");
        }
    }

    #[test]
    fn every_rendered_gid_is_in_the_alphabet() -> anyhow::Result<()> {
        let tag = Tag::new("a-b_0")?;
        for n in [1u64, 42, u64::MAX] {
            let xid = Xid::new(format!("{n:032x}"), "12345678")?;
            let gid = Gid::new(&tag, &xid);
            assert!(is_gid_alphabet(gid.as_str()));
            assert!(!gid.as_str().contains('\''));
        }
        Ok(())
    }
}
