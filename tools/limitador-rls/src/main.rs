//! `limitador-rls`: Envoy's rate-limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, gRPC over HTTP/2, unary)
//! answered by Kuadrant's **Limitador** library (crates.io `limitador` 0.14, `redis_storage`
//! only) with its counters in Redis — the engine `limitador-server` runs, so the e2e tests
//! (`tests/tests/e2e_rate_limit_global.rs`) check the gateway against a real rate-limit engine
//! configured with the Limitador example of `filters/rate-limit/README.md`, verbatim.
//!
//! ```text
//! limitador-rls [--rls-ip IP] [--rls-port PORT] [--rate-limit-headers NONE|DRAFT_VERSION_03] \
//!               LIMITS_FILE redis REDIS_URL
//! ```
//!
//! The arguments are the subset of `limitador-server`'s that this needs, spelled the same
//! (`--rls-port 0` takes a free port). Once it serves, it prints `listening on <ip>:<port>` on
//! stdout; it runs until killed (or Ctrl-C).
//!
//! # What it does per call, as `limitador-server` 2.x does
//!
//! - namespace = the request's `domain` (empty → overall code `UNKNOWN`);
//! - the descriptors become the CEL list `descriptors` (each a map of its entries), which the
//!   limits' `conditions` and `variables` read, e.g. `descriptors[0].rule == 'api-global'`;
//! - `hits_addend` 0 means 1;
//! - `AsyncRateLimiter::check_rate_limited_and_update` on `AsyncRedisStorage` (the server's
//!   `redis` storage, not `redis_cached`); a storage error → gRPC `UNAVAILABLE`;
//! - the answer: `OK` or `OVER_LIMIT`, **no per-descriptor statuses** (so no `current_limit`,
//!   no `duration_until_reset`), and with `--rate-limit-headers DRAFT_VERSION_03` the
//!   `X-RateLimit-Limit` / `-Remaining` / `-Reset` response headers of the most constraining
//!   counter.
//!
//! # gRPC serving
//!
//! hyper's HTTP/2 server and the gateway filter's own prost messages (`rate_limit::rls`), with
//! the gRPC framing written out below (one uncompressed message each way, `grpc-status` in the
//! trailers), as in the hand-written test service `tests/src/rls_server.rs` — no tonic, no
//! protoc. That hand-written service stays for what Limitador cannot be made to do on cue:
//! the failure-mode tests (a service that hangs, one that fails).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use limitador::AsyncRateLimiter;
use limitador::limit::{Context as LimitContext, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use prost::Message;
use rate_limit::rls::{Code, HeaderValue, RateLimitRequest, RateLimitResponse};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The gRPC path of `ShouldRateLimit`.
const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// gRPC status codes used here.
const GRPC_OK: u32 = 0;
const GRPC_INVALID_ARGUMENT: u32 = 3;
const GRPC_UNIMPLEMENTED: u32 = 12;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

const USAGE: &str = "usage: limitador-rls [--rls-ip IP] [--rls-port PORT] \
    [--rate-limit-headers NONE|DRAFT_VERSION_03] LIMITS_FILE redis REDIS_URL";

#[derive(Debug, PartialEq)]
struct Args {
    ip: IpAddr,
    port: u16,
    draft03_headers: bool,
    limits_file: String,
    redis_url: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    // limitador-server's default RLS port.
    let mut port = 8081;
    let mut draft03_headers = false;
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{USAGE}"),
            }
        };
        match flag.as_str() {
            "-b" | "--rls-ip" => {
                let v = value("--rls-ip")?;
                ip = v.parse().with_context(|| format!("--rls-ip {v:?}"))?;
            }
            "-p" | "--rls-port" => {
                let v = value("--rls-port")?;
                port = v.parse().with_context(|| format!("--rls-port {v:?}"))?;
            }
            "--rate-limit-headers" => {
                draft03_headers = match value("--rate-limit-headers")?.as_str() {
                    "NONE" => false,
                    "DRAFT_VERSION_03" => true,
                    other => {
                        bail!("--rate-limit-headers {other:?}: NONE or DRAFT_VERSION_03\n{USAGE}")
                    }
                };
            }
            "-h" | "--help" => bail!("{USAGE}"),
            f if f.starts_with('-') && f.len() > 1 => bail!("unknown option {f:?}\n{USAGE}"),
            _ => positional.push(arg),
        }
    }
    match <[String; 3]>::try_from(positional) {
        Ok([limits_file, storage, redis_url]) if storage == "redis" => Ok(Args {
            ip,
            port,
            draft03_headers,
            limits_file,
            redis_url,
        }),
        Ok([_, storage, _]) => {
            bail!("storage {storage:?}: only `redis` is built in (no disk or in-memory)\n{USAGE}")
        }
        Err(_) => bail!("expected LIMITS_FILE redis REDIS_URL\n{USAGE}"),
    }
}

/// The limits file: Limitador's YAML format (a list of limits with `namespace`, `max_value`,
/// `seconds`, `conditions`, `variables` and an optional `name`), as `limitador-server` reads it.
fn parse_limits(text: &str) -> Result<Vec<Limit>> {
    let limits: Vec<Limit> = serde_norway::from_str(text)?;
    for (i, limit) in limits.iter().enumerate() {
        if limit.max_value() == 0 || limit.seconds() == 0 {
            bail!("limit {i}: max_value and seconds must be > 0");
        }
    }
    Ok(limits)
}

struct Service {
    limiter: AsyncRateLimiter,
    draft03_headers: bool,
}

/// A gRPC error: status code and message.
#[derive(Debug)]
struct Status(u32, String);

impl Service {
    /// `ShouldRateLimit`, as `limitador-server`'s Envoy RLS service answers it.
    async fn should_rate_limit(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Ok(RateLimitResponse {
                overall_code: Code::Unknown as i32,
                statuses: Vec::new(),
                response_headers_to_add: Vec::new(),
                request_headers_to_add: Vec::new(),
            });
        }
        let namespace = Namespace::from(request.domain);
        let descriptors: Vec<HashMap<String, String>> = request
            .descriptors
            .into_iter()
            .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
            .collect();
        let hits = u64::from(request.hits_addend.max(1));
        let mut ctx = LimitContext::default();
        ctx.list_binding("descriptors".to_owned(), descriptors);
        let mut result = self
            .limiter
            .check_rate_limited_and_update(&namespace, &ctx, hits)
            .await
            .map_err(|e| {
                eprintln!("limitador-rls: {e}");
                Status(GRPC_UNAVAILABLE, "Service unavailable".to_owned())
            })?;
        let mut headers: Vec<HeaderValue> = if self.draft03_headers {
            result
                .response_header()
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key,
                    value,
                    raw_value: Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        headers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(RateLimitResponse {
            overall_code: if result.limited {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            statuses: Vec::new(),
            response_headers_to_add: headers,
            request_headers_to_add: Vec::new(),
        })
    }
}

/// A gRPC response body: at most one message, then the trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn grpc_response(message: Option<Vec<u8>>, status: u32, text: &str) -> hyper::Response<GrpcBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", status.into());
    if let Ok(v) = hyper::header::HeaderValue::from_str(text)
        && !text.is_empty()
    {
        trailers.insert("grpc-message", v);
    }
    let data = message.and_then(|m| {
        let len = u32::try_from(m.len()).ok()?;
        let mut framed = BytesMut::with_capacity(5 + m.len());
        framed.put_u8(0);
        framed.put_u32(len);
        framed.put_slice(&m);
        Some(framed.freeze())
    });
    let mut resp = hyper::Response::new(GrpcBody {
        data,
        trailers: Some(trailers),
    });
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// The one message of a gRPC request body (uncompressed).
fn unframe(mut body: Bytes) -> Option<Bytes> {
    if body.remaining() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = usize::try_from(body.get_u32()).ok()?;
    (body.remaining() == len).then_some(body)
}

async fn handle(
    service: Arc<Service>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<GrpcBody>, Infallible> {
    if req.uri().path() != PATH {
        return Ok(grpc_response(None, GRPC_UNIMPLEMENTED, "unimplemented"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(grpc_response(
                None,
                GRPC_INTERNAL,
                "cannot read the request",
            ));
        }
    };
    let Some(message) = unframe(body) else {
        return Ok(grpc_response(
            None,
            GRPC_INVALID_ARGUMENT,
            "not one uncompressed gRPC message",
        ));
    };
    let Ok(request) = RateLimitRequest::decode(message) else {
        return Ok(grpc_response(
            None,
            GRPC_INVALID_ARGUMENT,
            "cannot decode RateLimitRequest",
        ));
    };
    // In a task of its own: Limitador unwraps a condition's evaluation error (a condition on
    // a descriptor the request lacks), and a panic must cost this call, not the connection.
    let answer = tokio::spawn(async move { service.should_rate_limit(request).await }).await;
    Ok(match answer {
        Ok(Ok(response)) => grpc_response(Some(response.encode_to_vec()), GRPC_OK, ""),
        Ok(Err(Status(code, text))) => grpc_response(None, code, &text),
        Err(_) => grpc_response(None, GRPC_INTERNAL, "limitador failed on this request"),
    })
}

async fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.limits_file)
        .with_context(|| format!("reading {}", args.limits_file))?;
    let limits =
        parse_limits(&text).with_context(|| format!("limits file {}", args.limits_file))?;
    let storage = AsyncRedisStorage::new(&args.redis_url)
        .await
        .with_context(|| format!("connecting to {}", args.redis_url))?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    limiter
        .configure_with(limits)
        .await
        .map_err(|e| anyhow::anyhow!("loading the limits: {e}"))?;
    let service = Arc::new(Service {
        limiter,
        draft03_headers: args.draft03_headers,
    });
    let listener = TcpListener::bind(SocketAddr::new(args.ip, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.ip, args.port))?;
    println!("listening on {}", listener.local_addr()?);
    let mut connections = JoinSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = Arc::clone(&service);
                connections.spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&service), req));
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn main() -> ExitCode {
    let outcome = parse_args(std::env::args().skip(1)).and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(args))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limitador-rls: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_as_limitador_server_spells_them() {
        let a = args(&[
            "--rls-port",
            "0",
            "--rate-limit-headers=DRAFT_VERSION_03",
            "-b",
            "127.0.0.1",
            "limits.yaml",
            "redis",
            "redis://127.0.0.1:6379",
        ])
        .unwrap();
        assert_eq!(
            a,
            Args {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0,
                draft03_headers: true,
                limits_file: "limits.yaml".into(),
                redis_url: "redis://127.0.0.1:6379".into(),
            }
        );
        assert!(args(&["limits.yaml", "memory"]).is_err());
        assert!(args(&["limits.yaml", "disk", "/tmp/x"]).is_err());
        assert!(args(&["--rls-port"]).is_err());
        assert!(
            args(&[
                "--rate-limit-headers",
                "DRAFT_VERSION_04",
                "l",
                "redis",
                "u"
            ])
            .is_err()
        );
        assert!(args(&["--bogus", "l", "redis", "u"]).is_err());
    }

    #[test]
    fn limits_in_limitadors_yaml_format() {
        let limits = parse_limits(
            "- namespace: gatewasm\n  max_value: 100\n  seconds: 3600\n  \
             conditions: [\"descriptors[0].rule == 'api-global'\"]\n  variables: []\n",
        )
        .unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].max_value(), 100);
        assert_eq!(limits[0].seconds(), 3600);
        assert!(
            parse_limits("- namespace: x\n  seconds: 1\n  conditions: []\n  variables: []\n")
                .is_err()
        );
        assert!(parse_limits("- namespace: x\n  max_value: 1\n  seconds: 1\n  conditions: [\"(\"]\n  variables: []\n").is_err());
    }

    #[test]
    fn grpc_framing() {
        let framed = grpc_response(Some(b"abc".to_vec()), GRPC_OK, "");
        assert_eq!(
            framed.body().data.as_deref(),
            Some(&[0, 0, 0, 0, 3, b'a', b'b', b'c'][..])
        );
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 1, 2])).as_deref(),
            Some(&[1, 2][..])
        );
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 3, 1, 2])).is_none());
        assert!(unframe(Bytes::from_static(&[1, 0, 0, 0, 0])).is_none());
        assert!(unframe(Bytes::from_static(&[0, 0])).is_none());
    }
}
