//! Bad input: one line naming the file and the problem, a non-zero exit, no panic, and nothing
//! that existed before damaged.

use std::path::Path;

use crate::common::*;

fn pipeline_error(dir: &Path, body: &str, needles: &[&str]) {
    let path = dir.join("p.toml");
    std::fs::write(&path, body).unwrap();
    let rd = dir.join("rd");
    let out = asl(&[
        "run",
        path.to_str().unwrap(),
        "--run-dir",
        rd.to_str().unwrap(),
    ]);
    let mut all = vec!["p.toml"];
    all.extend_from_slice(needles);
    assert_one_line_error(&out, &all);
    assert!(
        !rd.join("manifest.json").exists(),
        "a refused pipeline wrote a manifest"
    );
}

#[test]
fn pipeline_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline_error(
        d,
        "setup = [\"corpus\", \"frobnicate\"]\n",
        &["frobnicate", "unknown stage"],
    );
    pipeline_error(d, "setup = [\"corpus\"]\nroundz = 2\n", &["roundz"]);
    pipeline_error(
        d,
        "setup = [\"corpus\"]\n[params.corpus]\ncolour = 1\n",
        &["corpus.colour"],
    );
    pipeline_error(d, "setup = [\"corpus\"\nseed = 1\n", &["line"]);
    pipeline_error(
        d,
        "setup = [\"corpus\"]\n[params.qa]\nsource = \"x\"\n",
        &["params.qa"],
    );
}

#[test]
fn unknown_commands_sets_and_forces_are_refused() {
    let fx = Fixture::new(10);
    let rd = fx.run_dir("run");
    let out = asl(&["frobnicate", "--run-dir", rd.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("frobnicate"));
    assert_one_line_error(&fx.run(&rd, &["--force", "judge"]), &["judge", "--force"]);
    assert_one_line_error(&fx.run(&rd, &["--set", "qa.nope=1"]), &["qa.nope"]);
    assert_one_line_error(&fx.run(&rd, &["--set", "colour=1"]), &["colour"]);
}

#[test]
fn a_manifest_that_is_not_json_is_refused_and_left_alone() {
    let fx = Fixture::new(10);
    let rd = fx.run_dir("run");
    std::fs::create_dir_all(&rd).unwrap();
    let manifest = rd.join("manifest.json");
    std::fs::write(&manifest, "{ not json").unwrap();
    assert_one_line_error(
        &fx.run(&rd, &[]),
        &["manifest.json", "not valid manifest JSON"],
    );
    assert_one_line_error(
        &asl(&["status", "--run-dir", rd.to_str().unwrap()]),
        &["manifest.json"],
    );
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "{ not json");
}

#[test]
fn a_qa_file_without_questions_fails_and_keeps_the_last_good_output() {
    let fx = Fixture::new(10);
    let rd = fx.run_dir("run");
    assert_ok(&fx.run(&rd, &[]));
    let before = shard_hashes(&rd);
    let bad = fx.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"query\": \"Q?\", \"answers\": [\"a\"]}\n").unwrap();
    let set = format!("qa.source={}", bad.display());
    let out = asl(&["qa", "--run-dir", rd.to_str().unwrap(), "--set", &set]);
    assert_one_line_error(&out, &["bad.jsonl", "record 1", "question"]);
    assert_eq!(shard_hashes(&rd), before);
    let m = asl::manifest::Manifest::load(&rd).unwrap();
    let last = m.entries.last().unwrap();
    assert_eq!(last.status, asl::manifest::Status::Failed);
    assert!(last.error.as_deref().unwrap().contains("question"));
    // The failed attempt does not hide the last good run: the pipeline still skips.
    let again = fx.run(&rd, &[]);
    assert!(ran_stages(&again).is_empty(), "{}", stdout(&again));
}

#[test]
fn a_missing_asset_names_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    let assets = dir.path().join("no-assets");
    let out = asl_with_env(
        &["corpus", "--run-dir", rd.to_str().unwrap()],
        &[("ASL_ASSETS", assets.to_str().unwrap())],
    );
    assert_one_line_error(&out, &["summaries_en-us.json", "fetch-assets.sh"]);
}

#[test]
fn a_corpus_file_that_is_not_json_names_the_line() {
    let fx = Fixture::new(5);
    std::fs::write(
        &fx.corpus,
        "{\"title\": \"a\", \"text\": \"b\"}\nnot json\n",
    )
    .unwrap();
    let rd = fx.run_dir("run");
    assert_one_line_error(&fx.run(&rd, &[]), &["corpus.jsonl", "line 2"]);
    assert!(!rd.join("round-000/corpus/corpus-00000.parquet").exists());
}

#[test]
fn a_round_stage_without_its_inputs_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("rd");
    let out = asl(&["rollout", "--run-dir", rd.to_str().unwrap(), "--round", "1"]);
    assert_one_line_error(&out, &["rollout", "generate"]);
}

#[test]
fn a_missing_or_corrupt_checkpoint_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let qa = dir.path().join("qa.jsonl");
    std::fs::write(&qa, "{\"question\": \"Who?\", \"answers\": [\"Me\"]}\n").unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let run = |model: &Path| {
        asl(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--qa",
            qa.to_str().unwrap(),
        ])
    };
    assert_one_line_error(&run(&model), &["config.json"]);
    std::fs::write(
        model.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "vocab_size": 32, "max_position_embeddings": 64, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    std::fs::write(
        model.join("model.safetensors"),
        b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\"",
    )
    .unwrap();
    assert_one_line_error(&run(&model), &["model.safetensors"]);
    let init = dir.path().join("p.toml");
    std::fs::write(
        &init,
        format!(
            "setup = [\"init\"]\n[params.init]\nmodel = \"{}\"\n",
            dir.path().join("nowhere").display()
        ),
    )
    .unwrap();
    let out = asl(&[
        "run",
        init.to_str().unwrap(),
        "--run-dir",
        dir.path().join("rd").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["nowhere", "config.json"]);
}

#[test]
fn an_unknown_reward_scheme_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("rd");
    let out = asl(&[
        "reward",
        "--run-dir",
        rd.to_str().unwrap(),
        "--round",
        "1",
        "--set",
        "reward.generator_reward=vibes",
    ]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_negative_count_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("rd");
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    let out = asl(&[
        "run",
        smoke,
        "--run-dir",
        rd.to_str().unwrap(),
        "--set",
        "judge.real_items=-1",
    ]);
    assert_one_line_error(&out, &["judge.real_items", "non-negative", "-1"]);
    assert!(!rd.join("round-000").exists(), "a stage ran");
    // An unknown tool format or search mode is caught at load time too, not by the first model
    // stage after the setup has run.
    for (set, needle) in [
        ("tool_format=qwn", "tool_format"),
        ("rollout.search_mode=google", "rollout.search_mode"),
    ] {
        let out = asl(&[
            "run",
            smoke,
            "--run-dir",
            rd.to_str().unwrap(),
            "--set",
            set,
        ]);
        assert_one_line_error(&out, &[needle]);
        assert!(
            !rd.join("round-000").exists(),
            "a stage ran before {set} was refused"
        );
    }
}

#[test]
fn out_of_range_and_closed_set_values_in_a_pipeline_file_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    // In the file (extending smoke), each kind of bad value: a closed set, a range, a list.
    for (table, line, needles) in [
        (
            "reward",
            "verifier = \"gmr\"",
            &["reward.verifier", "one of grm, rule, majority", "gmr"][..],
        ),
        (
            "rollout",
            "top_p = 0.0",
            &["rollout.top_p", "> 0 and ≤ 1"][..],
        ),
        (
            "rollout",
            "batch_size = 0",
            &["rollout.batch_size", "≥ 1"][..],
        ),
        (
            "train",
            "loss_type = \"ppo\"",
            &["train.loss_type", "grpo"][..],
        ),
        (
            "reward",
            "train_roles = \"policy,judge\"",
            &["reward.train_roles", "\"judge\""][..],
        ),
        (
            "generate",
            "solve_threshold = 1.5",
            &["generate.solve_threshold", "≤ 1"][..],
        ),
        ("apply", "lr = -0.001", &["apply.lr", "≥ 0"][..]),
        // Settings that contradict each other.
        (
            "selfcheck",
            "self_judgments = 2\nv_min = 3",
            &["selfcheck.v_min", "no task could pass"][..],
        ),
        (
            "generate",
            "grounding_k = 3\nsearch_mode = \"none\"",
            &["generate.grounding_k", "needs a search index"][..],
        ),
        ("warmup", "epochs = 0", &["warmup.epochs", "≥ 1"][..]),
        (
            "warmup",
            "policy_examples = 0\ngenerator_examples = 0\ngrm_examples = 0",
            &["warmup.policy_examples", "nothing to train on"][..],
        ),
        // A split the pipeline's qa does not write (smoke's corpus QA: train, dev, test).
        (
            "eval",
            "split = \"test,tset\"",
            &["eval.split", "\"tset\"", "train, dev, test"][..],
        ),
    ] {
        pipeline_error(
            d,
            &format!("extends = {smoke:?}\n[params.{table}]\n{line}\n"),
            needles,
        );
    }
    // The same through --set.
    let rd = d.join("rd2");
    let out = asl(&[
        "run",
        smoke,
        "--run-dir",
        rd.to_str().unwrap(),
        "--set",
        "eval.grm_reference=maybe",
    ]);
    assert_one_line_error(&out, &["eval.grm_reference", "judge, shown, hidden"]);
    assert!(
        !rd.exists() || !rd.join("round-000").exists(),
        "a stage ran"
    );
}
