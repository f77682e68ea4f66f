//! The real jwt_to_header.wasm in the harness: every algorithm, every refusal, header hygiene,
//! the native `verify_signature` path and its fallback, the verified-token cache, and the
//! remote JWKS (first fetch, unknown-kid refetch with a paused request, single flight across
//! two worker VMs, IdP down, every kind of broken JWKS answer before and after a good fetch),
//! and broken configurations. Tokens are minted here with jwt-simple.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::UNIX_EPOCH;

type StdDuration = std::time::Duration;

use ct_codecs::{Base64UrlSafeNoPadding, Decoder as _, Encoder};
use jwt_simple::prelude::*;
use jwt_to_header::config::fnv1a64;
use jwt_to_header::jwks::{MAX_JWKS_BYTES, data_key};
use proxy_wasm_harness::testing::{self, upstream};
use proxy_wasm_harness::{
    Host, HttpCallResponse, LogLevel, Status, StreamId, StreamView, Worker, assert_configs_rejected,
};
use serde_json::{Value, json};

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "jwt-to-header", "jwt", config)
}

fn b64(b: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(b).unwrap()
}

const ISS: &str = "https://idp.example.com";

/// Every key kind, minted once per test binary.
struct Keys {
    rs: RS256KeyPair,
    ps: PS256KeyPair,
    es256: ES256KeyPair,
    es384: ES384KeyPair,
    ed: Ed25519KeyPair,
    hs: HS256Key,
    hs_raw: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let rs = RS256KeyPair::generate(2048).unwrap().with_key_id("rs");
        let ps = PS256KeyPair::from_der(&rs.to_der().unwrap())
            .unwrap()
            .with_key_id("ps");
        let hs_raw = b"0123456789abcdef0123456789abcdef-hs".to_vec();
        Keys {
            rs,
            ps,
            es256: ES256KeyPair::generate().with_key_id("es256"),
            es384: ES384KeyPair::generate().with_key_id("es384"),
            ed: Ed25519KeyPair::generate().with_key_id("ed"),
            hs: HS256Key::from_bytes(&hs_raw).with_key_id("hs"),
            hs_raw,
        }
    })
}

fn rsa_jwk(kp: &RS256KeyPair, kid: &str) -> Value {
    let c = kp.public_key().to_components();
    json!({"kty": "RSA", "kid": kid, "n": b64(&c.n), "e": b64(&c.e)})
}

fn jwks() -> Value {
    let k = keys();
    let parse = |s: String| -> Value { serde_json::from_str(&s).unwrap() };
    // PSS keys declare it: an RSA key without `alg` serves RS* only by default.
    let mut ps = rsa_jwk(&k.rs, "ps");
    ps["alg"] = json!("PS256");
    json!({"keys": [
        rsa_jwk(&k.rs, "rs"),
        ps,
        parse(k.es256.public_key().to_jwk()),
        parse(k.es384.public_key().to_jwk()),
        parse(k.ed.public_key().to_jwk()),
        {"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64(&k.hs_raw)},
    ]})
}

fn config_with(jwks_source: Value) -> String {
    let mut provider = json!({
        "issuer": ISS,
        "audiences": ["api"],
        "claim_to_headers": [
            {"claim": "sub", "header": "x-user-id"},
            {"claim": "role", "header": "x-user-role"},
            {"claim": "groups", "header": "x-user-groups", "separator": ";"}
        ],
        "forward_payload_header": "x-jwt-payload"
    });
    for (k, v) in jwks_source.as_object().unwrap() {
        provider[k] = v.clone();
    }
    json!({
        "providers": {"idp": provider},
        "rules": [
            {"match": {"prefix": "/public"}, "requires": null},
            {"match": {"prefix": "/optional"}, "requires": "idp", "allow_missing": true},
            {"match": {"prefix": "/admin"}, "requires": "idp", "scopes": ["admin"]},
            {"match": {"prefix": "/"}, "requires": "idp"}
        ],
        "realm": "api"
    })
    .to_string()
}

fn inline_config() -> String {
    config_with(json!({"jwks": jwks()}))
}

/// Claims valid at the host's current time, plus `extra` (null removes a claim).
fn claims(host: &Host, extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let now = host.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut custom = json!({"role": "admin", "groups": ["a", "b"], "scope": "read admin"});
    let mut c = Claims::with_custom_claims(serde_json::Map::new(), Duration::from_secs(600))
        .with_issuer(ISS)
        .with_audience("api")
        .with_subject("user-1");
    c.issued_at = Some(UnixTimeStamp::from_secs(now));
    c.expires_at = Some(UnixTimeStamp::from_secs(now + 600));
    c.invalid_before = None;
    for (k, v) in extra.as_object().unwrap() {
        match k.as_str() {
            "exp" => c.expires_at = v.as_u64().map(UnixTimeStamp::from_secs),
            "nbf" => c.invalid_before = v.as_u64().map(UnixTimeStamp::from_secs),
            "iat" => c.issued_at = v.as_u64().map(UnixTimeStamp::from_secs),
            "iss" => c.issuer = v.as_str().map(str::to_owned),
            "aud" => c.audiences = v.as_str().map(|a| Audiences::AsString(a.to_owned())),
            "sub" => c.subject = v.as_str().map(str::to_owned),
            _ => custom[k] = v.clone(),
        }
    }
    c.custom = custom.as_object().unwrap().clone();
    c
}

fn rs256(host: &Host, extra: Value) -> String {
    keys().rs.sign(claims(host, extra)).unwrap()
}

fn get(w: &mut Worker, path: &str, extra: &[(&str, &str)]) -> StreamView {
    let mut req = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "api.example.com"),
    ];
    req.extend_from_slice(extra);
    w.exchange(&req, None, &[(":status", "200")], None)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn with_token(w: &mut Worker, path: &str, token: &str) -> StreamView {
    let auth = format!("Bearer {token}");
    get(w, path, &[("authorization", &auth)])
}

/// Status, `error` of the JSON body and the WWW-Authenticate header of a local reply.
fn refused(v: &StreamView) -> (u32, String, Option<String>) {
    assert!(v.upstream_request_headers.is_none(), "reached the upstream");
    let reply = v.local_response.as_ref().expect("a local reply");
    assert_eq!(
        reply.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["message"].is_string());
    (
        reply.status,
        body["error"].as_str().unwrap().to_owned(),
        reply.headers.get("www-authenticate"),
    )
}

fn m(name: &str) -> String {
    format!("gatewasm_jwt_to_header_{name}")
}

// ---- the host's native verify_signature ---------------------------------------------------

/// The foreign function behind the native path: the harness has Envoy's built in (RSA PKCS#1
/// v1.5 and ECDSA with RustCrypto), and `host.foreign_calls(VERIFY_SIGNATURE)` counts the
/// module's calls of it.
const VERIFY_SIGNATURE: &str = "verify_signature";

/// A host with Envoy's `verify_signature`: tests of the native path start here.
fn native_host() -> Host {
    Host::new()
}

/// A host without `verify_signature` (NotFound, as on other hosts): tests of the fallback
/// start here.
fn host_without_native() -> Host {
    let host = Host::new();
    host.remove_foreign_function(VERIFY_SIGNATURE);
    host
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn valid_token_forwards_claims_and_removes_the_token() {
    let host = native_host();
    let mut w = worker(&host, &inline_config());
    let token = rs256(&host, json!({}));
    let v = with_token(&mut w, "/orders", &token);
    let h = upstream(&v);
    assert_eq!(h.get("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(h.get("x-user-role").as_deref(), Some("admin"));
    assert_eq!(h.get("x-user-groups").as_deref(), Some("a;b"));
    assert_eq!(
        h.get("x-jwt-payload").as_deref(),
        token.split('.').nth(1),
        "payload forwarded as base64url"
    );
    assert!(
        !h.contains("authorization"),
        "forward: false removes the token"
    );
    assert_eq!(v.route_cache_clears, 1);
    assert_eq!(host.counter(&m("allowed")), 1);
    assert_eq!(host.counter(&m("verify_native")), 1);
    assert_eq!(host.counter(&m("verify_fallback")), 0);
    assert_eq!(
        host.foreign_calls(VERIFY_SIGNATURE),
        1,
        "RS256 verified by the host"
    );
}

#[test]
fn every_algorithm_verifies_natively_or_with_jwt_simple() {
    let host = native_host();
    let mut w = worker(&host, &inline_config());
    let k = keys();
    let c = || claims(&host, json!({}));
    let cases: [(&str, String, bool); 6] = [
        ("RS256", k.rs.sign(c()).unwrap(), true),
        ("PS256", k.ps.sign(c()).unwrap(), false),
        ("ES256", k.es256.sign(c()).unwrap(), true),
        ("ES384", k.es384.sign(c()).unwrap(), true),
        ("EdDSA", k.ed.sign(c()).unwrap(), false),
        ("HS256", k.hs.authenticate(c()).unwrap(), false),
    ];
    for (alg, token, is_native) in cases {
        let before = host.foreign_calls(VERIFY_SIGNATURE);
        let v = with_token(&mut w, "/", &token);
        assert_eq!(
            upstream(&v).get("x-user-id").as_deref(),
            Some("user-1"),
            "{alg}"
        );
        assert_eq!(
            host.foreign_calls(VERIFY_SIGNATURE) - before,
            usize::from(is_native),
            "{alg}"
        );
    }
    assert_eq!(host.counter(&m("verify_native")), 3);
    assert_eq!(host.counter(&m("verify_fallback")), 3);
}

#[test]
fn without_the_host_function_everything_falls_back_to_jwt_simple() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    let k = keys();
    for token in [
        k.rs.sign(claims(&host, json!({}))).unwrap(),
        k.es256.sign(claims(&host, json!({}))).unwrap(),
    ] {
        assert!(
            with_token(&mut w, "/", &token)
                .upstream_request_headers
                .is_some()
        );
    }
    assert_eq!(host.counter(&m("verify_native")), 0);
    assert_eq!(host.counter(&m("verify_fallback")), 2);
    assert_eq!(
        host.foreign_calls(VERIFY_SIGNATURE),
        1,
        "asked once, answered NotFound, not asked again"
    );
}

#[test]
fn native_answers_agree_with_jwt_simple_on_forged_signatures() {
    for native in [true, false] {
        let host = if native {
            native_host()
        } else {
            host_without_native()
        };
        let mut w = worker(&host, &inline_config());
        let k = keys();
        for token in [
            k.rs.sign(claims(&host, json!({}))).unwrap(),
            k.es256.sign(claims(&host, json!({}))).unwrap(),
            k.es384.sign(claims(&host, json!({}))).unwrap(),
        ] {
            // Flip one bit of the signature.
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut raw = ct_codecs::Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            raw[5] ^= 1;
            let forged = format!("{input}.{}", b64(&raw));
            let v = with_token(&mut w, "/", &forged);
            assert_eq!(refused(&v).1, "bad_signature", "native={native}");
            // A payload changed under a valid signature.
            let parts: Vec<&str> = token.split('.').collect();
            let payload = b64(
                br#"{"iss":"https://idp.example.com","aud":"api","sub":"root","exp":9999999999}"#,
            );
            let swapped = format!("{}.{payload}.{}", parts[0], parts[2]);
            assert_eq!(
                refused(&with_token(&mut w, "/", &swapped)).1,
                "bad_signature"
            );
        }
    }
}

#[test]
fn spoofed_claim_headers_never_reach_the_upstream() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    let spoof = [
        ("x-user-id", "admin"),
        ("X-User-Role", "root"),
        ("x-jwt-payload", "e30"),
        ("x-user-groups", "admins"),
    ];
    // A route that needs no token: still stripped.
    let v = get(&mut w, "/public/x", &spoof);
    let h = upstream(&v);
    for (name, _) in spoof {
        assert!(!h.contains(name), "{name} on a public route");
    }
    // allow_missing without a token: stripped too.
    let h = upstream(&get(&mut w, "/optional", &spoof));
    assert!(!h.contains("x-user-id"));
    // With a valid token: the claim replaces the spoofed value, one copy.
    let token = rs256(&host, json!({"role": null}));
    let auth = format!("Bearer {token}");
    let mut req = spoof.to_vec();
    req.push(("authorization", &auth));
    let h = upstream(&get(&mut w, "/", &req));
    assert_eq!(h.get_all("x-user-id"), vec!["user-1"]);
    assert!(
        !h.contains("x-user-role"),
        "no role claim: the spoofed one is gone too"
    );
    assert_eq!(h.get_all("x-jwt-payload").len(), 1);
}

#[test]
fn missing_token_is_401_without_error_attribute() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    for extra in [&[][..], &[("authorization", "Basic dXNlcjpwYXNz")]] {
        let (status, reason, challenge) = refused(&get(&mut w, "/", extra));
        assert_eq!((status, reason.as_str()), (401, "missing"));
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="api""#));
    }
    assert_eq!(host.counter(&m("denied_missing")), 2);
}

#[test]
fn invalid_tokens_are_refused_with_the_right_reason() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    let k = keys();
    let now = host.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let header = |h: &str| b64(h.as_bytes());
    let payload = b64(&serde_json::to_vec(
        &json!({"iss": ISS, "aud": "api", "sub": "u", "exp": now + 60}),
    )
    .unwrap());
    // HS256 "signed" with the RSA public key as the secret (the alg-confusion attack).
    let rsa_pub_der = k.rs.public_key().to_der().unwrap();
    let confused_input = format!("{}.{payload}", header(r#"{"alg":"HS256","kid":"rs"}"#));
    let confused_sig = HS256Key::from_bytes(&rsa_pub_der);
    let tag = {
        use jwt_simple::algorithms::MACLike;
        confused_sig.authentication_tag(confused_input.as_bytes())
    };
    let confused = format!("{confused_input}.{}", b64(&tag));
    let confused_nokid_input = format!("{}.{payload}", header(r#"{"alg":"HS256"}"#));
    let tag2 = {
        use jwt_simple::algorithms::MACLike;
        confused_sig.authentication_tag(confused_nokid_input.as_bytes())
    };
    let confused_nokid = format!("{confused_nokid_input}.{}", b64(&tag2));
    let none = format!("{}.{payload}.", header(r#"{"alg":"none"}"#));
    let none_sig = format!("{}.{payload}.{}", header(r#"{"alg":"none"}"#), b64(b"x"));
    let es512 = format!("{}.{payload}.{}", header(r#"{"alg":"ES512"}"#), b64(b"x"));
    let big = format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c");
    let cases: Vec<(&str, String, u32, &str)> = vec![
        (
            "expired",
            rs256(&host, json!({"exp": now - 120})),
            401,
            "expired",
        ),
        (
            "within skew",
            rs256(&host, json!({"exp": now - 30})),
            200,
            "",
        ),
        (
            "nbf",
            rs256(&host, json!({"nbf": now + 300})),
            401,
            "not_yet_valid",
        ),
        (
            "iat future",
            rs256(&host, json!({"iat": now + 300})),
            401,
            "not_yet_valid",
        ),
        (
            "no exp",
            rs256(&host, json!({"exp": null})),
            401,
            "malformed",
        ),
        // Validly signed, but by no provider of the rule: like any unverified token.
        (
            "issuer",
            rs256(&host, json!({"iss": "https://evil"})),
            401,
            "bad_signature",
        ),
        (
            "audience",
            rs256(&host, json!({"aud": "other"})),
            403,
            "audience",
        ),
        (
            "unknown kid",
            k.rs.clone()
                .with_key_id("nope")
                .sign(claims(&host, json!({})))
                .unwrap(),
            401,
            "unknown_kid",
        ),
        ("HS256 with RSA pubkey, kid", confused, 401, "bad_signature"),
        (
            "HS256 with RSA pubkey, no kid",
            confused_nokid,
            401,
            "bad_signature",
        ),
        ("alg none", none, 401, "malformed"),
        ("alg none with sig", none_sig, 401, "malformed"),
        ("unknown alg", es512, 401, "malformed"),
        ("too big", big, 401, "malformed"),
        ("garbage", "abc".into(), 401, "malformed"),
        (
            "CRLF claim",
            rs256(&host, json!({"role": "a\r\nx-admin: 1"})),
            401,
            "malformed",
        ),
        (
            "NUL claim",
            rs256(&host, json!({"role": "a\u{0}b"})),
            401,
            "malformed",
        ),
    ];
    for (what, token, status, reason) in cases {
        let v = with_token(&mut w, "/", &token);
        if status == 200 {
            assert!(v.upstream_request_headers.is_some(), "{what}");
            continue;
        }
        let (s, r, challenge) = refused(&v);
        assert_eq!((s, r.as_str()), (status, reason), "{what}");
        let challenge = challenge.unwrap();
        let error = if status == 403 {
            "insufficient_scope"
        } else {
            "invalid_token"
        };
        assert!(
            challenge.starts_with(&format!(
                r#"Bearer realm="api", error="{error}", error_description=""#
            )),
            "{what}: {challenge}"
        );
        // Never echo token contents.
        let body = &v.local_response.as_ref().unwrap().body;
        let body = String::from_utf8_lossy(body);
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!body.contains(part) && !challenge.contains(part), "{what}");
        }
        for l in w.logs() {
            assert!(
                !l.message.contains("x-admin")
                    && !token
                        .split('.')
                        .any(|p| p.len() > 8 && l.message.contains(p)),
                "{what}: {}",
                l.message
            );
        }
    }
    assert_eq!(host.counter(&m("denied_expired")), 1);
    assert_eq!(host.counter(&m("denied_bad_signature")), 3);
}

#[test]
fn more_than_one_token_is_refused() {
    let host = host_without_native();
    let config =
        inline_config().replace(r#""issuer""#, r#""from_params":["access_token"],"issuer""#);
    let mut w = worker(&host, &config);
    let token = rs256(&host, json!({}));
    let auth = format!("Bearer {token}");
    let path = format!("/x?access_token={token}");
    let v = get(&mut w, &path, &[("authorization", &auth)]);
    let (status, reason, challenge) = refused(&v);
    assert_eq!((status, reason.as_str()), (400, "invalid_request"));
    assert!(
        challenge
            .unwrap()
            .contains(r#"error="invalid_request", error_description="more than one token"#)
    );
    let v = get(
        &mut w,
        "/",
        &[("authorization", &auth), ("authorization", &auth)],
    );
    assert_eq!(refused(&v).1, "invalid_request");
    // From the query alone: accepted and removed from :path.
    let v = get(&mut w, &format!("/x?a=1&access_token={token}"), &[]);
    assert_eq!(upstream(&v).get(":path").as_deref(), Some("/x?a=1"));
}

#[test]
fn scopes_and_allow_missing_and_cors() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    let ok = rs256(&host, json!({}));
    assert!(
        with_token(&mut w, "/admin/x", &ok)
            .upstream_request_headers
            .is_some()
    );
    let reader = rs256(&host, json!({"scope": "read"}));
    let (s, r, c) = refused(&with_token(&mut w, "/admin/x", &reader));
    assert_eq!((s, r.as_str()), (403, "scope"));
    assert!(c.unwrap().contains(r#"error="insufficient_scope""#));
    // allow_missing: no token passes, an invalid one does not.
    assert!(
        get(&mut w, "/optional", &[])
            .upstream_request_headers
            .is_some()
    );
    let expired = rs256(&host, json!({"exp": 1000}));
    assert_eq!(
        refused(&with_token(&mut w, "/optional", &expired)).1,
        "expired"
    );
    let h = upstream(&with_token(&mut w, "/optional", &ok));
    assert_eq!(h.get("x-user-id").as_deref(), Some("user-1"));
    // CORS preflight needs no token.
    let v = w
        .exchange(
            &[
                (":method", "OPTIONS"),
                (":path", "/orders"),
                (":authority", "api.example.com"),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
            None,
            &[(":status", "204")],
            None,
        )
        .unwrap();
    assert!(v.upstream_request_headers.is_some());
}

#[test]
fn repeated_tokens_hit_the_cache_until_they_expire() {
    let host = native_host();
    let mut w = worker(&host, &inline_config());
    let token = rs256(&host, json!({}));
    for _ in 0..3 {
        assert!(
            with_token(&mut w, "/", &token)
                .upstream_request_headers
                .is_some()
        );
    }
    assert_eq!(host.foreign_calls(VERIFY_SIGNATURE), 1);
    assert_eq!(host.counter(&m("cache_miss")), 1);
    assert_eq!(host.counter(&m("cache_hit")), 2);
    // Past exp + skew the cached entry is not used.
    host.advance_clock(StdDuration::from_secs(600 + 61));
    assert_eq!(refused(&with_token(&mut w, "/", &token)).1, "expired");
    // A cached token still needs the rule's scopes.
    let reader = rs256(&host, json!({"scope": "read"}));
    assert!(
        with_token(&mut w, "/", &reader)
            .upstream_request_headers
            .is_some()
    );
    assert_eq!(refused(&with_token(&mut w, "/admin", &reader)).1, "scope");
}

#[test]
fn fuel_of_fresh_and_cached_requests() {
    let host = native_host();
    let mut w = worker(&host, &inline_config());
    let warm = rs256(&host, json!({"sub": "warm"}));
    with_token(&mut w, "/", &warm);
    let token = rs256(&host, json!({}));
    let fuel = |w: &mut Worker| -> u64 {
        w.clear_history();
        with_token(w, "/", &token);
        w.history()
            .iter()
            .filter(|r| r.callback == "proxy_on_request_headers")
            .map(|r| r.fuel)
            .sum()
    };
    let fresh = fuel(&mut w);
    let cached = fuel(&mut w);
    w.clear_history();
    get(&mut w, "/public", &[]);
    let public: u64 = w
        .history()
        .iter()
        .filter(|r| r.callback == "proxy_on_request_headers")
        .map(|r| r.fuel)
        .sum();
    let short = keys()
        .hs
        .authenticate({
            let mut c = claims(&host, json!({}));
            c.custom = serde_json::Map::new();
            c
        })
        .unwrap();
    with_token(&mut w, "/", &short);
    w.clear_history();
    with_token(&mut w, "/", &short);
    let short_cached: u64 = w
        .history()
        .iter()
        .filter(|r| r.callback == "proxy_on_request_headers")
        .map(|r| r.fuel)
        .sum();
    let mut fresh_of = |token: String| -> u64 {
        w.clear_history();
        with_token(&mut w, "/", &token);
        w.history()
            .iter()
            .filter(|r| r.callback == "proxy_on_request_headers")
            .map(|r| r.fuel)
            .sum()
    };
    let k = keys();
    let es256 = fresh_of(k.es256.sign(claims(&host, json!({}))).unwrap());
    let ed = fresh_of(k.ed.sign(claims(&host, json!({}))).unwrap());
    let hs = fresh_of(k.hs.authenticate(claims(&host, json!({}))).unwrap());
    let ps = fresh_of(k.ps.sign(claims(&host, json!({}))).unwrap());
    eprintln!(
        "fuel: fresh ES256 (native) {es256}, EdDSA {ed}, HS256 {hs}, PS256 {ps} (jwt-simple)"
    );
    eprintln!(
        "fuel: fresh RS256 (native) {fresh}, cached {cached} ({} B token), cached {short_cached} ({} B token), no token needed {public}",
        token.len(),
        short.len()
    );
    assert!(cached < fresh);
}

/// A valid configuration — provider `idp` with one inline HMAC key and one rule that requires
/// it — with the members of `provider` replaced in the provider, those of `rule` in the rule and
/// those of `top` at the top level (`null` removes a member).
fn patched(provider: Value, rule: Value, top: Value) -> String {
    let merge = |into: &mut Value, patch: &Value| {
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                into.as_object_mut().unwrap().remove(k);
            } else {
                into[k] = v.clone();
            }
        }
    };
    let mut p = json!({"issuer": ISS, "jwks": {"keys": [hs_jwk()]}});
    merge(&mut p, &provider);
    let mut r = json!({"match": {"prefix": "/"}, "requires": "idp"});
    merge(&mut r, &rule);
    let mut config = json!({"providers": {"idp": p}, "rules": [r]});
    merge(&mut config, &top);
    config.to_string()
}

fn hs_jwk() -> Value {
    json!({"kty": "oct", "kid": "hs", "k": b64(b"0123456789abcdef0123456789abcdef-hs")})
}

fn with_provider(provider: Value) -> String {
    patched(provider, json!({}), json!({}))
}

fn with_rule(rule: Value) -> String {
    patched(json!({}), rule, json!({}))
}

fn with_top(top: Value) -> String {
    patched(json!({}), json!({}), top)
}

/// The provider with inline keys `keys` (a JWKS `keys` list).
fn with_keys(keys: Value) -> String {
    with_provider(json!({"jwks": {"keys": keys}}))
}

/// The provider with a remote JWKS whose members `patch` replaces.
fn with_remote(patch: Value) -> String {
    let mut remote = json!({"cluster": "idp", "authority": "idp.example.com", "path": "/jwks"});
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            remote.as_object_mut().unwrap().remove(k);
        } else {
            remote[k] = v.clone();
        }
    }
    with_provider(json!({"jwks": null, "remote_jwks": remote}))
}

/// Every kind of broken configuration is refused by `on_configure`, and the error line names
/// the field and what is wrong with it.
#[test]
fn bad_configurations_are_rejected_naming_the_field() {
    let rsa = || rsa_jwk(&keys().rs, "rs");
    let with_alg = |mut k: Value, alg: &str| {
        k["alg"] = json!(alg);
        k
    };
    let cases: Vec<(String, &[&str])> = vec![
        // Not a JSON object / wrong types.
        ("[]".into(), &["the configuration must be a JSON object"]),
        (r#"{"providers":{"#.into(), &["EOF while parsing an object"]),
        (
            with_top(json!({"providers": [{"issuer": ISS}]})),
            &["providers: invalid type: sequence, expected a map"],
        ),
        (
            with_top(json!({"rules": {"match": {"prefix": "/"}}})),
            &["rules: invalid type: map, expected a sequence"],
        ),
        (
            with_top(json!({"cache_size": "10"})),
            &["cache_size: invalid type: string \"10\", expected usize"],
        ),
        (
            with_top(json!({"realm": 5})),
            &["realm: invalid type: integer `5`, expected a string"],
        ),
        (
            with_top(json!({"bypass_cors_preflight": "no"})),
            &["bypass_cors_preflight: invalid type: string \"no\", expected a boolean"],
        ),
        (
            with_provider(json!({"issuer": 5})),
            &["providers.idp.issuer: invalid type: integer `5`, expected a string"],
        ),
        (
            with_provider(json!({"audiences": "api"})),
            &["providers.idp.audiences: invalid type: string \"api\", expected a sequence"],
        ),
        (
            with_provider(json!({"jwks": 5})),
            &["providers.idp.jwks: must be a JWKS object or a JSON string"],
        ),
        (
            with_provider(json!({"jwks": [hs_jwk()]})),
            &["providers.idp.jwks: must be a JWKS object or a JSON string"],
        ),
        (
            with_provider(json!({"jwks": null, "remote_jwks": "https://idp.example.com/jwks"})),
            &["providers.idp.remote_jwks: invalid type: string \"https://idp.example.com/jwks\""],
        ),
        (
            with_remote(json!({"timeout_ms": "1000"})),
            &["providers.idp.remote_jwks.timeout_ms: invalid type: string \"1000\", expected u64"],
        ),
        (
            with_provider(json!({"forward": "yes"})),
            &["providers.idp.forward: invalid type: string \"yes\", expected a boolean"],
        ),
        (
            with_provider(json!({"from_headers": "authorization"})),
            &[
                "providers.idp.from_headers: invalid type: string \"authorization\", expected a sequence",
            ],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "sub", "header": 5}]})),
            &[
                "providers.idp.claim_to_headers[0].header: invalid type: integer `5`, expected a string",
            ],
        ),
        (
            with_provider(json!({"algorithms": "HS256"})),
            &["providers.idp.algorithms: invalid type: string \"HS256\", expected a sequence"],
        ),
        (
            with_rule(json!({"match": "/"})),
            &["rules[0].match: invalid type: string \"/\", expected struct MatchConfig"],
        ),
        (
            with_rule(json!({"scopes": "admin"})),
            &["rules[0].scopes: invalid type: string \"admin\", expected a sequence"],
        ),
        (
            with_rule(json!({"allow_missing": 1})),
            &["rules[0].allow_missing: invalid type: integer `1`, expected a boolean"],
        ),
        // Unknown fields, top level and nested.
        (
            r#"{"bogus":1}"#.into(),
            &["bogus: unknown field `bogus`, expected one of"],
        ),
        (
            with_top(json!({"provider": {}})),
            &["provider: unknown field `provider`"],
        ),
        (
            with_provider(json!({"isuser": ISS})),
            &["providers.idp.isuser: unknown field `isuser`"],
        ),
        (
            with_remote(json!({"url": "https://idp.example.com/jwks"})),
            &["providers.idp.remote_jwks.url: unknown field `url`"],
        ),
        (
            with_provider(json!({"from_headers": [{"name": "x-token", "prefix": "Bearer "}]})),
            &["providers.idp.from_headers[0].prefix: unknown field `prefix`"],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "sub", "headr": "x-sub"}]})),
            &["providers.idp.claim_to_headers[0].headr: unknown field `headr`"],
        ),
        (
            with_rule(json!({"match": {"prefx": "/"}})),
            &["rules[0].match.prefx: unknown field `prefx`"],
        ),
        (
            with_rule(json!({"requirs": "idp"})),
            &["rules[0].requirs: unknown field `requirs`"],
        ),
        // Empty or missing required values.
        (
            with_provider(json!({"issuer": null})),
            &["providers.idp: missing field `issuer`"],
        ),
        (
            with_provider(json!({"issuer": ""})),
            &["providers.idp.issuer: must not be empty"],
        ),
        (
            with_provider(json!({"audiences": ["api", ""]})),
            &["providers.idp.audiences[1]: must not be empty"],
        ),
        (
            with_provider(json!({"subjects": [""]})),
            &[
                "providers.idp.subjects[0]: must not be empty (an empty prefix matches every subject",
            ],
        ),
        (
            with_provider(json!({"jwks": null})),
            &["providers.idp: needs `jwks` or `remote_jwks`"],
        ),
        (
            with_remote(json!({"cluster": ""})),
            &["providers.idp.remote_jwks.cluster: must not be empty"],
        ),
        (
            with_remote(json!({"authority": ""})),
            &["providers.idp.remote_jwks.authority: must be a non-empty host name"],
        ),
        (
            with_remote(json!({"path": ""})),
            &["providers.idp.remote_jwks.path: must start with '/'"],
        ),
        (
            with_remote(json!({"path": null})),
            &["providers.idp.remote_jwks: missing field `path`"],
        ),
        (
            with_provider(json!({"from_headers": []})),
            &["providers.idp: needs at least one of `from_headers`, `from_params`, `from_cookies`"],
        ),
        (
            with_provider(json!({"from_headers": [{"name": ""}]})),
            &["providers.idp.from_headers[0].name: header name must not be empty"],
        ),
        (
            with_provider(json!({"from_params": [""]})),
            &["providers.idp.from_params[0]: must be a non-empty name"],
        ),
        (
            with_provider(json!({"from_cookies": [""]})),
            &["providers.idp.from_cookies[0]: must be a non-empty name"],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "", "header": "x-sub"}]})),
            &["providers.idp.claim_to_headers[0].claim: must be a claim name or a dotted path"],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "sub", "header": ""}]})),
            &["providers.idp.claim_to_headers[0].header: header name must not be empty"],
        ),
        (
            with_provider(json!({"algorithms": []})),
            &["providers.idp.algorithms: must not be empty"],
        ),
        (
            with_top(json!({"realm": ""})),
            &["realm: must be 1-128 printable ASCII characters"],
        ),
        (
            with_rule(json!({"match": null})),
            &["rules[0]: missing field `match`"],
        ),
        (
            with_rule(json!({"match": {}})),
            &["rules[0].match: needs exactly one of `prefix`, `path`, `regex`"],
        ),
        (
            with_rule(json!({"requires": {"any": []}})),
            &["rules[0].requires.any: must name at least one provider"],
        ),
        (
            with_rule(json!({"requires": {"all": []}})),
            &["rules[0].requires.all: must name at least one provider"],
        ),
        (
            with_rule(json!({"scopes": [""]})),
            &["rules[0].scopes[0]: not a scope token"],
        ),
        (
            with_rule(json!({"match": {"prefix": "/", "methods": [""]}})),
            &["rules[0].match.methods[0]: not a method"],
        ),
        // Invalid regexes.
        (
            with_rule(json!({"match": {"regex": "("}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "/api/[z-a]"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "/a{2,1}"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "*/api"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "/\\p{Greek}+"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "(?<v>a)/(?<v>b)"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        (
            with_rule(json!({"match": {"regex": "/api/(v1|v2"}})),
            &["rules[0].match.regex: invalid regex"],
        ),
        // Invalid keys.
        (
            with_keys(json!([])),
            &["providers.idp.jwks: the JWKS has no usable signing key"],
        ),
        (
            with_provider(json!({"jwks": {}})),
            &["providers.idp.jwks: missing field `keys`"],
        ),
        (
            with_provider(json!({"jwks": {"keys": "hs"}})),
            &["providers.idp.jwks: invalid type: string \"hs\", expected a sequence"],
        ),
        (
            with_provider(json!({"jwks": "not json"})),
            &["providers.idp.jwks: expected ident at line 1 column 2"],
        ),
        (
            with_provider(json!({"jwks": "{\"keys\":[]}"})),
            &["providers.idp.jwks: the JWKS has no usable signing key"],
        ),
        (
            with_keys(json!([{"kty": "RSA", "kid": "rs", "e": "AQAB"}])),
            &["providers.idp.jwks: keys[0]: missing `n`"],
        ),
        (
            with_keys(json!([{"kty": "RSA", "kid": "rs", "n": "n+/=", "e": "AQAB"}])),
            &["providers.idp.jwks: keys[0]: `n` is not base64url"],
        ),
        (
            with_keys(json!([hs_jwk(), with_alg(rsa(), "ES256")])),
            &["providers.idp.jwks: keys[1]: `alg` ES256 does not fit a Rsa key"],
        ),
        (
            with_keys(json!([with_alg(hs_jwk(), "RS256")])),
            &["providers.idp.jwks: keys[0]: `alg` RS256 does not fit a Oct key"],
        ),
        (
            with_keys(
                json!([{"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32])}]),
            ),
            &["providers.idp.jwks: keys[0]: `x`/`y` have the wrong length"],
        ),
        (
            with_keys(
                json!([{"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[1; 32])}]),
            ),
            &["providers.idp.jwks: keys[0]: invalid P-256 key"],
        ),
        (
            with_keys(json!([{"kty": "EC", "crv": "P-384", "y": b64(&[1; 48])}])),
            &["providers.idp.jwks: keys[0]: missing `x`"],
        ),
        (
            with_keys(json!([{"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31])}])),
            &["providers.idp.jwks: keys[0]: invalid Ed25519 key"],
        ),
        (
            with_keys(json!([{"kty": "oct", "k": b64(b"too short")}])),
            &["providers.idp.jwks: keys[0]: `k` is shorter than 256 bits"],
        ),
        (
            with_keys(json!([{"kty": "oct", "kid": "hs"}])),
            &["providers.idp.jwks: keys[0]: missing `k`"],
        ),
        (
            with_keys(json!([{"kid": "hs", "k": b64(&[7; 32])}])),
            &["providers.idp.jwks: keys[0]: missing field `kty`"],
        ),
        (
            with_keys(json!([hs_jwk(), 5])),
            &["providers.idp.jwks: keys[1]: invalid type: integer `5`"],
        ),
        (
            with_keys(json!([{"kty": "oct", "use": "enc", "k": b64(&[7; 32])}])),
            &["providers.idp.jwks: the JWKS has no usable signing key"],
        ),
        // Algorithms: unknown, forbidden, or without a key.
        (
            with_provider(json!({"algorithms": ["none"]})),
            &["providers.idp.algorithms[0]: unknown or forbidden algorithm"],
        ),
        (
            with_provider(json!({"algorithms": ["HS256", "ES512"]})),
            &["providers.idp.algorithms[1]: unknown or forbidden algorithm"],
        ),
        (
            with_provider(json!({"algorithms": ["hs256"]})),
            &["providers.idp.algorithms[0]: unknown or forbidden algorithm"],
        ),
        (
            with_provider(json!({"algorithms": ["RS256"]})),
            &["providers.idp.algorithms[0]: no key in `jwks` can verify RS256"],
        ),
        // Impossible limits.
        (
            with_remote(json!({"timeout_ms": 0})),
            &["providers.idp.remote_jwks.timeout_ms: must be 1..=60000"],
        ),
        (
            with_remote(json!({"timeout_ms": 60_001})),
            &["providers.idp.remote_jwks.timeout_ms: must be 1..=60000"],
        ),
        (
            with_remote(json!({"timeout_ms": -1})),
            &["providers.idp.remote_jwks.timeout_ms: invalid value: integer `-1`, expected u64"],
        ),
        (
            with_remote(json!({"refresh_s": 0})),
            &["providers.idp.remote_jwks.refresh_s: must be at least 1"],
        ),
        (
            with_remote(json!({"min_refetch_interval_s": -30})),
            &[
                "providers.idp.remote_jwks.min_refetch_interval_s: invalid value: integer `-30`, expected u64",
            ],
        ),
        (
            with_provider(json!({"clock_skew_s": 3601})),
            &["providers.idp.clock_skew_s: must be at most 3600"],
        ),
        (
            with_provider(json!({"clock_skew_s": u64::MAX})),
            &["providers.idp.clock_skew_s: must be at most 3600"],
        ),
        (
            with_provider(json!({"clock_skew_s": -1})),
            &["providers.idp.clock_skew_s: invalid value: integer `-1`, expected u64"],
        ),
        (
            with_provider(json!({"max_lifetime_s": 0})),
            &["providers.idp.max_lifetime_s: must be at least 1"],
        ),
        (
            with_provider(json!({"max_lifetime_s": -3600})),
            &["providers.idp.max_lifetime_s: invalid value: integer `-3600`, expected u64"],
        ),
        (
            with_top(json!({"cache_size": 100_001})),
            &["cache_size: must be at most 100000"],
        ),
        (
            with_top(json!({"cache_size": -1})),
            &["cache_size: invalid value: integer `-1`, expected usize"],
        ),
        (
            r#"{"cache_size":18446744073709551616}"#.into(),
            &["cache_size: invalid type: floating point"],
        ),
        (
            with_top(json!({"realm": "r".repeat(129)})),
            &["realm: must be 1-128 printable ASCII characters"],
        ),
        (
            with_top(json!({"realm": "a \"quoted\" realm"})),
            &["realm: must be 1-128 printable ASCII characters without '\"' or '\\'"],
        ),
        (
            with_top(json!({"realm": "api\r\nx-evil: 1"})),
            &["realm: must be 1-128 printable ASCII characters"],
        ),
        // Unknown provider names in rules.
        (
            with_top(json!({"providers": {}})),
            &["rules[0].requires: unknown provider `idp`"],
        ),
        (
            with_rule(json!({"requires": "x"})),
            &["rules[0].requires: unknown provider `x`"],
        ),
        (
            with_rule(json!({"requires": "IDP"})),
            &["rules[0].requires: unknown provider `IDP`"],
        ),
        (
            with_rule(json!({"requires": {"any": ["idp", "x"]}})),
            &["rules[0].requires.any[1]: unknown provider `x`"],
        ),
        (
            with_rule(json!({"requires": {"all": ["x", "idp"]}})),
            &["rules[0].requires.all[0]: unknown provider `x`"],
        ),
        (
            with_top(json!({"rules": [
                {"match": {"prefix": "/public"}, "requires": null},
                {"match": {"prefix": "/"}, "requires": "auth0"}
            ]})),
            &["rules[1].requires: unknown provider `auth0`"],
        ),
        // Bad values for `requires` (a string, {"any": [...]} or {"all": [...]}).
        (
            with_rule(json!({"requires": 5})),
            &["rules[0].requires: data did not match any variant of untagged enum RequiresConfig"],
        ),
        (
            with_rule(json!({"requires": ["idp"]})),
            &["rules[0].requires: data did not match any variant of untagged enum RequiresConfig"],
        ),
        (
            with_rule(json!({"requires": {"some": ["idp"]}})),
            &["rules[0].requires: data did not match any variant of untagged enum RequiresConfig"],
        ),
        (
            with_rule(json!({"requires": {"any": "idp"}})),
            &["rules[0].requires: data did not match any variant of untagged enum RequiresConfig"],
        ),
        // Invalid names, headers and paths; settings that contradict each other.
        (
            with_top(
                json!({"providers": {"my idp": {"issuer": ISS, "jwks": {"keys": [hs_jwk()]}}}, "rules": []}),
            ),
            &["providers.my idp: provider names must be 1-64 characters of [A-Za-z0-9_-]"],
        ),
        (
            with_top(
                json!({"providers": {"": {"issuer": ISS, "jwks": {"keys": [hs_jwk()]}}}, "rules": []}),
            ),
            &["providers.: provider names must be 1-64 characters"],
        ),
        (
            with_provider(json!({"from_headers": [{"name": "x token"}]})),
            &["providers.idp.from_headers[0].name: invalid character at position 1"],
        ),
        (
            with_provider(
                json!({"from_headers": [{"name": "authorization", "value_prefix": "Bearer\n"}]}),
            ),
            &["providers.idp.from_headers[0].value_prefix: must not contain control characters"],
        ),
        (
            with_provider(json!({"from_params": ["access_token="]})),
            &["providers.idp.from_params[0]: must be a non-empty name without '='"],
        ),
        (
            with_provider(json!({"from_cookies": ["jwt session"]})),
            &["providers.idp.from_cookies[0]: must be a non-empty name"],
        ),
        (
            with_provider(
                json!({"claim_to_headers": [{"claim": "realm..roles", "header": "x-roles"}]}),
            ),
            &[
                "providers.idp.claim_to_headers[0].claim: must be a claim name or a dotted path without empty segments",
            ],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "sub", "header": ":authority"}]})),
            &["providers.idp.claim_to_headers[0].header: pseudo-headers"],
        ),
        (
            with_provider(json!({"claim_to_headers": [{"claim": "sub", "header": "host"}]})),
            &["providers.idp.claim_to_headers[0].header: connection/framing headers"],
        ),
        (
            with_provider(
                json!({"claim_to_headers": [{"claim": "groups", "header": "x-groups", "separator": "\n"}]}),
            ),
            &["providers.idp.claim_to_headers[0].separator: must not contain control characters"],
        ),
        (
            with_provider(json!({"forward_payload_header": "x payload"})),
            &["providers.idp.forward_payload_header: invalid character at position 1"],
        ),
        (
            with_provider(
                json!({"claim_to_headers": [{"claim": "sub", "header": "Authorization"}]}),
            ),
            &[
                "providers: header `authorization` is both a token source and a claim/payload header",
            ],
        ),
        (
            with_provider(json!({"forward_payload_header": "authorization"})),
            &[
                "providers: header `authorization` is both a token source and a claim/payload header",
            ],
        ),
        (
            with_remote(json!({"authority": "idp example.com"})),
            &["providers.idp.remote_jwks.authority: must be a non-empty host name"],
        ),
        (
            with_remote(json!({"path": "jwks"})),
            &["providers.idp.remote_jwks.path: must start with '/'"],
        ),
        (
            with_rule(json!({"match": {"prefix": "api"}})),
            &["rules[0].match.prefix: must start with '/'"],
        ),
        (
            with_rule(json!({"match": {"path": "api"}})),
            &["rules[0].match.path: must start with '/'"],
        ),
        (
            with_rule(json!({"match": {"prefix": "/", "regex": "/.*"}})),
            &["rules[0].match: needs exactly one of `prefix`, `path`, `regex`"],
        ),
        (
            with_rule(json!({"match": {"prefix": "/", "methods": ["G3T"]}})),
            &["rules[0].match.methods[0]: not a method"],
        ),
        (
            with_rule(json!({"scopes": ["read admin"]})),
            &["rules[0].scopes[0]: not a scope token"],
        ),
        (
            with_rule(json!({"requires": null, "scopes": ["admin"]})),
            &["rules[0].requires: `scopes` and `allow_missing` need a provider in `requires`"],
        ),
        (
            with_rule(json!({"requires": null, "allow_missing": true})),
            &["rules[0].requires: `scopes` and `allow_missing` need a provider in `requires`"],
        ),
    ];
    assert_configs_rejected(
        &testing::module("jwt-to-header"),
        "jwt-to-header: invalid plugin configuration: ",
        &cases,
    );
}

// ---- remote JWKS -----------------------------------------------------------------------------

fn remote_config(min_refetch_s: u64) -> String {
    config_with(json!({"remote_jwks": {
        "cluster": "idp", "authority": "idp.example.com", "path": "/jwks",
        "timeout_ms": 2000, "min_refetch_interval_s": min_refetch_s
    }}))
}

fn jwks_of(kids: &[&str]) -> Vec<u8> {
    let all = jwks();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    serde_json::to_vec(&json!({"keys": keys})).unwrap()
}

/// Opens a stream and sends `method /` with the token; the request is left wherever the filter
/// put it (paused while it waits for keys).
fn start_request(w: &mut Worker, method: &str, token: &str, end_of_stream: bool) -> StreamId {
    let id = w.open_stream().unwrap();
    let auth = format!("Bearer {token}");
    w.send_request_headers(
        id,
        &[
            (":method", method),
            (":path", "/"),
            (":authority", "a"),
            ("authorization", &auth),
        ],
        end_of_stream,
    )
    .unwrap();
    id
}

fn tick(w: &mut Worker) {
    w.advance(StdDuration::from_millis(100)).unwrap();
}

/// Answer the only pending JWKS call of `w`.
fn serve_jwks(w: &mut Worker, body: Vec<u8>) {
    let calls = w.pending_http_calls();
    assert_eq!(calls.len(), 1, "one JWKS fetch");
    let c = &calls[0];
    assert_eq!(c.upstream, "idp");
    assert_eq!(c.headers.get(":path").as_deref(), Some("/jwks"));
    assert_eq!(
        c.headers.get(":authority").as_deref(),
        Some("idp.example.com")
    );
    w.respond_http_call(c.id, HttpCallResponse::new(200, body))
        .unwrap();
}

#[test]
fn remote_jwks_is_fetched_once_and_shared_by_workers() {
    let host = native_host();
    host.add_cluster("idp");
    let config = remote_config(30);
    let mut a = worker(&host, &config);
    let mut b = worker(&host, &config);
    tick(&mut a);
    b.run_due().unwrap();
    tick(&mut b);
    let total = a.pending_http_calls().len() + b.pending_http_calls().len();
    assert_eq!(total, 1, "single flight across worker VMs");
    serve_jwks(&mut a, jwks_of(&["rs"]));
    assert_eq!(host.counter(&m("jwks_fetch_ok")), 1);
    // b picks the keys up from shared data on its next tick, without fetching.
    tick(&mut b);
    assert!(b.pending_http_calls().is_empty());
    let token = rs256(&host, json!({}));
    for w in [&mut a, &mut b] {
        let v = with_token(w, "/", &token);
        assert_eq!(upstream(&v).get("x-user-id").as_deref(), Some("user-1"));
    }
    // Shared data: two keys per provider.
    assert_eq!(host.shared_data_size("").0, 2);
}

#[test]
fn no_keys_yet_pauses_then_503_when_the_idp_is_down() {
    let host = host_without_native();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    let token = rs256(&host, json!({}));
    let id = start_request(&mut w, "GET", &token, true);
    assert!(w.request_paused(id), "waits for the first fetch");
    tick(&mut w);
    let call = w.pending_http_calls()[0].id;
    w.respond_http_call(call, HttpCallResponse::new(500, "down"))
        .unwrap();
    let v = w.complete(id).unwrap();
    let (status, reason, _) = refused(&v);
    assert_eq!((status, reason.as_str()), (503, "jwks_unavailable"));
    assert_eq!(
        v.local_response
            .as_ref()
            .unwrap()
            .headers
            .get("retry-after")
            .as_deref(),
        Some("5")
    );
    assert_eq!(host.counter(&m("jwks_fetch_failed")), 1);
    assert!(w.logged(
        LogLevel::Warn,
        "providers.idp: JWKS fetch failed (status 500, 4 body bytes); there are no keys yet"
    ));
    // While the IdP stays down, requests fail fast instead of waiting for their deadline.
    let v = with_token(&mut w, "/", &token);
    assert_eq!(refused(&v).0, 503);
    // The next attempt (1 s later) succeeds: requests pass again.
    w.advance(StdDuration::from_secs(1)).unwrap();
    serve_jwks(&mut w, jwks_of(&["rs"]));
    assert!(
        with_token(&mut w, "/", &token)
            .upstream_request_headers
            .is_some()
    );
}

#[test]
fn unknown_kid_refetches_while_the_request_waits() {
    let host = native_host();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    tick(&mut w);
    serve_jwks(&mut w, jwks_of(&["rs"]));
    // Minutes later the IdP rotates to a new key (es256) and signs with it.
    host.advance_clock(StdDuration::from_secs(120));
    let rotated = keys().es256.sign(claims(&host, json!({}))).unwrap();
    let id = start_request(&mut w, "GET", &rotated, true);
    assert!(w.request_paused(id), "paused for the refetch");
    tick(&mut w);
    serve_jwks(&mut w, jwks_of(&["rs", "es256"]));
    assert!(!w.request_paused(id));
    let v = w.stream(id).unwrap();
    assert_eq!(upstream(&v).get("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(host.counter(&m("denied_unknown_kid")), 0);
    // Another unknown kid right after: no refetch (min_refetch_interval_s), 401 at once.
    let other = keys().ed.sign(claims(&host, json!({}))).unwrap();
    let v = with_token(&mut w, "/", &other);
    assert_eq!(refused(&v).1, "unknown_kid");
    tick(&mut w);
    assert!(w.pending_http_calls().is_empty());
}

#[test]
fn paused_requests_on_other_workers_wake_when_keys_arrive() {
    let host = host_without_native();
    host.add_cluster("idp");
    let config = remote_config(30);
    let mut a = worker(&host, &config);
    let mut b = worker(&host, &config);
    tick(&mut a);
    serve_jwks(&mut a, jwks_of(&["rs"]));
    tick(&mut b);
    host.advance_clock(StdDuration::from_secs(60));
    let rotated = keys().es384.sign(claims(&host, json!({}))).unwrap();
    let sb = start_request(&mut b, "GET", &rotated, true);
    assert!(b.request_paused(sb));
    // b's root takes the lease and fetches; a sees the lease and does not.
    tick(&mut b);
    a.run_due().unwrap();
    tick(&mut a);
    assert!(a.pending_http_calls().is_empty());
    let sa = start_request(&mut a, "GET", &rotated, true);
    assert!(a.request_paused(sa), "a waits for b's fetch");
    serve_jwks(&mut b, jwks_of(&["rs", "es384"]));
    assert!(b.stream(sb).unwrap().upstream_request_headers.is_some());
    tick(&mut a);
    assert!(a.stream(sa).unwrap().upstream_request_headers.is_some());
    assert_eq!(host.counter(&m("jwks_fetch_ok")), 2);
}

#[test]
fn failed_refresh_keeps_the_last_good_keys() {
    let host = host_without_native();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    tick(&mut w);
    serve_jwks(&mut w, jwks_of(&["rs"]));
    // refresh_s (600) later a refresh is due; the IdP is down.
    host.advance_clock(StdDuration::from_secs(600));
    tick(&mut w);
    let call = w.pending_http_calls()[0].id;
    w.fail_http_call(call).unwrap();
    assert_eq!(host.counter(&m("jwks_fetch_failed")), 1);
    let token = rs256(&host, json!({}));
    assert!(
        with_token(&mut w, "/", &token)
            .upstream_request_headers
            .is_some()
    );
}

#[test]
fn a_waiting_request_keeps_its_body_until_verified() {
    let host = host_without_native();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    let token = rs256(&host, json!({}));
    let id = start_request(&mut w, "POST", &token, false);
    w.send_request_body(id, b"payload", true).unwrap();
    assert!(
        w.stream(id).unwrap().upstream_request_headers.is_none(),
        "the body must not release the paused headers"
    );
    tick(&mut w);
    serve_jwks(&mut w, jwks_of(&["rs"]));
    let v = w.stream(id).unwrap();
    assert_eq!(upstream(&v).get("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(v.upstream_request_body, b"payload");
}

#[test]
fn token_sources_are_removed_or_forwarded() {
    let host = host_without_native();
    let config = inline_config().replace(r#""issuer""#, r#""from_cookies":["jwt"],"issuer""#);
    let mut w = worker(&host, &config);
    let token = rs256(&host, json!({}));
    let cookie = format!("a=1; jwt={token}; b=2");
    let h = upstream(&get(&mut w, "/", &[("cookie", &cookie)]));
    assert_eq!(h.get("x-user-id").as_deref(), Some("user-1"));
    assert_eq!(
        h.get_all("cookie"),
        vec!["a=1; b=2"],
        "only the token cookie goes"
    );
    let only = format!("jwt={token}");
    let h = upstream(&get(&mut w, "/", &[("cookie", &only)]));
    assert!(!h.contains("cookie"));

    let forwarding = inline_config().replace(r#""issuer""#, r#""forward":true,"issuer""#);
    let mut w = worker(&host, &forwarding);
    let h = upstream(&with_token(&mut w, "/", &token));
    assert_eq!(h.get("authorization"), Some(format!("Bearer {token}")));
    assert_eq!(h.get("x-user-id").as_deref(), Some("user-1"));
}

#[test]
fn a_lease_left_by_a_vanished_worker_expires() {
    let host = host_without_native();
    host.add_cluster("idp");
    let config = remote_config(30);
    let mut a = worker(&host, &config);
    let mut b = worker(&host, &config);
    tick(&mut a);
    assert_eq!(a.pending_http_calls().len(), 1, "a holds the lease");
    drop(a); // the VM goes away mid-fetch
    b.advance(StdDuration::from_secs(2)).unwrap();
    assert!(
        b.pending_http_calls().is_empty(),
        "lease still valid (timeout 2 s + 1 s)"
    );
    b.advance(StdDuration::from_millis(1100)).unwrap();
    serve_jwks(&mut b, jwks_of(&["rs"]));
    let token = rs256(&host, json!({}));
    assert!(
        with_token(&mut b, "/", &token)
            .upstream_request_headers
            .is_some()
    );
}

#[test]
fn a_timed_out_fetch_is_a_failure_and_is_retried() {
    let host = host_without_native();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    tick(&mut w);
    assert_eq!(w.pending_http_calls().len(), 1);
    // Nobody answers: Envoy times the callout out (504) after timeout_ms.
    w.advance(StdDuration::from_millis(2000)).unwrap();
    assert_eq!(host.counter(&m("jwks_fetch_failed")), 1);
    w.advance(StdDuration::from_millis(1000)).unwrap();
    serve_jwks(&mut w, jwks_of(&["rs"]));
    assert_eq!(host.counter(&m("jwks_fetch_ok")), 1);
}

// ---- remote JWKS: what a broken endpoint answers ---------------------------------------------

/// The shared-data key of provider `idp`'s JWKS document under `config`.
fn shared_jwks_key(config: &str) -> String {
    data_key(&format!("{:016x}", fnv1a64(config.as_bytes())), "idp")
}

/// `jwks_of(kids)` padded with an extra member to exactly `len` bytes: a JWKS with good keys,
/// whose only fault (if any) is its size.
fn padded_jwks(kids: &[&str], len: usize) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&jwks_of(kids)).unwrap();
    doc["padding"] = json!("");
    let base = serde_json::to_vec(&doc).unwrap().len();
    doc["padding"] = json!("x".repeat(len - base));
    let body = serde_json::to_vec(&doc).unwrap();
    assert_eq!(body.len(), len);
    body
}

/// A broken JWKS answer: what it is, the status and body the endpoint sends, and what the
/// warning must say about it (each string a substring of one warning line).
struct BadAnswer {
    what: &'static str,
    status: u16,
    body: Vec<u8>,
    why: Vec<String>,
}

fn bad_answers() -> Vec<BadAnswer> {
    let rs = jwks_of(&["rs"]);
    let rs_key = || -> Value { serde_json::from_slice::<Value>(&rs).unwrap()["keys"][0].clone() };
    let doc = |v: Value| serde_json::to_vec(&v).unwrap();
    let unusable = "providers.idp: the fetched JWKS is unusable: ";
    let mut answers = vec![
        // (a) garbage
        BadAnswer {
            what: "an HTML error page",
            status: 200,
            body: b"<html><body>Service Unavailable</body></html>".to_vec(),
            why: strings(&[unusable, "expected value at line 1 column 1"]),
        },
        BadAnswer {
            what: "bytes that are not UTF-8",
            status: 200,
            body: vec![0xff, 0xfe, 0x00, 0x7b, 0x80],
            why: strings(&[unusable, "expected value at line 1 column 1"]),
        },
        BadAnswer {
            what: "a truncated document",
            status: 200,
            body: rs[..rs.len() / 2].to_vec(),
            why: strings(&[unusable, "EOF while parsing"]),
        },
        BadAnswer {
            what: "a document followed by garbage",
            status: 200,
            body: [rs.as_slice(), b"}garbage"].concat(),
            why: strings(&[unusable, "trailing characters"]),
        },
        BadAnswer {
            what: "an empty body",
            status: 200,
            body: Vec::new(),
            why: strings(&["providers.idp: JWKS fetch failed (status 200, 0 body bytes)"]),
        },
        // (b) JSON without usable keys, or keys of the wrong shape
        BadAnswer {
            what: "an empty key list",
            status: 200,
            body: doc(json!({"keys": []})),
            why: strings(&[unusable, "the JWKS has no usable signing key"]),
        },
        BadAnswer {
            what: "a JSON object without `keys`",
            status: 200,
            body: doc(json!({"error": "maintenance"})),
            why: strings(&[unusable, "missing field `keys`"]),
        },
        BadAnswer {
            what: "a bare key instead of a key set",
            status: 200,
            body: doc(rs_key()),
            why: strings(&[unusable, "missing field `keys`"]),
        },
        BadAnswer {
            what: "`keys` is an object",
            status: 200,
            body: doc(json!({"keys": {"rs": rs_key()}})),
            why: strings(&[unusable, "invalid type: map, expected a sequence"]),
        },
        BadAnswer {
            // serde reads a struct from an array by position: `keys` is then the first element.
            what: "a JSON array",
            status: 200,
            body: doc(json!([rs_key()])),
            why: strings(&[unusable, "invalid type: map, expected a sequence"]),
        },
        BadAnswer {
            what: "JSON null",
            status: 200,
            body: b"null".to_vec(),
            why: strings(&[unusable, "invalid type: null"]),
        },
        BadAnswer {
            what: "only key types the filter does not use",
            status: 200,
            body: doc(json!({"keys": [
                {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
                {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AA"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            ]})),
            why: strings(&[unusable, "the JWKS has no usable signing key"]),
        },
        BadAnswer {
            what: "a key that is a string",
            status: 200,
            body: doc(json!({"keys": ["rs"]})),
            why: strings(&[unusable, "keys[0]: invalid type: string"]),
        },
        BadAnswer {
            what: "an RSA key without `n`",
            status: 200,
            body: doc(json!({"keys": [{"kty": "RSA", "kid": "rs", "e": "AQAB"}]})),
            why: strings(&[unusable, "keys[0]: missing `n`"]),
        },
        BadAnswer {
            what: "an RSA modulus that is a number",
            status: 200,
            body: doc(json!({"keys": [{"kty": "RSA", "kid": "rs", "n": 65537, "e": "AQAB"}]})),
            why: strings(&[
                unusable,
                "keys[0]: invalid type: integer `65537`, expected a string",
            ]),
        },
        BadAnswer {
            what: "an RSA modulus that is not base64url",
            status: 200,
            body: doc(json!({"keys": [{"kty": "RSA", "kid": "rs", "n": "n+/=", "e": "AQAB"}]})),
            why: strings(&[unusable, "keys[0]: `n` is not base64url"]),
        },
        BadAnswer {
            what: "a good key next to a P-256 key of the wrong length",
            status: 200,
            body: doc(json!({"keys": [
                rs_key(),
                {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(&[1; 31]), "y": b64(&[1; 32])},
            ]})),
            why: strings(&[unusable, "keys[1]: `x`/`y` have the wrong length"]),
        },
        BadAnswer {
            what: "an RSA key labelled ES256",
            status: 200,
            body: {
                let mut k = rs_key();
                k["alg"] = json!("ES256");
                doc(json!({"keys": [k]}))
            },
            why: strings(&[unusable, "keys[0]: `alg` ES256 does not fit a Rsa key"]),
        },
        BadAnswer {
            what: "an HMAC secret shorter than 256 bits",
            status: 200,
            body: doc(json!({"keys": [{"kty": "oct", "kid": "hs", "k": b64(b"short")}]})),
            why: strings(&[unusable, "keys[0]: `k` is shorter than 256 bits"]),
        },
        // (c) a body above 64 KiB (the keys in it are good)
        BadAnswer {
            what: "a good JWKS one byte above 64 KiB",
            status: 200,
            body: padded_jwks(&["rs"], MAX_JWKS_BYTES + 1),
            why: vec![format!(
                "providers.idp: the fetched JWKS is too large ({} bytes, at most {MAX_JWKS_BYTES})",
                MAX_JWKS_BYTES + 1
            )],
        },
        BadAnswer {
            what: "a good JWKS of 1 MiB",
            status: 200,
            body: padded_jwks(&["rs"], 1024 * 1024),
            why: vec![format!(
                "providers.idp: the fetched JWKS is too large (1048576 bytes, at most {MAX_JWKS_BYTES})"
            )],
        },
    ];
    // (d) a status other than 200 (with a body that would be a good JWKS)
    for (status, why) in [
        (404, "status 404"),
        (500, "status 500"),
        (503, "status 503"),
        (301, "status 301"),
        (204, "status 204"),
        (206, "status 206"),
    ] {
        answers.push(BadAnswer {
            what: "a status other than 200",
            status,
            body: rs.clone(),
            why: strings(&["providers.idp: JWKS fetch failed (", why]),
        });
    }
    answers
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// The warning lines of `w` (for failure messages).
fn warnings(w: &Worker) -> Vec<String> {
    w.logs()
        .into_iter()
        .filter(|l| l.level >= LogLevel::Warn)
        .map(|l| l.message)
        .collect()
}

fn warned(w: &Worker, why: &[String]) -> bool {
    w.logs()
        .iter()
        .any(|l| l.level == LogLevel::Warn && why.iter().all(|s| l.message.contains(s)))
}

/// `bad.why` and, for the answers whose warning says what the worker is left with (a failed
/// fetch, a too-large document; not an unusable one), `left_with`.
fn why_and_what_is_left(bad: &BadAnswer, left_with: &str) -> Vec<String> {
    let mut why = bad.why.clone();
    if why
        .iter()
        .any(|s| s.contains("JWKS fetch failed") || s.contains("too large"))
    {
        why.push(format!("; {left_with}"));
    }
    why
}

/// 503, `jwks_unavailable`, `Retry-After: 5`.
fn assert_jwks_unavailable(v: &StreamView, what: &str) {
    let (status, reason, _) = refused(v);
    assert_eq!(
        (status, reason.as_str()),
        (503, "jwks_unavailable"),
        "{what}"
    );
    let reply = v.local_response.as_ref().unwrap();
    assert_eq!(
        reply.headers.get("retry-after").as_deref(),
        Some("5"),
        "{what}"
    );
}

#[test]
fn a_broken_first_jwks_answer_is_503_and_the_warning_says_why() {
    for bad in bad_answers() {
        let what = format!("{} ({}, {} bytes)", bad.what, bad.status, bad.body.len());
        let why = why_and_what_is_left(&bad, "there are no keys yet");
        let host = host_without_native();
        host.add_cluster("idp");
        let config = remote_config(30);
        let mut w = worker(&host, &config);
        let token = rs256(&host, json!({}));
        let id = start_request(&mut w, "GET", &token, true);
        assert!(w.request_paused(id), "{what}: waits for the first fetch");
        tick(&mut w);
        let calls = w.pending_http_calls();
        assert_eq!(calls.len(), 1, "{what}");
        w.respond_http_call(calls[0].id, HttpCallResponse::new(bad.status, bad.body))
            .unwrap();
        // The waiting request is answered at once, not at its deadline.
        let v = w.stream(id).unwrap();
        assert!(!w.request_paused(id), "{what}: still waiting");
        assert_jwks_unavailable(&v, &what);
        assert_eq!(host.counter(&m("jwks_fetch_failed")), 1, "{what}");
        assert_eq!(host.counter(&m("jwks_fetch_ok")), 0, "{what}");
        assert_eq!(host.counter(&m("denied_jwks_unavailable")), 1, "{what}");
        assert_eq!(host.counter(&m("allowed")), 0, "{what}");
        assert!(
            warned(&w, &why),
            "{what}: no warning with {why:?}: {:?}",
            warnings(&w)
        );
        assert!(
            !warnings(&w).iter().any(|l| l.contains("last good keys")),
            "{what}: there were no keys to keep: {:?}",
            warnings(&w)
        );
        // Nothing was stored for other workers.
        assert!(
            host.shared_data("", shared_jwks_key(&config).as_bytes())
                .is_none(),
            "{what}"
        );
        // Later requests fail fast while the endpoint stays broken.
        let v = with_token(&mut w, "/", &token);
        assert_jwks_unavailable(&v, &what);
        assert_eq!(host.counter(&m("denied_jwks_unavailable")), 2, "{what}");
        // A request that needs no token is not affected.
        assert!(
            get(&mut w, "/public", &[])
                .upstream_request_headers
                .is_some()
        );
    }
}

#[test]
fn a_broken_refresh_keeps_the_last_good_keys_and_the_warning_says_why() {
    for bad in bad_answers() {
        let what = format!("{} ({}, {} bytes)", bad.what, bad.status, bad.body.len());
        let why = why_and_what_is_left(&bad, "keeping the last good keys");
        let host = host_without_native();
        host.add_cluster("idp");
        let config = remote_config(30);
        let mut w = worker(&host, &config);
        tick(&mut w);
        serve_jwks(&mut w, jwks_of(&["rs"]));
        let shared_doc = || {
            host.shared_data("", shared_jwks_key(&config).as_bytes())
                .map(|(doc, _)| doc)
        };
        assert_eq!(shared_doc(), Some(jwks_of(&["rs"])));
        // refresh_s (600) later a refresh is due; the endpoint answers garbage.
        host.advance_clock(StdDuration::from_secs(600));
        tick(&mut w);
        let calls = w.pending_http_calls();
        assert_eq!(calls.len(), 1, "{what}: the refresh");
        w.respond_http_call(calls[0].id, HttpCallResponse::new(bad.status, bad.body))
            .unwrap();
        assert_eq!(host.counter(&m("jwks_fetch_failed")), 1, "{what}");
        assert_eq!(host.counter(&m("jwks_fetch_ok")), 1, "{what}");
        assert!(
            warned(&w, &why),
            "{what}: no warning with {why:?}: {:?}",
            warnings(&w)
        );
        // The last good keys keep verifying fresh tokens, on this worker ...
        let token = rs256(&host, json!({"sub": "after-the-failure"}));
        let v = with_token(&mut w, "/", &token);
        assert_eq!(
            upstream(&v).get("x-user-id").as_deref(),
            Some("after-the-failure"),
            "{what}"
        );
        // ... and on a worker that starts now: the shared document was not replaced.
        assert_eq!(
            shared_doc(),
            Some(jwks_of(&["rs"])),
            "{what}: the shared document"
        );
        let mut late = worker(&host, &config);
        tick(&mut late);
        assert!(late.pending_http_calls().is_empty(), "{what}: no new fetch");
        let v = with_token(&mut late, "/", &token);
        assert_eq!(
            upstream(&v).get("x-user-id").as_deref(),
            Some("after-the-failure"),
            "{what}"
        );
        assert_eq!(host.counter(&m("denied_jwks_unavailable")), 0, "{what}");
        // The next attempt waits min_refetch_interval_s (30 s); then a good answer is taken.
        host.advance_clock(StdDuration::from_secs(29));
        tick(&mut w);
        assert!(
            w.pending_http_calls().is_empty(),
            "{what}: retried too soon"
        );
        host.advance_clock(StdDuration::from_secs(1));
        tick(&mut w);
        serve_jwks(&mut w, jwks_of(&["rs", "es256"]));
        assert_eq!(host.counter(&m("jwks_fetch_ok")), 2, "{what}");
        let es = keys().es256.sign(claims(&host, json!({}))).unwrap();
        assert!(
            with_token(&mut w, "/", &es)
                .upstream_request_headers
                .is_some(),
            "{what}: the new keys are used"
        );
    }
}

#[test]
fn a_jwks_of_exactly_64_kib_is_accepted() {
    let host = host_without_native();
    host.add_cluster("idp");
    let mut w = worker(&host, &remote_config(30));
    tick(&mut w);
    serve_jwks(&mut w, padded_jwks(&["rs"], MAX_JWKS_BYTES));
    assert_eq!(host.counter(&m("jwks_fetch_ok")), 1);
    let token = rs256(&host, json!({}));
    assert!(
        with_token(&mut w, "/", &token)
            .upstream_request_headers
            .is_some()
    );
}

// ---- #19: findings of the 2026-12 security review ------------------------------------------

/// Instructions the module ran in `on_http_request_headers` for one request.
fn request_fuel(w: &mut Worker, path: &str, token: &str) -> (u64, StreamView) {
    w.clear_history();
    let v = with_token(w, path, token);
    let fuel = w
        .history()
        .iter()
        .filter(|r| r.callback == "proxy_on_request_headers")
        .map(|r| r.fuel)
        .sum();
    (fuel, v)
}

#[test]
fn a_lowercase_method_does_not_skip_a_method_rule() {
    // HTTP/2 `:method: post` reaches the filter (and the upstream) as `post`.
    let config = patched(
        json!({}),
        json!({"match": {"prefix": "/api", "methods": ["POST", "PUT", "DELETE"]}}),
        json!({"rules": [
            {"match": {"prefix": "/api", "methods": ["POST", "PUT", "DELETE"]}, "requires": "idp"},
            {"match": {"prefix": "/"}, "requires": "idp", "allow_missing": true}
        ]}),
    );
    let host = Host::new();
    let mut w = worker(&host, &config);
    for method in ["POST", "post", "PoSt", "delete"] {
        let v = w
            .exchange(
                &[
                    (":method", method),
                    (":path", "/api/x"),
                    (":authority", "a"),
                ],
                None,
                &[(":status", "200")],
                None,
            )
            .unwrap();
        assert_eq!(refused(&v).0, 401, "{method}");
    }
    let v = w
        .exchange(
            &[(":method", "get"), (":path", "/api/x"), (":authority", "a")],
            None,
            &[(":status", "200")],
            None,
        )
        .unwrap();
    assert!(v.upstream_request_headers.is_some(), "GET needs no token");
}

#[test]
fn an_unsigned_token_learns_nothing_about_the_claims() {
    let host = host_without_native();
    let mut w = worker(&host, &inline_config());
    let now = host.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    // RS256 with the right kid, a garbage signature, and claims that are right or wrong.
    let forge = |claims: Value| {
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"rs"}"#),
            b64(&serde_json::to_vec(&claims).unwrap()),
            b64(&[1u8; 256])
        )
    };
    let mut answers = Vec::new();
    for claims in [
        json!({"iss": "https://evil", "aud": "api", "sub": "u", "exp": now + 60}),
        json!({"iss": ISS, "aud": "other", "sub": "u", "exp": now + 60}),
        json!({"iss": ISS, "aud": "api", "sub": "u", "exp": now - 3600}),
        json!({"iss": ISS, "aud": "api", "sub": "u", "exp": now + 60}),
    ] {
        let v = with_token(&mut w, "/", &forge(claims));
        let reply = v.local_response.clone().unwrap();
        answers.push((
            reply.status,
            reply.body,
            reply.headers.get("www-authenticate"),
        ));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(
        refused(&with_token(&mut w, "/", &forge(json!({})))).1,
        "bad_signature"
    );
    // A token that verifies gets the specific answer.
    let (status, reason, _) = refused(&with_token(
        &mut w,
        "/",
        &rs256(&host, json!({"aud": "other"})),
    ));
    assert_eq!((status, reason.as_str()), (403, "audience"));
}

#[test]
fn a_forged_pss_token_costs_no_pure_rust_rsa_check() {
    // The reproducer of #19: `{"alg":"PS512"}`, plausible claims, a 256-byte garbage signature
    // and no kid, against a remote JWKS of 4 RSA keys without `alg` (as Entra publishes them).
    // It cost 85.9M Wasm instructions per request: a PSS check per key, in pure Rust.
    let rsa: Vec<Value> = (0..4)
        .map(|_| {
            let c = RS256KeyPair::generate(2048)
                .unwrap()
                .public_key()
                .to_components();
            json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
        })
        .collect();
    let body = serde_json::to_vec(&json!({"keys": rsa})).unwrap();
    let host = native_host();
    host.add_cluster("idp");
    let now = host.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let forged = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"PS512","typ":"JWT"}"#),
        b64(
            &serde_json::to_vec(&json!({"iss": ISS, "aud": "api", "sub": "u", "exp": now + 600}))
                .unwrap()
        ),
        b64(&[0x5a; 256])
    );
    let run = |config: &str, expected_checks: u64| -> u64 {
        let mut w = worker(&host, config);
        tick(&mut w);
        serve_jwks(&mut w, body.clone());
        tick(&mut w);
        let before = host.counter(&m("verify_fallback"));
        let (fuel, v) = request_fuel(&mut w, "/", &forged);
        assert_eq!(refused(&v).1, "bad_signature");
        assert_eq!(
            host.counter(&m("verify_fallback")) - before,
            expected_checks
        );
        fuel
    };
    let default = run(&remote_config(30), 0);
    // Allowing PS512 explicitly lets keys without alg serve it: one check, not four.
    let explicit: Value = {
        let mut v: Value = serde_json::from_str(&remote_config(30)).unwrap();
        v["providers"]["idp"]["algorithms"] = json!(["RS256", "PS512"]);
        v
    };
    let one = run(&explicit.to_string(), 1);
    eprintln!(
        "fuel: forged PS512, no kid, 4 RSA keys without alg: {default} (PS512 allowed: {one})"
    );
    // Deterministic instruction counts, not time: before the fix 85.9M and 4 checks.
    assert!(default < 1_000_000, "{default}");
    assert!(one < 30_000_000, "{one}");
}

#[test]
fn an_unloadable_shared_jwks_fails_closed_instead_of_recursing() {
    // Another plugin (Istio: no vm_id) or module version left a meta record with version > 0
    // whose JWKS this VM cannot load. `process` used to call itself until the VM trapped.
    let config = remote_config(30);
    let host = host_without_native();
    let hash = format!("{:016x}", fnv1a64(config.as_bytes()));
    let meta_key = jwt_to_header::jwks::meta_key(&hash, "idp");
    let now_ms = host.now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let meta = format!("v1 7 {now_ms} 0 {now_ms} 0");
    assert_eq!(
        host.set_shared_data("", meta_key.as_bytes(), meta.as_bytes(), 0),
        Status::Ok
    );
    assert_eq!(
        host.set_shared_data(
            "",
            shared_jwks_key(&config).as_bytes(),
            br#"{"keys":[]}"#,
            0
        ),
        Status::Ok
    );
    let mut w = worker(&host, &config);
    let token = rs256(&host, json!({}));
    for _ in 0..3 {
        let v = with_token(&mut w, "/", &token);
        let (status, reason, _) = refused(&v);
        assert_eq!((status, reason.as_str()), (503, "jwks_unavailable"));
    }
    let why = warnings(&w);
    let loads: Vec<_> = why
        .iter()
        .filter(|l| l.contains("cannot load the shared JWKS version 7"))
        .collect();
    assert_eq!(loads.len(), 1, "warned once per version: {why:?}");
}

#[test]
fn underscore_spellings_of_claim_headers_are_stripped() {
    let host = native_host();
    let mut w = worker(&host, &inline_config());
    let token = rs256(&host, json!({}));
    let auth = format!("Bearer {token}");
    let v = get(
        &mut w,
        "/",
        &[
            ("authorization", &auth),
            ("x_user_id", "admin"),
            ("x_user-role", "root"),
            ("x-jwt_payload", "e30"),
            ("x_unrelated", "kept"),
        ],
    );
    let h = upstream(&v);
    assert_eq!(h.get("x-user-id").as_deref(), Some("user-1"));
    for spoof in ["x_user_id", "x_user-role", "x-jwt_payload"] {
        assert!(h.get(spoof).is_none(), "{spoof} reached the upstream");
    }
    assert_eq!(h.get("x_unrelated").as_deref(), Some("kept"));
}

#[test]
fn risky_configurations_are_loaded_with_a_warning() {
    let host = Host::new();
    let config = patched(
        json!({"audiences": null}),
        json!({"match": {"prefix": "/api"}}),
        json!({}),
    );
    let w = worker(&host, &config);
    let why = warnings(&w);
    assert!(
        why.iter()
            .any(|l| l.contains("rules: no rule matches every request")),
        "{why:?}"
    );
    assert!(
        why.iter()
            .any(|l| l.contains("providers.idp.audiences: empty")),
        "{why:?}"
    );
    let w = worker(&host, &inline_config());
    assert!(warnings(&w).is_empty(), "{:?}", warnings(&w));
}
