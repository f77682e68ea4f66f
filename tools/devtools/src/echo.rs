//! An upstream HTTP/1.1 server that answers every request with `200` and a JSON description of
//! what it received:
//!
//! ```json
//! {"method": "GET", "path": "/a?b=c",
//!  "headers": [["host", "localhost"], ["x-request-id", "…"], ["x-dup", "1"], ["x-dup", "2"]],
//!  "body": "…"}
//! ```
//!
//! Headers are a list of `[name, value]` pairs, so duplicates stay visible. Non-UTF-8 bytes
//! are replaced (lossy). The server runs on the shared runtime ([`crate::runtime`]), on a
//! free 127.0.0.1 port by default, and stops — listener and open connections — on drop.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::client::Response;
use crate::http_server::HttpServer;

/// A running echo upstream. Dropping it stops the server.
pub struct EchoUpstream {
    server: HttpServer,
    seen: Arc<AtomicU64>,
}

impl EchoUpstream {
    /// Starts an echo upstream on a free port of 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::serve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false)
    }

    /// Starts an echo upstream on `addr` (port 0 picks a free port). With `verbose`, prints a
    /// line per request (method, path, `x-request-id`) to stdout — used by `just demo`.
    pub fn serve(addr: SocketAddr, verbose: bool) -> Result<Self> {
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        let server = HttpServer::serve(addr, "echo upstream", move |req| {
            counter.fetch_add(1, Ordering::Relaxed);
            echo(req, verbose)
        })?;
        Ok(Self { server, seen })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// How many requests the server has answered so far.
    pub fn requests_seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

async fn echo(
    req: hyper::Request<Incoming>,
    verbose: bool,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(n, v)| serde_json::json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    if verbose {
        let ids: Vec<_> = parts
            .headers
            .get_all("x-request-id")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        println!(
            "echo-upstream: {} {} x-request-id={:?}",
            parts.method, path, ids
        );
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = hyper::Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// What the echo upstream reported it received (parsed from its response body).
#[derive(Clone, Debug)]
pub struct Echoed {
    /// The method the upstream saw.
    pub method: String,
    /// The path (with query) the upstream saw.
    pub path: String,
    /// The header lines the upstream saw, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// The body the upstream saw (lossy UTF-8).
    pub body: String,
}

impl Echoed {
    /// Parses the echo upstream's JSON out of a response that came through Envoy.
    pub fn from_response(resp: &Response) -> Result<Self> {
        let v = resp.json().with_context(|| {
            format!(
                "expected the echo upstream's JSON (status {}, headers {:?})",
                resp.status, resp.headers
            )
        })?;
        let s = |key: &str| -> Result<String> {
            v.get(key)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("echo JSON has no string '{key}': {v}"))
        };
        let headers = v
            .get("headers")
            .and_then(|h| h.as_array())
            .with_context(|| format!("echo JSON has no 'headers' list: {v}"))?
            .iter()
            .map(|pair| {
                let name = pair.get(0).and_then(|x| x.as_str());
                let value = pair.get(1).and_then(|x| x.as_str());
                match (name, value) {
                    (Some(n), Some(v)) => Ok((n.to_string(), v.to_string())),
                    _ => anyhow::bail!("bad header pair in echo JSON: {pair}"),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            method: s("method")?,
            path: s("path")?,
            headers,
            body: s("body")?,
        })
    }

    /// The first value of header `name` the upstream saw.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` the upstream saw.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
