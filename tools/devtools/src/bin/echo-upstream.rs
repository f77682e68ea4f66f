//! `echo-upstream --port N [--quiet]`: the tests' echo upstream as a standalone server (used by
//! `just demo`). Answers every request with JSON describing what it received (see
//! `gatewasm_devtools::echo`) and prints one line per request unless `--quiet`. Runs until
//! SIGINT/SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use gatewasm_devtools::echo::EchoUpstream;

fn main() -> Result<()> {
    let mut port: u16 = 8081;
    let mut verbose = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .context("--port needs a value")?
                    .parse()
                    .context("--port must be a port number")?;
            }
            "--quiet" => verbose = false,
            "-h" | "--help" => {
                println!("usage: echo-upstream [--port N] [--quiet]");
                return Ok(());
            }
            other => {
                bail!("unknown argument '{other}' (usage: echo-upstream [--port N] [--quiet])")
            }
        }
    }
    let server = EchoUpstream::serve(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), verbose)?;
    println!("echo-upstream: listening on http://{}", server.addr());
    gatewasm_devtools::runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    drop(server);
    Ok(())
}
