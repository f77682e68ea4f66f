//! What a gatewasm host's configuration says, host-free: which filter a name (a Proxy-Wasm root
//! id, a dynamic module's `filter_name`) means, and chain mode's configuration — the stages in
//! order, each with the configuration object its own filter takes (the bytes handed on to that
//! filter's parser, so one schema and one set of error messages serve every host). Used by the
//! Proxy-Wasm bundle (hosts/proxy-wasm-bundle, as its `plan` module) and the Envoy dynamic module
//! (hosts/envoy-dynamic-module).

use gatewasm_common::ConfigError;
use gatewasm_common::config::parse_config;
use serde::Deserialize;

/// The five filters, by the names their root ids, chain stages, counters and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    CorrelationId,
    TracePropagation,
    JwtToHeader,
    TenantRouting,
    RateLimit,
}

impl FilterKind {
    pub const ALL: [FilterKind; 5] = [
        FilterKind::CorrelationId,
        FilterKind::TracePropagation,
        FilterKind::JwtToHeader,
        FilterKind::TenantRouting,
        FilterKind::RateLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FilterKind::CorrelationId => "correlation-id",
            FilterKind::TracePropagation => "trace-propagation",
            FilterKind::JwtToHeader => "jwt-to-header",
            FilterKind::TenantRouting => "tenant-routing",
            FilterKind::RateLimit => "rate-limit",
        }
    }
}

/// The root id of chain mode.
pub const CHAIN: &str = "chain";

/// What a plugin of the bundle runs, from its root id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One filter, exactly as its own module.
    Filter(FilterKind),
    /// Chain mode.
    Chain,
}

/// The role a root id names; `Err` is the log line's reason.
pub fn role(root_id: &str) -> Result<Role, String> {
    if root_id == CHAIN {
        return Ok(Role::Chain);
    }
    FilterKind::ALL
        .into_iter()
        .find(|k| k.name() == root_id)
        .map(Role::Filter)
        .ok_or_else(|| {
            let names: Vec<&str> = FilterKind::ALL.iter().map(|k| k.name()).collect();
            format!(
                "root_id {root_id:?} names no filter of this module: use one of {}, or {CHAIN}",
                names.join(", ")
            )
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainConfig {
    #[serde(default)]
    stages: Vec<StageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageEntry {
    filter: FilterKind,
    /// The filter's own configuration; absent means its defaults.
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// One stage of a chain: the filter and its configuration, as JSON bytes for its parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    pub kind: FilterKind,
    pub config: Option<Vec<u8>>,
}

/// Parse chain mode's configuration: `{"stages": [{"filter": "...", "config": {...}}, ...]}`,
/// at least one stage, each filter at most once.
pub fn parse_chain(bytes: Option<&[u8]>) -> Result<Vec<StagePlan>, ConfigError> {
    let config: ChainConfig = parse_config(bytes)?;
    if config.stages.is_empty() {
        return Err(ConfigError::new(
            "stages",
            "the chain needs at least one stage ({\"filter\": \"<name>\", \"config\": {...}})",
        ));
    }
    let mut plans: Vec<StagePlan> = Vec::with_capacity(config.stages.len());
    for (i, entry) in config.stages.into_iter().enumerate() {
        if plans.iter().any(|p| p.kind == entry.filter) {
            return Err(ConfigError::new(
                format!("stages[{i}].filter"),
                format!(
                    "{} appears twice; a chain runs each filter at most once",
                    entry.filter.name()
                ),
            ));
        }
        let config = match entry.config {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                serde_json::to_vec(&value)
                    .map_err(|e| ConfigError::new(format!("stages[{i}].config"), e.to_string()))?,
            ),
        };
        plans.push(StagePlan {
            kind: entry.filter,
            config,
        });
    }
    Ok(plans)
}

/// A stage's configuration error, as the chain reports it: the field path under
/// `stages[i].config`, and the filter's name before its message.
pub fn stage_error(index: usize, kind: FilterKind, error: &ConfigError) -> ConfigError {
    let path = if error.path().is_empty() {
        format!("stages[{index}].config")
    } else {
        format!("stages[{index}].config.{}", error.path())
    };
    ConfigError::new(path, format!("{}: {}", kind.name(), error.message()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<StagePlan>, ConfigError> {
        parse_chain(Some(json.as_bytes()))
    }

    #[test]
    fn root_ids_name_a_filter_or_the_chain() {
        assert_eq!(role("chain"), Ok(Role::Chain));
        assert_eq!(role("rate-limit"), Ok(Role::Filter(FilterKind::RateLimit)));
        let err = role("").unwrap_err();
        assert!(err.contains("root_id \"\" names no filter"), "{err}");
        assert!(err.contains("correlation-id, trace-propagation"), "{err}");
    }

    #[test]
    fn stages_keep_their_order_and_configuration() {
        let plans = parse(
            r#"{"stages": [{"filter": "tenant-routing", "config": {"tenants": {}}},
                           {"filter": "correlation-id"}]}"#,
        )
        .unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].kind, FilterKind::TenantRouting);
        assert_eq!(plans[0].config.as_deref(), Some(&br#"{"tenants":{}}"#[..]));
        assert_eq!(plans[1].config, None);
    }

    #[test]
    fn bad_chains_name_the_field() {
        let err = parse(r#"{"stages": []}"#).unwrap_err();
        assert_eq!(err.path(), "stages");
        let err = parse("").unwrap_err();
        assert_eq!(err.path(), "stages");
        let err = parse(r#"{"stage": []}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `stage`"), "{err}");
        let err = parse(r#"{"stages": [{"filter": "auth"}]}"#).unwrap_err();
        assert_eq!(err.path(), "stages[0].filter");
        let err = parse(r#"{"stages": [{"filter": "rate-limit"}, {"filter": "rate-limit"}]}"#)
            .unwrap_err();
        assert_eq!(err.path(), "stages[1].filter");
        assert!(err.message().contains("appears twice"), "{err}");
    }

    #[test]
    fn a_stage_error_names_the_stage_and_the_field() {
        let inner = ConfigError::new("max_length", "must be at least 1");
        let err = stage_error(2, FilterKind::CorrelationId, &inner);
        assert_eq!(
            err.to_string(),
            "stages[2].config.max_length: correlation-id: must be at least 1"
        );
    }
}
