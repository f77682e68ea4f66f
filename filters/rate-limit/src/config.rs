//! The filter's configuration: the JSON shape ([`RateLimitConfig`]) and its validated, compiled
//! form ([`Settings`]: GCRA limits, table layouts and ids, lowercased header names, pre-rendered
//! `RateLimit-Policy` values), built once in `on_configure`.

use std::collections::BTreeMap;

use gatewasm_common::headers::normalize_header_name;
use gatewasm_common::{ConfigError, parse_config};
use serde::{Deserialize, Serialize};

use crate::gcra::Limit;
use crate::key::{IpPrefix, stable_id};
use crate::table::Layout;

/// Default bound on distinct live keys per rule.
pub const DEFAULT_MAX_KEYS: u32 = 10_000;
/// The largest `max_keys` (the table is created in full when the filter is configured:
/// 62,500 shared-data entries, ≈ 26 MB, at this size).
pub const MAX_MAX_KEYS: u32 = 1_000_000;
/// At most this many rules, and this many overrides per rule.
pub const MAX_RULES: usize = 32;

/// Configuration of the rate-limit filter. JSON, snake_case; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// The rules. Every rule whose `match` fits a request applies to it, in order; the request
    /// is denied as soon as one (non-shadow) rule denies it (later rules are not charged).
    pub rules: Vec<RuleConfig>,

    /// Where the `client_ip` key part comes from.
    pub client_ip: ClientIpConfig,

    /// How much of the client address is the client: the address is cut to this network prefix
    /// before it becomes a key (and the rate-limit service's `remote_address`).
    pub client_ip_prefix: ClientIpPrefixConfig,

    /// The denial reply and the rate-limit headers.
    pub response: ResponseConfig,

    /// What to do when a bucket update keeps losing the compare-and-swap race to other
    /// workers (after 32 attempts): `allow` the request (default) or `deny` it. Counted as
    /// `contention_exhausted` either way.
    pub on_contention: Policy,

    /// What to do for a new key when every slot of its table group holds a live bucket (see
    /// `max_keys`): `allow` the request uncounted (default) or `deny` it. Counted as `overflow`.
    pub on_overflow: Policy,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            client_ip: ClientIpConfig::default(),
            client_ip_prefix: ClientIpPrefixConfig::default(),
            response: ResponseConfig::default(),
            on_contention: Policy::Allow,
            on_overflow: Policy::Allow,
        }
    }
}

/// One rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name, `[a-z0-9_-]{1,64}`: in metric names, logs and the `RateLimit` headers.
    pub name: String,

    /// Which requests the rule applies to (all of them when absent).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MatchConfig>,

    /// The parts of the bucket key, e.g. `["client_ip"]`, `[{"header": "x-tenant-id"}]`, or
    /// `["route"]` for one bucket shared by every matching request.
    pub key: Vec<KeyPartConfig>,

    /// When a `header` key part is absent: `skip` the rule (default), `deny` the request, or
    /// use the `client_ip` instead.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,

    /// `local` (default): this proxy's own buckets (shared by its workers). `global`: ask the
    /// rate-limit service (`service`, Envoy's RLS gRPC protocol) about every request; the
    /// service owns the limit. `hybrid`: the local bucket first, then the service only for
    /// requests the local bucket allows.
    #[serde(default)]
    pub mode: Mode,

    /// The global rate-limit service (`global` and `hybrid` modes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceConfig>,

    /// Requests per `window_s` (the steady rate is `limit / window_s`) of the local bucket.
    /// ≥ 1. Required in `local` and `hybrid` modes; must be absent in `global` mode (the
    /// service owns the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,

    /// The window in seconds. ≥ 1.
    #[serde(default = "default_window")]
    pub window_s: u64,

    /// Extra capacity: the bucket holds `limit + burst` requests.
    #[serde(default)]
    pub burst: u64,

    /// Per-request overrides of `limit`/`window_s`/`burst`; the first whose `when_header` all
    /// match is used. They share the rule's buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideConfig>,

    /// The bound on distinct live keys (buckets that are not full) of this rule, 1..=1,000,000,
    /// rounded up to a multiple of 16. The table is allocated in full at configuration time.
    #[serde(default = "default_max_keys")]
    #[cfg_attr(test, schemars(range(min = 1, max = 1_000_000)))]
    pub max_keys: u32,

    /// Evaluate and count (`shadow_denied`), but never deny.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// Where a rule's limit is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// This proxy's buckets only.
    #[default]
    Local,
    /// The global rate-limit service only.
    Global,
    /// The local bucket first, then the global service for the requests it allows.
    Hybrid,
}

/// A rate-limit service speaking `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
/// (envoyproxy/ratelimit, Limitador, ...).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The Envoy cluster of the service (it must speak HTTP/2).
    pub cluster: String,
    /// The `domain` of every `RateLimitRequest` (the service's configuration namespace).
    pub domain: String,
    /// How long a request waits for the service's answer, in milliseconds, 1..=60,000.
    #[serde(default = "default_timeout_ms")]
    #[cfg_attr(test, schemars(range(min = 1, max = 60_000)))]
    pub timeout_ms: u32,
    /// When the service fails or does not answer in time: `allow` the request (default) or
    /// `deny` it. Counted as `global_error` / `global_timeout` either way.
    #[serde(default)]
    pub failure_mode: Policy,
}

const fn default_timeout_ms() -> u32 {
    DEFAULT_TIMEOUT_MS
}

/// Default `service.timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u32 = 20;
/// The largest `service.timeout_ms`.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

const fn default_window() -> u64 {
    60
}

const fn default_max_keys() -> u32 {
    DEFAULT_MAX_KEYS
}

/// Request conditions; all given ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// `:path` starts with this (compared byte for byte, query string included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `:method` is one of these, e.g. `["POST", "PUT"]` (upper-cased when the configuration
    /// is loaded, as jwt-to-header does: `get` means GET).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers with exactly these values (first occurrence).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum KeyPartConfig {
    /// `"client_ip"`, `"path"` (without the query string), `"method"` or `"route"` (a constant:
    /// one bucket for the whole rule).
    Named(NamedPart),
    /// `{"header": "x-user-id"}`: the value of a request header (first occurrence).
    Header {
        /// The header name.
        header: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NamedPart {
    ClientIp,
    Path,
    Method,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    #[default]
    Skip,
    Deny,
    ClientIp,
}

/// A per-request override of a rule's figures.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// Request headers (exact values, first occurrence) that select this override. Only
    /// trust headers an earlier filter sets (e.g. tenant-routing's tenant headers).
    pub when_header: BTreeMap<String, String>,
    /// Replaces the rule's `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Replaces the rule's `window_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// Replaces the rule's `burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, tag = "from", rename_all = "snake_case")]
pub enum ClientIpConfig {
    /// The connection's peer (`source.address`).
    // A struct variant, not a unit one: serde ignores the other members of an internally tagged
    // unit variant, so `{"from": "peer", "trusted_hops": 2}` would be accepted as "peer".
    Peer {},
    /// The `trusted_hops`-th address from the right of `x-forwarded-for` (1 = right-most); the
    /// peer when the list is shorter or that entry is not an address (as Envoy does).
    Xff {
        /// ≥ 1.
        trusted_hops: u32,
    },
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self::Peer {}
    }
}

/// Prefix lengths that aggregate client addresses: all addresses of one network share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpPrefixConfig {
    /// Leading bits of an IPv4 address (and of an IPv4-mapped IPv6 address) that identify the
    /// client, 1..=32. Default 32: each address.
    #[cfg_attr(test, schemars(range(min = 1, max = 32)))]
    pub ipv4: u8,
    /// Leading bits of an IPv6 address that identify the client, 1..=128. Default 64: one
    /// subscriber usually holds a whole /64 and can use any address in it.
    #[cfg_attr(test, schemars(range(min = 1, max = 128)))]
    pub ipv6: u8,
}

impl Default for ClientIpPrefixConfig {
    fn default() -> Self {
        let d = IpPrefix::default();
        Self {
            ipv4: d.ipv4,
            ipv6: d.ipv6,
        }
    }
}

/// The denial reply and the rate-limit headers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Status of a denial. 400..=599.
    #[cfg_attr(test, schemars(range(min = 400, max = 599)))]
    pub status: u16,
    /// Which rate-limit headers to send on allowed and denied responses.
    pub headers: HeaderFormat,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            status: 429,
            headers: HeaderFormat::Both,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HeaderFormat {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-08 and later).
    Draft,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (draft 03, widely used).
    Draft03,
    /// Both sets.
    #[default]
    Both,
    /// None (`Retry-After` is still sent on a denial).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Allow,
    Deny,
}

/// A compiled key part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Path,
    Method,
    Route,
    /// Lowercased name.
    Header(String),
}

/// A compiled limit with its `RateLimit-Policy` rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledLimit {
    pub limit: Limit,
    /// `"<rule>";q=<limit>;w=<window_s>`.
    pub policy: String,
    /// `limit.limit` in decimal (`RateLimit-Limit`).
    pub limit_text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Lowercased names.
    pub when: Vec<(String, String)>,
    pub limit: CompiledLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub path_prefix: Option<String>,
    pub methods: Vec<String>,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
}

/// A compiled `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub cluster: String,
    pub timeout_ms: u32,
    pub failure_mode: Policy,
    /// The `RateLimitRequest` with only its `domain` set, encoded once: a request's message is
    /// this followed by its descriptor.
    pub request_prefix: Vec<u8>,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub mode: Mode,
    /// `Some` in `global` and `hybrid` modes.
    pub service: Option<Service>,
    pub matcher: Matcher,
    pub key: Vec<KeyPart>,
    pub on_missing_key: OnMissingKey,
    pub limit: CompiledLimit,
    pub overrides: Vec<Override>,
    pub layout: Layout,
    /// Names the rule's shared-data entries; derived from the rule's name, key and layout only,
    /// so changing limits keeps the counters (and does not leak a new table).
    pub table_id: u64,
    pub shadow: bool,
}

/// The validated configuration the HTTP contexts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub rules: Vec<Rule>,
    pub client_ip: ClientIpConfig,
    pub client_ip_prefix: IpPrefix,
    pub status: u32,
    pub headers: HeaderFormat,
    pub on_contention: Policy,
    pub on_overflow: Policy,
}

impl Settings {
    /// Whether any rule may need the client address (then the peer address is read, or
    /// `x-forwarded-for` is looked at).
    pub fn needs_client_ip(&self) -> bool {
        self.rules.iter().any(|r| {
            r.on_missing_key == OnMissingKey::ClientIp || r.key.contains(&KeyPart::ClientIp)
        })
    }

    /// Whether any rule asks a global service.
    pub fn has_global(&self) -> bool {
        self.rules.iter().any(|r| r.service.is_some())
    }
}

fn header_name(path: impl Into<String>, name: &str) -> Result<String, ConfigError> {
    let path = path.into();
    normalize_header_name(name).map_err(|e| ConfigError::new(path, e.to_string()))
}

fn header_pairs(
    path: &str,
    map: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(map.len());
    for (name, value) in map {
        let field = format!("{path}.{name}");
        let lower = header_name(field.clone(), &name)?;
        if out.iter().any(|(n, _)| *n == lower) {
            return Err(ConfigError::new(
                field,
                "duplicate header (names are case-insensitive)",
            ));
        }
        out.push((lower, value));
    }
    Ok(out)
}

fn is_valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn compile_limit(
    path: &str,
    name: &str,
    limit: u64,
    window_s: u64,
    burst: u64,
) -> Result<CompiledLimit, ConfigError> {
    if limit == 0 {
        return Err(ConfigError::new(format!("{path}.limit"), "must be > 0"));
    }
    if window_s == 0 {
        return Err(ConfigError::new(format!("{path}.window_s"), "must be > 0"));
    }
    let limit_c = Limit::new(limit, window_s, burst).ok_or_else(|| {
        ConfigError::new(
            path.to_owned(),
            "limit, window_s and burst are too large (the bucket must refill within 100 years)",
        )
    })?;
    Ok(CompiledLimit {
        limit_text: limit_c.limit.to_string(),
        limit: limit_c,
        policy: format!("\"{name}\";q={limit};w={window_s}"),
    })
}

fn compile_service(path: &str, s: ServiceConfig) -> Result<Service, ConfigError> {
    if s.cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.cluster"),
            "must name an Envoy cluster",
        ));
    }
    if s.domain.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.domain"),
            "must not be empty",
        ));
    }
    if s.timeout_ms == 0 || s.timeout_ms > MAX_TIMEOUT_MS {
        return Err(ConfigError::new(
            format!("{path}.timeout_ms"),
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(Service {
        request_prefix: crate::rls::request_prefix(&s.domain),
        cluster: s.cluster,
        timeout_ms: s.timeout_ms,
        failure_mode: s.failure_mode,
    })
}

fn compile_rule(i: usize, r: RuleConfig) -> Result<Rule, ConfigError> {
    let base = format!("rules[{i}]");
    if !is_valid_rule_name(&r.name) {
        return Err(ConfigError::new(
            format!("{base}.name"),
            "must match [a-z0-9_-]{1,64}",
        ));
    }
    let matcher = match r.match_ {
        None => Matcher {
            path_prefix: None,
            methods: Vec::new(),
            headers: Vec::new(),
        },
        Some(m) => {
            if let Some(p) = &m.path_prefix
                && !p.starts_with('/')
            {
                return Err(ConfigError::new(
                    format!("{base}.match.path_prefix"),
                    "must start with '/'",
                ));
            }
            for (j, method) in m.methods.iter().enumerate() {
                if method.is_empty() || !method.bytes().all(gatewasm_common::headers::is_tchar) {
                    return Err(ConfigError::new(
                        format!("{base}.match.methods[{j}]"),
                        "must be an HTTP method token",
                    ));
                }
            }
            Matcher {
                path_prefix: m.path_prefix,
                methods: m.methods.iter().map(|x| x.to_ascii_uppercase()).collect(),
                headers: header_pairs(&format!("{base}.match.headers"), m.headers)?,
            }
        }
    };
    if r.key.is_empty() {
        return Err(ConfigError::new(
            format!("{base}.key"),
            "must not be empty (use [\"route\"] for one bucket shared by all requests)",
        ));
    }
    let mut key = Vec::with_capacity(r.key.len());
    for (j, part) in r.key.into_iter().enumerate() {
        let part = match part {
            KeyPartConfig::Named(NamedPart::ClientIp) => KeyPart::ClientIp,
            KeyPartConfig::Named(NamedPart::Path) => KeyPart::Path,
            KeyPartConfig::Named(NamedPart::Method) => KeyPart::Method,
            KeyPartConfig::Named(NamedPart::Route) => KeyPart::Route,
            KeyPartConfig::Header { header } => {
                KeyPart::Header(header_name(format!("{base}.key[{j}].header"), &header)?)
            }
        };
        if key.contains(&part) {
            return Err(ConfigError::new(
                format!("{base}.key[{j}]"),
                "duplicate key part",
            ));
        }
        key.push(part);
    }
    if r.max_keys == 0 || r.max_keys > MAX_MAX_KEYS {
        return Err(ConfigError::new(
            format!("{base}.max_keys"),
            format!("must be between 1 and {MAX_MAX_KEYS}"),
        ));
    }
    let service = match (r.mode, r.service) {
        (Mode::Local, None) => None,
        (Mode::Local, Some(_)) => {
            return Err(ConfigError::new(
                format!("{base}.service"),
                "only for mode global or hybrid",
            ));
        }
        (_, None) => {
            return Err(ConfigError::new(
                format!("{base}.service"),
                "required for mode global and hybrid",
            ));
        }
        (_, Some(s)) => Some(compile_service(&format!("{base}.service"), s)?),
    };
    let limit = match (r.mode, r.limit) {
        (Mode::Global, Some(_)) => {
            return Err(ConfigError::new(
                format!("{base}.limit"),
                "must be absent in mode global (the service owns the limit)",
            ));
        }
        (Mode::Global, None) => {
            if r.burst != 0 {
                return Err(ConfigError::new(
                    format!("{base}.burst"),
                    "must be absent in mode global (the service owns the limit)",
                ));
            }
            if !r.overrides.is_empty() {
                return Err(ConfigError::new(
                    format!("{base}.overrides"),
                    "must be absent in mode global (the service owns the limit)",
                ));
            }
            // Never charged: only its window is used (Retry-After of a missing-key denial).
            compile_limit(&base, &r.name, 1, r.window_s, 0)?
        }
        (_, None) => {
            return Err(ConfigError::new(
                format!("{base}.limit"),
                "required for mode local and hybrid",
            ));
        }
        (_, Some(limit)) => compile_limit(&base, &r.name, limit, r.window_s, r.burst)?,
    };
    if r.overrides.len() > MAX_RULES {
        return Err(ConfigError::new(
            format!("{base}.overrides"),
            format!("at most {MAX_RULES} overrides"),
        ));
    }
    let mut overrides = Vec::with_capacity(r.overrides.len());
    for (j, o) in r.overrides.into_iter().enumerate() {
        let obase = format!("{base}.overrides[{j}]");
        if o.when_header.is_empty() {
            return Err(ConfigError::new(
                format!("{obase}.when_header"),
                "must name at least one header",
            ));
        }
        let when = header_pairs(&format!("{obase}.when_header"), o.when_header)?;
        let limit = compile_limit(
            &obase,
            &r.name,
            o.limit.unwrap_or(limit.limit.limit),
            o.window_s.unwrap_or(r.window_s),
            o.burst.unwrap_or(r.burst),
        )?;
        overrides.push(Override { when, limit });
    }
    // A global rule has no local table (one group, never created).
    let layout = Layout::for_max_keys(if r.mode == Mode::Global {
        1
    } else {
        r.max_keys
    });
    // The table id: name, key shape, layout and format version — not the limits.
    let key_shape = format!("{key:?}");
    let table_id = stable_id(&[
        r.name.as_bytes(),
        key_shape.as_bytes(),
        &layout.groups.to_le_bytes(),
        &(layout.ways as u32).to_le_bytes(),
        &[crate::table::VERSION],
    ]);
    Ok(Rule {
        name: r.name,
        mode: r.mode,
        service,
        matcher,
        key,
        on_missing_key: r.on_missing_key,
        limit,
        overrides,
        layout,
        table_id,
        shadow: r.shadow,
    })
}

impl RateLimitConfig {
    /// Validate and compile. Errors name the field.
    pub fn compile(self) -> Result<Settings, ConfigError> {
        if self.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        if self.rules.len() > MAX_RULES {
            return Err(ConfigError::new(
                "rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.into_iter().enumerate() {
            let rule = compile_rule(i, r)?;
            if rules.iter().any(|o| o.name == rule.name) {
                return Err(ConfigError::new(
                    format!("rules[{i}].name"),
                    "duplicate rule name",
                ));
            }
            rules.push(rule);
        }
        if let ClientIpConfig::Xff { trusted_hops: 0 } = self.client_ip {
            return Err(ConfigError::new(
                "client_ip.trusted_hops",
                "must be > 0 (1 = the right-most address)",
            ));
        }
        let prefix = self.client_ip_prefix;
        if !(1..=32).contains(&prefix.ipv4) {
            return Err(ConfigError::new(
                "client_ip_prefix.ipv4",
                format!("must be between 1 and 32, got {}", prefix.ipv4),
            ));
        }
        if !(1..=128).contains(&prefix.ipv6) {
            return Err(ConfigError::new(
                "client_ip_prefix.ipv6",
                format!("must be between 1 and 128, got {}", prefix.ipv6),
            ));
        }
        let status = self.response.status;
        if !(400..=599).contains(&status) {
            return Err(ConfigError::new(
                "response.status",
                format!("must be between 400 and 599, got {status}"),
            ));
        }
        Ok(Settings {
            rules,
            client_ip: self.client_ip,
            client_ip_prefix: IpPrefix {
                ipv4: prefix.ipv4,
                ipv6: prefix.ipv6,
            },
            status: u32::from(status),
            headers: self.response.headers,
            on_contention: self.on_contention,
            on_overflow: self.on_overflow,
        })
    }
}

/// Parse and compile configuration bytes (errors name the field).
pub fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
    parse_config::<RateLimitConfig>(bytes)?.compile()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        parse_settings(Some(json.as_bytes()))
    }

    #[test]
    fn full_config_compiles() {
        let s = parse(
            r#"{
            "rules": [
                {"name": "per-ip", "key": ["client_ip"], "limit": 100},
                {"name": "tenant", "match": {"path_prefix": "/api", "methods": ["GET", "post"],
                  "headers": {"X-Env": "prod"}},
                 "key": [{"header": "X-Tenant-ID"}, "method", "path", "route"],
                 "on_missing_key": "client_ip", "limit": 10, "window_s": 1, "burst": 5,
                 "overrides": [{"when_header": {"x-tenant-tier": "gold"}, "limit": 1000}],
                 "max_keys": 17, "shadow": true}
            ],
            "client_ip": {"from": "xff", "trusted_hops": 2},
            "client_ip_prefix": {"ipv4": 24, "ipv6": 48},
            "response": {"status": 503, "headers": "draft03"},
            "on_contention": "deny", "on_overflow": "deny"
        }"#,
        )
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        let r = &s.rules[1];
        assert_eq!(r.matcher.headers, vec![("x-env".into(), "prod".into())]);
        assert_eq!(
            r.matcher.methods,
            ["GET", "POST"],
            "methods are upper-cased"
        );
        assert_eq!(
            r.key,
            vec![
                KeyPart::Header("x-tenant-id".into()),
                KeyPart::Method,
                KeyPart::Path,
                KeyPart::Route
            ]
        );
        assert_eq!(r.limit.policy, "\"tenant\";q=10;w=1");
        assert_eq!(r.limit.limit.bucket(), 15);
        assert_eq!(r.overrides[0].limit.policy, "\"tenant\";q=1000;w=1");
        assert_eq!(r.overrides[0].limit.limit.burst, 5);
        assert_eq!(r.layout.capacity(), 32);
        assert!(r.shadow);
        assert_eq!(s.rules[0].limit.limit.window_s, 60);
        assert_eq!(s.rules[0].layout.capacity(), 10_000);
        assert_eq!(s.client_ip, ClientIpConfig::Xff { trusted_hops: 2 });
        assert_eq!(s.client_ip_prefix, IpPrefix { ipv4: 24, ipv6: 48 });
        assert_eq!((s.status, s.headers), (503, HeaderFormat::Draft03));
        assert_eq!(
            (s.on_contention, s.on_overflow),
            (Policy::Deny, Policy::Deny)
        );
        assert!(s.needs_client_ip());
    }

    #[test]
    fn defaults() {
        let s = parse(r#"{"rules":[{"name":"a","key":["route"],"limit":1}]}"#).unwrap();
        assert_eq!(s.client_ip, ClientIpConfig::Peer {});
        assert_eq!(s.client_ip_prefix, IpPrefix { ipv4: 32, ipv6: 64 });
        let s = parse(
            r#"{"rules":[{"name":"a","key":["route"],"limit":1}],"client_ip_prefix":{"ipv6":56}}"#,
        )
        .unwrap();
        assert_eq!(
            s.client_ip_prefix,
            IpPrefix { ipv4: 32, ipv6: 56 },
            "an omitted length keeps its default"
        );
        assert_eq!((s.status, s.headers), (429, HeaderFormat::Both));
        assert_eq!(
            (s.on_contention, s.on_overflow),
            (Policy::Allow, Policy::Allow)
        );
        assert_eq!(s.rules[0].on_missing_key, OnMissingKey::Skip);
        assert!(!s.needs_client_ip());
    }

    #[test]
    fn global_and_hybrid_rules() {
        let s = parse(
            r#"{"rules":[
                {"name":"g","key":["client_ip"],"mode":"global",
                 "service":{"cluster":"rls","domain":"gw","timeout_ms":50,"failure_mode":"deny"}},
                {"name":"h","key":["route"],"mode":"hybrid","limit":10,
                 "service":{"cluster":"rls","domain":"gw"}},
                {"name":"l","key":["route"],"limit":10}
            ]}"#,
        )
        .unwrap();
        let g = s.rules[0].service.as_ref().unwrap();
        assert_eq!((s.rules[0].mode, g.cluster.as_str()), (Mode::Global, "rls"));
        assert_eq!((g.timeout_ms, g.failure_mode), (50, Policy::Deny));
        let h = s.rules[1].service.as_ref().unwrap();
        assert_eq!(
            (h.timeout_ms, h.failure_mode),
            (DEFAULT_TIMEOUT_MS, Policy::Allow)
        );
        assert_eq!(s.rules[1].limit.limit.limit, 10);
        assert!(s.rules[2].service.is_none());
        assert!(s.has_global());
        // A global rule has no table to speak of.
        assert_eq!(s.rules[0].layout.groups, 1);
    }

    #[test]
    fn table_id_ignores_limits_but_not_key_or_size() {
        let id = |rule: &str| parse(&format!(r#"{{"rules":[{rule}]}}"#)).unwrap().rules[0].table_id;
        let base = id(r#"{"name":"a","key":["client_ip"],"limit":1}"#);
        assert_eq!(
            base,
            id(r#"{"name":"a","key":["client_ip"],"limit":9,"burst":3,"window_s":7}"#)
        );
        assert_ne!(base, id(r#"{"name":"b","key":["client_ip"],"limit":1}"#));
        assert_ne!(base, id(r#"{"name":"a","key":["path"],"limit":1}"#));
        assert_ne!(
            base,
            id(r#"{"name":"a","key":["client_ip"],"limit":1,"max_keys":100}"#)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let ok = r#""name":"a","key":["route"],"limit":1"#;
        let svc = r#"{"cluster":"rls","domain":"gw"}"#;
        let cases: Vec<(String, &str)> = vec![
            ("{}".into(), "rules"),
            (r#"{"rules":[]}"#.into(), "rules"),
            (
                format!(r#"{{"rules":[{{{ok}}},{{"name":"b","key":["route"],"limit":0}}]}}"#),
                "rules[1].limit",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"window_s":0}}]}}"#),
                "rules[0].window_s",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"window_s":18446744073}}]}}"#),
                "rules[0]",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"max_keys":0}}]}}"#),
                "rules[0].max_keys",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"max_keys":1000001}}]}}"#),
                "rules[0].max_keys",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"lmit":1}}]}}"#),
                "rules[0].lmit",
            ),
            (
                r#"{"rules":[{"name":"A","key":["route"],"limit":1}]}"#.into(),
                "rules[0].name",
            ),
            (
                r#"{"rules":[{"name":"a","key":[],"limit":1}]}"#.into(),
                "rules[0].key",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route","route"],"limit":1}]}"#.into(),
                "rules[0].key[1]",
            ),
            (
                r#"{"rules":[{"name":"a","key":["ip"],"limit":1}]}"#.into(),
                "rules[0].key[0]",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"header":"host"}],"limit":1}]}"#.into(),
                "rules[0].key[0].header",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"]}]}"#.into(),
                "rules[0].limit",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"service":{svc}}}]}}"#),
                "rules[0].service",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"mode":"hybrid"}}]}}"#),
                "rules[0].service",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"mode":"global","service":{svc}}}]}}"#),
                "rules[0].limit",
            ),
            (
                format!(
                    r#"{{"rules":[{{"name":"a","key":["route"],"mode":"global","burst":2,"service":{svc}}}]}}"#
                ),
                "rules[0].burst",
            ),
            (
                format!(
                    r#"{{"rules":[{{"name":"a","key":["route"],"mode":"global","service":{svc},"overrides":[{{"when_header":{{"x":"y"}},"limit":2}}]}}]}}"#
                ),
                "rules[0].overrides",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global"}]}"#.into(),
                "rules[0].service",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"","domain":"d"}}]}"#.into(),
                "rules[0].service.cluster",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"c","domain":""}}]}"#.into(),
                "rules[0].service.domain",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"c","domain":"d","timeout_ms":0}}]}"#.into(),
                "rules[0].service.timeout_ms",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"c","domain":"d","timeout_ms":60001}}]}"#.into(),
                "rules[0].service.timeout_ms",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"c","domain":"d","failure_mode":"open"}}]}"#.into(),
                "rules[0].service.failure_mode",
            ),
            (
                r#"{"rules":[{"name":"a","key":["route"],"mode":"global","service":{"cluster":"c","domain":"d","grpc":true}}]}"#.into(),
                "rules[0].service.grpc",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"mode":"everywhere"}}]}}"#),
                "rules[0].mode",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}},{{{ok}}}]}}"#),
                "rules[1].name",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"match":{{"path_prefix":"api"}}}}]}}"#),
                "rules[0].match.path_prefix",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"match":{{"methods":["G T"]}}}}]}}"#),
                "rules[0].match.methods[0]",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"match":{{"headers":{{":path":"x"}}}}}}]}}"#),
                "rules[0].match.headers.:path",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"match":{{"path":"x"}}}}]}}"#),
                "rules[0].match.path",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"overrides":[{{"when_header":{{}},"limit":2}}]}}]}}"#),
                "rules[0].overrides[0].when_header",
            ),
            (
                format!(
                    r#"{{"rules":[{{{ok},"overrides":[{{"when_header":{{"x":"y"}},"limit":0}}]}}]}}"#
                ),
                "rules[0].overrides[0].limit",
            ),
            (
                format!(r#"{{"rules":[{{{ok},"on_missing_key":"allow"}}]}}"#),
                "rules[0].on_missing_key",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip":{{"from":"xff","trusted_hops":0}}}}"#),
                "client_ip.trusted_hops",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip":{{"from":"header"}}}}"#),
                "client_ip.from",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip":{{"from":"peer","trusted_hops":2}}}}"#),
                "client_ip",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"ipv4":0}}}}"#),
                "client_ip_prefix.ipv4",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"ipv4":33}}}}"#),
                "client_ip_prefix.ipv4",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"ipv6":0}}}}"#),
                "client_ip_prefix.ipv6",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"ipv6":129}}}}"#),
                "client_ip_prefix.ipv6",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"ipv6":256}}}}"#),
                "client_ip_prefix.ipv6",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":{{"v6":64}}}}"#),
                "client_ip_prefix.v6",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"client_ip_prefix":64}}"#),
                "client_ip_prefix",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"response":{{"status":200}}}}"#),
                "response.status",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"response":{{"headers":"rfc"}}}}"#),
                "response.headers",
            ),
            (
                format!(r#"{{"rules":[{{{ok}}}],"on_overflow":"maybe"}}"#),
                "on_overflow",
            ),
        ];
        for (json, field) in &cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.path(), *field, "{json}: {err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        assert!(parse("[]").is_err());
        assert!(parse("").is_err(), "no configuration = no rules = error");
    }

    /// The committed `config.schema.json` must equal what schemars generates.
    /// Regenerate with `UPDATE_SCHEMA=1 cargo test -p rate-limit`.
    #[test]
    fn schema_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        gatewasm_common::schema::check_schema_file::<RateLimitConfig>(&path).unwrap();
    }
}
