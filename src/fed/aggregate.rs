//! `fed aggregate`: checks every update against the global version, then
//! combines the accepted deltas tensor by tensor into the next version.
//!
//! Order and threads never change the result: updates are taken in sha256
//! order, each output element is computed from the updates in that order by
//! one thread, and threads only split a tensor's elements. Memory is the
//! largest tensor plus one chunk of every update at a time (updates are
//! memory-mapped), whatever the strategy; Krum adds its n × n distances.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::global::{self, Accepted, Global, Lineage, Rejected, Round, RoundSummary};
use super::update::{DeltaTensor, Update};
use super::FedError;
use crate::format::atomic::Overwrite;
use crate::format::safetensors::{Dtype, SafetensorsFile, SafetensorsStream, TensorSpec};

/// Elements per chunk: one chunk of every update is held at a time.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Weighted by examples (and staleness); a tensor is averaged over the
    /// updates that carry it.
    FedAvg,
    /// Coordinate-wise median (unweighted, as Flower's `aggregate_median`).
    Median,
    /// Coordinate-wise mean after cutting this fraction at each end.
    TrimmedMean(f64),
    /// Krum (`keep` = 0) or Multi-Krum (FedAvg of the `keep` best).
    Krum { malicious: usize, keep: usize },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Self::FedAvg => "fedavg",
            Self::Median => "median",
            Self::TrimmedMean(_) => "trimmed-mean",
            Self::Krum { .. } => "krum",
        }
    }
}

pub struct Options {
    pub strategy: Strategy,
    /// Scale each update to at most this L2 norm before aggregating.
    pub clip_norm: Option<f64>,
    /// Reject updates whose L2 norm is above this.
    pub max_norm: Option<f64>,
    /// new = global + server_lr × aggregate.
    pub server_lr: f64,
    pub min_clients: usize,
    /// Accept updates trained on one of the last S versions (down-weighted).
    pub max_staleness: u64,
    /// Refuse when the working memory bound exceeds this.
    pub memory_budget: u64,
    /// When given, every update must be signed by its client's listed key.
    pub trusted: Option<super::sign::Trusted>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub version: u64,
    pub id: String,
    pub parent: String,
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
    /// The working-memory bound the strategy ran within.
    pub memory_bound_bytes: u64,
}

/// FedAsync's polynomial staleness weight (a = 0.5).
fn staleness_weight(s: u64) -> f64 {
    (1.0 + s as f64).powf(-0.5)
}

struct Candidate {
    update: Update,
    staleness: u64,
    norm: f64,
}

fn reject(update: &Update, reason: String) -> Rejected {
    Rejected {
        update: file_name(&update.path),
        sha256: Some(update.sha256.clone()),
        client: Some(update.meta.client.clone()),
        reason,
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The most examples one update may claim: a client's weight in FedAvg is its
/// example count, so an unbounded claim (2^64 - 1) would take all the weight.
pub const MAX_EXAMPLES: u64 = 1 << 32;

/// Structure and provenance: the reason to turn `u` away, if any.
fn provenance_problem(
    u: &Update,
    global: &Global,
    weights: &SafetensorsFile,
    max_staleness: u64,
) -> Result<u64, String> {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let staleness = global.staleness_of(&u.meta.base).ok_or_else(|| {
        format!(
            "trained on base {}, not this global ({}) or an ancestor: version drift",
            short(&u.meta.base),
            short(&global.id)
        )
    })?;
    if staleness > max_staleness {
        return Err(format!(
            "trained on a version {staleness} behind; --max-staleness is {max_staleness}"
        ));
    }
    if u.meta.tokenizer_sha256 != global.lineage.tokenizer_sha256 {
        return Err(format!(
            "tokenizer {} differs from the global's {}",
            short(&u.meta.tokenizer_sha256),
            short(&global.lineage.tokenizer_sha256)
        ));
    }
    if u.meta.recipe_sha256 != global.lineage.recipe_sha256 {
        return Err(format!(
            "recipe {} differs from the global's {}",
            short(&u.meta.recipe_sha256),
            short(&global.lineage.recipe_sha256)
        ));
    }
    if u.tensors.is_empty() {
        return Err("carries no tensors".into());
    }
    if u.meta.examples == 0 {
        return Err("reports no local examples".into());
    }
    if u.meta.examples > MAX_EXAMPLES {
        return Err(format!(
            "reports {} local examples, more than the {MAX_EXAMPLES} one client may claim",
            u.meta.examples
        ));
    }
    crate::guard::path_component(&u.meta.client, "client id")?;
    crate::guard::path_component(&u.meta.target, "target")?;
    let by_name: HashMap<&str, _> = weights
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for t in &u.tensors {
        let g = by_name
            .get(t.name.as_str())
            .ok_or_else(|| format!("tensor `{}` is not in the global model", t.name))?;
        if g.shape != t.shape {
            return Err(format!(
                "tensor `{}` has shape {:?}, the global's is {:?}",
                t.name, t.shape, g.shape
            ));
        }
        if g.dtype != Dtype::F32 {
            return Err(format!(
                "tensor `{}` is {:?} in the global model, not F32",
                t.name, g.dtype
            ));
        }
    }
    Ok(staleness)
}

/// L2 norm of every delta, or the reason the values are unusable.
fn norm_of(u: &Update) -> Result<f64, String> {
    let mut sum = 0f64;
    let mut buf = vec![0f32; CHUNK];
    for t in &u.tensors {
        let n = t.n_elems();
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let b = &mut buf[..end - start];
            u.read(t, start..end, b);
            u.release(t, start..end);
            for &v in b.iter() {
                if !v.is_finite() {
                    return Err(format!("NaN or Inf in tensor `{}`", t.name));
                }
                sum += v as f64 * v as f64;
            }
        }
    }
    Ok(sum.sqrt())
}

/// One output element from the carriers' (already clipped) values.
fn combine(strategy: &Strategy, values: &mut [f64], weights: &[f64]) -> f64 {
    match strategy {
        Strategy::FedAvg | Strategy::Krum { .. } => {
            let total: f64 = weights.iter().sum();
            values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / total
        }
        Strategy::Median => {
            values.sort_by(f64::total_cmp);
            let n = values.len();
            if n % 2 == 1 {
                values[n / 2]
            } else {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            }
        }
        Strategy::TrimmedMean(p) => {
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let cut = (p * n as f64) as usize;
            let kept = &values[cut..n - cut];
            kept.iter().sum::<f64>() / kept.len() as f64
        }
    }
}

/// Krum's choice among `cands`: indices of the kept updates (one for Krum,
/// `keep` for Multi-Krum), as Flower's `aggregate_krum` picks them.
fn krum_choice(cands: &[Candidate], clip: &[f64], malicious: usize, keep: usize) -> Vec<usize> {
    let n = cands.len();
    // Squared distances between the clipped delta vectors (absent tensors are zero).
    let mut names: Vec<&str> = cands
        .iter()
        .flat_map(|c| c.update.tensors.iter().map(|t| t.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let mut dist = vec![0f64; n * n];
    let mut bufs = vec![vec![0f32; CHUNK]; n];
    for name in names {
        let tensors: Vec<Option<&DeltaTensor>> = cands
            .iter()
            .map(|c| c.update.tensors.iter().find(|t| t.name == name))
            .collect();
        let len = tensors.iter().flatten().next().map_or(0, |t| t.n_elems());
        for start in (0..len).step_by(CHUNK) {
            let end = (start + CHUNK).min(len);
            for (k, t) in tensors.iter().enumerate() {
                let b = &mut bufs[k][..end - start];
                match t {
                    Some(t) => {
                        cands[k].update.read(t, start..end, b);
                        cands[k].update.release(t, start..end);
                    }
                    None => b.fill(0.0),
                }
            }
            for i in 0..n {
                for j in i + 1..n {
                    let d: f64 = bufs[i][..end - start]
                        .iter()
                        .zip(&bufs[j][..end - start])
                        .map(|(&a, &b)| {
                            let x = a as f64 * clip[i] - b as f64 * clip[j];
                            x * x
                        })
                        .sum();
                    dist[i * n + j] += d;
                    dist[j * n + i] += d;
                }
            }
        }
    }
    let closest = n.saturating_sub(malicious + 2).max(1);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut row: Vec<(f64, usize)> = (0..n).map(|j| (dist[i * n + j], j)).collect();
            // numpy's argsort is stable: ties keep index order; the first is itself.
            row.sort_by(|a, b| a.0.total_cmp(&b.0));
            row[1..=closest.min(n - 1)].iter().map(|(d, _)| d).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    if keep > 0 {
        order.truncate(keep.min(n));
    } else {
        order.truncate(1);
    }
    order.sort();
    order
}

/// FedAvg of one chunk, streaming: one update at a time is added into f64
/// accumulators, in sha256 order (the same sums as `combine`, element by
/// element, without gathering every update's chunk first).
fn weighted_mean(
    carriers: &[(usize, &DeltaTensor)],
    cands: &[Candidate],
    weight: &[f64],
    clip: &[f64],
    start: usize,
    len: usize,
) -> Vec<f64> {
    let mut acc = vec![0f64; len];
    let mut buf = vec![0f32; len];
    for (i, d) in carriers {
        let update = &cands[*i].update;
        update.read(d, start..start + len, &mut buf);
        update.release(d, start..start + len);
        let (c, w) = (clip[*i], weight[*i]);
        for (a, &v) in acc.iter_mut().zip(&buf) {
            *a += v as f64 * c * w;
        }
    }
    let total: f64 = carriers.iter().map(|(i, _)| weight[*i]).sum();
    acc.iter_mut().for_each(|a| *a /= total);
    acc
}

/// Median or trimmed mean of one chunk: every carrier's values at once.
fn coordinate_wise(
    strategy: &Strategy,
    carriers: &[(usize, &DeltaTensor)],
    cands: &[Candidate],
    weight: &[f64],
    clip: &[f64],
    start: usize,
    len: usize,
) -> Vec<f64> {
    let mut bufs = vec![0f32; carriers.len() * len];
    for (k, (i, d)) in carriers.iter().enumerate() {
        let update = &cands[*i].update;
        update.read(d, start..start + len, &mut bufs[k * len..(k + 1) * len]);
        update.release(d, start..start + len);
    }
    let w: Vec<f64> = carriers.iter().map(|(i, _)| weight[*i]).collect();
    let mut values = vec![0f64; carriers.len()];
    (0..len)
        .map(|j| {
            for (k, (i, _)) in carriers.iter().enumerate() {
                values[k] = bufs[k * len + j] as f64 * clip[*i];
            }
            combine(strategy, &mut values, &w)
        })
        .collect()
}

/// Runs one round into `out` (a new folder).
pub fn aggregate(
    global: &Global,
    paths: &[PathBuf],
    o: &Options,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Outcome, FedError> {
    if out.exists() {
        return Err(FedError::at(
            out,
            "already exists: a version is never overwritten",
        ));
    }
    global.check_files()?;
    let weights_path = global.weights();
    let weights =
        SafetensorsFile::open(&weights_path).map_err(|e| FedError::at(&weights_path, e.message))?;

    let mut rejected = Vec::new();
    let mut opened = Vec::new();
    for p in paths {
        match Update::open(p) {
            Ok(u) => opened.push(u),
            Err(reason) => rejected.push(Rejected {
                update: file_name(p),
                sha256: crate::artifact::hash_file(p).ok().map(|h| h.1),
                client: None,
                reason,
            }),
        }
    }
    opened.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let mut per_client: BTreeMap<String, usize> = BTreeMap::new();
    for u in &opened {
        *per_client.entry(u.meta.client.clone()).or_default() += 1;
    }
    let mut cands = Vec::new();
    for u in opened {
        let sent = per_client[&u.meta.client];
        let signed = match &o.trusted {
            Some(t) => t.check(&u.meta.client, u.file()),
            None => Ok(()),
        };
        let checked = signed
            .and_then(|()| provenance_problem(&u, global, &weights, o.max_staleness))
            .and_then(|s| {
                if sent > 1 {
                    return Err(format!(
                        "client `{}` sent {sent} updates this round",
                        u.meta.client
                    ));
                }
                let norm = norm_of(&u)?;
                match o.max_norm {
                    Some(m) if norm > m => {
                        Err(format!("delta norm {norm:.4} is above --max-norm {m}"))
                    }
                    _ => Ok((s, norm)),
                }
            });
        match checked {
            Ok((staleness, norm)) => cands.push(Candidate {
                update: u,
                staleness,
                norm,
            }),
            Err(reason) => rejected.push(reject(&u, reason)),
        }
    }
    rejected.sort_by(|a, b| (&a.sha256, &a.update).cmp(&(&b.sha256, &b.update)));
    if cands.len() < o.min_clients.max(1) {
        return Err(FedError::TooFewClients {
            accepted: cands.len(),
            received: paths.len(),
            min: o.min_clients,
            rejected,
        });
    }

    let n = cands.len();
    let largest = weights
        .tensors()
        .iter()
        .map(|t| t.n_elems())
        .max()
        .unwrap_or(0);
    let memory_bound_bytes = (n * CHUNK * 8 * rayon::current_num_threads()) as u64
        + largest * 4
        + if matches!(o.strategy, Strategy::Krum { .. }) {
            (n * n * 8 + n * CHUNK * 4) as u64
        } else {
            0
        };
    if memory_bound_bytes > o.memory_budget {
        return Err(FedError::at(
            &weights_path,
            format!(
                "{} with {n} updates needs up to {} of working memory, above the budget of {} (--memory-budget-mb)",
                o.strategy.name(),
                crate::units::human_bytes(memory_bound_bytes),
                crate::units::human_bytes(o.memory_budget)
            ),
        ));
    }
    let clip: Vec<f64> = cands
        .iter()
        .map(|c| match o.clip_norm {
            Some(m) if c.norm > m => m / c.norm,
            _ => 1.0,
        })
        .collect();
    let mut weight: Vec<f64> = cands
        .iter()
        .map(|c| c.update.meta.examples as f64 * staleness_weight(c.staleness))
        .collect();
    if let Strategy::Krum { malicious, keep } = o.strategy {
        let kept = krum_choice(&cands, &clip, malicious, keep);
        for (i, w) in weight.iter_mut().enumerate() {
            if !kept.contains(&i) {
                *w = 0.0;
            }
        }
    }

    // The next version, staged beside `out`.
    let staged = global::stage(out)?;
    let model_dir = staged.path().join(global::MODEL_DIR);
    global::copy_tree(&global.dir.join(global::MODEL_DIR), &model_dir)?;
    fs_err::copy(
        global.dir.join(global::RECIPE),
        staged.path().join(global::RECIPE),
    )
    .map_err(|e| FedError::at(&global.dir, e.to_string()))?;
    let out_weights = staged.path().join(global::WEIGHTS);
    let specs: Vec<TensorSpec> = weights.tensors().iter().map(TensorSpec::from).collect();
    let mut stream =
        SafetensorsStream::create(&out_weights, &specs, weights.metadata(), Overwrite::Allow)
            .map_err(|e| FedError::at(&out_weights, e.message))?;
    for t in weights.tensors() {
        let base = weights.data(t);
        let carriers: Vec<(usize, &DeltaTensor)> = cands
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                weight[*i] > 0.0 || !matches!(o.strategy, Strategy::FedAvg | Strategy::Krum { .. })
            })
            .filter_map(|(i, c)| {
                c.update
                    .tensors
                    .iter()
                    .find(|d| d.name == t.name)
                    .map(|d| (i, d))
            })
            .collect();
        if carriers.is_empty() {
            stream
                .write_tensor(base)
                .map_err(|e| FedError::at(&out_weights, e.message))?;
            progress(base.len() as u64);
            continue;
        }
        let mut next: Vec<u8> = base.to_vec();
        next.par_chunks_mut(CHUNK * 4)
            .enumerate()
            .for_each(|(c, out_chunk)| {
                let start = c * CHUNK;
                let len = out_chunk.len() / 4;
                let agg = if matches!(o.strategy, Strategy::FedAvg | Strategy::Krum { .. }) {
                    weighted_mean(&carriers, &cands, &weight, &clip, start, len)
                } else {
                    coordinate_wise(&o.strategy, &carriers, &cands, &weight, &clip, start, len)
                };
                for (j, a) in agg.iter().enumerate() {
                    let b = &mut out_chunk[j * 4..j * 4 + 4];
                    let g = f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64;
                    b.copy_from_slice(&((g + o.server_lr * a) as f32).to_le_bytes());
                }
            });
        // A version with inf or NaN would load and print NaN embeddings with
        // exit 0 on every device: refuse it here, naming the tensor.
        if let Some(bad) = next
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .find(|v| !v.is_finite())
        {
            return Err(FedError::at(
                &global.dir,
                format!(
                    "tensor `{}` of the new version would hold {bad}: refused (lower the server learning rate or clip updates)",
                    t.name
                ),
            ));
        }
        stream
            .write_tensor(&next)
            .map_err(|e| FedError::at(&out_weights, e.message))?;
        progress(base.len() as u64);
    }
    stream
        .finish()
        .map_err(|e| FedError::at(&out_weights, e.message))?;

    let total_weight: f64 = weight.iter().sum();
    let accepted: Vec<Accepted> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| Accepted {
            sha256: c.update.sha256.clone(),
            client: c.update.meta.client.clone(),
            target: c.update.meta.target.clone(),
            examples: c.update.meta.examples,
            weight: match o.strategy {
                Strategy::FedAvg | Strategy::Krum { .. } => round6(weight[i] / total_weight),
                _ => round6(1.0 / n as f64),
            },
            staleness: c.staleness,
            norm: round6(c.norm),
            clip_factor: round6(clip[i]),
            tensors: c.update.tensors.len(),
        })
        .collect();
    let mut parameters = BTreeMap::new();
    parameters.insert("server_lr".into(), serde_json::json!(o.server_lr));
    parameters.insert("min_clients".into(), serde_json::json!(o.min_clients));
    parameters.insert("max_staleness".into(), serde_json::json!(o.max_staleness));
    if let Some(c) = o.clip_norm {
        parameters.insert("clip_norm".into(), serde_json::json!(c));
    }
    if let Some(m) = o.max_norm {
        parameters.insert("max_norm".into(), serde_json::json!(m));
    }
    match o.strategy {
        Strategy::TrimmedMean(p) => {
            parameters.insert("trim".into(), serde_json::json!(p));
        }
        Strategy::Krum { malicious, keep } => {
            parameters.insert("krum_malicious".into(), serde_json::json!(malicious));
            parameters.insert("krum_keep".into(), serde_json::json!(keep));
        }
        _ => {}
    }
    let parent = &global.lineage;
    let mut history = parent.history.clone();
    history.push(RoundSummary {
        version: parent.version,
        id: global.id.clone(),
        strategy: parent.round.as_ref().map(|r| r.strategy.clone()),
        accepted: parent.round.as_ref().map_or(0, |r| r.accepted.len()),
        rejected: parent.round.as_ref().map_or(0, |r| r.rejected.len()),
        examples: parent
            .round
            .as_ref()
            .map_or(0, |r| r.accepted.iter().map(|a| a.examples).sum()),
    });
    let mut ancestors = parent.ancestors.clone();
    ancestors.push(global.id.clone());
    let mut lineage = Lineage {
        schema: global::SCHEMA.into(),
        version: parent.version + 1,
        parent: Some(global.id.clone()),
        ancestors,
        tokenizer_sha256: parent.tokenizer_sha256.clone(),
        recipe_sha256: parent.recipe_sha256.clone(),
        tool: env!("CARGO_PKG_VERSION").into(),
        files: Vec::new(),
        round: Some(Round {
            strategy: o.strategy.name().into(),
            parameters,
            accepted: accepted.clone(),
            rejected: rejected.clone(),
        }),
        history,
    };
    let id = global::seal(staged.path(), &mut lineage)?;
    global::commit(staged, out)?;
    Ok(Outcome {
        version: lineage.version,
        id,
        parent: global.id.clone(),
        accepted,
        rejected,
        memory_bound_bytes,
    })
}

/// Figures in lineage.json are rounded so float noise cannot change ids.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
