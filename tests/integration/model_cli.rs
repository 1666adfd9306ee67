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
