//! The HTTP listener: accepts client connections up to a cap, serves each over HTTP/1.1 with
//! read timeouts on the request head and body, and shuts down gracefully.
//!
//! axum's own `serve` has no read timeouts: a client that sends half a request head and then
//! stalls keeps its connection, and its task, forever. Here hyper's header read timeout bounds
//! the head (and the idle wait before it), tower-http's body timeout bounds each wait for the
//! body, and a semaphore bounds how many connections are open at once, so a crowd of stalled
//! clients costs at most the cap and is gone after the timeout. With a certificate, each
//! connection is TLS, and its handshake is bounded by the same read timeout.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower_http::timeout::RequestBodyTimeout;

/// How the listener treats client connections.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Longest wait for a whole request head, and for each part of a body.
    pub read_timeout: Duration,
    /// Most connections open at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// HTTPS: the server's certificate chain and key; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The TLS settings of HTTPS from PEM files: the certificate chain (leaf first) and its
/// private key (PKCS#8, PKCS#1 or SEC1). Errors name the file and say what is wrong.
pub fn server_tls(certificate: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", certificate.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and the key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets each
/// open connection finish its request in flight and returns once all are closed.
pub async fn serve(listener: TcpListener, router: Router, config: ListenerConfig, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let connections = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(config.read_timeout);
    let service = TowerToHyperService::new(RequestBodyTimeout::new(router, config.read_timeout));
    let tls = config.tls.map(TlsAcceptor::from);
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
        let Some(tls) = &tls else {
            let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
            tokio::spawn(async move {
                // A dropped client or a timeout ends the connection; neither is the service's fault.
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection closed");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client never holds up the
        // accept loop; it counts against the connection cap and the read timeout like a head.
        let handshake = tokio::time::timeout(config.read_timeout, tls.accept(stream));
        let (http, service, watcher) = (http.clone(), service.clone(), connections.watcher());
        tokio::spawn(async move {
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            if let Err(error) = watcher
                .watch(http.serve_connection(TokioIo::new(stream), service))
                .await
            {
                tracing::debug!(%error, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}
