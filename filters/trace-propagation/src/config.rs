//! The filter's configuration: the JSON shape ([`TracePropagationConfig`]) and its validated,
//! compiled form ([`Settings`]), built once in `on_configure`.

use gatewasm_common::headers::normalize_header_name;
use gatewasm_common::{ConfigError, parse_config};
use serde::{Deserialize, Serialize};

/// Default and smallest `tracestate_max_length`: W3C Trace Context says vendors SHOULD propagate
/// at least 512 characters of a combined `tracestate`.
pub const DEFAULT_TRACESTATE_MAX_LENGTH: u32 = 512;
/// Largest accepted `tracestate_max_length`. The longest *valid* `tracestate` is
/// 32 × (256 + 1 + 256) + 31 = 16 447 bytes, so this never truncates a valid one.
pub const MAX_TRACESTATE_MAX_LENGTH: u32 = 16_447;

/// Configuration of the trace-propagation filter. JSON, snake_case, every field optional; unknown
/// fields are rejected. An empty or absent configuration means all defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TracePropagationConfig {
    /// Formats read from the request, in this order; the first one that yields a valid trace
    /// context wins. An empty list never continues an incoming trace (every request starts a
    /// new one). No duplicates.
    #[cfg_attr(test, schemars(extend("uniqueItems" = true)))]
    pub extract: Vec<Format>,

    /// Formats written to the upstream request (at least one, no duplicates). Headers of formats
    /// not listed here are left as they came, unless `clear_extracted` is set.
    #[cfg_attr(test, schemars(length(min = 1), extend("uniqueItems" = true)))]
    pub inject: Vec<Format>,

    /// `span`: the gateway acts as a span — the upstream request carries the same trace id and a
    /// new parent/span id, a different one for every request. `passthrough`: validate and convert
    /// only; the ids are forwarded unchanged.
    pub role: Role,

    /// How the sampled flag is decided.
    pub sampling: SamplingConfig,

    /// Remove the incoming headers of every format in `extract` that is not in `inject` (so the
    /// upstream never sees a stale context in another format).
    pub clear_extracted: bool,

    /// Response header that echoes the trace id to the client (for example `x-trace-id`), or
    /// none. Must be a valid HTTP header name; pseudo-headers and connection/framing headers are
    /// rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        test,
        schemars(length(min = 1), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub response_header: Option<String>,

    /// Also send the ParentSpanId as the fourth field of the single `b3` header. Off by default,
    /// as OpenTelemetry recommends; the multi-header form always carries `X-B3-ParentSpanId`
    /// when there is a parent.
    pub b3_single_parent_span_id: bool,

    /// Longest `tracestate` (bytes, combined) sent upstream; longer ones are truncated by whole
    /// entries as the W3C specification says (entries over 128 characters first, then from the
    /// right). 512..=16447.
    #[cfg_attr(test, schemars(range(min = 512, max = 16447)))]
    pub tracestate_max_length: u32,
}

impl Default for TracePropagationConfig {
    fn default() -> Self {
        Self {
            extract: vec![Format::W3c, Format::B3, Format::B3Multi],
            inject: vec![Format::W3c],
            role: Role::default(),
            sampling: SamplingConfig::default(),
            clear_extracted: false,
            response_header: None,
            b3_single_parent_span_id: false,
            tracestate_max_length: DEFAULT_TRACESTATE_MAX_LENGTH,
        }
    }
}

/// A propagation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub enum Format {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    #[serde(rename = "w3c")]
    W3c,
    /// B3 single header: `b3: {TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`.
    #[serde(rename = "b3")]
    B3,
    /// B3 multiple headers: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`, `X-B3-Sampled`,
    /// `X-B3-Flags`.
    #[serde(rename = "b3multi")]
    B3Multi,
}

impl Format {
    /// The name used in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
            Self::B3Multi => "b3multi",
        }
    }
}

/// What the gateway is in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A span of its own: same trace id, a new parent/span id for every upstream request.
    #[default]
    Span,
    /// Validate and convert only; ids unchanged.
    Passthrough,
}

/// Sampling of the traces the filter starts (and, with `respect_incoming: false`, of every trace).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Probability (0.0–1.0) that a trace the filter decides on is sampled: new traces, incoming
    /// contexts without a decision (B3 "defer"), and every trace when `respect_incoming` is false.
    #[cfg_attr(test, schemars(range(min = 0.0, max = 1.0)))]
    pub ratio: f64,

    /// Keep the sampling decision of a valid incoming context (including B3 debug). `false`
    /// re-decides every request with `ratio` and drops the B3 debug flag (use this at an edge that
    /// must not let clients force tracing).
    pub respect_incoming: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            respect_incoming: true,
        }
    }
}

/// A set of formats (for `inject` and the clear rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FormatSet {
    pub w3c: bool,
    pub b3: bool,
    pub b3multi: bool,
}

impl FormatSet {
    pub const fn contains(self, format: Format) -> bool {
        match format {
            Format::W3c => self.w3c,
            Format::B3 => self.b3,
            Format::B3Multi => self.b3multi,
        }
    }

    fn insert(&mut self, format: Format) -> bool {
        let slot = match format {
            Format::W3c => &mut self.w3c,
            Format::B3 => &mut self.b3,
            Format::B3Multi => &mut self.b3multi,
        };
        let fresh = !*slot;
        *slot = true;
        fresh
    }
}

/// The validated configuration the HTTP contexts use.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Extraction order (no duplicates, at most 3).
    pub extract: Vec<Format>,
    pub extract_set: FormatSet,
    /// Never empty.
    pub inject: FormatSet,
    pub role: Role,
    /// `ratio` as it was configured (for display).
    pub ratio: f64,
    /// A trace is sampled when a uniform 53-bit draw is `< sample_threshold` (`ratio × 2^53`).
    pub sample_threshold: u64,
    pub respect_incoming: bool,
    pub clear_extracted: bool,
    /// Lowercased response header name, if the trace id is echoed.
    pub response_header: Option<String>,
    pub b3_single_parent_span_id: bool,
    /// In `DEFAULT_TRACESTATE_MAX_LENGTH..=MAX_TRACESTATE_MAX_LENGTH`.
    pub tracestate_max_length: usize,
}

/// 2^53: the number of distinct values of a 53-bit draw.
const DRAW_RANGE: f64 = 9_007_199_254_740_992.0;

/// `ratio` (already checked to be in 0..=1) → the 53-bit threshold.
fn sample_threshold(ratio: f64) -> u64 {
    // Exact for 0 and 1; the float→int cast saturates and cannot panic.
    (ratio * DRAW_RANGE) as u64
}

impl Default for Settings {
    fn default() -> Self {
        // The default configuration always compiles; fall back field by field just in case.
        TracePropagationConfig::default()
            .compile()
            .unwrap_or_else(|_| Self {
                extract: vec![Format::W3c, Format::B3, Format::B3Multi],
                extract_set: FormatSet {
                    w3c: true,
                    b3: true,
                    b3multi: true,
                },
                inject: FormatSet {
                    w3c: true,
                    ..FormatSet::default()
                },
                role: Role::Span,
                ratio: 1.0,
                sample_threshold: sample_threshold(1.0),
                respect_incoming: true,
                clear_extracted: false,
                response_header: None,
                b3_single_parent_span_id: false,
                tracestate_max_length: DEFAULT_TRACESTATE_MAX_LENGTH as usize,
            })
    }
}

fn format_set(field: &str, formats: &[Format]) -> Result<FormatSet, ConfigError> {
    let mut set = FormatSet::default();
    for format in formats {
        if !set.insert(*format) {
            return Err(ConfigError::new(
                field,
                format!("\"{}\" is listed more than once", format.name()),
            ));
        }
    }
    Ok(set)
}

impl TracePropagationConfig {
    /// Validate and compile. Errors name the field.
    pub fn compile(self) -> Result<Settings, ConfigError> {
        let extract_set = format_set("extract", &self.extract)?;
        if self.inject.is_empty() {
            return Err(ConfigError::new(
                "inject",
                "must name at least one format (\"w3c\", \"b3\", \"b3multi\")",
            ));
        }
        let inject = format_set("inject", &self.inject)?;
        let ratio = self.sampling.ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::new(
                "sampling.ratio",
                format!("must be between 0.0 and 1.0, got {ratio}"),
            ));
        }
        let response_header = match self.response_header {
            None => None,
            Some(name) => Some(
                normalize_header_name(&name)
                    .map_err(|e| ConfigError::new("response_header", e.to_string()))?,
            ),
        };
        if !(DEFAULT_TRACESTATE_MAX_LENGTH..=MAX_TRACESTATE_MAX_LENGTH)
            .contains(&self.tracestate_max_length)
        {
            return Err(ConfigError::new(
                "tracestate_max_length",
                format!(
                    "must be between {DEFAULT_TRACESTATE_MAX_LENGTH} and \
                     {MAX_TRACESTATE_MAX_LENGTH}, got {}",
                    self.tracestate_max_length
                ),
            ));
        }
        Ok(Settings {
            extract: self.extract,
            extract_set,
            inject,
            role: self.role,
            ratio,
            sample_threshold: sample_threshold(ratio),
            respect_incoming: self.sampling.respect_incoming,
            clear_extracted: self.clear_extracted,
            response_header,
            b3_single_parent_span_id: self.b3_single_parent_span_id,
            tracestate_max_length: self.tracestate_max_length as usize,
        })
    }
}

/// Plugin configuration bytes → [`Settings`]. No configuration = defaults.
pub fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
    parse_config::<TracePropagationConfig>(bytes)?.compile()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        parse_settings(Some(json.as_bytes()))
    }

    fn all_formats() -> FormatSet {
        FormatSet {
            w3c: true,
            b3: true,
            b3multi: true,
        }
    }

    #[test]
    fn defaults() {
        let want = Settings {
            extract: vec![Format::W3c, Format::B3, Format::B3Multi],
            extract_set: all_formats(),
            inject: FormatSet {
                w3c: true,
                b3: false,
                b3multi: false,
            },
            role: Role::Span,
            ratio: 1.0,
            sample_threshold: 1 << 53,
            respect_incoming: true,
            clear_extracted: false,
            response_header: None,
            b3_single_parent_span_id: false,
            tracestate_max_length: 512,
        };
        assert_eq!(Settings::default(), want);
        for empty in [
            None,
            Some(&b""[..]),
            Some(b" \n"),
            Some(b"null"),
            Some(b"{}"),
        ] {
            assert_eq!(parse_settings(empty).unwrap(), want, "{empty:?}");
        }
    }

    #[test]
    fn every_field() {
        let s = parse(
            r#"{"extract":["b3multi","w3c"],"inject":["b3","b3multi","w3c"],"role":"passthrough",
                "sampling":{"ratio":0.25,"respect_incoming":false},"clear_extracted":true,
                "response_header":"X-Trace-ID","b3_single_parent_span_id":true,
                "tracestate_max_length":1024}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Settings {
                extract: vec![Format::B3Multi, Format::W3c],
                extract_set: FormatSet {
                    w3c: true,
                    b3: false,
                    b3multi: true
                },
                inject: all_formats(),
                role: Role::Passthrough,
                ratio: 0.25,
                sample_threshold: 1 << 51,
                respect_incoming: false,
                clear_extracted: true,
                response_header: Some("x-trace-id".into()),
                b3_single_parent_span_id: true,
                tracestate_max_length: 1024,
            }
        );
    }

    #[test]
    fn empty_extract_is_allowed() {
        let s = parse(r#"{"extract":[]}"#).unwrap();
        assert!(s.extract.is_empty());
        assert_eq!(s.extract_set, FormatSet::default());
    }

    #[test]
    fn sampling_defaults_per_field() {
        let s = parse(r#"{"sampling":{"ratio":0}}"#).unwrap();
        assert_eq!(
            (s.ratio, s.sample_threshold, s.respect_incoming),
            (0.0, 0, true)
        );
        let s = parse(r#"{"sampling":{"respect_incoming":false}}"#).unwrap();
        assert_eq!((s.ratio, s.respect_incoming), (1.0, false));
    }

    #[test]
    fn bad_formats_are_named() {
        let err = parse(r#"{"extract":["w3c","zipkin"]}"#).unwrap_err();
        assert_eq!(err.path(), "extract[1]");
        assert!(
            err.to_string().contains("unknown variant `zipkin`"),
            "{err}"
        );
        let err = parse(r#"{"inject":["W3C"]}"#).unwrap_err();
        assert_eq!(err.path(), "inject[0]");
        let err = parse(r#"{"extract":["b3","w3c","b3"]}"#).unwrap_err();
        assert_eq!(err.to_string(), "extract: \"b3\" is listed more than once");
        let err = parse(r#"{"inject":["w3c","w3c"]}"#).unwrap_err();
        assert_eq!(err.to_string(), "inject: \"w3c\" is listed more than once");
        let err = parse(r#"{"inject":[]}"#).unwrap_err();
        assert_eq!(err.path(), "inject");
        let err = parse(r#"{"inject":"w3c"}"#).unwrap_err();
        assert_eq!(err.path(), "inject");
    }

    #[test]
    fn bad_role() {
        let err = parse(r#"{"role":"proxy"}"#).unwrap_err();
        assert_eq!(err.path(), "role");
        assert!(
            err.to_string()
                .contains("unknown variant `proxy`, expected `span` or `passthrough`"),
            "{err}"
        );
    }

    #[test]
    fn ratio_range() {
        for ok in ["0", "0.0", "0.5", "1", "1.0"] {
            parse(&format!(r#"{{"sampling":{{"ratio":{ok}}}}}"#)).unwrap();
        }
        for bad in ["-0.1", "1.0001", "2", "-1"] {
            let err = parse(&format!(r#"{{"sampling":{{"ratio":{bad}}}}}"#)).unwrap_err();
            assert_eq!(err.path(), "sampling.ratio", "{bad}");
            assert!(
                err.to_string().contains("must be between 0.0 and 1.0"),
                "{err}"
            );
        }
        let err = parse(r#"{"sampling":{"ratio":"0.5"}}"#).unwrap_err();
        assert_eq!(err.path(), "sampling.ratio");
        let err = parse(r#"{"sampling":{"rate":0.5}}"#).unwrap_err();
        assert_eq!(err.path(), "sampling.rate");
    }

    #[test]
    fn thresholds() {
        assert_eq!(sample_threshold(0.0), 0);
        assert_eq!(sample_threshold(1.0), 1 << 53);
        assert_eq!(sample_threshold(0.5), 1 << 52);
    }

    #[test]
    fn bad_response_header() {
        for bad in ["", ":status", "x trace", "content-length", "x-é"] {
            let json = serde_json::json!({ "response_header": bad }).to_string();
            let err = parse(&json).unwrap_err();
            assert_eq!(err.path(), "response_header", "{bad:?}");
        }
        assert_eq!(
            parse(r#"{"response_header":null}"#)
                .unwrap()
                .response_header,
            None
        );
    }

    #[test]
    fn tracestate_max_length_range() {
        for ok in [512, 4096, 16447] {
            let s = parse(&format!(r#"{{"tracestate_max_length":{ok}}}"#)).unwrap();
            assert_eq!(s.tracestate_max_length, ok);
        }
        for bad in [0, 511, 16448] {
            let err = parse(&format!(r#"{{"tracestate_max_length":{bad}}}"#)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("tracestate_max_length: must be between 512 and 16447, got {bad}")
            );
        }
    }

    #[test]
    fn unknown_fields_and_types() {
        let err = parse(r#"{"propagation":{}}"#).unwrap_err();
        assert_eq!(err.path(), "propagation");
        assert!(
            err.to_string().contains("unknown field `propagation`"),
            "{err}"
        );
        for field in ["clear_extracted", "b3_single_parent_span_id"] {
            let err = parse(&format!(r#"{{"{field}":"yes"}}"#)).unwrap_err();
            assert_eq!(err.path(), field);
        }
        assert!(parse("[]").is_err());
    }

    /// The committed `config.schema.json` must equal what schemars generates.
    /// Regenerate with `UPDATE_SCHEMA=1 cargo test -p trace-propagation`.
    #[test]
    fn schema_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        gatewasm_common::schema::check_schema_file::<TracePropagationConfig>(&path).unwrap();
    }

    #[test]
    fn schema_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(
            &gatewasm_common::schema::schema_json::<TracePropagationConfig>().unwrap(),
        )
        .unwrap();
        let props = &schema["properties"];
        assert_eq!(
            props["extract"]["default"],
            serde_json::json!(["w3c", "b3", "b3multi"])
        );
        assert_eq!(props["inject"]["default"], serde_json::json!(["w3c"]));
        assert_eq!(props["role"]["default"], "span");
        assert_eq!(props["tracestate_max_length"]["default"], 512);
        assert_eq!(props["tracestate_max_length"]["maximum"], 16447);
        assert_eq!(schema["additionalProperties"], false);
        let sampling = &schema["$defs"]["SamplingConfig"];
        assert_eq!(sampling["properties"]["ratio"]["maximum"], 1.0);
        assert_eq!(sampling["additionalProperties"], false);
    }
}
