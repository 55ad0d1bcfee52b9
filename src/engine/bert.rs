//! BERT-style sentence encoder (MiniLM and kin): learned absolute positions,
//! post-LayerNorm blocks, exact (erf) GELU, mean pooling over the attention
//! mask, L2 normalisation. Built from burn modules so the distiller can train
//! the same code it runs.

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::activation::gelu;
use super::weights::{Dense, Weights};
use super::EngineError;
use crate::model::BertConfig;

#[derive(Module, Debug)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub ffn_up: Linear,
    pub ffn_down: Linear,
    pub out_norm: LayerNorm,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub word: Embedding,
    pub position: Embedding,
    pub token_type: Embedding,
    pub embed_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
}

/// A batch of token ids, right-padded, with its attention mask.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
}

impl Batch {
    fn padded(&self) -> (Vec<i64>, Vec<f32>, usize) {
        let len = self.ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(self.ids.len() * len);
        let mut mask = Vec::with_capacity(self.ids.len() * len);
        for row in &self.ids {
            ids.extend(row.iter().map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0, len - row.len()));
            mask.extend(std::iter::repeat_n(1.0, row.len()));
            mask.extend(std::iter::repeat_n(0.0, len - row.len()));
        }
        (ids, mask, len)
    }
}

/// Where a network's tensors come from: llama.cpp name and expected shape in,
/// f32 tensor out (a model file, a teacher's layer subset, a random init).
pub type TensorSource<'a> = dyn Fn(&str, &[usize]) -> Result<Dense, EngineError> + 'a;

impl BertEncoder {
    pub fn load(c: &BertConfig, w: &Weights, device: &Device) -> Result<Self, EngineError> {
        Self::build(c, &|name, shape| w.get(name, shape), device)
    }

    /// Builds the encoder from any tensor source.
    pub fn build(c: &BertConfig, w: &TensorSource, device: &Device) -> Result<Self, EngineError> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = |part: &str| format!("blk.{i}.{part}");
                Ok(BertLayer {
                    query: linear(w, &p("attn_q"), h, h, device)?,
                    key: linear(w, &p("attn_k"), h, h, device)?,
                    value: linear(w, &p("attn_v"), h, h, device)?,
                    attn_out: linear(w, &p("attn_output"), h, h, device)?,
                    attn_norm: layer_norm(w, &p("attn_output_norm"), h, eps, device)?,
                    ffn_up: linear(w, &p("ffn_up"), f, h, device)?,
                    ffn_down: linear(w, &p("ffn_down"), h, f, device)?,
                    out_norm: layer_norm(w, &p("layer_output_norm"), h, eps, device)?,
                    heads: c.num_attention_heads,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        Ok(Self {
            word: embedding(w, "token_embd.weight", c.vocab_size, h, device)?,
            position: embedding(
                w,
                "position_embd.weight",
                c.max_position_embeddings,
                h,
                device,
            )?,
            token_type: embedding(w, "token_types.weight", c.type_vocab_size, h, device)?,
            embed_norm: layer_norm(w, "token_embd_norm", h, eps, device)?,
            layers,
        })
    }

    /// Token states of the last layer, `[batch, len, hidden]`, and the mask `[batch, len]`.
    pub fn hidden_states(&self, batch: &Batch) -> (Tensor<3>, Tensor<2>) {
        let device = self.word.weight.device();
        let (ids, mask, len) = batch.padded();
        let b = batch.ids.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .reshape([1, len])
            .repeat_dim(0, b);
        let types = Tensor::<2, Int>::zeros([b, len], &device);
        let x = self.word.forward(ids)
            + self.position.forward(positions)
            + self.token_type.forward(types);
        let mut x = self.embed_norm.forward(x);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, len]), &device);
        // Padded keys get a large negative score so softmax gives them no weight.
        let bias = (mask.clone() - 1.0).mul_scalar(1e9).reshape([b, 1, 1, len]);
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        (x, mask)
    }

    /// Mean-pooled, L2-normalised sentence embeddings, `[batch, hidden]`.
    pub fn embed(&self, batch: &Batch) -> Tensor<2> {
        l2_normalize(self.pooled(batch))
    }

    /// Token states averaged over the attention mask, before normalisation
    /// (what embedding distillation matches), `[batch, hidden]`.
    pub fn pooled(&self, batch: &Batch) -> Tensor<2> {
        let (x, mask) = self.hidden_states(batch);
        let [b, len, h] = x.dims();
        let m = mask.reshape([b, len, 1]);
        let summed: Tensor<2> = (x * m.clone()).sum_dim(1).reshape([b, h]);
        let count: Tensor<2> = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
        summed / count
    }
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, key_bias: Tensor<4>) -> Tensor<3> {
        let [b, len, h] = x.dims();
        let hd = h / self.heads;
        let split = |t: Tensor<3>| t.reshape([b, len, self.heads, hd]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt())
            + key_bias;
        let ctx = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, len, h]);
        let x = self.attn_norm.forward(x + self.attn_out.forward(ctx));
        let y = self.ffn_down.forward(gelu(self.ffn_up.forward(x.clone())));
        self.out_norm.forward(x + y)
    }
}

pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

pub(super) fn tensor2(d: Dense, device: &Device) -> Tensor<2> {
    let [r, c] = [d.shape[0], d.shape[1]];
    Tensor::from_data(TensorData::new(d.data, [r, c]), device)
}

pub(super) fn tensor1(d: Dense, device: &Device) -> Tensor<1> {
    let n = d.data.len();
    Tensor::from_data(TensorData::new(d.data, [n]), device)
}

/// A stored `[out, in]` weight as burn's `[in, out]` Linear, with its bias.
fn linear(
    w: &TensorSource,
    name: &str,
    out: usize,
    inp: usize,
    device: &Device,
) -> Result<Linear, EngineError> {
    let weight = w(&format!("{name}.weight"), &[out, inp])?;
    let bias = w(&format!("{name}.bias"), &[out])?;
    Ok(Linear {
        weight: Param::from_tensor(tensor2(transpose(&weight), device)),
        bias: Some(Param::from_tensor(tensor1(bias, device))),
    })
}

fn layer_norm(
    w: &TensorSource,
    name: &str,
    h: usize,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm, EngineError> {
    let mut norm = LayerNormConfig::new(h).with_epsilon(eps).init(device);
    norm.gamma = Param::from_tensor(tensor1(w(&format!("{name}.weight"), &[h])?, device));
    norm.beta = Some(Param::from_tensor(tensor1(
        w(&format!("{name}.bias"), &[h])?,
        device,
    )));
    Ok(norm)
}

fn embedding(
    w: &TensorSource,
    name: &str,
    n: usize,
    h: usize,
    device: &Device,
) -> Result<Embedding, EngineError> {
    Ok(Embedding {
        weight: Param::from_tensor(tensor2(w(name, &[n, h])?, device)),
    })
}

/// Row-major `[r, c]` to `[c, r]`, materialised so matmuls read contiguous memory.
pub(super) fn transpose(d: &Dense) -> Dense {
    let (r, c) = (d.shape[0], d.shape[1]);
    let mut data = vec![0f32; d.data.len()];
    for (i, row) in d.data.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            data[j * r + i] = v;
        }
    }
    Dense {
        shape: vec![c, r],
        data,
    }
}
