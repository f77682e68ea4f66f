//! `demo-token [--sub S] [--role R] [--tenant T] [--ttl SECONDS] [--iat UNIX]`: prints a JWT signed with the
//! demo key that `envoy-configs/gateway.yaml` trusts (see `gatewasm_devtools::demo_jwt`). Used by
//! `just demo`. DEMO KEY: never trust it outside a demo.

use anyhow::{Context, Result, bail};
use gatewasm_devtools::demo_jwt::{DemoClaims, mint};

fn main() -> Result<()> {
    let mut claims = DemoClaims::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sub" => claims.sub = value()?,
            "--role" => claims.role = value()?,
            "--tenant" => claims.tenant = value()?,
            "--ttl" => {
                claims.ttl =
                    std::time::Duration::from_secs(value()?.parse().context("--ttl takes seconds")?)
            }
            "--iat" => {
                claims.issued_at = Some(value()?.parse().context("--iat takes Unix seconds")?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: demo-token [--sub S] [--role R] [--tenant T] [--ttl SECONDS] [--iat UNIX]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    println!("{}", mint(&claims)?);
    Ok(())
}
