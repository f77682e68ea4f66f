//! The filter's configuration: the JSON shape ([`CorrelationIdConfig`]) and its validated,
//! compiled form ([`Settings`]), built once in `on_configure`.

use gatewasm_common::headers::normalize_header_name;
use gatewasm_common::{ConfigError, parse_config};
use serde::{Deserialize, Serialize};

/// Default correlation header.
pub const DEFAULT_HEADER: &str = "x-request-id";
/// Default longest incoming ID (bytes) that is kept.
pub const DEFAULT_MAX_LENGTH: u32 = 128;
/// Largest accepted `max_length`.
pub const MAX_LENGTH_LIMIT: u32 = 1024;

/// Configuration of the correlation-id filter. JSON, snake_case, every field optional; unknown
/// fields are rejected. An empty or absent configuration means all defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationIdConfig {
    /// Request header that carries the correlation ID. Matched case-insensitively (stored
    /// lowercased). Must be a valid HTTP header name; pseudo-headers (`:path`, ...) and
    /// connection/framing headers (`host`, `content-length`, ...) are rejected.
    #[cfg_attr(
        test,
        schemars(length(min = 1), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub header: String,

    /// How new IDs are made: `uuid4` (random) or `uuid7` (Unix-millisecond timestamp + random,
    /// time-sortable, monotonic within a VM; reveals the creation time).
    pub generator: Generator,

    /// Keep a valid incoming ID. `false` always replaces it with a fresh one (for the edge).
    pub trust_incoming: bool,

    /// Longest incoming ID (in bytes) that is kept; longer ones are replaced. 1..=1024.
    #[cfg_attr(test, schemars(range(min = 1, max = 1024)))]
    pub max_length: u32,

    /// Set the ID on every response (including local replies from later filters).
    pub echo_downstream: bool,

    /// Response header for the echoed ID; defaults to `header`. Same rules as `header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        test,
        schemars(length(min = 1), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub response_header: Option<String>,
}

impl Default for CorrelationIdConfig {
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER.to_owned(),
            generator: Generator::default(),
            trust_incoming: true,
            max_length: DEFAULT_MAX_LENGTH,
            echo_downstream: true,
            response_header: None,
        }
    }
}

/// ID generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// RFC 9562 version 4: 122 random bits.
    #[default]
    Uuid4,
    /// RFC 9562 version 7: 48-bit Unix milliseconds + 74 random/counter bits.
    Uuid7,
}

/// The validated configuration the HTTP contexts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Lowercased request header name.
    pub header: String,
    /// Lowercased response header name.
    pub response_header: String,
    pub generator: Generator,
    pub trust_incoming: bool,
    /// In 1..=[`MAX_LENGTH_LIMIT`].
    pub max_length: usize,
    pub echo_downstream: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER.to_owned(),
            response_header: DEFAULT_HEADER.to_owned(),
            generator: Generator::default(),
            trust_incoming: true,
            max_length: DEFAULT_MAX_LENGTH as usize,
            echo_downstream: true,
        }
    }
}

impl CorrelationIdConfig {
    /// Validate and compile. Errors name the field.
    pub fn compile(self) -> Result<Settings, ConfigError> {
        let header = normalize_header_name(&self.header)
            .map_err(|e| ConfigError::new("header", e.to_string()))?;
        let response_header = match self.response_header {
            None => header.clone(),
            Some(name) => normalize_header_name(&name)
                .map_err(|e| ConfigError::new("response_header", e.to_string()))?,
        };
        if !(1..=MAX_LENGTH_LIMIT).contains(&self.max_length) {
            return Err(ConfigError::new(
                "max_length",
                format!(
                    "must be between 1 and {MAX_LENGTH_LIMIT}, got {}",
                    self.max_length
                ),
            ));
        }
        Ok(Settings {
            header,
            response_header,
            generator: self.generator,
            trust_incoming: self.trust_incoming,
            max_length: self.max_length as usize,
            echo_downstream: self.echo_downstream,
        })
    }
}

/// Plugin configuration bytes → [`Settings`]. No configuration = defaults.
pub fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
    parse_config::<CorrelationIdConfig>(bytes)?.compile()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        parse_settings(Some(json.as_bytes()))
    }

    #[test]
    fn defaults() {
        let want = Settings {
            header: "x-request-id".into(),
            response_header: "x-request-id".into(),
            generator: Generator::Uuid4,
            trust_incoming: true,
            max_length: 128,
            echo_downstream: true,
        };
        assert_eq!(Settings::default(), want);
        assert_eq!(CorrelationIdConfig::default().compile().unwrap(), want);
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
            r#"{"header":"X-Correlation-ID","generator":"uuid7","trust_incoming":false,
                "max_length":64,"echo_downstream":false,"response_header":"X-Trace-Ref"}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Settings {
                header: "x-correlation-id".into(),
                response_header: "x-trace-ref".into(),
                generator: Generator::Uuid7,
                trust_incoming: false,
                max_length: 64,
                echo_downstream: false,
            }
        );
    }

    #[test]
    fn response_header_defaults_to_header() {
        let s = parse(r#"{"header":"Kong-Request-ID"}"#).unwrap();
        assert_eq!(s.response_header, "kong-request-id");
        let s = parse(r#"{"header":"a","response_header":null}"#).unwrap();
        assert_eq!(s.response_header, "a");
    }

    #[test]
    fn unknown_field_is_rejected_and_named() {
        let err = parse(r#"{"header":"x-id","foo":1}"#).unwrap_err();
        assert_eq!(err.path(), "foo");
        let msg = err.to_string();
        assert!(
            msg.starts_with("foo: unknown field `foo`, expected one of"),
            "{msg}"
        );
        // camelCase is not snake_case:
        let err = parse(r#"{"maxLength":5}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `maxLength`"),
            "{err}"
        );
    }

    #[test]
    fn bad_generator() {
        let err = parse(r#"{"generator":"uuid1"}"#).unwrap_err();
        assert_eq!(err.path(), "generator");
        assert!(
            err.to_string()
                .contains("unknown variant `uuid1`, expected `uuid4` or `uuid7`"),
            "{err}"
        );
        let err = parse(r#"{"generator":"UUID4"}"#).unwrap_err();
        assert_eq!(err.path(), "generator");
    }

    #[test]
    fn bad_header_names() {
        for bad in [
            "",
            ":path",
            "x request id",
            "x-id\r\nevil: 1",
            "host",
            "Content-Length",
            "x-é",
        ] {
            let json = serde_json::json!({ "header": bad }).to_string();
            let err = parse(&json).unwrap_err();
            assert_eq!(err.path(), "header", "{bad:?}");
            assert!(err.to_string().starts_with("header: "), "{err}");
            assert!(!err.to_string().contains('\n'));
            let json = serde_json::json!({ "response_header": bad }).to_string();
            assert_eq!(
                parse(&json).unwrap_err().path(),
                "response_header",
                "{bad:?}"
            );
        }
        let err = parse(r#"{"header":5}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("header: invalid type: integer `5`, expected a string"),
            "{err}"
        );
    }

    #[test]
    fn max_length_range() {
        assert_eq!(parse(r#"{"max_length":1}"#).unwrap().max_length, 1);
        assert_eq!(parse(r#"{"max_length":1024}"#).unwrap().max_length, 1024);
        for bad in ["0", "1025", "4294967295"] {
            let err = parse(&format!(r#"{{"max_length":{bad}}}"#)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("max_length: must be between 1 and 1024, got {bad}")
            );
        }
        for bad in ["-1", "1.5", "\"64\"", "4294967296", "null"] {
            let err = parse(&format!(r#"{{"max_length":{bad}}}"#)).unwrap_err();
            assert_eq!(err.path(), "max_length", "{bad}");
        }
        let err = parse(r#"{"max_length":"x"}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("max_length: invalid type: string \"x\", expected u32"),
            "{err}"
        );
    }

    #[test]
    fn bad_booleans() {
        for field in ["trust_incoming", "echo_downstream"] {
            let err = parse(&format!(r#"{{"{field}":"yes"}}"#)).unwrap_err();
            assert_eq!(err.path(), field);
        }
    }

    #[test]
    fn not_an_object() {
        assert!(parse("[]").is_err());
        assert!(parse("\"x-request-id\"").is_err());
        assert!(parse("{").is_err());
    }

    /// The committed `config.schema.json` must equal what schemars generates.
    /// Regenerate with `UPDATE_SCHEMA=1 cargo test -p correlation-id`.
    #[test]
    fn schema_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.schema.json");
        gatewasm_common::schema::check_schema_file::<CorrelationIdConfig>(&path).unwrap();
    }

    #[test]
    fn schema_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(
            &gatewasm_common::schema::schema_json::<CorrelationIdConfig>().unwrap(),
        )
        .unwrap();
        let props = &schema["properties"];
        assert_eq!(props["header"]["default"], "x-request-id");
        assert_eq!(props["max_length"]["default"], 128);
        assert_eq!(props["max_length"]["maximum"], 1024);
        assert_eq!(schema["additionalProperties"], false);
    }
}
