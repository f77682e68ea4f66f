//! The filter's configuration: the JSON shape ([`JwtConfig`]) and its validated, compiled form
//! ([`Settings`]: providers with parsed keys, compiled rules, the set of headers to strip),
//! built once in `on_configure`. Every error names its field
//! (`providers.auth0.remote_jwks.cluster: must not be empty`).

use std::collections::BTreeMap;

use gatewasm_common::headers::{OwnNames, normalize_header_name};
use gatewasm_common::{ConfigError, parse_config};
use serde::{Deserialize, Serialize};

use crate::jwk::{Alg, AlgSet, KeySet, parse_jwks, parse_jwks_bytes};

/// Tokens longer than this are rejected without being parsed.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Default verified-token cache size (entries per worker VM).
pub const DEFAULT_CACHE_SIZE: usize = 1024;

/// Configuration of the jwt-to-header filter. JSON, snake_case; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Token issuers by name (`[A-Za-z0-9_-]{1,64}`; used in metrics and shared-data keys).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Which requests need which provider. Ordered; the first match wins; a request no rule
    /// matches needs no token.
    pub rules: Vec<RuleConfig>,
    /// Let CORS preflight requests (`OPTIONS` with `origin` and
    /// `access-control-request-method`) through without a token.
    pub bypass_cors_preflight: bool,
    /// Verified tokens remembered per worker VM (LRU, entries expire with the token). 0 turns
    /// the cache off.
    pub cache_size: usize,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            providers: BTreeMap::new(),
            rules: Vec::new(),
            bypass_cors_preflight: true,
            cache_size: DEFAULT_CACHE_SIZE,
            realm: "gatewasm".into(),
        }
    }
}

/// One token issuer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The exact `iss` the tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; the token must carry one of them. Empty: `aud` not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Accepted `sub` prefixes. Empty: `sub` not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Inline JWKS: a `{"keys":[...]}` object or the same as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// A JWKS fetched over HTTP through an Envoy cluster, shared by all worker VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Allowed `alg`s. Default: every algorithm the inline keys can verify, plus every
    /// asymmetric algorithm when `remote_jwks` is set. `none` is never allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Headers carrying the token, with the prefix before it. Default:
    /// `[{"name":"authorization","value_prefix":"Bearer "}]`.
    #[serde(default = "default_from_headers")]
    pub from_headers: Vec<HeaderSourceConfig>,
    /// Query parameters carrying the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Claims copied into request headers after verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeaderConfig>,
    /// Keep the token in the request to the upstream. false: it is removed.
    #[serde(default)]
    pub forward: bool,
    /// A header set to the verified payload (base64url JSON, as in the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_payload_header: Option<String>,
    /// Tolerance for `exp`, `nbf` and `iat`, seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    /// Reject tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Reject tokens whose lifetime (`exp` − `iat`, or − `nbf`) exceeds this, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_s: Option<u64>,
}

fn default_from_headers() -> Vec<HeaderSourceConfig> {
    vec![HeaderSourceConfig {
        name: "authorization".into(),
        value_prefix: "Bearer ".into(),
    }]
}
fn default_clock_skew() -> u64 {
    60
}
fn default_true() -> bool {
    true
}

/// A header that carries the token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderSourceConfig {
    pub name: String,
    /// Text before the token (matched case-insensitively), e.g. `Bearer `.
    #[serde(default)]
    pub value_prefix: String,
}

/// Where the keys come from over HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster of the identity provider.
    pub cluster: String,
    /// `:authority` of the JWKS request (the IdP's host name).
    pub authority: String,
    /// `:path` of the JWKS request, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// Timeout of a fetch, and the longest a request waits for keys, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Refetch period, seconds.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
    /// Least time between two fetches caused by unknown `kid`s, seconds.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_s: u64,
}

fn default_timeout_ms() -> u64 {
    1000
}
fn default_refresh_s() -> u64 {
    600
}
fn default_min_refetch() -> u64 {
    30
}

/// One claim copied into a header.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderConfig {
    /// Claim name; dots descend into objects (`realm_access.roles`).
    pub claim: String,
    /// Request header set to the claim's value (removed from every incoming request).
    pub header: String,
    /// Separator for array claims. Default `,`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "match")]
    pub match_: MatchConfig,
    /// `null` (no token needed), a provider name, `{"any":[...]}` or `{"all":[...]}`.
    #[serde(default)]
    pub requires: Option<RequiresConfig>,
    /// Scopes the token must all have (`scope`, space-delimited, or `scp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// A request without a token is let through (an invalid token is still rejected).
    #[serde(default)]
    pub allow_missing: bool,
}

/// A rule's `regex`, matched against the whole path (query excluded) by a lazy DFA: a few
/// instructions per byte once warm (regex-lite's backtracking took ~11k per request on a short
/// path). Syntax: Rust `regex`, ASCII classes (`\w` is `[0-9A-Za-z_]`), `.` any byte but `\n`.
pub struct PathRegex {
    regex: std::rc::Rc<regex_automata::hybrid::regex::Regex>,
    /// The DFA's lazily built states; per VM (one thread), bounded by the builder's capacity.
    cache: std::cell::RefCell<regex_automata::hybrid::regex::Cache>,
}

impl Clone for PathRegex {
    fn clone(&self) -> Self {
        Self {
            regex: std::rc::Rc::clone(&self.regex),
            cache: std::cell::RefCell::new(self.regex.create_cache()),
        }
    }
}

impl std::fmt::Debug for PathRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathRegex")
    }
}

impl PathRegex {
    /// Lazy DFA state cache per rule: enough for any realistic path pattern.
    const CACHE_BYTES: usize = 256 * 1024;

    pub fn new(pattern: &str, ignore_case: bool) -> Result<Self, String> {
        use regex_automata::{hybrid, util::syntax};
        let regex = hybrid::regex::Regex::builder()
            .syntax(
                syntax::Config::new()
                    .unicode(false)
                    .utf8(false)
                    .case_insensitive(ignore_case),
            )
            .dfa(hybrid::dfa::Config::new().cache_capacity(Self::CACHE_BYTES))
            .build(&format!("^(?:{pattern})$"))
            .map_err(|e| describe_build_error(&e))?;
        let cache = std::cell::RefCell::new(regex.create_cache());
        Ok(Self {
            regex: std::rc::Rc::new(regex),
            cache,
        })
    }

    pub fn is_match(&self, path: &[u8]) -> bool {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => self.regex.is_match(&mut cache, path),
            // Not reentrant in practice (one thread per VM); a fresh cache is correct, just slower.
            Err(_) => self.regex.is_match(&mut self.regex.create_cache(), path),
        }
    }
}

/// One line saying what is wrong with a pattern: the innermost cause (the parser's), without
/// its multi-line rendering of our anchored wrapper around the user's pattern.
fn describe_build_error(e: &regex_automata::hybrid::BuildError) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    match text.rsplit_once("error: ") {
        Some((_, why)) => why.trim().to_string(),
        None => text.replace('\n', " "),
    }
}

/// Exactly one of `prefix`, `path`, `regex`; optionally `methods`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Matched against the whole path (without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Methods are compared ASCII-case-insensitively (`post` is `POST`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Compare `prefix`, `path` or `regex` ASCII-case-insensitively, as Envoy's route
    /// `case_sensitive: false` does: for upstreams that serve `/API/x` as `/api/x`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RequiresConfig {
    Provider(String),
    Any { any: Vec<String> },
    All { all: Vec<String> },
}

// ---- compiled -------------------------------------------------------------------------------

/// Where a token is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Lowercased header name and prefix.
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub path: Vec<String>,
    pub header: String,
    pub separator: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub refresh_s: u64,
    pub min_refetch_interval_s: u64,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub subjects: Vec<String>,
    pub inline_keys: Option<KeySet>,
    pub remote: Option<Remote>,
    pub algorithms: AlgSet,
    /// What a key without a JWK `alg` may verify ([`crate::jwk::Key::accepts`]).
    pub undeclared_algs: AlgSet,
    /// Indices into [`Settings::sources`].
    pub sources: Vec<usize>,
    pub claim_to_headers: Vec<ClaimHeader>,
    pub forward: bool,
    pub payload_header: Option<String>,
    pub clock_skew_s: i64,
    pub require_exp: bool,
    pub max_lifetime_s: Option<i64>,
}

// Only on wasm32 (4-byte `String`s) is the regex variant big enough for clippy to object. A
// rule's path match is built once per configuration and read in place per request: boxing it
// would buy nothing but an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `ignore_case`: the configured text, compared ASCII-case-insensitively.
    PrefixIgnoreCase(String),
    ExactIgnoreCase(String),
    Regex(PathRegex),
}

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
            PathMatch::Exact(p) => path == p.as_bytes(),
            PathMatch::PrefixIgnoreCase(p) => path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            PathMatch::ExactIgnoreCase(p) => path.eq_ignore_ascii_case(p.as_bytes()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    /// Whether this matches every path (`prefix: "/"`).
    fn is_catch_all(&self) -> bool {
        matches!(self, PathMatch::Prefix(p) | PathMatch::PrefixIgnoreCase(p) if p == "/")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requires {
    None,
    /// Provider indices; one must accept the token.
    Any(Vec<usize>),
    /// Provider indices; every one must accept the token.
    All(Vec<usize>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub path: PathMatch,
    /// Uppercase; empty = any method.
    pub methods: Vec<String>,
    pub requires: Requires,
    pub scopes: Vec<String>,
    pub allow_missing: bool,
}

#[derive(Debug)]
pub struct Settings {
    /// Sorted by name.
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Every distinct token source of every provider.
    pub sources: Vec<Source>,
    pub bypass_cors_preflight: bool,
    pub cache_size: usize,
    pub realm: String,
    /// Every claim header and payload header (sorted, deduplicated): removed from every request,
    /// with their `_` spellings.
    pub strip_headers: Vec<String>,
    /// `strip_headers`, for finding their `_` spellings in a request.
    pub strip_names: OwnNames,
    /// What is valid but probably not meant (no catch-all rule, no audience check): logged as
    /// warnings by the glue when the configuration is loaded.
    pub warnings: Vec<String>,
    /// A hash of the configuration, namespacing shared-data keys (16 hex digits).
    pub config_hash: String,
}

impl Settings {
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
    }
}

fn err(path: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(path, msg)
}

fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    normalize_header_name(name).map_err(|e| err(path, e.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A parameter or cookie name: non-empty, no `=`, `&`, `;`, whitespace or control bytes.
fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b'&' | b';' | b','))
}

/// 64-bit FNV-1a: a stable hash of the configuration bytes for shared-data key names (not a
/// security boundary; different configurations only need different namespaces).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn compile_provider(
    name: &str,
    p: &ProviderConfig,
    sources: &mut Vec<Source>,
    strip: &mut Vec<String>,
) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    if !valid_name(name) {
        return Err(err(
            format!("providers.{name}"),
            "provider names must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    if p.issuer.is_empty() {
        return Err(err(at("issuer"), "must not be empty"));
    }
    if let Some(i) = p.audiences.iter().position(String::is_empty) {
        return Err(err(
            format!("providers.{name}.audiences[{i}]"),
            "must not be empty",
        ));
    }
    if let Some(i) = p.subjects.iter().position(String::is_empty) {
        return Err(err(
            format!("providers.{name}.subjects[{i}]"),
            "must not be empty (an empty prefix matches every subject; omit `subjects` to not \
             check `sub`)",
        ));
    }
    let inline_keys = match &p.jwks {
        None => None,
        Some(serde_json::Value::String(s)) => {
            Some(parse_jwks_bytes(s.as_bytes()).map_err(|e| err(at("jwks"), e))?)
        }
        Some(v @ serde_json::Value::Object(_)) => {
            Some(parse_jwks(v).map_err(|e| err(at("jwks"), e))?)
        }
        Some(_) => return Err(err(at("jwks"), "must be a JWKS object or a JSON string")),
    };
    let remote = match &p.remote_jwks {
        None => None,
        Some(r) => {
            if r.cluster.is_empty() {
                return Err(err(at("remote_jwks.cluster"), "must not be empty"));
            }
            if r.authority.is_empty() || r.authority.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(err(
                    at("remote_jwks.authority"),
                    "must be a non-empty host name",
                ));
            }
            if !r.path.starts_with('/') || r.path.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(err(at("remote_jwks.path"), "must start with '/'"));
            }
            if !(1..=60_000).contains(&r.timeout_ms) {
                return Err(err(at("remote_jwks.timeout_ms"), "must be 1..=60000"));
            }
            if r.refresh_s == 0 {
                return Err(err(at("remote_jwks.refresh_s"), "must be at least 1"));
            }
            Some(Remote {
                cluster: r.cluster.clone(),
                authority: r.authority.clone(),
                path: r.path.clone(),
                timeout_ms: r.timeout_ms,
                refresh_s: r.refresh_s,
                min_refetch_interval_s: r.min_refetch_interval_s,
            })
        }
    };
    if inline_keys.is_none() && remote.is_none() {
        return Err(err(
            format!("providers.{name}"),
            "needs `jwks` or `remote_jwks`",
        ));
    }
    // Keys without a JWK `alg` serve the algorithms the operator listed, or by default every
    // algorithm but RSA-PSS (see `AlgSet::undeclared_default`).
    let undeclared_algs = match &p.algorithms {
        Some(list) => {
            let mut set = AlgSet::EMPTY;
            list.iter()
                .filter_map(|a| Alg::parse(a))
                .for_each(|a| set.insert(a));
            set
        }
        None => AlgSet::undeclared_default(),
    };
    let compatible = inline_keys
        .as_ref()
        .map_or(AlgSet::EMPTY, |k| k.compatible_algs(undeclared_algs));
    let algorithms = match &p.algorithms {
        None => {
            if remote.is_some() {
                compatible.union(AlgSet::asymmetric())
            } else {
                compatible
            }
        }
        Some(list) => {
            let mut set = AlgSet::EMPTY;
            for (i, a) in list.iter().enumerate() {
                let alg = Alg::parse(a).ok_or_else(|| {
                    err(
                        format!("providers.{name}.algorithms[{i}]"),
                        "unknown or forbidden algorithm (allowed: HS256 HS384 HS512 RS256 \
                         RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)",
                    )
                })?;
                if remote.is_none() && !compatible.contains(alg) {
                    return Err(err(
                        format!("providers.{name}.algorithms[{i}]"),
                        format!("no key in `jwks` can verify {}", alg.name()),
                    ));
                }
                set.insert(alg);
            }
            set
        }
    };
    if algorithms.is_empty() {
        return Err(err(at("algorithms"), "must not be empty"));
    }
    let mut my_sources = Vec::new();
    let mut add = |src: Source| {
        let idx = match sources.iter().position(|s| *s == src) {
            Some(i) => i,
            None => {
                sources.push(src);
                sources.len() - 1
            }
        };
        if !my_sources.contains(&idx) {
            my_sources.push(idx);
        }
    };
    for (i, h) in p.from_headers.iter().enumerate() {
        let header = header_name(&format!("providers.{name}.from_headers[{i}].name"), &h.name)?;
        if h.value_prefix.bytes().any(|b| b.is_ascii_control()) {
            return Err(err(
                format!("providers.{name}.from_headers[{i}].value_prefix"),
                "must not contain control characters",
            ));
        }
        add(Source::Header {
            name: header,
            prefix: h.value_prefix.clone(),
        });
    }
    for (i, q) in p.from_params.iter().enumerate() {
        if !valid_token_name(q) {
            return Err(err(
                format!("providers.{name}.from_params[{i}]"),
                "must be a non-empty name without '=', '&', ';', ',' or spaces",
            ));
        }
        add(Source::Param(q.clone()));
    }
    for (i, c) in p.from_cookies.iter().enumerate() {
        if !valid_token_name(c) {
            return Err(err(
                format!("providers.{name}.from_cookies[{i}]"),
                "must be a non-empty name without '=', '&', ';', ',' or spaces",
            ));
        }
        add(Source::Cookie(c.clone()));
    }
    if my_sources.is_empty() {
        return Err(err(
            format!("providers.{name}"),
            "needs at least one of `from_headers`, `from_params`, `from_cookies`",
        ));
    }
    let mut claim_to_headers = Vec::with_capacity(p.claim_to_headers.len());
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let path: Vec<String> = c.claim.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(err(
                format!("providers.{name}.claim_to_headers[{i}].claim"),
                "must be a claim name or a dotted path without empty segments",
            ));
        }
        let header = header_name(
            &format!("providers.{name}.claim_to_headers[{i}].header"),
            &c.header,
        )?;
        let separator = c.separator.clone().unwrap_or_else(|| ",".into());
        if separator.bytes().any(|b| b.is_ascii_control()) {
            return Err(err(
                format!("providers.{name}.claim_to_headers[{i}].separator"),
                "must not contain control characters",
            ));
        }
        strip.push(header.clone());
        claim_to_headers.push(ClaimHeader {
            path,
            header,
            separator,
        });
    }
    let payload_header = match &p.forward_payload_header {
        None => None,
        Some(h) => {
            let h = header_name(&at("forward_payload_header"), h)?;
            strip.push(h.clone());
            Some(h)
        }
    };
    let clock_skew_s = i64::try_from(p.clock_skew_s)
        .ok()
        .filter(|s| *s <= 3600)
        .ok_or_else(|| err(at("clock_skew_s"), "must be at most 3600"))?;
    let max_lifetime_s = match p.max_lifetime_s {
        None => None,
        Some(0) => return Err(err(at("max_lifetime_s"), "must be at least 1")),
        Some(s) => Some(i64::try_from(s).unwrap_or(i64::MAX)),
    };
    Ok(Provider {
        name: name.to_owned(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        subjects: p.subjects.clone(),
        inline_keys,
        remote,
        algorithms,
        undeclared_algs,
        sources: my_sources,
        claim_to_headers,
        forward: p.forward,
        payload_header,
        clock_skew_s,
        require_exp: p.require_exp,
        max_lifetime_s,
    })
}

fn provider_list(
    providers: &[Provider],
    at: &str,
    names: &[String],
) -> Result<Vec<usize>, ConfigError> {
    if names.is_empty() {
        return Err(err(at, "must name at least one provider"));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            providers
                .binary_search_by(|p| p.name.as_str().cmp(n))
                .map_err(|_| err(format!("{at}[{i}]"), format!("unknown provider `{n}`")))
        })
        .collect()
}

fn compile_rule(providers: &[Provider], i: usize, r: &RuleConfig) -> Result<Rule, ConfigError> {
    let at = |f: &str| format!("rules[{i}].{f}");
    let m = &r.match_;
    let path = match (&m.prefix, &m.path, &m.regex) {
        (Some(p), None, None) => {
            if !p.starts_with('/') {
                return Err(err(at("match.prefix"), "must start with '/'"));
            }
            if m.ignore_case {
                PathMatch::PrefixIgnoreCase(p.clone())
            } else {
                PathMatch::Prefix(p.clone())
            }
        }
        (None, Some(p), None) => {
            if !p.starts_with('/') {
                return Err(err(at("match.path"), "must start with '/'"));
            }
            if m.ignore_case {
                PathMatch::ExactIgnoreCase(p.clone())
            } else {
                PathMatch::Exact(p.clone())
            }
        }
        (None, None, Some(re)) => PathMatch::Regex(
            PathRegex::new(re, m.ignore_case)
                .map_err(|e| err(at("match.regex"), format!("invalid regex: {e}")))?,
        ),
        _ => {
            return Err(err(
                at("match"),
                "needs exactly one of `prefix`, `path`, `regex`",
            ));
        }
    };
    let mut methods = Vec::with_capacity(m.methods.len());
    for (j, method) in m.methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(err(
                format!("rules[{i}].match.methods[{j}]"),
                "not a method",
            ));
        }
        methods.push(method.to_ascii_uppercase());
    }
    let requires = match &r.requires {
        None => Requires::None,
        Some(RequiresConfig::Provider(name)) => Requires::Any(vec![
            providers
                .binary_search_by(|p| p.name.as_str().cmp(name))
                .map_err(|_| err(at("requires"), format!("unknown provider `{name}`")))?,
        ]),
        Some(RequiresConfig::Any { any }) => {
            Requires::Any(provider_list(providers, &at("requires.any"), any)?)
        }
        Some(RequiresConfig::All { all }) => {
            Requires::All(provider_list(providers, &at("requires.all"), all)?)
        }
    };
    if requires == Requires::None && (!r.scopes.is_empty() || r.allow_missing) {
        return Err(err(
            at("requires"),
            "`scopes` and `allow_missing` need a provider in `requires`",
        ));
    }
    for (j, s) in r.scopes.iter().enumerate() {
        if s.is_empty() || s.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
            return Err(err(format!("rules[{i}].scopes[{j}]"), "not a scope token"));
        }
    }
    Ok(Rule {
        path,
        methods,
        requires,
        scopes: r.scopes.clone(),
        allow_missing: r.allow_missing,
    })
}

/// Valid configurations that leave a door open an operator probably meant to close.
fn warnings(config: &JwtConfig, rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    if !rules.is_empty()
        && !rules
            .iter()
            .any(|r| r.path.is_catch_all() && r.methods.is_empty())
    {
        out.push(
            "rules: no rule matches every request (e.g. {\"match\":{\"prefix\":\"/\"}} last), \
             so a request no rule matches needs no token (fail-open)"
                .to_owned(),
        );
    }
    for (name, p) in &config.providers {
        if p.audiences.is_empty() {
            out.push(format!(
                "providers.{name}.audiences: empty, so `aud` is not checked: a token this \
                 issuer made for another service is accepted too"
            ));
        }
    }
    out
}

/// Parse and validate plugin configuration bytes.
pub fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
    let config: JwtConfig = parse_config(bytes)?;
    compile(&config, bytes.unwrap_or_default())
}

/// Validate a parsed configuration. `raw` feeds the shared-data namespace hash.
pub fn compile(config: &JwtConfig, raw: &[u8]) -> Result<Settings, ConfigError> {
    let mut sources = Vec::new();
    let mut strip = Vec::new();
    let mut providers = Vec::with_capacity(config.providers.len());
    // BTreeMap iteration is sorted by name, so `providers` is too.
    for (name, p) in &config.providers {
        providers.push(compile_provider(name, p, &mut sources, &mut strip)?);
    }
    let mut rules = Vec::with_capacity(config.rules.len());
    for (i, r) in config.rules.iter().enumerate() {
        rules.push(compile_rule(&providers, i, r)?);
    }
    if config.realm.is_empty()
        || config.realm.len() > 128
        || !config
            .realm
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
        || config.realm.contains(['"', '\\'])
    {
        return Err(err(
            "realm",
            "must be 1-128 printable ASCII characters without '\"' or '\\'",
        ));
    }
    if config.cache_size > 100_000 {
        return Err(err("cache_size", "must be at most 100000"));
    }
    // A token header must not also be a claim header (the claim header is stripped first).
    for s in &sources {
        if let Source::Header { name, .. } = s
            && strip.contains(name)
        {
            return Err(err(
                "providers",
                format!("header `{name}` is both a token source and a claim/payload header"),
            ));
        }
    }
    strip.sort();
    strip.dedup();
    let warnings = warnings(config, &rules);
    Ok(Settings {
        providers,
        rules,
        sources,
        bypass_cors_preflight: config.bypass_cors_preflight,
        cache_size: config.cache_size,
        realm: config.realm.clone(),
        strip_names: OwnNames::new(strip.iter().map(String::as_str)),
        strip_headers: strip,
        warnings,
        config_hash: format!("{:016x}", fnv1a64(raw)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    pub const HS_KEY: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA";

    pub fn minimal() -> serde_json::Value {
        serde_json::json!({
            "providers": {"p": {"issuer": "https://idp", "jwks": {"keys": [{"kty":"oct","k":HS_KEY}]}}},
            "rules": [{"match": {"prefix": "/"}, "requires": "p"}]
        })
    }

    fn compile_json(v: &serde_json::Value) -> Result<Settings, ConfigError> {
        let bytes = serde_json::to_vec(v).unwrap();
        parse_settings(Some(&bytes))
    }

    fn error_of(v: serde_json::Value) -> String {
        compile_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        gatewasm_common::schema::check_schema_file::<JwtConfig>(&path).unwrap();
    }

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let s = compile_json(&minimal()).unwrap();
        assert_eq!(s.providers.len(), 1);
        let p = &s.providers[0];
        assert_eq!(p.clock_skew_s, 60);
        assert!(p.require_exp && !p.forward);
        assert_eq!(
            s.sources,
            vec![Source::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert!(p.algorithms.contains(Alg::HS256) && !p.algorithms.contains(Alg::RS256));
        assert!(s.bypass_cors_preflight);
        assert_eq!(s.config_hash.len(), 16);
        assert_eq!(s.rules[0].requires, Requires::Any(vec![0]));
    }

    #[test]
    fn empty_config_is_valid_and_does_nothing() {
        let s = parse_settings(None).unwrap();
        assert!(s.providers.is_empty() && s.rules.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = minimal();
        v["providers"]["p"]["remote_jwks"] =
            serde_json::json!({"cluster": "", "authority": "idp", "path": "/jwks"});
        assert_eq!(
            error_of(v),
            "providers.p.remote_jwks.cluster: must not be empty"
        );

        let mut v = minimal();
        v["rules"][0]["requires"] = "nope".into();
        assert_eq!(error_of(v), "rules[0].requires: unknown provider `nope`");

        let mut v = minimal();
        v["rules"][0]["requires"] = serde_json::json!({"any": ["p", "q"]});
        assert_eq!(
            error_of(v),
            "rules[0].requires.any[1]: unknown provider `q`"
        );

        let mut v = minimal();
        v["rules"][0]["match"] = serde_json::json!({"regex": "(/"});
        let e = error_of(v);
        assert!(e.starts_with("rules[0].match.regex: invalid regex"), "{e}");
        assert!(e.contains("unclosed group"), "{e}");

        let mut v = minimal();
        v["rules"][0]["match"] = serde_json::json!({"prefix": "/", "path": "/x"});
        assert!(error_of(v).starts_with("rules[0].match: needs exactly one"));

        let mut v = minimal();
        v["providers"]["p"]["claim_to_headers"] =
            serde_json::json!([{"claim": "sub", "header": "x user"}]);
        assert!(
            error_of(v).starts_with("providers.p.claim_to_headers[0].header: invalid character")
        );

        let mut v = minimal();
        v["providers"]["p"]["claim_to_headers"] =
            serde_json::json!([{"claim": "a..b", "header": "x-u"}]);
        assert!(error_of(v).starts_with("providers.p.claim_to_headers[0].claim"));

        let mut v = minimal();
        v["providers"]["p"]["algorithms"] = serde_json::json!(["HS256", "none"]);
        assert!(error_of(v).starts_with("providers.p.algorithms[1]: unknown or forbidden"));

        let mut v = minimal();
        v["providers"]["p"]["algorithms"] = serde_json::json!(["RS256"]);
        assert_eq!(
            error_of(v),
            "providers.p.algorithms[0]: no key in `jwks` can verify RS256"
        );

        let mut v = minimal();
        v["providers"]["p"]["jwks"] = serde_json::json!({"keys": [{"kty": "RSA", "n": "AQAB"}]});
        assert!(error_of(v).starts_with("providers.p.jwks: keys[0]: missing `e`"));

        let mut v = minimal();
        v["providers"]["p"]["jwks"] = serde_json::json!(5);
        assert!(error_of(v).starts_with("providers.p.jwks: must be"));

        let mut v = minimal();
        v["providers"]["p"].as_object_mut().unwrap().remove("jwks");
        assert_eq!(error_of(v), "providers.p: needs `jwks` or `remote_jwks`");

        let mut v = minimal();
        v["providers"]["p"]["issuer"] = "".into();
        assert_eq!(error_of(v), "providers.p.issuer: must not be empty");

        let mut v = minimal();
        v["providers"]["p"]["isuer"] = "x".into();
        assert!(error_of(v).starts_with("providers.p.isuer: unknown field"));

        let mut v = minimal();
        v["rules"][0]["scopes"] = serde_json::json!(["a b"]);
        assert_eq!(error_of(v), "rules[0].scopes[0]: not a scope token");

        let mut v = minimal();
        v["rules"][0]["requires"] = serde_json::Value::Null;
        v["rules"][0]["allow_missing"] = true.into();
        assert!(error_of(v).starts_with("rules[0].requires: `scopes` and `allow_missing`"));

        let mut v = minimal();
        v["providers"]["p"]["claim_to_headers"] =
            serde_json::json!([{"claim": "sub", "header": "Authorization"}]);
        assert!(error_of(v).contains("both a token source and a claim"));

        let mut v = minimal();
        v["providers"]["p"]["from_headers"] = serde_json::json!([]);
        assert!(error_of(v).starts_with("providers.p: needs at least one of"));

        // An empty subject prefix would silently match every token.
        let mut v = minimal();
        v["providers"]["p"]["subjects"] = serde_json::json!(["user:", ""]);
        assert!(error_of(v).starts_with("providers.p.subjects[1]: must not be empty"));

        let mut v = minimal();
        v["providers"]["p"]["audiences"] = serde_json::json!([""]);
        assert_eq!(error_of(v), "providers.p.audiences[0]: must not be empty");

        // The path names the provider, not the header.
        let mut v = minimal();
        v["providers"]["p"]["from_headers"] =
            serde_json::json!([{"name": "x-token", "value_prefix": "Bearer\n"}]);
        assert_eq!(
            error_of(v),
            "providers.p.from_headers[0].value_prefix: must not contain control characters"
        );

        let mut v = minimal();
        v["providers"]["p"]["from_params"] = serde_json::json!(["a=b"]);
        assert!(error_of(v).starts_with("providers.p.from_params[0]"));

        let mut v = minimal();
        v["providers"]["p"]["remote_jwks"] =
            serde_json::json!({"cluster": "idp", "authority": "idp", "path": "jwks"});
        assert_eq!(
            error_of(v),
            "providers.p.remote_jwks.path: must start with '/'"
        );
    }

    #[test]
    fn fail_open_and_unchecked_audience_configurations_are_warned_about() {
        // minimal(): a catch-all rule, a provider without audiences.
        let s = compile_json(&minimal()).unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].starts_with("providers.p.audiences: empty"));
        let mut v = minimal();
        v["providers"]["p"]["audiences"] = serde_json::json!(["api"]);
        assert!(compile_json(&v).unwrap().warnings.is_empty());
        for rules in [
            serde_json::json!([{"match": {"prefix": "/api"}, "requires": "p"}]),
            // `/` for some methods only is no catch-all either.
            serde_json::json!([{"match": {"prefix": "/", "methods": ["POST"]}, "requires": "p"}]),
        ] {
            v["rules"] = rules;
            let w = compile_json(&v).unwrap().warnings;
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].starts_with("rules: no rule matches every request"),
                "{w:?}"
            );
        }
        v["rules"] = serde_json::json!([
            {"match": {"prefix": "/api"}, "requires": "p"},
            {"match": {"prefix": "/"}, "requires": null}
        ]);
        assert!(
            compile_json(&v).unwrap().warnings.is_empty(),
            "an explicit open catch-all"
        );
    }

    #[test]
    fn remote_providers_default_to_asymmetric_algs_and_strip_headers_are_collected() {
        let v = serde_json::json!({
            "providers": {
                "a": {"issuer": "i", "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/j"},
                      "claim_to_headers": [{"claim": "sub", "header": "X-User-Id"},
                                           {"claim": "role", "header": "x-user-role"}],
                      "forward_payload_header": "x-jwt-payload",
                      "from_cookies": ["session"], "from_params": ["access_token"]},
                "b": {"issuer": "j", "jwks": {"keys": [{"kty":"oct","k":HS_KEY}]},
                      "claim_to_headers": [{"claim": "sub", "header": "x-user-id"}]}
            },
            "rules": [{"match": {"path": "/x", "methods": ["get"]}, "requires": {"all": ["a", "b"]}}]
        });
        let s = compile_json(&v).unwrap();
        let a = &s.providers[0];
        assert!(a.algorithms.contains(Alg::RS256) && a.algorithms.contains(Alg::EdDSA));
        assert!(!a.algorithms.contains(Alg::HS256));
        assert_eq!(
            s.strip_headers,
            vec!["x-jwt-payload", "x-user-id", "x-user-role"]
        );
        // authorization is shared by both providers: one source.
        assert_eq!(s.sources.len(), 3);
        assert_eq!(s.providers[1].sources, vec![0]);
        assert_eq!(s.rules[0].methods, vec!["GET"]);
        assert_eq!(s.rules[0].requires, Requires::All(vec![0, 1]));
        assert_eq!(a.remote.as_ref().unwrap().refresh_s, 600);
        assert_eq!(a.remote.as_ref().unwrap().min_refetch_interval_s, 30);
    }

    #[test]
    fn jwks_may_be_a_string() {
        let mut v = minimal();
        v["providers"]["p"]["jwks"] = serde_json::json!({"keys": [{"kty":"oct","k":HS_KEY}]})
            .to_string()
            .into();
        assert!(compile_json(&v).is_ok());
    }
}
