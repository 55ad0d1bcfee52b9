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
    /// Quantize a model's weights for a device, with a per-tensor error report
    ///
    /// The scheme comes from `--scheme` (a scheme such as `Q8_0`, `int8_pc`,
    /// or a llama.cpp-style mix such as `Q4_K_M`), from `--fit TARGET` (the
    /// highest-quality plan that fits the target's memory budget) or from
    /// `--bpw X` (an average bits-per-weight, bits spent where error grows
    /// fastest). `--target` restricts every choice to what the device runs.
    Quantize(QuantizeArgs),
    /// Run a model on this CPU: sentence embeddings or text generation
    #[command(subcommand)]
    Run(RunCommand),
    /// What a model costs on each device: memory per scheme, host measurement, projected speed
    ///
    /// Static accounting is exact (the quantize planner's own sizes); the
    /// host measurement runs the engine; the projection scales the host's
    /// efficiency onto each target's peak compute and memory bandwidth.
    Profile(ProfileArgs),
    /// Train a smaller student to mimic a teacher, from a recipe, on this CPU
    ///
    /// The recipe (TOML, schema in docs/recipes.md) names the teacher, the
    /// student (a teacher layer subset or explicit dims), the training and
    /// eval text, the loss and the optimizer. Writes OUT/model (a model folder
    /// every command loads), OUT/metrics.json and checkpoints in
    /// OUT/checkpoints; Ctrl-C checkpoints before exiting.
    Distill(DistillArgs),
    /// Package a model for one target: files, tokenizer and a hashed manifest
    ///
    /// Writes OUT/<name>/<version>/<target>/ through a temp folder and a rename:
    /// the model files, an optional recipe copy and manifest.json (lineage,
    /// plan, metrics, compatibility, every file's sha256). The artifact id is
    /// the sha256 of the canonical manifest; the same inputs give the same id.
    Package(PackageArgs),
    /// Check an artifact: integrity, fit on its target, accuracy within budget
    ///
    /// Exit 0 when every check passes, 1 when one fails (named, with by how
    /// much), 2 on a usage or input error.
    Verify(VerifyArgs),
    /// Measure a model's quality loss against its reference on real text
    ///
    /// Decoders: perplexity, and the KL divergence of every next-token
    /// distribution from the reference's (mean, median, percentiles), same
    /// top-1 and Δp, over chunks of --ctx tokens scored on their second half,
    /// as `llama-perplexity --kl-divergence` computes them. The reference is a
    /// model or a logits file (`--save-logits`, or llama-perplexity's
    /// `--kl-divergence-base`). Encoders: cosine of sentence embeddings, one
    /// text per line.
    Eval(EvalArgs),
    /// Collect an importance matrix for `quantize --imatrix` from calibration text
    ///
    /// Runs the decoder over the text in chunks of --ctx tokens and sums, for
    /// every weight matrix in every block, the squares of its input columns,
    /// as `llama-imatrix` does. Writes llama.cpp's GGUF imatrix format, or its
    /// older `.dat` when OUT ends in `.dat`; `llama-quantize --imatrix` reads both.
    Imatrix(ImatrixArgs),
    /// Build every device variant of a build recipe: (distill), fit, quantize, package, verify
    ///
    /// Targets whose inputs (source model, recipe, target profile, tool
    /// version) match the artifact already in the dist folder are skipped.
    /// Writes DIST/index.json for `select`.
    Build(BuildArgs),
    /// Pick the best variant in a dist index for a device
    Select(SelectArgs),
    /// Ship a version's variants as OCI artifacts: an image layout folder or a registry
    ///
    /// One artifact manifest per device variant (config = its manifest.json,
    /// one layer per file) and one image index per version whose entries carry
    /// the selection annotations (docs/distribution.md). Pushing uploads only
    /// the blobs the registry lacks, then the manifests, then the index.
    Publish(PublishArgs),
    /// Fetch the one variant a device needs from a registry, checked, into a folder
    ///
    /// Resolves the version's index with the same selection as `select` (or a
    /// target name), streams only that variant's blobs, checks every digest,
    /// runs verify's integrity check, then moves the folder into place.
    Pull(PullArgs),
    /// Work on dist index files
    #[command(subcommand)]
    Index(IndexCommand),
    /// Federated learning: global versions, client updates, aggregation rounds
    #[command(subcommand)]
    Fed(FedCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    ///
    /// e.g. `edgeforge completions bash > ~/.local/share/bash-completion/completions/edgeforge`
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `edgeforge man > ~/.local/share/man/man1/edgeforge.1`
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum FedCommand {
    /// Make version 0 of a federation from a model folder and its recipe
    Init(FedInitArgs),
    /// A client's round: train the global model on local text, write the deltas as an update
    ///
    /// Embedding distillation towards the recipe's teacher (the distill
    /// trainer). The target's model budget decides what is trained: every
    /// tensor on a laptop or a Raspberry Pi 5, only the top blocks and norms
    /// on a small device (weights, gradients, AdamW state and activations of
    /// the trained set must fit).
    Train(FedTrainArgs),
    /// Check client updates against a global version and aggregate the accepted ones into the next
    ///
    /// Rejected updates (another base version, other tensors or shapes, another
    /// tokenizer or recipe, NaN/Inf, a norm above --max-norm, a second update
    /// from one client) are listed with their reason in the new version's
    /// lineage.json; the round goes on without them. Exit 1 and no new version
    /// when fewer than --min-clients are accepted.
    Aggregate(FedAggregateArgs),
    /// Print the chain of versions that led to a global version
    Log(FedLogArgs),
    /// Run a whole federation locally: non-IID client shards of a real corpus, rounds, baselines
    ///
    /// Splits the recipe's topic files into client shards (Dirichlet over
    /// topics), spreads the clients over device classes, runs `fed train` for
    /// every client and `fed aggregate` each round, and measures the held-out
    /// cosine to the teacher after each; then the same student trained
    /// centrally with the same total steps, and each client alone. Writes
    /// OUT/metrics.json and OUT/rounds.svg.
    Simulate(FedSimulateArgs),
    /// Make an Ed25519 signing key for a client; prints its public key for clients.toml
    Keygen(FedKeygenArgs),
    /// Sign an update in place with a client's key
    Sign(FedSignArgs),
}

/// `edgeforge fed simulate RECIPE --out DIR`
#[derive(Debug, Args)]
pub struct FedSimulateArgs {
    /// A simulation recipe (a [simulate] table; docs/federated.md)
    pub recipe: PathBuf,
    /// The folder to create
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    #[arg(long, value_name = "R")]
    pub rounds: Option<usize>,
    /// Dirichlet concentration over topics (smaller: more skewed shards)
    #[arg(long, value_name = "ALPHA")]
    pub non_iid: Option<f64>,
    #[arg(long, value_name = "K")]
    pub local_steps: Option<usize>,
    /// fedavg, median, trimmed-mean, krum or multi-krum
    #[arg(long, value_name = "S")]
    pub strategy: Option<String>,
    #[arg(long, value_name = "X")]
    pub clip_norm: Option<f64>,
    /// The server's learning rate on the averaged delta
    #[arg(long, value_name = "η")]
    pub server_lr: Option<f64>,
    /// Clients send int8 updates
    #[arg(long)]
    pub int8: bool,
    /// Poison one client's updates: I:scale (x100) or I:random (noise, 100x its norm)
    #[arg(long, value_name = "I:KIND")]
    pub poison: Option<String>,
    /// Skip the central and single-client baselines
    #[arg(long)]
    pub no_baselines: bool,
}

/// `edgeforge fed keygen --out KEY`
#[derive(Debug, Args)]
pub struct FedKeygenArgs {
    /// The secret key file to create (mode 0600; never overwritten)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `edgeforge fed sign UPDATE --key KEY`
#[derive(Debug, Args)]
pub struct FedSignArgs {
    /// The update to sign
    pub update: PathBuf,
    /// The client's secret key (from `fed keygen`)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// `edgeforge fed init MODEL --recipe R --out DIR`
#[derive(Debug, Args)]
pub struct FedInitArgs {
    /// A model folder with one model.safetensors (and config.json, tokenizer.json)
    pub model: PathBuf,
    /// The federation's recipe (its sha256 is checked in every update)
    #[arg(long, value_name = "FILE")]
    pub recipe: PathBuf,
    /// The version folder to create
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `edgeforge fed train --global DIR --data LOCAL.txt --target T --out UPDATE`
#[derive(Debug, Args)]
pub struct FedTrainArgs {
    /// The global version to start from
    #[arg(long, value_name = "DIR")]
    pub global: PathBuf,
    /// Local text, one example per line (never leaves the device)
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The device's target profile
    #[arg(long, value_name = "T")]
    pub target: String,
    /// The update file to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// This client's id (recorded in the update and the lineage)
    #[arg(long, value_name = "ID", default_value = "local")]
    pub client: String,
    /// Local optimizer steps (default: the recipe's train.steps)
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Send int8 per-row deltas (4x smaller) instead of f32
    #[arg(long)]
    pub int8: bool,
    /// Sign the update with this client's secret key (from `fed keygen`)
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Replace an existing update file
    #[arg(long)]
    pub force: bool,
}

/// The aggregation rule of `fed aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    Fedavg,
    Median,
    TrimmedMean,
    Krum,
}

/// `edgeforge fed aggregate --global DIR UPDATE... --out DIR`
#[derive(Debug, Args)]
pub struct FedAggregateArgs {
    /// The global version the updates were trained on
    #[arg(long, value_name = "DIR")]
    pub global: PathBuf,
    /// Client update files
    #[arg(required = true)]
    pub updates: Vec<PathBuf>,
    /// The new version's folder (must not exist)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "fedavg")]
    pub strategy: StrategyArg,
    /// trimmed-mean: the fraction cut at each end
    #[arg(long, value_name = "P", default_value_t = 0.2)]
    pub trim: f64,
    /// krum: the number of malicious clients to tolerate
    #[arg(long, value_name = "F", default_value_t = 0)]
    pub krum_malicious: usize,
    /// krum: average the K best updates (Multi-Krum) instead of taking the best one
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub krum_keep: usize,
    /// Scale each update down to at most this L2 norm before aggregating
    #[arg(long, value_name = "X")]
    pub clip_norm: Option<f64>,
    /// Reject updates whose L2 norm is above this
    #[arg(long, value_name = "X")]
    pub max_norm: Option<f64>,
    /// new = global + η × aggregate
    #[arg(long, value_name = "η", default_value_t = 1.0)]
    pub server_lr: f64,
    /// Fewer accepted updates: exit 1, no new version
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub min_clients: usize,
    /// Accept updates trained on one of the last S versions, down-weighted by (1 + s)^-0.5
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub max_staleness: u64,
    /// Trusted clients and their Ed25519 public keys: unsigned, badly signed
    /// or unlisted updates are rejected
    #[arg(long, value_name = "FILE")]
    pub clients: Option<PathBuf>,
    /// Working-memory budget of the aggregation, in MiB
    #[arg(long, value_name = "MB", default_value_t = 4096)]
    pub memory_budget_mb: u64,
}

/// `edgeforge fed log DIR`
#[derive(Debug, Args)]
pub struct FedLogArgs {
    /// A global version folder
    pub dir: PathBuf,
}

/// `edgeforge publish dist/<name>/<version>`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["oci_layout", "to"])))]
pub struct PublishArgs {
    /// A version folder of the dist tree: dist/<name>/<version>
    pub version_dir: PathBuf,
    /// Write an OCI image layout into this folder (tag: the version, or --tag)
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    /// Push to a registry: REGISTRY/REPOSITORY[:TAG] (default tag: the version)
    #[arg(long, value_name = "REF")]
    pub to: Option<String>,
    /// The tag in an OCI layout (default: the version)
    #[arg(long, value_name = "TAG", conflicts_with = "to")]
    pub tag: Option<String>,
    /// Plain HTTP instead of HTTPS (a local registry)
    #[arg(long)]
    pub plain_http: bool,
    /// Move a tag that points at different content
    #[arg(long)]
    pub force: bool,
}

/// `edgeforge pull REGISTRY/REPO:TAG --out DIR`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("choice").required(true).args(["target", "ram_mb"])))]
pub struct PullArgs {
    /// REGISTRY/REPOSITORY:TAG (a version's index) or @sha256:... (one variant)
    pub reference: String,
    /// The variant built for this target
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Memory the device can give the model, in MiB (selects as `select` does)
    #[arg(long, value_name = "MB", value_parser = ram_mb)]
    pub ram_mb: Option<u64>,
    /// With --ram-mb: only variants for devices with this accelerator kind
    #[arg(long, value_name = "KIND", requires = "ram_mb")]
    pub accelerator: Option<String>,
    /// With --ram-mb: only this format (gguf, safetensors)
    #[arg(long, value_name = "F", requires = "ram_mb")]
    pub format: Option<String>,
    /// The folder to create (must not exist, or hold the same artifact)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Plain HTTP instead of HTTPS (a local registry)
    #[arg(long)]
    pub plain_http: bool,
    /// Replace a folder that holds another artifact
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Join the dist/index.json files of `build --matrix` jobs into one
    ///
    /// Variants are ordered by target, so the result does not depend on the
    /// order of the inputs; the same target twice must be the same artifact.
    Merge(IndexMergeArgs),
}

/// `edgeforge index merge A.json B.json... --out dist/index.json`
#[derive(Debug, Args)]
pub struct IndexMergeArgs {
    /// Partial index files
    #[arg(required = true)]
    pub indexes: Vec<PathBuf>,
    /// Where to write the merged index
    #[arg(long, short, value_name = "FILE", default_value = "dist/index.json")]
    pub out: PathBuf,
}

/// `edgeforge build RECIPE`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A build recipe (a TOML with a [build] table; docs/recipes.md)
    pub recipe: PathBuf,
    /// Targets to build, comma-separated (default: the recipe's, else every known target)
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "T,T",
        conflicts_with = "all_targets"
    )]
    pub targets: Vec<String>,
    /// Every known target
    #[arg(long)]
    pub all_targets: bool,
    /// Targets built at once
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub jobs: usize,
    /// The dist folder
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub dist: PathBuf,
    /// Print a CI job matrix (one entry per target, with its input hash) and build nothing
    #[arg(long, value_name = "STYLE", num_args = 0..=1, default_missing_value = "github")]
    pub matrix: Option<MatrixStyle>,
    /// A registry repository used as a shared cache: a target whose inputs are
    /// already published there is pulled instead of built (REGISTRY/REPOSITORY)
    #[arg(long, value_name = "REF")]
    pub cache: Option<String>,
    /// With --cache: plain HTTP instead of HTTPS
    #[arg(long, requires = "cache")]
    pub plain_http: bool,
    /// Replace artifacts that `package` made in the same folders
    #[arg(long)]
    pub force: bool,
}

/// The shape of `build --matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixStyle {
    /// `{"include": [{"target": ..., "inputs": ...}]}` for `strategy.matrix`
    Github,
    /// `{"parallel": {"matrix": [{"TARGET": ..., "INPUTS": ...}]}}` for `parallel:matrix`
    Gitlab,
}

/// `edgeforge select --index dist/index.json --ram-mb N`
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The index `build` wrote
    #[arg(long, value_name = "FILE", default_value = "dist/index.json")]
    pub index: PathBuf,
    /// Memory the device can give the model, in MiB
    #[arg(long, value_name = "MB", value_parser = ram_mb)]
    pub ram_mb: u64,
    /// Only variants for devices with this accelerator kind (npu, tpu, gpu, dsp)
    #[arg(long, value_name = "KIND")]
    pub accelerator: Option<String>,
    /// Only this format (gguf, safetensors, onnx, tflite)
    #[arg(long, value_name = "F")]
    pub format: Option<String>,
    /// The model to choose among (needed when the index holds several)
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The version to choose among (default: the newest of the model)
    #[arg(long = "version", value_name = "SEMVER")]
    pub semver: Option<String>,
}

/// `edgeforge package MODEL`
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The model to ship (a `.gguf`, `.safetensors`, `.onnx`, `.tflite` or model folder, e.g. what `quantize` wrote)
    pub model: PathBuf,
    /// The device target it is for
    #[arg(long, value_name = "T")]
    pub target: String,
    /// Artifact name (lowercase letters, digits, `.`, `_`, `-`)
    #[arg(long)]
    pub name: String,
    /// Semantic version, e.g. 1.0.0
    #[arg(long = "version", value_name = "SEMVER")]
    pub semver: String,
    /// The model it was made from: recorded as its source, and the accuracy reference
    #[arg(long, value_name = "MODEL")]
    pub reference: Option<PathBuf>,
    /// The recipe it was made with (copied into the artifact and hashed)
    #[arg(long, value_name = "TOML")]
    pub recipe: Option<PathBuf>,
    /// Eval texts for the accuracy figures, one per line (default: a built-in set)
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// The dist folder
    #[arg(long, short, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
    /// Replace an existing artifact with different contents
    #[arg(long)]
    pub force: bool,
    /// Package even when the measured accuracy misses the target's budget
    /// (by default that is refused with exit 1, as verify would fail it)
    #[arg(long)]
    pub no_gate: bool,
    /// Also write the artifact as one deterministic tar beside its folder
    #[arg(long)]
    pub tar: bool,
    /// The target runtime an ONNX/TFLite model is for (default: the one the
    /// target's accelerator loads that format with); the artifact folder is
    /// `<target>.<runtime>`
    #[arg(long, value_name = "NAME")]
    pub runtime: Option<String>,
}

/// `edgeforge eval MODEL --reference SRC --text FILE`
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model to measure: a model folder, `.safetensors` or `.gguf` file
    pub model: PathBuf,
    /// What MODEL is compared with: the model it came from, or a logits file
    /// (`--save-logits`, `llama-perplexity --kl-divergence-base`)
    #[arg(long, short, value_name = "SRC")]
    pub reference: Option<PathBuf>,
    /// Evaluation text, UTF-8 (decoders read it whole; encoders line by line).
    /// Optional with a logits reference, which holds its tokens
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c) [default: 512, or the logits file's]
    #[arg(long, short = 'c', value_name = "N")]
    pub ctx: Option<usize>,
    /// Evaluate only the first N chunks
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Write MODEL's log-probabilities to FILE in llama-perplexity's
    /// KL-divergence base format, to compare other models against
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// Replace the --save-logits file if it exists
    #[arg(long)]
    pub force: bool,
}

/// `edgeforge imatrix MODEL --text FILE -o OUT`
#[derive(Debug, Args)]
pub struct ImatrixArgs {
    /// The decoder to collect from (its full-precision source is best)
    pub model: PathBuf,
    /// Calibration text, UTF-8 (not the text you evaluate on)
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// The importance matrix to write (`.gguf`, or `.dat` for the older format)
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Tokens per chunk (llama-imatrix's -c)
    #[arg(long, short = 'c', value_name = "N", default_value_t = 512)]
    pub ctx: usize,
    /// Use only the first N chunks
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Replace OUT if it exists
    #[arg(long)]
    pub force: bool,
}

/// `edgeforge verify ARTIFACT`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An artifact folder (dist/<name>/<version>/<target>)
    pub artifact: PathBuf,
    /// Re-measure accuracy against this reference model (else the recorded figures are gated)
    #[arg(long, value_name = "MODEL")]
    pub reference: Option<PathBuf>,
    /// Eval texts, one per line (default: a built-in set)
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Also write a JUnit XML report
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also rebuild the artifact from its recorded inputs (its recipe, its
    /// target, the source given as --reference) and name the first
    /// differing file and tensor
    #[arg(long, requires = "reference")]
    pub rebuild: bool,
    /// Also check that the artifact was built from this federated global
    /// version: the version it names, and its source files are that version's model
    #[arg(long, value_name = "DIR")]
    pub global: Option<PathBuf>,
    /// Fail unless the artifact's id (its manifest's sha256) is this one:
    /// catches a consistent forgery that re-hashed its own manifest
    #[arg(long, value_name = "ID")]
    pub expect_id: Option<String>,
    /// Accept a target profile that changed since packaging (by default its
    /// sha256 must match the one recorded, or the fit figures mean nothing)
    #[arg(long)]
    pub allow_target_drift: bool,
}

/// `edgeforge distill RECIPE`
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The recipe TOML
    pub recipe: PathBuf,
    /// Output folder (default: runs/<recipe name>)
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the output folder
    #[arg(long)]
    pub resume: bool,
    /// Discard an earlier run in the output folder and start over
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Stop after this many steps with a checkpoint (continue later with --resume)
    #[arg(long, value_name = "STEP")]
    pub until_step: Option<usize>,
    /// Only check the recipe, teacher and data, then exit
    #[arg(long)]
    pub check: bool,
}

/// `edgeforge profile MODEL`
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// A model folder, `.safetensors` file or `.gguf` file
    pub model: PathBuf,
    /// Targets to profile against (repeat); default: every known target
    #[arg(long = "target", value_name = "T", conflicts_with = "all_targets")]
    pub targets: Vec<String>,
    /// Every known target (the default when no --target is given)
    #[arg(long)]
    pub all_targets: bool,
    /// Context tokens for the KV cache and activations (default: each target's)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub context: Option<u64>,
    /// Sequences processed at once (scales activations and KV cache)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: u64,
    /// Schemes or mixes to cost (repeat); default: every one on the target's quality ladder
    #[arg(long = "scheme", value_name = "S")]
    pub schemes: Vec<String>,
    /// Input length for the host measurement and projections (encoders: input
    /// tokens; decoders: prompt tokens)
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub tokens: u64,
    /// Timed runs after the warm-up
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,
    /// Static accounting only: do not run the model
    #[arg(long)]
    pub no_measure: bool,
    /// The profile describing this host's peak compute and bandwidth
    #[arg(long, value_name = "T", default_value = "x86-avx512-ci")]
    pub host: String,
    /// Markdown tables (for CI job summaries) instead of plain text
    #[arg(long)]
    pub markdown: bool,
    /// Also draw projected latency against weight size per scheme and target (SVG)
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Replace an existing --plot file
    #[arg(long)]
    pub force: bool,
}

/// `edgeforge run ...`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Sentence embeddings from an encoder (mean-pooled, L2-normalised)
    Embed(EmbedArgs),
    /// Generate text from a decoder, streaming tokens as they come
    Generate(GenerateArgs),
}

/// `edgeforge run embed MODEL --text A --text B`
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A model folder, `.safetensors` file or `.gguf` file (BERT-style)
    pub model: PathBuf,
    /// A text to embed (repeat for several)
    #[arg(long = "text", value_name = "TEXT", required_unless_present = "file")]
    pub texts: Vec<String>,
    /// Also embed every line of this file
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the cosine similarity matrix instead of the vectors
    #[arg(long)]
    pub similarity: bool,
    /// Run the linear layers in int8: weights per output channel, activations
    /// per token, AVX-512 VNNI where the CPU has it. MiniLM's cosine to f32:
    /// 0.9994 mean, 0.998 min on 200 held-out sentences; 0.994 on one-word texts
    #[arg(long)]
    pub int8: bool,
}

/// `edgeforge run generate MODEL --prompt P`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model folder, `.safetensors` file or `.gguf` file (LLaMA-style)
    pub model: PathBuf,
    /// The text to continue
    #[arg(long, short)]
    pub prompt: String,
    /// Stop after this many new tokens (or at end-of-sequence)
    #[arg(long, short = 'n', default_value_t = 64, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic)
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0: all)
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Seed for sampling: the same seed gives the same text
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

/// `edgeforge quantize MODEL --out FILE`
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// A model folder, `.safetensors` file or `.gguf` file
    pub model: PathBuf,
    /// Output file: `.gguf`, `.safetensors`, `.onnx` or `.tflite`
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Scheme or llama-quantize mix: F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, Q6_K,
    /// Q5_K_M (alias Q5_K), Q5_K_S, Q4_K_M (Q4_K), Q4_K_S, Q3_K_L, Q3_K_M (Q3_K), Q3_K_S,
    /// Q2_K, Q2_K_S, IQ4_NL, IQ4_XS, int8_pc, int4_g{32,64,128}_{sym,asym}
    #[arg(long, value_name = "NAME", conflicts_with_all = ["fit", "bpw"])]
    pub scheme: Option<String>,
    /// Restrict every choice to the schemes this target runs
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// Pick the highest-quality plan whose weights, KV cache and runtime fit TARGET's
    /// model budget; exit 1 with the shortfall if none does
    #[arg(long, value_name = "TARGET", conflicts_with_all = ["target", "bpw"])]
    pub fit: Option<String>,
    /// Reach this average bits per weight, spending bits where error grows fastest
    #[arg(long, value_name = "X")]
    pub bpw: Option<f64>,
    /// Output container (default: from the output file's extension)
    #[arg(long, value_enum)]
    pub format: Option<OutputFormatArg>,
    /// Context length for the KV cache in `--fit` (default: the target's)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub context: Option<u64>,
    /// Allow re-quantizing an already block-quantized input (errors compound)
    #[arg(long)]
    pub allow_requant: bool,
    /// Replace an existing output file
    #[arg(long)]
    pub force: bool,
    /// Plan and report sizes without writing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Weight each tensor's quantization error by an importance matrix
    /// (llama.cpp's GGUF or `.dat` imatrix file, from `llama-imatrix`):
    /// the same bytes `llama-quantize --imatrix` writes (GGUF outputs)
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    #[command(flatten)]
    pub tensor_types: TensorTypeArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub tflite: TfliteArgs,
}

/// `llama-quantize`'s per-tensor overrides, same names and precedence.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Per-tensor types (as llama-quantize)")]
pub struct TensorTypeArgs {
    /// Every weight matrix at the scheme's base type: no mix rules, no head
    /// rule (rows that are not whole blocks still fall back)
    #[arg(long)]
    pub pure: bool,
    /// PATTERN=TYPE: tensors whose llama.cpp name matches the regular
    /// expression get TYPE (first match wins; repeatable)
    #[arg(long, value_name = "PATTERN=TYPE")]
    pub tensor_type: Vec<crate::quant::plan::TensorTypeRule>,
    /// Type of the output head (`output.weight`)
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<crate::quant::Scheme>,
    /// Type of the token embedding (`token_embd.weight`)
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<crate::quant::Scheme>,
}

impl TensorTypeArgs {
    pub fn overrides(&self) -> crate::quant::plan::Overrides {
        crate::quant::plan::Overrides {
            pure: self.pure,
            output: self.output_tensor_type,
            token_embedding: self.token_embedding_type,
            tensor_types: self.tensor_type.clone(),
        }
    }
}

/// Static int8 calibration of activations (ONNX and TFLite `int8_pc`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Calibration (ONNX, TFLite int8_pc)")]
pub struct CalibrationArgs {
    /// Calibration text, one text per line
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// How many of its first non-empty lines calibrate (ONNX: the first 16
    /// of them also measure each op's sensitivity)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        visible_alias = "calibration-lines"
    )]
    pub calibration_texts: usize,
    /// How activation ranges are chosen from what calibration observed
    /// (default: percentile for ONNX, minmax for TFLite)
    #[arg(long, value_enum)]
    pub calibration_method: Option<CalibrationMethodArg>,
    /// Share of values `percentile` keeps inside the range
    #[arg(long, value_name = "P", default_value_t = 99.99)]
    pub percentile: f64,
    /// ONNX: keep the most sensitive ops in float until the mean cosine to
    /// the float model on calibration text is at least this
    #[arg(long, value_name = "C", default_value_t = 0.999)]
    pub min_cosine: f64,
    /// int8 weights in [-63, 63]: for x86 CPUs without VNNI, whose onnxruntime
    /// int8 kernels can overflow on full-range weights
    #[arg(long)]
    pub reduce_range: bool,
    /// ONNX: how int8 graphs code activations: uint8 with a zero point (the
    /// default), or int8 symmetric with zero points of 0 (all TensorRT takes;
    /// with --fit and --format auto the target's runtime decides)
    #[arg(long, value_enum, value_name = "TYPE")]
    pub activation_type: Option<ActivationTypeArg>,
    /// ONNX: SmoothQuant before int8: move activation outliers into the
    /// weights with per-channel divisors max|x|^A / max|w|^(1-A) (A in 0..=1;
    /// 0.5 is the paper's choice)
    #[arg(long, value_name = "A")]
    pub smooth_alpha: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivationTypeArg {
    Uint8,
    #[value(name = "int8-symmetric", alias = "int8")]
    Int8Symmetric,
}

impl From<ActivationTypeArg> for crate::format::onnx::bert::ActivationType {
    fn from(a: ActivationTypeArg) -> Self {
        match a {
            ActivationTypeArg::Uint8 => Self::Uint8,
            ActivationTypeArg::Int8Symmetric => Self::Int8Symmetric,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibrationMethodArg {
    Minmax,
    Percentile,
    Entropy,
}

/// What a `.tflite` export (`--format tflite`) takes besides the calibration.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TFLite export")]
pub struct TfliteArgs {
    /// Fixed sequence length of the graph's inputs (batch 1)
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub seq_len: usize,
}

/// Output containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormatArg {
    /// With --fit: what the target's accelerator runtime loads (ONNX, TFLite)
    /// when edgeforge writes it for the model, else the CPU format; -o names a folder
    Auto,
    Gguf,
    Safetensors,
    Onnx,
    Tflite,
}

/// `--ram-mb`: 1 MiB up to the largest memory a target profile may state.
fn ram_mb(text: &str) -> Result<u64, String> {
    let max = crate::target::MAX_MB;
    match text.parse::<u64>() {
        Ok(mb) if (1..=max).contains(&mb) => Ok(mb),
        _ => Err(format!("must be a whole number of MiB from 1 to {max}")),
    }
}
