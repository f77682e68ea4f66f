//! A small HTTP/1.1 client for tests, built on hyper's connection-level API so that it sends
//! exactly the headers it is given: duplicates stay duplicates, odd-but-legal bytes (spaces,
//! quotes, 8-bit) go out as they are, and nothing is added except `host` when missing.
//!
//! - [`send`]: one request on a fresh connection.
//! - [`send_burst`]: many requests over a few keep-alive connections, concurrently, for volume
//!   tests (10,000 requests take a few seconds against a local Envoy).
//! - [`send_h2`]: one request over HTTP/2 (cleartext, prior knowledge), for what only HTTP/2
//!   can carry — e.g. a lowercase `:method`, which Envoy's HTTP/1 codec refuses.
//!
//! Every call is bounded by a timeout and blocks the calling thread; the work runs on the
//! shared runtime ([`crate::runtime`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Default bound for a single request (connect + send + read the whole response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to send. Build with [`Request::get`] / [`Request::post`] and [`Request::header`].
#[derive(Clone, Debug)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target, e.g. `/path?query`.
    pub path: String,
    /// Header lines in order; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (sent with a content-length when non-empty).
    pub body: Vec<u8>,
}

impl Request {
    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `POST` of `body` to `path`.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            body: body.into(),
            ..Self::get(path)
        }
    }

    /// Appends a header line (an existing header of that name is kept: calling this twice
    /// with the same name sends the header twice).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    fn to_hyper(&self) -> Result<hyper::Request<Full<Bytes>>> {
        self.to_hyper_with_uri(self.path.as_str())
    }

    fn to_hyper_with_uri(&self, uri: &str) -> Result<hyper::Request<Full<Bytes>>> {
        // From bytes, not `Method::from_str` of a known name: `post` stays `post`.
        let method = hyper::Method::from_bytes(self.method.as_bytes())
            .with_context(|| format!("{:?} is not a method token", self.method))?;
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        let mut has_host = false;
        for (name, value) in &self.headers {
            has_host |= name.eq_ignore_ascii_case("host");
            let value = hyper::header::HeaderValue::from_bytes(value)
                .with_context(|| format!("header {name} has a value HTTP cannot carry"))?;
            builder = builder.header(name.as_str(), value);
        }
        if !has_host {
            builder = builder.header("host", "localhost");
        }
        builder
            .body(Full::new(Bytes::from(self.body.clone())))
            .context("building the request")
    }
}

/// A response as received.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header lines in order (names lowercase); a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:.300}", self.text()))
    }
}

/// Sends `req` to `addr` on a new connection and reads the whole response
/// (bounded by [`DEFAULT_TIMEOUT`]).
pub fn send(addr: SocketAddr, req: &Request) -> Result<Response> {
    send_with_timeout(addr, req, DEFAULT_TIMEOUT)
}

/// [`send`] with an explicit bound.
pub fn send_with_timeout(addr: SocketAddr, req: &Request, timeout: Duration) -> Result<Response> {
    let hyper_req = req.to_hyper()?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        tokio::time::timeout(timeout, async move {
            let mut sender = connect(addr).await?;
            round_trip(&mut sender, hyper_req).await
        })
        .await
        .with_context(|| {
            format!(
                "{} {} to {addr} timed out after {timeout:?}",
                req.method, req.path
            )
        })?
    })
    .with_context(|| format!("{} {} to {addr}", req.method, req.path))
}

/// Sends `req` over HTTP/2 with prior knowledge (h2c) on a new connection. The `host` header
/// (default `localhost`) becomes `:authority`.
pub fn send_h2(addr: SocketAddr, req: &Request) -> Result<Response> {
    let authority = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "localhost".into());
    let mut h2_req = req.clone();
    h2_req
        .headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
    let hyper_req = h2_req.to_hyper_with_uri(&format!("http://{authority}{}", req.path))?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        tokio::time::timeout(DEFAULT_TIMEOUT, async move {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.ready().await.context("connection not ready")?;
            let resp = sender
                .send_request(hyper_req)
                .await
                .context("sending request")?;
            response(resp).await
        })
        .await
        .with_context(|| format!("{} {} to {addr} (HTTP/2) timed out", req.method, req.path))?
    })
    .with_context(|| format!("{} {} to {addr} (HTTP/2)", req.method, req.path))
}

/// `GET path` on `addr` (a convenience for admin endpoints).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    send(addr, &Request::get(path))
}

/// Sends `total` requests to `addr` over `connections` keep-alive connections in parallel and
/// returns the responses in request order (`make(i)` builds request `i`).
///
/// Each connection sends its share one request after another (HTTP/1.1 keep-alive, no
/// pipelining); a connection the server closes is re-opened. The whole burst is bounded by
/// `timeout`.
pub fn send_burst<F>(
    addr: SocketAddr,
    total: usize,
    connections: usize,
    timeout: Duration,
    make: F,
) -> Result<Vec<Response>>
where
    F: Fn(usize) -> Request + Send + Sync + 'static,
{
    if connections == 0 {
        bail!("send_burst needs at least one connection");
    }
    let make = Arc::new(make);
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let work = async {
            let mut tasks = Vec::with_capacity(connections);
            for c in 0..connections {
                let make = Arc::clone(&make);
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
                    for i in (c..total).step_by(connections) {
                        let req = make(i).to_hyper()?;
                        let s = match sender.take() {
                            Some(s) if !s.is_closed() => sender.insert(s),
                            _ => sender.insert(connect(addr).await?),
                        };
                        let resp = round_trip(s, req)
                            .await
                            .with_context(|| format!("burst request {i}"))?;
                        out.push((i, resp));
                    }
                    anyhow::Ok(out)
                }));
            }
            let mut all: Vec<Option<Response>> = vec![None; total];
            for task in tasks {
                for (i, resp) in task.await.context("burst task panicked")?? {
                    all[i] = Some(resp);
                }
            }
            all.into_iter()
                .enumerate()
                .map(|(i, r)| r.with_context(|| format!("no response for request {i}")))
                .collect::<Result<Vec<_>>>()
        };
        tokio::time::timeout(timeout, work).await.with_context(|| {
            format!("burst of {total} requests to {addr} did not finish within {timeout:?}")
        })?
    })
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends when the connection closes; errors surface on the sender.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn round_trip(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Response> {
    sender.ready().await.context("connection not ready")?;
    let resp = sender.send_request(req).await.context("sending request")?;
    response(resp).await
}

async fn response(resp: hyper::Response<hyper::body::Incoming>) -> Result<Response> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.context("reading response body")?;
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_bytes().to_vec(),
    })
}
