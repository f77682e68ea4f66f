//! Foreign functions Envoy registers that this host implements too (besides
//! `clear_route_cache`, which lives with the stream state in `imports.rs`).
//!
//! `verify_signature` (Envoy `source/extensions/common/wasm/foreign.cc`): the arguments are a
//! `VerifySignatureArguments` protobuf — 1 `hash_function` ("sha256", …), 2 `public_key`
//! (DER SubjectPublicKeyInfo), 3 `signature`, 4 `text` — and the answer a
//! `VerifySignatureResult` — 1 `result` (bool), 2 `error` (string). Envoy verifies RSA
//! PKCS#1 v1.5 and ECDSA (DER signature) with BoringSSL; here RustCrypto does the same. Like
//! Envoy, a key or hash it cannot use answers `result: false` with an error, not a failed call.

use crate::abi::Status;

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

/// The length-delimited fields 1..=4 of a protobuf message (others skipped).
fn fields(b: &[u8]) -> Option<[&[u8]; 5]> {
    let mut out: [&[u8]; 5] = [&[]; 5];
    let mut pos = 0;
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        match tag & 7 {
            0 => {
                varint(b, &mut pos)?;
            }
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

fn answer(ok: bool, error: &str) -> Vec<u8> {
    let mut out = vec![0x08, u8::from(ok)];
    if !error.is_empty() {
        out.push(0x12);
        out.push(u8::try_from(error.len()).unwrap_or(0));
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// Envoy's `verify_signature`.
pub(crate) fn verify_signature(args: &[u8]) -> Result<Vec<u8>, Status> {
    use p256::pkcs8::DecodePublicKey as _;
    let Some([_, hash, der, signature, text]) = fields(args) else {
        return Err(Status::BadArgument);
    };
    let hash = std::str::from_utf8(hash).unwrap_or("");
    if let Ok(key) = <rsa::RsaPublicKey as rsa::pkcs8::DecodePublicKey>::from_public_key_der(der) {
        use rsa::signature::Verifier as _;
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else {
            return Ok(answer(false, "bad signature"));
        };
        let ok = match hash {
            "sha256" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
                .verify(text, &sig)
                .is_ok(),
            "sha384" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key)
                .verify(text, &sig)
                .is_ok(),
            "sha512" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(key)
                .verify(text, &sig)
                .is_ok(),
            _ => return Ok(answer(false, "unknown hash function")),
        };
        return Ok(answer(
            ok,
            if ok { "" } else { "Failed to verify signature" },
        ));
    }
    let ok = if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
        use p256::ecdsa::signature::Verifier as _;
        hash == "sha256"
            && p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(text, &s).is_ok())
    } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
        use p384::ecdsa::signature::Verifier as _;
        hash == "sha384"
            && p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(text, &s).is_ok())
    } else {
        return Ok(answer(false, "Failed to parse public key"));
    };
    Ok(answer(
        ok,
        if ok { "" } else { "Failed to verify signature" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(hash: &[u8], der: &[u8], sig: &[u8], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in [(1u8, hash), (2, der), (3, sig), (4, text)] {
            out.push((field << 3) | 2);
            out.push(u8::try_from(value.len()).unwrap_or(0));
            out.extend_from_slice(value);
        }
        out
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
    }

    #[test]
    fn an_unusable_key_is_a_false_result_with_an_error() {
        let out = verify_signature(&args(b"sha256", b"not der", b"s", b"t"));
        assert_eq!(
            out,
            Ok(answer(false, "Failed to parse public key")),
            "{out:?}"
        );
        assert_eq!(answer(true, ""), vec![0x08, 0x01]);
    }
}
