//! What one `envoy.filters.http.dynamic_modules` filter of this module runs, host-free:
//! `filter_name` names one of the five filters or `chain`, and `filter_config` is exactly the
//! JSON that filter's Wasm plugin takes (for `chain`, the bundle's chain-mode JSON), parsed by
//! the same code ([`gatewasm_chain_plan`], each filter's `config` module) with the same errors.
//!
//! [`Spec::parse`] only reads the names and the chain's shape; a configuration is accepted
//! once it also builds ([`crate::pipeline::Pipeline::build`]), which parses every filter's
//! configuration with its own parser (errors name the field).

use gatewasm_chain_plan::{CHAIN, FilterKind, StagePlan, parse_chain};
use gatewasm_common::ConfigError;

/// A filter instance's plan: its stages (one for a single filter) and how errors are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub plans: Vec<StagePlan>,
    /// `filter_name` was `chain`: errors are reported under `stages[i].config`.
    pub chain: bool,
}

impl Spec {
    /// The log prefix of this instance, as the Wasm hosts use it (`rate-limit: …`,
    /// `gatewasm chain: …`).
    pub fn label(&self) -> &'static str {
        match (self.chain, self.plans.first()) {
            (false, Some(plan)) => plan.kind.name(),
            _ => "gatewasm chain",
        }
    }

    /// `filter_name` and `filter_config` (empty: the filter's defaults; a chain needs stages).
    pub fn parse(filter_name: &str, config: &[u8]) -> Result<Spec, ConfigError> {
        let bytes = (!config.is_empty()).then_some(config);
        if filter_name == CHAIN {
            return Ok(Spec {
                plans: parse_chain(bytes)?,
                chain: true,
            });
        }
        let kind = FilterKind::ALL
            .into_iter()
            .find(|k| k.name() == filter_name)
            .ok_or_else(|| {
                let names: Vec<&str> = FilterKind::ALL.iter().map(|k| k.name()).collect();
                ConfigError::new(
                    "filter_name",
                    format!(
                        "{filter_name:?} names no gatewasm filter: use one of {}, or {CHAIN}",
                        names.join(", ")
                    ),
                )
            })?;
        Ok(Spec {
            plans: vec![StagePlan {
                kind,
                config: bytes.map(<[u8]>::to_vec),
            }],
            chain: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use gatewasm_common::stage::Counter;

    fn build(name: &str, config: &str) -> Result<Pipeline, ConfigError> {
        let spec = Spec::parse(name, config.as_bytes())?;
        Pipeline::build(&spec.plans, spec.chain, &mut |_| Counter(None))
    }

    fn error(name: &str, config: &str) -> String {
        match build(name, config) {
            Ok(_) => panic!("{name} {config} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_filter_name_names_a_filter_or_the_chain() {
        let spec = Spec::parse("rate-limit", b"").unwrap();
        assert_eq!(spec.plans.len(), 1);
        assert_eq!(spec.plans[0].kind, FilterKind::RateLimit);
        assert_eq!(spec.plans[0].config, None, "empty: the filter's defaults");
        assert_eq!(spec.label(), "rate-limit");
        let spec = Spec::parse("chain", br#"{"stages": [{"filter": "correlation-id"}]}"#).unwrap();
        assert!(spec.chain);
        assert_eq!(spec.label(), "gatewasm chain");
        let err = Spec::parse("auth", b"").unwrap_err();
        assert_eq!(err.path(), "filter_name");
        assert!(
            err.message().contains("\"auth\" names no gatewasm filter"),
            "{err}"
        );
    }

    #[test]
    fn every_filter_builds_from_its_wasm_configuration() {
        for kind in FilterKind::ALL {
            // Each filter's defaults (tenant-routing needs tenants, rate-limit a rule).
            let config = match kind {
                FilterKind::TenantRouting => {
                    r#"{"tenants": {"public": {"cluster": "c"}}, "default_tenant": "public"}"#
                }
                FilterKind::RateLimit => {
                    r#"{"rules": [{"name": "a", "key": ["client_ip"], "limit": 5, "window_s": 1}]}"#
                }
                _ => "",
            };
            if let Err(e) = build(kind.name(), config) {
                panic!("{}: {e}", kind.name());
            }
        }
    }

    #[test]
    fn errors_name_the_field_as_the_wasm_plugin_does() {
        let limit = error(
            "rate-limit",
            r#"{"rules": [{"name": "a", "key": ["client_ip"], "limit": 0, "window_s": 1}]}"#,
        );
        assert_eq!(limit, "rules[0].limit: must be > 0");
        let single = error("correlation-id", r#"{"max_length": "long"}"#);
        assert!(single.starts_with("max_length: "), "{single}");
        let chained = error(
            "chain",
            r#"{"stages": [{"filter": "trace-propagation"}, {"filter": "correlation-id", "config": {"max_length": "long"}}]}"#,
        );
        assert!(
            chained.starts_with("stages[1].config.max_length: correlation-id: "),
            "{chained}"
        );
    }

    #[test]
    fn remote_jwks_builds_and_its_errors_name_the_field() {
        let remote = r#"{"providers": {"idp": {"issuer": "https://idp", "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/jwks"}}},
                         "rules": [{"match": {"prefix": "/"}, "requires": "idp"}]}"#;
        if let Err(e) = build("jwt-to-header", remote) {
            panic!("{e}");
        }
        let chained =
            format!(r#"{{"stages": [{{"filter": "jwt-to-header", "config": {remote}}}]}}"#);
        if let Err(e) = build("chain", &chained) {
            panic!("{e}");
        }
        let err = error(
            "jwt-to-header",
            r#"{"providers": {"idp": {"issuer": "https://idp", "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/jwks", "refresh_s": 0}}},
                "rules": [{"match": {"prefix": "/"}, "requires": "idp"}]}"#,
        );
        assert!(err.contains("remote_jwks.refresh_s"), "{err}");
    }

    #[test]
    fn global_and_hybrid_rate_limits_build_alone_and_in_a_chain() {
        let global = r#"{"rules": [{"name": "a", "key": ["client_ip"], "mode": "global",
                         "service": {"cluster": "rls", "domain": "d"}},
                        {"name": "b", "key": ["client_ip"], "mode": "hybrid", "limit": 5,
                         "service": {"cluster": "rls", "domain": "d", "failure_mode": "deny"}}]}"#;
        if let Err(e) = build("rate-limit", global) {
            panic!("{e}");
        }
        let chained = format!(
            r#"{{"stages": [{{"filter": "correlation-id"}}, {{"filter": "rate-limit", "config": {global}}}]}}"#
        );
        if let Err(e) = build("chain", &chained) {
            panic!("{e}");
        }
        // Their own errors still name the field.
        let err = error(
            "rate-limit",
            r#"{"rules": [{"name": "a", "key": ["client_ip"], "mode": "global"}]}"#,
        );
        assert!(err.starts_with("rules[0].service"), "{err}");
    }
}
