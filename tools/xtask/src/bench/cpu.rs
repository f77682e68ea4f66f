//! The CPU-time runner: one Envoy per case and repetition, driven to saturation by wrk for its
//! CPU time per request (read from `/proc/<pid>/stat`), then a paced single-connection probe for
//! p50/p99 latency and `/proc/<pid>/status` for the RSS ([`measure`]); every case repeated,
//! interleaved ([`run`] → [`Results`], summarised with [`Spread`]s). `report.rs` writes the
//! report; `instructions.rs` reuses the probe's connection to count instructions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{BENCH_PATH, Case, envoy_config};
use crate::envoy::{Envoy, EnvoyBuilder};

/// What a run measures and for how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// Interleaved repetitions of every case.
    pub reps: usize,
    /// Warm-up load before measuring.
    pub warmup: Duration,
    /// Saturation load (CPU per request, req/s).
    pub saturate: Duration,
    /// wrk connections during saturation.
    pub connections: usize,
    /// Paced latency probe: requests per second and duration.
    pub paced_rate: u32,
    pub paced: Duration,
    /// CPU for Envoy, CPU for the load generators.
    pub envoy_cpu: usize,
    pub load_cpu: usize,
    /// Envoy's worker threads (`--concurrency`). Every worker has its own Wasm VMs, so the RSS
    /// of a Proxy-Wasm case grows with it; the workers share Envoy's one CPU.
    pub concurrency: usize,
    /// Only cases whose name contains one of these (empty: all).
    pub only: Vec<String>,
}

impl Options {
    /// The full run: 3 repetitions, about 10 s per case and repetition.
    pub fn full() -> Self {
        Self {
            reps: 3,
            warmup: Duration::from_secs(1),
            saturate: Duration::from_secs(5),
            connections: 16,
            paced_rate: 500,
            paced: Duration::from_secs(3),
            envoy_cpu: 0,
            load_cpu: 1,
            concurrency: 1,
            only: Vec::new(),
        }
    }

    /// `--quick`: 3 repetitions, about 3.5 s per case and repetition (under 3 minutes).
    pub fn quick() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            saturate: Duration::from_secs(1),
            paced: Duration::from_millis(500),
            ..Self::full()
        }
    }
}

/// One repetition of one case.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub requests: u64,
    pub seconds: f64,
    pub envoy_cpu_seconds: f64,
    pub cpu_us_per_request: f64,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rss_mib: f64,
}

/// Envoy's user + system CPU time so far.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()
            .context("bad tick count")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Envoy's resident set size in MiB.
pub fn process_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS in /proc/<pid>/status")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// Parses wrk's summary ("N requests in 5.00s, …", "Non-2xx or 3xx responses: N",
/// "Socket errors: connect A, read B, write C, timeout D").
pub fn parse_wrk(output: &str) -> Result<WrkResult> {
    let mut result = WrkResult {
        requests: 0,
        seconds: 0.0,
        non_2xx: 0,
        socket_errors: 0,
    };
    let mut found = false;
    for line in output.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().context("wrk request count")?;
            let secs = rest.split(',').next().unwrap_or("").trim();
            result.seconds = parse_wrk_duration(secs)?;
            found = true;
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = n.trim().parse().context("wrk non-2xx count")?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            result.socket_errors = errors
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    ensure!(found, "no summary in wrk's output:\n{output}");
    Ok(result)
}

fn parse_wrk_duration(s: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("unknown wrk duration {s:?}")
    };
    Ok(number.parse::<f64>().context("wrk duration")? * scale)
}

/// Runs wrk against `addr` on `cpu` for `duration`.
fn wrk(
    addr: SocketAddr,
    cpu: usize,
    duration: Duration,
    connections: usize,
    headers: &[(String, String)],
    script: Option<&Path>,
) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.args(["-t1", &format!("-c{connections}")])
        // wrk takes whole seconds (its units are s, m, h).
        .arg(format!("-d{}s", duration.as_secs_f64().ceil().max(1.0)))
        .arg("--timeout")
        .arg("5s");
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://{addr}{BENCH_PATH}"));
    crate::envoy::pin_to_cpus(&mut cmd, &[cpu]);
    let out = cmd
        .output()
        .context("running wrk (`just bench` installs it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text)
}

/// A wrk script sending the tokens of `tokens_file` in turn (one per line) as the
/// `authorization` header; the other headers are wrk's (`-H`).
fn rotating_token_script(tokens_file: &Path) -> String {
    format!(
        r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  wrk.headers["authorization"] = "Bearer " .. tokens[i]
  return wrk.format()
end
"#,
        tokens_file.display()
    )
}

/// The request bytes: GET [`BENCH_PATH`] with `headers`, the `authorization` one replaced by
/// `Bearer <token>` when a token is given.
pub(super) fn request_bytes(headers: &[(String, String)], token: Option<&str>) -> Vec<u8> {
    let mut request = format!("GET {BENCH_PATH} HTTP/1.1\r\n").into_bytes();
    for (k, v) in headers {
        let v = match token {
            Some(t) if k.eq_ignore_ascii_case("authorization") => format!("Bearer {t}"),
            _ => v.clone(),
        };
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// A blocking HTTP/1.1 keep-alive connection for the paced latency probe.
pub(super) struct Connection {
    pub(super) reader: BufReader<TcpStream>,
}

impl Connection {
    pub(super) fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends the request and reads the whole response; returns the status.
    pub(super) fn round_trip(&mut self, request: &[u8]) -> Result<u16> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Latencies of requests sent one at a time at `rate` per second for `duration` (open loop
/// on one connection: a slow response delays the next send, it is not skipped).
fn paced_latencies(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    headers: &[(String, String)],
    tokens: Option<&[String]>,
    expected_status: u16,
) -> Result<Vec<Duration>> {
    let mut conn = Connection::open(addr)?;
    let fixed = request_bytes(headers, None);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = (duration.as_secs_f64() * f64::from(rate)) as usize;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Measured from when the request was due: queueing behind a slow one counts.
        let sent = due.max(start);
        // Fresh tokens continue where the load left off (end of the list first: long unused).
        let rotated = tokens
            .filter(|t| !t.is_empty())
            .map(|t| request_bytes(headers, Some(&t[t.len() - 1 - i % t.len()])));
        let status = conn.round_trip(rotated.as_deref().unwrap_or(&fixed))?;
        ensure!(
            status == expected_status,
            "paced request answered {status}, not {expected_status}"
        );
        latencies.push(Instant::now().saturating_duration_since(sent));
    }
    Ok(latencies)
}

/// The `q` quantile (0..=1) of `values` (sorted in place), nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// `builder` with [`SEARCH_PATH_VAR`](super::dynamic_module::SEARCH_PATH_VAR) pointing at the
/// libraries' directory when the case's filters load a dynamic module.
pub(super) fn with_dynamic_module(builder: EnvoyBuilder, case: &Case) -> Result<EnvoyBuilder> {
    use super::dynamic_module::{SEARCH_PATH_VAR, library_dir, modules_used};
    let modules = modules_used(&case.filters);
    if modules.is_empty() {
        return Ok(builder);
    }
    Ok(builder.env(
        SEARCH_PATH_VAR,
        &library_dir(&modules)?.display().to_string(),
    ))
}

/// Starts the case's Envoy and measures it once.
pub fn measure(gateway: &Value, case: &Case, opts: &Options, work: &Path) -> Result<Sample> {
    let config_path = work.join(format!("{}.json", slug(&case.name)));
    std::fs::write(&config_path, envoy_config(gateway, case)?)?;
    let envoy: Envoy =
        with_dynamic_module(EnvoyBuilder::new(&config_path.display().to_string()), case)?
            .cpus(&[opts.envoy_cpu])
            .concurrency(opts.concurrency)
            .log_level("warning")
            .start()
            .with_context(|| format!("starting Envoy for {}", case.name))?;
    let pid = envoy.pid().context("Envoy has no pid")?;
    let addr = envoy.listen_addr();
    let script = match &case.rotating_tokens {
        Some(tokens) => {
            let tokens_file = work.join(format!("{}.tokens", slug(&case.name)));
            std::fs::write(&tokens_file, tokens.join("\n") + "\n")?;
            let script = work.join(format!("{}.lua", slug(&case.name)));
            std::fs::write(&script, rotating_token_script(&tokens_file))?;
            Some(script)
        }
        None => None,
    };

    let warm = wrk(
        addr,
        opts.load_cpu,
        opts.warmup,
        opts.connections,
        &case.headers,
        script.as_deref(),
    )?;
    ensure!(
        warm.non_2xx == 0,
        "{}: {} of {} warm-up requests were not 2xx (is the case's configuration right?)",
        case.name,
        warm.non_2xx,
        warm.requests
    );
    let cpu_before = process_cpu(pid)?;
    let run = wrk(
        addr,
        opts.load_cpu,
        opts.saturate,
        opts.connections,
        &case.headers,
        script.as_deref(),
    )?;
    let cpu_after = process_cpu(pid)?;
    // wrk counts every answer that is not 2xx: all of them for a case that expects a refusal.
    let expected_non_2xx = if case.expected_status / 100 == 2 {
        0
    } else {
        run.requests
    };
    ensure!(
        run.non_2xx == expected_non_2xx && run.socket_errors == 0 && run.requests > 0,
        "{}: {} requests, {} not 2xx, {} socket errors",
        case.name,
        run.requests,
        run.non_2xx,
        run.socket_errors
    );
    let cpu = (cpu_after - cpu_before).as_secs_f64();
    let mut latencies: Vec<f64> = paced_latencies(
        addr,
        opts.paced_rate,
        opts.paced,
        &case.headers,
        case.rotating_tokens.as_deref(),
        case.expected_status,
    )?
    .into_iter()
    .map(|d| d.as_secs_f64() * 1e6)
    .collect();
    let rss = process_rss_mib(pid)?;
    Ok(Sample {
        requests: run.requests,
        seconds: run.seconds,
        envoy_cpu_seconds: cpu,
        cpu_us_per_request: cpu * 1e6 / run.requests as f64,
        requests_per_second: run.requests as f64 / run.seconds,
        p50_us: quantile(&mut latencies, 0.50),
        p99_us: quantile(&mut latencies, 0.99),
        rss_mib: rss,
    })
}

/// Every case's samples, in case order.
#[derive(Debug, Default)]
pub struct Results {
    pub cases: Vec<Case>,
    /// samples[case][rep]
    pub samples: Vec<Vec<Sample>>,
    pub elapsed: Duration,
}

/// Runs every case `opts.reps` times, interleaved. Prints progress to stderr.
pub fn run(cases: Vec<Case>, gateway: &Value, opts: &Options) -> Result<Results> {
    let work = tempfile::Builder::new()
        .prefix("gatewasm-bench-")
        .tempdir()?;
    let started = Instant::now();
    let mut samples = vec![Vec::new(); cases.len()];
    for rep in 1..=opts.reps {
        for (i, case) in cases.iter().enumerate() {
            let sample = measure(gateway, case, opts, work.path())?;
            eprintln!(
                "rep {rep}/{}  {:<28} {:>7.2} µs CPU/req  {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  RSS {:>5.1} MiB",
                opts.reps,
                case.name,
                sample.cpu_us_per_request,
                sample.requests_per_second,
                sample.p50_us,
                sample.p99_us,
                sample.rss_mib
            );
            samples[i].push(sample);
        }
    }
    Ok(Results {
        cases,
        samples,
        elapsed: started.elapsed(),
    })
}

/// Median, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        let median = quantile(&mut v, 0.5);
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub(super) fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

impl Results {
    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.cases.iter().position(|c| c.name == name)
    }

    /// Per repetition: this case's CPU/request minus the baseline's of the same repetition.
    pub fn added_cpu(&self, case: usize) -> Vec<f64> {
        let Some(base) = self.index("baseline") else {
            return Vec::new();
        };
        self.samples[case]
            .iter()
            .zip(&self.samples[base])
            .map(|(s, b)| s.cpu_us_per_request - b.cpu_us_per_request)
            .collect()
    }

    pub fn spread(&self, case: usize, f: impl Fn(&Sample) -> f64) -> Spread {
        Spread::of(&self.samples[case].iter().map(f).collect::<Vec<_>>())
    }
}

pub(super) fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() -> Result<()> {
        let out = "Running 5s test @ http://127.0.0.1:1/bench\n  1 threads and 16 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   512.00us  100.00us   3.00ms   90.00%\n  \
                   123456 requests in 5.00s, 12.34MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 7\nRequests/sec:  24691.20\nTransfer/sec:      2.47MB\n";
        let r = parse_wrk(out)?;
        assert_eq!(r.requests, 123_456);
        assert!((r.seconds - 5.0).abs() < 1e-9);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.socket_errors, 3);
        assert!((parse_wrk("1 requests in 900.50ms, 1KB read")?.seconds - 0.9005).abs() < 1e-9);
        assert!(parse_wrk("no summary").is_err());
        Ok(())
    }

    #[test]
    fn quantiles_and_spreads() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.99), 5.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }
}
