//! Envoy's `verify_signature` foreign function, implemented by the module itself (host-free).
//!
//! jwt-to-header's stage verifies RS*/ES* signatures through
//! `StageHost::foreign_function("verify_signature", args)` — in Wasm, Envoy's BoringSSL. A
//! dynamic module cannot call Envoy's foreign functions, so without this the stage falls back
//! to jwt-simple (pure Rust: a request with a fresh ES256 token cost Envoy 2.61M added
//! instructions, against 0.82M with ring, by callgrind). Here the module answers the call
//! itself with ring (assembly-backed, as BoringSSL is), so the stage code is the same on every
//! host and only the crypto underneath differs.
//!
//! The message format is jwt-to-header's (`verify.rs` owns both directions: `encode_args` /
//! `decode_args`, `encode_result` / `decode_result`). The answers follow Envoy's
//! (`source/extensions/common/wasm/foreign.cc`), for the keys and hashes the stage sends:
//! - arguments that are not a protobuf, or a key that does not import → `BadArgument` (the
//!   stage then lets jwt-simple decide);
//! - RSA (SubjectPublicKeyInfo `rsaEncryption`, PKCS#1 v1.5) with sha256/sha384/sha512, and
//!   ECDSA P-256/P-384 (DER `ECDSA-Sig-Value`) with sha256/sha384 → `result: true`, or
//!   `result: false` with Envoy's "Failed to verify digest" error;
//! - another hash → `result: false`, "<hash> is not supported.", as Envoy.
//!
//! Where ring is narrower than BoringSSL the key is refused (`BadArgument`, so jwt-simple
//! decides, as on a host without the function) rather than a signature being called invalid:
//! RSA moduli outside ring's 2048–8192 bits, compressed EC points, other curves, and ECDSA with
//! sha512. A PEM key (`public_key_pem`) is refused the same way; the stage never sends one.

use jwt_to_header::verify::{VerifyArgs, decode_args, encode_result};
use proxy_wasm::types::Status;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

/// The foreign function's name, as Envoy registers it.
pub const VERIFY_SIGNATURE: &str = "verify_signature";

/// `rsaEncryption` (1.2.840.113549.1.1.1), DER content octets.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34).
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The RSA modulus sizes ring verifies (`RSA_PKCS1_2048_8192_*`).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// Answer one `verify_signature` call: `args` is a `VerifySignatureArguments`, the answer a
/// `VerifySignatureResult` (see the module doc for what is refused and why).
pub fn verify_signature(args: &[u8]) -> Result<Vec<u8>, Status> {
    let args = decode_args(args).ok_or(Status::BadArgument)?;
    if !args.public_key_pem.is_empty() {
        return Err(Status::BadArgument);
    }
    let key = PublicKey::from_spki(args.public_key).ok_or(Status::BadArgument)?;
    let hash = args.hash.to_ascii_lowercase();
    let Some(algorithm) = key.algorithm(&hash)? else {
        return Ok(encode_result(
            false,
            &format!("{} is not supported.", args.hash),
        ));
    };
    Ok(if check(algorithm, key.bytes, &args) {
        encode_result(true, "")
    } else {
        encode_result(false, "Failed to verify digest. Error code: 0")
    })
}

fn check(algorithm: &'static dyn VerificationAlgorithm, key: &[u8], args: &VerifyArgs) -> bool {
    UnparsedPublicKey::new(algorithm, key)
        .verify(args.text, args.signature)
        .is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

/// A SubjectPublicKeyInfo, split into what ring takes: the kind and the subjectPublicKey
/// bytes (an `RSAPublicKey` DER for RSA, the uncompressed point for EC).
struct PublicKey<'a> {
    kind: KeyKind,
    bytes: &'a [u8],
}

impl<'a> PublicKey<'a> {
    /// `None` for anything but a well-formed RSA, P-256 or P-384 key that ring can use.
    fn from_spki(der: &'a [u8]) -> Option<Self> {
        let (spki, rest) = der_element(der, TAG_SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (algorithm, rest) = der_element(spki, TAG_SEQUENCE)?;
        let (bits, rest) = der_element(rest, TAG_BIT_STRING)?;
        if !rest.is_empty() {
            return None;
        }
        // The first octet of a BIT STRING counts the unused bits of the last: keys have none.
        let bytes = match bits.split_first() {
            Some((0, bytes)) => bytes,
            _ => return None,
        };
        let (oid, params) = der_element(algorithm, TAG_OID)?;
        let kind = match oid {
            OID_RSA => {
                // NULL parameters (or none, which some encoders write).
                if !(params.is_empty() || params == [TAG_NULL, 0]) || !rsa_size_ok(bytes)? {
                    return None;
                }
                KeyKind::Rsa
            }
            OID_EC => {
                let (curve, rest) = der_element(params, TAG_OID)?;
                if !rest.is_empty() {
                    return None;
                }
                let (kind, width) = match curve {
                    OID_P256 => (KeyKind::P256, 32),
                    OID_P384 => (KeyKind::P384, 48),
                    _ => return None,
                };
                // Uncompressed points only (ring's form; JWKs carry x and y).
                if bytes.len() != 1 + 2 * width || bytes.first() != Some(&0x04) {
                    return None;
                }
                kind
            }
            _ => return None,
        };
        Some(Self { kind, bytes })
    }

    /// ring's algorithm for this key and `hash` (lowercase); `Ok(None)` for a hash Envoy would
    /// not know either, `BadArgument` for one Envoy knows but ring cannot pair with this key.
    fn algorithm(&self, hash: &str) -> Result<Option<&'static dyn VerificationAlgorithm>, Status> {
        let known = matches!(hash, "sha1" | "sha224" | "sha256" | "sha384" | "sha512");
        let algorithm: Option<&'static dyn VerificationAlgorithm> = match (self.kind, hash) {
            (KeyKind::Rsa, "sha256") => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            (KeyKind::Rsa, "sha384") => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            (KeyKind::Rsa, "sha512") => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            (KeyKind::P256, "sha256") => Some(&signature::ECDSA_P256_SHA256_ASN1),
            (KeyKind::P256, "sha384") => Some(&signature::ECDSA_P256_SHA384_ASN1),
            (KeyKind::P384, "sha256") => Some(&signature::ECDSA_P384_SHA256_ASN1),
            (KeyKind::P384, "sha384") => Some(&signature::ECDSA_P384_SHA384_ASN1),
            _ => None,
        };
        match (algorithm, known) {
            (Some(algorithm), _) => Ok(Some(algorithm)),
            (None, true) => Err(Status::BadArgument),
            (None, false) => Ok(None),
        }
    }
}

/// Whether an `RSAPublicKey { modulus, publicExponent }`'s modulus is a size ring verifies
/// (`None` when the DER is malformed).
fn rsa_size_ok(rsa_public_key: &[u8]) -> Option<bool> {
    let (fields, rest) = der_element(rsa_public_key, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (modulus, _) = der_element(fields, TAG_INTEGER)?;
    let modulus = match modulus.split_first() {
        Some((0, rest)) => rest,
        _ => modulus,
    };
    let first = *modulus.first()?;
    let bits = (modulus.len() - 1) * 8 + (8 - first.leading_zeros() as usize);
    Some(RSA_BITS.contains(&bits))
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// The content of the DER element at the start of `der` if its tag is `tag`, and what follows
/// it. Definite lengths of up to 3 octets (16 MiB: far beyond any key).
fn der_element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len_octet, rest) = rest.split_first()?;
    let (len, rest) = match len_octet {
        0..=0x7f => (usize::from(len_octet), rest),
        0x81..=0x83 => {
            let n = usize::from(len_octet & 0x7f);
            let (octets, rest) = rest.split_at_checked(n)?;
            let len = octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest)
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::OnceLock;

    use jwt_simple::prelude::*;
    use jwt_to_header::verify::{decode_result, encode_args, jose_to_der};

    use super::*;

    /// One 2048-bit RSA key for every RS* test (generating one takes a while).
    fn rsa_key() -> &'static RS256KeyPair {
        static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap())
    }

    /// The signing input and the raw signature of a compact JWS.
    fn split(token: &str) -> (String, Vec<u8>) {
        use ct_codecs::{Base64UrlSafeNoPadding, Decoder};
        let (input, sig) = token.rsplit_once('.').unwrap();
        (
            input.to_string(),
            Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap(),
        )
    }

    /// One signed token as the stage hands it to `verify_signature`.
    struct Signed {
        alg: &'static str,
        hash: &'static str,
        /// SubjectPublicKeyInfo DER.
        der: Vec<u8>,
        /// The signing input (`header.payload`).
        input: String,
        /// As the stage sends it (DER for ECDSA).
        sig: Vec<u8>,
    }

    /// One [`Signed`] for each algorithm the stage verifies natively, from tokens jwt-simple
    /// signed.
    fn signed() -> Vec<Signed> {
        let claims = || Claims::create(Duration::from_mins(5)).with_subject("alice");
        let rsa = rsa_key();
        let rsa_der = rsa.public_key().to_der().unwrap();
        let rs384 = RS384KeyPair::from_der(&rsa.to_der().unwrap()).unwrap();
        let rs512 = RS512KeyPair::from_der(&rsa.to_der().unwrap()).unwrap();
        let es256 = ES256KeyPair::generate();
        let es384 = ES384KeyPair::generate();
        let mut out = Vec::new();
        let mut push = |alg, hash, der: &[u8], (input, sig): (String, Vec<u8>)| {
            out.push(Signed {
                alg,
                hash,
                der: der.to_vec(),
                input,
                sig,
            })
        };
        let (i, s) = split(&rsa.sign(claims()).unwrap());
        push("RS256", "sha256", &rsa_der, (i, s));
        let (i, s) = split(&rs384.sign(claims()).unwrap());
        push("RS384", "sha384", &rsa_der, (i, s));
        let (i, s) = split(&rs512.sign(claims()).unwrap());
        push("RS512", "sha512", &rsa_der, (i, s));
        let (i, s) = split(&es256.sign(claims()).unwrap());
        let der = es256.public_key().to_der().unwrap();
        push("ES256", "sha256", &der, (i, jose_to_der(&s, 32).unwrap()));
        let (i, s) = split(&es384.sign(claims()).unwrap());
        let der = es384.public_key().to_der().unwrap();
        push("ES384", "sha384", &der, (i, jose_to_der(&s, 48).unwrap()));
        out
    }

    fn verdict(args: &[u8]) -> Result<bool, Status> {
        verify_signature(args).map(|answer| decode_result(&answer).unwrap())
    }

    #[test]
    fn valid_signatures_verify_for_every_native_algorithm() {
        for Signed {
            alg,
            hash,
            der,
            input,
            sig,
        } in signed()
        {
            let args = encode_args(hash, &der, &sig, input.as_bytes());
            assert_eq!(verdict(&args), Ok(true), "{alg}");
        }
    }

    #[test]
    fn invalid_signatures_do_not_verify() {
        for Signed {
            alg,
            hash,
            der,
            input,
            sig,
        } in signed()
        {
            let other_text = format!("{input}x");
            let args = encode_args(hash, &der, &sig, other_text.as_bytes());
            assert_eq!(verdict(&args), Ok(false), "{alg}: other text");
            // One flipped bit in the last octet (for ECDSA, of s).
            let mut flipped = sig.clone();
            *flipped.last_mut().unwrap() ^= 1;
            let args = encode_args(hash, &der, &flipped, input.as_bytes());
            assert_eq!(verdict(&args), Ok(false), "{alg}: flipped bit");
            let args = encode_args(hash, &der, &[], input.as_bytes());
            assert_eq!(verdict(&args), Ok(false), "{alg}: no signature");
            // The right signature under the wrong hash.
            let wrong = if hash == "sha256" { "sha384" } else { "sha256" };
            let args = encode_args(wrong, &der, &sig, input.as_bytes());
            assert_eq!(verdict(&args), Ok(false), "{alg}: {wrong}");
        }
    }

    #[test]
    fn a_signature_from_another_key_does_not_verify() {
        let all = signed();
        let es256_der = &all[3].der;
        let other = ES256KeyPair::generate();
        let (input, sig) = split(&other.sign(Claims::create(Duration::from_mins(1))).unwrap());
        let args = encode_args(
            "sha256",
            es256_der,
            &jose_to_der(&sig, 32).unwrap(),
            input.as_bytes(),
        );
        assert_eq!(verdict(&args), Ok(false));
    }

    #[test]
    fn unknown_hashes_are_answered_as_envoy_does() {
        let Signed {
            der, input, sig, ..
        } = signed().remove(0);
        let answer = verify_signature(&encode_args("md5", &der, &sig, input.as_bytes())).unwrap();
        assert_eq!(answer, encode_result(false, "md5 is not supported."));
        // Case-insensitive, as Envoy's getHashFunction.
        let args = encode_args("SHA256", &der, &sig, input.as_bytes());
        assert_eq!(verdict(&args), Ok(true));
        // A hash Envoy knows but ring cannot pair with the key: the stage's fallback decides.
        let args = encode_args("sha1", &der, &sig, input.as_bytes());
        assert_eq!(verdict(&args), Err(Status::BadArgument));
    }

    #[test]
    fn keys_ring_cannot_use_are_refused_not_failed() {
        let Signed {
            der, input, sig, ..
        } = signed().remove(3);
        let call =
            |key: &[u8]| verify_signature(&encode_args("sha256", key, &sig, input.as_bytes()));
        assert_eq!(call(&[]), Err(Status::BadArgument));
        assert_eq!(call(&der[..der.len() - 1]), Err(Status::BadArgument));
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(call(&trailing), Err(Status::BadArgument));
        // A P-256 SPKI whose point is compressed (0x02‖x): refused, not "invalid".
        let mut compressed = der.clone();
        let point = compressed.len() - 65;
        compressed[point] = 0x02;
        assert_eq!(call(&compressed), Err(Status::BadArgument));
        // A PEM key instead of DER.
        let mut pem = encode_args("sha256", &der, &sig, input.as_bytes());
        pem.extend_from_slice(&[0x2a, 3, b'p', b'e', b'm']);
        assert_eq!(verify_signature(&pem), Err(Status::BadArgument));
        // A 1024-bit RSA modulus (ring's minimum is 2048): jwt-simple decides.
        let small = spki_rsa(&[0xc5; 128], &[1, 0, 1]);
        assert_eq!(call(&small), Err(Status::BadArgument));
        let large = spki_rsa(&[0xc5; 256], &[1, 0, 1]);
        assert!(
            PublicKey::from_spki(&large).is_some(),
            "the builder is right"
        );
    }

    /// An RSA SubjectPublicKeyInfo for modulus `n` (no sign octet needed: the test adds one).
    fn spki_rsa(n: &[u8], e: &[u8]) -> Vec<u8> {
        fn element(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match content.len() {
                len @ 0..=0x7f => out.push(len as u8),
                len @ 0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
                len => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
            }
            out.extend_from_slice(content);
            out
        }
        let mut modulus = vec![0];
        modulus.extend_from_slice(n);
        let rsa_key = element(
            TAG_SEQUENCE,
            &[element(TAG_INTEGER, &modulus), element(TAG_INTEGER, e)].concat(),
        );
        let algorithm = element(
            TAG_SEQUENCE,
            &[element(TAG_OID, OID_RSA), vec![TAG_NULL, 0]].concat(),
        );
        let bits = element(TAG_BIT_STRING, &[&[0u8][..], &rsa_key].concat());
        element(TAG_SEQUENCE, &[algorithm, bits].concat())
    }

    #[test]
    fn malformed_arguments_never_panic() {
        assert_eq!(verify_signature(&[0x0b]), Err(Status::BadArgument));
        assert_eq!(verify_signature(&[]), Err(Status::BadArgument), "no key");
        for Signed {
            hash,
            der,
            input,
            sig,
            ..
        } in signed()
        {
            let args = encode_args(hash, &der, &sig, input.as_bytes());
            // Every prefix, and every single-octet corruption of the key and signature.
            for end in 0..args.len() {
                let _ = verify_signature(&args[..end]);
            }
            for i in 0..der.len() {
                let mut key = der.clone();
                key[i] ^= 0xff;
                let _ = verify_signature(&encode_args(hash, &key, &sig, input.as_bytes()));
            }
            for i in 0..sig.len() {
                let mut bad = sig.clone();
                bad[i] = bad[i].wrapping_add(0x41);
                let answer = verify_signature(&encode_args(hash, &der, &bad, input.as_bytes()));
                assert_eq!(answer.map(|a| decode_result(&a)), Ok(Some(false)));
            }
        }
        // DER lengths that run past the end, indefinite or 4-octet lengths.
        for key in [
            &[0x30, 0x84, 0, 0, 0, 1][..],
            &[0x30, 0x80, 0, 0],
            &[0x30, 0x82, 0xff, 0xff],
            &[0x30, 0x03, 0x30, 0x01],
        ] {
            assert_eq!(
                verify_signature(&encode_args("sha256", key, &[1], b"t")),
                Err(Status::BadArgument)
            );
        }
    }
}
