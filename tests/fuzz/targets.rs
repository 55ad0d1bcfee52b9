//! One entry per parser: the bytes in, our parse and the checks behind it
//! run; errors are the expected outcome, panics, hangs and huge
//! allocations are findings.

use std::path::Path;

use edgeforge::format::gguf::GgufFile;
use edgeforge::format::safetensors::SafetensorsFile;

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

pub fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(Path::new("fuzz.gguf"), bytes.to_vec()) else {
        return;
    };
    let arch = edgeforge::model::gguf_architecture(&file);
    let _ = arch.check();
    let _ = edgeforge::engine::TextTokenizer::from_gguf(&file);
    for t in file.tensors() {
        let _ = file.tensor_data(t).len();
    }
}

pub fn safetensors(bytes: &[u8]) {
    if let Ok(file) = SafetensorsFile::from_bytes(Path::new("fuzz.safetensors"), bytes.to_vec()) {
        for t in file.tensors() {
            let _ = file.data(t).len();
        }
    }
}

pub fn hf_config(bytes: &[u8]) {
    if let Some(Ok(arch)) = text(bytes).map(edgeforge::model::config::from_hf_config) {
        let _ = arch.check();
    }
}

pub fn target(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ = edgeforge::target::from_text(Path::new("targets/fuzz.toml"), t);
    }
}

pub fn build_recipe(bytes: &[u8]) {
    let _ = edgeforge::artifact::build::parse_spec(Path::new("recipes/fuzz.toml"), bytes.to_vec());
}

pub fn distill_recipe(bytes: &[u8]) {
    let _ = edgeforge::distill::recipe::LoadedRecipe::from_bytes(
        Path::new("recipes/fuzz.toml"),
        bytes.to_vec(),
    );
}

pub fn manifest(bytes: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<edgeforge::artifact::manifest::Manifest>(bytes) {
        let _ = edgeforge::artifact::check_identity(&m.name, &m.version);
        let _ = edgeforge::artifact::manifest::canonical_json(&m);
    }
}

pub fn oci(bytes: &[u8]) {
    let _ = edgeforge::distribution::oci::parse_index(bytes);
    let _ = edgeforge::distribution::oci::parse_manifest(bytes);
}

pub fn fed_update(bytes: &[u8]) {
    if let Ok(u) =
        edgeforge::fed::update::Update::from_bytes(Path::new("fuzz.safetensors"), bytes.to_vec())
    {
        for t in &u.tensors {
            let mut out = vec![0f32; t.n_elems().min(1 << 16)];
            let n = out.len();
            u.read(t, 0..n, &mut out);
        }
    }
}
