//! `fed simulate`: a whole federation on this machine, as Flower's
//! simulation engine runs one. A real corpus is split into client shards
//! (Dirichlet non-IID over its topics), clients are spread over device
//! classes, and each round every client runs `fed train` on its shard and
//! the server runs `fed aggregate`; the held-out cosine to the teacher is
//! measured after every round. Baselines: the same student trained
//! centrally on all shards with the same total steps, and each client alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::aggregate::{self, Options, Strategy};
use super::global::{self, Global};
use super::train::{self, Request};
use super::update::{self, Update, UpdateMeta};
use super::FedError;
use crate::distill::student::SplitMix64;
use crate::format::atomic::{write_atomic, Overwrite};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateFile {
    simulate: SimSpec,
}

/// `[simulate]` of a simulation recipe (docs/federated.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    /// The training recipe (distill format): teacher, student init, loss, optimizer, batch.
    pub training: String,
    /// A folder of `<topic>.txt` files, one example per line: the grouping for non-IID shards.
    pub topics: String,
    /// Held-out texts, never given to a client (lines equal to one are dropped from the topics).
    pub eval: String,
    pub clients: usize,
    pub rounds: usize,
    pub local_steps: usize,
    /// Dirichlet concentration over topics (small: each client sees few topics).
    pub non_iid: f64,
    /// Device classes the clients are spread over, in turn.
    pub targets: Vec<String>,
    #[serde(default = "default_strategy")]
    pub strategy: String,
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// The server's step on the averaged delta (FedOpt's server learning rate).
    #[serde(default = "one")]
    pub server_lr: f64,
    #[serde(default)]
    pub int8: bool,
    /// Use at most this many training texts in all.
    pub max_examples: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Also train centrally and each client alone (the comparison).
    #[serde(default = "yes")]
    pub baselines: bool,
}

fn default_strategy() -> String {
    "fedavg".into()
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

/// A client whose updates are replaced before aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Poison {
    /// Its deltas × 100.
    Scale,
    /// Gaussian noise with its deltas' norm × 100.
    Random,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundMetrics {
    pub round: usize,
    pub cosine: f64,
    pub accepted: usize,
    pub rejected: usize,
    pub update_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub id: String,
    pub target: String,
    pub examples: usize,
    pub topics: usize,
    /// Held-out cosine when it trains alone for rounds × local steps.
    pub alone_cosine: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub spec: SimSpec,
    pub poison: Option<(usize, Poison)>,
    pub clients: Vec<Client>,
    pub initial_cosine: f64,
    pub rounds: Vec<RoundMetrics>,
    pub federated_cosine: f64,
    pub central_cosine: Option<f64>,
    pub best_alone_cosine: Option<f64>,
    pub seconds: f64,
}

fn resolve(recipe: &Path, p: &str) -> Result<PathBuf, FedError> {
    let expanded = crate::distill::recipe::expand_vars(p).map_err(|m| FedError::at(recipe, m))?;
    Ok(recipe.parent().unwrap_or(Path::new(".")).join(expanded))
}

pub fn load(path: &Path) -> Result<SimSpec, FedError> {
    let text = crate::guard::read_text(path, crate::guard::Cap::TOML)
        .map_err(|e| FedError::at(path, e.message))?;
    let file: SimulateFile =
        toml::from_str(&text).map_err(|e| FedError::at(path, e.message().to_string()))?;
    let s = file.simulate;
    if s.clients == 0 || s.rounds == 0 || s.local_steps == 0 || s.targets.is_empty() {
        return Err(FedError::at(
            path,
            "clients, rounds, local_steps and targets must be non-zero",
        ));
    }
    if s.non_iid.is_nan() || s.non_iid <= 0.0 {
        return Err(FedError::at(
            path,
            "non_iid (the Dirichlet concentration) must be > 0",
        ));
    }
    Ok(s)
}

/// Gamma(shape, 1) by Marsaglia and Tsang (boosted below shape 1).
fn gamma(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * rng.uniform().powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal() as f64;
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.uniform();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Splits each topic's texts over the clients by Dirichlet(α) proportions.
fn shards(
    topics: &Path,
    eval: &Path,
    clients: usize,
    alpha: f64,
    max_examples: Option<usize>,
    seed: u64,
) -> Result<Vec<(Vec<String>, usize)>, FedError> {
    let held_out: BTreeSet<String> = fs_err::read_to_string(eval)
        .map_err(|e| FedError::at(eval, e.to_string()))?
        .lines()
        .map(str::to_string)
        .collect();
    let mut files: Vec<PathBuf> = fs_err::read_dir(topics)
        .map_err(|e| FedError::at(topics, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut rng = SplitMix64(seed ^ 0x5EED_F00D);
    let mut by_topic: Vec<Vec<String>> = Vec::new();
    for f in &files {
        let text = crate::guard::read_text(f, crate::guard::Cap::TEXT)
            .map_err(|e| FedError::at(f, e.message))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !held_out.contains(*l))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() {
            by_topic.push(lines);
        }
    }
    let total: usize = by_topic.iter().map(Vec::len).sum();
    let keep = max_examples.unwrap_or(total).min(total);
    let mut out = vec![(Vec::new(), 0usize); clients];
    for lines in &by_topic {
        // Every topic keeps the same share of itself under max_examples.
        let n = (lines.len() * keep).div_ceil(total.max(1)).min(lines.len());
        let weights: Vec<f64> = (0..clients).map(|_| gamma(&mut rng, alpha)).collect();
        let sum: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mut start = 0;
        let mut cumulative = 0.0;
        for (c, w) in weights.iter().enumerate() {
            cumulative += w / sum;
            let end = if c + 1 == clients {
                n
            } else {
                ((cumulative * n as f64).round() as usize).min(n)
            };
            if end > start {
                out[c].0.extend(lines[start..end].iter().cloned());
                out[c].1 += 1;
            }
            start = end.max(start);
        }
    }
    Ok(out)
}

/// Krum variants assume one malicious client; Multi-Krum keeps the rest.
fn strategy_of(name: &str, clients: usize, path: &Path) -> Result<Strategy, FedError> {
    Ok(match name {
        "fedavg" => Strategy::FedAvg,
        "median" => Strategy::Median,
        "trimmed-mean" => Strategy::TrimmedMean(0.2),
        "krum" => Strategy::Krum {
            malicious: 1,
            keep: 0,
        },
        "multi-krum" => Strategy::Krum {
            malicious: 1,
            keep: clients.saturating_sub(1).max(1),
        },
        other => {
            return Err(FedError::at(
                path,
                format!("strategy `{other}`: use fedavg, median, trimmed-mean, krum or multi-krum"),
            ))
        }
    })
}

/// Replaces a client's update with a poisoned one (same metadata).
fn poison(path: &Path, kind: Poison, seed: u64) -> Result<(), FedError> {
    let u = Update::open(path).map_err(|m| FedError::at(path, m))?;
    let mut rng = SplitMix64(seed);
    let mut deltas = Vec::new();
    for t in &u.tensors {
        let mut v = vec![0f32; t.n_elems()];
        u.read(t, 0..v.len(), &mut v);
        match kind {
            Poison::Scale => v.iter_mut().for_each(|x| *x *= 100.0),
            Poison::Random => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let noise: Vec<f32> = (0..v.len()).map(|_| rng.normal()).collect();
                let nn = noise.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v = noise.iter().map(|x| x / nn * norm * 100.0).collect();
            }
        }
        deltas.push((t.name.clone(), t.shape.clone(), v));
    }
    let meta: UpdateMeta = u.meta.clone();
    drop(u);
    update::write(path, &meta, &deltas, Overwrite::Allow).map_err(|m| FedError::at(path, m))
}

/// Applies one update to `from`, into `out` (a plain FedAvg of one).
fn apply(from: &Global, update: &Path, out: &Path) -> Result<(), FedError> {
    let options = Options {
        strategy: Strategy::FedAvg,
        clip_norm: None,
        max_norm: None,
        server_lr: 1.0,
        min_clients: 1,
        max_staleness: 0,
        memory_budget: u64::MAX,
        trusted: None,
    };
    aggregate::aggregate(from, &[update.to_path_buf()], &options, out, &|_| {})?;
    Ok(())
}

pub struct Run<'a> {
    pub recipe: &'a Path,
    pub out: &'a Path,
    pub spec: SimSpec,
    pub poison: Option<(usize, Poison)>,
    pub targets_dir: Option<&'a Path>,
    pub on_progress: &'a dyn Fn(&str),
}

pub fn simulate(r: &Run) -> Result<Report, FedError> {
    let started = Instant::now();
    let s = &r.spec;
    let training = resolve(r.recipe, &s.training)?;
    let strategy = strategy_of(&s.strategy, s.clients, r.recipe)?;
    if r.out.exists() {
        return Err(FedError::at(
            r.out,
            "already exists: a simulation writes a new folder",
        ));
    }
    fs_err::create_dir_all(r.out).map_err(|e| FedError::at(r.out, e.to_string()))?;
    let targets: Vec<crate::target::Target> = s
        .targets
        .iter()
        .map(|t| {
            crate::target::load(t, r.targets_dir).map_err(|e| FedError::at(r.recipe, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let split = shards(
        &resolve(r.recipe, &s.topics)?,
        &resolve(r.recipe, &s.eval)?,
        s.clients,
        s.non_iid,
        s.max_examples,
        s.seed,
    )?;
    let shard_dir = r.out.join("shards");
    fs_err::create_dir_all(&shard_dir).map_err(|e| FedError::at(&shard_dir, e.to_string()))?;
    let mut clients = Vec::new();
    for (i, (lines, topics)) in split.iter().enumerate() {
        if lines.is_empty() {
            return Err(FedError::at(
                r.recipe,
                format!(
                    "client {i} got no texts: raise non_iid or max_examples, or use fewer clients"
                ),
            ));
        }
        let path = shard_dir.join(format!("client-{i}.txt"));
        write_atomic(&path, (lines.join("\n") + "\n").as_bytes(), Overwrite::Deny)
            .map_err(|e| FedError::at(&path, e.to_string()))?;
        clients.push(Client {
            id: format!("client-{i}"),
            target: targets[i % targets.len()].name().into(),
            examples: lines.len(),
            topics: *topics,
            alone_cosine: None,
        });
    }
    let cosine = |dir: &Path| {
        crate::distill::held_out_cosine(&training, dir)
            .map_err(|e| FedError::at(dir, e.to_string()))
    };

    (r.on_progress)("initial student");
    let init = r.out.join("init");
    crate::distill::initial_model(&training, &init)
        .map_err(|e| FedError::at(&training, e.to_string()))?;
    let v0 = global::init(&init, &training, &r.out.join("v0"))?;
    let initial_cosine = cosine(&init)?;

    let mut rounds = Vec::new();
    let mut current = v0.clone();
    for round in 1..=s.rounds {
        let round_started = Instant::now();
        let dir = r.out.join(format!("round-{round}"));
        fs_err::create_dir_all(&dir).map_err(|e| FedError::at(&dir, e.to_string()))?;
        let mut updates = Vec::new();
        let mut bytes = 0;
        for (i, c) in clients.iter().enumerate() {
            (r.on_progress)(&format!(
                "round {round}/{}: {} ({})",
                s.rounds, c.id, c.target
            ));
            let out = dir.join(format!("{}.safetensors", c.id));
            train::train(
                &Request {
                    global: &current,
                    data: &shard_dir.join(format!("{}.txt", c.id)),
                    target: &targets[i % targets.len()],
                    client: &c.id,
                    out: &out,
                    int8: s.int8,
                    steps: Some(s.local_steps),
                    force: false,
                },
                &|_, _, _| {},
            )?;
            if let Some((who, kind)) = r.poison {
                if who == i {
                    poison(&out, kind, s.seed ^ round as u64)?;
                }
            }
            bytes += std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            updates.push(out);
        }
        (r.on_progress)(&format!("round {round}/{}: aggregating", s.rounds));
        let next = r.out.join(format!("v{round}"));
        let outcome = aggregate::aggregate(
            &current,
            &updates,
            &Options {
                strategy: strategy.clone(),
                clip_norm: s.clip_norm,
                max_norm: None,
                server_lr: s.server_lr,
                min_clients: 1,
                max_staleness: 0,
                memory_budget: 8 << 30,
                trusted: None,
            },
            &next,
            &|_| {},
        )?;
        current = Global::open(&next)?;
        rounds.push(RoundMetrics {
            round,
            cosine: round6(cosine(&next.join(global::MODEL_DIR))?),
            accepted: outcome.accepted.len(),
            rejected: outcome.rejected.len(),
            update_bytes: bytes,
            seconds: round_started.elapsed().as_secs_f64(),
        });
    }
    let federated_cosine = rounds.last().map_or(initial_cosine, |m| m.cosine);

    let (mut central_cosine, mut best_alone_cosine) = (None, None);
    if s.baselines {
        (r.on_progress)("central baseline");
        let all = shard_dir.join("all.txt");
        let text: String = split.iter().map(|(l, _)| l.join("\n") + "\n").collect();
        write_atomic(&all, text.as_bytes(), Overwrite::Deny)
            .map_err(|e| FedError::at(&all, e.to_string()))?;
        let total_steps = s.clients * s.rounds * s.local_steps;
        let run_alone = |data: &Path,
                         target: &crate::target::Target,
                         name: &str,
                         steps: usize|
         -> Result<f64, FedError> {
            let upd = r.out.join(format!("{name}.safetensors"));
            train::train(
                &Request {
                    global: &v0,
                    data,
                    target,
                    client: name,
                    out: &upd,
                    int8: false,
                    steps: Some(steps),
                    force: false,
                },
                &|_, _, _| {},
            )?;
            let dir = r.out.join(name);
            apply(&v0, &upd, &dir)?;
            Ok(round6(cosine(&dir.join(global::MODEL_DIR))?))
        };
        // The central run trains on a laptop-class machine: everything the recipe trains.
        let laptop = &targets[0];
        central_cosine = Some(run_alone(&all, laptop, "central", total_steps)?);
        for (i, c) in clients.iter_mut().enumerate() {
            (r.on_progress)(&format!("{} alone", c.id));
            c.alone_cosine = Some(run_alone(
                &shard_dir.join(format!("{}.txt", c.id)),
                &targets[i % targets.len()],
                &format!("alone-{}", c.id),
                s.rounds * s.local_steps,
            )?);
        }
        best_alone_cosine = clients
            .iter()
            .filter_map(|c| c.alone_cosine)
            .reduce(f64::max);
    }
    let report = Report {
        spec: s.clone(),
        poison: r.poison,
        clients,
        initial_cosine: round6(initial_cosine),
        rounds,
        federated_cosine,
        central_cosine,
        best_alone_cosine,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).expect("report serializes") + "\n";
    let path = r.out.join("metrics.json");
    write_atomic(&path, json.as_bytes(), Overwrite::Deny)
        .map_err(|e| FedError::at(&path, e.to_string()))?;
    plot(&report, &r.out.join("rounds.svg"))?;
    Ok(report)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Held-out cosine per round, with the baselines as horizontal lines.
fn plot(report: &Report, path: &Path) -> Result<(), FedError> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        let fail = |e: &dyn std::fmt::Display| FedError::at(path, e.to_string());
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut values: Vec<f64> = report.rounds.iter().map(|m| m.cosine).collect();
        values.push(report.initial_cosine);
        values.extend(report.central_cosine);
        values.extend(report.best_alone_cosine);
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min) - 0.02;
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 0.02;
        let rounds = report.rounds.len();
        let mut chart = ChartBuilder::on(&root)
            .caption("held-out cosine to the teacher", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..rounds as f64, lo..hi)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("cosine")
            .draw()
            .map_err(|e| fail(&e))?;
        let series: Vec<(f64, f64)> = std::iter::once((0.0, report.initial_cosine))
            .chain(report.rounds.iter().map(|m| (m.round as f64, m.cosine)))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), &BLUE))
            .map_err(|e| fail(&e))?
            .label("federated")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
            .map_err(|e| fail(&e))?;
        for (value, label, color) in [
            (report.central_cosine, "central, same total steps", RED),
            (report.best_alone_cosine, "best client alone", GREEN),
        ] {
            if let Some(v) = value {
                chart
                    .draw_series(LineSeries::new(vec![(0.0, v), (rounds as f64, v)], color))
                    .map_err(|e| fail(&e))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    write_atomic(path, svg.as_bytes(), Overwrite::Deny)
        .map_err(|e| FedError::at(path, e.to_string()))?;
    Ok(())
}

/// Per-client summary lines for the human output.
pub fn summary(report: &Report) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("initial", format!("{:.4}", report.initial_cosine));
    m.insert("federated", format!("{:.4}", report.federated_cosine));
    if let Some(c) = report.central_cosine {
        m.insert("central", format!("{c:.4}"));
    }
    if let Some(c) = report.best_alone_cosine {
        m.insert("best alone", format!("{c:.4}"));
    }
    m
}
