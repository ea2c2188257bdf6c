//! The metrics port: Prometheus text at `GET /metrics`, and the web console
//! (`GET /`, `GET /api/v1/console`, see [`super::console`]), over plain HTTP.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
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
    driver: Driver,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The console samples the decision counters until this server stops.
    let (console, _sampler) = Console::start(driver.clone());
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(driver)
        .merge(console.router());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
