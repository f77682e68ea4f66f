//! A real rate-limit engine for the e2e tests: `tools/limitador-rls`, Kuadrant's Limitador
//! library (Redis storage) served over Envoy's RLS gRPC protocol, as its own binary built once
//! by `just limitador-rls` (outside this crate, so `cargo test` does not compile Limitador).
//! [`LimitadorRls::start`] runs it against a test's own [`crate::rls_server::RedisServer`] with
//! a limits file in Limitador's format — the tests take it verbatim from the rate-limit
//! filter's README ([`readme_limitador_limits`]), so the documented example is the one tested.
//!
//! The hand-written service of [`crate::rls_server`] stays for what Limitador cannot be made to
//! do on cue: hang and fail for the failure-mode tests.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rate_limit::rls::{RateLimitRequest, RateLimitResponse};

use crate::paths::workspace_root;

/// The `limitador-rls` binary: `LIMITADOR_RLS_BIN` if set, else
/// `<target>/limitador-rls/debug/limitador-rls`, where `<target>` is `CARGO_TARGET_DIR`
/// (relative to the workspace root) or the workspace's `target/` — where `just limitador-rls`
/// builds it. Fails with a message naming the recipe when it is missing.
pub fn limitador_rls_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("LIMITADOR_RLS_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) if !dir.is_empty() => workspace_root().join(dir),
                _ => workspace_root().join("target"),
            };
            target.join("limitador-rls/debug/limitador-rls")
        }
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build the Limitador rate-limit service with `just limitador-rls` \
             (`just test` and `just test-e2e` do), or point LIMITADOR_RLS_BIN at it",
            bin.display()
        );
    }
    Ok(bin)
}

/// The limits file of the rate-limit README's Limitador example: the first ```` ```yaml ````
/// block after the paragraph that starts with `**Limitador**`.
pub fn readme_limitador_limits() -> Result<String> {
    let path = workspace_root().join("filters/rate-limit/README.md");
    let readme =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let after = readme
        .split_once("\n**Limitador**")
        .map(|(_, rest)| rest)
        .context("the rate-limit README has no paragraph starting with **Limitador**")?;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(yaml, _)| yaml)
        .context("no ```yaml block after the README's **Limitador** paragraph")?;
    Ok(format!("{block}\n"))
}

/// A running `limitador-rls`; killed on drop.
pub struct LimitadorRls {
    port: u16,
    child: Option<Child>,
    /// The limits file and the server's stderr.
    dir: tempfile::TempDir,
}

impl LimitadorRls {
    /// Starts `limitador-rls` on a free port of 127.0.0.1 with `limits` (Limitador's YAML) and
    /// the Redis on 127.0.0.1:`redis_port`, with `--rate-limit-headers DRAFT_VERSION_03`, and
    /// waits until it serves.
    pub fn start(redis_port: u16, limits: &str) -> Result<Self> {
        let bin = limitador_rls_bin()?;
        let dir = tempfile::tempdir()?;
        let limits_file = dir.path().join("limits.yaml");
        std::fs::write(&limits_file, limits)?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut child = Command::new(&bin)
            .args(["--rls-ip", "127.0.0.1", "--rls-port", "0"])
            .args(["--rate-limit-headers", "DRAFT_VERSION_03"])
            .arg(&limits_file)
            .args(["redis", &format!("redis://127.0.0.1:{redis_port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("limitador-rls stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = LimitadorRls {
            port: 0,
            child: Some(child),
            dir,
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .map(|addr| addr.port());
        match port {
            Some(port) => {
                server.port = port;
                Ok(server)
            }
            None => {
                server.stop();
                bail!(
                    "limitador-rls did not start (stdout {line:?}); its stderr:\n{}",
                    server.stderr()
                );
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("stderr.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LimitadorRls {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `ShouldRateLimit` call to the RLS on 127.0.0.1:`port` (HTTP/2, one connection): the
/// gRPC status and, for status 0, the decoded answer.
pub fn should_rate_limit(
    port: u16,
    request: &RateLimitRequest,
) -> Result<(u32, Option<RateLimitResponse>)> {
    let message = request.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len())?);
    framed.put_slice(&message);
    let req = hyper::Request::post(format!(
        "http://127.0.0.1:{port}{}",
        crate::rls_server::PATH
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(framed.freeze()))?;
    crate::runtime()?.block_on(async move {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        )
        .await??;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
        let collected =
            tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await??;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .context("no grpc-status trailer")?;
        let mut body: Bytes = collected.to_bytes();
        if status != 0 {
            return Ok((status, None));
        }
        if body.remaining() < 5 || body.get_u8() != 0 {
            bail!("not one uncompressed gRPC message");
        }
        let len = usize::try_from(body.get_u32())?;
        if body.remaining() != len {
            bail!("bad gRPC frame length");
        }
        Ok((status, Some(RateLimitResponse::decode(body)?)))
    })
}
