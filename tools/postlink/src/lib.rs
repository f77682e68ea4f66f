//! The post-link step every filter module goes through (`just build`): drop the exports of
//! per-stream callbacks the filter does not implement, and the custom sections (the symbol names
//! the step read among them).
//!
//! Why: the Rust SDK (proxy-wasm 0.2.5) exports every `proxy_on_*` callback, and Envoy calls
//! every exported one for every stream — a VM entry each (1.4–2.0k Envoy instructions, README
//! "Instruction counts"). A callback that is not exported is skipped by the host exactly as the
//! SDK's default would answer (proxy-wasm-cpp-host: `Continue` for headers/body/trailers/
//! metadata, `true` for `on_done`, nothing for `on_log`), so removing the export of a callback
//! the filter leaves at its default changes no behaviour and saves the call.
//!
//! Which callbacks a filter implements is read from the module itself: the release profile keeps
//! the linker's name section (`strip = "debuginfo"`), where an override is a function named
//! `<crate::Type as proxy_wasm::traits::HttpContext>::on_http_response_headers` and an SDK
//! default is `proxy_wasm::traits::HttpContext::on_http_response_headers`. An override cannot
//! vanish into its caller: the SDK calls it through the context's vtable, so the function stays
//! (with its name) as long as the module can call it. [`trim_stream_exports`] then writes the
//! module without those exports and without custom sections (`name`, `producers`,
//! `target_features`; none is read at run time), byte for byte what `strip = true` shipped.
//!
//! `proxy_on_context_create`, `proxy_on_request_headers` and `proxy_on_delete` always stay (the
//! SDK needs them to create and free the stream's context); root-context callbacks stay too.
//! Every other section is copied byte for byte, so the step is deterministic (image digests stay
//! reproducible).

use std::collections::BTreeSet;
use std::fmt;

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, KnownCustom, Name, Parser, Payload};

/// (export, the SDK trait method whose override makes the filter need it). `on_log` and
/// `on_done` exist on the root context as well; an override on either keeps the export, which
/// serves both.
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

/// Every filter overrides this one; not finding it means the names are missing or wrong.
const REQUIRED_OVERRIDE: &str = "on_http_request_headers";

/// Why a module could not be read or rewritten.
#[derive(Debug, PartialEq, Eq)]
pub struct ModuleError(pub String);

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<wasmparser::BinaryReaderError> for ModuleError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        ModuleError(format!("not a valid wasm module: {e}"))
    }
}

/// What [`trim_stream_exports`] did to one module.
#[derive(Debug)]
pub struct Trimmed {
    /// The module to ship.
    pub module: Vec<u8>,
    /// The optional stream callbacks whose export was removed.
    pub removed: Vec<String>,
    /// The optional stream callbacks the filter implements (their exports stay).
    pub kept: Vec<&'static str>,
}

/// The SDK trait methods `module` overrides, read from its name section: every function named
/// `<T as proxy_wasm::traits::Trait>::method` (demangled, hash dropped) gives `method`.
pub fn overridden_sdk_methods(module: &[u8]) -> Result<BTreeSet<String>, ModuleError> {
    let mut methods = BTreeSet::new();
    let mut has_function_names = false;
    for payload in Parser::new(0).parse_all(module) {
        let Payload::CustomSection(section) = payload? else {
            continue;
        };
        let KnownCustom::Name(names) = section.as_known() else {
            continue;
        };
        for subsection in names {
            let Name::Function(map) = subsection? else {
                continue;
            };
            has_function_names = true;
            for naming in map {
                if let Some(method) = sdk_override(naming?.name) {
                    methods.insert(method);
                }
            }
        }
    }
    if !has_function_names {
        return Err(ModuleError(
            "the module has no function names: link it with its name section \
             (release profile `strip = \"debuginfo\"`, not `true`)"
                .into(),
        ));
    }
    Ok(methods)
}

/// `method` if `symbol` is an override of a Proxy-Wasm SDK trait method.
fn sdk_override(symbol: &str) -> Option<String> {
    let demangled = format!("{:#}", rustc_demangle::try_demangle(symbol).ok()?);
    let (impl_for, method) = demangled.rsplit_once(">::")?;
    let is_sdk_trait = impl_for.starts_with('<') && impl_for.contains(" as proxy_wasm::traits::");
    (is_sdk_trait && !method.contains("::")).then(|| method.to_string())
}

/// The shipped form of the linked filter `module`: without the exports of the optional stream
/// callbacks it does not override, and without custom sections. Refuses a module whose name
/// section does not show an `on_http_request_headers` override (names stripped, or not a
/// filter), since it could not tell which callbacks are implemented.
pub fn trim_stream_exports(module: &[u8]) -> Result<Trimmed, ModuleError> {
    let overridden = overridden_sdk_methods(module)?;
    if !overridden.contains(REQUIRED_OVERRIDE) {
        return Err(ModuleError(format!(
            "no `{REQUIRED_OVERRIDE}` override in the module's names: not a Proxy-Wasm filter \
             built with the Rust SDK, or its names were stripped"
        )));
    }
    let (drop, kept): (Vec<_>, Vec<_>) = OPTIONAL_STREAM_CALLBACKS
        .iter()
        .partition(|(_, method)| !overridden.contains(*method));
    let drop: Vec<&str> = drop.iter().map(|(export, _)| *export).collect();
    let (module, removed) = remove_exports(module, &drop)?;
    Ok(Trimmed {
        module,
        removed,
        kept: kept.iter().map(|(export, _)| *export).collect(),
    })
}

/// `module` without the exports named in `drop` and without custom sections; also returns the
/// names actually removed. Every other section is copied as it is.
pub fn remove_exports(module: &[u8], drop: &[&str]) -> Result<(Vec<u8>, Vec<String>), ModuleError> {
    let mut out = Module::new();
    let mut removed = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        match &payload {
            Payload::Version { encoding, .. } if *encoding != wasmparser::Encoding::Module => {
                return Err(ModuleError("a component, not a core wasm module".into()));
            }
            Payload::ExportSection(exports) => {
                let mut kept = ExportSection::new();
                for export in exports.clone() {
                    let export = export?;
                    if drop.contains(&export.name) {
                        removed.push(export.name.to_string());
                    } else {
                        kept.export(export.name, export_kind(export.kind), export.index);
                    }
                }
                out.section(&kept);
                continue;
            }
            Payload::CustomSection(_) => continue,
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            let data = usize::try_from(range.start)
                .ok()
                .zip(usize::try_from(range.end).ok())
                .and_then(|(start, end)| module.get(start..end))
                .ok_or_else(|| ModuleError("a section past the end of the module".into()))?;
            out.section(&RawSection { id, data });
        }
    }
    Ok((out.finish(), removed))
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Real symbols from correlation_id.wasm (proxy-wasm 0.2.5, rustc 1.95): two overrides, the
    // SDK's default `on_log` and a root `on_done` default.
    const REQUEST_HEADERS: &str = "_ZN80_$LT$correlation_id..glue..Stream$u20$as$u20$proxy_wasm..traits..HttpContext$GT$23on_http_request_headers17hb622971681c61424E";
    const RESPONSE_HEADERS: &str = "_ZN80_$LT$correlation_id..glue..Stream$u20$as$u20$proxy_wasm..traits..HttpContext$GT$24on_http_response_headers17h524162f46217ae61E";
    const DEFAULT_ON_LOG: &str = "_ZN10proxy_wasm6traits11HttpContext6on_log17h36fd890e476786dfE";
    const DEFAULT_ON_DONE: &str = "_ZN10proxy_wasm6traits7Context7on_done17h80e5e90e5448db4bE";

    /// A module exporting every optional callback plus the required ones, whose name section
    /// names functions `symbols`.
    fn module(symbols: &[&str]) -> Vec<u8> {
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for (i, symbol) in symbols.iter().enumerate() {
            wat.push_str(&format!("(func $f{i} (@name \"{symbol}\"))\n"));
        }
        wat.push_str("(func $cb)\n");
        for export in ["proxy_on_request_headers", "proxy_on_context_create"]
            .into_iter()
            .chain(OPTIONAL_STREAM_CALLBACKS.iter().map(|(e, _)| *e))
        {
            wat.push_str(&format!("(export \"{export}\" (func $cb))\n"));
        }
        wat.push(')');
        wat::parse_str(&wat).unwrap()
    }

    fn exports(module: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::ExportSection(s) = payload.unwrap() {
                names.extend(s.into_iter().map(|e| e.unwrap().name.to_string()));
            }
        }
        names
    }

    #[test]
    fn reads_overrides_from_the_name_section_not_sdk_defaults() {
        let m = module(&[
            REQUEST_HEADERS,
            RESPONSE_HEADERS,
            DEFAULT_ON_LOG,
            DEFAULT_ON_DONE,
        ]);
        let methods = overridden_sdk_methods(&m).unwrap();
        assert_eq!(
            methods.into_iter().collect::<Vec<_>>(),
            ["on_http_request_headers", "on_http_response_headers"]
        );
    }

    #[test]
    fn v0_mangled_overrides_count_too() {
        // `<demo::Stream as proxy_wasm::traits::Context>::on_done`, v0 mangling.
        let v0 =
            "_RNvXCs1234_4demoNtCs1234_4demo6StreamNtNtCs5678_10proxy_wasm6traits7Context7on_done";
        assert_eq!(sdk_override(v0).as_deref(), Some("on_done"));
        assert_eq!(sdk_override(DEFAULT_ON_DONE), None);
        assert_eq!(sdk_override("not mangled"), None);
    }

    #[test]
    fn drops_unimplemented_callbacks_and_the_names_and_is_deterministic() {
        let m = module(&[REQUEST_HEADERS, RESPONSE_HEADERS, DEFAULT_ON_LOG]);
        let trimmed = trim_stream_exports(&m).unwrap();
        assert_eq!(trimmed.kept, ["proxy_on_response_headers"]);
        assert_eq!(trimmed.removed.len(), OPTIONAL_STREAM_CALLBACKS.len() - 1);
        assert_eq!(
            exports(&trimmed.module),
            [
                "memory",
                "proxy_on_request_headers",
                "proxy_on_context_create",
                "proxy_on_response_headers"
            ]
        );
        // The names are gone, so the output cannot be trimmed again by mistake ...
        assert!(overridden_sdk_methods(&trimmed.module).is_err());
        // ... and it is still a valid module, the same one every time.
        wasmparser::validate(&trimmed.module).unwrap();
        assert_eq!(trim_stream_exports(&m).unwrap().module, trimmed.module);
    }

    #[test]
    fn refuses_a_module_without_names_or_without_a_filter() {
        let without_names = remove_exports(&module(&[REQUEST_HEADERS]), &[]).unwrap().0;
        let e = trim_stream_exports(&without_names).unwrap_err();
        assert!(e.0.contains("no function names"), "{e}");
        let e = trim_stream_exports(&module(&[DEFAULT_ON_LOG])).unwrap_err();
        assert!(e.0.contains("on_http_request_headers"), "{e}");
        assert!(remove_exports(b"hello", &[]).is_err());
        let mut cut = module(&[REQUEST_HEADERS]);
        cut.truncate(30);
        assert!(remove_exports(&cut, &[]).is_err());
    }

    #[test]
    fn remove_exports_keeps_everything_else_byte_for_byte() {
        let m = remove_exports(&module(&[REQUEST_HEADERS]), &[]).unwrap().0;
        let (again, removed) = remove_exports(&m, &["absent"]).unwrap();
        assert!(removed.is_empty());
        assert_eq!(again, m);
    }
}
