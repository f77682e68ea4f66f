//! The per-request decision: from the request headers (as `get_http_request_headers_bytes()`
//! returns them) to either "route to tenant N" (with the stripped `:path`, if any) or a
//! rejection. Pure; [`crate::stage`] turns the [`Decision`] into effects.
//!
//! Every source is evaluated (they are all in memory already). Then:
//! - a source that yields several *different* values (a repeated header or query parameter) is
//!   ambiguous, which counts as a conflict;
//! - `consistency: reject`: every source that yields a tenant must yield the same one, else
//!   [`Rejection::Conflict`]; `first`: the first source that yields something decides;
//! - nothing found → `default_tenant`, else [`Rejection::Missing`];
//! - a tenant that is not configured → [`Rejection::Unknown`] (the default tenant is *not* used);
//! - a tenant with `allowed_hosts` reached on another host → [`Rejection::HostNotAllowed`];
//! - `:path` is stripped when a `strip` path source matched the resolved tenant.

use std::borrow::Cow;

use gatewasm_common::bytes;

use crate::config::{Consistency, Settings, Source};
use crate::pattern::{normalize_host, query_values, strip_prefix};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No source yielded a tenant and there is no default tenant.
    Missing,
    /// The tenant is not configured.
    Unknown,
    /// Sources (or copies of one source) disagree.
    Conflict,
    /// The tenant does not accept requests on this host.
    HostNotAllowed,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Self::Missing,
        Self::Unknown,
        Self::Conflict,
        Self::HostNotAllowed,
    ];

    /// The machine-readable `error` of the JSON reply.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "tenant_missing",
            Self::Unknown => "tenant_unknown",
            Self::Conflict => "tenant_conflict",
            Self::HostNotAllowed => "tenant_host_not_allowed",
        }
    }

    /// The human-readable `message` (never echoes request data).
    pub const fn message(self) -> &'static str {
        match self {
            Self::Missing => "the request does not identify a tenant",
            Self::Unknown => "the tenant is not known",
            Self::Conflict => "the request identifies more than one tenant",
            Self::HostNotAllowed => "the tenant is not served on this host",
        }
    }

    /// `gatewasm_tenant_routing_rejected_<this>`.
    pub const fn metric_name(self) -> &'static str {
        match self {
            Self::Missing => "gatewasm_tenant_routing_rejected_missing",
            Self::Unknown => "gatewasm_tenant_routing_rejected_unknown",
            Self::Conflict => "gatewasm_tenant_routing_rejected_conflict",
            Self::HostNotAllowed => "gatewasm_tenant_routing_rejected_host_not_allowed",
        }
    }

    pub const fn index(self) -> usize {
        match self {
            Self::Missing => 0,
            Self::Unknown => 1,
            Self::Conflict => 2,
            Self::HostNotAllowed => 3,
        }
    }

    /// The HTTP status of the local reply.
    pub fn status(self, settings: &Settings) -> u32 {
        match self {
            Self::Missing => settings.missing_tenant_status,
            Self::Unknown => settings.unknown_tenant_status,
            Self::Conflict | Self::HostNotAllowed => 403,
        }
    }
}

/// Metric name of the requests routed to `tenant` (`unknown` for unconfigured tenants).
pub fn requests_metric_name(tenant: &str) -> String {
    format!("gatewasm_tenant_routing_requests_{tenant}")
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Route {
        /// Index into [`Settings::tenants`].
        tenant: usize,
        /// The new `:path` when a `strip` source matched.
        new_path: Option<Vec<u8>>,
    },
    Reject(Rejection),
}

/// What one source found.
enum Found<'a> {
    Nothing,
    One(Cow<'a, [u8]>),
    /// Several different values.
    Ambiguous,
}

fn collect<'a>(values: impl Iterator<Item = Cow<'a, [u8]>>) -> Found<'a> {
    let mut found = Found::Nothing;
    for value in values {
        if value.is_empty() {
            continue;
        }
        found = match found {
            Found::Nothing => Found::One(value),
            Found::One(prev) if bytes::eq(&prev, &value) => Found::One(prev),
            Found::One(_) | Found::Ambiguous => Found::Ambiguous,
        };
    }
    found
}

fn first_value<'h>(headers: &[(&str, &'h [u8])], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// Decide what to do with a request, given all its headers.
pub fn resolve(settings: &Settings, headers: &[(&str, &[u8])]) -> Decision {
    let path = first_value(headers, ":path");
    let host = if settings.needs_host() {
        first_value(headers, ":authority").and_then(normalize_host)
    } else {
        None
    };

    let mut chosen: Option<Cow<'_, [u8]>> = None;
    let mut conflict = false;
    // (tenant value, offset of the rest of the path) of the first `strip` source that matched.
    let mut strip: Option<(Cow<'_, [u8]>, usize)> = None;
    for source in &settings.sources {
        let found = match source {
            Source::Header(name) => collect(
                headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| Cow::Borrowed(v.trim_ascii())),
            ),
            Source::Host(pattern) => host
                .as_deref()
                .and_then(|h| pattern.matches(h))
                .map_or(Found::Nothing, |t| Found::One(Cow::Borrowed(t))),
            Source::PathPrefix {
                pattern,
                strip: wants_strip,
            } => match path.and_then(|p| pattern.matches(p)) {
                None => Found::Nothing,
                Some(m) => {
                    if *wants_strip && strip.is_none() {
                        strip = Some((m.tenant.clone(), m.rest));
                    }
                    Found::One(m.tenant)
                }
            },
            Source::Query(name) => path.map_or(Found::Nothing, |p| collect(query_values(p, name))),
        };
        let decided = chosen.is_some() || conflict;
        match (settings.consistency, found) {
            (_, Found::Nothing) => {}
            (Consistency::First, _) if decided => {}
            (_, Found::Ambiguous) => conflict = true,
            (_, Found::One(value)) => match &chosen {
                None => chosen = Some(value),
                Some(prev) if bytes::eq(prev, &value) => {}
                Some(_) => conflict = true,
            },
        }
    }
    if conflict {
        return Decision::Reject(Rejection::Conflict);
    }
    let tenant = match &chosen {
        None => match settings.default_tenant {
            Some(tenant) => tenant,
            None => return Decision::Reject(Rejection::Missing),
        },
        Some(value) => match settings.tenant_index(value) {
            Some(tenant) => tenant,
            None => return Decision::Reject(Rejection::Unknown),
        },
    };
    let Some(config) = settings.tenants.get(tenant) else {
        return Decision::Reject(Rejection::Unknown);
    };
    if let Some(rules) = &config.allowed_hosts {
        let allowed = host
            .as_deref()
            .is_some_and(|h| rules.iter().any(|rule| rule.allows(h)));
        if !allowed {
            return Decision::Reject(Rejection::HostNotAllowed);
        }
    }
    let new_path = match (strip, path) {
        (Some((value, rest)), Some(path)) if bytes::eq(&value, config.id.as_bytes()) => {
            Some(strip_prefix(path, rest))
        }
        _ => None,
    };
    Decision::Route { tenant, new_path }
}

/// Tenant header names (set by some tenant) that the request carries but `tenant` does not set:
/// they must be removed so a client cannot claim another tenant's attributes (e.g. its tier).
pub fn stale_tenant_headers<'s>(
    settings: &'s Settings,
    tenant: usize,
    headers: &[(&str, &[u8])],
) -> Vec<&'s str> {
    let own = settings.tenants.get(tenant).map(|t| t.headers.as_slice());
    settings
        .tenant_header_names
        .iter()
        .filter(|name| !own.is_some_and(|own| own.iter().any(|(n, _)| n == *name)))
        .filter(|name| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)))
        .map(String::as_str)
        .collect()
}

/// Request headers spelled like a header this filter sets but with `_` for `-` (`x_tenant_id`):
/// CGI-style upstreams read them as the same variable, so they are removed too.
pub fn underscore_spoofs<'h>(settings: &Settings, headers: &[(&'h str, &[u8])]) -> Vec<&'h str> {
    settings.own_names.underscore_variants(headers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;

    const TENANTS: &str = r#""tenants": {
        "acme": {"cluster": "acme_backend", "headers": {"x-tier": "gold"}},
        "globex": {"cluster": "globex_backend"},
        "initech": {"cluster": "initech_backend", "allowed_hosts": ["initech.example.com", "*.initech.example.com"]}
    }"#;

    fn settings(extra: &str) -> Settings {
        parse_settings(Some(format!("{{{TENANTS}, {extra}}}").as_bytes()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn req<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
    }

    fn decide(s: &Settings, pairs: &[(&str, &str)]) -> Result<(String, Option<String>), Rejection> {
        match resolve(s, &req(pairs)) {
            Decision::Route { tenant, new_path } => Ok((
                s.tenants[tenant].id.clone(),
                new_path.map(|p| String::from_utf8(p).unwrap()),
            )),
            Decision::Reject(r) => Err(r),
        }
    }

    /// (request headers, expected tenant or rejection).
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, Rejection>);

    fn ok(t: &str) -> Result<(String, Option<String>), Rejection> {
        Ok((t.to_owned(), None))
    }

    const ALL_SOURCES: &str = r#""sources": [
        {"header": "x-tenant-id"},
        {"host": "{tenant}.api.example.com"},
        {"path_prefix": "/t/{tenant}/", "strip": true},
        {"query": "tenant"}
    ]"#;

    #[test]
    fn each_source_alone() {
        let s = settings(ALL_SOURCES);
        let base = [(":authority", "api.example.com"), (":path", "/x")];
        assert_eq!(
            decide(&s, &[base[0], base[1], ("x-tenant-id", "acme")]),
            ok("acme")
        );
        assert_eq!(
            decide(&s, &[(":authority", "globex.api.example.com:443"), base[1]]),
            ok("globex")
        );
        assert_eq!(
            decide(&s, &[base[0], (":path", "/t/acme/orders?id=1")]),
            Ok(("acme".into(), Some("/orders?id=1".into())))
        );
        assert_eq!(
            decide(&s, &[base[0], (":path", "/x?tenant=globex")]),
            ok("globex")
        );
        assert_eq!(decide(&s, &base), Err(Rejection::Missing));
        assert_eq!(decide(&s, &[]), Err(Rejection::Missing));
    }

    /// Conflict rules, `consistency: reject` (the default).
    #[test]
    fn reject_mode_conflicts() {
        let s = settings(ALL_SOURCES);
        let cases: &[Case] = &[
            // Agreeing sources are fine.
            (
                &[
                    (":authority", "acme.api.example.com"),
                    ("x-tenant-id", "acme"),
                ],
                Ok("acme"),
            ),
            (
                &[
                    (":authority", "ACME.api.example.com."),
                    (":path", "/x?tenant=acme"),
                ],
                Ok("acme"),
            ),
            // Token (header) says acme, host says globex → 403.
            (
                &[
                    (":authority", "globex.api.example.com"),
                    ("x-tenant-id", "acme"),
                ],
                Err(Rejection::Conflict),
            ),
            (
                &[(":path", "/t/acme/?tenant=globex")],
                Err(Rejection::Conflict),
            ),
            // A percent-encoded path tenant still counts (it cannot hide from the check) ...
            (
                &[
                    (":authority", "globex.api.example.com"),
                    (":path", "/t/%61cme/"),
                ],
                Err(Rejection::Conflict),
            ),
            // ... and agrees when it decodes to the same tenant.
            (
                &[
                    (":authority", "acme.api.example.com"),
                    (":path", "/t/%61cme/"),
                ],
                Ok("acme"),
            ),
            // An unknown value that disagrees is a conflict too, not "ignored".
            (
                &[
                    (":authority", "acme.api.example.com"),
                    (":path", "/t/ac%2Fme/"),
                ],
                Err(Rejection::Conflict),
            ),
            // Repeated header / query parameter with different values.
            (
                &[("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
                Err(Rejection::Conflict),
            ),
            (
                &[(":path", "/?tenant=acme&tenant=globex")],
                Err(Rejection::Conflict),
            ),
            // Same value twice is not ambiguous.
            (
                &[("x-tenant-id", "acme"), ("x-tenant-id", "acme")],
                Ok("acme"),
            ),
            (&[(":path", "/?tenant=acme&tenant=%61cme")], Ok("acme")),
        ];
        for (pairs, want) in cases {
            let got = decide(&s, pairs).map(|(t, _)| t);
            assert_eq!(got, want.map(str::to_owned), "{pairs:?}");
        }
    }

    #[test]
    fn first_mode() {
        let s = settings(&format!(r#"{ALL_SOURCES}, "consistency": "first""#));
        let cases: &[Case] = &[
            (
                &[
                    (":authority", "globex.api.example.com"),
                    ("x-tenant-id", "acme"),
                ],
                Ok("acme"),
            ),
            (
                &[
                    (":authority", "globex.api.example.com"),
                    (":path", "/t/acme/"),
                ],
                Ok("globex"),
            ),
            // The deciding source is ambiguous → conflict; a later ambiguous one is ignored.
            (
                &[("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
                Err(Rejection::Conflict),
            ),
            (
                &[("x-tenant-id", "acme"), (":path", "/?tenant=a&tenant=b")],
                Ok("acme"),
            ),
            (
                &[
                    ("x-tenant-id", "nope"),
                    (":authority", "acme.api.example.com"),
                ],
                Err(Rejection::Unknown),
            ),
        ];
        for (pairs, want) in cases {
            let got = decide(&s, pairs).map(|(t, _)| t);
            assert_eq!(got, want.map(str::to_owned), "{pairs:?}");
        }
        // Strip only when the path's tenant is the one that won.
        assert_eq!(
            decide(&s, &[("x-tenant-id", "acme"), (":path", "/t/acme/x")]),
            Ok(("acme".into(), Some("/x".into())))
        );
        assert_eq!(
            decide(&s, &[("x-tenant-id", "globex"), (":path", "/t/acme/x")]),
            ok("globex")
        );
    }

    #[test]
    fn unknown_and_invalid_tenants() {
        let s = settings(ALL_SOURCES);
        for pairs in [
            &[("x-tenant-id", "nope")][..],
            &[("x-tenant-id", "ACME")],
            &[("x-tenant-id", "acme\u{0}")],
            &[(":authority", "nope.api.example.com")],
            &[(":path", "/t/nope/")],
            &[(":path", "/t/ac%2fme/")],
            &[(":path", "/t/%zz/")],
            &[(":path", "/t/%41CME/")],
            &[(":path", "/x?tenant=..%2f")],
            &[(":authority", "xn--caf-dma.api.example.com")],
        ] {
            assert_eq!(decide(&s, pairs), Err(Rejection::Unknown), "{pairs:?}");
        }
        // Surrounding whitespace of a header value is not part of the id.
        assert_eq!(decide(&s, &[("x-tenant-id", " acme ")]), ok("acme"));
        // An empty header value is no value.
        assert_eq!(decide(&s, &[("x-tenant-id", "")]), Err(Rejection::Missing));
    }

    #[test]
    fn percent_encoded_paths_do_not_bypass() {
        let s = settings(r#""sources": [{"path_prefix": "/t/{tenant}/", "strip": true}]"#);
        for path in ["/t/%61cme/x", "/t/%61%63%6d%65/x"] {
            assert_eq!(
                decide(&s, &[(":path", path)]),
                Ok(("acme".into(), Some("/x".into()))),
                "{path}"
            );
        }
        // An encoded literal segment is not the prefix: nothing is stripped, no tenant from the
        // path (here: no tenant at all). Filters before this one matched the raw path, and a
        // prefix only this filter recognised must not be removed behind their back.
        for path in ["/%74/acme/x", "/%74/%61cme/x"] {
            assert_eq!(
                decide(&s, &[(":path", path)]),
                Err(Rejection::Missing),
                "{path}"
            );
        }
    }

    #[test]
    fn default_tenant() {
        let s = settings(&format!(r#"{ALL_SOURCES}, "default_tenant": "globex""#));
        assert_eq!(decide(&s, &[(":path", "/")]), ok("globex"));
        assert_eq!(decide(&s, &[("x-tenant-id", "acme")]), ok("acme"));
        // Not a fallback for unknown tenants or conflicts:
        assert_eq!(
            decide(&s, &[("x-tenant-id", "nope")]),
            Err(Rejection::Unknown)
        );
        assert_eq!(
            decide(&s, &[("x-tenant-id", "acme"), (":path", "/?tenant=globex")]),
            Err(Rejection::Conflict)
        );
    }

    #[test]
    fn allowed_hosts() {
        let s = settings(r#""sources": [{"header": "x-tenant-id"}]"#);
        let h = |authority: &'static str| [(":authority", authority), ("x-tenant-id", "initech")];
        assert_eq!(decide(&s, &h("initech.example.com")), ok("initech"));
        assert_eq!(decide(&s, &h("INITECH.example.com.:8443")), ok("initech"));
        assert_eq!(decide(&s, &h("eu.initech.example.com")), ok("initech"));
        assert_eq!(
            decide(&s, &h("acme.example.com")),
            Err(Rejection::HostNotAllowed)
        );
        assert_eq!(
            decide(&s, &h("initech.example.com.evil")),
            Err(Rejection::HostNotAllowed)
        );
        assert_eq!(
            decide(&s, &[("x-tenant-id", "initech")]),
            Err(Rejection::HostNotAllowed)
        );
        // Tenants without allowed_hosts accept any host.
        assert_eq!(
            decide(&s, &[(":authority", "x"), ("x-tenant-id", "acme")]),
            ok("acme")
        );
    }

    #[test]
    fn statuses_and_reasons() {
        let s = settings(r#""sources": [{"query": "t"}], "unknown_tenant_status": 421"#);
        assert_eq!(Rejection::Unknown.status(&s), 421);
        assert_eq!(Rejection::Missing.status(&s), 400);
        assert_eq!(Rejection::Conflict.status(&s), 403);
        assert_eq!(Rejection::HostNotAllowed.status(&s), 403);
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(
                r.metric_name()
                    .starts_with("gatewasm_tenant_routing_rejected_")
            );
            assert!(r.reason().starts_with("tenant_"));
        }
        assert_eq!(
            requests_metric_name("acme"),
            "gatewasm_tenant_routing_requests_acme"
        );
    }

    #[test]
    fn stale_headers() {
        let s = settings(r#""sources": [{"header": "x-tenant-id"}]"#);
        let r = req(&[("x-tier", "platinum"), ("x-other", "1")]);
        let globex = s.tenant_index(b"globex").unwrap();
        let acme = s.tenant_index(b"acme").unwrap();
        assert_eq!(stale_tenant_headers(&s, globex, &r), ["x-tier"]);
        assert!(
            stale_tenant_headers(&s, acme, &r).is_empty(),
            "acme sets x-tier itself"
        );
        assert!(stale_tenant_headers(&s, globex, &req(&[])).is_empty());
    }

    #[test]
    fn underscore_spellings_of_our_headers_are_spoofs() {
        let s = settings(r#""sources": [{"header": "x-tenant-id"}]"#);
        let r = req(&[
            ("x_tenant_id", "globex"),
            ("x_tenant_cluster", "globex_backend"),
            ("x_tier", "platinum"),
            ("x-tier", "gold"),
            ("x_other", "1"),
        ]);
        assert_eq!(
            underscore_spoofs(&s, &r),
            ["x_tenant_id", "x_tenant_cluster", "x_tier"]
        );
        assert!(underscore_spoofs(&s, &req(&[("x-tier", "gold")])).is_empty());
    }
}
