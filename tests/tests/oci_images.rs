//! The OCI images `just package` builds (tools/xtask/src/oci.rs) and the digests the manifests pin:
//! one image per filter and the bundle's (`gatewasm`: gatewasm.wasm, every filter in one module).
//!
//! - the layout: `oci-layout`, `index.json`, the manifest, config and layer, their media types
//!   (Istio's compat variant: one `tar+gzip` layer holding `plugin.wasm`), and every digest and
//!   size recomputed from the blobs;
//! - reproducible: the same `.wasm` gives byte-identical layouts and archives;
//! - `skopeo inspect` (Debian's skopeo, `just skopeo`) reads the layout and the archive;
//! - every `sha256` in `istio-manifests/` and `envoy-configs/envoy-gateway/` is the digest of the
//!   image of the current `.wasm` (else: run `just package`).
//!
//! Needs `just build` and `just skopeo`; `just test` does both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use gatewasm_tests::deploy;
use gatewasm_tests::oci::{self, Image, sha256_hex};
use gatewasm_tests::paths;
use serde_json::Value;

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_slice(&std::fs::read(path).with_context(|| path.display().to_string())?)
        .with_context(|| format!("{} is not JSON", path.display()))
}

/// The blob a descriptor points to, checked against the descriptor's digest and size.
fn blob(layout: &Path, desc: &Value) -> Result<Vec<u8>> {
    let digest = desc["digest"]
        .as_str()
        .context("descriptor without digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .context("digest is not sha256")?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))
        .with_context(|| format!("blob {digest} missing"))?;
    assert_eq!(
        sha256_hex(&bytes),
        hex,
        "blob {digest}: content does not hash to its name"
    );
    assert_eq!(
        desc["size"].as_u64(),
        Some(bytes.len() as u64),
        "blob {digest}: size"
    );
    Ok(bytes)
}

/// The module an image holds (`<module>.wasm` in `GATEWASM_WASM_DIR`).
fn wasm_bytes(image: &str) -> Result<Vec<u8>> {
    Ok(std::fs::read(paths::wasm_file(&deploy::image_module(
        image,
    ))?)?)
}

/// Every image `just package` builds: each filter's and the bundle's.
fn image_names() -> Vec<&'static str> {
    let names = deploy::image_names();
    assert_eq!(names.len(), deploy::FILTERS.len() + 1);
    assert!(names.contains(&deploy::BUNDLE), "{names:?}");
    names
}

#[test]
fn images_are_istios_compat_variant_in_an_oci_layout() -> Result<()> {
    for name in image_names() {
        let image = deploy::image_in(name, &paths::wasm_dir())?;
        let dir = tempfile::tempdir()?;
        let layout = dir.path().join(name);
        image.write_layout(&layout)?;

        assert_eq!(
            read_json(&layout.join("oci-layout"))?,
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );
        let index = read_json(&layout.join("index.json"))?;
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], oci::MEDIA_TYPE_INDEX);
        let manifests = index["manifests"].as_array().context("manifests")?;
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0]["mediaType"], oci::MEDIA_TYPE_MANIFEST);
        assert_eq!(
            manifests[0]["annotations"][oci::ANNOTATION_REF_NAME],
            deploy::image_tag()
        );
        assert_eq!(manifests[0]["digest"], image.digest());

        let manifest: Value = serde_json::from_slice(&blob(&layout, &manifests[0])?)?;
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], oci::MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], oci::MEDIA_TYPE_CONFIG);
        let layers = manifest["layers"].as_array().context("layers")?;
        assert_eq!(layers.len(), 1, "the compat variant: one layer");
        assert_eq!(layers[0]["mediaType"], oci::MEDIA_TYPE_LAYER);

        let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])?)?;
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["rootfs"]["type"], "layers");
        let layer = blob(&layout, &layers[0])?;
        // gzip with mtime 0: bytes 4..8 of the header.
        assert_eq!(&layer[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(&layer[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.as_slice()).read_to_end(&mut tar)?;
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([format!("sha256:{}", sha256_hex(&tar))])
        );
        // One entry, plugin.wasm, with fixed metadata, holding exactly the built module.
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<_> = archive.entries()?.collect::<std::io::Result<_>>()?;
        assert_eq!(entries.len(), 1);
        let header = entries[0].header();
        assert_eq!(header.path()?.to_str(), Some(oci::WASM_FILE_IN_LAYER));
        assert_eq!(header.mtime()?, 0);
        assert_eq!(
            (header.uid()?, header.gid()?, header.mode()?),
            (0, 0, 0o644)
        );
        assert_eq!(oci::wasm_from_layer(&layer)?, wasm_bytes(name)?, "{name}");
        assert_eq!(image.wasm_sha256, sha256_hex(&wasm_bytes(name)?));

        // Nothing else in blobs/.
        let blobs = std::fs::read_dir(layout.join("blobs/sha256"))?.count();
        assert_eq!(blobs, 3, "manifest, config, layer");
    }
    Ok(())
}

#[test]
fn images_are_reproducible() -> Result<()> {
    for name in image_names() {
        let wasm = wasm_bytes(name)?;
        let a = Image::build(name, &deploy::image_tag(), &wasm)?;
        let b = Image::build(name, &deploy::image_tag(), &wasm)?;
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.layout_files()?, b.layout_files()?);
        assert_eq!(a.archive()?, b.archive()?);
        // Written twice to different places: identical trees.
        let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
        a.write_layout(d1.path())?;
        b.write_layout(d2.path())?;
        for (rel, bytes) in a.layout_files()? {
            assert_eq!(std::fs::read(d2.path().join(&rel))?, bytes, "{rel}");
            assert_eq!(std::fs::read(d1.path().join(&rel))?, bytes, "{rel}");
        }
        // A different module is a different image.
        let mut other = wasm.clone();
        other.push(0);
        let c = Image::build(name, &deploy::image_tag(), &other)?;
        assert_ne!(a.digest(), c.digest());
    }
    // Not a Wasm module: refused, as istio-agent would refuse it after pulling.
    assert!(Image::build("x", "1", b"not wasm").is_err());
    Ok(())
}

fn skopeo(args: &[&str]) -> Result<String> {
    let out = match Command::new("skopeo").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "skopeo is not installed. Run `just skopeo` (Debian's skopeo package; `just test` does it)"
        ),
        Err(e) => return Err(e).context("running skopeo"),
    };
    if !out.status.success() {
        bail!(
            "skopeo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn skopeo_reads_the_layout_and_the_archive() -> Result<()> {
    for name in image_names() {
        let image = deploy::image_in(name, &paths::wasm_dir())?;
        let dir = tempfile::tempdir()?;
        let layout = dir.path().join(name);
        image.write_layout(&layout)?;
        let archive = dir.path().join(format!("{name}.oci.tar"));
        std::fs::write(&archive, image.archive()?)?;

        for reference in [
            format!("oci:{}", layout.display()),
            format!("oci:{}:{}", layout.display(), deploy::image_tag()),
            format!("oci-archive:{}", archive.display()),
        ] {
            let inspect: Value = serde_json::from_str(&skopeo(&["inspect", &reference])?)?;
            assert_eq!(inspect["Digest"], image.digest(), "{reference}");
            assert_eq!(inspect["Architecture"], "wasm", "{reference}");
            assert_eq!(inspect["Os"], "wasip1", "{reference}");
            let layers = inspect["Layers"].as_array().context("Layers")?;
            assert_eq!(layers.len(), 1, "{reference}");
            let raw = skopeo(&["inspect", "--raw", &reference])?;
            assert_eq!(
                raw.as_bytes(),
                image.manifest.as_slice(),
                "{reference}: --raw"
            );
        }
        // A copy reads and verifies every blob; with --preserve-digests (what the README tells
        // users to push with) the copy keeps the digest the manifests pin.
        let copy = dir.path().join("copy");
        let tag = deploy::image_tag();
        skopeo(&[
            "copy",
            "--quiet",
            "--preserve-digests",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("oci:{}:{tag}", copy.display()),
        ])?;
        let inspect: Value =
            serde_json::from_str(&skopeo(&["inspect", &format!("oci:{}", copy.display())])?)?;
        assert_eq!(
            inspect["Digest"],
            image.digest(),
            "skopeo copy changed the digest"
        );
    }
    Ok(())
}

#[test]
fn manifests_pin_the_images_of_the_current_modules() -> Result<()> {
    let images = deploy::images(&paths::wasm_dir())?;
    let digests = images
        .iter()
        .map(|(name, image)| (name.clone(), image.digest_hex()))
        .collect();
    let stale = deploy::stale_manifests(&digests)?;
    let root = paths::workspace_root();
    let files: Vec<String> = stale
        .iter()
        .map(|(f, _)| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        files.is_empty(),
        "the sha256 pinned in {files:?} is not the digest of the image of the current .wasm \
         ({}). Run `just package` (it rebuilds the images and rewrites the digests), then commit \
         the manifests.",
        images
            .iter()
            .map(|(n, i)| format!("{n}: {}", i.digest()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
