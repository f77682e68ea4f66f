//! The post-link step every filter module goes through (`just build`): drop the exports of
//! per-stream callbacks the filter does not implement.
//!
//! Why: the Rust SDK (proxy-wasm 0.2.5) exports every `proxy_on_*` callback, and Envoy calls
//! every exported one for every stream — a V8 entry each, the largest fixed cost of a Wasm
//! filter. A callback that is not exported is skipped by the host exactly as the SDK's default
//! would answer (proxy-wasm-cpp-host: `Continue` for headers/body/trailers/metadata, `true` for
//! `on_done`, nothing for `on_log`), so removing the export of a callback the filter leaves at
//! its default changes no behaviour and saves the call.
//!
//! Which callbacks a filter implements is read from its source (`fn on_http_response_headers`
//! …), so a filter that starts implementing one keeps its export without anyone editing a list.
//! `proxy_on_context_create`, `proxy_on_request_headers` and `proxy_on_delete` always stay (the
//! SDK needs them to create and free the stream's context); root-context callbacks stay too.
//!
//! The rewrite is a plain byte-level edit of the export section (no other section changes, the
//! now-unreferenced SDK dispatch code stays), deterministic and idempotent.

/// (export, the SDK trait method whose override makes the filter need it).
pub const OPTIONAL_STREAM_CALLBACKS: &[(&str, &str)] = &[
    ("proxy_on_request_body", "on_http_request_body"),
    ("proxy_on_request_trailers", "on_http_request_trailers"),
    ("proxy_on_request_metadata", "on_http_request_metadata"),
    ("proxy_on_response_headers", "on_http_response_headers"),
    ("proxy_on_response_body", "on_http_response_body"),
    ("proxy_on_response_trailers", "on_http_response_trailers"),
    ("proxy_on_response_metadata", "on_http_response_metadata"),
    ("proxy_on_log", "on_log"),
    ("proxy_on_done", "on_done"),
];

/// The exports to drop for a filter whose Rust sources are `sources`: every optional stream
/// callback whose trait method none of them defines (`fn <method>` followed by `(`).
pub fn unused_callbacks<'a>(
    sources: impl IntoIterator<Item = &'a str> + Clone,
) -> Vec<&'static str> {
    OPTIONAL_STREAM_CALLBACKS
        .iter()
        .filter(|(_, method)| {
            !sources
                .clone()
                .into_iter()
                .any(|src| defines_fn(src, method))
        })
        .map(|(export, _)| *export)
        .collect()
}

fn defines_fn(src: &str, name: &str) -> bool {
    let needle = format!("fn {name}");
    src.match_indices(&needle).any(|(at, _)| {
        src[at + needle.len()..]
            .trim_start()
            .starts_with(['(', '<'])
    })
}

/// Why a module could not be rewritten.
#[derive(Debug, PartialEq, Eq)]
pub struct ModuleError(pub String);

impl std::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const EXPORT_SECTION: u8 = 7;

/// `module` without the exports named in `drop`; also returns the names actually removed.
pub fn remove_exports(module: &[u8], drop: &[&str]) -> Result<(Vec<u8>, Vec<String>), ModuleError> {
    let bad = |what: &str| ModuleError(format!("not a valid wasm module: {what}"));
    if module.len() < 8 || module[..4] != *b"\0asm" {
        return Err(bad("no wasm header"));
    }
    let mut out = module[..8].to_vec();
    let mut removed = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let (size, body_at) = read_u32(module, at + 1).ok_or_else(|| bad("section size"))?;
        let end = body_at
            .checked_add(size as usize)
            .filter(|end| *end <= module.len())
            .ok_or_else(|| bad("section past the end"))?;
        let body = &module[body_at..end];
        if id == EXPORT_SECTION {
            let (kept, names) = filter_exports(body, drop).ok_or_else(|| bad("export section"))?;
            removed = names;
            out.push(id);
            write_u32(&mut out, kept.len() as u32);
            out.extend_from_slice(&kept);
        } else {
            out.extend_from_slice(&module[at..end]);
        }
        at = end;
    }
    Ok((out, removed))
}

fn filter_exports(section: &[u8], drop: &[&str]) -> Option<(Vec<u8>, Vec<String>)> {
    let (count, mut at) = read_u32(section, 0)?;
    let mut kept = Vec::new();
    let mut kept_count = 0u32;
    let mut removed = Vec::new();
    for _ in 0..count {
        let start = at;
        let (len, name_at) = read_u32(section, at)?;
        let name_end = name_at.checked_add(len as usize)?;
        let name = std::str::from_utf8(section.get(name_at..name_end)?).ok()?;
        let _kind = *section.get(name_end)?;
        let (_index, next) = read_u32(section, name_end + 1)?;
        at = next;
        if drop.contains(&name) {
            removed.push(name.to_string());
        } else {
            kept.extend_from_slice(&section[start..at]);
            kept_count += 1;
        }
    }
    if at != section.len() {
        return None;
    }
    let mut out = Vec::with_capacity(kept.len() + 5);
    write_u32(&mut out, kept_count);
    out.extend_from_slice(&kept);
    Some((out, removed))
}

/// Unsigned LEB128 at `at`: (value, position after it).
fn read_u32(bytes: &[u8], mut at: usize) -> Option<(u32, usize)> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v, at));
        }
    }
    None
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A module with a type, two functions and three exports (built by hand: no wat here).
    fn module() -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // type section: one type () -> ()
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        // function section: two functions of type 0
        m.extend_from_slice(&[3, 3, 2, 0, 0]);
        // export section
        let mut exports = vec![3u8];
        for (name, index) in [("keep", 0u8), ("proxy_on_log", 1), ("proxy_on_done", 1)] {
            exports.push(name.len() as u8);
            exports.extend_from_slice(name.as_bytes());
            exports.extend_from_slice(&[0, index]);
        }
        m.push(7);
        m.push(exports.len() as u8);
        m.extend_from_slice(&exports);
        // code section: two empty bodies
        m.extend_from_slice(&[10, 7, 2, 2, 0, 0x0b, 2, 0, 0x0b]);
        m
    }

    #[test]
    fn removes_only_the_named_exports_and_is_idempotent() {
        let original = module();
        let (once, removed) = remove_exports(&original, &["proxy_on_log", "absent"]).unwrap();
        assert_eq!(removed, vec!["proxy_on_log".to_string()]);
        assert_eq!(once.len(), original.len() - (1 + 12 + 2));
        let text = String::from_utf8_lossy(&once);
        assert!(text.contains("keep") && text.contains("proxy_on_done"));
        assert!(!text.contains("proxy_on_log"));
        let (twice, removed) = remove_exports(&once, &["proxy_on_log"]).unwrap();
        assert_eq!((twice, removed.len()), (once, 0));
    }

    #[test]
    fn rejects_what_is_not_a_module() {
        assert!(remove_exports(b"hello", &[]).is_err());
        let mut cut = module();
        cut.truncate(20);
        assert!(remove_exports(&cut, &[]).is_err());
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0u32, 1, 127, 128, 300, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, v);
            assert_eq!(read_u32(&out, 0), Some((v, out.len())));
        }
    }

    #[test]
    fn callbacks_a_filter_defines_are_kept() {
        let src = "impl HttpContext for S {\n fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {}\n}\n// fn on_log is only mentioned here\n";
        let unused = unused_callbacks([src]);
        assert!(!unused.contains(&"proxy_on_response_headers"));
        assert!(unused.contains(&"proxy_on_log"));
        assert!(unused.contains(&"proxy_on_done"));
        assert_eq!(unused.len(), OPTIONAL_STREAM_CALLBACKS.len() - 1);
    }
}
