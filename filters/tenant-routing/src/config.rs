//! The filter's configuration: the JSON shape ([`TenantRoutingConfig`]) and its validated,
//! compiled form ([`Settings`]: sorted tenant table, compiled host/path patterns), built once in
//! `on_configure`.

use std::collections::BTreeMap;

use gatewasm_common::headers::{OwnNames, normalize_header_name};
use gatewasm_common::{ConfigError, parse_config};
use serde::{Deserialize, Serialize};

use crate::pattern::{HostPattern, HostRule, PathPattern, check_query_name, is_valid_tenant_id};

/// Default header that carries the resolved tenant id upstream.
pub const DEFAULT_OUTPUT_HEADER: &str = "x-tenant-id";
/// Default header that carries the tenant's cluster (for Envoy's `cluster_header` routing).
pub const DEFAULT_CLUSTER_HEADER: &str = "x-tenant-cluster";
/// The name under which requests for unconfigured tenants are counted; not a valid tenant id.
pub const UNKNOWN_TENANT: &str = "unknown";

/// Configuration of the tenant-routing filter. JSON, snake_case; unknown fields are rejected.
/// At least one tenant is required, and at least one source unless `default_tenant` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TenantRoutingConfig {
    /// Where the tenant id is looked for, in order. Each entry has exactly one of `header`,
    /// `host`, `path_prefix` (optionally with `strip`) or `query`.
    pub sources: Vec<SourceConfig>,

    /// The configured tenants, by id (`[a-z0-9][a-z0-9-]{0,62}`, not `unknown`). A request
    /// whose tenant is not listed here is rejected with `unknown_tenant_status`.
    pub tenants: BTreeMap<String, TenantConfig>,

    /// Tenant for requests where no source yields a tenant. Must be a configured tenant. Not
    /// used for unknown tenants or conflicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_tenant: Option<String>,

    /// Status of the local reply for a tenant that is not configured. 400..=599.
    #[cfg_attr(test, schemars(range(min = 400, max = 599)))]
    pub unknown_tenant_status: u16,

    /// Status of the local reply when no source yields a tenant (and there is no
    /// `default_tenant`). 400..=599.
    #[cfg_attr(test, schemars(range(min = 400, max = 599)))]
    pub missing_tenant_status: u16,

    /// Request header set to the resolved tenant id. A client-sent value never reaches the
    /// upstream (it is only read when a `header` source names this header, i.e. when an
    /// earlier filter such as jwt-to-header sets it).
    #[cfg_attr(
        test,
        schemars(length(min = 1), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub output_header: String,

    /// Request header set to the tenant's `cluster`; route on it with Envoy's
    /// `cluster_header`. A client-sent value is always replaced.
    #[cfg_attr(
        test,
        schemars(length(min = 1), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub cluster_header: String,

    /// What to do when sources yield different tenants: `reject` (403) or `first` (the first
    /// source that yields a tenant wins).
    pub consistency: Consistency,
}

impl Default for TenantRoutingConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            tenants: BTreeMap::new(),
            default_tenant: None,
            unknown_tenant_status: 404,
            missing_tenant_status: 400,
            output_header: DEFAULT_OUTPUT_HEADER.to_owned(),
            cluster_header: DEFAULT_CLUSTER_HEADER.to_owned(),
            consistency: Consistency::default(),
        }
    }
}

/// One place to look for the tenant id. Exactly one of `header`, `host`, `path_prefix`, `query`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// A request header whose value is the tenant id. Trusted: configure it only for a header
    /// that an earlier filter sets and strips from clients (e.g. jwt-to-header mapping a
    /// verified `tenant` claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,

    /// A host pattern with one whole `{tenant}` label, e.g. `{tenant}.api.example.com`.
    /// Matched case-insensitively; the port and a trailing dot are ignored. ASCII only
    /// (internationalised names in punycode, `xn--…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// A path prefix whose last segment is `{tenant}`, e.g. `/t/{tenant}/`. Request path
    /// segments are percent-decoded before matching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,

    /// With `path_prefix`: remove the matched prefix from `:path` (`/t/acme/x` → `/x`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strip: bool,

    /// A query parameter whose (percent-decoded) value is the tenant id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// One tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The Envoy cluster of this tenant's backend, sent in `cluster_header`.
    #[cfg_attr(test, schemars(length(min = 1, max = 256)))]
    pub cluster: String,

    /// Extra request headers set for this tenant (e.g. `{"x-tenant-tier": "gold"}`). A header
    /// named by any tenant is removed from requests of tenants that do not set it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// If set, requests for this tenant must arrive on one of these hosts (exact, or
    /// `*.example.com` for any subdomain); otherwise they are refused with 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
}

/// The rule for sources that disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Every source that yields a tenant must yield the same one; otherwise 403.
    #[default]
    Reject,
    /// The first source (in `sources` order) that yields a tenant wins.
    First,
}

/// A compiled source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Lowercased header name.
    Header(String),
    Host(HostPattern),
    PathPrefix {
        pattern: PathPattern,
        strip: bool,
    },
    Query(String),
}

/// A compiled tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub cluster: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub allowed_hosts: Option<Vec<HostRule>>,
}

/// The validated configuration the HTTP contexts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub sources: Vec<Source>,
    /// Sorted by id (binary search).
    pub tenants: Vec<Tenant>,
    /// Index into `tenants`.
    pub default_tenant: Option<usize>,
    pub unknown_tenant_status: u32,
    pub missing_tenant_status: u32,
    pub output_header: String,
    pub cluster_header: String,
    pub consistency: Consistency,
    /// Every header name some tenant sets (sorted, deduplicated): removed from requests of the
    /// tenants that do not set it.
    pub tenant_header_names: Vec<String>,
    /// Every header name this filter writes (output, cluster and tenant headers): their `_`
    /// spellings are removed from requests.
    pub own_names: OwnNames,
}

impl Settings {
    /// The index of tenant `id` (bytes as found in the request).
    pub fn tenant_index(&self, id: &[u8]) -> Option<usize> {
        self.tenants
            .binary_search_by(|t| t.id.as_bytes().cmp(id))
            .ok()
    }

    /// Whether any source or tenant looks at the host.
    pub fn needs_host(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Host(_)))
            || self.tenants.iter().any(|t| t.allowed_hosts.is_some())
    }
}

fn header_name(path: impl Into<String>, name: &str) -> Result<String, ConfigError> {
    let path = path.into();
    normalize_header_name(name).map_err(|e| ConfigError::new(path, e.to_string()))
}

fn status(path: &str, status: u16) -> Result<u32, ConfigError> {
    if (400..=599).contains(&status) {
        Ok(u32::from(status))
    } else {
        Err(ConfigError::new(
            path,
            format!("must be between 400 and 599, got {status}"),
        ))
    }
}

fn compile_source(i: usize, s: SourceConfig) -> Result<Source, ConfigError> {
    let path = |field: &str| format!("sources[{i}].{field}");
    let set = [
        s.header.is_some(),
        s.host.is_some(),
        s.path_prefix.is_some(),
        s.query.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(ConfigError::new(
            format!("sources[{i}]"),
            "needs exactly one of `header`, `host`, `path_prefix`, `query`",
        ));
    }
    if s.strip && s.path_prefix.is_none() {
        return Err(ConfigError::new(
            path("strip"),
            "only applies to a `path_prefix` source",
        ));
    }
    Ok(if let Some(name) = s.header {
        Source::Header(header_name(path("header"), &name)?)
    } else if let Some(pattern) = s.host {
        Source::Host(HostPattern::parse(&pattern).map_err(|e| ConfigError::new(path("host"), e))?)
    } else if let Some(pattern) = s.path_prefix {
        Source::PathPrefix {
            pattern: PathPattern::parse(&pattern)
                .map_err(|e| ConfigError::new(path("path_prefix"), e))?,
            strip: s.strip,
        }
    } else if let Some(name) = s.query {
        check_query_name(&name).map_err(|e| ConfigError::new(path("query"), e))?;
        Source::Query(name)
    } else {
        return Err(ConfigError::new(format!("sources[{i}]"), "empty source"));
    })
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

fn compile_tenant(
    id: String,
    t: TenantConfig,
    output_header: &str,
    cluster_header: &str,
) -> Result<Tenant, ConfigError> {
    let base = format!("tenants.{id}");
    if !is_valid_tenant_id(id.as_bytes()) {
        return Err(ConfigError::new(
            base,
            "tenant ids must match [a-z0-9][a-z0-9-]{0,62}",
        ));
    }
    if id == UNKNOWN_TENANT {
        return Err(ConfigError::new(
            base,
            "`unknown` is reserved (it names the metric of unconfigured tenants)",
        ));
    }
    if t.cluster.is_empty()
        || t.cluster.len() > 256
        || !t.cluster.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(ConfigError::new(
            format!("{base}.cluster"),
            "must be 1 to 256 visible ASCII characters (an Envoy cluster name)",
        ));
    }
    let mut headers = Vec::with_capacity(t.headers.len());
    for (name, value) in t.headers {
        let field = format!("{base}.headers.{name}");
        let lower = header_name(field.clone(), &name)?;
        if lower == output_header || lower == cluster_header {
            return Err(ConfigError::new(
                field,
                "must differ from `output_header` and `cluster_header`",
            ));
        }
        if !is_header_value(&value) {
            return Err(ConfigError::new(
                field,
                "the value must be printable ASCII (no control characters)",
            ));
        }
        if headers.iter().any(|(n, _)| *n == lower) {
            return Err(ConfigError::new(
                field,
                "duplicate header (names are case-insensitive)",
            ));
        }
        headers.push((lower, value));
    }
    let allowed_hosts = match t.allowed_hosts {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                format!("{base}.allowed_hosts"),
                "must not be empty (omit it to allow any host)",
            ));
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, rule)| {
                    HostRule::parse(rule)
                        .map_err(|e| ConfigError::new(format!("{base}.allowed_hosts[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Tenant {
        id,
        cluster: t.cluster,
        headers,
        allowed_hosts,
    })
}

impl TenantRoutingConfig {
    /// Validate and compile. Errors name the field.
    pub fn compile(self) -> Result<Settings, ConfigError> {
        let output_header = header_name("output_header", &self.output_header)?;
        let cluster_header = header_name("cluster_header", &self.cluster_header)?;
        if output_header == cluster_header {
            return Err(ConfigError::new(
                "cluster_header",
                "must differ from `output_header`",
            ));
        }
        let unknown_tenant_status = status("unknown_tenant_status", self.unknown_tenant_status)?;
        let missing_tenant_status = status("missing_tenant_status", self.missing_tenant_status)?;

        let sources = self
            .sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| compile_source(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, source) in sources.iter().enumerate() {
            if matches!(source, Source::Header(name) if *name == cluster_header) {
                return Err(ConfigError::new(
                    format!("sources[{i}].header"),
                    "must not be `cluster_header` (clients must never choose the cluster)",
                ));
            }
        }

        if self.tenants.is_empty() {
            return Err(ConfigError::new(
                "tenants",
                "at least one tenant is required",
            ));
        }
        // BTreeMap iteration is sorted by id: the table is ready for binary search.
        let tenants = self
            .tenants
            .into_iter()
            .map(|(id, t)| compile_tenant(id, t, &output_header, &cluster_header))
            .collect::<Result<Vec<_>, _>>()?;

        let default_tenant = match self.default_tenant {
            None => None,
            Some(id) => Some(
                tenants
                    .binary_search_by(|t| t.id.as_str().cmp(id.as_str()))
                    .map_err(|_| {
                        ConfigError::new("default_tenant", "must be one of the configured tenants")
                    })?,
            ),
        };
        if sources.is_empty() && default_tenant.is_none() {
            return Err(ConfigError::new(
                "sources",
                "at least one source is required (or set `default_tenant`)",
            ));
        }
        let mut tenant_header_names: Vec<String> = tenants
            .iter()
            .flat_map(|t| t.headers.iter().map(|(n, _)| n.clone()))
            .collect();
        tenant_header_names.sort();
        tenant_header_names.dedup();

        Ok(Settings {
            sources,
            tenants,
            default_tenant,
            unknown_tenant_status,
            missing_tenant_status,
            consistency: self.consistency,
            own_names: OwnNames::new(
                [&output_header, &cluster_header]
                    .into_iter()
                    .chain(&tenant_header_names)
                    .map(String::as_str),
            ),
            output_header,
            cluster_header,
            tenant_header_names,
        })
    }
}

/// Plugin configuration bytes → [`Settings`]. An empty configuration is an error (there are no
/// tenants).
pub fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
    parse_config::<TenantRoutingConfig>(bytes)?.compile()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        parse_settings(Some(json.as_bytes()))
    }

    const FULL: &str = r#"{
        "sources": [
            {"header": "X-Tenant-ID"},
            {"host": "{tenant}.api.example.com"},
            {"path_prefix": "/t/{tenant}/", "strip": true},
            {"query": "tenant"}
        ],
        "tenants": {
            "globex": {"cluster": "globex_backend"},
            "acme": {"cluster": "acme_backend", "headers": {"X-Tenant-Tier": "gold"},
                     "allowed_hosts": ["acme.api.example.com", "*.acme.example.com"]}
        },
        "default_tenant": "globex",
        "unknown_tenant_status": 421,
        "missing_tenant_status": 401,
        "output_header": "X-Tenant-ID",
        "cluster_header": "X-Tenant-Cluster",
        "consistency": "first"
    }"#;

    #[test]
    fn every_field() {
        let s = parse(FULL).unwrap();
        assert_eq!(s.sources.len(), 4);
        assert_eq!(s.sources[0], Source::Header("x-tenant-id".into()));
        assert!(matches!(
            s.sources[2],
            Source::PathPrefix { strip: true, .. }
        ));
        assert_eq!(s.sources[3], Source::Query("tenant".into()));
        assert_eq!(
            s.tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["acme", "globex"]
        );
        assert_eq!(s.tenant_index(b"globex"), Some(1));
        assert_eq!(s.tenant_index(b"acme"), Some(0));
        assert_eq!(s.tenant_index(b"nope"), None);
        assert_eq!(s.default_tenant, Some(1));
        assert_eq!(
            s.tenants[0].headers,
            [("x-tenant-tier".into(), "gold".into())]
        );
        assert_eq!(s.tenants[0].allowed_hosts.as_ref().unwrap().len(), 2);
        assert_eq!(
            (s.unknown_tenant_status, s.missing_tenant_status),
            (421, 401)
        );
        assert_eq!(s.output_header, "x-tenant-id");
        assert_eq!(s.cluster_header, "x-tenant-cluster");
        assert_eq!(s.consistency, Consistency::First);
        assert_eq!(s.tenant_header_names, ["x-tenant-tier"]);
        assert!(s.needs_host());
    }

    #[test]
    fn defaults() {
        let s = parse(r#"{"sources":[{"query":"t"}],"tenants":{"a":{"cluster":"c"}}}"#).unwrap();
        assert_eq!(
            (s.unknown_tenant_status, s.missing_tenant_status),
            (404, 400)
        );
        assert_eq!(s.output_header, "x-tenant-id");
        assert_eq!(s.cluster_header, "x-tenant-cluster");
        assert_eq!(s.consistency, Consistency::Reject);
        assert_eq!(s.default_tenant, None);
        assert!(!s.needs_host());
        // Only a default tenant, no sources: everything goes to it.
        assert!(parse(r#"{"tenants":{"a":{"cluster":"c"}},"default_tenant":"a"}"#).is_ok());
    }

    #[test]
    fn empty_configuration_is_an_error() {
        for empty in [None, Some(&b""[..]), Some(b"{}"), Some(b"null")] {
            let err = parse_settings(empty).unwrap_err();
            assert_eq!(err.path(), "tenants", "{empty:?}");
        }
    }

    /// (config, field path named by the error)
    #[test]
    fn errors_name_the_field() {
        let t = r#""tenants":{"a":{"cluster":"c"}}"#;
        let s = r#""sources":[{"query":"t"}]"#;
        let cases: Vec<(String, &str)> = vec![
            (format!(r#"{{{s},{t},"foo":1}}"#), "foo"),
            (
                format!(r#"{{{s},"tenants":{{"a":{{"cluster":"c","tier":1}}}}}}"#),
                "tenants.a.tier",
            ),
            (
                r#"{"sources":[{"query":"t","foo":1}]}"#.to_owned(),
                "sources[0].foo",
            ),
            (format!(r#"{{"sources":[{{}}],{t}}}"#), "sources[0]"),
            (
                format!(r#"{{"sources":[{{"query":"t","host":"{{tenant}}.x"}}],{t}}}"#),
                "sources[0]",
            ),
            (
                format!(r#"{{"sources":[{{"query":"t","strip":true}}],{t}}}"#),
                "sources[0].strip",
            ),
            (
                format!(r#"{{"sources":[{{"header":"bad header"}}],{t}}}"#),
                "sources[0].header",
            ),
            (
                format!(r#"{{"sources":[{{"header":"x-tenant-cluster"}}],{t}}}"#),
                "sources[0].header",
            ),
            (
                format!(r#"{{"sources":[{{"query":"t"}},{{"host":"example.com"}}],{t}}}"#),
                "sources[1].host",
            ),
            (
                format!(r#"{{"sources":[{{"path_prefix":"t/{{tenant}}"}}],{t}}}"#),
                "sources[0].path_prefix",
            ),
            (
                format!(r#"{{"sources":[{{"query":"a&b"}}],{t}}}"#),
                "sources[0].query",
            ),
            (format!(r#"{{{s},"tenants":{{}}}}"#), "tenants"),
            (
                format!(r#"{{{s},"tenants":{{"Acme":{{"cluster":"c"}}}}}}"#),
                "tenants.Acme",
            ),
            (
                format!(r#"{{{s},"tenants":{{"-a":{{"cluster":"c"}}}}}}"#),
                "tenants.-a",
            ),
            (
                format!(r#"{{{s},"tenants":{{"unknown":{{"cluster":"c"}}}}}}"#),
                "tenants.unknown",
            ),
            (format!(r#"{{{s},"tenants":{{"a":{{}}}}}}"#), "tenants.a"),
            (
                format!(r#"{{{s},"tenants":{{"a":{{"cluster":""}}}}}}"#),
                "tenants.a.cluster",
            ),
            (
                format!(r#"{{{s},"tenants":{{"a":{{"cluster":"a b"}}}}}}"#),
                "tenants.a.cluster",
            ),
            (
                format!(
                    r#"{{{s},"tenants":{{"a":{{"cluster":"c","headers":{{"x-tenant-id":"v"}}}}}}}}"#
                ),
                "tenants.a.headers.x-tenant-id",
            ),
            (
                format!(r#"{{{s},"tenants":{{"a":{{"cluster":"c","headers":{{"host":"v"}}}}}}}}"#),
                "tenants.a.headers.host",
            ),
            (
                format!(
                    r#"{{{s},"tenants":{{"a":{{"cluster":"c","headers":{{"x-t":"a\nb"}}}}}}}}"#
                ),
                "tenants.a.headers.x-t",
            ),
            (
                format!(r#"{{{s},"tenants":{{"a":{{"cluster":"c","allowed_hosts":[]}}}}}}"#),
                "tenants.a.allowed_hosts",
            ),
            (
                format!(
                    r#"{{{s},"tenants":{{"a":{{"cluster":"c","allowed_hosts":["ok.com","bad host"]}}}}}}"#
                ),
                "tenants.a.allowed_hosts[1]",
            ),
            (
                format!(r#"{{{s},{t},"default_tenant":"b"}}"#),
                "default_tenant",
            ),
            (
                format!(r#"{{{s},{t},"unknown_tenant_status":200}}"#),
                "unknown_tenant_status",
            ),
            (
                format!(r#"{{{s},{t},"missing_tenant_status":600}}"#),
                "missing_tenant_status",
            ),
            (
                format!(r#"{{{s},{t},"missing_tenant_status":"400"}}"#),
                "missing_tenant_status",
            ),
            (
                format!(r#"{{{s},{t},"output_header":":path"}}"#),
                "output_header",
            ),
            (
                format!(r#"{{{s},{t},"cluster_header":"X-Tenant-ID"}}"#),
                "cluster_header",
            ),
            (format!(r#"{{{s},{t},"consistency":"any"}}"#), "consistency"),
            (format!(r#"{{{t}}}"#), "sources"),
        ];
        for (json, field) in &cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.path(), *field, "{json}: {err}");
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        assert!(parse("[]").is_err());
    }

    /// The committed `config.schema.json` must equal what schemars generates.
    /// Regenerate with `UPDATE_SCHEMA=1 cargo test -p tenant-routing`.
    #[test]
    fn schema_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        gatewasm_common::schema::check_schema_file::<TenantRoutingConfig>(&path).unwrap();
    }

    #[test]
    fn schema_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(
            &gatewasm_common::schema::schema_json::<TenantRoutingConfig>().unwrap(),
        )
        .unwrap();
        let props = &schema["properties"];
        assert_eq!(props["output_header"]["default"], "x-tenant-id");
        assert_eq!(props["cluster_header"]["default"], "x-tenant-cluster");
        assert_eq!(props["unknown_tenant_status"]["default"], 404);
        assert_eq!(props["missing_tenant_status"]["default"], 400);
        assert_eq!(props["consistency"]["default"], "reject");
        assert_eq!(schema["additionalProperties"], false);
    }
}
