//! The one HTTP/1.1 test server loop: bind, accept (keep-alive, no Nagle), serve each connection
//! with a handler, reap finished connections, and stop on drop. The echo upstream and the
//! scenarios' scripted servers are this loop with different handlers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A running server; dropping it closes the listener and every connection.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `handler` on `addr` (port 0 picks a free port) on the shared runtime; `what`
    /// names the server in errors.
    pub fn serve<H, F>(addr: SocketAddr, what: &str, handler: H) -> Result<HttpServer>
    where
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<hyper::Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        let rt = crate::runtime()?;
        let listener = rt
            .block_on(TcpListener::bind(addr))
            .with_context(|| format!("{what}: binding {addr}"))?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = oneshot::channel();
        let task = rt.spawn(async move {
            // Connections live in the JoinSet: dropping it on shutdown aborts them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let _ = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service_fn(handler))
                                .await;
                        });
                    }
                    // Reap finished connections so the set does not grow without bound.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(HttpServer {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let (Some(task), Ok(rt)) = (self.task.take(), crate::runtime()) {
            // Wait (briefly) until the listener is closed; never hang a dropping test.
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
        }
    }
}
