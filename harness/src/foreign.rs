//! Foreign functions Envoy registers that this host implements too (besides
//! `clear_route_cache`, which lives with the stream state in `imports/foreign_functions.rs`).
//!
//! `verify_signature` (Envoy `source/extensions/common/wasm/foreign.cc`, with
//! `source/common/crypto/utility_impl.cc` behind it): the arguments are a
//! `VerifySignatureArguments` protobuf — 1 `hash_function` ("sha256", …), 2 `public_key`
//! (DER SubjectPublicKeyInfo), 3 `signature`, 4 `text`, 5 `public_key_pem` — and the answer a
//! `VerifySignatureResult` — 1 `result` (bool), 2 `error` (string), serialised as proto3 does
//! (default values left out: a failed check is only the error). Envoy runs BoringSSL's
//! `EVP_DigestVerify` with the key's default padding; here RustCrypto does the same for the keys
//! it can import:
//! - RSA (PKCS#1 v1.5, moduli up to 16384 bits as BoringSSL) and ECDSA P-256/P-384 (DER
//!   signature), each with any of the hashes Envoy names: sha1, sha224, sha256, sha384, sha512
//!   (case-insensitive; ECDSA truncates a digest longer than the curve order, as BoringSSL);
//! - an Ed25519 or X25519 key imports but takes no digest: `result: false`, "Failed to
//!   initialize digest verify.";
//! - another hash: `result: false`, "<hash> is not supported.";
//! - a signature that does not verify (wrong length, malformed DER, wrong key or text):
//!   `result: false`, "Failed to verify digest. Error code: 0".
//!
//! As in Envoy, a call whose arguments are not a protobuf, or whose key does not import (none,
//! both DER and PEM, garbage, a PEM block that is not a `PUBLIC KEY`), fails with BadArgument.
//! Keys BoringSSL imports but this host does not (P-224, P-521, DSA) fail the same way here.

use crate::abi::Status;
use rsa::pkcs8::ObjectIdentifier;

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
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

/// The length-delimited fields 1..=5 of a protobuf message (the last occurrence of each, as
/// protobuf parsers keep it; other fields and wire types skipped).
fn fields(b: &[u8]) -> Option<[&[u8]; 6]> {
    let mut out: [&[u8]; 6] = [&[]; 6];
    let mut pos = 0;
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        if tag >> 3 == 0 {
            return None;
        }
        let skip = |pos: &mut usize, n: usize| -> Option<()> {
            *pos = pos.checked_add(n).filter(|&p| p <= b.len())?;
            Some(())
        };
        match tag & 7 {
            0 => {
                varint(b, &mut pos)?;
            }
            1 => skip(&mut pos, 8)?,
            5 => skip(&mut pos, 4)?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                let value = b.get(pos..end)?;
                if let Some(slot) = usize::try_from(tag >> 3).ok().and_then(|i| out.get_mut(i)) {
                    *slot = value;
                }
                pos = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `VerifySignatureResult` as proto3 serialises it: `result: false` and an empty error are
/// left out.
fn answer(ok: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if ok {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        let mut len = error.len();
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// The hash functions Envoy's `getHashFunction` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn named(name: &str) -> Option<Hash> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sha1" => Hash::Sha1,
            "sha224" => Hash::Sha224,
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            _ => return None,
        })
    }

    fn digest(self, text: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(text).to_vec(),
            Hash::Sha224 => sha2::Sha224::digest(text).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(text).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(text).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(text).to_vec(),
        }
    }

    /// RSASSA-PKCS1-v1_5 with this hash's DigestInfo prefix.
    fn pkcs1v15(self) -> rsa::Pkcs1v15Sign {
        match self {
            Hash::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
            Hash::Sha224 => rsa::Pkcs1v15Sign::new::<sha2::Sha224>(),
            Hash::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            Hash::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            Hash::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

/// A public key as BoringSSL's `EVP_parse_public_key` would import it (the kinds handled here).
enum Key {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    /// Ed25519 / X25519: imported, but `EVP_DigestVerifyInit` with a digest fails.
    NoDigest,
}

/// BoringSSL's `OPENSSL_RSA_MAX_MODULUS_BITS` (RustCrypto's default stops at 4096).
const RSA_MAX_MODULUS_BITS: usize = 16384;
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Envoy imports the DER key or the PEM one, never both nor neither.
fn import(der: &[u8], pem: &[u8]) -> Option<Key> {
    let decoded;
    let der = match (der.is_empty(), pem.is_empty()) {
        (false, true) => der,
        (true, false) => {
            let (label, bytes) = rsa::pkcs8::der::pem::decode_vec(pem).ok()?;
            if label != "PUBLIC KEY" {
                return None;
            }
            decoded = bytes;
            &decoded
        }
        _ => return None,
    };
    let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::try_from(der).ok()?;
    let oid = spki.algorithm.oid;
    if oid == RSA_ENCRYPTION {
        // RFC 3279: the parameters are NULL.
        if spki.algorithm.parameters_any().ok()? != rsa::pkcs8::der::asn1::Null.into() {
            return None;
        }
        let key = rsa::pkcs1::RsaPublicKey::try_from(spki.subject_public_key.as_bytes()?).ok()?;
        let n = rsa::BigUint::from_bytes_be(key.modulus.as_bytes());
        let e = rsa::BigUint::from_bytes_be(key.public_exponent.as_bytes());
        return rsa::RsaPublicKey::new_with_max_size(n, e, RSA_MAX_MODULUS_BITS)
            .ok()
            .map(Key::Rsa);
    }
    if oid == ED25519 || oid == X25519 {
        return (spki.algorithm.parameters.is_none()
            && spki.subject_public_key.as_bytes()?.len() == 32)
            .then_some(Key::NoDigest);
    }
    use p256::pkcs8::DecodePublicKey as _;
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
        return Some(Key::P256(key));
    }
    p384::ecdsa::VerifyingKey::from_public_key_der(der)
        .ok()
        .map(Key::P384)
}

/// Envoy's `verify_signature`.
pub(crate) fn verify_signature(args: &[u8]) -> Result<Vec<u8>, Status> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let Some([_, hash, der, signature, text, pem]) = fields(args) else {
        return Err(Status::BadArgument);
    };
    // proto3 `string` fields must be UTF-8, or the message does not parse.
    let (Ok(hash), Ok(_)) = (std::str::from_utf8(hash), std::str::from_utf8(pem)) else {
        return Err(Status::BadArgument);
    };
    let Some(key) = import(der, pem) else {
        return Err(Status::BadArgument);
    };
    let Some(h) = Hash::named(hash) else {
        return Ok(answer(false, &format!("{hash} is not supported.")));
    };
    let ok = match key {
        Key::Rsa(key) => key.verify(h.pkcs1v15(), &h.digest(text), signature).is_ok(),
        Key::P256(key) => p256::ecdsa::Signature::from_der(signature)
            .is_ok_and(|s| key.verify_prehash(&h.digest(text), &s).is_ok()),
        Key::P384(key) => p384::ecdsa::Signature::from_der(signature)
            .is_ok_and(|s| key.verify_prehash(&h.digest(text), &s).is_ok()),
        Key::NoDigest => return Ok(answer(false, "Failed to initialize digest verify.")),
    };
    Ok(if ok {
        answer(true, "")
    } else {
        answer(false, "Failed to verify digest. Error code: 0")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;
    use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};

    /// A throwaway 1024-bit RSA key for these tests only (`openssl genpkey`), so the tests do
    /// not depend on a random source.
    const RSA_TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIICeAIBADANBgkqhkiG9w0BAQEFAASCAmIwggJeAgEAAoGBALLsLGaOa7Wj3qCM
xx6g8wM5OxckC4plAuTpus92KOlk324FFu/mHdJbUWnsTNVKSAK6HagxE9GNcV/L
aIoTOeUeB6j/vOOm8a0cpxWeE0eW7oaOwN0hwiPRgdigRLJsz7CKpbDeOMpQnv2Z
nU/CbrC4B2rTMWYLWAP1lGdKvV9NAgMBAAECgYEAlHfhyCA6RHl8TSFEQagwvuYI
oIUqhmaXZjiE6Y4VGMa5mGPkyqDa8ikQf6KzhvGim5Cw91XyKhsCjwkM8DZP/Oij
M72S56WOddkiZjdlYk90ocSKjdFFuI/3L83yCD/HAKwAczTaapv4KNdFh126YkiO
tVTX5zQozT12XVl1mMkCQQDqpOHgM6EoKDDczQpw0vluphbsVf0tRMergWRx+oz2
mUOBAQklqRmZN6JncnX6Jh3Xxb/CFLkdUL0epaOkboJnAkEAwzUAOu4w4LrDZkqh
PdLBUPNnj3RTX3RNufBf0g2F484p1sTxSF2uVSflaLmRYEJ5C+sGC4Ec/EOBrAMY
uSvIKwJBAI8DP8hur2LSXDW3ow1xCSYvhPk2z8CvkyMtEhOGKjSC5WnTP8f8cOW5
yvpSASYd5UKF/IJGLy128E2llz+5OzECQQC9zEWqBrgdeVnNlpiKDOYLeG5jy93Y
fLOqK25vRNi+s1B40soq63M6tuzWUz9nUZpyHRSmkOYG3PgysFwUht47AkAdJ6K0
XtORIbGMIIspTNAunEnZvsASPz8qg+JyepALbUsKOa5Msi7LGDrtM10P4if1OBQE
W9jJHrjxnf0fxHdc
-----END PRIVATE KEY-----
";

    /// An Ed25519 SubjectPublicKeyInfo (`openssl pkey -pubout -outform DER`).
    const ED25519_DER: &str =
        "302a300506032b6570032100cf679caf532ddafbca4ce7f7aa658e4c2888b84fa1506972c4b67135f8f70d2c";

    const HASHES: [&str; 5] = ["sha1", "sha224", "sha256", "sha384", "sha512"];
    const FAILED: &str = "Failed to verify digest. Error code: 0";

    fn push_field(out: &mut Vec<u8>, field: u8, value: &[u8]) {
        out.push((field << 3) | 2);
        let mut len = value.len();
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(value);
    }

    fn args(hash: &str, der: &[u8], sig: &[u8], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in [(1u8, hash.as_bytes()), (2, der), (3, sig), (4, text)] {
            push_field(&mut out, field, value);
        }
        out
    }

    /// `args` plus field 5, `public_key_pem`.
    fn with_pem(mut args: Vec<u8>, pem: &str) -> Vec<u8> {
        push_field(&mut args, 5, pem.as_bytes());
        args
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rsa_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::from_pkcs8_pem(RSA_TEST_KEY).unwrap()
    }

    fn rsa_sign(key: &rsa::RsaPrivateKey, hash: &str, text: &[u8]) -> Vec<u8> {
        let h = Hash::named(hash).unwrap();
        key.sign(h.pkcs1v15(), &h.digest(text)).unwrap()
    }

    fn ec_der(key: &impl p256::pkcs8::EncodePublicKey) -> Vec<u8> {
        key.to_public_key_der().unwrap().as_bytes().to_vec()
    }

    fn verified(out: Result<Vec<u8>, Status>) -> bool {
        match out {
            Ok(bytes) if bytes == answer(true, "") => true,
            Ok(bytes) if bytes == answer(false, FAILED) => false,
            other => panic!("neither verified nor a failed check: {other:?}"),
        }
    }

    #[test]
    fn garbage_arguments_are_a_bad_argument() {
        assert_eq!(
            verify_signature(&[0xff, 0xff, 0xff]),
            Err(Status::BadArgument)
        );
        assert_eq!(
            verify_signature(&[0x0a, 0x10, b'x']),
            Err(Status::BadArgument)
        );
        // A hash name that is not UTF-8: a proto3 string, so the message does not parse.
        let key = rsa_key().to_public_key().to_public_key_der().unwrap();
        let mut bad = args("sha256", key.as_bytes(), b"s", b"t");
        bad[2] = 0xff;
        assert_eq!(verify_signature(&bad), Err(Status::BadArgument));
    }

    #[test]
    fn a_key_that_does_not_import_is_a_bad_argument_as_in_envoy() {
        let der = rsa_key().to_public_key().to_public_key_der().unwrap();
        let pem = rsa_key()
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        for bad in [
            args("sha256", b"not der", b"s", b"t"),
            // No key at all.
            args("sha256", b"", b"s", b"t"),
            // DER and PEM both.
            with_pem(args("sha256", der.as_bytes(), b"s", b"t"), &pem),
            // A PEM block that is not a public key.
            with_pem(
                args("sha256", b"", b"s", b"t"),
                &pem.replace("PUBLIC KEY", "CERTIFICATE"),
            ),
        ] {
            assert_eq!(verify_signature(&bad), Err(Status::BadArgument));
        }
    }

    #[test]
    fn rsa_pkcs1v15_with_every_hash_envoy_names() {
        let key = rsa_key();
        let der = key.to_public_key().to_public_key_der().unwrap();
        let text = b"header.payload";
        for hash in HASHES {
            let sig = rsa_sign(&key, hash, text);
            assert!(
                verified(verify_signature(&args(hash, der.as_bytes(), &sig, text))),
                "{hash}"
            );
            // Envoy lowercases the name.
            let upper = hash.to_ascii_uppercase();
            assert!(
                verified(verify_signature(&args(&upper, der.as_bytes(), &sig, text))),
                "{upper}"
            );
            // Another text, another hash's DigestInfo, a flipped bit, a short signature.
            assert!(!verified(verify_signature(&args(
                hash,
                der.as_bytes(),
                &sig,
                b"header.payloaD"
            ))));
            let other = if hash == "sha256" { "sha384" } else { "sha256" };
            assert!(
                !verified(verify_signature(&args(other, der.as_bytes(), &sig, text))),
                "{hash} as {other}"
            );
            let mut flipped = sig.clone();
            flipped[9] ^= 1;
            assert!(!verified(verify_signature(&args(
                hash,
                der.as_bytes(),
                &flipped,
                text
            ))));
            assert!(!verified(verify_signature(&args(
                hash,
                der.as_bytes(),
                &sig[1..],
                text
            ))));
        }
        // The same key in PEM (field 5) instead of DER.
        let pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let sig = rsa_sign(&key, "sha256", text);
        let pem_only = with_pem(args("sha256", b"", &sig, text), &pem);
        assert!(verified(verify_signature(&pem_only)));
    }

    #[test]
    fn an_unknown_hash_is_a_false_result_with_envoys_error() {
        let key = rsa_key();
        let der = key.to_public_key().to_public_key_der().unwrap();
        let sig = rsa_sign(&key, "sha256", b"t");
        assert_eq!(
            verify_signature(&args("MD5", der.as_bytes(), &sig, b"t")),
            Ok(answer(false, "MD5 is not supported."))
        );
    }

    #[test]
    fn rsa_keys_up_to_boringssls_limit_import() {
        // Not a real modulus (odd, 8192 bits): it imports, and nothing verifies against it.
        let n = (rsa::BigUint::from(1u8) << 8191usize) + rsa::BigUint::from(1u8);
        let e = rsa::BigUint::from(65537u32);
        let big = rsa::RsaPublicKey::new_with_max_size(n, e.clone(), 16384).unwrap();
        let der = big.to_public_key_der().unwrap();
        let out = verify_signature(&args("sha256", der.as_bytes(), &[1; 1024], b"t"));
        assert_eq!(out, Ok(answer(false, FAILED)));
        let n = (rsa::BigUint::from(1u8) << 16384usize) + rsa::BigUint::from(1u8);
        let too_big = rsa::RsaPublicKey::new_with_max_size(n, e, 20000).unwrap();
        let der = too_big.to_public_key_der().unwrap();
        let out = verify_signature(&args("sha256", der.as_bytes(), &[1; 2049], b"t"));
        assert_eq!(out, Err(Status::BadArgument));
    }

    #[test]
    fn ecdsa_p256_and_p384_der_signatures_with_any_hash() {
        let text = b"header.payload";
        let p256_key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let p256_der = ec_der(p256_key.verifying_key());
        let p384_key = p384::ecdsa::SigningKey::from_slice(&[9; 48]).unwrap();
        let p384_der = ec_der(p384_key.verifying_key());
        for hash in HASHES {
            let digest = Hash::named(hash).unwrap().digest(text);
            let s256: p256::ecdsa::Signature = p256_key.sign_prehash(&digest).unwrap();
            let s384: p384::ecdsa::Signature = p384_key.sign_prehash(&digest).unwrap();
            for (der, sig, raw) in [
                (&p256_der, s256.to_der().as_bytes().to_vec(), s256.to_vec()),
                (&p384_der, s384.to_der().as_bytes().to_vec(), s384.to_vec()),
            ] {
                assert!(
                    verified(verify_signature(&args(hash, der, &sig, text))),
                    "{hash}"
                );
                assert!(
                    !verified(verify_signature(&args(hash, der, &sig, b"other"))),
                    "{hash}"
                );
                // JOSE's r‖s is not the DER Envoy expects.
                assert!(
                    !verified(verify_signature(&args(hash, der, &raw, text))),
                    "{hash}"
                );
            }
            // The P-256 signature under the P-384 key.
            let sig = s256.to_der();
            assert!(!verified(verify_signature(&args(
                hash,
                &p384_der,
                sig.as_bytes(),
                text
            ))));
        }
    }

    #[test]
    fn an_ed25519_key_imports_but_takes_no_digest() {
        let out = verify_signature(&args("sha256", &hex(ED25519_DER), &[0; 64], b"t"));
        assert_eq!(
            out,
            Ok(answer(false, "Failed to initialize digest verify."))
        );
    }

    #[test]
    fn answers_are_serialised_as_proto3_does() {
        assert_eq!(answer(true, ""), vec![0x08, 0x01]);
        // `result: false` is the default: only the error is written.
        assert_eq!(answer(false, "no"), vec![0x12, 0x02, b'n', b'o']);
        let long = "x".repeat(200);
        assert_eq!(answer(false, &long)[..3], [0x12, 0xc8, 0x01]);
    }
}
