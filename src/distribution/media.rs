//! Media types and annotation keys (docs/distribution.md).

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// `artifactType` of every variant manifest (and of the version index).
pub const ARTIFACT_TYPE: &str = "application/vnd.edgeforge.artifact.v1";
/// The config blob: the variant's `manifest.json`, byte for byte.
pub const CONFIG: &str = "application/vnd.edgeforge.artifact.manifest.v1+json";

/// The media type of one artifact file, by its name.
pub fn layer_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("gguf") => "application/vnd.edgeforge.layer.v1.gguf",
        Some("safetensors") => "application/vnd.edgeforge.layer.v1.safetensors",
        _ if name == "tokenizer.json" => "application/vnd.edgeforge.layer.v1.tokenizer+json",
        Some("json") => "application/vnd.edgeforge.layer.v1+json",
        Some("toml") => "application/vnd.edgeforge.layer.v1.recipe+toml",
        _ => "application/vnd.edgeforge.layer.v1.file",
    }
}

/// The file a layer becomes (OCI's standard key, as ORAS uses it).
pub const TITLE: &str = "org.opencontainers.image.title";
pub const VERSION: &str = "org.opencontainers.image.version";
/// The tag an OCI image layout entry answers to.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Selection annotations on each index entry (and on the variant manifest).
pub mod key {
    pub const NAME: &str = "dev.edgeforge.name";
    pub const TARGET: &str = "dev.edgeforge.target";
    /// The accelerator runtime of an ONNX/TFLite variant (absent otherwise).
    pub const RUNTIME: &str = "dev.edgeforge.runtime";
    pub const CLASS: &str = "dev.edgeforge.class";
    pub const BUDGET_BYTES: &str = "dev.edgeforge.budget-bytes";
    pub const PEAK_RAM_BYTES: &str = "dev.edgeforge.peak-ram-bytes";
    pub const SIZE_BYTES: &str = "dev.edgeforge.size-bytes";
    pub const ACCELERATORS: &str = "dev.edgeforge.accelerators";
    pub const FORMAT: &str = "dev.edgeforge.format";
    pub const BITS_PER_WEIGHT: &str = "dev.edgeforge.bits-per-weight";
    pub const ARTIFACT_ID: &str = "dev.edgeforge.artifact-id";
    pub const ACCURACY_DELTA: &str = "dev.edgeforge.accuracy-delta";
    pub const LATENCY_MS: &str = "dev.edgeforge.latency-ms";
    pub const DECODE_TPS: &str = "dev.edgeforge.decode-tokens-per-second";
    /// What the variant was built from (`build --matrix`, `--cache`).
    pub const INPUTS: &str = "dev.edgeforge.inputs";
    /// The federated global version the variant was built from (`fed`).
    pub const GLOBAL_VERSION: &str = "dev.edgeforge.global-version";
    pub const GLOBAL_ID: &str = "dev.edgeforge.global-id";
}

/// The tag each variant manifest is also pushed under, so `build --cache`
/// finds a variant by its inputs alone.
pub fn inputs_tag(inputs: &str) -> String {
    format!("inputs-{inputs}")
}
