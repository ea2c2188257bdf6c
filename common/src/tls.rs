//! Mutual TLS for every gRPC surface, and the identities certificates carry
//! (docs/design.md, "Security").
//!
//! One [`Tls`] per process holds the PEM files it was started with (the CA that
//! peers are verified against, its own certificate chain and key) and the rustls
//! configurations built from them. Both sides present a certificate and verify the
//! other's against the CA: servers accept only clients with a certificate of that CA
//! ([`Tls::incoming`]), clients verify the server's name and present their own
//! ([`Tls::channel`]). [`Tls::watch`] re-reads the files when they change, so a
//! rotated certificate is used for every new connection without a restart; a
//! half-written rotation (a key that does not match its certificate yet) is refused
//! and the previous one kept until the files agree.
//!
//! Identities come from the certificate's subject alternative names: a URI
//! `ratify://<role>/<name>` grants `role` to `name` (see [`Role`]). One certificate
//! may carry several (an app that is a client and hosts a participant).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
        server::WebPkiClientVerifier,
        ClientConfig, RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor, TlsConnector,
};
use tonic::transport::{Channel, Endpoint};

/// How long a TLS handshake may take before the connection is dropped: a peer that
/// connects and says nothing must not hold a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Tls::watch`] looks at the files.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Most TLS handshakes a listener runs at once; connections past it are closed at
/// once (a flood of silent connections cannot take every file descriptor).
pub const MAX_HANDSHAKES: usize = 256;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA
    /// that is not a CA).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// The three PEM files of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) peers are verified against.
    pub ca: PathBuf,
    /// This process's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This process's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// When each file was last changed, and its size: what [`Tls::watch`] compares.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl TlsFiles {
    fn stamp(&self) -> Stamp {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The rustls configurations built from one reading of the files.
struct Loaded {
    /// gRPC servers (ALPN h2).
    server: Arc<ServerConfig>,
    /// HTTP/1.1 servers (the metrics port and console; ALPN http/1.1).
    server_http1: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// Which protocol a TLS server speaks after the handshake (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC.
    H2,
    /// Plain HTTP/1.1 (the metrics port and the console).
    Http1,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The CA certificates of a PEM file as trust roots.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(path)? {
        roots
            .add(ca)
            .map_err(|e| file_error(path, format!("not a usable CA: {e}")))?;
    }
    Ok(roots)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let roots = read_roots(&files.ca)?;
    let roots = Arc::new(roots);
    let config = |e: rustls::Error| TlsError::Config(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(config)?;
    let mut server_http1 = server.clone();
    server.alpn_protocols = vec![b"h2".to_vec()];
    server_http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        server_http1: Arc::new(server_http1),
        client: Arc::new(client),
    })
}

/// A TLS client configuration for a server outside Ratify (Postgres, an HTTP
/// endpoint): the server's certificate must be issued by a CA in `ca` and name the
/// host dialled; `identity` (certificate chain and key, PEM) is presented when given.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be read or the material rustls refuses.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = read_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string())),
    }
}

/// A process's TLS material, reloadable (see the module docs).
pub struct Tls {
    files: TlsFiles,
    current: RwLock<(Stamp, Arc<Loaded>)>,
    /// A watcher runs.
    watching: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.stamp();
        let loaded = load(&files)?;
        let tls = Arc::new(Self {
            files,
            current: RwLock::new((stamp, Arc::new(loaded))),
            watching: std::sync::atomic::AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tls.watch();
        }
        Ok(tls)
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn loaded(&self) -> Arc<Loaded> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard.1)
    }

    /// Re-reads the files if any changed since the last reading. `Ok(true)` when new
    /// material is in use; on an error the previous material stays (a rotation
    /// half-written is tried again at the next look).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload(false)
    }

    /// Re-reads the files whether or not they look changed (SIGHUP: a rotation that
    /// kept the size and time, `cp -p`, is read too). `Ok(true)` when read.
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        self.reload(true)
    }

    fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamp = self.files.stamp();
        if !force {
            let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
            if guard.0 == stamp {
                return Ok(false);
            }
        }
        let loaded = load(&self.files)?;
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = (stamp, Arc::new(loaded));
        Ok(true)
    }

    /// Looks at the files every [`WATCH_EVERY`] until every holder of this `Tls` is
    /// gone, and reads them on SIGHUP whatever they look like; new connections use
    /// what was read last. [`Tls::load`] starts it when called on a tokio runtime (a
    /// client alone reloads too); otherwise call it once on one. Idempotent.
    pub fn watch(self: &Arc<Self>) {
        if self
            .watching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let forced = tokio::select! {
                    _ = tokio::time::sleep(WATCH_EVERY) => false,
                    _ = hangup => true,
                };
                let Some(tls) = weak.upgrade() else { return };
                match tls.reload(forced) {
                    Ok(true) => {
                        tracing::info!(cert = %tls.files.cert.display(), "TLS certificates reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificates not reloaded; the previous ones stay in use")
                    }
                }
            }
        });
    }

    /// The connections `listener` accepts, after a TLS handshake that required a
    /// client certificate of the CA. Handshakes run apart from the accept loop (a
    /// silent peer holds nothing but its own task, for at most
    /// [`HANDSHAKE_TIMEOUT`]); failed ones are dropped and logged at debug.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        alpn: Alpn,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = Arc::clone(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                // The listener closes as soon as the server stops taking connections.
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many TLS handshakes under way; connection closed");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let loaded = tls.loaded();
                let config = match alpn {
                    Alpn::H2 => &loaded.server,
                    Alpn::Http1 => &loaded.server_http1,
                };
                let acceptor = TlsAcceptor::from(Arc::clone(config));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// A lazy channel to `endpoint` over TLS: the server's certificate must be of the
    /// CA and name the endpoint's host; this process's certificate is presented.
    /// Connections are made from `source` when given; a server that is not `expect`
    /// (by its certificate's names) is hung up on after the handshake.
    pub fn channel(
        self: &Arc<Self>,
        endpoint: Endpoint,
        source: Option<std::net::IpAddr>,
        expect: Expect,
    ) -> Channel {
        let tls = Arc::clone(self);
        let connect = tower::service_fn(move |uri: http::Uri| {
            let (tls, expect) = (Arc::clone(&tls), expect.clone());
            Box::pin(async move { tls.connect(uri, source, expect).await })
                as Pin<Box<dyn Future<Output = io::Result<_>> + Send>>
        });
        endpoint.connect_with_connector_lazy(connect)
    }

    async fn connect(
        &self,
        uri: http::Uri,
        source: Option<std::net::IpAddr>,
        expect: Expect,
    ) -> io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|_| bad("not a server name"))?;
        let tcp = match source {
            None => TcpStream::connect((host.as_str(), port)).await?,
            Some(ip) => {
                let to = tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or_else(|| bad("no address of the source's family"))?;
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(to).await?
            }
        };
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(Arc::clone(&self.loaded().client));
        let stream = connector.connect(name, tcp).await?;
        // The chain and the host name are verified; now who it is.
        let names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| names_in(leaf.as_ref()))
            .unwrap_or_default();
        if !expect.is_met_by(&names) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{uri}: the server is {}, not {}",
                    Caller::Certified(names).describe(),
                    expect.describe()
                ),
            ));
        }
        Ok(hyper_util::rt::TokioIo::new(stream))
    }
}

/// How a process speaks gRPC: plaintext (only when asked for, on loopback) or mutual
/// TLS. Servers take their connections from [`Transport::incoming`], clients their
/// channels from [`Transport::channel`]; a server learns who calls with
/// [`Caller::of`].
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// Plaintext (`--insecure`): every caller is [`Caller::Anyone`].
    #[default]
    Plain,
    /// Mutual TLS with reloadable certificates.
    Tls(Arc<Tls>),
}

impl Transport {
    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// A lazy channel to `endpoint` (whose URI keeps the `http` scheme: the TLS is
    /// this transport's, not tonic's) whose server must be `expect`.
    pub fn channel(&self, endpoint: Endpoint, expect: Expect) -> Channel {
        self.channel_from(endpoint, None, expect)
    }

    /// [`Transport::channel`] with connections made from `source` (tests that tell
    /// nodes apart on loopback by their source address).
    pub fn channel_from(
        &self,
        endpoint: Endpoint,
        source: Option<std::net::IpAddr>,
        expect: Expect,
    ) -> Channel {
        match self {
            Transport::Plain => endpoint.local_address(source).connect_lazy(),
            Transport::Tls(tls) => tls.channel(endpoint, source, expect),
        }
    }

    /// The connections `listener` accepts, each knowing its [`Caller`] (for TLS,
    /// after the handshake; see [`Tls::incoming`]).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> Pin<Box<dyn tokio_stream::Stream<Item = io::Result<Conn>> + Send>> {
        self.incoming_as(listener, Alpn::H2)
    }

    /// [`Transport::incoming`] for a server speaking `alpn`.
    pub fn incoming_as(
        &self,
        listener: TcpListener,
        alpn: Alpn,
    ) -> Pin<Box<dyn tokio_stream::Stream<Item = io::Result<Conn>> + Send>> {
        use tokio_stream::StreamExt;
        match self {
            Transport::Plain => Box::pin(
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|c| {
                    c.map(|tcp| {
                        let _ = tcp.set_nodelay(true);
                        let remote = tcp.peer_addr().ok();
                        Conn {
                            io: ConnIo::Plain(tcp),
                            info: ConnInfo {
                                remote,
                                caller: Caller::Anyone,
                                hosts: Vec::new(),
                            },
                        }
                    })
                }),
            ),
            Transport::Tls(tls) => Box::pin(tls.incoming(listener, alpn).map(|c| {
                c.map(|stream| {
                    let (tcp, session) = stream.get_ref();
                    let remote = tcp.peer_addr().ok();
                    let (names, hosts) = session
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|leaf| (names_in(leaf.as_ref()), hosts_in(leaf.as_ref())))
                        .unwrap_or_default();
                    Conn {
                        io: ConnIo::Tls(Box::new(stream)),
                        info: ConnInfo {
                            remote,
                            caller: Caller::Certified(names),
                            hosts,
                        },
                    }
                })
            })),
        }
    }

    /// Starts [`Tls::watch`] if it does not run yet (nothing for plaintext).
    pub fn watch(&self) {
        if let Transport::Tls(tls) = self {
            tls.watch();
        }
    }
}

/// An accepted connection, plaintext or TLS, with who is on the other end.
#[derive(Debug)]
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
}

impl Conn {
    /// Who is on the other end, and from where.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

#[derive(Debug)]
enum ConnIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a server knows of a connection: in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Who the peer is: its certificate's names, computed once per connection.
    pub caller: Caller,
    /// The host names and IP addresses its certificate names (DNS and IP SANs): where
    /// it may claim to be reached.
    pub hosts: Vec<String>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Who a client expects the server it dials to be (checked on the server's
/// certificate after the handshake): a man in the middle holding some other
/// certificate of the CA (an app's, for the same host) is hung up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A coordinator node (`ratify://peer/<id>`), this one if given.
    Node(Option<u64>),
    /// A participant (`ratify://participant/<name>`), this one if given.
    Participant(Option<String>),
    /// Any certificate of the CA (tests, tools).
    Anyone,
}

impl Expect {
    fn is_met_by(&self, names: &[(Role, String)]) -> bool {
        let has = |role: Role, name: Option<&str>| {
            names
                .iter()
                .any(|(r, n)| *r == role && name.is_none_or(|want| want == n))
        };
        match self {
            Expect::Node(id) => has(Role::Peer, id.map(|i| i.to_string()).as_deref()),
            Expect::Participant(name) => has(Role::Participant, name.as_deref()),
            Expect::Anyone => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Node(Some(id)) => Role::Peer.uri(&id.to_string()),
            Expect::Node(None) => Role::Peer.uri("<id>"),
            Expect::Participant(Some(n)) => Role::Participant.uri(n),
            Expect::Participant(None) => Role::Participant.uri("<name>"),
            Expect::Anyone => "a certificate of the CA".into(),
        }
    }
}

/// What a certificate's `ratify://` name may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A coordinator node: the Raft service (and only while a cluster member), and
    /// the participant calls (Prepare, Commit, Rollback, Recover).
    Peer,
    /// An application: begins, enlists in, commits and rolls back its own
    /// transactions, and reads them.
    Client,
    /// A participant: asks the outcome of its own branches.
    Participant,
    /// A person or tool: the admin service and resolution.
    Operator,
}

impl Role {
    /// The role's word in a `ratify://<role>/<name>` URI.
    pub fn word(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
            Role::Participant => "participant",
            Role::Operator => "operator",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        [Role::Peer, Role::Client, Role::Participant, Role::Operator]
            .into_iter()
            .find(|r| r.word() == word)
    }

    /// The SAN URI that grants this role to `name`.
    pub fn uri(self, name: &str) -> String {
        format!("ratify://{}/{name}", self.word())
    }
}

/// Who is calling: the roles the caller's certificate grants, each with the name it
/// grants it to. Without TLS (`--insecure`, loopback only) the caller is
/// [`Caller::Anyone`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext: no identity, nothing to check (the operator chose `--insecure`).
    Anyone,
    /// A verified certificate's names.
    Certified(Vec<(Role, String)>),
}

impl Caller {
    /// The name the caller holds `role` under, if it holds it; [`Caller::Anyone`]
    /// holds every role under the name `""`.
    pub fn name_as(&self, role: Role) -> Option<&str> {
        match self {
            Caller::Anyone => Some(""),
            Caller::Certified(names) => names
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, n)| n.as_str()),
        }
    }

    /// The caller's `ratify://` names, for errors and audit trails.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anyone => "an unauthenticated caller".into(),
            Caller::Certified(names) if names.is_empty() => {
                "a certificate with no ratify:// name".into()
            }
            Caller::Certified(names) => names
                .iter()
                .map(|(r, n)| r.uri(n))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The caller of `req`, from the connection it came on (served from
    /// [`Transport::incoming`]); `None` for a request that did not come that way,
    /// which a server must refuse.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Self> {
        req.extensions().get::<ConnInfo>().map(|i| &i.caller)
    }

    /// [`Caller::of`], then the name under `role`: a refusal names what the caller
    /// is and what it needed (PERMISSION_DENIED; UNAUTHENTICATED without a caller).
    pub fn require<T>(req: &tonic::Request<T>, role: Role) -> Result<String, tonic::Status> {
        let caller = Self::of(req).ok_or_else(|| {
            tonic::Status::unauthenticated("the request came on no known connection")
        })?;
        caller.name_as(role).map(str::to_string).ok_or_else(|| {
            tonic::Status::permission_denied(format!(
                "{} does not hold the role {} ({} needed)",
                caller.describe(),
                role.word(),
                role.uri("<name>")
            ))
        })
    }
}

/// What `pick` takes of each subject alternative name of a DER certificate (none
/// for bytes that are no certificate, or one without the extension).
fn from_sans<T>(
    der: &[u8],
    pick: impl Fn(&x509_parser::extensions::GeneralName<'_>) -> Option<T>,
) -> Vec<T> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value.general_names.iter().filter_map(pick).collect()
}

/// The `ratify://<role>/<name>` URIs in a DER certificate's subject alternative
/// names; anything else (DNS names, other URIs, unknown roles) is ignored.
pub fn names_in(der: &[u8]) -> Vec<(Role, String)> {
    from_sans(der, |n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => parse_name(uri),
        _ => None,
    })
}

/// The DNS names and IP addresses in a DER certificate's subject alternative names.
pub fn hosts_in(der: &[u8]) -> Vec<String> {
    from_sans(der, |n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
        x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// `ratify://<role>/<name>` → (role, name); the name follows the wire name rule.
pub fn parse_name(uri: &str) -> Option<(Role, String)> {
    let rest = uri.strip_prefix("ratify://")?;
    let (word, name) = rest.split_once('/')?;
    let role = Role::from_word(word)?;
    crate::wire::is_valid_name(name).then(|| (role, name.to_string()))
}

/// Whether `addr` is on this machine only (what `--insecure` allows).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(
            parse_name("ratify://client/orders"),
            Some((Role::Client, "orders".into()))
        );
        assert_eq!(
            parse_name("ratify://peer/3"),
            Some((Role::Peer, "3".into()))
        );
        for bad in [
            "ratify://client/",
            "ratify://admin/x",
            "ratify:/client/x",
            "https://client/x",
            "ratify://client/a b",
            "ratify://client",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn anyone_holds_every_role_and_a_certificate_only_its_own() {
        assert_eq!(Caller::Anyone.name_as(Role::Peer), Some(""));
        let c = Caller::Certified(vec![(Role::Client, "orders".into())]);
        assert_eq!(c.name_as(Role::Client), Some("orders"));
        assert_eq!(c.name_as(Role::Operator), None);
        assert_eq!(c.describe(), "ratify://client/orders");
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(names_in(b"not a certificate").is_empty());
    }
}
