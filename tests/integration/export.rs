//! `asl export`: a round's valid tasks and the labelled QA in verl's RL Parquet, FlashRAG's QA
//! JSONL and asl's QA JSONL. pyarrow reads the verl file with the column types verl's RL dataset
//! reads (`prompt` a list of `{role, content}` structs, `reward_model` a struct holding
//! `ground_truth.target`), and every layout imports back through `asl qa` with the same
//! questions and answers.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use asl::shards::rows::{QaRow, TaskRow};

use crate::common::*;

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");

fn run(assets: &Path, args: &[&str]) -> std::process::Output {
    asl_with_env(
        args,
        &[
            ("ASL_ASSETS", assets.to_str().unwrap()),
            ("RAYON_NUM_THREADS", "1"),
        ],
    )
}

/// Questions and answers, as `asl qa` imports them from `file` into a fresh run dir.
fn imported(assets: &Path, dir: &Path, file: &Path) -> BTreeSet<(String, Vec<String>)> {
    let rd = dir.join(format!(
        "import-{}",
        file.file_name().unwrap().to_string_lossy()
    ));
    let src = format!("qa.source={}", file.display());
    assert_ok(&run(
        assets,
        &["qa", "--run-dir", rd.to_str().unwrap(), "--set", &src],
    ));
    let files: Vec<_> = std::fs::read_dir(rd.join("round-000/qa"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    asl::shards::read_rows::<QaRow>(&files)
        .unwrap()
        .into_iter()
        .map(|r| (r.question, r.answers))
        .collect()
}

#[test]
fn tasks_and_qa_export_to_verl_flashrag_and_jsonl_and_import_back() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    let rds = rd.to_str().unwrap();
    // The setup, then round 1's generator and self-check only: tasks to export.
    assert_ok(&run(
        &assets,
        &["run", SMOKE, "--run-dir", rds, "--rounds", "0"],
    ));
    assert_ok(&run(
        &assets,
        &["generate", "--run-dir", rds, "--round", "1"],
    ));
    // Before the self-check the round's valid tasks are not known: refused in one line.
    let early = asl(&[
        "export",
        "--run-dir",
        rds,
        "--format",
        "jsonl",
        "--round",
        "1",
        "--out",
        dir.path().join("early.jsonl").to_str().unwrap(),
    ]);
    assert_one_line_error(&early, &["self-check", "round 1"]);
    assert_ok(&run(
        &assets,
        &["selfcheck", "--run-dir", rds, "--round", "1"],
    ));
    let tasks: Vec<TaskRow> =
        asl::shards::read_rows(&[rd.join("round-001/selfcheck/tasks-00000.parquet")]).unwrap();
    let valid: BTreeSet<(String, Vec<String>)> = tasks
        .iter()
        .filter(|t| t.valid)
        .map(|t| {
            let answers = std::iter::once(t.answer.clone())
                .chain(t.answer_aliases.iter().cloned())
                .collect();
            (t.question.clone(), answers)
        })
        .collect();
    assert!(!valid.is_empty(), "the smoke generator wrote no valid task");

    let verl = dir.path().join("out/round-1.parquet");
    let out = asl(&[
        "export",
        "--run-dir",
        rds,
        "--format",
        "verl",
        "--out",
        verl.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("valid tasks of round 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(imported(&assets, dir.path(), &verl), valid);

    // verl's column types, as pyarrow reads them.
    let has_pyarrow = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_pyarrow {
        let check = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
s = t.schema
def norm(ty):  # large_string and string are the same to verl (datasets reads both)
    return str(ty).replace("large_string", "string").replace("large_list", "list")
prompt = s.field("prompt").type
assert pa.types.is_list(prompt) or pa.types.is_large_list(prompt), s
msg = prompt.value_type
assert pa.types.is_struct(msg) and [msg.field(i).name for i in range(msg.num_fields)] == ["role", "content"], s
assert pa.types.is_struct(s.field("reward_model").type), s
gt = s.field("reward_model").type.field("ground_truth").type
assert pa.types.is_struct(gt) and "list" in norm(gt.field("target").type), s
for name in ["data_source", "ability"]:
    assert "string" in norm(s.field(name).type), s
row = t.slice(0, 1).to_pylist()[0]
assert [m["role"] for m in row["prompt"]] == ["system", "user"], row
assert "Question:" in row["prompt"][-1]["content"] and "<search>" in row["prompt"][-1]["content"], row
assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"]["target"], row
assert row["extra_info"]["round"] == 1 and row["extra_info"]["id"], row
print("verl ok", t.num_rows)
"#;
        let out = Command::new("python3")
            .args(["-c", check, verl.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("verl ok {}", valid.len())), "{text}");
    } else {
        assert!(
            std::env::var_os("ASL_REQUIRE_PY_READERS").is_none(),
            "ASL_REQUIRE_PY_READERS is set but pyarrow does not import"
        );
        eprintln!("skipped the pyarrow half: python3 with pyarrow not found");
    }

    // The labelled test split, in the two JSONL layouts.
    let qa_files: Vec<_> = std::fs::read_dir(rd.join("round-000/qa"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    let test: BTreeSet<(String, Vec<String>)> = asl::shards::read_rows::<QaRow>(&qa_files)
        .unwrap()
        .into_iter()
        .filter(|r| r.split == "test")
        .map(|r| (r.question, r.answers))
        .collect();
    assert!(!test.is_empty());
    for format in ["flashrag", "jsonl", "verl"] {
        let ext = if format == "verl" { "parquet" } else { "jsonl" };
        let file = dir.path().join(format!("out/test-{format}.{ext}"));
        let out = asl(&[
            "export",
            "--run-dir",
            rds,
            "--qa",
            "--split",
            "test",
            "--format",
            format,
            "--out",
            file.to_str().unwrap(),
        ]);
        assert_ok(&out);
        assert_eq!(imported(&assets, dir.path(), &file), test, "{format}");
    }
    let first = std::fs::read_to_string(dir.path().join("out/test-flashrag.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(
        row["golden_answers"].is_array() && row["id"].is_string(),
        "{row}"
    );

    // Bad input: one line, exit 1.
    let bad = asl(&[
        "export",
        "--run-dir",
        rds,
        "--round",
        "7",
        "--out",
        "/tmp/x.parquet",
    ]);
    assert_one_line_error(&bad, &["round 7"]);
}
