//! What to do with the incoming correlation header: validation of an incoming ID and the
//! per-request decision (keep it, or generate a fresh one and say why).
//!
//! An incoming ID is kept only if it is 1..=`max_length` bytes of `[A-Za-z0-9._:-]` and the
//! header occurs exactly once. Anything else (CR/LF, spaces, quotes, non-ASCII, too long, empty,
//! duplicated) is replaced, which defends downstream logs against injection (CWE-117). The
//! rejected value itself is never logged — [`Rejection`]'s `Display` shows only lengths and
//! positions.

use std::fmt;

use gatewasm_common::headers::Occurrence;

/// The safe charset for IDs: `[A-Za-z0-9._:-]`.
pub const fn is_id_byte(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-')
}

/// Why an incoming ID was not kept. `Display` never includes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// A byte outside `[A-Za-z0-9._:-]` at this 0-based position.
    ForbiddenByte {
        position: usize,
        len: usize,
    },
    /// The header occurred this many (≥ 2) times.
    Duplicated {
        copies: usize,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty value"),
            Self::TooLong { len, max } => write!(f, "value too long: {len} bytes, max {max}"),
            Self::ForbiddenByte { position, len } => write!(
                f,
                "forbidden character at byte {position} of a {len}-byte value"
            ),
            Self::Duplicated { copies } => write!(f, "header sent {copies} times"),
        }
    }
}

/// Check one incoming value.
pub fn validate_id(value: &[u8], max_length: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::Empty);
    }
    if value.len() > max_length {
        return Err(Rejection::TooLong {
            len: value.len(),
            max: max_length,
        });
    }
    match value.iter().position(|&b| !is_id_byte(b)) {
        Some(position) => Err(Rejection::ForbiddenByte {
            position,
            len: value.len(),
        }),
        None => Ok(()),
    }
}

/// Why a fresh ID was issued, or that the incoming one was kept. Each request counts exactly one
/// of these (they are the filter's three counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No usable incoming ID was looked at: the header was absent, `trust_incoming` is false,
    /// or the request phase never ran for this stream.
    Generated,
    /// A valid incoming ID was kept unchanged.
    Preserved,
    /// The incoming ID was invalid or duplicated and was replaced.
    ReplacedInvalid,
}

impl Outcome {
    /// The counter this outcome increments.
    pub const fn metric_name(self) -> &'static str {
        match self {
            Self::Generated => METRIC_GENERATED,
            Self::Preserved => METRIC_PRESERVED,
            Self::ReplacedInvalid => METRIC_REPLACED_INVALID,
        }
    }
}

pub const METRIC_GENERATED: &str = "gatewasm_correlation_id_generated";
pub const METRIC_PRESERVED: &str = "gatewasm_correlation_id_preserved";
pub const METRIC_REPLACED_INVALID: &str = "gatewasm_correlation_id_replaced_invalid";

/// The request-phase decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Keep the incoming ID (no header write needed); it is also the one to echo.
    Keep(Vec<u8>),
    /// Generate a fresh ID and set it on the request.
    Generate {
        outcome: Outcome,
        /// Why the incoming value was refused (for a debug log line), if there was one.
        rejection: Option<Rejection>,
        /// The header was duplicated: remove every copy before setting ours, so exactly one
        /// value is forwarded even on hosts whose "replace" only overwrites the first copy.
        remove_copies: bool,
    },
}

/// Decide for one request. `incoming` reads the request headers; it is only called when
/// `trust_incoming` is true (with `false` nothing needs to be read — saves a host call).
pub fn plan_request(
    trust_incoming: bool,
    max_length: usize,
    incoming: impl FnOnce() -> Occurrence<Vec<u8>>,
) -> Plan {
    if !trust_incoming {
        return Plan::Generate {
            outcome: Outcome::Generated,
            rejection: None,
            remove_copies: false,
        };
    }
    let rejection = match incoming() {
        Occurrence::Absent => {
            return Plan::Generate {
                outcome: Outcome::Generated,
                rejection: None,
                remove_copies: false,
            };
        }
        Occurrence::Once(value) => match validate_id(&value, max_length) {
            Ok(()) => return Plan::Keep(value),
            Err(rejection) => rejection,
        },
        Occurrence::Repeated(copies) => Rejection::Duplicated { copies },
    };
    Plan::Generate {
        outcome: Outcome::ReplacedInvalid,
        rejection: Some(rejection),
        remove_copies: matches!(rejection, Rejection::Duplicated { .. }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use gatewasm_common::headers::single_value;

    #[test]
    fn validation_table() {
        let long_128 = "a".repeat(128);
        let long_129 = "a".repeat(129);
        let cases: &[(&[u8], usize, Result<(), Rejection>)] = &[
            // valid
            (b"abc", 128, Ok(())),
            (b"0f8fad5b-d9cb-469f-a165-70867728950e", 128, Ok(())),
            (b"Kong-Request-ID:1.2_3", 128, Ok(())),
            (b"A", 1, Ok(())),
            (b".-_:", 128, Ok(())),
            // empty
            (b"", 128, Err(Rejection::Empty)),
            // max_length boundary
            (long_128.as_bytes(), 128, Ok(())),
            (
                long_129.as_bytes(),
                128,
                Err(Rejection::TooLong { len: 129, max: 128 }),
            ),
            (b"ab", 1, Err(Rejection::TooLong { len: 2, max: 1 })),
            (b"abcd", 4, Ok(())),
            (b"abcde", 4, Err(Rejection::TooLong { len: 5, max: 4 })),
            // CR / LF (log injection)
            (
                b"abc\r\nX-Admin: 1",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 3,
                    len: 15,
                }),
            ),
            (
                b"abc\n",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 3,
                    len: 4,
                }),
            ),
            (
                b"\rabc",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 0,
                    len: 4,
                }),
            ),
            // space, tab, quotes
            (
                b"ab c",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 2,
                    len: 4,
                }),
            ),
            (
                b"abc\t",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 3,
                    len: 4,
                }),
            ),
            (
                b"\"abc\"",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 0,
                    len: 5,
                }),
            ),
            (
                b"ab'c",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 2,
                    len: 4,
                }),
            ),
            // other punctuation
            (
                b"a/b",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3,
                }),
            ),
            (
                b"a,b",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3,
                }),
            ),
            (
                b"a;b",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3,
                }),
            ),
            (
                b"${jndi:x}",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 0,
                    len: 9,
                }),
            ),
            (
                b"a\0b",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3,
                }),
            ),
            (
                b"a\x7fb",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3,
                }),
            ),
            // non-ASCII (UTF-8 and raw bytes)
            (
                "idé".as_bytes(),
                128,
                Err(Rejection::ForbiddenByte {
                    position: 2,
                    len: 4,
                }),
            ),
            (
                b"id\xff",
                128,
                Err(Rejection::ForbiddenByte {
                    position: 2,
                    len: 3,
                }),
            ),
            // too long wins over a bad byte (no need to scan a huge value)
            (b"\n\n\n", 2, Err(Rejection::TooLong { len: 3, max: 2 })),
        ];
        for (value, max, want) in cases {
            assert_eq!(
                validate_id(value, *max),
                *want,
                "{:?} max={max}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn charset_is_exactly_the_documented_one() {
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| is_id_byte(b)).collect();
        let mut want: Vec<u8> =
            b"-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz".to_vec();
        want.sort_unstable();
        assert_eq!(allowed, want);
    }

    #[test]
    fn rejection_display_never_contains_the_value() {
        let value = b"evil\r\ninjected: yes";
        let r = validate_id(value, 128).unwrap_err();
        let shown = r.to_string();
        assert_eq!(shown, "forbidden character at byte 4 of a 19-byte value");
        assert!(!shown.contains("evil") && !shown.contains('\n'));
        assert_eq!(
            Rejection::Duplicated { copies: 3 }.to_string(),
            "header sent 3 times"
        );
        assert_eq!(Rejection::Empty.to_string(), "empty value");
        assert_eq!(
            Rejection::TooLong { len: 9, max: 8 }.to_string(),
            "value too long: 9 bytes, max 8"
        );
    }

    fn headers(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn plan(trust: bool, pairs: &[(&str, &[u8])]) -> Plan {
        let list = headers(pairs);
        plan_request(trust, 128, || single_value(list, "x-request-id"))
    }

    #[test]
    fn plan_keeps_a_single_valid_id() {
        assert_eq!(
            plan(true, &[(":path", b"/"), ("x-request-id", b"abc-123")]),
            Plan::Keep(b"abc-123".to_vec())
        );
    }

    #[test]
    fn plan_generates_when_absent() {
        assert_eq!(
            plan(true, &[(":path", b"/")]),
            Plan::Generate {
                outcome: Outcome::Generated,
                rejection: None,
                remove_copies: false
            }
        );
    }

    #[test]
    fn plan_replaces_invalid() {
        assert_eq!(
            plan(true, &[("x-request-id", b"a b")]),
            Plan::Generate {
                outcome: Outcome::ReplacedInvalid,
                rejection: Some(Rejection::ForbiddenByte {
                    position: 1,
                    len: 3
                }),
                remove_copies: false,
            }
        );
        assert_eq!(
            plan(true, &[("x-request-id", b"")]),
            Plan::Generate {
                outcome: Outcome::ReplacedInvalid,
                rejection: Some(Rejection::Empty),
                remove_copies: false,
            }
        );
    }

    #[test]
    fn plan_replaces_duplicates_even_if_each_is_valid() {
        assert_eq!(
            plan(
                true,
                &[
                    ("x-request-id", b"a"),
                    ("accept", b"*/*"),
                    ("X-Request-ID", b"a")
                ]
            ),
            Plan::Generate {
                outcome: Outcome::ReplacedInvalid,
                rejection: Some(Rejection::Duplicated { copies: 2 }),
                remove_copies: true,
            }
        );
    }

    #[test]
    fn untrusted_never_reads_headers() {
        let p = plan_request(false, 128, || panic!("must not read headers"));
        assert_eq!(
            p,
            Plan::Generate {
                outcome: Outcome::Generated,
                rejection: None,
                remove_copies: false
            }
        );
    }

    #[test]
    fn metric_names() {
        assert_eq!(
            Outcome::Generated.metric_name(),
            "gatewasm_correlation_id_generated"
        );
        assert_eq!(
            Outcome::Preserved.metric_name(),
            "gatewasm_correlation_id_preserved"
        );
        assert_eq!(
            Outcome::ReplacedInvalid.metric_name(),
            "gatewasm_correlation_id_replaced_invalid"
        );
    }
}
