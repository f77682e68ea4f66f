//! Runs a real Envoy for a test or the benchmark.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use gatewasm_devtools::{client, echo::EchoUpstream, envoy::EnvoyBuilder};
//! let upstream = EchoUpstream::start()?;
//! let envoy = EnvoyBuilder::new("gateway.yaml").upstream(upstream.port()).start()?;
//! let resp = client::send(envoy.listen_addr(), &client::Request::get("/"))?;
//! let generated = envoy.counter("gatewasm_correlation_id_generated")?;
//! # Ok(()) }
//! ```
//!
//! [`EnvoyBuilder::start`]:
//! 1. finds the binary ([`crate::paths::envoy_bin`]; fails naming `just envoy`) and checks the
//!    `.wasm` files the config needs exist (fails naming `just build`);
//! 2. renders `envoy-configs/<config>` into a fresh temporary directory with free loopback
//!    ports ([`crate::render::render_config`]);
//! 3. starts `envoy -c … --concurrency N --disable-hot-restart` with stdout and stderr going
//!    to `envoy.log` in that directory. `--disable-hot-restart` means Envoy creates no shared
//!    memory or hot-restart domain socket at all, so any number of Envoys can run in
//!    parallel (a stronger guarantee than distinct `--base-id`s);
//! 4. waits (bounded) until admin `/ready` answers `200` and the listener accepts
//!    connections; if Envoy exits or the deadline passes, the error carries Envoy's log.
//!    A port lost to another process between picking and binding is retried with new ports.
//!
//! The returned [`Envoy`] stops the process on drop — SIGTERM, then SIGKILL after 5 s — also
//! when the test fails or panics; on a panic it prints the tail of Envoy's log and keeps the
//! temporary directory for inspection (set `GATEWASM_KEEP_ENVOY_LOGS=1` to keep it always,
//! e.g. when a test fails by returning an error). On Linux the child also gets `PR_SET_PDEATHSIG`, so an
//! Envoy never outlives a test process that is killed outright (note: that signal fires when
//! the *thread* that started Envoy exits, so keep an [`Envoy`] on the thread that made it).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client;
use crate::paths;
use crate::render::{self, Vars};

/// How long [`EnvoyBuilder::start`] waits for `/ready` unless told otherwise.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The version of the Envoy binary the tests use ([`paths::envoy_bin`]), e.g. `1.40.0`, from
/// `envoy --version` ("envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"), without
/// starting it.
pub fn binary_version() -> Result<String> {
    let bin = paths::envoy_bin()?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version:")
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .map(str::to_string)
        .with_context(|| format!("no version in `{} --version`: {text}", bin.display()))
}

/// Configures and starts an Envoy. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct EnvoyBuilder {
    config: String,
    concurrency: usize,
    upstream_port: Option<u16>,
    upstream2_port: Option<u16>,
    rls_port: Option<u16>,
    ready_timeout: Duration,
    log_level: String,
    args: Vec<String>,
    cpus: Vec<usize>,
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
}

impl EnvoyBuilder {
    /// An Envoy running `envoy-configs/<config>` (e.g. `"gateway.yaml"`).
    ///
    /// Defaults: `--concurrency 1`, log level from `GATEWASM_ENVOY_LOG_LEVEL` or `info`, no
    /// upstream (a free port nobody listens on), [`DEFAULT_READY_TIMEOUT`].
    pub fn new(config: &str) -> Self {
        Self {
            config: config.to_string(),
            concurrency: 1,
            upstream_port: None,
            upstream2_port: None,
            rls_port: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            log_level: std::env::var("GATEWASM_ENVOY_LOG_LEVEL")
                .ok()
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "info".into()),
            args: Vec::new(),
            cpus: Vec::new(),
            wrapper: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Pins Envoy (all its threads) to these CPUs (`sched_setaffinity` before exec), e.g. so a
    /// benchmark's load generator runs on another core. Empty (the default): no pinning.
    pub fn cpus(mut self, cpus: &[usize]) -> Self {
        self.cpus = cpus.to_vec();
        self
    }

    /// The port of the upstream (`{{UPSTREAM_PORT}}`), e.g. an [`crate::echo::EchoUpstream`].
    pub fn upstream(mut self, port: u16) -> Self {
        self.upstream_port = Some(port);
        self
    }

    /// The port of a second upstream (`{{UPSTREAM2_PORT}}`), for configs with two backends
    /// (e.g. `tenant-gateway.yaml`). Without it, a free port nobody listens on.
    pub fn upstream2(mut self, port: u16) -> Self {
        self.upstream2_port = Some(port);
        self
    }

    /// The port of a rate-limit service (`{{RLS_PORT}}`), e.g. a
    /// `gatewasm_tests::limitador_rls::LimitadorRls` or a `gatewasm_tests::rls_server::RlsServer`. Without
    /// it, a free port nobody listens on.
    pub fn rls(mut self, port: u16) -> Self {
        self.rls_port = Some(port);
        self
    }

    /// Envoy's worker thread count (`--concurrency`).
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = workers;
        self
    }

    /// How long to wait for `/ready`.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Envoy's `--log-level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Runs Envoy under this command (program and arguments before Envoy's path), e.g.
    /// `valgrind --tool=callgrind` to count its instructions. The process is then the wrapper's;
    /// valgrind runs Envoy inside its own process, so [`Envoy::pid`] still names it.
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| s.to_string()).collect();
        self
    }

    /// An environment variable for Envoy's process (e.g. `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`,
    /// where Envoy looks for a dynamic module's `lib<name>.so`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// An extra command-line argument for Envoy.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts Envoy and waits until it is ready. See the [module docs](self).
    pub fn start(self) -> Result<Envoy> {
        let bin = paths::envoy_bin()?;
        let configs = paths::envoy_configs_dir();
        let template_path = configs.join(&self.config);
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        paths::check_wasm_references(&template)?;
        for companion in render::companions(&template) {
            let text = std::fs::read_to_string(configs.join(&companion))
                .with_context(|| format!("reading {}", configs.join(&companion).display()))?;
            paths::check_wasm_references(&text)?;
        }

        const ATTEMPTS: usize = 3;
        let mut last_err = None;
        for attempt in 1..=ATTEMPTS {
            match self.start_once(&bin) {
                Ok(envoy) => return Ok(envoy),
                Err(StartError::PortTaken(e)) if attempt < ATTEMPTS => last_err = Some(e),
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("Envoy did not start")))
    }

    fn start_once(&self, bin: &Path) -> Result<Envoy, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("gatewasm-envoy-")
            .tempdir()
            .context("creating a temporary directory for Envoy")?;
        let listen_port = crate::free_port()?;
        let admin_port = crate::free_port()?;
        let upstream_port = match self.upstream_port {
            Some(p) => p,
            None => crate::free_port()?,
        };
        let mut vars = Vars::new();
        vars.insert("LISTEN_PORT".into(), listen_port.to_string());
        vars.insert("ADMIN_PORT".into(), admin_port.to_string());
        vars.insert("UPSTREAM_PORT".into(), upstream_port.to_string());
        let upstream2_port = match self.upstream2_port {
            Some(p) => p,
            None => crate::free_port()?,
        };
        vars.insert("UPSTREAM2_PORT".into(), upstream2_port.to_string());
        let rls_port = match self.rls_port {
            Some(p) => p,
            None => crate::free_port()?,
        };
        vars.insert("RLS_PORT".into(), rls_port.to_string());
        vars.insert("WASM_DIR".into(), paths::wasm_dir().display().to_string());
        let config = render::render_config(&self.config, dir.path(), &vars)?;

        let log_path = dir.path().join("envoy.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--log-level", &self.log_level])
            .arg("--disable-hot-restart")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log);
        die_with_parent(&mut cmd);
        pin_to_cpus(&mut cmd, &self.cpus);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;

        let mut envoy = Envoy {
            child: Some(child),
            dir: Some(dir),
            log_path,
            listen_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, listen_port)),
            admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
            upstream_port,
            config: self.config.clone(),
        };
        match envoy.wait_ready(self.ready_timeout) {
            Ok(()) => Ok(envoy),
            Err(e) => {
                let log = envoy.log();
                envoy.stop();
                let port_taken =
                    log.contains("Address already in use") || log.contains("cannot bind");
                let e = e.context(format!(
                    "Envoy ({}, config {}) did not become ready. Its log:\n{}",
                    bin.display(),
                    self.config,
                    tail(&log, 80)
                ));
                Err(if port_taken {
                    StartError::PortTaken(e)
                } else {
                    StartError::Other(e)
                })
            }
        }
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Restricts the child to `cpus` (no-op when empty).
#[cfg(target_os = "linux")]
pub fn pin_to_cpus(cmd: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    if cpus.is_empty() {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET only writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: see above; CPU_SET ignores CPUs beyond the set's capacity.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: runs in the forked child before exec and only calls sched_setaffinity(2), which
    // is async-signal-safe, on a set copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpus(_cmd: &mut Command, _cpus: &[usize]) {}

/// A running Envoy. Dropping it stops the process (see the [module docs](self)).
#[derive(Debug)]
pub struct Envoy {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    upstream_port: u16,
    config: String,
}

impl Envoy {
    /// The HTTP listener (`{{LISTEN_PORT}}`).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The admin interface (`{{ADMIN_PORT}}`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The upstream port the config was rendered with (`{{UPSTREAM_PORT}}`).
    pub fn upstream_port(&self) -> u16 {
        self.upstream_port
    }

    /// Envoy's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file Envoy's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The Envoy version from admin `/server_info`, e.g. `1.40.0`.
    pub fn server_version(&self) -> Result<String> {
        let info = self.admin_get("/server_info")?.json()?;
        let full = info
            .get("version")
            .and_then(|v| v.as_str())
            .context("admin /server_info has no version")?;
        // "<commit>/<version>/<Clean|Modified>/<RELEASE|DEBUG>/<TLS library>"
        full.split('/')
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("unexpected Envoy version string '{full}'"))
    }

    /// `GET path` on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<client::Response> {
        client::get(self.admin_addr, path)
    }

    /// All counters and gauges from admin `/stats?format=json`, as `(name, value)`.
    ///
    /// Custom metrics defined by a Wasm filter appear here as `wasmcustom.<name>`, e.g.
    /// `wasmcustom.gatewasm_correlation_id_generated` (in `/stats/prometheus` without the
    /// prefix, `-` turned into `_`: see `tests/tests/e2e_metrics.rs`). Histograms are not
    /// included here.
    pub fn stats(&self) -> Result<Vec<(String, u64)>> {
        let resp = self.admin_get("/stats?format=json")?;
        if resp.status != 200 {
            bail!("admin /stats answered {}: {}", resp.status, resp.text());
        }
        let json = resp.json()?;
        let entries = json
            .get("stats")
            .and_then(|s| s.as_array())
            .context("admin /stats JSON has no 'stats' list")?;
        Ok(entries
            .iter()
            .filter_map(|e| {
                let name = e.get("name")?.as_str()?;
                let value = e.get("value")?.as_u64()?;
                Some((name.to_string(), value))
            })
            .collect())
    }

    /// The stats whose name contains `fragment`.
    pub fn stats_matching(&self, fragment: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .stats()?
            .into_iter()
            .filter(|(n, _)| n.contains(fragment))
            .collect())
    }

    /// The value of the one counter or gauge whose name is `name`, or else contains `name`.
    /// Fails if none matches, or several match and none exactly (listing them).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let matching = self.stats_matching(name)?;
        if let Some((_, v)) = matching.iter().find(|(n, _)| n == name) {
            return Ok(*v);
        }
        match matching.as_slice() {
            [(_, v)] => Ok(*v),
            [] => bail!(
                "no stat matching '{name}' in admin /stats (wasm-related stats: {:?})",
                self.stats_matching("wasm").unwrap_or_default()
            ),
            many => bail!("'{name}' is ambiguous in admin /stats: {many:?}"),
        }
    }

    /// Stops Envoy now (SIGTERM, SIGKILL after 5 s) and waits for it. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking on Envoy")?
            {
                bail!("Envoy exited during startup ({status})");
            }
            if Instant::now() >= deadline {
                bail!("admin /ready not ready after {timeout:?} (last: {last})");
            }
            match client::send_with_timeout(
                self.admin_addr,
                &client::Request::get("/ready"),
                Duration::from_secs(1),
            ) {
                Ok(r) if r.status == 200 => {
                    if TcpStream::connect_timeout(&self.listen_addr, Duration::from_secs(1)).is_ok()
                    {
                        return Ok(());
                    }
                    last = format!("/ready is 200 but {} refuses connections", self.listen_addr);
                }
                Ok(r) => last = format!("/ready answered {}: {}", r.status, r.text().trim()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("GATEWASM_KEEP_ENVOY_LOGS").is_some() {
            if let Some(dir) = self.dir.take().map(tempfile::TempDir::keep) {
                eprintln!("Envoy ({}) files kept in {}", self.config, dir.display());
            }
        } else if std::thread::panicking() {
            let dir = self.dir.take().map(tempfile::TempDir::keep);
            eprintln!(
                "---- Envoy ({}) log tail, kept in {} ----\n{}\n---- end of Envoy log ----",
                self.config,
                dir.as_deref().unwrap_or(&self.log_path).display(),
                tail(&self.log(), 60)
            );
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
