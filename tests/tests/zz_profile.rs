use gatewasm_tests::cost::*;
use gatewasm_tests::demo_jwt::{DemoClaims, mint};
use proxy_wasm_harness::{Module, PluginConfig};
use std::time::Duration;
#[test]
fn profile() -> anyhow::Result<()> {
    let cfg = gatewasm_tests::deploy::envoy_filter_configuration(
        "gateway.yaml",
        "gatewasm.jwt_to_header",
    )?
    .to_string();
    let module = Module::artifact("jwt-to-header").map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = cfg.replace(r#"{"regex":"(/t/[^/]+)?/api/.*"}"#, r#"{"prefix":"/api/"}"#);
    let variants = vec![
        ("as is", cfg.clone()),
        ("prefix", pre.clone()),
        (
            "prefix requires null",
            pre.replacen(r#""requires":"demo""#, r#""requires":null"#, 1),
        ),
        (
            "prefix no match",
            pre.replacen(r#""prefix":"/api/""#, r#""prefix":"/zzz/""#, 1)
                .replacen(r#""prefix":"/""#, r#""prefix":"/yyy""#, 1),
        ),
        (
            "prefix forward",
            pre.replace(r#""forward":false"#, r#""forward":true"#),
        ),
        (
            "prefix cache 0",
            pre.replace(r#""cache_size":1000"#, r#""cache_size":0"#),
        ),
    ];

    eprintln!("{cfg}");
    for (name, c) in variants {
        let p = PluginConfig::new(&module)
            .name("j")
            .vm_id("j")
            .configuration(c.clone());
        let mut w = match worker(&[p]) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        let t = |j: &str| {
            mint(&DemoClaims {
                jti: Some(j.into()),
                issued_at: Some(1_767_225_600),
                ttl: Duration::from_secs(3600),
                ..DemoClaims::default()
            })
        };
        let a = t("a")?;
        measure(&mut w, &a)?;
        let r = measure(&mut w, &a)?;
        eprintln!("{name}: {r:?} {:?}", last_callbacks(&w));
    }
    Ok(())
}
