//! Owner tokens (docs/design.md, "Security"): proof, for a leader that never heard of
//! a transaction, that the client presenting a branch list began it with exactly
//! those branches. An HMAC-SHA256, under the cluster's replicated key
//! (`Command::SetSecret`), of the gtrid, the owner's client name and the branches in
//! bqual order; 16 bytes, in hex.

use ring::hmac;

use crate::txn::BranchSpec;
use crate::types::Gtrid;

/// The token for `owner` beginning `gtrid` with `branches` (bqual order).
pub fn token(secret: &[u8; 32], gtrid: Gtrid, owner: &str, branches: &[BranchSpec]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"ratify-owner-token-v1\0");
    ctx.update(gtrid.to_string().as_bytes());
    ctx.update(b"\0");
    ctx.update(owner.as_bytes());
    ctx.update(b"\0");
    for b in branches {
        ctx.update(b.endpoint.as_bytes());
        ctx.update(b"\0");
        ctx.update(b.resource.as_bytes());
        ctx.update(b"\0");
    }
    let tag = ctx.sign();
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `presented` is the token for `owner`, `gtrid` and `branches`, compared in
/// constant time.
pub fn verify(
    secret: &[u8; 32],
    gtrid: Gtrid,
    owner: &str,
    branches: &[BranchSpec],
    presented: &str,
) -> bool {
    let want = token(secret, gtrid, owner, branches);
    want.len() == presented.len()
        && want
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(e: &str) -> BranchSpec {
        BranchSpec {
            endpoint: e.into(),
            resource: "r".into(),
        }
    }

    #[test]
    fn a_token_binds_the_owner_and_every_branch() {
        let key = [3u8; 32];
        let g = Gtrid {
            cluster: 1,
            index: 9,
        };
        let both = [spec("a:1"), spec("b:1")];
        let t = token(&key, g, "alice", &both);
        assert_eq!(t.len(), 32);
        assert!(verify(&key, g, "alice", &both, &t));
        assert!(!verify(&key, g, "bob", &both, &t), "another owner");
        assert!(!verify(&key, g, "alice", &both[..1], &t), "a subset");
        assert!(!verify(
            &key,
            Gtrid {
                cluster: 1,
                index: 10
            },
            "alice",
            &both,
            &t
        ));
        assert!(!verify(&[4u8; 32], g, "alice", &both, &t), "another key");
        assert!(!verify(&key, g, "alice", &both, ""));
    }
}
