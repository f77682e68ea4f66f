//! B3 (openzipkin/b3-propagation): the single `b3` header and the `X-B3-*` multi headers.
//!
//! - TraceId: 16 or 32 lowercase hex digits; SpanId and ParentSpanId: 16. All-zero trace or span
//!   ids are refused (they are not ids in any tracer); an all-zero ParentSpanId counts as absent.
//! - Single: `{TraceId}-{SpanId}`, `…-{SamplingState}`, `…-{SamplingState}-{ParentSpanId}`, or the
//!   sampling state alone (`b3: 0`, `1` or `d`). SamplingState is `1`, `0` or `d` (debug).
//! - Multi: `X-B3-TraceId` and `X-B3-SpanId` are required together; `X-B3-Sampled` is `1`/`0`,
//!   leniently `true`/`false` (any case); absent means defer. `X-B3-Flags: 1` is debug (implies
//!   sampled, wins over `X-B3-Sampled`); `0` means no flag. `X-B3-Sampled` or `X-B3-Flags` alone
//!   carry only a sampling decision. When a header is repeated, the first value wins (B3 says so).
//! - Injection: single `{TraceId}-{SpanId}-{1|0|d}` (ParentSpanId only if configured); multi
//!   writes TraceId, SpanId, ParentSpanId when there is one, and `X-B3-Sampled` — or only
//!   `X-B3-Flags: 1` for debug ("don't also send X-B3-Sampled"). A 64-bit trace id stays 64-bit.
//!
//! Surrounding whitespace (SP/HTAB) of every value is ignored.

use crate::context::{Extracted, Invalid, Outgoing, Sampling};
use crate::ids::{Text, parse_hex_u64, parse_lower_hex, trim_ows};

pub const B3: &str = "b3";
pub const X_B3_TRACE_ID: &str = "x-b3-traceid";
pub const X_B3_SPAN_ID: &str = "x-b3-spanid";
pub const X_B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
pub const X_B3_FLAGS: &str = "x-b3-flags";

/// The longest single header the filter writes: 32 + 1 + 16 + 1 + 1 + 1 + 16.
pub const B3_SINGLE_MAX_LEN: usize = 68;

/// What a B3 header (set) carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Context {
    /// A trace context.
    Context(Extracted),
    /// Only a sampling decision (`b3: 0`, a lone `X-B3-Sampled: 0` …): no ids.
    SamplingOnly(Sampling),
}

/// A TraceId: 16 or 32 lowercase hex digits, not all zero. Returns (id, is 64-bit).
fn trace_id(s: &[u8]) -> Result<(u128, bool), Invalid> {
    let parsed = match s.len() {
        16 => parse_lower_hex(s, 16).map(|id| (id, true)),
        32 => parse_lower_hex(s, 32).map(|id| (id, false)),
        _ => None,
    };
    match parsed {
        None => Err(Invalid("the TraceId is not 16 or 32 lowercase hex digits")),
        Some((0, _)) => Err(Invalid("the TraceId is all zeroes")),
        Some(found) => Ok(found),
    }
}

fn span_id(s: &[u8]) -> Result<u64, Invalid> {
    match parse_hex_u64(s) {
        None => Err(Invalid("the SpanId is not 16 lowercase hex digits")),
        Some(0) => Err(Invalid("the SpanId is all zeroes")),
        Some(id) => Ok(id),
    }
}

fn parent_span_id(s: &[u8]) -> Result<Option<u64>, Invalid> {
    match parse_hex_u64(s) {
        None => Err(Invalid("the ParentSpanId is not 16 lowercase hex digits")),
        Some(0) => Ok(None),
        Some(id) => Ok(Some(id)),
    }
}

fn single_sampling(s: &[u8]) -> Result<Sampling, Invalid> {
    match s {
        b"1" => Ok(Sampling::Accept),
        b"0" => Ok(Sampling::Deny),
        b"d" => Ok(Sampling::Debug),
        _ => Err(Invalid("the sampling state is not 1, 0 or d")),
    }
}

/// Parse one `b3` single-header value.
pub fn parse_single(raw: &[u8]) -> Result<B3Context, Invalid> {
    let v = trim_ows(raw);
    if v.is_empty() {
        return Err(Invalid("empty value"));
    }
    if v.len() == 1 {
        return single_sampling(v).map(B3Context::SamplingOnly);
    }
    let mut fields = v.split(|&b| b == b'-');
    let (Some(trace), Some(span)) = (fields.next(), fields.next()) else {
        return Err(Invalid("fewer than 2 fields (TraceId-SpanId)"));
    };
    let sampling = fields.next();
    let parent = fields.next();
    if fields.next().is_some() {
        return Err(Invalid("more than 4 fields"));
    }
    let (trace_id, short_trace_id) = trace_id(trace)?;
    let span_id = span_id(span)?;
    let sampling = match sampling {
        None => Sampling::Defer,
        Some(s) => single_sampling(s)?,
    };
    let parent_span_id = match parent {
        None => None,
        Some(p) => parent_span_id(p)?,
    };
    Ok(B3Context::Context(Extracted {
        trace_id,
        short_trace_id,
        span_id,
        parent_span_id,
        sampling,
        random: false,
    }))
}

/// The first value of each `X-B3-*` header (absent = `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MultiHeaders<'a> {
    pub trace_id: Option<&'a [u8]>,
    pub span_id: Option<&'a [u8]>,
    pub parent_span_id: Option<&'a [u8]>,
    pub sampled: Option<&'a [u8]>,
    pub flags: Option<&'a [u8]>,
}

impl MultiHeaders<'_> {
    pub fn any_present(&self) -> bool {
        self.trace_id.is_some()
            || self.span_id.is_some()
            || self.parent_span_id.is_some()
            || self.sampled.is_some()
            || self.flags.is_some()
    }
}

fn multi_sampling(sampled: Option<&[u8]>, flags: Option<&[u8]>) -> Result<Sampling, Invalid> {
    let debug = match flags.map(trim_ows) {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => return Err(Invalid("X-B3-Flags is not 1 or 0")),
    };
    let sampling = match sampled.map(trim_ows) {
        None => Sampling::Defer,
        Some(b"1") => Sampling::Accept,
        Some(b"0") => Sampling::Deny,
        Some(v) if v.eq_ignore_ascii_case(b"true") => Sampling::Accept,
        Some(v) if v.eq_ignore_ascii_case(b"false") => Sampling::Deny,
        Some(_) => return Err(Invalid("X-B3-Sampled is not 1, 0, true or false")),
    };
    Ok(if debug { Sampling::Debug } else { sampling })
}

/// Parse the multi-header form. `Ok(None)` when no `X-B3-*` header is present.
pub fn parse_multi(h: &MultiHeaders<'_>) -> Result<Option<B3Context>, Invalid> {
    if !h.any_present() {
        return Ok(None);
    }
    let sampling = multi_sampling(h.sampled, h.flags)?;
    match (h.trace_id, h.span_id) {
        (None, None) if h.parent_span_id.is_none() => Ok(Some(B3Context::SamplingOnly(sampling))),
        (Some(trace), Some(span)) => {
            let (trace_id, short_trace_id) = trace_id(trim_ows(trace))?;
            let span_id = span_id(trim_ows(span))?;
            let parent_span_id = match h.parent_span_id {
                None => None,
                Some(p) => parent_span_id(trim_ows(p))?,
            };
            Ok(Some(B3Context::Context(Extracted {
                trace_id,
                short_trace_id,
                span_id,
                parent_span_id,
                sampling,
                random: false,
            })))
        }
        (Some(_), None) => Err(Invalid("X-B3-TraceId without X-B3-SpanId")),
        (None, Some(_)) => Err(Invalid("X-B3-SpanId without X-B3-TraceId")),
        (None, None) => Err(Invalid("X-B3-ParentSpanId without X-B3-TraceId")),
    }
}

/// The TraceId as B3 writes it: 16 digits for a 64-bit trace, else 32.
pub fn render_trace_id(out: &Outgoing) -> Text<32> {
    let mut t = Text::new();
    if out.short_trace_id {
        t.push_hex(out.trace_id, 16);
    } else {
        t.push_hex(out.trace_id, 32);
    }
    t
}

pub fn render_span_id(id: u64) -> Text<16> {
    let mut t = Text::new();
    t.push_hex(u128::from(id), 16);
    t
}

const fn sampling_state(out: &Outgoing) -> u8 {
    if out.debug {
        b'd'
    } else if out.sampled {
        b'1'
    } else {
        b'0'
    }
}

/// `b3: {TraceId}-{SpanId}-{1|0|d}[-{ParentSpanId}]`.
pub fn render_single(out: &Outgoing, with_parent: bool) -> Text<B3_SINGLE_MAX_LEN> {
    let mut t = Text::new();
    t.push_str(render_trace_id(out).as_bytes());
    t.push(b'-');
    t.push_hex(u128::from(out.span_id), 16);
    t.push(b'-');
    t.push(sampling_state(out));
    if let (true, Some(parent)) = (with_parent, out.parent_span_id) {
        t.push(b'-');
        t.push_hex(u128::from(parent), 16);
    }
    t
}

/// The `X-B3-Sampled` value for a non-debug context.
pub const fn sampled_value(out: &Outgoing) -> &'static [u8] {
    if out.sampled { b"1" } else { b"0" }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const T128: u128 = 0x80f198ee56343ba864fe8b2a57d3eff7;
    const SPAN: u64 = 0xe457b5a2e4d86bd1;
    const PARENT: u64 = 0x05e3ac9a4f6e3b90;

    fn ctx(
        trace_id: u128,
        short: bool,
        span_id: u64,
        parent: Option<u64>,
        sampling: Sampling,
    ) -> B3Context {
        B3Context::Context(Extracted {
            trace_id,
            short_trace_id: short,
            span_id,
            parent_span_id: parent,
            sampling,
            random: false,
        })
    }

    fn single(v: &str) -> Result<B3Context, Invalid> {
        parse_single(v.as_bytes())
    }

    #[test]
    fn single_header_valid() {
        let cases: &[(&str, B3Context)] = &[
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
                ctx(T128, false, SPAN, Some(PARENT), Sampling::Accept),
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0",
                ctx(T128, false, SPAN, None, Sampling::Deny),
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
                ctx(T128, false, SPAN, None, Sampling::Debug),
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1",
                ctx(T128, false, SPAN, None, Sampling::Defer),
            ),
            (
                "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
                ctx(0x64fe8b2a57d3eff7, true, SPAN, None, Sampling::Accept),
            ),
            (
                " 64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-0000000000000000\t",
                ctx(0x64fe8b2a57d3eff7, true, SPAN, None, Sampling::Accept),
            ),
            ("0", B3Context::SamplingOnly(Sampling::Deny)),
            ("1", B3Context::SamplingOnly(Sampling::Accept)),
            (" d ", B3Context::SamplingOnly(Sampling::Debug)),
        ];
        for (v, want) in cases {
            assert_eq!(single(v).unwrap(), *want, "{v:?}");
        }
    }

    #[test]
    fn single_header_invalid() {
        let cases: &[(&str, &str)] = &[
            ("", "empty value"),
            ("2", "the sampling state is not 1, 0 or d"),
            ("D", "the sampling state is not 1, 0 or d"),
            ("true", "fewer than 2 fields (TraceId-SpanId)"),
            (
                "80f198ee56343ba864fe8b2a57d3eff7",
                "fewer than 2 fields (TraceId-SpanId)",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
                "more than 4 fields",
            ),
            (
                "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
                "the TraceId is not 16 or 32 lowercase hex digits",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1-1",
                "the TraceId is not 16 or 32 lowercase hex digits",
            ),
            (
                "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
                "the TraceId is all zeroes",
            ),
            (
                "0000000000000000-e457b5a2e4d86bd1-1",
                "the TraceId is all zeroes",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
                "the SpanId is all zeroes",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd-1",
                "the SpanId is not 16 lowercase hex digits",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-true",
                "the sampling state is not 1, 0 or d",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-",
                "the sampling state is not 1, 0 or d",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
                "the ParentSpanId is not 16 lowercase hex digits",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-05e3ac9a4f6e3b90",
                "the sampling state is not 1, 0 or d",
            ),
            (
                "80f198ee56343ba864fe8b2a57d3eff7 - e457b5a2e4d86bd1-1",
                "the TraceId is not 16 or 32 lowercase hex digits",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(single(v).unwrap_err().0, *want, "{v:?}");
        }
    }

    fn multi(
        trace: Option<&str>,
        span: Option<&str>,
        parent: Option<&str>,
        sampled: Option<&str>,
        flags: Option<&str>,
    ) -> Result<Option<B3Context>, Invalid> {
        parse_multi(&MultiHeaders {
            trace_id: trace.map(str::as_bytes),
            span_id: span.map(str::as_bytes),
            parent_span_id: parent.map(str::as_bytes),
            sampled: sampled.map(str::as_bytes),
            flags: flags.map(str::as_bytes),
        })
    }

    #[test]
    fn multi_headers() {
        let t = Some("80f198ee56343ba864fe8b2a57d3eff7");
        let s = Some("e457b5a2e4d86bd1");
        let p = Some("05e3ac9a4f6e3b90");
        assert_eq!(multi(None, None, None, None, None).unwrap(), None);
        assert_eq!(
            multi(t, s, p, Some("1"), None).unwrap(),
            Some(ctx(T128, false, SPAN, Some(PARENT), Sampling::Accept))
        );
        assert_eq!(
            multi(t, s, None, None, None).unwrap(),
            Some(ctx(T128, false, SPAN, None, Sampling::Defer))
        );
        // Lenient true/false, any case.
        for (v, want) in [
            ("true", Sampling::Accept),
            ("True", Sampling::Accept),
            ("FALSE", Sampling::Deny),
            ("0", Sampling::Deny),
        ] {
            assert_eq!(
                multi(t, s, None, Some(v), None).unwrap(),
                Some(ctx(T128, false, SPAN, None, want)),
                "{v}"
            );
        }
        // Debug implies sampled and wins over X-B3-Sampled.
        for sampled in [None, Some("0"), Some("1")] {
            assert_eq!(
                multi(t, s, None, sampled, Some("1")).unwrap(),
                Some(ctx(T128, false, SPAN, None, Sampling::Debug))
            );
        }
        assert_eq!(
            multi(t, s, None, Some("1"), Some("0")).unwrap(),
            Some(ctx(T128, false, SPAN, None, Sampling::Accept))
        );
        // 64-bit trace id; all-zero parent is absent.
        assert_eq!(
            multi(
                Some("64fe8b2a57d3eff7"),
                s,
                Some("0000000000000000"),
                None,
                None
            )
            .unwrap(),
            Some(ctx(0x64fe8b2a57d3eff7, true, SPAN, None, Sampling::Defer))
        );
        // Sampling only.
        assert_eq!(
            multi(None, None, None, Some("0"), None).unwrap(),
            Some(B3Context::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(
            multi(None, None, None, None, Some("1")).unwrap(),
            Some(B3Context::SamplingOnly(Sampling::Debug))
        );
    }

    #[test]
    fn multi_headers_invalid() {
        let t = Some("80f198ee56343ba864fe8b2a57d3eff7");
        let s = Some("e457b5a2e4d86bd1");
        let cases: &[(Result<Option<B3Context>, Invalid>, &str)] = &[
            (
                multi(t, None, None, None, None),
                "X-B3-TraceId without X-B3-SpanId",
            ),
            (
                multi(None, s, None, None, None),
                "X-B3-SpanId without X-B3-TraceId",
            ),
            (
                multi(None, None, Some("05e3ac9a4f6e3b90"), None, None),
                "X-B3-ParentSpanId without X-B3-TraceId",
            ),
            (
                multi(t, s, None, Some("yes"), None),
                "X-B3-Sampled is not 1, 0, true or false",
            ),
            (
                multi(t, s, None, Some("d"), None),
                "X-B3-Sampled is not 1, 0, true or false",
            ),
            (
                multi(t, s, None, None, Some("2")),
                "X-B3-Flags is not 1 or 0",
            ),
            (
                multi(Some("80f198ee56343ba864fe8b2a57d3eff"), s, None, None, None),
                "the TraceId is not 16 or 32 lowercase hex digits",
            ),
            (
                multi(t, Some("E457B5A2E4D86BD1"), None, None, None),
                "the SpanId is not 16 lowercase hex digits",
            ),
            (
                multi(t, s, Some("x"), None, None),
                "the ParentSpanId is not 16 lowercase hex digits",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap_err().0, *want);
        }
    }

    fn out(short: bool, sampled: bool, debug: bool, parent: Option<u64>) -> Outgoing {
        Outgoing {
            trace_id: if short { 0x64fe8b2a57d3eff7 } else { T128 },
            short_trace_id: short,
            span_id: SPAN,
            parent_span_id: parent,
            sampled,
            debug,
            random: false,
        }
    }

    #[test]
    fn rendering() {
        let o = out(false, true, false, Some(PARENT));
        assert_eq!(
            render_single(&o, false).as_bytes(),
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
        );
        let full = render_single(&o, true);
        assert_eq!(
            full.as_bytes(),
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        );
        assert_eq!(full.len(), B3_SINGLE_MAX_LEN);
        assert_eq!(
            render_single(&out(true, false, false, None), true).as_bytes(),
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0"
        );
        assert_eq!(
            render_single(&out(false, true, true, None), false).as_bytes(),
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d"
        );
        assert_eq!(
            render_trace_id(&out(true, true, false, None)).as_bytes(),
            b"64fe8b2a57d3eff7"
        );
        assert_eq!(render_span_id(1).as_bytes(), b"0000000000000001");
        assert_eq!(sampled_value(&out(false, false, false, None)), b"0");
        // What we render parses back to the same context.
        let parsed = parse_single(full.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            ctx(T128, false, SPAN, Some(PARENT), Sampling::Accept)
        );
    }
}
