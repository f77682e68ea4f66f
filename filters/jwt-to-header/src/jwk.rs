//! JSON Web Keys and algorithms: a JWKS document → a [`KeySet`] of parsed public keys (done
//! once per configuration or JWKS fetch, never per request), and the binding of each JWT `alg`
//! to the key type it may be used with.
//!
//! Binding rules (RFC 7518 §3, RFC 8037): HS* only with `kty: oct`; RS* and PS* only with RSA
//! keys (≥ 2048-bit modulus, enforced by jwt-simple); ES256 only with P-256, ES384 only with
//! P-384; EdDSA only with OKP Ed25519. A JWK `alg`, when present, must equal the token's `alg`;
//! a JWK whose `use` is present and not `sig` is never used. `alg: none` and any other algorithm
//! name are not algorithms here at all ([`Alg::parse`] returns `None`).

use jwt_simple::prelude::{ES256PublicKey, ES384PublicKey, Ed25519PublicKey, RS256PublicKey};
use serde::Deserialize;

/// The JWS algorithms this filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Oct,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm named `name` (case-sensitive, as RFC 7518 registers them). `none`,
    /// `ES512`, `ES256K` and anything else: `None`.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn key_kind(self) -> KeyKind {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyKind::Oct,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyKind::Rsa
            }
            Alg::ES256 => KeyKind::P256,
            Alg::ES384 => KeyKind::P384,
            Alg::EdDSA => KeyKind::Ed25519,
        }
    }

    /// The bit of this algorithm in an [`AlgSet`].
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of algorithms (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u16);

impl AlgSet {
    pub const EMPTY: AlgSet = AlgSet(0);

    pub fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }

    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every algorithm that can be used with a key of `kind`.
    pub fn for_kind(kind: KeyKind) -> AlgSet {
        let mut set = AlgSet::EMPTY;
        for alg in Alg::ALL {
            if alg.key_kind() == kind {
                set.insert(alg);
            }
        }
        set
    }

    pub fn union(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 | other.0)
    }

    pub fn intersection(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }

    /// What a key that declares no `alg` may verify when the provider lists no `algorithms`:
    /// everything but RSA-PSS. RSA keys are published for RS256 far more often than for PS*,
    /// and PS* has no native path in Envoy (its `verify_signature` sets no PSS padding), so a
    /// forged `PS512` token against such keys would cost a pure-Rust RSA verification per key
    /// (~21M Wasm instructions each). PS* needs a key that declares it, or the provider's
    /// `algorithms` naming it.
    pub fn undeclared_default() -> AlgSet {
        let mut set = AlgSet::EMPTY;
        for alg in Alg::ALL {
            if !matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512) {
                set.insert(alg);
            }
        }
        set
    }

    /// Every asymmetric algorithm (the default for keys fetched from a remote JWKS).
    pub fn asymmetric() -> AlgSet {
        let mut set = AlgSet::EMPTY;
        for alg in Alg::ALL {
            if alg.key_kind() != KeyKind::Oct {
                set.insert(alg);
            }
        }
        set
    }
}

/// A parsed public (or, for HS*, shared) key.
pub enum KeyMaterial {
    /// HMAC secret.
    Oct(Vec<u8>),
    /// RSA: SubjectPublicKeyInfo DER (for the host's `verify_signature`) and the jwt-simple key.
    /// Other RS*/PS* key objects are built from `der` when needed.
    Rsa {
        der: Vec<u8>,
        key: Box<RS256PublicKey>,
    },
    P256 {
        der: Vec<u8>,
        key: Box<ES256PublicKey>,
    },
    P384 {
        der: Vec<u8>,
        key: Box<ES384PublicKey>,
    },
    Ed25519(Box<Ed25519PublicKey>),
}

impl KeyMaterial {
    pub fn kind(&self) -> KeyKind {
        match self {
            KeyMaterial::Oct(_) => KeyKind::Oct,
            KeyMaterial::Rsa { .. } => KeyKind::Rsa,
            KeyMaterial::P256 { .. } => KeyKind::P256,
            KeyMaterial::P384 { .. } => KeyKind::P384,
            KeyMaterial::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    /// SubjectPublicKeyInfo DER, for keys the host can verify natively.
    pub fn der(&self) -> Option<&[u8]> {
        match self {
            KeyMaterial::Rsa { der, .. }
            | KeyMaterial::P256 { der, .. }
            | KeyMaterial::P384 { der, .. } => Some(der),
            KeyMaterial::Oct(_) | KeyMaterial::Ed25519(_) => None,
        }
    }
}

impl std::fmt::Debug for KeyMaterial {
    // Never print key bytes (HMAC secrets in particular).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind())
    }
}

/// One usable key.
#[derive(Debug)]
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, if it had one: the only algorithm this key may verify.
    pub alg: Option<Alg>,
    pub material: KeyMaterial,
}

impl Key {
    /// Whether this key can verify `alg` at all: the key type fits the algorithm, and a
    /// declared JWK `alg` is that algorithm (the binding that stops alg-confusion attacks).
    pub fn binds(&self, alg: Alg) -> bool {
        self.material.kind() == alg.key_kind() && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether this key may verify a token signed with `alg`: it [binds](Self::binds) the
    /// algorithm and either declares it or, declaring none, `undeclared` allows it.
    pub fn accepts(&self, alg: Alg, undeclared: AlgSet) -> bool {
        self.binds(alg) && (self.alg.is_some() || undeclared.contains(alg))
    }
}

/// The keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// The keys that may verify a token with this `alg` and `kid` (see [`Key::accepts`]):
    /// with a kid, only keys with that kid; without, every key of the right type — those that
    /// declare `alg` first, so a capped number of attempts tries the likeliest keys.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
        undeclared: AlgSet,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        let fits = move |k: &&Key| {
            k.accepts(alg, undeclared) && (kid.is_none() || k.kid.as_deref() == kid)
        };
        let declared = self.keys.iter().filter(|k| k.alg.is_some()).filter(fits);
        let undeclared_keys = self.keys.iter().filter(|k| k.alg.is_none()).filter(fits);
        declared.chain(undeclared_keys)
    }

    /// Whether any key has this kid (whatever its type).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Every algorithm some key of this set can verify, keys without `alg` being limited to
    /// `undeclared`.
    pub fn compatible_algs(&self, undeclared: AlgSet) -> AlgSet {
        let mut set = AlgSet::EMPTY;
        for key in &self.keys {
            match key.alg {
                Some(alg) => set.insert(alg),
                None => {
                    set = set.union(AlgSet::for_kind(key.material.kind()).intersection(undeclared))
                }
            }
        }
        set
    }
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// `B64URL[c]`: the 6-bit value of base64url character `c`, or 0xff.
static B64URL: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Base64url without padding (RFC 7515 §2); trailing `=` padding is tolerated. Strict
/// otherwise: any other character, an impossible length, or non-zero bits after the last
/// byte is `None`. Table-driven: a token is public, so constant time buys nothing here, and
/// this runs over every byte of every fresh token.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.trim_end_matches('=').as_bytes();
    if b.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3 + 2);
    let mut chunks = b.chunks_exact(4);
    for c in &mut chunks {
        let mut n: u32 = 0;
        for &ch in c {
            let v = B64URL[usize::from(ch)];
            if v == 0xff {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut n: u32 = 0;
        for &ch in rest {
            let v = B64URL[usize::from(ch)];
            if v == 0xff {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        // 2 chars = 12 bits → 1 byte (4 spare bits); 3 chars = 18 bits → 2 bytes (2 spare).
        let spare = if rest.len() == 2 { 4 } else { 2 };
        if n & ((1 << spare) - 1) != 0 {
            return None;
        }
        n >>= spare;
        if rest.len() == 2 {
            out.push(n as u8);
        } else {
            out.extend_from_slice(&[(n >> 8) as u8, n as u8]);
        }
    }
    Some(out)
}

fn field<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    v.as_deref().ok_or_else(|| format!("missing `{name}`"))
}

fn b64_field(v: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    b64url_decode(field(v, name)?).ok_or_else(|| format!("`{name}` is not base64url"))
}

/// Parse one JWK. `Ok(None)`: a well-formed key this filter does not use (`use` ≠ `sig`,
/// an unsupported `kty`/`crv`/`alg`), skipped so one exotic key does not break the set.
fn parse_key(value: &serde_json::Value) -> Result<Option<Key>, String> {
    let doc: JwkDoc = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if doc.use_.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    // RFC 7517 §4.3: a key whose `key_ops` does not include `verify` is not for verifying.
    if doc
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return Ok(None);
    }
    let alg = match doc.alg.as_deref() {
        None => None,
        Some(name) => match Alg::parse(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let material = match doc.kty.as_str() {
        "oct" => {
            let k = b64_field(&doc.k, "k")?;
            if k.len() < 32 {
                return Err("`k` is shorter than 256 bits".into());
            }
            KeyMaterial::Oct(k)
        }
        "RSA" => {
            let n = b64_field(&doc.n, "n")?;
            let e = b64_field(&doc.e, "e")?;
            let key = RS256PublicKey::from_components(&n, &e)
                .map_err(|e| format!("invalid RSA key: {e}"))?;
            let der = key.to_der().map_err(|e| format!("invalid RSA key: {e}"))?;
            KeyMaterial::Rsa {
                der,
                key: Box::new(key),
            }
        }
        "EC" => {
            let x = b64_field(&doc.x, "x")?;
            let y = b64_field(&doc.y, "y")?;
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            match field(&doc.crv, "crv")? {
                "P-256" if x.len() == 32 && y.len() == 32 => {
                    let key = ES256PublicKey::from_bytes(&point)
                        .map_err(|e| format!("invalid P-256 key: {e}"))?;
                    let der = key
                        .to_der()
                        .map_err(|e| format!("invalid P-256 key: {e}"))?;
                    KeyMaterial::P256 {
                        der,
                        key: Box::new(key),
                    }
                }
                "P-384" if x.len() == 48 && y.len() == 48 => {
                    let key = ES384PublicKey::from_bytes(&point)
                        .map_err(|e| format!("invalid P-384 key: {e}"))?;
                    let der = key
                        .to_der()
                        .map_err(|e| format!("invalid P-384 key: {e}"))?;
                    KeyMaterial::P384 {
                        der,
                        key: Box::new(key),
                    }
                }
                "P-256" | "P-384" => return Err("`x`/`y` have the wrong length".into()),
                _ => return Ok(None),
            }
        }
        "OKP" => match field(&doc.crv, "crv")? {
            "Ed25519" => {
                let x = b64_field(&doc.x, "x")?;
                let key = Ed25519PublicKey::from_bytes(&x)
                    .map_err(|e| format!("invalid Ed25519 key: {e}"))?;
                KeyMaterial::Ed25519(Box::new(key))
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let key = Key {
        kid: doc.kid,
        alg,
        material,
    };
    if let Some(alg) = alg
        && alg.key_kind() != key.material.kind()
    {
        return Err(format!(
            "`alg` {} does not fit a {:?} key",
            alg.name(),
            key.material.kind()
        ));
    }
    Ok(Some(key))
}

/// Parse a JWKS document (`{"keys":[...]}`). A malformed key is an error naming its index
/// (`keys[2]: missing `n``); keys of unsupported types are skipped. An empty result is an error.
pub fn parse_jwks(value: &serde_json::Value) -> Result<KeySet, String> {
    let doc: JwksDoc = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    for (i, jwk) in doc.keys.iter().enumerate() {
        if let Some(key) = parse_key(jwk).map_err(|e| format!("keys[{i}]: {e}"))? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    Ok(KeySet { keys })
}

/// Parse a JWKS from bytes (a fetched document, or an inline string).
pub fn parse_jwks_bytes(bytes: &[u8]) -> Result<KeySet, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    parse_jwks(&value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use jwt_simple::prelude::*;

    fn rsa_jwk(kid: &str, alg: Option<&str>) -> serde_json::Value {
        let kp = RS256KeyPair::generate(2048).unwrap();
        let c = kp.public_key().to_components();
        let enc = |b: &[u8]| {
            use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
            Base64UrlSafeNoPadding::encode_to_string(b).unwrap()
        };
        let mut v = serde_json::json!({"kty":"RSA","kid":kid,"n":enc(&c.n),"e":enc(&c.e)});
        if let Some(alg) = alg {
            v["alg"] = alg.into();
        }
        v
    }

    #[test]
    fn b64url_agrees_with_ct_codecs() {
        use ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
        let mut x: u32 = 1;
        for len in 0..200usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let enc = Base64UrlSafeNoPadding::encode_to_string(&data).unwrap();
            assert_eq!(b64url_decode(&enc).as_deref(), Some(&data[..]), "{len}");
        }
        for bad in ["A", "AAAAA", "AB+/", "AB==x", "A B", "AB.C", "é"] {
            assert_eq!(b64url_decode(bad), None, "{bad}");
            let _ = Base64UrlSafeNoPadding::decode_to_vec(bad, None);
        }
        // Non-canonical trailing bits are refused.
        assert_eq!(b64url_decode("AB"), None);
        assert_eq!(b64url_decode("AA"), Some(vec![0]));
        assert_eq!(b64url_decode("AAB"), None);
        assert_eq!(b64url_decode("AAE"), Some(vec![0, 1]));
        assert_eq!(b64url_decode("AA=="), Some(vec![0]));
    }

    #[test]
    fn alg_names_round_trip_and_none_is_not_an_alg() {
        for alg in Alg::ALL {
            assert_eq!(Alg::parse(alg.name()), Some(alg));
        }
        for bad in [
            "none", "None", "NONE", "", "ES512", "ES256K", "hs256", "RS1",
        ] {
            assert_eq!(Alg::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn alg_binding_to_key_type() {
        let set = parse_jwks(&serde_json::json!({"keys":[
            rsa_jwk("r1", None),
            {"kty":"oct","kid":"h1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        ]}))
        .unwrap();
        let all = AlgSet::asymmetric().union(AlgSet::for_kind(KeyKind::Oct));
        let kinds = |alg, kid| set.candidates(alg, kid, all).count();
        assert_eq!(kinds(Alg::RS256, None), 1);
        assert_eq!(kinds(Alg::PS512, Some("r1")), 1);
        // HS256 must never select the RSA public key (the classic confusion attack).
        assert_eq!(kinds(Alg::HS256, Some("r1")), 0);
        assert_eq!(kinds(Alg::HS256, None), 1);
        assert_eq!(kinds(Alg::RS256, Some("h1")), 0);
        assert_eq!(kinds(Alg::ES256, None), 0);
        assert_eq!(kinds(Alg::EdDSA, None), 0);
        assert!(set.compatible_algs(all).contains(Alg::PS384));
        assert!(set.compatible_algs(all).contains(Alg::HS512));
        assert!(!set.compatible_algs(all).contains(Alg::ES256));
    }

    #[test]
    fn keys_without_alg_serve_pss_only_when_allowed() {
        let set =
            parse_jwks(&serde_json::json!({"keys":[rsa_jwk("r1", None), rsa_jwk("r2", None)]}))
                .unwrap();
        let default = AlgSet::undeclared_default();
        assert_eq!(set.candidates(Alg::RS256, None, default).count(), 2);
        assert_eq!(set.candidates(Alg::PS512, None, default).count(), 0);
        assert!(!set.compatible_algs(default).contains(Alg::PS256));
        let mut explicit = AlgSet::EMPTY;
        explicit.insert(Alg::PS512);
        assert_eq!(set.candidates(Alg::PS512, None, explicit).count(), 2);
        // A key that declares PS256 serves PS256 whatever the provider's default.
        let declared =
            parse_jwks(&serde_json::json!({"keys":[rsa_jwk("p", Some("PS256"))]})).unwrap();
        assert_eq!(declared.candidates(Alg::PS256, None, default).count(), 1);
    }

    #[test]
    fn declared_keys_are_tried_first() {
        let set = parse_jwks(&serde_json::json!({"keys":[
            rsa_jwk("plain", None), rsa_jwk("declared", Some("RS256"))]}))
        .unwrap();
        let order: Vec<_> = set
            .candidates(Alg::RS256, None, AlgSet::undeclared_default())
            .map(|k| k.kid.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(order, ["declared", "plain"]);
    }

    #[test]
    fn keys_whose_key_ops_lack_verify_are_skipped() {
        let mut sign_only = rsa_jwk("s", None);
        sign_only["key_ops"] = serde_json::json!(["sign"]);
        let mut verify = rsa_jwk("v", None);
        verify["key_ops"] = serde_json::json!(["sign", "verify"]);
        let set = parse_jwks(&serde_json::json!({"keys":[sign_only, verify]})).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("v"));
    }

    #[test]
    fn jwk_alg_must_equal_token_alg() {
        let set = parse_jwks(&serde_json::json!({"keys":[rsa_jwk("r1", Some("RS256"))]})).unwrap();
        let all = AlgSet::asymmetric();
        assert_eq!(set.candidates(Alg::RS256, None, all).count(), 1);
        assert_eq!(set.candidates(Alg::RS384, None, all).count(), 0);
        assert_eq!(set.candidates(Alg::PS256, None, all).count(), 0);
        assert!(!set.compatible_algs(all).contains(Alg::RS384));
    }

    #[test]
    fn ec_and_okp_keys_bind_to_their_curve() {
        let p256 = ES256KeyPair::generate().public_key().to_jwk();
        let p384 = ES384KeyPair::generate().public_key().to_jwk();
        let ed = Ed25519KeyPair::generate().public_key().to_jwk();
        let doc = format!(r#"{{"keys":[{p256},{p384},{ed}]}}"#);
        let set = parse_jwks_bytes(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 3);
        let d = AlgSet::undeclared_default();
        assert_eq!(set.candidates(Alg::ES256, None, d).count(), 1);
        assert_eq!(set.candidates(Alg::ES384, None, d).count(), 1);
        assert_eq!(set.candidates(Alg::EdDSA, None, d).count(), 1);
        assert!(matches!(set.keys[0].material, KeyMaterial::P256 { .. }));
        assert!(set.keys[0].material.der().is_some());
        assert!(set.keys[2].material.der().is_none());
    }

    #[test]
    fn kid_selects_only_that_key() {
        let set = parse_jwks(&serde_json::json!({"keys":[rsa_jwk("a", None), rsa_jwk("b", None)]}))
            .unwrap();
        let d = AlgSet::undeclared_default();
        assert_eq!(set.candidates(Alg::RS256, None, d).count(), 2);
        let one: Vec<_> = set.candidates(Alg::RS256, Some("b"), d).collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].kid.as_deref(), Some("b"));
        assert_eq!(set.candidates(Alg::RS256, Some("c"), d).count(), 0);
        assert!(set.has_kid("a") && !set.has_kid("c"));
    }

    #[test]
    fn bad_keys_are_named_and_unusable_keys_skipped() {
        let err = parse_jwks(&serde_json::json!({"keys":[{"kty":"RSA","n":"AQAB"}]})).unwrap_err();
        assert!(err.starts_with("keys[0]: missing `e`"), "{err}");
        let err =
            parse_jwks(&serde_json::json!({"keys":[{"kty":"oct","k":"c2hvcnQ"}]})).unwrap_err();
        assert!(err.contains("shorter"), "{err}");
        let mut weak = rsa_jwk("w", None);
        weak["n"] = "AQAB".into();
        assert!(parse_jwks(&serde_json::json!({"keys":[weak]})).is_err());
        let mut mismatched = rsa_jwk("m", None);
        mismatched["alg"] = "ES256".into();
        let err = parse_jwks(&serde_json::json!({"keys":[mismatched]})).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        // Encryption keys, unknown kty and unknown algs are skipped; nothing left is an error.
        let mut enc = rsa_jwk("e", None);
        enc["use"] = "enc".into();
        let err = parse_jwks(&serde_json::json!({"keys":[enc, {"kty":"XYZ"},
            {"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA","alg":"none"}]}))
        .unwrap_err();
        assert!(err.contains("no usable"), "{err}");
        assert!(parse_jwks_bytes(b"not json").is_err());
        assert!(parse_jwks_bytes(b"{}").is_err());
    }
}
