//! The HTTP listener: accepts client connections up to a cap, serves each over HTTP/1.1 with
//! read timeouts on the request head and body, and shuts down gracefully.
//!
//! axum's own `serve` has no read timeouts: a client that sends half a request head and then
//! stalls keeps its connection, and its task, forever. Here hyper's header read timeout bounds
//! the head (and the idle wait before it), tower-http's body timeout bounds each wait for the
//! body, and a semaphore bounds how many connections are open at once, so a crowd of stalled
//! clients costs at most the cap and is gone after the timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeout;

/// How the listener treats client connections.
#[derive(Debug, Clone, Copy)]
pub struct ListenerConfig {
    /// Longest wait for a whole request head, and for each part of a body.
    pub read_timeout: Duration,
    /// Most connections open at once; further clients wait in the accept queue.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets each
/// open connection finish its request in flight and returns once all are closed.
pub async fn serve(listener: TcpListener, router: Router, config: ListenerConfig, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let connections = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(config.read_timeout);
    let service = TowerToHyperService::new(RequestBodyTimeout::new(router, config.read_timeout));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little instead of spinning, and go on.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            // A dropped client or a timeout ends the connection; neither is the service's fault.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}
