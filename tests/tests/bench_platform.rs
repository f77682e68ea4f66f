//! The platform cases of `just bench` (hand-written modules that price Envoy's Wasm filter, a
//! VM entry and each kind of host call) do what their names say. The harness skips callbacks a
//! module does not export, as Envoy does, so each module must make exactly its callbacks and
//! host calls per request; a module with a wrong signature or import would not even load.

use anyhow::{Result, anyhow};
use gatewasm_tests::bench::{PLATFORM_CASES, platform_module_wat};
use gatewasm_tests::cost;
use proxy_wasm_harness::{Module, PluginConfig};

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
    }
    Ok(())
}
