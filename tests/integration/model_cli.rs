//! `asl model`: a tiny model made from the shipped tokenizer, chatted with; bad model dirs.

use crate::common::*;

#[test]
fn init_tiny_then_chat_and_a_missing_model_is_named() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    let env = [("ASL_ASSETS", assets.to_str().unwrap())];
    let out = asl_with_env(
        &["model", "init-tiny", tiny.to_str().unwrap(), "--seed", "3"],
        &env,
    );
    assert_ok(&out);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(tiny.join(f).exists(), "{f} missing");
    }
    let chat = |_: ()| {
        asl(&[
            "model",
            "chat",
            "--model",
            tiny.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--seed",
            "5",
            "hello",
        ])
    };
    let (a, b) = (chat(()), chat(()));
    assert_ok(&a);
    assert_eq!(stdout(&a), stdout(&b), "same seed, same reply");

    let missing = dir.path().join("nothing");
    let out = asl(&["model", "chat", "--model", missing.to_str().unwrap(), "hi"]);
    assert_one_line_error(&out, &["nothing", "config.json"]);
    std::fs::write(tiny.join("model.safetensors"), b"garbage").unwrap();
    let out = asl(&["model", "chat", "--model", tiny.to_str().unwrap(), "hi"]);
    assert_one_line_error(&out, &["model.safetensors"]);
}

/// Each family's parity fixture (tests/fixtures/parity, made by transformers) chats greedily
/// through its own chat template and runs a `smoke` round end to end: warm-up, every role,
/// training and eval on Qwen2, Qwen3 and Llama 3 weights and formats.
#[test]
fn every_family_fixture_chats_and_runs_a_smoke_round() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for (family, tools) in [
        ("llama3", "tags"),
        ("qwen2", "tags"),
        ("qwen3", "tags"),
        ("qwen2", "qwen"),
    ] {
        let model = root.join("tests/fixtures/parity").join(family);
        let model = model.to_str().unwrap();
        let chat = asl(&[
            "model",
            "chat",
            "--model",
            model,
            "--greedy",
            "--max-new-tokens",
            "8",
            "Who directed the film?",
        ]);
        assert_ok(&chat);
        let rd = dir.path().join(format!("{family}-{tools}"));
        let out = asl_with_env(
            &[
                "run",
                root.join("pipelines/smoke.toml").to_str().unwrap(),
                "--run-dir",
                rd.to_str().unwrap(),
                "--rounds",
                "1",
                "--set",
                &format!("init.model={model}"),
                "--set",
                &format!("tool_format={tools}"),
            ],
            &[
                ("ASL_ASSETS", assets.to_str().unwrap()),
                ("RAYON_NUM_THREADS", "1"),
            ],
        );
        assert_ok(&out);
        let manifest = asl::manifest::Manifest::load(&rd).unwrap();
        for stage in ["warmup", "rollout", "judge", "train", "apply", "eval"] {
            let round = u32::from(stage != "warmup");
            assert!(
                manifest.done_outputs(stage, round).is_some(),
                "{family}: {stage} not done\n{}",
                stdout(&out)
            );
        }
        // The generator must search first: its calls and the results are in the chosen format.
        let generated: Vec<asl::shards::rows::TrajectoryRow> =
            asl::shards::read_rows(&[rd.join("round-001/generate/trajectories-00000.parquet")])
                .unwrap();
        let (call, result) = match tools {
            "qwen" => ("</tool_call>", "<tool_response>"),
            _ => ("</search>", "<information>"),
        };
        assert!(
            generated
                .iter()
                .any(|t| t.text.contains(call) && t.text.contains(result)),
            "{family} {tools}: no call in the generator's text"
        );
    }
}
