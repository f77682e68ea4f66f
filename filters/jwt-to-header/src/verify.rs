//! Signature verification: the host's native `verify_signature` foreign function where the
//! algorithm can be expressed with it, jwt-simple (pure Rust) otherwise.
//!
//! Envoy's `verify_signature` (`source/extensions/common/wasm/foreign.cc`) takes a protobuf
//! `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2 (DER,
//! SubjectPublicKeyInfo); bytes signature = 3; bytes text = 4; string public_key_pem = 5 }`
//! and answers `VerifySignatureResult { bool result = 1; string error = 2 }`. It runs
//! BoringSSL's `EVP_DigestVerify` with the key's default padding, so:
//! - RS256/RS384/RS512 (RSASSA-PKCS1-v1_5 with SHA-2): native.
//! - ES256/ES384 (ECDSA P-256/P-384): native, after converting the JOSE signature (`r‖s`,
//!   fixed width) to the DER `ECDSA-Sig-Value` BoringSSL expects.
//! - PS* (RSASSA-PSS needs the padding set on the context, which the function does not do),
//!   EdDSA (Ed25519 takes no digest; the function always sets one) and HS* (no public key):
//!   jwt-simple.
//!
//! When the function is missing (`NotFound`: other hosts, older Envoy) the filter remembers it
//! and uses jwt-simple for every algorithm.

use jwt_simple::prelude::*;

use crate::jwk::{Alg, Key, KeyMaterial};

/// The hash name for `verify_signature`, for algorithms the host can verify natively.
pub fn native_hash(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 => Some("sha512"),
        _ => None,
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn push_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encode `VerifySignatureArguments` (fields in number order, as protobuf serialisers do).
pub fn encode_args(hash: &str, der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + hash.len() + der.len() + signature.len() + text.len());
    push_bytes_field(&mut out, 1, hash.as_bytes());
    push_bytes_field(&mut out, 2, der);
    push_bytes_field(&mut out, 3, signature);
    push_bytes_field(&mut out, 4, text);
    out
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One field of a protobuf message: its number and its value (a varint's value, or a
/// length-delimited field's bytes; fixed-width fields are skipped as `Fixed`).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The next field at `pos` (advanced past it); `None` when the message is malformed (a
/// truncated varint or value, field number 0, a group wire type).
fn read_field<'a>(b: &'a [u8], pos: &mut usize) -> Option<(u64, Field<'a>)> {
    let tag = read_varint(b, pos)?;
    let number = tag >> 3;
    if number == 0 {
        return None;
    }
    let skip = |pos: &mut usize, n: usize| -> Option<()> {
        *pos = pos.checked_add(n).filter(|&p| p <= b.len())?;
        Some(())
    };
    let field = match tag & 7 {
        0 => Field::Varint(read_varint(b, pos)?),
        1 => {
            skip(pos, 8)?;
            Field::Fixed
        }
        5 => {
            skip(pos, 4)?;
            Field::Fixed
        }
        2 => {
            let len = usize::try_from(read_varint(b, pos)?).ok()?;
            let start = *pos;
            skip(pos, len)?;
            Field::Bytes(b.get(start..*pos)?)
        }
        _ => return None,
    };
    Some((number, field))
}

/// Decode `VerifySignatureResult.result` (field 1, varint). Unknown fields are skipped; a
/// malformed message is `None` (treated as "not verified" by the caller).
pub fn decode_result(b: &[u8]) -> Option<bool> {
    let mut pos = 0;
    let mut result = false;
    while pos < b.len() {
        if let (1, Field::Varint(v)) = read_field(b, &mut pos)? {
            result = v != 0;
        }
    }
    Some(result)
}

/// `VerifySignatureArguments` as a host implementing `verify_signature` receives it (the
/// Envoy dynamic module does, natively): the fields [`encode_args`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyArgs<'a> {
    /// `hash_function`, e.g. "sha256".
    pub hash: &'a str,
    /// `public_key`: SubjectPublicKeyInfo DER.
    pub public_key: &'a [u8],
    pub signature: &'a [u8],
    pub text: &'a [u8],
    /// `public_key_pem` (Envoy takes a PEM key instead of DER; [`encode_args`] never sends
    /// one): decoded so a host can refuse it rather than verify against an empty DER key.
    pub public_key_pem: &'a [u8],
}

/// Decode `VerifySignatureArguments` as protobuf parsers do: the last occurrence of a field
/// wins, unknown fields are skipped. `None` when the message is malformed or `hash_function`
/// is not UTF-8 (Envoy refuses such arguments with BadArgument).
pub fn decode_args(b: &[u8]) -> Option<VerifyArgs<'_>> {
    let mut args = VerifyArgs::default();
    let mut pos = 0;
    while pos < b.len() {
        match read_field(b, &mut pos)? {
            (1, Field::Bytes(v)) => args.hash = std::str::from_utf8(v).ok()?,
            (2, Field::Bytes(v)) => args.public_key = v,
            (3, Field::Bytes(v)) => args.signature = v,
            (4, Field::Bytes(v)) => args.text = v,
            (5, Field::Bytes(v)) => args.public_key_pem = v,
            // A known field with another wire type is malformed.
            (1..=5, _) => return None,
            _ => {}
        }
    }
    Some(args)
}

/// Encode `VerifySignatureResult { result, error }` as proto3 does (`false` and an empty
/// error left out): what a host implementing `verify_signature` answers.
pub fn encode_result(result: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + error.len());
    if result {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        push_bytes_field(&mut out, 2, error.as_bytes());
    }
    out
}

fn push_der_integer(out: &mut Vec<u8>, mut n: &[u8]) {
    while n.len() > 1 && n[0] == 0 {
        n = &n[1..];
    }
    let pad = n.first().is_some_and(|&b| b & 0x80 != 0);
    out.push(0x02);
    out.push((n.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(n);
}

/// JOSE ECDSA signature (`r‖s`, each `width` bytes) → DER `SEQUENCE { INTEGER r, INTEGER s }`.
/// `None` when the length is wrong (then the signature is simply invalid).
pub fn jose_to_der(sig: &[u8], width: usize) -> Option<Vec<u8>> {
    if sig.len() != 2 * width || width > 66 {
        return None;
    }
    let (r, s) = sig.split_at(width);
    let mut body = Vec::with_capacity(2 * width + 6);
    push_der_integer(&mut body, r);
    push_der_integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x30);
    if body.len() < 0x80 {
        out.push(body.len() as u8);
    } else {
        out.push(0x81);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(&body);
    Some(out)
}

/// What the host answered for a native verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    Valid,
    Invalid,
    /// The host has no such function (or refused the arguments): use jwt-simple.
    Unavailable,
}

/// The host's `verify_signature`, injected so the logic is testable natively.
pub trait NativeVerifier {
    /// `args`: an encoded `VerifySignatureArguments`.
    fn verify(&mut self, args: &[u8]) -> Native;
    /// Whether `verify` may still answer (false once the host said it has no such function):
    /// checks that will run in pure Rust are budgeted more tightly.
    fn available(&self) -> bool;
}

/// No native crypto: always jwt-simple.
pub struct NoNative;

impl NativeVerifier for NoNative {
    fn verify(&mut self, _args: &[u8]) -> Native {
        Native::Unavailable
    }

    fn available(&self) -> bool {
        false
    }
}

/// Which implementation checked a signature (counted in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Native,
    Fallback,
}

fn options(token_len: usize) -> VerificationOptions {
    // Claims are checked by crate::claims, with the host clock; make jwt-simple's own time
    // checks pass for any token (`now - tolerance` = 0 ≤ exp; future iat/nbf accepted), and
    // keep it off the WASI clock.
    VerificationOptions {
        accept_future: true,
        artificial_time: Some(UnixTimeStamp::from_secs(1000)),
        time_tolerance: Some(Duration::from_secs(1000)),
        max_token_length: Some(token_len.max(1)),
        max_header_length: Some(token_len.max(1)),
        ..Default::default()
    }
}

fn simple(alg: Alg, material: &KeyMaterial, token: &str) -> bool {
    let o = Some(options(token.len()));
    type C = NoCustomClaims;
    let r = match (alg, material) {
        (Alg::HS256, KeyMaterial::Oct(k)) => HS256Key::from_bytes(k)
            .verify_token::<C>(token, o)
            .map(drop),
        (Alg::HS384, KeyMaterial::Oct(k)) => HS384Key::from_bytes(k)
            .verify_token::<C>(token, o)
            .map(drop),
        (Alg::HS512, KeyMaterial::Oct(k)) => HS512Key::from_bytes(k)
            .verify_token::<C>(token, o)
            .map(drop),
        (Alg::RS256, KeyMaterial::Rsa { key, .. }) => key.verify_token::<C>(token, o).map(drop),
        (Alg::RS384, KeyMaterial::Rsa { der, .. }) => RS384PublicKey::from_der(der)
            .and_then(|k| k.verify_token::<C>(token, o))
            .map(drop),
        (Alg::RS512, KeyMaterial::Rsa { der, .. }) => RS512PublicKey::from_der(der)
            .and_then(|k| k.verify_token::<C>(token, o))
            .map(drop),
        (Alg::PS256, KeyMaterial::Rsa { der, .. }) => PS256PublicKey::from_der(der)
            .and_then(|k| k.verify_token::<C>(token, o))
            .map(drop),
        (Alg::PS384, KeyMaterial::Rsa { der, .. }) => PS384PublicKey::from_der(der)
            .and_then(|k| k.verify_token::<C>(token, o))
            .map(drop),
        (Alg::PS512, KeyMaterial::Rsa { der, .. }) => PS512PublicKey::from_der(der)
            .and_then(|k| k.verify_token::<C>(token, o))
            .map(drop),
        (Alg::ES256, KeyMaterial::P256 { key, .. }) => key.verify_token::<C>(token, o).map(drop),
        (Alg::ES384, KeyMaterial::P384 { key, .. }) => key.verify_token::<C>(token, o).map(drop),
        (Alg::EdDSA, KeyMaterial::Ed25519(key)) => key.verify_token::<C>(token, o).map(drop),
        // Algorithm and key type do not match: never (KeySet::candidates already filters).
        _ => return false,
    };
    r.is_ok()
}

/// Verify `token` (whose parts are `signing_input` and `signature`) with `key` under `alg`.
/// `native` is tried first for RS*/ES*; jwt-simple otherwise or when it is unavailable.
pub fn verify_with(
    native: &mut dyn NativeVerifier,
    alg: Alg,
    key: &Key,
    token: &str,
    signing_input: &str,
    signature: &[u8],
) -> (bool, Path) {
    if !key.binds(alg) {
        return (false, Path::Fallback);
    }
    if let (Some(hash), Some(der)) = (native_hash(alg), key.material.der()) {
        let sig_der;
        let sig = match alg {
            Alg::ES256 | Alg::ES384 => {
                let width = if alg == Alg::ES256 { 32 } else { 48 };
                match jose_to_der(signature, width) {
                    Some(d) => {
                        sig_der = d;
                        &sig_der[..]
                    }
                    None => return (false, Path::Native),
                }
            }
            _ => signature,
        };
        match native.verify(&encode_args(hash, der, sig, signing_input.as_bytes())) {
            Native::Valid => return (true, Path::Native),
            Native::Invalid => return (false, Path::Native),
            Native::Unavailable => {}
        }
    }
    (simple(alg, &key.material, token), Path::Fallback)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn encodes_arguments_as_protobuf() {
        let b = encode_args("sha256", &[1, 2], &[3], b"ab");
        assert_eq!(
            b,
            [
                0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x12, 2, 1, 2, 0x1a, 1, 3, 0x22, 2,
                b'a', b'b'
            ]
        );
        let long = encode_args("", &[0u8; 300], &[], &[]);
        assert_eq!(&long[..5], &[0x0a, 0, 0x12, 0xac, 0x02]);
    }

    #[test]
    fn decodes_results() {
        assert_eq!(decode_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[]), Some(false));
        assert_eq!(
            decode_result(&[0x08, 0x00, 0x12, 0x03, b'b', b'a', b'd']),
            Some(false)
        );
        assert_eq!(decode_result(&[0x12, 0x01, b'x', 0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[0x12, 0x05, b'x']), None);
        assert_eq!(decode_result(&[0x08]), None);
        assert_eq!(decode_result(&[0x0b]), None);
    }

    #[test]
    fn arguments_round_trip() {
        let der = [0x30u8; 300];
        let encoded = encode_args("sha384", &der, &[9, 8, 7], b"header.payload");
        assert_eq!(
            decode_args(&encoded),
            Some(VerifyArgs {
                hash: "sha384",
                public_key: &der,
                signature: &[9, 8, 7],
                text: b"header.payload",
                public_key_pem: &[],
            })
        );
        // Empty fields, unknown fields (varint 7, fixed64 8, bytes 9) skipped, last one wins.
        let mut more = encode_args("", &[], &[], &[]);
        more.extend_from_slice(&[0x38, 0x96, 0x01, 0x41, 1, 2, 3, 4, 5, 6, 7, 8, 0x4a, 1, 0]);
        more.extend_from_slice(&encode_args("sha256", &[1], &[2], &[3]));
        more.extend_from_slice(&[0x2a, 2, b'p', b'k']);
        assert_eq!(
            decode_args(&more),
            Some(VerifyArgs {
                hash: "sha256",
                public_key: &[1],
                signature: &[2],
                text: &[3],
                public_key_pem: b"pk",
            })
        );
        assert_eq!(decode_args(&[]), Some(VerifyArgs::default()));
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let good = encode_args("sha256", &[1, 2, 3], &[4; 64], b"text");
        // Every truncation but the field boundaries is malformed; none panics.
        for end in 0..good.len() {
            let _ = decode_args(&good[..end]);
        }
        assert_eq!(decode_args(&good[..good.len() - 1]), None);
        assert_eq!(decode_args(&[0x0a, 2, 0xff, 0xfe]), None, "hash not UTF-8");
        assert_eq!(decode_args(&[0x08, 1]), None, "hash_function as a varint");
        assert_eq!(decode_args(&[0x02, 0]), None, "field number 0");
        assert_eq!(decode_args(&[0x0b]), None, "a group");
        assert_eq!(decode_args(&[0x12, 0x80]), None, "truncated length");
        assert_eq!(
            decode_args(&[
                0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            None,
            "a length past the end"
        );
        assert_eq!(decode_args(&[0x80; 11]), None, "a varint over 64 bits");
    }

    #[test]
    fn results_round_trip() {
        for (result, error) in [(true, ""), (false, ""), (false, "Failed to verify digest.")] {
            let encoded = encode_result(result, error);
            assert_eq!(decode_result(&encoded), Some(result), "{result} {error:?}");
        }
        assert_eq!(encode_result(true, ""), [0x08, 0x01]);
        assert_eq!(encode_result(false, ""), [] as [u8; 0]);
        assert_eq!(encode_result(false, "no"), [0x12, 2, b'n', b'o']);
    }

    #[test]
    fn jose_signatures_convert_to_der() {
        let mut sig = vec![0u8; 64];
        sig[0] = 0x80; // r needs a sign pad
        sig[31] = 1;
        sig[63] = 5; // s is small: leading zeros go
        let der = jose_to_der(&sig, 32).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 5]);
        assert_eq!(der[1] as usize, der.len() - 2);
        assert!(jose_to_der(&sig, 48).is_none());
        assert_eq!(
            jose_to_der(&[0u8; 96], 48).unwrap(),
            vec![0x30, 6, 2, 1, 0, 2, 1, 0]
        );
    }

    #[test]
    fn only_rs_and_es_are_native() {
        for alg in Alg::ALL {
            let native = matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::ES256 | Alg::ES384
            );
            assert_eq!(native_hash(alg).is_some(), native, "{alg:?}");
        }
    }
}
