//! The quantization plan: which scheme each tensor gets, and why.
//!
//! Rules, in the order they apply (`llama-quantize`'s order):
//! 1. integer buffers are kept (safetensors) or dropped (GGUF, which llama.cpp
//!    does not load), 1-D tensors and norms stay F32;
//! 2. `--token-embedding-type` / `--output-tensor-type`, then the first
//!    `--tensor-type` pattern that matches;
//! 3. else, unless `--pure`, the preset's rules: a K-quant mix's per-layer
//!    raises ([`mixes`]), and for every quantized type the output head rule;
//! 4. a row width that is not a whole number of blocks falls back to the
//!    nearest format that fits (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
//!    IQ4_XS -> IQ4_NL, as llama.cpp does; 32-blocks -> F16);
//! 5. the target's allowed schemes replace any other choice by the nearest
//!    allowed one that fits.
//!
//! Every override is recorded in [`TensorPlan::reason`] so the report can say so.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::memory::Footprint;
use crate::model::{Architecture, Model, Tensor, TensorDtype, TensorRole};
use crate::quant::mixes::{self, Mix};
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
    /// Set by a per-tensor flag (`--tensor-type`, `--output-tensor-type`,
    /// `--token-embedding-type`).
    Override { flag: String },
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
            Reason::Override { flag } => write!(f, "{flag}"),
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
    /// One scheme for every weight matrix; for GGUF block schemes the output
    /// head follows llama.cpp's head rule (Q6_K, Q8_0 where its row is not
    /// whole blocks), as `llama-quantize Q4_0` does.
    Uniform(Scheme),
    /// A `llama-quantize` K-quant mix: its per-tensor rules.
    Mix(Mix),
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

impl Preset {
    /// Parses a `llama-quantize` type name (`Q4_K_M`, `Q2_K`, and its
    /// aliases `Q3_K`, `Q4_K`, `Q5_K` for the `_M` mixes) or a scheme name
    /// (`Q8_0`, `int8_pc`).
    pub fn parse(name: &str) -> Result<Preset, String> {
        if let Some(mix) = Mix::parse(name) {
            return Ok(Preset::Mix(mix));
        }
        name.parse::<Scheme>().map(Preset::Uniform).map_err(|e| {
            let mixes: Vec<&str> = Mix::ALL.iter().map(|m| m.name()).collect();
            format!("{e}; or a mix: {}", mixes.join(", "))
        })
    }

    /// The preset's name.
    pub fn name(&self) -> String {
        match self {
            Preset::Uniform(s) => s.name(),
            Preset::Mix(m) => m.name().to_string(),
        }
    }

    /// The scheme most tensors get.
    pub fn base(&self) -> Scheme {
        match self {
            Preset::Uniform(s) => *s,
            Preset::Mix(m) => m.base(),
        }
    }

    /// The presets `--fit` tries, best quality first, for one output family.
    pub fn ladder(gguf: bool) -> Vec<Preset> {
        if gguf {
            // By size, largest first, legacy formats between the K mixes:
            // the legacy ones keep an already-quantized source (say Q4_1)
            // as it is.
            let mix = Preset::Mix;
            let uniform = Preset::Uniform;
            vec![
                uniform(Scheme::F16),
                uniform(Scheme::Q8_0),
                uniform(Scheme::Q6K),
                uniform(Scheme::Q5_1),
                mix(Mix::Q5KM),
                mix(Mix::Q5KS),
                uniform(Scheme::Q5_0),
                uniform(Scheme::Q4_1),
                mix(Mix::Q4KM),
                mix(Mix::Q4KS),
                uniform(Scheme::Q4_0),
                mix(Mix::Q3KL),
                mix(Mix::Q3KM),
                mix(Mix::Q3KS),
                // Not Q2_K_S: llama-quantize refuses it without an
                // importance matrix, as too lossy.
                mix(Mix::Q2K),
            ]
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
    /// The token embedding doubles as the output head (no separate head
    /// tensor), so it gets the head's rule, as llama.cpp decides it.
    pub tied_output: bool,
    /// Query heads per KV head: the Q2_K mixes raise `attn_v` further at 4.
    pub gqa: usize,
    /// The family, to match `--tensor-type` patterns against llama.cpp's
    /// tensor names when the source uses Hugging Face's.
    pub architecture: Option<Architecture>,
    pub overrides: Overrides,
    /// Quantizing with an importance matrix: llama.cpp then keeps the first
    /// eighth of `ffn_down` at Q4_1 / Q5_1 in Q4_0 / Q5_0 files.
    pub has_imatrix: bool,
}

impl Constraints {
    /// The constraints of writing `model` (as GGUF or not) for a target
    /// that runs `allowed`.
    pub fn for_model(model: &Model, allowed: Option<BTreeSet<Scheme>>, gguf: bool) -> Constraints {
        let has_head = model
            .tensors
            .iter()
            .any(|t| mixes::Category::of(&t.name) == mixes::Category::Output);
        Constraints {
            allowed,
            gguf,
            tied_output: !has_head,
            gqa: model.architecture.gqa(),
            architecture: Some(model.architecture.clone()),
            overrides: Overrides::default(),
            has_imatrix: false,
        }
    }
}

/// `llama-quantize`'s per-tensor overrides, which win over the preset.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--pure`: every weight matrix at the preset's base type, no mix
    /// rules (row fallbacks still apply).
    pub pure: bool,
    /// `--output-tensor-type`.
    pub output: Option<Scheme>,
    /// `--token-embedding-type`.
    pub token_embedding: Option<Scheme>,
    /// `--tensor-type PATTERN=TYPE`, first match wins.
    pub tensor_types: Vec<TensorTypeRule>,
}

/// One `--tensor-type PATTERN=TYPE`: a regular expression searched for in
/// the tensor's llama.cpp name (or its source name).
#[derive(Debug, Clone)]
pub struct TensorTypeRule {
    pub pattern: regex::Regex,
    pub scheme: Scheme,
}

impl std::str::FromStr for TensorTypeRule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (pattern, ty) = spec
            .rsplit_once('=')
            .ok_or_else(|| format!("`{spec}` is not PATTERN=TYPE"))?;
        let scheme = ty.parse::<Scheme>().map_err(|e| e.to_string())?;
        let pattern = regex::Regex::new(pattern)
            .map_err(|e| format!("`{pattern}` is not a regular expression: {e}"))?;
        Ok(TensorTypeRule { pattern, scheme })
    }
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
    let (wanted, mut reason) = preset_choice(t, preset, n_layers, c);
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

/// The type before any fallback, decided as `llama-quantize` decides it:
/// `--token-embedding-type` and `--output-tensor-type` first, then (for a
/// quantized base) the first `--tensor-type` pattern that matches, else the
/// mix's rules unless `--pure`.
fn preset_choice(t: &Tensor, preset: Preset, n_layers: usize, c: &Constraints) -> (Scheme, Reason) {
    let o = &c.overrides;
    let category = mixes::Category::of(&t.name);
    let flagged = |flag: &str, scheme: Scheme| {
        (
            scheme,
            Reason::Override {
                flag: format!("{flag} {scheme}"),
            },
        )
    };
    match (category, o.token_embedding, o.output) {
        (mixes::Category::TokenEmbedding, Some(s), _) => {
            return flagged("--token-embedding-type", s)
        }
        (mixes::Category::Output, _, Some(s)) => return flagged("--output-tensor-type", s),
        _ => {}
    }
    let base = preset.base();
    if !base.is_quantized() {
        return (base, Reason::Base);
    }
    if let Some(rule) = matching_rule(t, c) {
        let flag = format!("--tensor-type {}={}", rule.pattern.as_str(), rule.scheme);
        return (rule.scheme, Reason::Override { flag });
    }
    if o.pure {
        return (base, Reason::Base);
    }
    let site = mixes::Site {
        category,
        layer: layer_index(&t.name),
        n_layers,
        gqa: c.gqa.max(1),
        tied: c.tied_output,
        row_len: t.row_len(),
        has_imatrix: c.has_imatrix,
    };
    let raised = match preset {
        Preset::Mix(mix) => mixes::raise(mix, &site),
        // A single-type file still gets llama.cpp's head rule, where it is a
        // GGUF block type (`llama-quantize Q4_0` writes the head Q6_K).
        Preset::Uniform(s) if s.is_gguf() => {
            mixes::head_raise(s, &site).or_else(|| mixes::imatrix_raise(s, &site, c.has_imatrix))
        }
        Preset::Uniform(_) => None,
    };
    match raised {
        Some(s) if s != base => (
            s,
            Reason::Preset {
                rule: rule_name(&site, s),
            },
        ),
        _ => (base, Reason::Base),
    }
}

/// The first `--tensor-type` rule whose pattern is found in the tensor's
/// llama.cpp name or, failing that, its source name.
fn matching_rule<'c>(t: &Tensor, c: &'c Constraints) -> Option<&'c TensorTypeRule> {
    let rules = &c.overrides.tensor_types;
    if rules.is_empty() {
        return None;
    }
    let gguf_name = c
        .architecture
        .as_ref()
        .and_then(|arch| crate::llamacpp::tensor_name(arch, &t.name));
    let names: Vec<&str> = gguf_name
        .iter()
        .map(String::as_str)
        .chain([t.name.as_str()])
        .collect();
    rules
        .iter()
        .find(|r| names.iter().any(|n| r.pattern.is_match(n)))
}

/// How the report names the rule that raised a tensor.
fn rule_name(site: &mixes::Site, scheme: Scheme) -> String {
    use mixes::Category;
    let what = match site.category {
        Category::Output => "output head".to_string(),
        Category::TokenEmbedding => "tied token embedding (the head)".to_string(),
        Category::AttentionV => format!("attn_v of layer {}", site.layer.unwrap_or(0)),
        Category::AttentionOutput => format!("attn_output of layer {}", site.layer.unwrap_or(0)),
        Category::FfnDown => format!("ffn_down of layer {}", site.layer.unwrap_or(0)),
        Category::Other => "tensor".to_string(),
    };
    format!("{what} at {scheme}")
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
        Scheme::IQ4XS => &[Scheme::IQ4NL, Scheme::F16],
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
