use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{GlobalArgs, TargetsCommand};
use crate::exit::ExitStatus;
use crate::printer::Printer;
use crate::target::{self, Target};

/// `edgeforge targets list | show NAME | validate PATH...`
pub fn targets(
    cmd: &TargetsCommand,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let dir = global.targets_dir.as_deref();
    match cmd {
        TargetsCommand::List => {
            let all = target::load_all(dir)?;
            if printer.json {
                printer.json_out(&all)?;
            } else {
                printer.out(&render_list(&all))?;
            }
        }
        TargetsCommand::Show(args) => {
            let t = target::load(&args.name, dir)?;
            if printer.json {
                printer.json_out(&t)?;
            } else {
                printer.out(&render_show(&t))?;
            }
        }
        TargetsCommand::Validate(args) => return validate(&args.paths, printer),
    }
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct Validation {
    path: PathBuf,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn validate(paths: &[PathBuf], printer: &Printer) -> anyhow::Result<ExitStatus> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = fs_err::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    let results: Vec<Validation> = files
        .into_iter()
        .map(|path| match target::load_file(&path) {
            Ok(t) => Validation {
                path,
                ok: true,
                name: Some(t.spec.name),
                error: None,
            },
            Err(e) => Validation {
                path,
                ok: false,
                name: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let failed = results.iter().filter(|r| !r.ok).count();
    if printer.json {
        printer.json_out(&results)?;
    } else {
        let mut out = String::new();
        for r in &results {
            match (&r.name, &r.error) {
                (Some(name), _) => writeln!(out, "ok     {}  {name}", r.path.display())?,
                (_, Some(e)) => writeln!(out, "error  {e}")?,
                _ => {}
            }
        }
        printer.out(&out)?;
    }
    if failed > 0 {
        // Invalid input, not a failed check: exit 2 as for any bad file.
        anyhow::bail!("{failed} of {} profiles are invalid", results.len());
    }
    Ok(ExitStatus::Success)
}

fn accelerator_summary(t: &Target) -> String {
    t.spec
        .accelerators
        .iter()
        .map(|a| {
            format!(
                "{} {} {} TOPS",
                a.kind,
                a.name.split(" (").next().unwrap_or(&a.name),
                a.peak_tops
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn render_list(all: &[Target]) -> String {
    let mut out = format!(
        "{:<24} {:<7} {:>7} {:>9} {:<22} {:<34} {}\n",
        "name", "class", "RAM MiB", "budget MiB", "cpu", "accelerator", "formats"
    );
    for t in all {
        let c = &t.spec.cpu;
        let cpu = format!("{} x{} {:.2} GHz", c.arch, c.cores, c.clock_ghz);
        let accel = accelerator_summary(t);
        let formats: Vec<&str> = t.formats().into_iter().collect();
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:>7} {:>9} {:<22} {:<34} {}",
            t.spec.name,
            t.spec.class,
            t.spec.memory.ram_mb,
            t.model_budget_mb(),
            cpu,
            if accel.is_empty() { "-".into() } else { accel },
            formats.join(",")
        );
    }
    out
}

fn render_show(t: &Target) -> String {
    let s = &t.spec;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})  {}", s.name, s.class, s.description);
    let _ = writeln!(
        out,
        "source     {}  sha256 {}",
        t.source.display(),
        &t.sha256[..16]
    );
    let _ = writeln!(
        out,
        "memory     {} MiB RAM, model budget {} MiB, runtime overhead {} MiB, storage {} MiB",
        s.memory.ram_mb,
        t.model_budget_mb(),
        s.memory.runtime_overhead_mb,
        s.memory.storage_mb
    );
    let c = &s.cpu;
    let _ = writeln!(
        out,
        "cpu        {} x{} @ {} GHz [{}], {} GFLOP/s fp32, {} GB/s",
        c.arch,
        c.cores,
        c.clock_ghz,
        c.simd.join(", "),
        c.peak_gflops,
        c.mem_bandwidth_gbs
    );
    for a in &s.accelerators {
        let _ = writeln!(
            out,
            "accel      {} {}: {} TOPS {}, weights [{}], activations [{}]",
            a.kind,
            a.name,
            a.peak_tops,
            a.peak_tops_dtype,
            a.weight_schemes.join(", "),
            a.activation_dtypes.join(", ")
        );
    }
    for r in &s.runtimes {
        let _ = writeln!(
            out,
            "runtime    {} ({}): {}",
            r.name,
            r.format,
            r.weight_schemes.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "workload   context {} tokens, batch {}",
        s.workload.context_tokens, s.workload.batch
    );
    let a = &s.accuracy;
    let _ = writeln!(
        out,
        "accuracy   cosine drop <= {}, perplexity +{}% max, top-1 agreement >= {}",
        a.max_cosine_drop, a.max_perplexity_increase_pct, a.min_top1_agreement
    );
    out
}
