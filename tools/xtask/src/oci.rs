//! Reproducible OCI images of the filters, without Docker (`just package`).
//!
//! # Format
//!
//! The *compat* variant that Istio's Wasm image fetcher (istio/istio `pkg/wasm/imagefetcher.go`)
//! and Envoy Gateway's copy of it (`internal/wasm/imagefetcher.go`) accept: an OCI image whose
//! (last) layer is an `application/vnd.oci.image.layer.v1.tar+gzip` tarball holding
//! `plugin.wasm` — the same image `FROM scratch` + `COPY plugin.wasm ./` builds.
//!
//! Why not a layer of media type `application/vnd.module.wasm.content.layer.v1+wasm`: both
//! fetchers only take that media type in the *oci* variant, which must have **exactly two**
//! layers (`number of layers must be 2`); a single raw-Wasm layer is rejected by both. The
//! compat variant needs no second, dummy layer and is an ordinary image every registry and
//! tool (skopeo, crane, oras, docker) handles.
//!
//! # Reproducibility
//!
//! Same `.wasm` bytes → byte-identical blobs → same digests:
//!
//! - the tar entry has mode 0644, uid/gid 0, no user/group names and mtime 0 (ustar);
//! - gzip has mtime 0, no file name, OS byte 255 and level 9 (flate2's pure-Rust
//!   miniz_oxide backend, pinned by `Cargo.lock`: a different deflate implementation may
//!   compress differently, so the digest is reproducible for this packager, not for any tool);
//! - JSON is written from structs (fixed field order) and `BTreeMap`s (sorted keys), compact,
//!   with no timestamps (`created` is omitted).
//!
//! # What Istio's `sha256` pins
//!
//! For an `oci://` URL, istio-agent compares a WasmPlugin's `sha256` with the **image manifest
//! digest** (`img.Digest()` in `PrepareFetch`, compared in `pkg/wasm/cache.go`); only for
//! `http(s)://` URLs is it the sha256 of the `.wasm` itself. Envoy Gateway's `image.sha256` is
//! the manifest digest too. [`Image::digest_hex`] is that value.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The file name both fetchers look for in the layer.
pub const WASM_FILE_IN_LAYER: &str = "plugin.wasm";
/// `application/vnd.oci.image.manifest.v1+json`
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar+gzip`: the compat variant's layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The `oci-layout` file of an OCI image layout.
pub const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// Annotation naming a manifest in `index.json` (skopeo: `oci:<dir>:<ref.name>`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256` of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    hex
}

/// An OCI content descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", sha256_hex(bytes)),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: &'a Descriptor,
    layers: [&'a Descriptor; 1],
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    config: BTreeMap<String, String>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a str; 1],
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: [&'a Descriptor; 1],
}

/// One filter's image: every blob, in memory.
#[derive(Debug, Clone)]
pub struct Image {
    /// The filter (image repository) name, e.g. `correlation-id`.
    pub name: String,
    /// The tag, e.g. `0.1.0`.
    pub tag: String,
    /// sha256 of the `.wasm` itself (what an `http(s)://` WasmPlugin URL would pin).
    pub wasm_sha256: String,
    /// The gzipped tar layer.
    pub layer: Vec<u8>,
    /// `sha256:` of the uncompressed tar (the config's `rootfs.diff_ids[0]`).
    pub diff_id: String,
    /// The image config JSON.
    pub config: Vec<u8>,
    /// The image manifest JSON.
    pub manifest: Vec<u8>,
}

impl Image {
    /// Builds the image of `wasm` (the module's bytes) as `<name>:<tag>`.
    pub fn build(name: &str, tag: &str, wasm: &[u8]) -> Result<Image> {
        ensure!(
            wasm.len() >= 8 && wasm[..4] == *b"\0asm",
            "{name}: not a Wasm module (no \\0asm magic; Istio would reject it too)"
        );
        let tar = layer_tar(wasm)?;
        let diff_id = format!("sha256:{}", sha256_hex(&tar));
        let layer = gzip(&tar)?;
        let config = serde_json::to_vec(&ImageConfig {
            // GOARCH/GOOS spelling of a WASI module (the OCI image spec uses Go's values).
            architecture: "wasm",
            os: "wasip1",
            config: BTreeMap::new(),
            rootfs: RootFs {
                kind: "layers",
                diff_ids: [&diff_id],
            },
        })?;
        let config_desc = Descriptor::of(MEDIA_TYPE_CONFIG, &config);
        let mut layer_desc = Descriptor::of(MEDIA_TYPE_LAYER, &layer);
        layer_desc.annotations.insert(
            "org.opencontainers.image.title".into(),
            WASM_FILE_IN_LAYER.into(),
        );
        let annotations = BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                format!("gatewasm {name}"),
            ),
            (
                "org.opencontainers.image.description".to_string(),
                format!(
                    "gatewasm {name}: a Proxy-Wasm filter (ABI 0.2.1, wasm32-wasip1) as {WASM_FILE_IN_LAYER}"
                ),
            ),
            (
                "org.opencontainers.image.version".to_string(),
                tag.to_string(),
            ),
        ]);
        let manifest = serde_json::to_vec(&Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST,
            config: &config_desc,
            layers: [&layer_desc],
            annotations,
        })?;
        Ok(Image {
            name: name.to_string(),
            tag: tag.to_string(),
            wasm_sha256: sha256_hex(wasm),
            layer,
            diff_id,
            config,
            manifest,
        })
    }

    /// The manifest digest, `sha256:<hex>`: the image's identity in a registry.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest_hex())
    }

    /// The manifest digest's hex: the value for a WasmPlugin's (and Envoy Gateway's) `sha256`.
    pub fn digest_hex(&self) -> String {
        sha256_hex(&self.manifest)
    }

    /// The manifest's descriptor, as `index.json` lists it (with the tag as `ref.name`).
    pub fn manifest_descriptor(&self) -> Descriptor {
        let mut desc = Descriptor::of(MEDIA_TYPE_MANIFEST, &self.manifest);
        desc.annotations
            .insert(ANNOTATION_REF_NAME.into(), self.tag.clone());
        desc
    }

    /// `index.json` of the image layout.
    pub fn index_json(&self) -> Result<Vec<u8>> {
        let desc = self.manifest_descriptor();
        Ok(serde_json::to_vec(&Index {
            schema_version: 2,
            media_type: MEDIA_TYPE_INDEX,
            manifests: [&desc],
        })?)
    }

    /// Every file of the OCI image layout: (relative path, bytes), in a fixed order.
    pub fn layout_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = vec![
            (
                "oci-layout".to_string(),
                OCI_LAYOUT_FILE.as_bytes().to_vec(),
            ),
            ("index.json".to_string(), self.index_json()?),
        ];
        let mut blobs: Vec<&Vec<u8>> = vec![&self.manifest, &self.config, &self.layer];
        blobs.sort_by_key(|b| sha256_hex(b));
        for blob in blobs {
            files.push((format!("blobs/sha256/{}", sha256_hex(blob)), blob.clone()));
        }
        Ok(files)
    }

    /// Writes the OCI image layout into `dir` (which is replaced if it exists).
    /// `skopeo inspect oci:<dir>`, `skopeo copy oci:<dir>:<tag> docker://…` read it.
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the old layout {}", dir.display()))?;
        }
        for (rel, bytes) in self.layout_files()? {
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The image layout as one tar archive (`skopeo … oci-archive:<file>`), reproducible too.
    pub fn archive(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = fixed_header(tar::EntryType::Directory, 0, 0o755)?;
            header.set_path(dir)?;
            header.set_cksum();
            builder.append(&header, std::io::empty())?;
        }
        for (rel, bytes) in self.layout_files()? {
            let mut header = fixed_header(tar::EntryType::Regular, bytes.len() as u64, 0o644)?;
            header.set_path(&rel)?;
            header.set_cksum();
            builder.append(&header, bytes.as_slice())?;
        }
        Ok(builder.into_inner()?)
    }
}

fn fixed_header(kind: tar::EntryType, size: u64, mode: u32) -> Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_username("")?;
    header.set_groupname("")?;
    Ok(header)
}

/// The layer's uncompressed tar: one regular file, `plugin.wasm`.
fn layer_tar(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = fixed_header(tar::EntryType::Regular, wasm.len() as u64, 0o644)?;
    header.set_path(WASM_FILE_IN_LAYER)?;
    header.set_cksum();
    builder.append(&header, wasm)?;
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// Reads `plugin.wasm` back out of a gzipped layer, the way the fetchers do (any path whose
/// base name is `plugin.wasm`).
pub fn wasm_from_layer(layer: &[u8]) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.file_name().and_then(|n| n.to_str()) == Some(WASM_FILE_IN_LAYER) {
            let mut wasm = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut wasm)?;
            return Ok(wasm);
        }
    }
    bail!("{WASM_FILE_IN_LAYER} not found in the layer")
}
