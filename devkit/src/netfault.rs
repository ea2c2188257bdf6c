//! A fault-injecting TCP proxy for tests and the chaos runner: it forwards connections
//! to a target and can cut off chosen source addresses (or everyone), dropping their
//! open connections at once and refusing new ones until healed.
//!
//! On loopback, nodes are told apart by the source IP of their Raft connections
//! (`--raft-source-ip 127.0.0.X`), so one proxy in front of each node's Raft port is
//! enough to isolate any node from the others in both directions (see
//! [`crate::local::LocalCluster::isolate`]).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who may not pass.
#[derive(Debug, Default, Clone)]
struct Rules {
    /// Nobody passes.
    all: bool,
    /// These source addresses do not pass.
    sources: HashSet<IpAddr>,
}

impl Rules {
    fn blocks(&self, source: IpAddr) -> bool {
        self.all || self.sources.contains(&source)
    }
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// Where it forwards to.
    target: SocketAddr,
    /// The current rules, watched by every connection so a new block cuts it at once.
    rules: watch::Sender<Rules>,
    /// Ends the accept loop when the proxy is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (rules, _) = watch::channel(Rules::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(accept_loop(listener, target, rules.clone(), stopped));
        Ok(Self {
            addr,
            target,
            rules,
            _stop: stop,
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Cuts off these source addresses (in addition to any already cut off).
    pub fn block_sources(&self, sources: impl IntoIterator<Item = IpAddr>) {
        self.rules.send_modify(|r| r.sources.extend(sources));
    }

    /// Cuts off everyone.
    pub fn block_all(&self) {
        self.rules.send_modify(|r| r.all = true);
    }

    /// Lets everyone through again.
    pub fn heal(&self) {
        self.rules.send_replace(Rules::default());
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rules: watch::Sender<Rules>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (inbound, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        let source = peer.ip();
        if rules.borrow().blocks(source) {
            // Refused: closing at once looks like a dead peer to the caller.
            drop(inbound);
            continue;
        }
        let mut watch = rules.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let mut inbound = inbound;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = watch.wait_for(|r| r.blocks(source)) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> anyhow::Result<SocketAddr> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    async fn round_trip(s: &mut TcpStream) -> anyhow::Result<bool> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut buf)).await
        {
            Ok(Ok(_)) => Ok(&buf == b"ping"),
            _ => Ok(false),
        }
    }

    #[tokio::test]
    async fn blocks_cut_open_connections_and_refuse_new_ones_until_healed() -> anyhow::Result<()> {
        let proxy = FaultProxy::start(echo_server().await?).await?;
        let mut open = TcpStream::connect(proxy.addr()).await?;
        assert!(round_trip(&mut open).await?);

        proxy.block_sources(["127.0.0.1".parse()?]);
        assert!(!round_trip(&mut open).await?, "open connection must be cut");
        let mut refused = TcpStream::connect(proxy.addr()).await?;
        assert!(
            !round_trip(&mut refused).await?,
            "new connection must be refused"
        );

        // Another source still passes.
        let other = tokio::net::TcpSocket::new_v4()?;
        other.bind("127.0.0.2:0".parse()?)?;
        let mut other = other.connect(proxy.addr()).await?;
        assert!(round_trip(&mut other).await?);

        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr()).await?;
        assert!(round_trip(&mut again).await?);
        proxy.block_all();
        assert!(
            !round_trip(&mut other).await?,
            "block_all cuts every source"
        );
        Ok(())
    }
}
