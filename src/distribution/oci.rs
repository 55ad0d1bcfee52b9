//! OCI image-spec v1.1 documents: descriptors, artifact manifests, image
//! indexes. Written with a fixed field order (so the same release gives the
//! same bytes and digests); read with bounds, because a registry or a layout
//! folder is untrusted input.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::media::{self, key};
use crate::artifact::build::Variant;

/// Registries refuse manifests above 4 MiB (the distribution spec's
/// suggested limit); so do we, before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// More entries than any fleet has: a bound, not a policy.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a well-formed sha256 digest (the only algorithm we write
/// or accept); `None` for anything else, so a digest can name a file safely.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

pub fn to_bytes<T: Serialize>(doc: &T) -> Vec<u8> {
    serde_json::to_vec(doc).expect("OCI documents serialize")
}

fn bounded<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{what} is {} bytes, above the {} MiB limit",
            bytes.len(),
            MAX_DOCUMENT_BYTES >> 20
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("malformed {what}: {e}"))
}

fn check_descriptor(d: &Descriptor, what: &str) -> Result<(), String> {
    if sha256_hex(&d.digest).is_none() {
        return Err(format!(
            "{what} has digest `{}`: not a sha256 digest",
            d.digest.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// Parses an image index: schema 2, the OCI index media type, bounded
/// entries, sha256 digests.
pub fn parse_index(bytes: &[u8]) -> Result<ImageIndex, String> {
    let index: ImageIndex = bounded(bytes, "image index")?;
    if index.schema_version != 2 || index.media_type != media::OCI_INDEX {
        return Err(format!(
            "not an OCI image index (schemaVersion {}, mediaType `{}`)",
            index.schema_version, index.media_type
        ));
    }
    if index.manifests.len() > MAX_ENTRIES {
        return Err(format!(
            "image index has {} entries, above the limit of {MAX_ENTRIES}",
            index.manifests.len()
        ));
    }
    for d in &index.manifests {
        check_descriptor(d, "an index entry")?;
    }
    Ok(index)
}

/// Parses one variant's artifact manifest and checks that its layers can be
/// written as files: relative titles, no `..`, no duplicates.
pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, String> {
    let m: ImageManifest = bounded(bytes, "artifact manifest")?;
    if m.schema_version != 2 || m.media_type != media::OCI_MANIFEST {
        return Err(format!(
            "not an OCI image manifest (schemaVersion {}, mediaType `{}`)",
            m.schema_version, m.media_type
        ));
    }
    if m.artifact_type.as_deref() != Some(media::ARTIFACT_TYPE)
        || m.config.media_type != media::CONFIG
    {
        return Err(format!(
            "not an edgeforge artifact (artifactType {:?}, config {})",
            m.artifact_type, m.config.media_type
        ));
    }
    if m.layers.len() > MAX_ENTRIES {
        return Err(format!(
            "artifact manifest has {} layers, above the limit of {MAX_ENTRIES}",
            m.layers.len()
        ));
    }
    check_descriptor(&m.config, "the config")?;
    let mut seen = BTreeSet::new();
    for layer in &m.layers {
        check_descriptor(layer, "a layer")?;
        let title = layer
            .annotations
            .get(media::TITLE)
            .ok_or("a layer has no org.opencontainers.image.title")?;
        safe_relative_path(title)?;
        if title == crate::artifact::MANIFEST || !seen.insert(title.as_str()) {
            return Err(format!("layer title `{title}` is repeated or reserved"));
        }
    }
    Ok(m)
}

/// A layer title is a file path inside the artifact folder: relative,
/// `/`-separated, no empty, `.` or `..` parts.
pub fn safe_relative_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "layer title `{}` is not a safe relative file path",
            path.escape_debug()
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()
        ))
    }
}

/// The selection annotations of one variant.
pub fn annotations(
    v: &Variant,
    name: &str,
    budget_bytes: u64,
    inputs: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(k.to_string(), v);
    };
    put(key::NAME, name.into());
    put(key::TARGET, v.target.clone());
    if let Some(r) = &v.runtime {
        put(key::RUNTIME, r.clone());
    }
    put(key::CLASS, v.class.clone());
    put(key::BUDGET_BYTES, budget_bytes.to_string());
    put(key::PEAK_RAM_BYTES, v.peak_ram_bytes.to_string());
    put(key::SIZE_BYTES, v.size_bytes.to_string());
    put(key::ACCELERATORS, v.accelerators.join(","));
    put(key::FORMAT, v.format.clone());
    // Rust prints the shortest decimal that parses back to the same f64, so
    // `pull` selects on exactly the figures `select` sees.
    put(key::BITS_PER_WEIGHT, v.bits_per_weight.to_string());
    put(key::ARTIFACT_ID, v.id.clone());
    if let Some(d) = v.accuracy_delta {
        put(key::ACCURACY_DELTA, d.to_string());
    }
    if let Some(ms) = v.latency_ms {
        put(key::LATENCY_MS, ms.to_string());
    }
    if let Some(tps) = v.decode_tokens_per_second {
        put(key::DECODE_TPS, tps.to_string());
    }
    if let Some(i) = inputs {
        put(key::INPUTS, i.into());
    }
    if let (Some(version), Some(id)) = (v.global_version, &v.global_id) {
        put(key::GLOBAL_VERSION, version.to_string());
        put(key::GLOBAL_ID, id.clone());
    }
    a
}

/// The index row an index entry stands for (`artifact` = its digest).
pub fn variant_from(d: &Descriptor) -> Result<Variant, String> {
    let get = |k: &str| {
        d.annotations
            .get(k)
            .ok_or_else(|| format!("index entry {} has no `{k}` annotation", d.digest))
    };
    let number = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse()
            .map_err(|_| format!("index entry {}: `{k}` is not a number", d.digest))
    };
    let float = |k: &str| -> Result<Option<f64>, String> {
        d.annotations
            .get(k)
            .map(|s| {
                s.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("index entry {}: `{k}` is not a number", d.digest))
            })
            .transpose()
    };
    let id = get(key::ARTIFACT_ID)?.clone();
    if sha256_hex(&format!("sha256:{id}")).is_none() {
        return Err(format!("index entry {}: bad artifact id", d.digest));
    }
    Ok(Variant {
        name: d.annotations.get(key::NAME).cloned().unwrap_or_default(),
        version: d
            .annotations
            .get(media::VERSION)
            .cloned()
            .unwrap_or_default(),
        target: get(key::TARGET)?.clone(),
        runtime: d.annotations.get(key::RUNTIME).cloned(),
        class: get(key::CLASS)?.clone(),
        artifact: d.digest.clone(),
        id,
        format: get(key::FORMAT)?.clone(),
        size_bytes: number(key::SIZE_BYTES)?,
        peak_ram_bytes: number(key::PEAK_RAM_BYTES)?,
        bits_per_weight: float(key::BITS_PER_WEIGHT)?
            .ok_or_else(|| format!("index entry {} has no bits per weight", d.digest))?,
        accelerators: get(key::ACCELERATORS)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        accuracy_delta: float(key::ACCURACY_DELTA)?,
        latency_ms: float(key::LATENCY_MS)?,
        decode_tokens_per_second: float(key::DECODE_TPS)?,
        global_version: d
            .annotations
            .get(key::GLOBAL_VERSION)
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| format!("index entry {}: bad global version", d.digest))?,
        global_id: d.annotations.get(key::GLOBAL_ID).cloned(),
        // Only artifacts that pass their integrity check are published.
        verified: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant() -> Variant {
        Variant {
            name: "m".into(),
            version: String::new(),
            target: "rpi5-8gb".into(),
            runtime: None,
            class: "sbc".into(),
            artifact: String::new(),
            id: "ab".repeat(32),
            format: "gguf".into(),
            size_bytes: 12_345,
            peak_ram_bytes: 67_890,
            bits_per_weight: 4.500_000_000_000_001,
            accelerators: vec!["npu".into(), "gpu".into()],
            accuracy_delta: Some(0.001_234_5),
            latency_ms: None,
            decode_tokens_per_second: Some(41.7),
            global_version: Some(3),
            global_id: Some("ef".repeat(32)),
            verified: true,
        }
    }

    #[test]
    fn annotations_round_trip_to_the_same_variant() {
        let v = variant();
        let d = Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
            size: 10,
            artifact_type: None,
            annotations: annotations(&v, "m", 1 << 30, Some("x")),
        };
        let back = variant_from(&d).unwrap();
        assert_eq!(
            back,
            Variant {
                artifact: d.digest.clone(),
                ..v
            }
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        assert!(parse_index(&vec![b' '; MAX_DOCUMENT_BYTES + 1])
            .unwrap_err()
            .contains("above the 4 MiB limit"));
        assert!(parse_index(b"{\"schemaVersion\":2}").is_err());
        let bad_digest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:../../etc","size":1}]}"#;
        assert!(parse_index(bad_digest)
            .unwrap_err()
            .contains("not a sha256"));
        for bad in ["/etc/passwd", "../x", "a//b", "a/./b", "", "a\\b"] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
        assert!(safe_relative_path("1_Pooling/config.json").is_ok());
    }
}
