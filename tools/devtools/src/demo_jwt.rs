//! The demo identity provider of `envoy-configs/gateway.yaml`, `sidecar.yaml` and the Istio
//! examples: an ES256 key pair whose public half those configs carry as an inline JWKS (kid
//! `gatewasm-demo`), so `just demo`, the tests and the benchmark can mint tokens the gateway
//! accepts without a real IdP.
//!
//! **DEMO KEY — public, in this repository. Never trust it anywhere**: replace the inline JWKS
//! with your IdP's (`remote_jwks`) before deploying.

use anyhow::{Context, Result};
use jwt_simple::prelude::*;

/// The private half (PKCS#8 PEM) of the demo key.
pub const DEMO_PRIVATE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6IofCTVgNxebbvWA
pfIsWS3VSZVPnP0xsCoM2cPUEZ+hRANCAAQ+FL8YexMFKDeD/2IdpCExhCeEX2XB
9yLJyPrcKK9soHvfWIA4Ed6uL4/8KL3XQE7T9m/0NCA/+059rIFPO3P4
-----END PRIVATE KEY-----
";

/// The public half as the JWKS the configs carry inline.
pub const DEMO_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"gatewasm-demo","x":"PhS_GHsTBSg3g_9iHaQhMYQnhF9lwfciycj63CivbKA","y":"e99YgDgR3q4vj_wovddATtP2b_Q0ID_7Tn2sgU87c_g"}]}"#;

pub const DEMO_ISSUER: &str = "https://issuer.gatewasm.example";
pub const DEMO_AUDIENCE: &str = "gatewasm-demo";
pub const DEMO_KID: &str = "gatewasm-demo";

/// Who a demo token speaks for.
#[derive(Clone, Debug)]
pub struct DemoClaims {
    pub sub: String,
    pub role: String,
    /// The `tenant` claim (tenant-routing reads it through `x-jwt-tenant`); none if empty.
    pub tenant: String,
    pub ttl: std::time::Duration,
    /// A `jti`, so that every token is distinct (e.g. "fresh token" benchmarks).
    pub jti: Option<String>,
    /// `iat` and `nbf` (Unix seconds) instead of now, e.g. the harness's clock start
    /// (2026-01-01T00:00:00Z = 1767225600) for tokens both hosts of a scenario accept.
    pub issued_at: Option<u64>,
}

impl Default for DemoClaims {
    fn default() -> Self {
        Self {
            sub: "alice".into(),
            role: "admin".into(),
            tenant: "acme".into(),
            ttl: std::time::Duration::from_secs(3600),
            jti: None,
            issued_at: None,
        }
    }
}

/// The demo key pair.
pub fn demo_key() -> Result<ES256KeyPair> {
    Ok(ES256KeyPair::from_pem(DEMO_PRIVATE_KEY_PEM)
        .context("the demo key does not parse")?
        .with_key_id(DEMO_KID))
}

/// A token signed with the demo key: iss, aud, sub, role, tenant, iat/exp (ttl).
pub fn mint(claims: &DemoClaims) -> Result<String> {
    mint_with(&demo_key()?, claims)
}

/// [`mint`] with an already loaded key (fast for many tokens).
pub fn mint_with(key: &ES256KeyPair, claims: &DemoClaims) -> Result<String> {
    let mut custom = serde_json::Map::new();
    custom.insert("role".into(), claims.role.clone().into());
    if !claims.tenant.is_empty() {
        custom.insert("tenant".into(), claims.tenant.clone().into());
    }
    let mut c = Claims::with_custom_claims(
        serde_json::Value::Object(custom),
        jwt_simple::prelude::Duration::from_secs(claims.ttl.as_secs()),
    )
    .with_issuer(DEMO_ISSUER)
    .with_audience(DEMO_AUDIENCE)
    .with_subject(&claims.sub);
    if let Some(jti) = &claims.jti {
        c = c.with_jwt_id(jti);
    }
    if let Some(iat) = claims.issued_at {
        c.issued_at = Some(UnixTimeStamp::from_secs(iat));
        c.invalid_before = Some(UnixTimeStamp::from_secs(iat));
        c.expires_at = Some(UnixTimeStamp::from_secs(iat + claims.ttl.as_secs()));
    }
    key.sign(c)
        .map_err(|e| anyhow::anyhow!("signing the demo token: {e}"))
}

/// Base64url without padding (RFC 7515 §2), for tokens and JWKs the tests and the bench build
/// by hand (forged, unsigned, or signed by a key of their own).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_is_base64url_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_demo_jwks_is_the_public_half_of_the_demo_key() -> Result<()> {
        let token = mint(&DemoClaims::default())?;
        let jwks: serde_json::Value = serde_json::from_str(DEMO_JWKS)?;
        let jwk = &jwks["keys"][0];
        let x =
            ct_codecs::Base64UrlSafeNoPadding::decode_to_vec(jwk["x"].as_str().context("x")?, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let y =
            ct_codecs::Base64UrlSafeNoPadding::decode_to_vec(jwk["y"].as_str().context("y")?, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        let public = ES256PublicKey::from_bytes(&point).map_err(|e| anyhow::anyhow!("{e}"))?;
        let verified = public
            .verify_token::<serde_json::Value>(&token, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert_eq!(verified.custom["tenant"], "acme");
        Ok(())
    }
}
