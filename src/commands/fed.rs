//! `fed init`, `fed aggregate`, `fed log`.

use anyhow::Context;

use crate::cli::{
    FedAggregateArgs, FedCommand, FedInitArgs, FedLogArgs, FedSimulateArgs, FedTrainArgs,
    GlobalArgs, StrategyArg,
};
use crate::exit::ExitStatus;
use crate::fed::aggregate::{self, Options, Strategy};
use crate::fed::global::{self, Global};
use crate::fed::sign;
use crate::fed::FedError;
use crate::printer::{sanitize, Printer};

pub fn fed(cmd: &FedCommand, global: &GlobalArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    match cmd {
        FedCommand::Init(args) => init(args, printer),
        FedCommand::Train(args) => train(args, global, printer),
        FedCommand::Aggregate(args) => aggregate(args, printer),
        FedCommand::Log(args) => log(args, printer),
        FedCommand::Simulate(args) => simulate(args, global, printer),
        FedCommand::Keygen(args) => {
            let public = sign::keygen(&args.out).context("Cannot make a key")?;
            if printer.json {
                printer.json_out(&serde_json::json!({ "key": args.out, "public_key": public }))?;
            } else {
                printer.out(&format!(
                    "{}  public key {public}\n(add to clients.toml: [[client]] id = \"...\" public_key = \"{public}\")",
                    args.out.display()
                ))?;
            }
            Ok(ExitStatus::Success)
        }
        FedCommand::Sign(args) => {
            sign::sign(&args.update, &args.key).context("Cannot sign")?;
            let public = sign::public_key(&args.key)?;
            if printer.json {
                printer.json_out(
                    &serde_json::json!({ "update": args.update, "public_key": public }),
                )?;
            } else {
                printer.out(&format!("{}  signed by {public}", args.update.display()))?;
            }
            Ok(ExitStatus::Success)
        }
    }
}

fn init(args: &FedInitArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let g = global::init(&args.model, &args.recipe, &args.out)
        .context("Cannot start the federation")?;
    if printer.json {
        printer.json_out(&serde_json::json!({ "version": 0, "id": g.id, "dir": g.dir }))?;
    } else {
        printer.out(&format!("{}  v0  id {}", g.dir.display(), g.id))?;
    }
    Ok(ExitStatus::Success)
}

fn train(
    args: &FedTrainArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let g = Global::open(&args.global).context("Cannot train")?;
    let target = crate::target::load(&args.target, global.targets_dir.as_deref())?;
    let bar = printer.steps_bar(0, "training");
    let trained = crate::fed::train::train(
        &crate::fed::train::Request {
            global: &g,
            data: &args.data,
            target: &target,
            client: &args.client,
            out: &args.out,
            int8: args.int8,
            steps: args.steps,
            force: args.force,
        },
        &|step, steps, loss| {
            bar.set_length(steps as u64);
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4}"));
        },
    )
    .context("Cannot train")?;
    bar.finish_and_clear();
    if let Some(key) = &args.key {
        sign::sign(&args.out, key).context("Cannot sign the update")?;
    }
    if printer.json {
        printer.json_out(&trained)?;
    } else {
        let t = &trained.trainable;
        printer.out(&sanitize(&format!(
            "{}  {} tensors from block {}{} ({} of {} budget), {} examples, {} steps, loss {:.4} -> {:.4}, {}",
            args.out.display(),
            trained.tensors,
            t.first_layer,
            if t.embeddings { " and the embeddings" } else { "" },
            crate::units::human_bytes(t.bytes),
            crate::units::human_bytes(t.budget),
            trained.examples,
            trained.steps,
            trained.loss_first,
            trained.loss_last,
            crate::units::human_bytes(trained.bytes)
        )))?;
    }
    Ok(ExitStatus::Success)
}

fn simulate(
    args: &FedSimulateArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    use crate::fed::simulate::{self, Poison};
    let mut spec = simulate::load(&args.recipe)?;
    spec.clients = args.clients.unwrap_or(spec.clients);
    spec.rounds = args.rounds.unwrap_or(spec.rounds);
    spec.non_iid = args.non_iid.unwrap_or(spec.non_iid);
    spec.local_steps = args.local_steps.unwrap_or(spec.local_steps);
    spec.strategy = args.strategy.clone().unwrap_or(spec.strategy);
    spec.clip_norm = args.clip_norm.or(spec.clip_norm);
    spec.server_lr = args.server_lr.unwrap_or(spec.server_lr);
    spec.int8 |= args.int8;
    spec.baselines &= !args.no_baselines;
    let poison = args
        .poison
        .as_deref()
        .map(|p| -> anyhow::Result<(usize, Poison)> {
            let (i, kind) = p
                .split_once(':')
                .context("--poison is I:scale or I:random")?;
            let i: usize = i
                .parse()
                .context("--poison: the client index is a number")?;
            anyhow::ensure!(
                i < spec.clients,
                "--poison: there are only {} clients",
                spec.clients
            );
            let kind = match kind {
                "scale" => Poison::Scale,
                "random" => Poison::Random,
                other => anyhow::bail!("--poison kind `{other}`: use scale or random"),
            };
            Ok((i, kind))
        })
        .transpose()?;
    let bar = printer.steps_bar(0, "simulating");
    let report = simulate::simulate(&simulate::Run {
        recipe: &args.recipe,
        out: &args.out,
        spec,
        poison,
        targets_dir: global.targets_dir.as_deref(),
        on_progress: &|stage: &str| {
            bar.set_message(stage.to_string());
            bar.tick();
        },
    })
    .context("Cannot simulate")?;
    bar.finish_and_clear();
    if printer.json {
        printer.json_out(&report)?;
    } else {
        let mut text = String::from("round  cosine  accepted  rejected  update bytes  seconds\n");
        text.push_str(&format!("{:>5}  {:.4}\n", 0, report.initial_cosine));
        for m in &report.rounds {
            text.push_str(&format!(
                "{:>5}  {:.4}  {:>8}  {:>8}  {:>12}  {:>7.1}\n",
                m.round, m.cosine, m.accepted, m.rejected, m.update_bytes, m.seconds
            ));
        }
        for (k, v) in simulate::summary(&report) {
            text.push_str(&format!("{k}: {v}\n"));
        }
        text.push_str(&format!(
            "{} in {:.0} s",
            args.out.join("metrics.json").display(),
            report.seconds
        ));
        printer.out(&text)?;
    }
    Ok(ExitStatus::Success)
}

fn aggregate(args: &FedAggregateArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    anyhow::ensure!(
        (0.0..0.5).contains(&args.trim),
        "--trim must be in [0, 0.5): the fraction cut at each end"
    );
    anyhow::ensure!(args.server_lr.is_finite(), "--server-lr must be a number");
    let strategy = match args.strategy {
        StrategyArg::Fedavg => Strategy::FedAvg,
        StrategyArg::Median => Strategy::Median,
        StrategyArg::TrimmedMean => Strategy::TrimmedMean(args.trim),
        StrategyArg::Krum => Strategy::Krum {
            malicious: args.krum_malicious,
            keep: args.krum_keep,
        },
    };
    let g = Global::open(&args.global).context("Cannot aggregate")?;
    let total = std::fs::metadata(g.weights()).map(|m| m.len()).unwrap_or(0);
    let bar = printer.bytes_bar(total, "aggregating");
    let options = Options {
        strategy,
        clip_norm: args.clip_norm,
        max_norm: args.max_norm,
        server_lr: args.server_lr,
        min_clients: args.min_clients,
        max_staleness: args.max_staleness,
        memory_budget: args.memory_budget_mb << 20,
        trusted: args
            .clients
            .as_deref()
            .map(sign::Trusted::load)
            .transpose()
            .context("Cannot aggregate")?,
    };
    let result = aggregate::aggregate(&g, &args.updates, &options, &args.out, &|n| bar.inc(n));
    bar.finish_and_clear();
    let outcome = match result {
        Ok(o) => o,
        Err(e @ FedError::TooFewClients { .. }) => return too_few_clients(&e, printer),
        Err(e) => return Err(anyhow::Error::new(e).context("Cannot aggregate")),
    };
    if printer.json {
        printer.json_out(&outcome)?;
    } else {
        for r in &outcome.rejected {
            printer.warn(&sanitize(&format!("rejected {}: {}", r.update, r.reason)));
        }
        printer.out(&format!(
            "{}  v{}  id {}  ({} accepted, {} rejected, parent {})",
            args.out.display(),
            outcome.version,
            outcome.id,
            outcome.accepted.len(),
            outcome.rejected.len(),
            &outcome.parent[..12]
        ))?;
    }
    Ok(ExitStatus::Success)
}

fn log(args: &FedLogArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let g = Global::open(&args.dir)?;
    g.check_files()?;
    let l = &g.lineage;
    let mut rows = l.history.clone();
    rows.push(global::RoundSummary {
        version: l.version,
        id: g.id.clone(),
        strategy: l.round.as_ref().map(|r| r.strategy.clone()),
        accepted: l.round.as_ref().map_or(0, |r| r.accepted.len()),
        rejected: l.round.as_ref().map_or(0, |r| r.rejected.len()),
        examples: l
            .round
            .as_ref()
            .map_or(0, |r| r.accepted.iter().map(|a| a.examples).sum()),
    });
    if printer.json {
        printer.json_out(&rows)?;
        return Ok(ExitStatus::Success);
    }
    let mut text = format!(
        "{:<4} {:<12} {:<13} {:>8} {:>8} {:>9}\n",
        "ver", "id", "strategy", "accepted", "rejected", "examples"
    );
    for r in &rows {
        text.push_str(&sanitize(&format!(
            "v{:<3} {:<12} {:<13} {:>8} {:>8} {:>9}",
            r.version,
            &r.id[..12],
            r.strategy.as_deref().unwrap_or("(init)"),
            r.accepted,
            r.rejected,
            r.examples
        )));
        text.push('\n');
    }
    printer.out(text.trim_end())?;
    Ok(ExitStatus::Success)
}

/// A round below `--min-clients`: every rejection on stderr (as a successful
/// round prints them), the error line, and with `--json` one object holding
/// both, so a coordinator can tell clients why their update was dropped.
fn too_few_clients(e: &FedError, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let FedError::TooFewClients {
        accepted,
        received,
        min,
        rejected,
    } = e
    else {
        unreachable!("called for TooFewClients only")
    };
    for r in rejected {
        printer.warn(&sanitize(&format!("rejected {}: {}", r.update, r.reason)));
    }
    crate::printer::error_line(&e.to_string());
    if printer.json {
        printer.json_out(&serde_json::json!({
            "error": { "kind": "fed", "message": e.to_string() },
            "exit_code": 1,
            "accepted": accepted,
            "received": received,
            "min_clients": min,
            "rejected": rejected,
        }))?;
    }
    Ok(ExitStatus::CheckFailed)
}
