//! A test rate-limit service: Envoy's RLS gRPC protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, HTTP/2, unary) with its
//! counters in a real Redis ([`RedisServer`]: Debian's `redis-server` on a free loopback port),
//! so that several Envoys (gateway replicas) share one limit.
//!
//! # Algorithm and accuracy
//!
//! A **fixed window**, as envoyproxy/ratelimit does: per descriptor and window (`window_s`,
//! aligned to the Unix epoch), one Redis key; each call runs `MULTI; INCRBY key hits;
//! EXPIRE key window_s; EXEC` (a small RESP client below: the `redis` crate would add ≈ 4
//! CPU-minutes of compilation, mostly `url`'s Unicode tables) and compares the new count with the limit. INCRBY is atomic, so
//! within a window the service allows **exactly** `limit` hits however many proxies and
//! connections race — the count is never off. Across a window boundary a client can get up to
//! `2 × limit` in `window_s` seconds (the fixed-window trade-off); the e2e test keeps clear of
//! boundaries. A denied hit is still counted (as envoyproxy/ratelimit does), which changes no
//! verdict. When Redis fails or does not answer within 500 ms, the call fails with gRPC
//! `UNAVAILABLE` (14) and the filter's `failure_mode` decides.
//!
//! Limits are configured per rule name (the descriptor's `rule` entry that the filter sends
//! first); the other entries make the key. A descriptor without a configured limit is `OK`
//! without a `current_limit`.
//!
//! It is a fixture, not a product: deploy Limitador or envoyproxy/ratelimit (see the
//! rate-limit filter's README). The e2e test checks the limits themselves against a real engine,
//! Limitador ([`crate::limitador_rls`]); this service stays only for what Limitador cannot be made
//! to do on cue — the failure-mode tests: a service that hangs (Redis frozen) and one that fails
//! (Redis gone), each answered per the filter's `failure_mode` within its `timeout_ms`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rate_limit::rls::{
    Code, DescriptorStatus, Duration as PbDuration, HeaderValue, RateLimit, RateLimitRequest,
    RateLimitResponse, Unit,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The gRPC path of `ShouldRateLimit`.
pub const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// A `redis-server` process on a free 127.0.0.1 port, without persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// The (empty) working directory, removed on drop.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (Debian's package: `just redis`) and waits until it answers PING.
    pub fn start() -> Result<Self> {
        let port = crate::free_port()?;
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (not installed? run `just redis`)")?;
        let mut server = RedisServer {
            port,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.ping().is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                server.stop();
                bail!("redis-server on port {port} did not answer PING within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// PING.
    pub fn ping(&self) -> Result<()> {
        let mut conn = Resp::connect(self.port)?;
        match conn.command(&[b"PING"])? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => bail!("PING answered {other:?}"),
        }
    }

    /// FLUSHALL: every key gone (a rate-limit service's counters start over).
    pub fn flush_all(&self) -> Result<()> {
        let mut conn = Resp::connect(self.port)?;
        match conn.command(&[b"FLUSHALL"])? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => bail!("FLUSHALL answered {other:?}"),
        }
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Undoes [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped (we hold the Child).
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One configured limit: `limit` hits per `window_s` for the descriptors whose `rule` entry is
/// `rule`.
#[derive(Debug, Clone)]
pub struct RlsLimit {
    pub rule: String,
    pub limit: u32,
    pub window_s: u64,
}

/// What the server has answered.
#[derive(Debug, Default)]
pub struct RlsCounts {
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub unavailable: AtomicU64,
}

/// A running RLS server (on the shared runtime); dropping it stops it.
pub struct RlsServer {
    addr: SocketAddr,
    counts: Arc<RlsCounts>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct State {
    redis_port: u16,
    /// Idle Redis connections, reused (a connection that failed is dropped).
    idle: std::sync::Mutex<Vec<Resp>>,
    limits: BTreeMap<String, RlsLimit>,
    counts: Arc<RlsCounts>,
}

impl RlsServer {
    /// Serves on a free port of 127.0.0.1, counting in the Redis on 127.0.0.1:`redis_port`.
    pub fn start(redis_port: u16, limits: Vec<RlsLimit>) -> Result<Self> {
        let counts = Arc::new(RlsCounts::default());
        let state = Arc::new(State {
            redis_port,
            idle: std::sync::Mutex::new(Vec::new()),
            limits: limits.into_iter().map(|l| (l.rule.clone(), l)).collect(),
            counts: Arc::clone(&counts),
        });
        let rt = crate::runtime()?;
        let listener = rt
            .block_on(TcpListener::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            ))))
            .context("RLS server: binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = oneshot::channel();
        let task = rt.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let state = Arc::clone(&state);
                        connections.spawn(async move {
                            let service = service_fn(move |req| handle(Arc::clone(&state), req));
                            let _ = http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(RlsServer {
            addr,
            counts,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn counts(&self) -> &RlsCounts {
        &self.counts
    }
}

impl Drop for RlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let (Some(task), Ok(rt)) = (self.task.take(), crate::runtime()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
        }
    }
}

/// A gRPC response body: at most one message, then the trailers.
pub struct GrpcBody {
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

fn grpc_response(message: Option<Bytes>, status: u32, text: &str) -> hyper::Response<GrpcBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", status.into());
    if let Ok(v) = hyper::header::HeaderValue::from_str(text)
        && !text.is_empty()
    {
        trailers.insert("grpc-message", v);
    }
    let data = message.map(|m| {
        let mut framed = BytesMut::with_capacity(5 + m.len());
        framed.put_u8(0);
        framed.put_u32(m.len() as u32);
        framed.put_slice(&m);
        framed.freeze()
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

async fn handle(
    state: Arc<State>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<GrpcBody>, Infallible> {
    if req.uri().path() != PATH {
        return Ok(grpc_response(None, 12, "unimplemented"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(grpc_response(None, 13, "cannot read the request")),
    };
    let mut buf = body.clone();
    if buf.remaining() < 5 || buf.get_u8() != 0 {
        return Ok(grpc_response(None, 3, "not one uncompressed gRPC message"));
    }
    let len = buf.get_u32() as usize;
    if buf.remaining() != len {
        return Ok(grpc_response(None, 3, "bad gRPC frame length"));
    }
    let Ok(request) = RateLimitRequest::decode(buf) else {
        return Ok(grpc_response(None, 3, "cannot decode RateLimitRequest"));
    };
    let st = Arc::clone(&state);
    let answer = tokio::task::spawn_blocking(move || should_rate_limit(&st, &request)).await;
    Ok(match answer {
        Ok(Ok(response)) => {
            let counter = if response.overall_code == Code::OverLimit as i32 {
                &state.counts.over_limit
            } else {
                &state.counts.ok
            };
            counter.fetch_add(1, Ordering::Relaxed);
            grpc_response(Some(Bytes::from(response.encode_to_vec())), 0, "")
        }
        Ok(Err(e)) => {
            state.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            grpc_response(None, 14, &format!("redis: {e}").replace(['\r', '\n'], " "))
        }
        Err(_) => {
            state.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            grpc_response(None, 14, "worker failed")
        }
    })
}

/// The fixed-window decision for every descriptor (blocking Redis calls).
fn should_rate_limit(state: &State, request: &RateLimitRequest) -> Result<RateLimitResponse> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let hits = u64::from(request.hits_addend.max(1));
    let mut conn: Option<Resp> = state.idle.lock().ok().and_then(|mut idle| idle.pop());
    let mut statuses = Vec::with_capacity(request.descriptors.len());
    let mut over = false;
    for d in &request.descriptors {
        let rule = d.entries.iter().find(|e| e.key == "rule").map(|e| &e.value);
        let Some(limit) = rule.and_then(|r| state.limits.get(r)) else {
            statuses.push(DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: None,
            });
            continue;
        };
        let window = now.as_secs() / limit.window_s;
        let mut key = format!("gatewasm-rls:{}:{window}", request.domain);
        for e in &d.entries {
            key.push_str(&format!(":{}={}", e.key.len(), e.key));
            key.push_str(&format!(":{}={}", e.value.len(), e.value));
        }
        let c = match &mut conn {
            Some(c) => c,
            None => conn.insert(Resp::connect(state.redis_port)?),
        };
        let count = c.incr_expire(key.as_bytes(), hits, limit.window_s)?;
        let allowed = count <= u64::from(limit.limit);
        over |= !allowed;
        let reset = (window + 1) * limit.window_s;
        statuses.push(DescriptorStatus {
            code: if allowed { Code::Ok } else { Code::OverLimit } as i32,
            current_limit: Some(RateLimit {
                name: limit.rule.clone(),
                requests_per_unit: limit.limit,
                unit: unit_of(limit.window_s) as i32,
            }),
            limit_remaining: u32::try_from(u64::from(limit.limit).saturating_sub(count))
                .unwrap_or(0),
            duration_until_reset: Some(PbDuration {
                seconds: i64::try_from(reset.saturating_sub(now.as_secs())).unwrap_or(0),
                nanos: 0,
            }),
        });
    }
    if let (Some(c), Ok(mut idle)) = (conn, state.idle.lock()) {
        idle.push(c);
    }
    Ok(RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add: vec![HeaderValue {
            key: "x-rls".into(),
            value: "test-redis".into(),
            raw_value: Vec::new(),
        }],
        request_headers_to_add: Vec::new(),
    })
}

/// The RLS unit matching a window (the protocol only knows whole units).
fn unit_of(window_s: u64) -> Unit {
    match window_s {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

/// A minimal Redis client (RESP2 over TCP, blocking, 500 ms timeouts): the few commands the
/// fixture needs, without the `redis` crate's compile cost.
struct Resp {
    reader: BufReader<TcpStream>,
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// A bulk string (read and dropped: no command used here needs one).
    Bulk,
    Array(Option<Vec<Reply>>),
}

impl Resp {
    fn connect(port: u16) -> Result<Resp> {
        let timeout = Duration::from_millis(500);
        let stream =
            TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            reader: BufReader::new(stream),
        })
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut out = Vec::new();
        Self::encode(&mut out, args);
        self.reader.get_mut().write_all(&out)?;
        self.read()
    }

    /// `MULTI; INCRBY key by; EXPIRE key ttl_s; EXEC` in one write: the new count.
    fn incr_expire(&mut self, key: &[u8], by: u64, ttl_s: u64) -> Result<u64> {
        let (by, ttl) = (by.to_string(), ttl_s.to_string());
        let mut out = Vec::new();
        Self::encode(&mut out, &[b"MULTI"]);
        Self::encode(&mut out, &[b"INCRBY", key, by.as_bytes()]);
        Self::encode(&mut out, &[b"EXPIRE", key, ttl.as_bytes()]);
        Self::encode(&mut out, &[b"EXEC"]);
        self.reader.get_mut().write_all(&out)?;
        for _ in 0..3 {
            if let Reply::Error(e) = self.read()? {
                bail!("{e}");
            }
        }
        match self.read()? {
            Reply::Array(Some(items)) => match items.first() {
                Some(Reply::Int(n)) => Ok(u64::try_from(*n)?),
                other => bail!("EXEC: INCRBY answered {other:?}"),
            },
            other => bail!("EXEC answered {other:?}"),
        }
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read(&mut self) -> Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n >= 0 {
                    let mut buf = vec![0; usize::try_from(n)? + 2];
                    self.reader.read_exact(&mut buf)?;
                }
                Reply::Bulk
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.read()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => bail!("not a RESP reply: {line:?}"),
        })
    }
}
