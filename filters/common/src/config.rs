//! Plugin configuration loading: JSON bytes (Envoy `StringValue`/`BytesValue`, or the JSON that
//! Envoy/Istio produce from a `Struct`/`pluginConfig`) → a typed config.
//!
//! Rules shared by every filter:
//! - absent, empty, all-whitespace or `null` configuration = `T::default()`;
//! - errors carry the path of the offending field (via `serde_path_to_error`), so a log line reads
//!   `max_length: invalid type: string "x", expected u32 at line 1 column 17`;
//! - filters put `#[serde(deny_unknown_fields)]` on their config structs, so a typo is an error
//!   (`unknown field `foo`, expected one of ...`) instead of a silently ignored setting.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration error: the field path it concerns (empty for the document itself) and what is
/// wrong with it. `Display` renders `path: message`, or just `message` when there is no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error about `path` (a field name such as `max_length`, or a dotted path).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The field path (`max_length`, `list[1].limit`; for an unknown field, the path of that
    /// field); empty when the error concerns the whole document (e.g. a JSON syntax error).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// True when `bytes` carries no configuration at all: absent, empty, whitespace, or JSON `null`.
pub fn is_empty_config(bytes: Option<&[u8]>) -> bool {
    match bytes {
        None => true,
        Some(bytes) => {
            let trimmed = bytes.trim_ascii();
            trimmed.is_empty() || trimmed == b"null"
        }
    }
}

/// Parse plugin configuration bytes into `T`. No configuration (see [`is_empty_config`]) gives
/// `T::default()`. Errors name the field path.
pub fn parse_config<T: DeserializeOwned + Default>(bytes: Option<&[u8]>) -> Result<T, ConfigError> {
    let bytes = match bytes {
        Some(bytes) if !is_empty_config(Some(bytes)) => bytes,
        _ => return Ok(T::default()),
    };
    // serde's derived structs also accept a JSON array (fields by position); only objects make
    // sense as configuration.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ConfigError::new(
            String::new(),
            "the configuration must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        // serde_path_to_error renders the root as "."; report it as "no path".
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, err.into_inner().to_string())
    })?;
    // Reject trailing garbage such as `{"a":1} x`.
    de.end()
        .map_err(|err| ConfigError::new(String::new(), err.to_string()))?;
    Ok(value)
}

/// `on_configure`'s parse step, the same in every filter: `parse` the configuration bytes; on
/// an error, log `<filter>: invalid plugin configuration: <error>` (the error names the field)
/// and give `None`, for the root context to return `false` (the host rejects the
/// configuration). `glue::configure` (Wasm only) reads the bytes from the host.
pub fn parse_or_log<T>(
    filter: &str,
    bytes: Option<&[u8]>,
    parse: impl FnOnce(Option<&[u8]>) -> Result<T, ConfigError>,
) -> Option<T> {
    match parse(bytes) {
        Ok(settings) => Some(settings),
        Err(err) => {
            log::error!("{filter}: invalid plugin configuration: {err}");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        limit: u32,
    }

    impl Default for Inner {
        fn default() -> Self {
            Self { limit: 7 }
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        name: String,
        inner: Inner,
        list: Vec<Inner>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "dflt".into(),
                inner: Inner::default(),
                list: Vec::new(),
            }
        }
    }

    #[test]
    fn no_configuration_means_defaults() {
        for bytes in [
            None,
            Some(&b""[..]),
            Some(b"  \n\t "),
            Some(b"null"),
            Some(b" null\n"),
        ] {
            assert_eq!(
                parse_config::<Sample>(bytes).unwrap(),
                Sample::default(),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn empty_object_means_defaults() {
        assert_eq!(
            parse_config::<Sample>(Some(b"{}")).unwrap(),
            Sample::default()
        );
    }

    #[test]
    fn parses_fields() {
        let got: Sample =
            parse_config(Some(br#"{"name":"x","inner":{"limit":3},"list":[{}]}"#)).unwrap();
        assert_eq!(got.name, "x");
        assert_eq!(got.inner.limit, 3);
        assert_eq!(got.list, vec![Inner::default()]);
    }

    #[test]
    fn type_error_names_the_field() {
        let err = parse_config::<Sample>(Some(br#"{"name": 5}"#)).unwrap_err();
        assert_eq!(err.path(), "name");
        assert!(
            err.to_string()
                .starts_with("name: invalid type: integer `5`"),
            "{err}"
        );
    }

    #[test]
    fn nested_error_has_full_path() {
        let err = parse_config::<Sample>(Some(br#"{"list":[{},{"limit":"x"}]}"#)).unwrap_err();
        assert_eq!(err.path(), "list[1].limit");
        assert!(
            err.to_string()
                .starts_with("list[1].limit: invalid type: string"),
            "{err}"
        );
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let err = parse_config::<Sample>(Some(br#"{"name":"x","nmae":"x"}"#)).unwrap_err();
        assert_eq!(err.path(), "nmae");
        assert!(
            err.to_string()
                .starts_with("nmae: unknown field `nmae`, expected one of"),
            "{err}"
        );
    }

    #[test]
    fn unknown_nested_field_has_path_and_name() {
        let err = parse_config::<Sample>(Some(br#"{"inner":{"limt":1}}"#)).unwrap_err();
        assert_eq!(err.path(), "inner.limt");
        assert!(
            err.to_string()
                .starts_with("inner.limt: unknown field `limt`"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_rejected() {
        for bad in [
            &b"{"[..],
            b"{\"name\":}",
            b"{} x",
            b"{}{}",
            b"\xff\xfe",
            b"{\"name\":\"\xff\"}",
        ] {
            let err = parse_config::<Sample>(Some(bad)).unwrap_err();
            assert!(!err.message().is_empty(), "{bad:?}");
        }
        for not_object in [&b"[]"[..], b"[\"x\"]", b"\"str\"", b"1", b"true"] {
            let err = parse_config::<Sample>(Some(not_object)).unwrap_err();
            assert_eq!(err.to_string(), "the configuration must be a JSON object");
        }
    }

    #[test]
    fn display_without_path_is_just_the_message() {
        assert_eq!(ConfigError::new("", "boom").to_string(), "boom");
        assert_eq!(ConfigError::new("a.b", "boom").to_string(), "a.b: boom");
        assert_eq!(ConfigError::new("a", "boom").message(), "boom");
    }

    #[test]
    fn parse_or_log_logs_the_field_and_gives_none() {
        let mut parsed = None;
        let logs = crate::test_log::capture(|| {
            parsed = Some(parse_or_log::<Sample>(
                "my-filter",
                Some(br#"{"inner":{"limit":"x"}}"#),
                parse_config,
            ));
        });
        assert_eq!(parsed, Some(None));
        assert_eq!(
            logs,
            vec![(
                log::Level::Error,
                "my-filter: invalid plugin configuration: inner.limit: invalid type: string \"x\", expected u32 at line 1 column 21".to_owned()
            )]
        );
    }

    #[test]
    fn parse_or_log_passes_good_configuration_through_silently() {
        let mut parsed = None;
        let logs = crate::test_log::capture(|| {
            parsed = parse_or_log::<Sample>("my-filter", Some(br#"{"name":"n"}"#), parse_config);
        });
        assert_eq!(parsed.map(|s| s.name), Some("n".to_owned()));
        assert!(logs.is_empty(), "{logs:?}");
        assert_eq!(
            parse_or_log::<Sample>("my-filter", None, parse_config),
            Some(Sample::default())
        );
    }
}
