//! An in-process mutation fuzzer for every parser of untrusted input (issue
//! 20), on stable Rust so CI runs it: seeds are real headers and files,
//! mutations are seeded (the same run every time), and an input fails when
//! it panics, runs longer than 5 s or asks for more than 1 GiB at once.
//!
//! `EDGEFORGE_FUZZ_INPUTS=N` inputs per parser (CI runs a short pass;
//! `scripts/fuzz` a long one); `EDGEFORGE_FUZZ_SEED` moves the campaign.
//! A failing input is written to `target/fuzz-findings/` and becomes a
//! regression file under `tests/fuzz/regressions/<parser>/`, replayed on
//! every run.

mod alloc_cap;
mod mutate;
mod seeds;
mod targets;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: alloc_cap::CappedAlloc = alloc_cap::CappedAlloc;

const HANG: Duration = Duration::from_secs(5);

fn inputs_per_parser() -> u64 {
    std::env::var("EDGEFORGE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

fn campaign_seed() -> u64 {
    std::env::var("EDGEFORGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn save_finding(parser: &str, what: &str, input: &[u8]) -> PathBuf {
    use sha2::Digest;
    let dir = repo().join("target/fuzz-findings").join(parser);
    std::fs::create_dir_all(&dir).unwrap();
    let hash = hex::encode(&sha2::Sha256::digest(input)[..8]);
    let path = dir.join(format!("{what}-{hash}"));
    std::fs::write(&path, input).unwrap();
    path
}

/// Runs one parser over its regression files, then `n` mutated inputs.
fn campaign(parser: &'static str, run: fn(&[u8])) {
    let seeds = seeds::for_parser(parser);
    assert!(!seeds.is_empty(), "{parser}: no seeds");
    let regressions = seeds::regressions(parser);
    let n = inputs_per_parser();
    let mut rng = mutate::Rng::new(campaign_seed() ^ seeds::name_hash(parser));
    // The watchdog: the time the current input started, 0 between inputs.
    let started = Arc::new(AtomicU64::new(0));
    let current: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    let watchdog = {
        let (started, current, done) = (started.clone(), current.clone(), done.clone());
        let parser = parser.to_string();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let at = started.load(Ordering::Relaxed);
                if at != 0 && epoch.elapsed().as_millis() as u64 - at > HANG.as_millis() as u64 {
                    let input = current.lock().unwrap().clone();
                    let path = save_finding(&parser, "hang", &input);
                    eprintln!(
                        "{parser}: an input ran for more than {HANG:?}: {}",
                        path.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let mut failures = Vec::new();
    let all = regressions
        .iter()
        .cloned()
        .chain((0..n).map(|_| mutate::mutate(&mut rng, &seeds)));
    let mut count = 0u64;
    let t0 = Instant::now();
    for input in all {
        *current.lock().unwrap() = input.clone();
        alloc_cap::arm(parser, &input);
        started.store(epoch.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&input)));
        started.store(0, Ordering::Relaxed);
        alloc_cap::disarm();
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let path = save_finding(parser, "panic", &input);
            failures.push(format!("{}: {msg}", path.display()));
        }
        count += 1;
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {parser}: {count} inputs ({} regressions) in {secs:.1} s, {:.0}/s, {} failures",
        regressions.len(),
        count as f64 / secs.max(1e-9),
        failures.len()
    );
    assert!(failures.is_empty(), "{parser}:\n{}", failures.join("\n"));
}

/// Quiet panics: the campaign reports them itself, once, with the input.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

macro_rules! fuzz_test {
    ($name:ident, $parser:literal, $run:path) => {
        #[test]
        fn $name() {
            quiet_panics();
            campaign($parser, $run);
        }
    };
}

fuzz_test!(gguf_reader, "gguf", targets::gguf);
fuzz_test!(safetensors_reader, "safetensors", targets::safetensors);
fuzz_test!(hf_config, "hf-config", targets::hf_config);
fuzz_test!(target_profiles, "target", targets::target);
fuzz_test!(build_recipes, "build-recipe", targets::build_recipe);
fuzz_test!(distill_recipes, "distill-recipe", targets::distill_recipe);
fuzz_test!(artifact_manifests, "manifest", targets::manifest);
fuzz_test!(oci_documents, "oci", targets::oci);
fuzz_test!(fed_updates, "fed-update", targets::fed_update);
