//! #19 in a real Envoy: what Envoy lets through that the filters must not misread.
//!
//! - A lowercase `:method` over HTTP/2: Envoy 1.40 forwards `post` as it came (its HTTP/1 codec
//!   refuses it, HTTP/2 does not), and many upstreams serve it as POST. jwt-to-header's and
//!   rate-limit's method rules must catch it.
//! - Header names with `_` for `-`: with Envoy's default `headers_with_underscores_action:
//!   ALLOW`, `x_user_id` reaches CGI-style upstreams as HTTP_X_USER_ID. The shipped configs
//!   refuse such requests; where the HCM allows them, the filters strip the spellings of their
//!   own headers.
//!
//! Both run `envoy-configs/gateway.yaml` with one rule added (or the underscore action
//! changed), otherwise verbatim; and the same edits of its bundle and chain shapes,
//! `gateway-bundle.yaml` and `gateway-chain.yaml` (`gateway_shapes!`).

use std::path::Path;

use anyhow::{Result, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::demo_jwt::{DemoClaims, mint};
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::EnvoyBuilder;
use gatewasm_tests::{gateway_shapes, paths};

/// `config` (gateway.yaml or one of its shapes) with these edits, the rest verbatim.
fn gateway_with(config: &str, dir: &Path, edits: &[(&str, &str)]) -> Result<String> {
    paths::edited_envoy_config(dir, config, edits)
}

const JWT_RULES: &str = r#"{"match": {"regex": "(/t/[^/]+)?/api/.*"}, "requires": "demo"},"#;
const RL_RULES: &str = r#"{"name": "per-client", "match": {"path_prefix": "/api/"},"#;

fn lowercase_methods_over_http2_do_not_skip_method_rules(config: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = gateway_with(
        config,
        dir.path(),
        &[
            (
                JWT_RULES,
                &format!(
                    r#"{{"match": {{"prefix": "/write/", "methods": ["POST", "PUT", "DELETE"]}}, "requires": "demo"}},
                        {JWT_RULES}"#
                ),
            ),
            (
                RL_RULES,
                &format!(
                    r#"{{"name": "login", "match": {{"path_prefix": "/login", "methods": ["POST"]}},
                         "key": ["client_ip"], "limit": 1, "window_s": 60, "max_keys": 100}},
                        {RL_RULES}"#
                ),
            ),
        ],
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(&config)
        .upstream(upstream.port())
        .upstream2(upstream.port())
        .start()?;
    let send = |method: &str, path: &str| {
        let mut req = Request::get(path);
        req.method = method.into();
        client::send_h2(envoy.listen_addr(), &req)
    };

    // jwt-to-header: POST-only token rule; the catch-all lets token-less requests through.
    for method in ["POST", "post", "PoSt", "delete"] {
        let resp = send(method, "/write/x")?;
        ensure!(
            resp.status == 401,
            "{method} /write/x without a token: {} {}",
            resp.status,
            resp.text()
        );
    }
    let resp = send("GET", "/write/x")?;
    ensure!(resp.status == 200, "GET needs no token: {}", resp.status);
    // The upstream really sees the lowercase method (what made the bypass one).
    let token = mint(&DemoClaims::default())?;
    let mut req = Request::get("/write/x").header("authorization", format!("Bearer {token}"));
    req.method = "post".into();
    let resp = client::send_h2(envoy.listen_addr(), &req)?;
    ensure!(resp.status == 200, "post with a token: {}", resp.status);
    let seen = Echoed::from_response(&resp)?;
    ensure!(seen.method == "post", "upstream saw {}", seen.method);

    // rate-limit: `POST /login` once a minute per client, whatever the case of the method.
    let statuses: Vec<u16> = ["POST", "post", "PoSt"]
        .iter()
        .map(|m| send(m, "/login").map(|r| r.status))
        .collect::<Result<_>>()?;
    ensure!(statuses == [200, 429, 429], "{statuses:?}");
    Ok(())
}
gateway_shapes!(lowercase_methods_over_http2_do_not_skip_method_rules);

fn underscore_spellings_of_filter_headers_never_reach_the_upstream(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let token = mint(&DemoClaims::default())?;
    let spoofed = || {
        Request::get("/api/orders")
            .header("authorization", format!("Bearer {token}"))
            .header("x_user_id", "mallory")
            .header("x_user-role", "root")
            .header("x_tenant_id", "globex")
    };

    // As shipped: Envoy refuses the request before any filter runs.
    let envoy = EnvoyBuilder::new(config)
        .upstream(upstream.port())
        .upstream2(upstream.port())
        .start()?;
    let resp = client::send(envoy.listen_addr(), &spoofed())?;
    ensure!(resp.status == 400, "REJECT_REQUEST: {}", resp.status);
    drop(envoy);

    // With Envoy's default (ALLOW): the filters strip the spellings of their own headers.
    let dir = tempfile::tempdir()?;
    let config = gateway_with(
        config,
        dir.path(),
        &[(
            "headers_with_underscores_action: REJECT_REQUEST",
            "headers_with_underscores_action: ALLOW",
        )],
    )?;
    let envoy = EnvoyBuilder::new(&config)
        .upstream(upstream.port())
        .upstream2(upstream.port())
        .start()?;
    let resp = client::send(envoy.listen_addr(), &spoofed().header("x_other", "kept"))?;
    ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
    let seen = Echoed::from_response(&resp)?;
    for spoof in ["x_user_id", "x_user-role", "x_tenant_id"] {
        ensure!(
            seen.header(spoof).is_none(),
            "{spoof} reached the upstream: {:?}",
            seen.headers
        );
    }
    ensure!(
        seen.header_all("x-user-id") == ["alice"],
        "{:?}",
        seen.headers
    );
    ensure!(
        seen.header_all("x-tenant-id") == ["acme"],
        "{:?}",
        seen.headers
    );
    ensure!(seen.header("x_other") == Some("kept"), "{:?}", seen.headers);
    Ok(())
}
gateway_shapes!(underscore_spellings_of_filter_headers_never_reach_the_upstream);
