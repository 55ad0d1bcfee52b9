//! The quantization plan: which scheme each tensor gets, and why.
//!
//! Rules, in the order they apply:
//! 1. integer buffers are kept (safetensors) or dropped (GGUF, which llama.cpp
//!    does not load), 1-D tensors and norms stay F32;
//! 2. the preset picks a scheme by role and layer, in the spirit of
//!    llama.cpp's `llama_tensor_get_type` (output head at Q6_K, `attn_v` and
//!    `ffn_down` given more bits in the first and last eighth of the layers);
//! 3. a row width that is not a whole number of blocks falls back to the
//!    nearest format that fits (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, as
//!    llama.cpp does; 32-blocks -> F16);
//! 4. the target's allowed schemes replace any other choice by the nearest
//!    allowed one that fits.
//!
//! Every override is recorded in [`TensorPlan::reason`] so the report can say so.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::memory::Footprint;
use crate::model::{Model, Tensor, TensorDtype, TensorRole};
use crate::quant::{self, Scheme};

/// Why a tensor got a scheme other than the preset's base.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The preset's base scheme applies as is.
    Base,
    /// 1-D tensors and normalisation weights stay F32.
    KeptF32,
    /// Not a floating-point weight: stored unchanged.
    Unchanged,
    /// The preset spends more bits here (output head, sensitive layers).
    Preset { rule: String },
    /// The row width does not fit the wanted scheme's block.
    RowFallback { wanted: String, row_len: u64 },
    /// The target does not run the wanted scheme.
    TargetRestricted { wanted: String },
    /// Chosen by the `--bpw` search.
    BitBudget,
    /// Kept in the block type the source stores it in, bytes copied.
    AsStored,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Base => f.write_str(""),
            Reason::KeptF32 => f.write_str("1-D/norm kept F32"),
            Reason::Unchanged => f.write_str("non-float, unchanged"),
            Reason::Preset { rule } => write!(f, "preset: {rule}"),
            Reason::RowFallback { wanted, row_len } => {
                write!(
                    f,
                    "fallback: row {row_len} not a multiple of {wanted}'s block"
                )
            }
            Reason::TargetRestricted { wanted } => write!(f, "target does not run {wanted}"),
            Reason::BitBudget => f.write_str("bpw search"),
            Reason::AsStored => f.write_str("kept as stored (lossless)"),
        }
    }
}

/// The plan for one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub role: TensorRole,
    /// Row-major shape, outermost first.
    pub shape: Vec<u64>,
    pub n_elems: u64,
    /// `None` keeps the stored bytes unchanged (integer buffers).
    pub scheme: Option<Scheme>,
    /// Encoded size of the tensor (data plus any scale/zero tensors).
    pub bytes: u64,
    pub reason: Reason,
}

/// A named recipe of per-tensor choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// One scheme for every weight matrix (output head at Q6_K for GGUF block
    /// schemes below Q6_K, as llama.cpp does).
    Uniform(Scheme),
    /// A K-quant mix: `base` everywhere, `more` on the sensitive tensors.
    KMix {
        name: &'static str,
        base: Scheme,
        more: Scheme,
        all_sensitive_layers: bool,
    },
}

/// safetensors encodings, most bits first: what `--fit` and `--bpw` walk down.
pub const SAFETENSORS_LADDER: [Scheme; 6] = [
    Scheme::F16,
    Scheme::Int8PerChannel,
    Scheme::Int4Group {
        group: 32,
        symmetric: false,
    },
    Scheme::Int4Group {
        group: 64,
        symmetric: false,
    },
    Scheme::Int4Group {
        group: 128,
        symmetric: false,
    },
    Scheme::Int4Group {
        group: 128,
        symmetric: true,
    },
];

/// The K-quant mixes, named as llama.cpp names them.
pub const KMIXES: [Preset; 5] = [
    Preset::KMix {
        name: "Q6_K_M",
        base: Scheme::Q6K,
        more: Scheme::Q8_0,
        all_sensitive_layers: false,
    },
    Preset::KMix {
        name: "Q5_K_M",
        base: Scheme::Q5K,
        more: Scheme::Q6K,
        all_sensitive_layers: true,
    },
    Preset::KMix {
        name: "Q4_K_M",
        base: Scheme::Q4K,
        more: Scheme::Q6K,
        all_sensitive_layers: true,
    },
    Preset::KMix {
        name: "Q4_K_S",
        base: Scheme::Q4K,
        more: Scheme::Q5K,
        all_sensitive_layers: false,
    },
    Preset::KMix {
        name: "Q3_K_M",
        base: Scheme::Q3K,
        more: Scheme::Q5K,
        all_sensitive_layers: true,
    },
];

impl Preset {
    /// Parses a scheme name (`Q8_0`, `int8_pc`) or a mix name (`Q4_K_M`).
    pub fn parse(name: &str) -> Result<Preset, String> {
        if let Some(mix) = KMIXES.iter().find(|p| p.name().eq_ignore_ascii_case(name)) {
            return Ok(*mix);
        }
        name.parse::<Scheme>().map(Preset::Uniform).map_err(|e| {
            let mixes: Vec<String> = KMIXES.iter().map(Preset::name).collect();
            format!("{e}; or a mix: {}", mixes.join(", "))
        })
    }

    /// The preset's name.
    pub fn name(&self) -> String {
        match self {
            Preset::Uniform(s) => s.name(),
            Preset::KMix { name, .. } => (*name).to_string(),
        }
    }

    /// The scheme most tensors get.
    pub fn base(&self) -> Scheme {
        match self {
            Preset::Uniform(s) | Preset::KMix { base: s, .. } => *s,
        }
    }

    /// The presets `--fit` tries, best quality first, for one output family.
    pub fn ladder(gguf: bool) -> Vec<Preset> {
        if gguf {
            // Ordered by size, legacy formats between the K mixes: the
            // legacy ones keep an already-quantized source (say Q4_1) as it is.
            let mut ladder = vec![
                Preset::Uniform(Scheme::F16),
                Preset::Uniform(Scheme::Q8_0),
                KMIXES[0],
                Preset::Uniform(Scheme::Q5_1),
                KMIXES[1],
                Preset::Uniform(Scheme::Q5_0),
                Preset::Uniform(Scheme::Q4_1),
                KMIXES[2],
                KMIXES[3],
            ];
            ladder.push(Preset::Uniform(Scheme::Q4_0));
            ladder.extend(&KMIXES[4..]);
            ladder.extend([Preset::Uniform(Scheme::Q3K), Preset::Uniform(Scheme::Q2K)]);
            ladder
        } else {
            SAFETENSORS_LADDER
                .into_iter()
                .map(Preset::Uniform)
                .collect()
        }
    }
}

/// What constrains the plan besides the preset.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    /// Schemes the target runs; `None` allows everything.
    pub allowed: Option<BTreeSet<Scheme>>,
    /// Writing GGUF (integer buffers dropped, names converted).
    pub gguf: bool,
    /// The token embedding doubles as the output head (tied weights), so it
    /// gets the head's rule.
    pub tied_output: bool,
}

/// A whole-model plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub preset: String,
    pub tensors: Vec<TensorPlan>,
}

impl Plan {
    /// Encoded bytes of every planned tensor.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Floating-point parameters the plan covers.
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| t.scheme.is_some())
            .map(|t| t.n_elems)
            .sum()
    }

    /// Average stored bits per floating-point parameter.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: u64 = self
            .tensors
            .iter()
            .filter(|t| t.scheme.is_some())
            .map(|t| t.bytes)
            .sum();
        let params = self.parameters();
        if params == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / params as f64
        }
    }
}

/// Plans every tensor of a model.
pub fn plan(tensors: &[Tensor], preset: Preset, constraints: &Constraints) -> Result<Plan, String> {
    let n_layers = layer_count(tensors);
    let mut planned = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !t.dtype.is_float() {
            if constraints.gguf {
                continue;
            }
            planned.push(TensorPlan {
                name: t.name.clone(),
                role: t.role,
                shape: t.shape.clone(),
                n_elems: t.n_elems,
                scheme: None,
                bytes: t.n_bytes,
                reason: Reason::Unchanged,
            });
            continue;
        }
        let (scheme, reason) = choose(t, preset, n_layers, constraints)?;
        let bytes = quant::encoded_bytes(scheme, t.n_elems, t.row_len())
            .ok_or_else(|| format!("Tensor `{}` cannot be encoded as {scheme}", t.name))?;
        planned.push(TensorPlan {
            name: t.name.clone(),
            role: t.role,
            shape: t.shape.clone(),
            n_elems: t.n_elems,
            scheme: Some(scheme),
            bytes,
            reason,
        });
    }
    Ok(Plan {
        preset: preset.name(),
        tensors: planned,
    })
}

/// A plan that fits, or the smallest plan with how far it misses.
pub type FitResult = Result<Plan, (Plan, Footprint)>;

/// The first plan on the quality ladder that fits; else the smallest miss.
pub fn fit(
    model: &Model,
    c: &Constraints,
    footprint_of: &dyn Fn(&Plan) -> Option<Footprint>,
) -> Result<FitResult, String> {
    if let Some(kept) = as_stored(model, c) {
        match footprint_of(&kept) {
            Some(fp) if !fp.fits() => {}
            _ => return Ok(Ok(kept)),
        }
    }
    let mut smallest: Option<(Plan, Footprint)> = None;
    let source_bits = source_bits_per_weight(model);
    for preset in Preset::ladder(c.gguf) {
        let runs_base = c
            .allowed
            .as_ref()
            .is_none_or(|a| a.contains(&preset.base()));
        if !runs_base {
            continue;
        }
        let Ok(plan) = plan(&model.tensors, preset, c) else {
            continue;
        };
        // Upcasting an already-quantized source adds bytes, not accuracy.
        if plan.bits_per_weight() > source_bits * 1.02 {
            continue;
        }
        let Some(fp) = footprint_of(&plan) else {
            return Ok(Ok(plan));
        };
        if fp.fits() {
            return Ok(Ok(plan));
        }
        if smallest
            .as_ref()
            .is_none_or(|(_, s)| fp.total_bytes < s.total_bytes)
        {
            smallest = Some((plan, fp));
        }
    }
    smallest.map(Err).ok_or_else(|| {
        let runs = c
            .allowed
            .as_ref()
            .map(|a| a.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!(
            "No scheme the target runs ({runs}) can be written as {} for this model",
            if c.gguf { "GGUF" } else { "safetensors" }
        )
    })
}

/// The plan that changes nothing: a GGUF source whose weights are already
/// block-quantized, every tensor in the type it is stored in, when the
/// target runs all of them. Any other type re-encodes decoded blocks and
/// only adds error (a Q4_K_M source made Q8_0 is larger and no better), so
/// `--fit` takes this first whenever it fits.
fn as_stored(model: &Model, c: &Constraints) -> Option<Plan> {
    let block_quantized =
        |t: &Tensor| matches!(t.dtype, TensorDtype::Ggml(g) if g.block_elems() > 1);
    if model.gguf().is_none() || !c.gguf || !model.tensors.iter().any(block_quantized) {
        return None;
    }
    let mut tensors = Vec::with_capacity(model.tensors.len());
    for t in model.tensors.iter().filter(|t| t.dtype.is_float()) {
        let TensorDtype::Ggml(stored) = t.dtype else {
            return None;
        };
        let scheme = quant::scheme_of(stored)?;
        let runs = c.allowed.as_ref().is_none_or(|a| a.contains(&scheme));
        if is_quantizable(t) && !runs {
            return None;
        }
        tensors.push(TensorPlan {
            name: t.name.clone(),
            role: t.role,
            shape: t.shape.clone(),
            n_elems: t.n_elems,
            scheme: Some(scheme),
            bytes: t.n_bytes,
            reason: Reason::AsStored,
        });
    }
    let file_type = model
        .metadata()
        .get("general.file_type")
        .and_then(|v| v.parse::<u32>().ok())
        .and_then(crate::llamacpp::file_type_name);
    Some(Plan {
        preset: file_type.unwrap_or("as stored").to_string(),
        tensors,
    })
}

/// Bits per weight the source stores its quantizable tensors in.
fn source_bits_per_weight(model: &Model) -> f64 {
    let (bytes, elems) = model
        .tensors
        .iter()
        .filter(|t| is_quantizable(t))
        .fold((0u64, 0u64), |(b, n), t| (b + t.n_bytes, n + t.n_elems));
    if elems == 0 {
        f64::INFINITY
    } else {
        bytes as f64 * 8.0 / elems as f64
    }
}

/// Whether a tensor is a weight matrix that quantization applies to.
///
/// BERT's token-type table stays F32: llama.cpp adds its row directly to the
/// embeddings (a binary op that has no quantized kernel), and it is tiny.
pub fn is_quantizable(t: &Tensor) -> bool {
    let token_types = t.name.contains("token_type") || t.name.starts_with("token_types.");
    t.dtype.is_float()
        && t.shape.len() >= 2
        && t.role != TensorRole::Norm
        && t.n_elems >= 2
        && !token_types
}

fn choose(
    t: &Tensor,
    preset: Preset,
    n_layers: usize,
    c: &Constraints,
) -> Result<(Scheme, Reason), String> {
    if !is_quantizable(t) {
        return Ok((Scheme::F32, Reason::KeptF32));
    }
    let (wanted, mut reason) = preset_choice(t, preset, n_layers, c.tied_output);
    let mut scheme = wanted;
    if !quant::supports_row(scheme, t.row_len()) {
        scheme = row_fallback(scheme, t.row_len());
        reason = Reason::RowFallback {
            wanted: wanted.name(),
            row_len: t.row_len(),
        };
    }
    if let Some(allowed) = &c.allowed {
        if !allowed.contains(&scheme) {
            let replaced =
                nearest_allowed(scheme, t.row_len(), allowed, c.gguf).ok_or_else(|| {
                    format!(
                        "Tensor `{}` (row {}) fits none of the target's schemes: {}",
                        t.name,
                        t.row_len(),
                        allowed
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            reason = Reason::TargetRestricted {
                wanted: scheme.name(),
            };
            scheme = replaced;
        }
    }
    Ok((scheme, reason))
}

/// The preset's choice before any fallback.
fn preset_choice(
    t: &Tensor,
    preset: Preset,
    n_layers: usize,
    tied_output: bool,
) -> (Scheme, Reason) {
    let is_head = t.role == TensorRole::Head
        || (tied_output && t.role == TensorRole::Embedding && is_token_embedding(&t.name));
    match preset {
        Preset::Uniform(s) => {
            let low_block =
                s.is_gguf() && quant::bits_per_weight(s) < quant::bits_per_weight(Scheme::Q6K);
            if is_head && low_block {
                (
                    Scheme::Q6K,
                    Reason::Preset {
                        rule: "output head at Q6_K".into(),
                    },
                )
            } else {
                (s, Reason::Base)
            }
        }
        Preset::KMix {
            base,
            more,
            all_sensitive_layers,
            ..
        } => {
            if is_head {
                let head = if quant::bits_per_weight(more) > quant::bits_per_weight(Scheme::Q6K) {
                    more
                } else {
                    Scheme::Q6K
                };
                return (
                    head,
                    Reason::Preset {
                        rule: format!("output head at {head}"),
                    },
                );
            }
            let sensitive = is_sensitive(&t.name);
            let layer = layer_index(&t.name);
            let more_bits = match layer {
                Some(i) if all_sensitive_layers => use_more_bits(i, n_layers),
                Some(i) => i < n_layers.div_ceil(8),
                None => false,
            };
            if sensitive && more_bits {
                (
                    more,
                    Reason::Preset {
                        rule: format!("attn_v/ffn_down of layer {} at {more}", layer.unwrap_or(0)),
                    },
                )
            } else {
                (base, Reason::Base)
            }
        }
    }
}

/// llama.cpp's choice of layers that get more bits: the first and last
/// eighth, and every third layer in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

/// `attn_v` and `ffn_down` (and their Hugging Face names) are where
/// quantization error hurts most (llama.cpp's experience, kept here).
fn is_sensitive(name: &str) -> bool {
    [
        "attn_v.",
        "ffn_down.",
        "self_attn.v_proj",
        "mlp.down_proj",
        "attention.self.value",
        ".output.dense",
    ]
    .iter()
    .any(|p| name.contains(p))
        && !name.contains("attention.output.dense")
}

/// The token embedding table (not position or type embeddings).
fn is_token_embedding(name: &str) -> bool {
    name.starts_with("token_embd.")
        || name.contains("embed_tokens.")
        || name.contains("word_embeddings.")
}

/// The block index in `blk.N.` / `layers.N.` / `layer.N.` names.
pub fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(part) = parts.next() {
        if matches!(part, "blk" | "layers" | "layer" | "h") {
            return parts.next()?.parse().ok();
        }
    }
    None
}

fn layer_count(tensors: &[Tensor]) -> usize {
    tensors
        .iter()
        .filter_map(|t| layer_index(&t.name))
        .max()
        .map_or(0, |m| m + 1)
}

/// llama.cpp's fallback when a row is not a whole number of K-quant
/// super-blocks (256); 32-element blocks fall back to F16.
fn row_fallback(wanted: Scheme, row_len: u64) -> Scheme {
    let candidates: &[Scheme] = match wanted {
        Scheme::Q2K | Scheme::Q3K => &[Scheme::Q4_0, Scheme::F16],
        Scheme::Q4K => &[Scheme::Q5_0, Scheme::F16],
        Scheme::Q5K => &[Scheme::Q5_1, Scheme::F16],
        Scheme::Q6K => &[Scheme::Q8_0, Scheme::F16],
        Scheme::Int4Group { .. } => &[Scheme::Int8PerChannel],
        _ => &[Scheme::F16],
    };
    candidates
        .iter()
        .copied()
        .find(|s| quant::supports_row(*s, row_len))
        .unwrap_or(Scheme::F32)
}

/// The allowed scheme closest in size to `wanted`, preferring more bits.
fn nearest_allowed(
    wanted: Scheme,
    row_len: u64,
    allowed: &BTreeSet<Scheme>,
    gguf: bool,
) -> Option<Scheme> {
    let target_bpw = quant::bits_per_weight(wanted);
    let fits: Vec<Scheme> = allowed
        .iter()
        .copied()
        .filter(|s| s.is_gguf() == gguf || matches!(s, Scheme::F32 | Scheme::F16 | Scheme::BF16))
        .filter(|s| quant::supports_row(*s, row_len))
        .collect();
    let above = fits
        .iter()
        .copied()
        .filter(|s| quant::bits_per_weight(*s) >= target_bpw)
        .min_by(|a, b| quant::bits_per_weight(*a).total_cmp(&quant::bits_per_weight(*b)));
    above.or_else(|| {
        fits.into_iter()
            .max_by(|a, b| quant::bits_per_weight(*a).total_cmp(&quant::bits_per_weight(*b)))
    })
}
