//! The format-independent trace context: what the parsers extract ([`Extracted`]), what the
//! injectors write ([`Outgoing`]), and why a header was refused ([`Invalid`]).

use std::fmt;

/// A sampling decision as B3 knows it (W3C has only accept/deny: the `sampled` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// No decision: the receiver decides (B3 only).
    Defer,
    Deny,
    Accept,
    /// B3 debug (`d`, `X-B3-Flags: 1`): an emphasised accept.
    Debug,
}

impl Sampling {
    /// The decision as a boolean, if there is one.
    pub const fn decided(self) -> Option<bool> {
        match self {
            Self::Defer => None,
            Self::Deny => Some(false),
            Self::Accept | Self::Debug => Some(true),
        }
    }
}

/// A valid trace context read from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// Never zero. A 64-bit B3 trace id is stored left-padded (high 64 bits zero).
    pub trace_id: u128,
    /// The trace id came as 16 hex digits (64-bit B3); B3 output keeps that width.
    pub short_trace_id: bool,
    /// The caller's span id (W3C `parent-id`, B3 `SpanId`). Never zero.
    pub span_id: u64,
    /// B3 `ParentSpanId`, when the caller sent one.
    pub parent_span_id: Option<u64>,
    pub sampling: Sampling,
    /// W3C Level 2 `random-trace-id` flag (always false for B3, which cannot say).
    pub random: bool,
}

/// The context the filter sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// Never zero.
    pub trace_id: u128,
    pub short_trace_id: bool,
    /// The id the upstream sees as its parent (W3C `parent-id`, B3 `SpanId`). Never zero.
    pub span_id: u64,
    /// B3 `ParentSpanId`: the caller's span id when the gateway acts as a span.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    /// B3 debug; implies `sampled`.
    pub debug: bool,
    /// W3C `random-trace-id` flag.
    pub random: bool,
}

/// Why a header was refused. `Display` never includes the value (it may be an injection attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(Sampling::Defer.decided(), None);
        assert_eq!(Sampling::Deny.decided(), Some(false));
        assert_eq!(Sampling::Accept.decided(), Some(true));
        assert_eq!(Sampling::Debug.decided(), Some(true));
        assert_eq!(Invalid("too short").to_string(), "too short");
    }
}
