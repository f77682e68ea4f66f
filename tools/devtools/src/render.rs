//! The one place that templates `envoy-configs/*.yaml`.
//!
//! The configs are meant to be copied by users, so they are plain Envoy YAML with a few
//! `{{NAME}}` placeholders for the things that differ per run — **ports and file paths only**:
//!
//! | placeholder        | meaning                                                     |
//! |--------------------|-------------------------------------------------------------|
//! | `{{LISTEN_PORT}}`  | the port of the HTTP listener (gateway / sidecar inbound)   |
//! | `{{ADMIN_PORT}}`   | Envoy's admin interface                                     |
//! | `{{UPSTREAM_PORT}}`| the upstream / local app (the echo server in tests)         |
//! | `{{UPSTREAM2_PORT}}`| a second upstream (two-backend configs such as `tenant-gateway.yaml`) |
//! | `{{RLS_PORT}}`     | a rate-limit service's gRPC port (`ratelimit-global.yaml`) |
//! | `{{WASM_DIR}}`     | directory holding the built `*.wasm` filters                |
//! | `{{ECDS_DIR}}`     | directory holding rendered ECDS resource files              |
//!
//! A config that references `{{ECDS_DIR}}/<file>` gets `envoy-configs/<file>` rendered next
//! to it ([`render_config`]).
//!
//! Rendering is strict: every placeholder in the template must have a value (a typo fails
//! instead of producing a config Envoy rejects later). Values not used by a template are
//! ignored, so one set of values renders every config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Placeholder values, by name (without the braces).
pub type Vars = BTreeMap<String, String>;

/// Replaces every `{{NAME}}` in `template` with `vars[NAME]`.
///
/// `NAME` is `[A-Z0-9_]+`. Fails if a placeholder has no value or a `{{` is not closed.
pub fn render(template: &str, vars: &Vars) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("unclosed '{{{{' near: {:.40}", &rest[start..]))?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            bail!("invalid placeholder '{{{{{name}}}}}' (names are [A-Z0-9_]+)");
        }
        let value = vars.get(name).with_context(|| {
            format!(
                "no value for placeholder '{{{{{name}}}}}' (have: {})",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders the template file `template` into `out`.
pub fn render_file(template: &Path, out: &Path, vars: &Vars) -> Result<()> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("reading config template {}", template.display()))?;
    let rendered =
        render(&text, vars).with_context(|| format!("rendering {}", template.display()))?;
    std::fs::write(out, rendered).with_context(|| format!("writing {}", out.display()))
}

/// Renders the config `name` from `envoy-configs/` (see [`crate::paths::envoy_configs_dir`])
/// into `out_dir`, together with every companion file it references as
/// `{{ECDS_DIR}}/<file>` (e.g. the ECDS resource file of `istio-ecds.yaml`), which is rendered
/// with the same values. `ECDS_DIR` is set to `out_dir`. Returns the rendered config's path.
pub fn render_config(name: &str, out_dir: &Path, vars: &Vars) -> Result<PathBuf> {
    let mut vars = vars.clone();
    vars.insert("ECDS_DIR".into(), out_dir.display().to_string());
    let configs = crate::paths::envoy_configs_dir();
    let template = std::fs::read_to_string(configs.join(name))
        .with_context(|| format!("reading {}", configs.join(name).display()))?;
    for companion in companions(&template) {
        render_file(&configs.join(&companion), &out_dir.join(&companion), &vars)?;
    }
    let out = out_dir.join(name);
    render_file(&configs.join(name), &out, &vars)?;
    Ok(out)
}

/// The file names a template references as `{{ECDS_DIR}}/<file>`.
pub fn companions(template: &str) -> Vec<String> {
    const MARK: &str = "{{ECDS_DIR}}/";
    let mut names: Vec<String> = template
        .match_indices(MARK)
        .map(|(i, _)| {
            template[i + MARK.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Parses `NAME=VALUE` command-line arguments into [`Vars`].
pub fn parse_assignments<I: IntoIterator<Item = String>>(args: I) -> Result<Vars> {
    let mut vars = Vars::new();
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .with_context(|| format!("expected NAME=VALUE, got '{arg}'"))?;
        vars.insert(name.to_string(), value.to_string());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replaces_placeholders() -> Result<()> {
        let out = render(
            "port_value: {{LISTEN_PORT}}\nfile: {{WASM_DIR}}/a.wasm {{LISTEN_PORT}}",
            &vars(&[("LISTEN_PORT", "8080"), ("WASM_DIR", "/w"), ("UNUSED", "x")]),
        )?;
        assert_eq!(out, "port_value: 8080\nfile: /w/a.wasm 8080");
        Ok(())
    }

    #[test]
    fn missing_value_fails() {
        let err = render("{{ADMIN_PORT}}", &vars(&[])).err();
        assert!(err.is_some_and(|e| e.to_string().contains("ADMIN_PORT")));
    }

    #[test]
    fn bad_syntax_fails() {
        assert!(render("{{lower}}", &vars(&[("lower", "x")])).is_err());
        assert!(render("{{OPEN", &vars(&[])).is_err());
    }
}
