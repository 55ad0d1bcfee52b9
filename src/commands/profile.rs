use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::{GlobalArgs, ProfileArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::model::{Model, TensorRole};
use crate::printer::{sanitize, Printer};
use crate::profile::accounting::{self, SchemeCost};
use crate::profile::measure::{self, Measurement};
use crate::profile::plot;
use crate::profile::project::{self, Efficiency, Projection, ASSUMED};
use crate::quant::plan::Preset;
use crate::target::{self, Target};
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report {
    model: std::path::PathBuf,
    architecture: String,
    parameters: u64,
    parameters_by_role: BTreeMap<TensorRole, u64>,
    /// FLOPs of one input (encoders) or one prompt (decoders) at `tokens`.
    flops: f64,
    tokens: u64,
    host: Host,
    targets: Vec<TargetReport>,
}

#[derive(Serialize)]
struct Host {
    profile: String,
    /// Static estimate of this host's peak RSS for the measured run, ± `rss_margin`.
    estimated_rss_bytes: u64,
    rss_margin: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    measurement: Option<Measurement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measurement_skipped: Option<String>,
    efficiency: Efficiency,
    efficiency_source: &'static str,
}

#[derive(Serialize)]
struct TargetReport {
    name: String,
    class: String,
    budget_bytes: u64,
    context_tokens: u64,
    batch: u64,
    schemes: Vec<Row>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_run: Vec<String>,
}

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    cost: SchemeCost,
    projection: Projection,
}

/// `edgeforge profile MODEL`.
pub fn profile(
    args: &ProfileArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    anyhow::ensure!(args.tokens > 0, "`--tokens` must be at least 1");
    anyhow::ensure!(args.batch > 0, "`--batch` must be at least 1");
    anyhow::ensure!(args.runs > 0, "`--runs` must be at least 1");
    if let Some(plot) = args.plot.as_ref().filter(|p| p.exists() && !args.force) {
        bail!(
            "{}: Output already exists (pass --force to replace it)",
            plot.display()
        );
    }
    if let Some((file, format)) = crate::artifact::graph::find(&args.model) {
        return super::profile_graph::profile_graph(args, global, printer, &file, format);
    }
    let model = Model::open(&args.model).context("Cannot profile")?;
    let max = crate::memory::max_context(&model.architecture);
    if let (Some(max), Some(n)) = (max, args.context) {
        anyhow::ensure!(
            n <= max,
            "`--context {n}` exceeds the model's maximum of {max} tokens"
        );
    }
    if let Some(max) = max {
        anyhow::ensure!(
            args.tokens <= max,
            "`--tokens {}` exceeds the model's maximum of {max} tokens",
            args.tokens
        );
    }
    let dir = global.targets_dir.as_deref();
    let targets = target::load_named(&args.targets, dir)?;
    let presets = args
        .schemes
        .iter()
        .map(|s| Preset::parse(s).map_err(|e| anyhow::anyhow!("`--scheme`: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !args.targets.is_empty() {
        for (t, p) in targets
            .iter()
            .flat_map(|t| presets.iter().map(move |p| (t, p)))
        {
            if !t.allowed_schemes().contains(&p.base()) {
                bail!(
                    "`--scheme {}`: target {} does not run {} (it runs: {})",
                    p.name(),
                    t.name(),
                    p.base(),
                    t.allowed_schemes()
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let host_profile = target::load(&args.host, dir).context("`--host`")?;
    let tokens = args.tokens;
    let flops = accounting::forward_flops(&model, tokens, tokens);

    let (measurement, skipped) = if args.no_measure {
        (None, Some("--no-measure".to_string()))
    } else {
        let bar = printer.steps_bar(args.runs as u64, "measuring");
        let result = measure::measure(&model, &[tokens], args.runs, 32, || bar.inc(1));
        bar.finish_and_clear();
        match result {
            Ok(m) => (Some(m), None),
            Err(e) => {
                printer.warn(&format!("measurement skipped: {e}"));
                (None, Some(e.to_string()))
            }
        }
    };
    let (efficiency, efficiency_source) = match &measurement {
        Some(m) => (
            host_efficiency(m, &host_profile, flops, tokens),
            "measured on this host",
        ),
        None => (ASSUMED, "assumed (nothing measured)"),
    };

    let mut reports = Vec::new();
    for t in &targets {
        let context = args
            .context
            .unwrap_or(t.spec.workload.context_tokens)
            .min(max.unwrap_or(u64::MAX));
        let mut rows = Vec::new();
        let mut not_run = Vec::new();
        for preset in accounting::presets_for(t, &presets) {
            if !t.allowed_schemes().contains(&preset.base()) {
                not_run.push(preset.name());
                continue;
            }
            let Ok((_, mut cost)) = accounting::cost(&model, t, preset, context) else {
                not_run.push(preset.name());
                continue;
            };
            cost.footprint = cost.footprint.clone().batched(args.batch);
            cost.fits = cost.footprint.fits();
            cost.shortfall_mib = cost.footprint.shortfall_mib();
            let work = project::work_of(&model, tokens, cost.weights_bytes);
            let projection = project::project(t, &preset.base().name(), work, efficiency);
            rows.push(Row { cost, projection });
        }
        reports.push(TargetReport {
            name: t.name().to_string(),
            class: t.spec.class.clone(),
            budget_bytes: t.model_budget_bytes(),
            context_tokens: context,
            batch: args.batch,
            schemes: rows,
            not_run,
        });
    }
    let report = Report {
        model: args.model.clone(),
        architecture: model.architecture.summary(),
        parameters: accounting::parameters_by_role(&model).values().sum(),
        parameters_by_role: accounting::parameters_by_role(&model),
        flops,
        tokens,
        host: Host {
            profile: host_profile.name().to_string(),
            estimated_rss_bytes: accounting::host_rss_estimate(&model, tokens + 32),
            rss_margin: accounting::HOST_RSS_MARGIN,
            measurement,
            measurement_skipped: skipped,
            efficiency,
            efficiency_source,
        },
        targets: reports,
    };
    if let Some(path) = &args.plot {
        write_plot(&report, path, args.force)?;
    }
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report, args.markdown))?;
    }
    Ok(ExitStatus::Success)
}

/// The `--plot` SVG: decoders per generated token, encoders per input.
fn write_plot(r: &Report, path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let series: Vec<plot::Series> = r
        .targets
        .iter()
        .map(|t| plot::Series {
            target: t.name.clone(),
            points: t
                .schemes
                .iter()
                .filter_map(|row| {
                    let p = &row.projection;
                    let ms = p
                        .decode_tokens_per_second
                        .map(|tps| 1e3 / tps)
                        .or(p.latency_ms)?;
                    Some(plot::Point {
                        scheme: row.cost.scheme.clone(),
                        weights_mib: row.cost.weights_bytes as f64 / (1u64 << 20) as f64,
                        latency_ms: ms,
                    })
                })
                .collect(),
        })
        .collect();
    let decoder = r
        .targets
        .iter()
        .flat_map(|t| &t.schemes)
        .any(|row| row.projection.decode_tokens_per_second.is_some());
    let y = if decoder {
        "projected ms per generated token"
    } else {
        "projected ms per input"
    };
    let name = r.model.file_name().map_or_else(
        || r.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let svg = plot::svg(
        &format!("{name}: projected latency by scheme and target"),
        y,
        &series,
    )
    .map_err(|e| anyhow::anyhow!("{}: cannot plot: {e}", path.display()))?;
    let overwrite = if force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    write_atomic(path, svg.as_bytes(), overwrite)?;
    Ok(())
}

/// Achieved over peak on the host profile; capped at 1 (the profile's peak
/// is an estimate, and caches can beat a bandwidth figure).
fn host_efficiency(m: &Measurement, host: &Target, flops: f64, tokens: u64) -> Efficiency {
    let peak = host.spec.cpu.peak_gflops * 1e9;
    let bw = host.spec.cpu.mem_bandwidth_gbs * 1e9;
    let compute = match (&m.decoder, m.encoder.first()) {
        (Some(d), _) => flops / (tokens as f64 / d.prefill_tokens_per_second),
        (None, Some(e)) => flops / (e.p50_ms / 1e3),
        (None, None) => 0.0,
    } / peak;
    let bandwidth = m.decoder.as_ref().map_or(ASSUMED.bandwidth, |d| {
        m.engine_weight_bytes as f64 * d.decode_tokens_per_second / bw
    });
    Efficiency {
        compute: compute.min(1.0),
        bandwidth: bandwidth.min(1.0),
    }
}

fn render(r: &Report, markdown: bool) -> String {
    let mut out = String::new();
    let roles: Vec<String> = r
        .parameters_by_role
        .iter()
        .map(|(role, n)| format!("{} {}", role.name(), crate::units::group_digits(*n)))
        .collect();
    let _ = writeln!(
        out,
        "{}  {}",
        sanitize(&r.model.display().to_string()),
        sanitize(&r.architecture)
    );
    let _ = writeln!(
        out,
        "parameters {} ({})",
        crate::units::group_digits(r.parameters),
        roles.join(", ")
    );
    match (&r.host.measurement, &r.host.measurement_skipped) {
        (Some(m), _) => {
            let _ = write!(
                out,
                "host ({} threads): load {:.2} s, peak RSS {} (estimate {} ± {:.0}%), ",
                m.threads,
                m.load_seconds,
                m.peak_rss_bytes.map_or("?".into(), human_bytes),
                human_bytes(r.host.estimated_rss_bytes),
                r.host.rss_margin * 100.0
            );
            if let Some(d) = &m.decoder {
                let _ = writeln!(
                    out,
                    "prefill {} tokens {:.1} tok/s, decode {:.1} tok/s (p50 {:.1} ms, p95 {:.1} ms)",
                    d.prompt_tokens, d.prefill_tokens_per_second, d.decode_tokens_per_second, d.decode_p50_ms, d.decode_p95_ms
                );
            }
            for e in &m.encoder {
                let _ = writeln!(
                    out,
                    "{} tokens p50 {:.1} ms, p95 {:.1} ms",
                    e.tokens, e.p50_ms, e.p95_ms
                );
            }
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "host measurement skipped: {}", sanitize(why));
        }
        _ => {}
    }
    let _ = writeln!(
        out,
        "efficiency vs {}: compute {:.0}%, bandwidth {:.0}% ({})",
        r.host.profile,
        r.host.efficiency.compute * 100.0,
        r.host.efficiency.bandwidth * 100.0,
        r.host.efficiency_source
    );
    let decoder = r
        .targets
        .iter()
        .flat_map(|t| &t.schemes)
        .any(|s| s.projection.decode_tokens_per_second.is_some());
    for t in &r.targets {
        let _ = writeln!(
            out,
            "\n{}{} ({}): budget {}, context {}, batch {}",
            if markdown { "### " } else { "" },
            t.name,
            t.class,
            human_bytes(t.budget_bytes),
            t.context_tokens,
            t.batch
        );
        let speed = if decoder {
            "prefill tok/s | decode tok/s"
        } else {
            "latency ms"
        };
        let header = format!("scheme | weights | bpw | KV cache | total | fits | {speed} | engine");
        if markdown {
            let _ = writeln!(out, "\n| {header} |");
            let cols = header.matches('|').count() + 1;
            let _ = writeln!(out, "|{}", "---|".repeat(cols));
        } else {
            let _ = writeln!(out, "{}", header.replace(" | ", "  "));
        }
        for row in &t.schemes {
            let c = &row.cost;
            let p = &row.projection;
            let speed = match (
                p.latency_ms,
                p.prefill_tokens_per_second,
                p.decode_tokens_per_second,
            ) {
                (Some(ms), _, _) => format!("{ms:.1}"),
                (_, Some(pre), Some(dec)) => format!("{pre:.0} | {dec:.1}"),
                _ => "-".into(),
            };
            let fits = if c.fits {
                "yes".to_string()
            } else {
                format!("no, misses by {:.1} MiB", c.shortfall_mib)
            };
            let cells = [
                c.scheme.clone(),
                human_bytes(c.weights_bytes),
                format!("{:.2}", c.bits_per_weight),
                human_bytes(c.footprint.kv_cache_bytes),
                human_bytes(c.footprint.total_bytes),
                fits,
                speed,
                p.engine.clone(),
            ];
            if markdown {
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            } else {
                let _ = writeln!(out, "{}", cells.join("  ").replace(" | ", "  "));
            }
        }
        let mut assumptions: Vec<&str> = t
            .schemes
            .iter()
            .map(|r| r.projection.assumption.as_str())
            .collect();
        assumptions.dedup();
        for a in assumptions {
            let _ = writeln!(out, "projection: {a}");
        }
        if !t.not_run.is_empty() {
            let _ = writeln!(out, "not run by this target: {}", t.not_run.join(", "));
        }
    }
    out
}
