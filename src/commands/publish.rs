//! `publish` and `pull`: the OCI distribution commands.

use anyhow::Context;

use crate::artifact::build::Want;
use crate::cli::{GlobalArgs, PublishArgs, PullArgs};
use crate::distribution::pull::{self, Choice};
use crate::distribution::registry::{parse_reference, Connection, Remote};
use crate::distribution::release::{release, version_tag};
use crate::distribution::{layout, push};
use crate::exit::ExitStatus;
use crate::printer::{sanitize, Printer};
use crate::units::human_bytes;

/// `edgeforge publish dist/<name>/<version> (--oci-layout DIR | --to REF)`.
pub fn publish(
    args: &PublishArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let release =
        release(&args.version_dir, global.targets_dir.as_deref()).context("Cannot publish")?;
    let total: u64 = release.blobs().iter().map(|b| b.size).sum();
    if let Some(dir) = &args.oci_layout {
        let tag = args
            .tag
            .clone()
            .unwrap_or_else(|| version_tag(&release.version));
        let outcome = layout::write(&release, dir, &tag, args.force).context("Cannot publish")?;
        if printer.json {
            printer.json_out(&serde_json::json!({ "layout": dir, "outcome": outcome }))?;
        } else {
            printer.out(&sanitize(&format!(
                "{}:{tag}  {} {}: {} variants, index {}{}",
                dir.display(),
                release.name,
                release.version,
                release.variants.len(),
                outcome.index_digest,
                if outcome.unchanged {
                    " (unchanged)".to_string()
                } else {
                    format!(
                        " ({} blobs written, {}; {} already there)",
                        outcome.blobs_written,
                        human_bytes(outcome.bytes_written),
                        outcome.blobs_present
                    )
                }
            )))?;
        }
        return Ok(ExitStatus::Success);
    }
    let text = args.to.as_deref().expect("clap requires a destination");
    let (reference, has_tag) = parse_reference(text)?;
    let tag = match (has_tag, reference.tag()) {
        (true, Some(t)) => t.to_string(),
        (true, None) => anyhow::bail!("{text}: publish to a tag, not a digest"),
        (false, _) => version_tag(&release.version),
    };
    let remote = Remote::connect(
        reference,
        &Connection {
            plain_http: args.plain_http,
        },
    )?;
    let bar = printer.bytes_bar(total, "pushing");
    let outcome = push::push(&release, &remote, &tag, args.force, &|n| bar.inc(n))
        .context("Cannot publish")?;
    bar.finish_and_clear();
    if printer.json {
        printer.json_out(&serde_json::json!({ "outcome": outcome }))?;
    } else {
        printer.out(&sanitize(&format!(
            "{}  {} {}: {} variants, index {}{}",
            outcome.reference,
            release.name,
            release.version,
            release.variants.len(),
            outcome.index_digest,
            if outcome.unchanged {
                " (unchanged: nothing sent)".to_string()
            } else {
                format!(
                    " ({} blobs uploaded, {}; {} already there)",
                    outcome.blobs_uploaded,
                    human_bytes(outcome.bytes_uploaded),
                    outcome.blobs_present
                )
            }
        )))?;
    }
    Ok(ExitStatus::Success)
}

/// `edgeforge pull REF (--target T | --ram-mb N ...) --out DIR`.
pub fn pull(args: &PullArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (reference, _) = parse_reference(&args.reference)?;
    let tag = reference
        .digest()
        .or(reference.tag())
        .expect("a parsed reference has a tag or a digest")
        .to_string();
    let remote = Remote::connect(
        reference,
        &Connection {
            plain_http: args.plain_http,
        },
    )?;
    let choice = match (&args.target, args.ram_mb) {
        (Some(t), _) => Choice::Target(t),
        (None, Some(ram_mb)) => Choice::Fits(Want {
            model: None,
            version: None,
            ram_mb,
            accelerator: args.accelerator.as_deref(),
            format: args.format.as_deref(),
        }),
        (None, None) => unreachable!("clap requires --target or --ram-mb"),
    };
    let bar = printer.bytes_bar(0, "pulling");
    let outcome = match pull::pull(&remote, &tag, &choice, &args.out, args.force, &|n| {
        bar.inc_length(n);
        bar.inc(n)
    }) {
        Ok(o) => o,
        Err(e @ crate::distribution::DistributionError::NoMatch { .. }) => {
            bar.finish_and_clear();
            crate::printer::error_line(&sanitize(&e.to_string()));
            return Ok(ExitStatus::CheckFailed);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("Cannot pull")),
    };
    bar.finish_and_clear();
    if printer.json {
        printer.json_out(&serde_json::json!({ "outcome": outcome }))?;
    } else {
        let v = &outcome.variant;
        printer.out(&sanitize(&format!(
            "{}  ({}, {}, {:.2} bits/weight, peak {}; id {}){}",
            outcome.out.display(),
            v.target,
            v.format,
            v.bits_per_weight,
            human_bytes(v.peak_ram_bytes),
            v.id,
            if outcome.unchanged {
                " unchanged".to_string()
            } else {
                format!(", {} fetched and checked", human_bytes(outcome.bytes))
            }
        )))?;
    }
    Ok(ExitStatus::Success)
}
