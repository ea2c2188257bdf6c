//! Rules of the wire both sides enforce, each written once: the name alphabet,
//! endpoint syntax and size limits (docs/design.md, "Identifiers"). The coordinator
//! checks what clients send with them; the SDK checks what an application passes before
//! anything is sent, so both refuse the same inputs with the same words.

use std::fmt;

/// Longest resource (and account, topic-id) name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest endpoint (participant or coordinator address), in bytes.
pub const MAX_ENDPOINT_LEN: usize = 256;

/// What [`is_valid_name`] accepts, for error messages.
pub const NAME_RULE: &str = "1 to 64 characters of [A-Za-z0-9_.-]";

/// How much of a rejected input an error message quotes; hostile input can be huge.
const PREVIEW_CHARS: usize = 48;

/// Quotes a prefix of rejected input, escaped, so logs and error messages stay
/// printable and short whatever a caller sent.
pub fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(PREVIEW_CHARS).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    format!("{p:?}")
}

/// True for a valid resource name: [`NAME_RULE`]. Account names of the demo store and
/// Kafka transactional ids use the same alphabet.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A checked endpoint: `host:port`, reached in plaintext or over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Whether it was given as `https://`.
    pub tls: bool,
    /// `host:port` (an IPv6 host in brackets).
    pub host_port: String,
}

impl Endpoint {
    /// Checks `raw`: `host:port`, `http://host:port` or `https://host:port` (one
    /// trailing `/` allowed), at most [`MAX_ENDPOINT_LEN`] bytes; the host a name or
    /// IPv4 address of `[A-Za-z0-9-._]`, or an IPv6 address in brackets; the port 1
    /// to 65535.
    ///
    /// # Errors
    /// [`EndpointError`] saying which part is wrong.
    pub fn parse(raw: &str) -> Result<Self, EndpointError> {
        let bad = |reason: &'static str| EndpointError {
            endpoint: preview(raw),
            reason,
        };
        if raw.is_empty() {
            return Err(bad("empty"));
        }
        if raw.len() > MAX_ENDPOINT_LEN {
            return Err(bad("longer than 256 bytes"));
        }
        let (tls, hp) = match (raw.strip_prefix("https://"), raw.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (false, raw),
        };
        let hp = hp.strip_suffix('/').unwrap_or(hp);
        if hp.contains("://") {
            return Err(bad("only http:// and https:// endpoints are supported"));
        }
        if !hp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        {
            return Err(bad("expected host:port"));
        }
        let Some((host, port)) = hp.rsplit_once(':') else {
            return Err(bad("missing :port"));
        };
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(bad("expected host:port with a port from 1 to 65535"));
        }
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            // An IPv6 address in brackets.
            Some(v6) => {
                v6.contains(':')
                    && v6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            }
            // A name or an IPv4 address: no colon, no bracket.
            None => {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            }
        };
        if !host_ok {
            return Err(bad(
                "expected host:port (a name, an IPv4 address or an IPv6 address in brackets)",
            ));
        }
        Ok(Self {
            tls,
            host_port: hp.to_owned(),
        })
    }

    /// The URI to dial: `http://host:port` or `https://host:port`.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host_port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {endpoint}: {reason}")]
pub struct EndpointError {
    /// A short, escaped preview of what was given.
    pub endpoint: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_alphabet() {
        assert!(is_valid_name("bank-a.accounts_1"));
        assert!(is_valid_name(&"a".repeat(MAX_NAME_LEN)));
        for bad in ["", "a b", "ä", "a/b", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(!is_valid_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn endpoints_are_host_and_port() {
        let e = Endpoint::parse("http://127.0.0.1:7101/").expect("valid");
        assert_eq!((e.tls, e.host_port.as_str()), (false, "127.0.0.1:7101"));
        assert_eq!(e.uri(), "http://127.0.0.1:7101");
        let e = Endpoint::parse("https://[::1]:9").expect("valid");
        assert_eq!(e.uri(), "https://[::1]:9");
        assert_eq!(
            Endpoint::parse("node-1:80").map(|e| e.uri()),
            Ok("http://node-1:80".into())
        );
        for bad in [
            "",
            "host",
            "host:0",
            "host:70000",
            ":80",
            "ftp://host:80",
            "http://a b:80",
            "http://host:80/path",
            "a:b:80",
            "[::1:80",
            "a]:80",
            "[]:80",
            "[x::1]:80",
            "user@host:80",
            &format!("{}:80", "a".repeat(300)),
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn previews_are_short_and_escaped() {
        let p = preview(&"\n".repeat(1000));
        assert!(p.len() < 200 && p.contains("\\n") && p.ends_with("…\""));
    }
}
