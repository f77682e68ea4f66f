//! The cases of `just bench`: the [`Case`] type (one Envoy configuration to measure, with the
//! requests it gets), the baseline, each gatewasm filter of `envoy-configs/gateway.yaml` alone and
//! their chain, Envoy's native equivalents and their chain, and the JWT cases with a fresh or a
//! forged token per request. The platform cases come from `platform.rs`; `config.rs` turns a case
//! into an Envoy config.

use crate::demo_jwt::b64url;
use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::dynamic_module;
use super::platform::platform_filter;
use super::{PLATFORM_CASES, WASM_FLOOR, gateway_wasm_filters, idle_wasm_filter};

/// Which family a case belongs to (for the report and chart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Baseline,
    Gatewasm,
    Native,
    /// The gatewasm filters as an Envoy dynamic module (`libgatewasm_envoy.so`), no Wasm VM.
    NativeModule,
    /// Hand-written modules that price the platform: a VM entry, each kind of host call.
    Platform,
}

/// One Envoy configuration to measure.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub family: Family,
    /// HTTP filters before the router, as Envoy JSON.
    pub filters: Vec<Value>,
    /// Let Envoy's connection manager generate request IDs (the native request-id case).
    pub native_request_id: bool,
    /// The native case this one is compared with, if any.
    pub native_equivalent: Option<String>,
    /// For a native-module case: the Proxy-Wasm case that runs the same filters with the same
    /// configurations, which the report compares it with.
    pub proxy_wasm_self: Option<String>,
    /// Extra request headers this case needs (e.g. a JWT).
    pub headers: Vec<(String, String)>,
    /// Distinct tokens to send in turn as `authorization: Bearer …` (a fresh token per
    /// request: more tokens than any verified-token cache holds, sent in order, so an LRU never
    /// hits). `None`: every request carries the token in `headers`.
    pub rotating_tokens: Option<std::sync::Arc<[String]>>,
    /// The status every request must get (200, or 401 for the forged-token cases).
    pub expected_status: u16,
}

/// The path every request asks for: under /api/, where gateway.yaml requires a token and
/// applies its rate limits.
pub const BENCH_PATH: &str = "/api/bench";

/// Request headers every case gets: what an authenticated edge request of tenant acme looks
/// like (`token`: a demo-IdP JWT, see [`crate::demo_jwt`]).
pub fn common_headers(token: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = [
        ("host", "acme.tenants.localhost"),
        ("user-agent", "gatewasm-bench"),
        ("accept", "*/*"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    headers.push(("authorization".into(), format!("Bearer {token}")));
    headers
}

/// How many distinct tokens a fresh-token case cycles through: five times the verified-token
/// caches of gateway.yaml's jwt-to-header (1000 entries per worker) and of the native
/// `jwt_authn (cache)` case, so every request misses.
pub const FRESH_TOKENS: usize = 5000;

/// The fresh-token cases: gateway.yaml's jwt-to-header and native `jwt_authn` (no cache: it
/// would miss anyway), each request carrying a token neither has seen — the cost of a
/// signature verification, which the repeated-token cases hide behind the caches.
/// The names of [`fresh_token_cases`] (to know whether a run needs its tokens).
/// The third is the same jwt-to-header on the dynamic module (`<case> (native module)`, see
/// [`native_module_name`]): its signature checks are the module's own (ring), not Envoy's.
pub const FRESH_TOKEN_CASES: [&str; 3] = [
    "jwt-to-header (fresh tokens)",
    "native jwt_authn (fresh tokens)",
    "jwt-to-header (fresh tokens) (native module)",
];

pub fn fresh_token_cases(
    gateway: &Value,
    token: &str,
    tokens: std::sync::Arc<[String]>,
) -> Result<Vec<Case>> {
    let jwt = gateway_wasm_filters(gateway)?
        .into_iter()
        .find(|(name, _)| name == "jwt-to-header")
        .map(|(_, f)| f)
        .context("gateway.yaml has no jwt-to-header filter")?;
    let module = dynamic_module::single("jwt-to-header", &jwt)?;
    let case = |name: &str, family, filter: Value, native: Option<&str>| Case {
        name: name.to_string(),
        family,
        filters: vec![filter],
        native_request_id: false,
        native_equivalent: native.map(str::to_string),
        proxy_wasm_self: None,
        headers: common_headers(token),
        rotating_tokens: Some(tokens.clone()),
        expected_status: 200,
    };
    Ok(vec![
        case(
            FRESH_TOKEN_CASES[0],
            Family::Gatewasm,
            jwt,
            Some(FRESH_TOKEN_CASES[1]),
        ),
        case(
            FRESH_TOKEN_CASES[1],
            Family::Native,
            native_jwt_authn(false),
            None,
        ),
        Case {
            proxy_wasm_self: Some(FRESH_TOKEN_CASES[0].to_string()),
            ..case(
                FRESH_TOKEN_CASES[2],
                Family::NativeModule,
                module,
                Some(FRESH_TOKEN_CASES[1]),
            )
        },
    ])
}

/// The forged-token cases (#19): gateway.yaml's jwt-to-header with its provider's keys
/// replaced by four RSA keys without `alg` (as Entra publishes them), and every request carrying
/// the same unsigned `{"alg":"PS512"}` token without `kid`, plausible claims and a 256-byte
/// garbage signature — answered 401. By default keys without `alg` do not serve PS*, so no
/// signature is checked; with `algorithms: ["RS256","PS512"]` one pure-Rust PSS check is (the
/// per-request cap). Before #19 it was one per key: 85.9M Wasm instructions per request.
pub const FORGED_TOKEN_CASES: [&str; 2] = [
    "jwt-to-header (forged PS512 token)",
    "jwt-to-header (forged PS512 token, PS512 allowed)",
];

pub fn forged_token_cases(gateway: &Value) -> Result<Vec<Case>> {
    let jwt = gateway_wasm_filters(gateway)?
        .into_iter()
        .find(|(name, _)| name == "jwt-to-header")
        .map(|(_, f)| f)
        .context("gateway.yaml has no jwt-to-header filter")?;
    let mut keys = Vec::with_capacity(4);
    for _ in 0..4 {
        use jwt_simple::prelude::RS256KeyPair;
        let c = RS256KeyPair::generate(2048)
            .map_err(|e| anyhow::anyhow!("RSA key: {e}"))?
            .public_key()
            .to_components();
        keys.push(json!({"kty": "RSA", "n": b64url(&c.n), "e": b64url(&c.e)}));
    }
    let claims = json!({
        "iss": crate::demo_jwt::DEMO_ISSUER,
        "aud": crate::demo_jwt::DEMO_AUDIENCE,
        "sub": "mallory",
        "tenant": "acme",
        "exp": 4_000_000_000u64,
    });
    let forged = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"PS512","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(&[0x5a; 256])
    );
    let with_keys = |algorithms: Option<Value>| -> Result<Value> {
        let mut filter = jwt.clone();
        let value = filter
            .pointer_mut("/typed_config/config/configuration/value")
            .context("jwt-to-header filter without a configuration value")?;
        let mut config: Value = serde_json::from_str(value.as_str().unwrap_or_default())
            .context("jwt-to-header configuration is not JSON")?;
        let providers = config
            .get_mut("providers")
            .and_then(Value::as_object_mut)
            .context("jwt-to-header configuration without providers")?;
        for provider in providers.values_mut() {
            provider["jwks"] = json!({"keys": keys});
            if let Some(algorithms) = &algorithms {
                provider["algorithms"] = algorithms.clone();
            }
        }
        *value = Value::String(config.to_string());
        Ok(filter)
    };
    let case = |name: &str, filter: Value| Case {
        name: name.to_string(),
        family: Family::Gatewasm,
        filters: vec![filter],
        native_request_id: false,
        native_equivalent: None,
        proxy_wasm_self: None,
        headers: common_headers(&forged),
        rotating_tokens: None,
        expected_status: 401,
    };
    Ok(vec![
        case(FORGED_TOKEN_CASES[0], with_keys(None)?),
        case(
            FORGED_TOKEN_CASES[1],
            with_keys(Some(json!(["RS256", "PS512"])))?,
        ),
    ])
}

/// Envoy's `header_mutation` adding two request headers and one response header: the native
/// stand-in for a header-setting filter (tenant-routing, trace-propagation).
pub fn native_header_mutation() -> Value {
    let set = |k: &str, v: &str| json!({"append": {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}});
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [set("x-tenant-id", "acme"), set("x-tenant-cluster", "tenant_acme")],
                "response_mutations": [set("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736")]
            }
        }
    })
}

/// Envoy's `local_ratelimit` with a bucket that never runs dry (the cost of the check).
pub fn native_local_ratelimit() -> Value {
    let always = |key: &str| json!({"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}});
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": always("bench_rl_enabled"),
            "filter_enforced": always("bench_rl_enforced")
        }
    })
}

/// Envoy's `jwt_authn` verifying the demo IdP's ES256 tokens (the same JWKS, issuer, audience
/// and claim headers as gateway.yaml's jwt-to-header), optionally with its verified-token cache.
pub fn native_jwt_authn(cache: bool) -> Value {
    let mut provider = json!({
        "issuer": crate::demo_jwt::DEMO_ISSUER,
        "audiences": [crate::demo_jwt::DEMO_AUDIENCE],
        "local_jwks": {"inline_string": crate::demo_jwt::DEMO_JWKS},
        "claim_to_headers": [
            {"header_name": "x-user-id", "claim_name": "sub"},
            {"header_name": "x-user-role", "claim_name": "role"},
            {"header_name": "x-jwt-tenant", "claim_name": "tenant"}
        ]
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"demo": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}}]
        }
    })
}

/// The module of the bundle and chain shapes, in `{{WASM_DIR}}`.
pub const BUNDLE_FILE: &str = "gatewasm.wasm";

/// The VM id every plugin of the bundle shares (one VM per worker).
pub const BUNDLE_VM_ID: &str = "gatewasm";

/// A gatewasm filter of gateway.yaml loaded from the bundle instead of its own module: root id
/// `root_id`, the bundle's VM id; its name and configuration unchanged.
fn from_bundle(filter: &Value, root_id: &str) -> Value {
    let mut filter = filter.clone();
    if let Some(config) = filter.pointer_mut("/typed_config/config") {
        config["root_id"] = json!(root_id);
        config["vm_config"]["vm_id"] = json!(BUNDLE_VM_ID);
        config["vm_config"]["code"] =
            json!({"local": {"filename": format!("{{{{WASM_DIR}}}}/{BUNDLE_FILE}")}});
    }
    filter
}

/// Bundle mode: gateway.yaml's gatewasm filters, each loaded from the bundle with its filter's
/// root id (five plugins, one VM per worker).
pub fn bundle_filters(wasm: &[(String, Value)]) -> Vec<Value> {
    wasm.iter()
        .map(|(name, filter)| from_bundle(filter, name))
        .collect()
}

/// Chain mode: one filter (root id `chain`) whose stages are gateway.yaml's gatewasm filters in
/// order, each with its configuration; the first filter's failure policy and name prefix.
pub fn chain_mode_filter(wasm: &[(String, Value)]) -> Result<Value> {
    let stages = dynamic_module::chain_config(wasm)?;
    let (_, first) = wasm
        .first()
        .context("gateway.yaml has no gatewasm filter")?;
    let mut chain = from_bundle(first, "chain");
    chain["name"] = json!("gatewasm.chain");
    if let Some(config) = chain.pointer_mut("/typed_config/config") {
        config["name"] = json!("gatewasm.chain");
        config["configuration"]["value"] = json!(stages.to_string());
        config["failure_policy"] = json!("FAIL_CLOSED");
    }
    Ok(chain)
}

/// The name of a gatewasm filter's case on the dynamic module: `<filter> (native module)`, so
/// that `--only <filter>` selects it with the filter's Proxy-Wasm case, and `--only "native
/// module"` selects every native-module case.
pub fn native_module_name(filter: &str) -> String {
    format!("{filter} (native module)")
}

/// The cases: baseline, each gatewasm filter of gateway.yaml alone (on Proxy-Wasm and on the
/// dynamic module), the gatewasm chain in its shapes (separate, bundle, chain mode; on the
/// dynamic module chain mode and separate), the native equivalents and the native chain.
pub fn cases(gateway: &Value, token: &str) -> Result<Vec<Case>> {
    let wasm = gateway_wasm_filters(gateway)?;
    let headers = common_headers(token);
    let case = |name: &str, family, filters: Vec<Value>, native: Option<&str>| Case {
        name: name.to_string(),
        family,
        filters,
        native_request_id: false,
        native_equivalent: native.map(str::to_string),
        proxy_wasm_self: None,
        headers: headers.clone(),
        rotating_tokens: None,
        expected_status: 200,
    };
    let mut out = vec![case("baseline", Family::Baseline, vec![], None)];
    out.push(case(
        WASM_FLOOR,
        Family::Gatewasm,
        vec![idle_wasm_filter()],
        None,
    ));
    for (index, platform) in PLATFORM_CASES.iter().enumerate() {
        out.push(case(
            platform.name,
            Family::Platform,
            vec![platform_filter(index)],
            None,
        ));
    }
    for platform in &dynamic_module::DYNAMIC_MODULE_PLATFORM_CASES {
        out.push(case(
            platform.name,
            Family::Platform,
            vec![platform.filter()],
            None,
        ));
    }
    for (name, filter) in &wasm {
        let native = match name.as_str() {
            "correlation-id" => Some("native request-id"),
            "trace-propagation" | "tenant-routing" => Some("native header_mutation"),
            "rate-limit" => Some("native local_ratelimit"),
            "jwt-to-header" => Some("native jwt_authn (cache)"),
            _ => None,
        };
        out.push(case(name, Family::Gatewasm, vec![filter.clone()], native));
        let mut own = case(
            &native_module_name(name),
            Family::NativeModule,
            vec![dynamic_module::single(name, filter)?],
            native,
        );
        own.proxy_wasm_self = Some(name.clone());
        out.push(own);
    }
    out.push(case(
        &format!("gatewasm chain ({})", wasm.len()),
        Family::Gatewasm,
        wasm.iter().map(|(_, f)| f.clone()).collect(),
        Some("native chain"),
    ));
    out.push(case(
        &format!("gatewasm bundle ({})", wasm.len()),
        Family::Gatewasm,
        bundle_filters(&wasm),
        Some("native chain"),
    ));
    out.push(case(
        &format!("gatewasm chain mode ({})", wasm.len()),
        Family::Gatewasm,
        vec![chain_mode_filter(&wasm)?],
        Some("native chain"),
    ));
    let mut chain = case(
        &format!("native module chain mode ({})", wasm.len()),
        Family::NativeModule,
        vec![dynamic_module::chain(&wasm)?],
        Some("native chain"),
    );
    chain.proxy_wasm_self = Some(format!("gatewasm chain mode ({})", wasm.len()));
    out.push(chain);
    let mut separate = case(
        &format!("native module ({} separate)", wasm.len()),
        Family::NativeModule,
        dynamic_module::separate(&wasm)?,
        Some("native chain"),
    );
    separate.proxy_wasm_self = Some(format!("gatewasm chain ({})", wasm.len()));
    out.push(separate);
    let mut request_id = case("native request-id", Family::Native, vec![], None);
    request_id.native_request_id = true;
    out.push(request_id);
    out.push(case(
        "native header_mutation",
        Family::Native,
        vec![native_header_mutation()],
        None,
    ));
    out.push(case(
        "native local_ratelimit",
        Family::Native,
        vec![native_local_ratelimit()],
        None,
    ));
    out.push(case(
        "native jwt_authn",
        Family::Native,
        vec![native_jwt_authn(false)],
        None,
    ));
    out.push(case(
        "native jwt_authn (cache)",
        Family::Native,
        vec![native_jwt_authn(true)],
        None,
    ));
    let mut chain = case(
        "native chain",
        Family::Native,
        vec![
            native_jwt_authn(true),
            native_header_mutation(),
            native_local_ratelimit(),
        ],
        None,
    );
    chain.native_request_id = true;
    out.push(chain);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{envoy_config, gateway_config};

    #[test]
    fn cases_come_from_gateway_yaml_with_a_direct_response() -> Result<()> {
        let gateway = gateway_config()?;
        let cases = cases(&gateway, "t.o.ken")?;
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        for want in [
            "baseline",
            "correlation-id",
            "trace-propagation",
            "tenant-routing",
            "native request-id",
            "native header_mutation",
            "native local_ratelimit",
            "native chain",
            "native jwt_authn",
            "jwt-to-header",
            "rate-limit",
            "correlation-id (native module)",
            "rate-limit (native module)",
            "native module chain mode (5)",
            "native module (5 separate)",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // `--only <filter>` selects a filter's Proxy-Wasm case and its native-module case;
        // `--only "native module"` every native-module case and nothing else.
        let selected = |only: &str| -> Vec<&str> {
            names.iter().copied().filter(|n| n.contains(only)).collect()
        };
        assert_eq!(
            selected("tenant-routing"),
            ["tenant-routing", "tenant-routing (native module)"]
        );
        let native_module: Vec<&str> = cases
            .iter()
            .filter(|c| c.family == Family::NativeModule)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(selected("native module"), native_module);
        assert_eq!(native_module.len(), 7, "{native_module:?}");
        // `--only "dynamic-module filter"`: the dynamic-module platform cases, each loading the
        // platform library (not gatewasm's) with its own configuration.
        let platform = selected("dynamic-module filter");
        assert_eq!(
            platform,
            dynamic_module::DYNAMIC_MODULE_PLATFORM_CASES
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
        );
        for name in platform {
            let case = cases.iter().find(|c| c.name == name).context("a case")?;
            assert_eq!(case.family, Family::Platform);
            assert_eq!(
                dynamic_module::modules_used(&case.filters),
                [dynamic_module::PLATFORM_MODULE_NAME]
            );
        }
        let writes = dynamic_module::DYNAMIC_MODULE_PLATFORM_CASES
            .iter()
            .find(|c| c.name.ends_with("8 response header writes"))
            .context("the response-header write case")?;
        let value = writes
            .filter()
            .pointer("/typed_config/filter_config/value")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("a filter_config value")?;
        assert_eq!(
            serde_json::from_str::<Value>(&value)?,
            json!({"response_header_writes": 8})
        );
        for case in cases.iter().filter(|c| c.family == Family::NativeModule) {
            let own = case
                .proxy_wasm_self
                .as_deref()
                .context("a Proxy-Wasm self")?;
            assert!(names.contains(&own), "{}: {own} is not a case", case.name);
        }
        let chain = cases
            .iter()
            .find(|c| c.name.starts_with("gatewasm chain"))
            .context("no chain")?;
        let config = envoy_config(&gateway, chain)?;
        assert!(config.contains("{{LISTEN_PORT}}") && config.contains("{{WASM_DIR}}"));
        let parsed: Value = serde_json::from_str(
            &config
                .replace("{{LISTEN_PORT}}", "1")
                .replace("{{ADMIN_PORT}}", "2"),
        )?;
        let filters = parsed
            .pointer(
                "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
            )
            .and_then(Value::as_array)
            .context("filters")?;
        assert_eq!(
            filters.len(),
            chain.filters.len() + 1,
            "the chain, then the router"
        );
        assert_eq!(
            filters.last().and_then(|f| f["name"].as_str()),
            Some("envoy.filters.http.router")
        );
        let routes = parsed
            .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
            .and_then(Value::as_array)
            .context("routes")?;
        assert_eq!(routes.len(), 1, "gateway.yaml's routes are replaced");
        assert_eq!(routes[0]["direct_response"]["status"], 200);
        assert_eq!(parsed["static_resources"]["clusters"], json!([]));
        Ok(())
    }

    #[test]
    fn fresh_token_cases_include_the_native_module_against_its_proxy_wasm_self() -> Result<()> {
        let gateway = gateway_config()?;
        let tokens: std::sync::Arc<[String]> = vec!["a.b.c".to_string()].into();
        let fresh = fresh_token_cases(&gateway, "t.o.ken", tokens)?;
        let names: Vec<&str> = fresh.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, FRESH_TOKEN_CASES);
        assert_eq!(
            FRESH_TOKEN_CASES[2],
            native_module_name(FRESH_TOKEN_CASES[0])
        );
        let module = &fresh[2];
        assert_eq!(module.family, Family::NativeModule);
        assert!(dynamic_module::uses_module(&module.filters));
        assert_eq!(
            module.proxy_wasm_self.as_deref(),
            Some(FRESH_TOKEN_CASES[0])
        );
        assert!(fresh.iter().all(|c| c.rotating_tokens.is_some()));
        // `--only "jwt-to-header (fresh tokens)"` selects the Proxy-Wasm and module cases.
        let selected: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.contains(FRESH_TOKEN_CASES[0]))
            .collect();
        assert_eq!(selected, [FRESH_TOKEN_CASES[0], FRESH_TOKEN_CASES[2]]);
        Ok(())
    }

    #[test]
    fn bundle_and_chain_mode_run_gateway_yamls_filters_from_one_module() -> Result<()> {
        let gateway = gateway_config()?;
        let wasm = gateway_wasm_filters(&gateway)?;
        let names: Vec<&str> = wasm.iter().map(|(n, _)| n.as_str()).collect();
        let bundle = bundle_filters(&wasm);
        assert_eq!(bundle.len(), wasm.len());
        for ((name, own), bundled) in wasm.iter().zip(&bundle) {
            let config = &bundled["typed_config"]["config"];
            assert_eq!(config["root_id"], json!(name));
            assert_eq!(config["vm_config"]["vm_id"], json!(BUNDLE_VM_ID));
            assert_eq!(
                config["vm_config"]["code"]["local"]["filename"],
                json!("{{WASM_DIR}}/gatewasm.wasm")
            );
            assert_eq!(
                config["configuration"],
                own["typed_config"]["config"]["configuration"]
            );
        }
        let chain = chain_mode_filter(&wasm)?;
        let config = &chain["typed_config"]["config"];
        assert_eq!(config["root_id"], json!("chain"));
        let value: Value = serde_json::from_str(
            config["configuration"]["value"]
                .as_str()
                .context("a string value")?,
        )?;
        let stages = value["stages"].as_array().context("stages")?;
        let stage_names: Vec<&str> = stages.iter().filter_map(|s| s["filter"].as_str()).collect();
        assert_eq!(stage_names, names);
        for ((_, own), stage) in wasm.iter().zip(stages) {
            let own: Value = serde_json::from_str(
                own["typed_config"]["config"]["configuration"]["value"]
                    .as_str()
                    .context("a string value")?,
            )?;
            assert_eq!(stage["config"], own);
        }
        Ok(())
    }
}
