//! One request's decision: which rule applies, where the token is, which provider accepts it
//! (cache first, then issuer, keys and signature, and only then the other claims), and the
//! scopes. Pure: the keys fetched remotely, the clock, the cache and the host's native crypto
//! are passed in.
//!
//! Until a token's signature is verified, every refusal is the same 401 `bad_signature`
//! ([`UNVERIFIED`]): whether the algorithm, the issuer or the signature was wrong, and whether
//! the audience or subject would have matched, is nobody's business who cannot sign tokens.
//! Signature checks per request are capped ([`MAX_SIGNATURE_ATTEMPTS`],
//! [`MAX_SOFTWARE_ATTEMPTS`]) so a forged token costs at most about one verification.

use std::rc::Rc;

use smallvec::SmallVec;

use gatewasm_common::headers::method_matches;

use crate::cache::{Cache, Verified, token_hash};
use crate::claims::{self, ClaimError};
use crate::config::{Provider, Requires, Rule, Settings};
use crate::jwk::{Alg, Key, KeyKind, KeySet};
use crate::token::{self, Extracted, MULTIPLE_TOKENS, Parsed, path_only};
use crate::verify::{NativeVerifier, Path, native_hash, verify_with};

/// Why a request is refused. Each has a metric, a status and an RFC 6750 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    /// More than one token (RFC 6750 `invalid_request`, 400).
    InvalidRequest,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    Audience,
    Subject,
    Scope,
    UnknownKid,
    JwksUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Missing,
        Reason::InvalidRequest,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Audience,
        Reason::Subject,
        Reason::Scope,
        Reason::UnknownKid,
        Reason::JwksUnavailable,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The machine-readable reason (JSON `error` field and metric suffix).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::InvalidRequest => "invalid_request",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Audience => "audience",
            Reason::Subject => "subject",
            Reason::Scope => "scope",
            Reason::UnknownKid => "unknown_kid",
            Reason::JwksUnavailable => "jwks_unavailable",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            Reason::InvalidRequest => 400,
            Reason::Audience | Reason::Subject | Reason::Scope => 403,
            Reason::JwksUnavailable => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 `error` attribute; `None` for a missing token (§3.1) and for 503.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Reason::Missing | Reason::JwksUnavailable => None,
            Reason::InvalidRequest => Some("invalid_request"),
            Reason::Audience | Reason::Subject | Reason::Scope => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }
}

/// A refusal: the reason and a fixed description (never any token content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub description: &'static str,
}

const fn deny(reason: Reason, description: &'static str) -> Denial {
    Denial {
        reason,
        description,
    }
}

/// The one answer to a token whose signature was not verified: its algorithm is not allowed,
/// its issuer is no eligible provider's, no key may check it, or the signature is wrong.
pub const UNVERIFIED: Denial = deny(Reason::BadSignature, "the token could not be verified");

/// Signature checks one request may make, over all its providers and keys. A token without a
/// `kid` is tried against every key of the right type; beyond this many, a JWKS needs `kid`s.
pub const MAX_SIGNATURE_ATTEMPTS: u32 = 4;
/// Of those, checks in pure Rust of a public-key algorithm (PS*, EdDSA, and RS*/ES* on a host
/// without `verify_signature`): ~1–21M Wasm instructions each, so one per request.
pub const MAX_SOFTWARE_ATTEMPTS: u32 = 1;

/// What is left of one request's signature checks.
struct Budget {
    attempts: u32,
    software: u32,
}

impl Budget {
    const fn new() -> Self {
        Budget {
            attempts: MAX_SIGNATURE_ATTEMPTS,
            software: MAX_SOFTWARE_ATTEMPTS,
        }
    }

    /// Take one attempt for `alg` with `key`, or say the request has none left for it.
    fn take(&mut self, alg: Alg, key: &Key, native_available: bool) -> bool {
        let in_software = alg.key_kind() != KeyKind::Oct
            && !(native_available && native_hash(alg).is_some() && key.material.der().is_some());
        if self.attempts == 0 || in_software && self.software == 0 {
            return false;
        }
        self.attempts -= 1;
        true
    }

    /// Account for how the attempt actually ran (the host may turn out to lack the function).
    fn ran(&mut self, alg: Alg, path: Path) {
        if path == Path::Fallback && alg.key_kind() != KeyKind::Oct {
            self.software = self.software.saturating_sub(1);
        }
    }
}

impl From<ClaimError> for Denial {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Audience => deny(Reason::Audience, "the token audience is not accepted"),
            ClaimError::Subject => deny(Reason::Subject, "the token subject is not accepted"),
            ClaimError::MissingExp => deny(Reason::Malformed, "the token has no expiry"),
            ClaimError::BadTime => deny(Reason::Malformed, "a token time claim is not a number"),
            ClaimError::Expired => deny(Reason::Expired, "the token has expired"),
            ClaimError::NotYetValid => deny(Reason::NotYetValid, "the token is not valid yet"),
            ClaimError::Lifetime => deny(Reason::Expired, "the token lifetime is too long"),
            ClaimError::BadHeaderValue => deny(
                Reason::Malformed,
                "a token claim cannot be sent as a header",
            ),
        }
    }
}

/// The providers that accepted a token: usually one, kept inline (no allocation per request).
pub type VerifiedBy = SmallVec<[Rc<Verified>; 1]>;

/// The token was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<'a> {
    /// One entry per accepting provider.
    pub verified: VerifiedBy,
    /// Index into [`Settings::sources`] where the token was.
    pub source: usize,
    /// The token's bytes (token text: checked, or equal to a cached token that was).
    pub token: &'a [u8],
    /// Remove the token before the upstream (some accepting provider has `forward: false`).
    pub remove_token: bool,
}

impl Allowed<'_> {
    /// The base64url payload segment of the token.
    pub fn payload_b64(&self) -> &[u8] {
        let b = self.token;
        let Some(start) = b.iter().position(|&c| c == b'.').map(|i| i + 1) else {
            return &[];
        };
        let len = b
            .get(start..)
            .and_then(|rest| rest.iter().position(|&c| c == b'.'))
            .unwrap_or(0);
        b.get(start..start + len).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// No token needed (no rule, `requires: null`, CORS preflight, or allowed missing).
    Pass,
    Allow(Allowed<'a>),
    Deny(Denial),
    /// Provider `provider` (which has `remote_jwks`) has no key for this token yet: the token's
    /// `kid` is unknown (`unknown_kid`), or the JWKS was never fetched. Wait for a fetch.
    WaitForKeys {
        provider: usize,
        unknown_kid: bool,
    },
}

/// Counters the caller turns into metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub native: u32,
    pub fallback: u32,
}

/// Per-request inputs besides the headers.
pub struct Env<'e> {
    /// Unix seconds (host clock).
    pub now: i64,
    /// Remote keys by provider index (`None`: not fetched yet, or no `remote_jwks`).
    pub remote: &'e [Option<Rc<KeySet>>],
    pub cache: &'e mut Cache,
    pub native: &'e mut dyn NativeVerifier,
    pub stats: Stats,
}

/// The first rule matching this method and path (query and fragment ignored).
pub fn match_rule<'s>(settings: &'s Settings, method: &[u8], path: &[u8]) -> Option<&'s Rule> {
    let path = path_only(path);
    settings.rules.iter().find(|r| {
        r.path.matches(path)
            && (r.methods.is_empty() || r.methods.iter().any(|m| method_matches(m, method)))
    })
}

fn header<'h, K: AsRef<str>, V: AsRef<[u8]>>(
    headers: &'h [(K, V)],
    name: &str,
) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

fn is_cors_preflight<K: AsRef<str>, V: AsRef<[u8]>>(headers: &[(K, V)]) -> bool {
    // Exactly `OPTIONS`, unlike rule methods: this skips authentication, so a method an
    // upstream might not take for a preflight (`options`) does not get the bypass.
    header(headers, ":method") == Some(b"OPTIONS")
        && header(headers, "origin").is_some()
        && header(headers, "access-control-request-method").is_some()
}

/// Failure of one provider for one token.
enum Fail {
    /// Not verified by this provider (answered as [`UNVERIFIED`]).
    Unverified,
    /// Verified, or refused for what is not a claim (an unknown `kid`), with this answer.
    Deny(Denial),
    Wait {
        unknown_kid: bool,
    },
}

fn verify_provider(
    idx: usize,
    provider: &Provider,
    parsed: &Parsed<'_>,
    token: &str,
    env: &mut Env<'_>,
    budget: &mut Budget,
) -> Result<Verified, Fail> {
    // Before the signature only what selects the keys is read: the algorithm and the issuer.
    if !provider.algorithms.contains(parsed.alg)
        || !claims::issuer_matches(provider, &parsed.claims)
    {
        return Err(Fail::Unverified);
    }
    let remote = env.remote.get(idx).and_then(|k| k.as_deref());
    let sets = [provider.inline_keys.as_ref(), remote];
    if let Some(kid) = parsed.kid.as_deref()
        && !sets.iter().flatten().any(|s| s.has_kid(kid))
    {
        if provider.remote.is_some() {
            return Err(Fail::Wait { unknown_kid: true });
        }
        return Err(Fail::Deny(deny(
            Reason::UnknownKid,
            "the token key id is not known",
        )));
    }
    let mut tried = false;
    let mut ok = false;
    'sets: for set in sets.iter().flatten() {
        for key in set.candidates(parsed.alg, parsed.kid.as_deref(), provider.undeclared_algs) {
            tried = true;
            if !budget.take(parsed.alg, key, env.native.available()) {
                break 'sets;
            }
            let (valid, path) = verify_with(
                env.native,
                parsed.alg,
                key,
                token,
                parsed.signing_input,
                &parsed.signature,
            );
            budget.ran(parsed.alg, path);
            match path {
                Path::Native => env.stats.native += 1,
                Path::Fallback => env.stats.fallback += 1,
            }
            if valid {
                ok = true;
                break 'sets;
            }
        }
    }
    if !tried && provider.remote.is_some() && remote.is_none() {
        return Err(Fail::Wait { unknown_kid: false });
    }
    if !ok {
        return Err(Fail::Unverified);
    }
    // Verified: now the claims may speak.
    let times =
        claims::check(provider, &parsed.claims, env.now).map_err(|e| Fail::Deny(e.into()))?;
    let headers = claims::render_all(&provider.claim_to_headers, &parsed.claims)
        .map_err(|e| Fail::Deny(e.into()))?;
    Ok(Verified {
        provider: idx,
        times,
        headers,
        scopes: claims::scopes(&parsed.claims),
    })
}

/// Decide one request. `headers` is the whole request header list.
pub fn decide<'h, K: AsRef<str>, V: AsRef<[u8]>>(
    settings: &Settings,
    headers: &'h [(K, V)],
    env: &mut Env<'_>,
) -> Decision<'h> {
    let method = header(headers, ":method").unwrap_or_default();
    let path = header(headers, ":path").unwrap_or_default();
    let Some(rule) = match_rule(settings, method, path) else {
        return Decision::Pass;
    };
    let (list, all) = match &rule.requires {
        Requires::None => return Decision::Pass,
        Requires::Any(l) => (l, false),
        Requires::All(l) => (l, true),
    };
    if settings.bypass_cors_preflight && is_cors_preflight(headers) {
        return Decision::Pass;
    }
    let found = match token::extract(settings, headers) {
        Extracted::None => {
            return if rule.allow_missing {
                Decision::Pass
            } else {
                Decision::Deny(deny(Reason::Missing, "a bearer token is required"))
            };
        }
        Extracted::Invalid(why) if why == MULTIPLE_TOKENS => {
            return Decision::Deny(deny(Reason::InvalidRequest, why));
        }
        Extracted::Invalid(why) => return Decision::Deny(deny(Reason::Malformed, why)),
        Extracted::One(f) => f,
    };
    let token = found.token;
    let eligible = |p: &usize| {
        settings
            .providers
            .get(*p)
            .is_some_and(|prov| prov.sources.contains(&found.source))
    };
    if all && !list.iter().all(eligible) || !list.iter().any(eligible) {
        // A token, but not where the required providers look for theirs.
        if let Err(why) = token::text(token) {
            return Decision::Deny(deny(Reason::Malformed, why));
        }
        return if rule.allow_missing {
            Decision::Pass
        } else {
            Decision::Deny(deny(Reason::Missing, "a bearer token is required"))
        };
    }
    let hash = token_hash(token);
    let mut budget = Budget::new();
    // The token as text, once a cache miss needed it (checked then, not when found: a cached
    // token was checked when it was verified).
    let mut checked: Option<&'h str> = None;
    let mut parsed: Option<Parsed<'h>> = None;
    let mut verified = VerifiedBy::new();
    let mut first_fail: Option<(usize, Fail)> = None;
    for &idx in list.iter().filter(|p| eligible(p)) {
        let Some(provider) = settings.providers.get(idx) else {
            continue;
        };
        let result = if let Some(hit) =
            env.cache
                .get(token, hash, idx, env.now, provider.clock_skew_s)
        {
            env.stats.cache_hits += 1;
            Ok(hit)
        } else {
            env.stats.cache_misses += 1;
            if parsed.is_none() {
                let text = match token::text(token) {
                    Ok(text) => text,
                    Err(why) => return Decision::Deny(deny(Reason::Malformed, why)),
                };
                checked = Some(text);
                match token::parse(text) {
                    Ok(p) => parsed = Some(p),
                    Err(e) => return Decision::Deny(deny(Reason::Malformed, e.describe())),
                }
            }
            let (Some(p), Some(text)) = (parsed.as_ref(), checked) else {
                continue;
            };
            match verify_provider(idx, provider, p, text, env, &mut budget) {
                Ok(v) => {
                    env.cache.insert(text, hash, v.clone());
                    Ok(Rc::new(v))
                }
                Err(f) => Err(f),
            }
        };
        match result {
            Ok(v) => {
                verified.push(v);
                if !all {
                    break;
                }
            }
            Err(f) => {
                if all {
                    first_fail = Some((idx, f));
                    break;
                }
                // Prefer waiting for keys, then what a verifying provider said, then the
                // uniform answer to an unverified token.
                let better = match (&first_fail, &f) {
                    (None, _) => true,
                    (Some((_, Fail::Wait { .. })), _) => false,
                    (_, Fail::Wait { .. }) => true,
                    (Some((_, Fail::Unverified)), _) => true,
                    (Some((_, Fail::Deny(_))), _) => false,
                };
                if better {
                    first_fail = Some((idx, f));
                }
            }
        }
    }
    if verified.is_empty() || first_fail.is_some() && all {
        return match first_fail {
            Some((provider, Fail::Wait { unknown_kid })) => Decision::WaitForKeys {
                provider,
                unknown_kid,
            },
            Some((_, Fail::Deny(d))) => Decision::Deny(d),
            Some((_, Fail::Unverified)) => Decision::Deny(UNVERIFIED),
            None => Decision::Deny(deny(Reason::Missing, "a bearer token is required")),
        };
    }
    if !rule.scopes.is_empty() {
        let ok = rule.scopes.iter().all(|need| {
            verified
                .iter()
                .any(|v| v.scopes.iter().any(|have| have == need))
        });
        if !ok {
            return Decision::Deny(deny(Reason::Scope, "the token lacks a required scope"));
        }
    }
    let remove_token = verified.iter().any(|v| {
        settings
            .providers
            .get(v.provider)
            .is_some_and(|p| !p.forward)
    });
    Decision::Allow(Allowed {
        verified,
        source: found.source,
        token,
        remove_token,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;
    use crate::verify::NoNative;
    use jwt_simple::prelude::*;
    use serde_json::{Value, json};

    const NOW: u64 = 1_767_225_600;
    const SECRET_A: &[u8] = b"secret-a-secret-a-secret-a-secret-a";
    const SECRET_B: &[u8] = b"secret-b-secret-b-secret-b-secret-b";

    fn b64(b: &[u8]) -> String {
        use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
        Base64UrlSafeNoPadding::encode_to_string(b).unwrap()
    }

    fn settings(rules: Value) -> Settings {
        let v = json!({
            "providers": {
                "a": {"issuer": "A", "jwks": {"keys": [{"kty": "oct", "kid": "ka", "k": b64(SECRET_A)}]},
                      "claim_to_headers": [{"claim": "sub", "header": "x-sub"}]},
                "b": {"issuer": "B", "jwks": {"keys": [{"kty": "oct", "kid": "kb", "k": b64(SECRET_B)}]},
                      "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-b-token"}],
                      "forward": true},
                "r": {"issuer": "R", "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/j"}}
            },
            "rules": rules
        });
        parse_settings(Some(&serde_json::to_vec(&v).unwrap())).unwrap()
    }

    fn token(secret: &[u8], kid: &str, iss: &str, extra: Value) -> String {
        let mut c = Claims::with_custom_claims(
            extra.as_object().unwrap().clone(),
            jwt_simple::prelude::Duration::from_secs(60),
        )
        .with_issuer(iss)
        .with_subject("s");
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 60));
        c.invalid_before = None;
        HS256Key::from_bytes(secret)
            .with_key_id(kid)
            .authenticate(c)
            .unwrap()
    }

    fn headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        h
    }

    struct Run {
        cache: Cache,
        remote: Vec<Option<Rc<KeySet>>>,
        stats: Stats,
    }

    impl Run {
        fn new() -> Self {
            Self {
                cache: Cache::new(16),
                remote: vec![None, None, None],
                stats: Stats::default(),
            }
        }

        fn decide<'h>(&mut self, s: &Settings, h: &'h [(String, Vec<u8>)]) -> Decision<'h> {
            let mut native = NoNative;
            let mut env = Env {
                now: NOW as i64,
                remote: &self.remote,
                cache: &mut self.cache,
                native: &mut native,
                stats: Stats::default(),
            };
            let d = decide(s, h, &mut env);
            self.stats = env.stats;
            d
        }
    }

    fn reason(d: &Decision<'_>) -> Reason {
        match d {
            Decision::Deny(d) => d.reason,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn a_token_that_is_not_token_text_is_malformed_wherever_it_is() {
        let s = settings(json!([{"match": {"prefix": "/"}, "requires": "a"}]));
        let mut run = Run::new();
        let good = token(SECRET_A, "ka", "A", json!({}));
        let bad = format!("{good} x");
        // Where a required provider looks (a cache miss: checked before parsing) ...
        let h = headers("GET", "/x", &[("authorization", &format!("Bearer {bad}"))]);
        let d = run.decide(&s, &h);
        assert_eq!(reason(&d), Reason::Malformed);
        assert!(matches!(&d, Decision::Deny(d) if d.description == token::NOT_COMPACT_JWS));
        // ... and where only another provider looks (no provider's business, but still not a
        // token: the answer it had when every token was checked as it was found).
        let h = headers("GET", "/x", &[("x-b-token", &bad)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::Malformed);
        // A good token, verified once, is then a cache hit.
        let h = headers("GET", "/x", &[("authorization", &format!("Bearer {good}"))]);
        assert!(matches!(run.decide(&s, &h), Decision::Allow(_)));
        assert!(matches!(run.decide(&s, &h), Decision::Allow(_)));
        assert_eq!(run.stats.cache_hits, 1);
    }

    #[test]
    fn rule_matching_first_match_wins() {
        let s = settings(json!([
            {"match": {"path": "/health"}, "requires": null},
            {"match": {"regex": "/v[0-9]+/items/[^/]+"}, "requires": "a"},
            {"match": {"prefix": "/api", "methods": ["POST", "delete"]}, "requires": "b"},
            {"match": {"prefix": "/api"}, "requires": "a"},
        ]));
        let idx = |m: &str, p: &str| {
            match_rule(&s, m.as_bytes(), p.as_bytes())
                .map(|r| s.rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        };
        assert_eq!(idx("GET", "/health"), Some(0));
        assert_eq!(idx("GET", "/health?x=1"), Some(0));
        assert_eq!(idx("GET", "/health/x"), None);
        assert_eq!(idx("GET", "/v2/items/7"), Some(1));
        assert_eq!(idx("GET", "/v2/items/7/x"), None, "regex is anchored");
        assert_eq!(idx("GET", "/xv2/items/7"), None);
        assert_eq!(idx("POST", "/api/x"), Some(2));
        assert_eq!(idx("DELETE", "/api"), Some(2));
        assert_eq!(idx("GET", "/api/x"), Some(3));
        assert_eq!(idx("GET", "/other"), None);
        // Methods match whatever their case: Envoy forwards an HTTP/2 `:method: post` as is,
        // and upstreams often take it for POST (#19: `post` skipped a POST-only token rule).
        assert_eq!(idx("post", "/api/x"), Some(2));
        assert_eq!(idx("PoSt", "/api/x"), Some(2));
        assert_eq!(idx("delete", "/api"), Some(2));
        // Paths are case-sensitive unless the rule says `ignore_case`.
        assert_eq!(idx("GET", "/API/x"), None);
    }

    #[test]
    fn ignore_case_rules_match_any_case() {
        let s = settings(json!([
            {"match": {"prefix": "/api", "ignore_case": true}, "requires": "a"},
            {"match": {"path": "/Admin", "ignore_case": true}, "requires": "a"},
            {"match": {"regex": "/v[0-9]+/x", "ignore_case": true}, "requires": "a"},
        ]));
        let idx = |p: &str| {
            match_rule(&s, b"GET", p.as_bytes())
                .map(|r| s.rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        };
        assert_eq!(idx("/API/x"), Some(0));
        assert_eq!(idx("/aPi"), Some(0));
        assert_eq!(idx("/ap"), None);
        assert_eq!(idx("/ADMIN?q=1"), Some(1));
        assert_eq!(idx("/admin/x"), None);
        assert_eq!(idx("/V2/X"), Some(2));
    }

    #[test]
    fn unverified_tokens_learn_nothing_about_the_claims() {
        // #19: claims were checked before the signature, so an unsigned token told which
        // issuer, audience and subject were accepted. Now every unverified token gets one
        // answer, and a verified one the specific reason.
        let v = json!({
            "providers": {"a": {"issuer": "A", "audiences": ["api"], "subjects": ["user:"],
                                "jwks": {"keys": [{"kty": "oct", "kid": "ka", "k": b64(SECRET_A)}]}}},
            "rules": [{"match": {"prefix": "/"}, "requires": "a"}]
        });
        let s = crate::config::parse_settings(Some(&serde_json::to_vec(&v).unwrap())).unwrap();
        let mut run = Run::new();
        let mut answer = |secret: &[u8], iss: &str, extra: Value| {
            // Not `token()`: it sets `sub` itself, and these tests set their own.
            let mut c = Claims::with_custom_claims(
                extra.as_object().unwrap().clone(),
                jwt_simple::prelude::Duration::from_secs(60),
            )
            .with_issuer(iss);
            c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
            c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 60));
            c.invalid_before = None;
            let t = HS256Key::from_bytes(secret)
                .with_key_id("ka")
                .authenticate(c)
                .unwrap();
            let auth = format!("Bearer {t}");
            let h = headers("GET", "/", &[("authorization", &auth)]);
            match run.decide(&s, &h) {
                Decision::Deny(d) => (d.reason, d.description),
                Decision::Allow(_) => (Reason::Missing, "allowed"),
                other => panic!("{other:?}"),
            }
        };
        let good = json!({"aud": "api", "sub": "user:1"});
        for (iss, extra) in [
            ("X", good.clone()),
            ("A", json!({"aud": "other", "sub": "user:1"})),
            ("A", json!({"aud": "api", "sub": "admin"})),
            ("A", good.clone()),
        ] {
            assert_eq!(
                answer(SECRET_B, iss, extra.clone()),
                (Reason::BadSignature, UNVERIFIED.description),
                "forged {iss} {extra}"
            );
        }
        // Signed with the right key: the claims speak.
        assert_eq!(answer(SECRET_A, "A", good).1, "allowed");
        assert_eq!(
            answer(SECRET_A, "A", json!({"aud": "other", "sub": "user:1"})).0,
            Reason::Audience
        );
        assert_eq!(
            answer(SECRET_A, "A", json!({"aud": "api", "sub": "admin"})).0,
            Reason::Subject
        );
        // A validly signed token naming another issuer is not this provider's: unverified.
        assert_eq!(
            answer(SECRET_A, "X", json!({"aud": "api"})).0,
            Reason::BadSignature
        );
    }

    #[test]
    fn signature_attempts_per_request_are_capped() {
        // Six HMAC keys without kid: a token without kid is tried against at most
        // MAX_SIGNATURE_ATTEMPTS of them.
        let secrets: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 32]).collect();
        let keys: Vec<Value> = secrets
            .iter()
            .map(|k| json!({"kty": "oct", "k": b64(k)}))
            .collect();
        let v = json!({
            "providers": {"a": {"issuer": "A", "jwks": {"keys": keys}}},
            "rules": [{"match": {"prefix": "/"}, "requires": "a"}]
        });
        let s = crate::config::parse_settings(Some(&serde_json::to_vec(&v).unwrap())).unwrap();
        let mut run = Run::new();
        let no_kid = |secret: &[u8]| {
            let mut c =
                Claims::create(jwt_simple::prelude::Duration::from_secs(60)).with_issuer("A");
            c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
            c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 60));
            c.invalid_before = None;
            HS256Key::from_bytes(secret).authenticate(c).unwrap()
        };
        let first = format!("Bearer {}", no_kid(&secrets[0]));
        let h = headers("GET", "/", &[("authorization", &first)]);
        assert!(matches!(run.decide(&s, &h), Decision::Allow(_)));
        assert_eq!(run.stats.fallback, 1);
        let last = format!("Bearer {}", no_kid(&secrets[5]));
        let h = headers("GET", "/", &[("authorization", &last)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
        assert_eq!(run.stats.fallback, MAX_SIGNATURE_ATTEMPTS);
    }

    #[test]
    fn forged_pss_tokens_cost_at_most_one_software_check() {
        // #19: `{"alg":"PS512"}`, no kid, garbage signature, against RSA keys without `alg`
        // (Entra-style) cost one pure-Rust RSA-PSS check per key. Keys without `alg` no longer
        // serve PS* by default, and where they do, one software check per request is the cap.
        let rsa: Vec<Value> = (0..2)
            .map(|_| {
                let k = RS256KeyPair::generate(2048).unwrap();
                let c = k.public_key().to_components();
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            })
            .collect();
        let claims = json!({"iss": "R", "exp": NOW + 60});
        let forged = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"PS512"}"#),
            b64(&serde_json::to_vec(&claims).unwrap()),
            b64(&[7u8; 256])
        );
        let auth = format!("Bearer {forged}");
        let h = headers("GET", "/", &[("authorization", &auth)]);
        let jwks = crate::jwk::parse_jwks(&json!({"keys": rsa})).unwrap();
        let remote = Rc::new(jwks);

        let s = settings(json!([{"match": {"prefix": "/"}, "requires": "r"}]));
        let mut run = Run::new();
        run.remote[2] = Some(remote.clone());
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
        assert_eq!(
            run.stats.native + run.stats.fallback,
            0,
            "no key serves PS512"
        );

        // The operator allows PS512 explicitly: keys without alg serve it, once per request.
        let v = json!({
            "providers": {"r": {"issuer": "R", "algorithms": ["PS512"],
                                "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/j"}}},
            "rules": [{"match": {"prefix": "/"}, "requires": "r"}]
        });
        let s = crate::config::parse_settings(Some(&serde_json::to_vec(&v).unwrap())).unwrap();
        let mut run = Run::new();
        run.remote = vec![Some(remote)];
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
        assert_eq!(run.stats.fallback, MAX_SOFTWARE_ATTEMPTS);
    }

    #[test]
    fn no_rule_or_null_requires_passes_without_looking_at_tokens() {
        let s = settings(json!([{"match": {"prefix": "/open"}, "requires": null}]));
        let mut run = Run::new();
        for path in ["/open", "/elsewhere"] {
            let h = headers("GET", path, &[("authorization", "Bearer garbage")]);
            assert_eq!(run.decide(&s, &h), Decision::Pass);
        }
    }

    #[test]
    fn any_picks_the_provider_by_issuer_and_all_needs_every_one() {
        let s = settings(json!([
            {"match": {"prefix": "/any"}, "requires": {"any": ["a", "b"]}},
            {"match": {"prefix": "/all"}, "requires": {"all": ["a", "b"]}},
        ]));
        let mut run = Run::new();
        let tb = token(SECRET_B, "kb", "B", json!({}));
        let auth = format!("Bearer {tb}");
        let h = headers("GET", "/any", &[("authorization", &auth)]);
        match run.decide(&s, &h) {
            Decision::Allow(a) => {
                assert_eq!(a.verified.len(), 1);
                assert_eq!(a.verified[0].provider, 1);
                assert!(!a.remove_token, "b forwards the token");
            }
            other => panic!("{other:?}"),
        }
        let h = headers("GET", "/all", &[("authorization", &auth)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
        let tx = token(SECRET_B, "kb", "X", json!({}));
        let auth = format!("Bearer {tx}");
        let h = headers("GET", "/any", &[("authorization", &auth)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
        // Right issuer, other provider's key: a bad signature too.
        let forged = token(SECRET_B, "ka", "A", json!({}));
        let auth = format!("Bearer {forged}");
        let h = headers("GET", "/any", &[("authorization", &auth)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
    }

    #[test]
    fn token_in_another_providers_source_counts_as_missing() {
        let s = settings(json!([
            {"match": {"prefix": "/a"}, "requires": "a"},
            {"match": {"prefix": "/opt"}, "requires": "a", "allow_missing": true},
        ]));
        let mut run = Run::new();
        let tb = token(SECRET_B, "kb", "B", json!({}));
        let h = headers("GET", "/a", &[("x-b-token", &tb)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::Missing);
        let h = headers("GET", "/opt", &[("x-b-token", &tb)]);
        assert_eq!(run.decide(&s, &h), Decision::Pass);
    }

    #[test]
    fn allowed_carries_headers_and_the_cache_is_used() {
        let s = settings(json!([{"match": {"prefix": "/"}, "requires": "a"}]));
        let mut run = Run::new();
        let ta = token(SECRET_A, "ka", "A", json!({}));
        let auth = format!("Bearer {ta}");
        let h = headers("GET", "/", &[("authorization", &auth)]);
        let first = run.decide(&s, &h);
        assert_eq!(run.stats.cache_misses, 1);
        assert_eq!(run.stats.fallback, 1);
        let Decision::Allow(a) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(a.verified[0].headers, vec![(0, "s".to_string())]);
        assert!(a.remove_token);
        assert_eq!(a.source, 0);
        assert_eq!(a.payload_b64(), ta.split('.').nth(1).unwrap().as_bytes());
        let second = run.decide(&s, &h);
        assert_eq!(run.stats.cache_hits, 1);
        assert_eq!(run.stats.fallback, 0);
        assert_eq!(first, second);
    }

    #[test]
    fn fractional_times_on_the_jwt_simple_path() {
        let s = settings(json!([{"match": {"prefix": "/"}, "requires": "a"}]));
        let mut run = Run::new();
        let header = b64(br#"{"alg":"HS256","kid":"ka"}"#);
        let payload = b64(format!(
            r#"{{"iss":"A","sub":"s","iat":{NOW}.25,"exp":{}.5}}"#,
            NOW + 60
        )
        .as_bytes());
        let input = format!("{header}.{payload}");
        let tag = {
            use jwt_simple::algorithms::MACLike;
            HS256Key::from_bytes(SECRET_A).authentication_tag(input.as_bytes())
        };
        let t = format!("{input}.{}", b64(&tag));
        let auth = format!("Bearer {t}");
        let h = headers("GET", "/", &[("authorization", &auth)]);
        // RFC 7519 NumericDate may be fractional: accepted, rounded down.
        match run.decide(&s, &h) {
            Decision::Allow(a) => assert_eq!(a.verified[0].times.exp, Some(NOW as i64 + 60)),
            other => panic!("{other:?}"),
        }
    }

    /// Random and mangled tokens never panic (debug build: overflow checks on) and are never
    /// allowed.
    #[test]
    fn garbage_tokens_are_refused_without_panicking() {
        let s = settings(json!([{"match": {"prefix": "/"}, "requires": {"any": ["a", "r"]}}]));
        let mut run = Run::new();
        let good = token(SECRET_A, "ka", "A", json!({"n": [1, {"x": null}]}));
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for i in 0..3000 {
            let t: String = if i % 2 == 0 {
                let len = next(120) as usize;
                (0..len)
                    .map(|_| char::from(alphabet[next(alphabet.len() as u64) as usize]))
                    .collect()
            } else {
                // The good token with one byte changed, cut, or a segment dropped.
                let mut b = good.clone().into_bytes();
                let at = next(b.len() as u64) as usize;
                match next(3) {
                    0 => b[at] = alphabet[next(alphabet.len() as u64) as usize],
                    1 => b.truncate(at),
                    _ => {
                        b.remove(at);
                    }
                }
                String::from_utf8(b).unwrap()
            };
            let auth = format!("Bearer {t}");
            let h = headers("GET", "/", &[("authorization", &auth)]);
            match run.decide(&s, &h) {
                Decision::Allow(_) => assert_eq!(t, good, "a mangled token was allowed"),
                Decision::Deny(_) | Decision::WaitForKeys { .. } => {}
                Decision::Pass => panic!("pass"),
            }
        }
    }

    #[test]
    fn remote_providers_wait_for_keys() {
        let s = settings(json!([{"match": {"prefix": "/"}, "requires": "r"}]));
        let mut run = Run::new();
        let k = ES256KeyPair::generate().with_key_id("k1");
        let mut c = Claims::create(jwt_simple::prelude::Duration::from_secs(60)).with_issuer("R");
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 60));
        c.invalid_before = None;
        let t = k.sign(c).unwrap();
        let auth = format!("Bearer {t}");
        let h = headers("GET", "/", &[("authorization", &auth)]);
        assert_eq!(
            run.decide(&s, &h),
            Decision::WaitForKeys {
                provider: 2,
                unknown_kid: true
            }
        );
        let jwk: Value = serde_json::from_str(&k.public_key().to_jwk()).unwrap();
        let other: Value = serde_json::from_str(
            &ES256KeyPair::generate()
                .with_key_id("k0")
                .public_key()
                .to_jwk(),
        )
        .unwrap();
        run.remote[2] = Some(Rc::new(
            crate::jwk::parse_jwks(&json!({"keys": [other]})).unwrap(),
        ));
        assert!(matches!(
            run.decide(&s, &h),
            Decision::WaitForKeys {
                unknown_kid: true,
                ..
            }
        ));
        run.remote[2] = Some(Rc::new(
            crate::jwk::parse_jwks(&json!({"keys": [jwk]})).unwrap(),
        ));
        assert!(matches!(run.decide(&s, &h), Decision::Allow(_)));
        // HS256 is not a default algorithm of a remote provider.
        let hs = token(SECRET_A, "k1", "R", json!({}));
        let auth = format!("Bearer {hs}");
        let h = headers("GET", "/", &[("authorization", &auth)]);
        assert_eq!(reason(&run.decide(&s, &h)), Reason::BadSignature);
    }
}
