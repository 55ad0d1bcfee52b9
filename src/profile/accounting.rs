//! Static accounting: what a model costs before anything runs. Weight bytes
//! come from the quantize planner itself, so `profile` and `quantize` can
//! never disagree on a size.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::memory::Footprint;
use crate::model::{Architecture, LlamaLikeConfig, Model, TensorRole};
use crate::quant::plan::{self, Constraints, Plan, Preset};
use crate::target::Target;

/// Parameters per role (embeddings, attention, MLP, norms, head).
pub fn parameters_by_role(model: &Model) -> BTreeMap<TensorRole, u64> {
    let mut by_role = BTreeMap::new();
    for t in model.tensors.iter().filter(|t| t.dtype.is_float()) {
        *by_role.entry(t.role).or_insert(0) += t.n_elems;
    }
    by_role
}

/// Floating-point operations of one forward pass over `tokens` new tokens
/// attending to `context` positions: 2 per weight of every matrix a token
/// passes through (embedding lookups excluded, a tied head included), plus
/// the attention score and weighted-sum products.
pub fn forward_flops(model: &Model, tokens: u64, context: u64) -> f64 {
    // Per layer: the attention width and how many positions it attends to
    // (a sliding-window layer at most its window).
    let attended: Vec<(usize, u64)> = match &model.architecture {
        Architecture::Bert(c) => vec![(c.hidden_size, context); c.num_hidden_layers],
        Architecture::Llama(c) | Architecture::LlamaLike(LlamaLikeConfig { base: c, .. }) => {
            vec![(c.num_attention_heads * c.head_dim(), context); c.num_hidden_layers]
        }
        Architecture::Gemma3(c) => (0..c.num_hidden_layers)
            .map(|i| {
                let window = c.sliding_window as u64;
                let seen = if c.is_sliding(i) {
                    context.min(window)
                } else {
                    context
                };
                (c.num_attention_heads * c.head_dim, seen)
            })
            .collect(),
        Architecture::Other { .. } => return 0.0,
    };
    // Quantized safetensors store weights as integers (int4 two per byte):
    // classify by name and count logical weights.
    let schemes = model.metadata();
    let matmul: u64 = model
        .tensors
        .iter()
        .filter(|t| {
            t.shape.len() == 2
                && matches!(
                    TensorRole::classify(&t.name, true),
                    TensorRole::Attention | TensorRole::Mlp | TensorRole::Head
                )
        })
        .filter(|t| !t.name.contains("pooler") && t.role != TensorRole::Norm)
        .filter(|t| !t.name.ends_with(".scale") && !t.name.ends_with(".zero"))
        .map(|t| {
            let packed = schemes
                .get(&format!("edgeforge.scheme.{}", t.name))
                .is_some_and(|s| s.starts_with("int4"));
            if packed {
                2 * t.n_elems
            } else {
                t.n_elems
            }
        })
        .sum();
    let untied = !model.tensors.iter().any(|t| t.role == TensorRole::Head);
    let tied_head = match &model.architecture {
        Architecture::Llama(c) if untied => (c.vocab_size * c.hidden_size) as u64,
        Architecture::Gemma3(c) if untied => (c.vocab_size * c.hidden_size) as u64,
        Architecture::LlamaLike(c) if untied => (c.base.vocab_size * c.base.hidden_size) as u64,
        _ => 0,
    };
    let attention: f64 = attended
        .iter()
        .map(|&(width, seen)| 4.0 * width as f64 * seen as f64)
        .sum();
    tokens as f64 * (2.0 * (matmul + tied_head) as f64 + attention)
}

/// Whether a target loads GGUF (llama.cpp-style runtimes) rather than safetensors.
pub fn wants_gguf(target: &Target) -> bool {
    target.formats().contains("gguf")
}

/// Planner constraints for `model` on `target`.
pub fn constraints(model: &Model, target: &Target) -> Constraints {
    Constraints::for_model(model, Some(target.allowed_schemes()), wants_gguf(target))
}

/// One scheme's plan on one target, with its memory against the budget.
#[derive(Debug, Clone, Serialize)]
pub struct SchemeCost {
    pub scheme: String,
    pub weights_bytes: u64,
    pub bits_per_weight: f64,
    /// Tensors that fell back to another format (row widths).
    pub fallbacks: usize,
    pub footprint: Footprint,
    pub fits: bool,
    pub shortfall_mib: f64,
}

/// Presets to cost on a target: the ones asked for, else every preset of the
/// quality ladder the target runs.
pub fn presets_for(target: &Target, asked: &[Preset]) -> Vec<Preset> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let allowed = target.allowed_schemes();
    Preset::ladder(wants_gguf(target))
        .into_iter()
        .filter(|p| allowed.contains(&p.base()))
        .collect()
}

/// Plans `preset` for `target` and sums the footprint at `context`.
pub fn cost(
    model: &Model,
    target: &Target,
    preset: Preset,
    context: u64,
) -> Result<(Plan, SchemeCost), String> {
    let constraints = constraints(model, target);
    // A GGUF leaves out what llama.cpp's converter drops (BERT's pooler).
    let kept: Vec<_> = model
        .tensors
        .iter()
        .filter(|t| {
            !constraints.gguf
                || crate::llamacpp::tensor_name(&model.architecture, &t.name).is_some()
        })
        .cloned()
        .collect();
    let plan = plan::plan(&kept, preset, &constraints)?;
    let footprint = Footprint::new(
        &model.architecture,
        plan.total_bytes(),
        context,
        target.runtime_overhead_bytes(),
        target.model_budget_bytes(),
    );
    let cost = SchemeCost {
        scheme: preset.name(),
        weights_bytes: plan.total_bytes(),
        bits_per_weight: plan.bits_per_weight(),
        fallbacks: plan
            .tensors
            .iter()
            .filter(|t| {
                matches!(
                    t.reason,
                    plan::Reason::RowFallback { .. } | plan::Reason::TargetRestricted { .. }
                )
            })
            .count(),
        fits: footprint.fits(),
        shortfall_mib: footprint.shortfall_mib(),
        footprint,
    };
    Ok((plan, cost))
}

/// Process baseline beside model data: binary, allocator, tokenizer, threads.
const HOST_BASELINE_BYTES: u64 = 48 << 20;

/// Relative margin stated with [`host_rss_estimate`].
pub const HOST_RSS_MARGIN: f64 = 0.3;

/// Peak resident memory the engine should reach on this host running
/// `tokens` tokens: the mapped model file (every page is read once at load),
/// the engine's own copy of the weights (packed blocks for the decoder's
/// kernels, f32 for everything burn runs), KV cache, activations and a fixed
/// process baseline.
pub fn host_rss_estimate(model: &Model, tokens: u64) -> u64 {
    use crate::format::gguf::GgmlType;
    use crate::model::TensorDtype;
    let file: u64 = model
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let decoder = model.architecture.is_decoder();
    let resident: u64 = model
        .tensors
        .iter()
        .filter(|t| t.dtype.is_float())
        .map(|t| match t.dtype {
            TensorDtype::Ggml(
                GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1,
            ) if decoder && t.shape.len() == 2 => t.n_bytes,
            _ => t.n_elems * 4,
        })
        .sum();
    file + resident
        + crate::memory::kv_cache_bytes(&model.architecture, tokens) * 2
        + crate::memory::activation_bytes(&model.architecture, tokens)
        + HOST_BASELINE_BYTES
}
