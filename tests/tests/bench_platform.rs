//! The platform cases of `just bench` (hand-written modules that price Envoy's Wasm filter, a
//! VM entry and each kind of host call) do what their names say. The harness skips callbacks a
//! module does not export, as Envoy does, so each module must make exactly its callbacks and
//! host calls per request; a module with a wrong signature or import would not even load.
//! And the bench's forged-token cases are refused by the real module, as the bench expects.

use anyhow::{Context, Result, anyhow};
use gatewasm_tests::bench::{
    BENCH_PATH, PLATFORM_CASES, forged_token_cases, gateway_config, platform_module_wat,
};
use gatewasm_tests::cost;
use proxy_wasm_harness::{Host, Module, PluginConfig, Worker};
use serde_json::Value;

#[test]
fn platform_modules_make_exactly_the_callbacks_and_host_calls_they_are_named_for() -> Result<()> {
    for case in &PLATFORM_CASES {
        let wasm = wat::parse_str(platform_module_wat(case)?)?;
        let module = Module::from_bytes(case.name, &wasm).map_err(|e| anyhow!("{e}"))?;
        let mut worker = cost::worker(&[PluginConfig::new(&module)
            .name("platform")
            .configuration("{}")])?;
        let request = cost::measure(&mut worker, "not-a-token")?;
        let calls: u64 = case
            .calls
            .iter()
            .map(|(call, times)| call.host_calls() * u64::from(*times))
            .sum();
        assert_eq!(
            request.callbacks,
            case.stream_exports.len() as u64,
            "{}: callbacks",
            case.name
        );
        assert_eq!(request.host_calls, calls, "{}: host calls", case.name);
        // And they are the import the report prices with this case.
        for (call, times) in case.calls {
            assert_eq!(
                request.host_calls_by_name.get(call.import()),
                Some(&u64::from(*times)),
                "{}: calls of {} in {:?}",
                case.name,
                call.import(),
                request.host_calls_by_name
            );
        }
    }
    Ok(())
}

/// The forged-token cases, run through the real jwt-to-header module in the harness: 401
/// `bad_signature`, with no signature check by default and one with PS512 allowed.
#[test]
fn forged_token_cases_are_refused_by_the_real_module() -> Result<()> {
    let gateway = gateway_config()?;
    let cases = forged_token_cases(&gateway)?;
    assert_eq!(cases.len(), 2);
    let module = Module::artifact("jwt-to-header").map_err(|e| anyhow::anyhow!("{e}"))?;
    for (case, checks) in cases.iter().zip([0u64, 1]) {
        assert_eq!(case.expected_status, 401);
        let config = case.filters[0]
            .pointer("/typed_config/config/configuration/value")
            .and_then(Value::as_str)
            .context("no configuration")?;
        let host = Host::new();
        let mut worker = Worker::new(&host, &[PluginConfig::new(&module).configuration(config)])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut request: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", BENCH_PATH),
            (":authority", "acme.tenants.localhost"),
        ];
        request.extend(
            case.headers
                .iter()
                .filter(|(k, _)| k != "host")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let view = worker
            .exchange(&request, None, &[(":status", "200")], None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let reply = view.local_response.context("not refused")?;
        assert_eq!(reply.status, 401, "{}", case.name);
        assert!(
            String::from_utf8_lossy(&reply.body).contains("bad_signature"),
            "{}",
            case.name
        );
        assert_eq!(
            host.counter("gatewasm_jwt_to_header_verify_fallback"),
            checks,
            "{}",
            case.name
        );
    }
    Ok(())
}
