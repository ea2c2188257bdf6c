//! What Ratify's coordinator and participant SDK share, each rule defined once
//! (docs/design.md, "Crates"): neither side builds on the other.
//!
//! - [`xid`]: the global transaction id ([`xid::Gtrid`]) and the branch id
//!   ([`xid::Xid`]), their strict encodings and wire forms.
//! - [`wire`]: the name alphabet, endpoint syntax and size limits.
//! - [`failpoint`]: crash points for tests, chosen through `RATIFY_FAILPOINTS`.
//! - [`group`]: group commit (rounds of queued requests served by one step).
//! - [`stopped`]: the shutdown signal servers and loops wait on.
//! - [`tls`]: mutual TLS for every gRPC surface and the identities certificates carry.

pub mod failpoint;
pub mod group;
pub mod tls;
pub mod wire;
pub mod xid;

/// Resolves once `rx` reads `true` (or its sender is gone): the shutdown signal every
/// server and background loop of Ratify waits on.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
