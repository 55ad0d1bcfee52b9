//! Command-line flags, declared with clap derive. Doc comments are the help
//! text. Nothing here does work: `commands` resolves and runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Turn trained models into verified, content-hashed artifacts for each class
/// of edge device.
#[derive(Debug, Parser)]
#[command(name = "edgeforge", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors and warnings on stderr; no progress bars
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Worker threads for parallel work (default: one per core)
    #[arg(long, global = true, value_name = "N", env = "EDGEFORGE_THREADS")]
    pub threads: Option<usize>,
    /// Folder of device target profiles (default: ./targets, then the built-in set)
    #[arg(long, global = true, value_name = "DIR", env = "EDGEFORGE_TARGETS")]
    pub targets_dir: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, show and validate device target profiles
    #[command(subcommand)]
    Targets(TargetsCommand),
    /// Describe a model: architecture, parameters, dtypes, metadata, tensors
    Inspect(InspectArgs),
}

/// `edgeforge targets ...`
#[derive(Debug, Subcommand)]
pub enum TargetsCommand {
    /// One line per known target: class, RAM, model budget, accelerator, formats
    List,
    /// A target's fully resolved profile (after `extends`)
    Show(TargetsShowArgs),
    /// Check profile files strictly; exit 2 naming the file, key and line of the first problem
    Validate(TargetsValidateArgs),
}

/// `edgeforge targets show NAME`
#[derive(Debug, Args)]
pub struct TargetsShowArgs {
    /// Target name (as in `targets list`) or path to a profile TOML
    pub name: String,
}

/// `edgeforge targets validate PATH...`
#[derive(Debug, Args)]
pub struct TargetsValidateArgs {
    /// Profile TOML files or folders of them
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `edgeforge inspect PATH`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model folder, a `.safetensors` file (or shard index) or a `.gguf` file
    pub path: PathBuf,
    /// Also list every tensor: name, dtype, shape, bytes
    #[arg(long)]
    pub tensors: bool,
}
