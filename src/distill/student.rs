//! The student network: its shape from the recipe, its initial weights
//! (a teacher layer subset or a seeded random init), stable parameter ids
//! (so optimizer state survives a checkpoint) and saving it back as a
//! Hugging Face model folder every other command loads.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::recipe::{Layers, LoadedRecipe};
use super::DistillError;
use crate::engine::bert::TensorSource;
use crate::engine::weights::{Dense, Weights};
use crate::engine::{BertEncoder, EngineError};
use crate::format::atomic::Overwrite;
use crate::format::safetensors::{Dtype, SafetensorsStream, TensorSpec};
use crate::model::BertConfig;

/// The student's config, checked against the teacher's before training.
pub fn student_config(
    recipe: &LoadedRecipe,
    teacher: &BertConfig,
) -> Result<BertConfig, DistillError> {
    let spec = &recipe.recipe.student;
    let bad = |m: String| Err(DistillError::at(&recipe.path, m));
    let mut c = teacher.clone();
    match &spec.layers {
        Layers::Subset(layers) => {
            if spec.hidden.is_some() || spec.heads.is_some() || spec.ffn.is_some() {
                return bad("student: hidden/heads/ffn go with a layer count (`layers = 3`), not a teacher layer list".into());
            }
            if layers.is_empty() {
                return bad("student.layers is empty".into());
            }
            if let Some(&l) = layers.iter().find(|&&l| l >= teacher.num_hidden_layers) {
                return bad(format!(
                    "student.layers: layer {l} is out of range (the teacher has layers 0..{})",
                    teacher.num_hidden_layers - 1
                ));
            }
            c.num_hidden_layers = layers.len();
        }
        Layers::Count(n) => {
            if *n == 0 {
                return bad("student.layers must be at least 1".into());
            }
            c.num_hidden_layers = *n;
            c.hidden_size = spec.hidden.unwrap_or(teacher.hidden_size);
            c.num_attention_heads = spec.heads.unwrap_or(teacher.num_attention_heads);
            c.intermediate_size = spec.ffn.unwrap_or(4 * c.hidden_size);
            if c.hidden_size == 0 || c.num_attention_heads == 0 || c.intermediate_size == 0 {
                return bad("student: hidden, heads and ffn must be at least 1".into());
            }
            if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
                return bad(format!(
                    "student: hidden {} is not a multiple of heads {}",
                    c.hidden_size, c.num_attention_heads
                ));
            }
        }
    }
    let (s, t) = (parameter_count(&c), parameter_count(teacher));
    if s >= t {
        return bad(format!(
            "student: {s} parameters is not smaller than the teacher's {t}"
        ));
    }
    Ok(c)
}

/// Parameters of a BERT encoder with this config.
pub fn parameter_count(c: &BertConfig) -> u64 {
    let (h, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let embeddings =
        (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as u64 * h + 2 * h;
    let layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h;
    embeddings + c.num_hidden_layers as u64 * layer
}

/// Builds the untrained student on `device` (an autodiff device for training).
pub fn initial_student(
    recipe: &LoadedRecipe,
    config: &BertConfig,
    teacher: &Weights,
    device: &Device,
) -> Result<BertEncoder, DistillError> {
    let seed = recipe.recipe.train.seed;
    let encoder = match &recipe.recipe.student.layers {
        Layers::Subset(layers) => {
            let source =
                |name: &str, shape: &[usize]| teacher.get(&subset_name(name, layers), shape);
            BertEncoder::build(config, &source, device)?
        }
        Layers::Count(_) => {
            let source = |name: &str, shape: &[usize]| Ok(random_init(name, shape, seed));
            BertEncoder::build(config, &source, device)?
        }
    };
    Ok(prepare_for_training(encoder, recipe))
}

/// Stable parameter ids, and frozen embeddings when the recipe asks.
pub fn prepare_for_training(encoder: BertEncoder, recipe: &LoadedRecipe) -> BertEncoder {
    let mut encoder = with_stable_ids(encoder);
    if recipe.recipe.train.freeze_embeddings {
        encoder.word = encoder.word.no_grad();
        encoder.position = encoder.position.no_grad();
        encoder.token_type = encoder.token_type.no_grad();
    }
    encoder
}

/// Loads a saved student (a checkpoint) ready to train on.
pub fn load_student(
    recipe: &LoadedRecipe,
    config: &BertConfig,
    source: &TensorSource,
    device: &Device,
) -> Result<BertEncoder, EngineError> {
    let encoder = BertEncoder::build(config, source, device)?;
    Ok(prepare_for_training(encoder, recipe))
}

/// Student block `j` starts as teacher block `layers[j]`.
fn subset_name(name: &str, layers: &[usize]) -> String {
    let Some(rest) = name.strip_prefix("blk.") else {
        return name.to_string();
    };
    let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
    match index.parse::<usize>() {
        Ok(j) => format!("blk.{}.{tail}", layers[j]),
        Err(_) => name.to_string(),
    }
}

/// BERT's initialisation: N(0, 0.02) weights and embeddings, zero biases,
/// unit LayerNorm gains. Each tensor draws from its own stream (seed and
/// name), so the result does not depend on construction order.
fn random_init(name: &str, shape: &[usize], seed: u64) -> Dense {
    let n: usize = shape.iter().product();
    let data = if name.ends_with(".bias") {
        vec![0.0; n]
    } else if name.contains("norm") {
        vec![1.0; n]
    } else {
        let digest = Sha256::digest(format!("{seed}:{name}").as_bytes());
        let mut rng = SplitMix64(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")));
        (0..n).map(|_| 0.02 * rng.normal()).collect()
    };
    Dense {
        shape: shape.to_vec(),
        data,
    }
}

pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller; one draw per call keeps streams simple).
    pub(crate) fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Numbers parameters in module order, so an optimizer record saved by one
/// process maps onto the same parameters in the next.
fn with_stable_ids(encoder: BertEncoder) -> BertEncoder {
    struct StableIds(u64);
    impl ModuleMapper for StableIds {
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.0 += 1;
            param.id = ParamId::from(self.0);
            param
        }
    }
    encoder.map(&mut StableIds(0))
}

/// The student's tensors under Hugging Face BERT names, in a fixed order.
pub fn hf_tensors(encoder: &BertEncoder) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let mut push = |name: &str, t: Tensor<2>| {
        let dims = t.dims();
        out.push((name.to_string(), dims.to_vec(), values(t)));
    };
    push(
        "embeddings.word_embeddings.weight",
        encoder.word.weight.val(),
    );
    push(
        "embeddings.position_embeddings.weight",
        encoder.position.weight.val(),
    );
    push(
        "embeddings.token_type_embeddings.weight",
        encoder.token_type.weight.val(),
    );
    let mut tensors = out;
    norm(&mut tensors, "embeddings.LayerNorm", &encoder.embed_norm);
    for (i, layer) in encoder.layers.iter().enumerate() {
        let p = |part: &str| format!("encoder.layer.{i}.{part}");
        linear(&mut tensors, &p("attention.self.query"), &layer.query);
        linear(&mut tensors, &p("attention.self.key"), &layer.key);
        linear(&mut tensors, &p("attention.self.value"), &layer.value);
        linear(&mut tensors, &p("attention.output.dense"), &layer.attn_out);
        norm(
            &mut tensors,
            &p("attention.output.LayerNorm"),
            &layer.attn_norm,
        );
        linear(&mut tensors, &p("intermediate.dense"), &layer.ffn_up);
        linear(&mut tensors, &p("output.dense"), &layer.ffn_down);
        norm(&mut tensors, &p("output.LayerNorm"), &layer.out_norm);
    }
    tensors
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}

/// burn stores `[in, out]`; Hugging Face stores `[out, in]`.
fn linear(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, l: &Linear) {
    let w = l.weight.val().transpose();
    let dims = w.dims();
    out.push((format!("{name}.weight"), dims.to_vec(), values(w)));
    if let Some(b) = &l.bias {
        let b = b.val();
        out.push((format!("{name}.bias"), b.dims().to_vec(), values(b)));
    }
}

fn norm(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, n: &LayerNorm) {
    let g = n.gamma.val();
    out.push((format!("{name}.weight"), g.dims().to_vec(), values(g)));
    if let Some(b) = &n.beta {
        let b = b.val();
        out.push((format!("{name}.bias"), b.dims().to_vec(), values(b)));
    }
}

/// Writes the student's weights as an f32 safetensors file (atomically).
pub fn save_safetensors(
    encoder: &BertEncoder,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), DistillError> {
    let tensors = hf_tensors(encoder);
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(name, shape, _)| TensorSpec {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
        })
        .collect();
    let err =
        |e: crate::format::safetensors::SafetensorsError| DistillError::at(path, e.to_string());
    let mut stream =
        SafetensorsStream::create(path, &specs, metadata, Overwrite::Allow).map_err(err)?;
    for (_, _, data) in &tensors {
        stream
            .write_tensor(bytemuck::cast_slice(data))
            .map_err(err)?;
    }
    stream.finish().map_err(err)?;
    Ok(())
}

/// `config.json` for the student: the teacher's, with the student's dims.
pub fn student_config_json(teacher_config: &Path, c: &BertConfig) -> Result<String, DistillError> {
    let text = fs_err::read_to_string(teacher_config)
        .map_err(|e| DistillError::at(teacher_config, e.to_string()))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| DistillError::at(teacher_config, e.to_string()))?;
    let obj = json
        .as_object_mut()
        .ok_or_else(|| DistillError::at(teacher_config, "not a JSON object"))?;
    obj.insert("num_hidden_layers".into(), c.num_hidden_layers.into());
    obj.insert("hidden_size".into(), c.hidden_size.into());
    obj.insert("num_attention_heads".into(), c.num_attention_heads.into());
    obj.insert("intermediate_size".into(), c.intermediate_size.into());
    let mut out = serde_json::to_string_pretty(&json).expect("JSON serializes");
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_names_point_at_teacher_layers() {
        assert_eq!(subset_name("blk.1.attn_q", &[0, 2, 4]), "blk.2.attn_q");
        assert_eq!(subset_name("blk.2.ffn_up", &[0, 2, 4]), "blk.4.ffn_up");
        assert_eq!(
            subset_name("token_embd.weight", &[0, 2, 4]),
            "token_embd.weight"
        );
    }

    #[test]
    fn random_init_depends_on_seed_and_name_only() {
        let a = random_init("blk.0.attn_q.weight", &[4, 4], 7);
        assert_eq!(a.data, random_init("blk.0.attn_q.weight", &[4, 4], 7).data);
        assert_ne!(a.data, random_init("blk.0.attn_q.weight", &[4, 4], 8).data);
        assert_ne!(a.data, random_init("blk.0.attn_k.weight", &[4, 4], 7).data);
        assert!(random_init("blk.0.attn_q.bias", &[4], 7)
            .data
            .iter()
            .all(|&v| v == 0.0));
        assert!(random_init("token_embd_norm.weight", &[4], 7)
            .data
            .iter()
            .all(|&v| v == 1.0));
    }

    #[test]
    fn parameter_count_matches_minilm() {
        let c = BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        };
        // `inspect` counts 22,713,216 including the 147,840-parameter pooler we do not train.
        assert_eq!(parameter_count(&c), 22_713_216 - 147_840);
    }
}
