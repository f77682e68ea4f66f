//! The JSON body of a local reply: `{"error":"<machine_reason>","message":"<human text>"}`.
//! Hand-written escaping keeps it infallible and allocation-light (one `String`).

/// The `content-type` header pair to send with [`json_error_body`].
pub const JSON_CONTENT_TYPE: (&str, &str) = ("content-type", "application/json");

/// Render `{"error":"<reason>","message":"<message>"}` with both strings JSON-escaped.
pub fn json_error_body(reason: &str, message: &str) -> String {
    let mut out = String::with_capacity(26 + reason.len() + message.len());
    out.push_str("{\"error\":\"");
    push_json_escaped(&mut out, reason);
    out.push_str("\",\"message\":\"");
    push_json_escaped(&mut out, message);
    out.push_str("\"}");
    out
}

/// Append `s` to `out` as the inside of a JSON string literal (RFC 8259 escaping; non-ASCII is
/// kept as UTF-8).
pub fn push_json_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn renders_plain_body() {
        assert_eq!(
            json_error_body("unauthorized", "missing token"),
            r#"{"error":"unauthorized","message":"missing token"}"#
        );
    }

    #[test]
    fn escapes_and_round_trips() {
        let nasty = "quote\" back\\slash\nnl\rcr\ttab\u{0}\u{1f}\u{8}\u{c} é 😀 </script>";
        let body = json_error_body("r\"x", nasty);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["error"], "r\"x");
        assert_eq!(parsed["message"], nasty);
        assert_eq!(parsed.as_object().unwrap().len(), 2);
        assert!(!body.contains('\n') && !body.contains('\r'));
    }

    #[test]
    fn empty_strings() {
        assert_eq!(json_error_body("", ""), r#"{"error":"","message":""}"#);
    }
}
