//! The metrics port: Prometheus text at `GET /metrics`, and the web console
//! (`GET /`, `GET /api/v1/console`, see [`super::console`]), over HTTP/1.1: in
//! plaintext under `--insecure` (loopback only), else over TLS that requires a
//! client certificate of the cluster's CA, like every other port (docs/design.md,
//! "Security").

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

use ratify_common::tls::{Alpn, Caller, Conn, Role, Transport};
use tokio::net::TcpListener;

use super::console::Console;
use crate::driver::Driver;
use crate::metrics::{render, LeaderView};

/// Serves `/metrics` and the console on `listener` until `shutdown` resolves.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    driver: Driver,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The console samples the decision counters until this server stops.
    let (console, _sampler) = Console::start(driver.clone());
    // The console lists transactions, their owners and branches: operators only.
    // `/metrics` holds counts only: any certificate of the CA (a Prometheus's).
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(driver)
        .merge(
            console
                .router()
                .layer(axum::middleware::from_fn(operators_only)),
        );
    let local = listener.local_addr()?;
    let incoming = Incoming {
        conns: transport.incoming_as(listener, Alpn::Http1),
        local,
    };
    axum::serve(incoming, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Who is on the other end of a metrics-port connection.
#[derive(Clone)]
struct Peer(Caller);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        Peer(stream.io().info().caller.clone())
    }
}

async fn operators_only(
    axum::extract::ConnectInfo(Peer(caller)): axum::extract::ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if caller.name_as(Role::Operator).is_some() {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "the console needs an operator's certificate (ratify://operator/<name>); this is {}\n",
                caller.describe()
            ),
        )
            .into_response()
    }
}

/// The connections of the metrics port, as axum takes them.
struct Incoming {
    conns: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Conn>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        use tokio_stream::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let from = conn.info().remote.unwrap_or(self.local);
                    return (conn, from);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "metrics port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn metrics(State(driver): State<Driver>) -> impl IntoResponse {
    let raft = driver.raft().metrics().borrow().clone();
    let (retrying, oldest) = driver.trouble_summary();
    let local = LeaderView {
        retrying_branches: retrying,
        oldest_retrying_ms: oldest,
        channels: driver.open_channels(),
    };
    let body = render(driver.counters(), driver.sm(), &raft, &local);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
