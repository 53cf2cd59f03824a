//! Tiny images made by hand: a one-file layer, an OCI image layout.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// An uncompressed tar holding one regular file.
pub fn tiny_layer_tar(file_name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = file_name.as_bytes();
    header[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let mut field = |offset: usize, text: &str| {
        header[offset..offset + text.len()].copy_from_slice(text.as_bytes());
    };
    field(100, "0000644\0"); // mode
    field(108, "0000000\0"); // uid
    field(116, "0000000\0"); // gid
    field(124, &format!("{:011o}\0", content.len())); // size
    field(136, "00000000000\0"); // mtime: fixed, so equal content = equal digest
    field(156, "0"); // regular file
    field(257, "ustar\0");
    field(263, "00");
    // The checksum is computed with its own field read as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// A hand-made OCI image layout with one uncompressed layer.
#[derive(Clone, Debug)]
pub struct OciImage {
    pub layout_dir: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

impl OciImage {
    /// `oci:DIR:TAG`, a skopeo / podman image reference.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.layout_dir.display(), self.tag)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<String> {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let path = layout.join("blobs/sha256").join(hex);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Writes an OCI image layout at `layout` holding one image tagged `tag`
/// whose only layer contains `hello.txt` with `content`.
pub fn write_oci_layout(layout: &Path, tag: &str, content: &[u8]) -> Result<OciImage> {
    fs::create_dir_all(layout.join("blobs/sha256")).with_context(|| format!("creating {}", layout.display()))?;
    let layer = tiny_layer_tar("hello.txt", content);
    let layer_digest = write_blob(layout, &layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = write_blob(layout, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob(layout, &manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)
        .with_context(|| format!("writing {}/index.json", layout.display()))?;
    fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}")
        .with_context(|| format!("writing {}/oci-layout", layout.display()))?;
    Ok(OciImage {
        layout_dir: layout.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        config_digest,
        layer_digest,
    })
}
