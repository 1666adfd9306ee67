//! Stage `init`: the checkpoint round 1 starts from, as a Hugging Face folder under
//! `RUN_DIR/round-000/init/model`: the shipped SmolLM2 imported from its GGUF, a tiny random
//! model with the same tokenizer (tests, `smoke`), or a copy of a user's folder.

use std::path::{Path, PathBuf};

use super::{Stage, StageContext, StageOutput, Upstream, assets_dir};
use crate::error::{Error, IoContext, Result};
use crate::model::{SHIPPED_GGUF, gguf, tiny};
use crate::params::{ParamSpec, Params, ParamsExt};

pub(crate) struct InitStage;

fn model_source(params: &Params) -> Source {
    match params.str("model") {
        "shipped" => Source::Shipped(assets_dir().join(SHIPPED_GGUF)),
        "tiny" => Source::Tiny(assets_dir().join(SHIPPED_GGUF)),
        path => Source::Folder(PathBuf::from(path)),
    }
}

enum Source {
    Shipped(PathBuf),
    Tiny(PathBuf),
    Folder(PathBuf),
}

impl Stage for InitStage {
    fn name(&self) -> &'static str {
        "init"
    }

    fn about(&self) -> &'static str {
        "make the starting checkpoint: shipped SmolLM2, a tiny random model, or a user's folder"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "model",
                "shipped",
                "`shipped` (SmolLM2-135M-Instruct from its GGUF), `tiny` (random, for tests) or a Hugging Face folder",
            ),
            ParamSpec::new("tiny_layers", 2, "decoder blocks of a tiny model").at_least(1.0),
            ParamSpec::new("tiny_hidden", 64, "hidden size of a tiny model").at_least(1.0),
        ]
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        Vec::new()
    }

    fn external_inputs(&self, params: &Params) -> Result<Vec<PathBuf>> {
        match model_source(params) {
            Source::Shipped(g) | Source::Tiny(g) => {
                if !g.is_file() {
                    return Err(Error::input(
                        &g,
                        "shipped model not found (run scripts/fetch-assets.sh, or set ASL_ASSETS)",
                    ));
                }
                Ok(vec![g])
            }
            Source::Folder(dir) => {
                let mut files = Vec::new();
                for name in ["config.json", "tokenizer.json"] {
                    let f = dir.join(name);
                    if !f.is_file() {
                        return Err(Error::input(&f, "model folder lacks this file"));
                    }
                    files.push(f);
                }
                // One weights file, or the sharded layout (an index and its shards).
                let single = dir.join("model.safetensors");
                let index = dir.join("model.safetensors.index.json");
                if single.is_file() {
                    files.push(single);
                } else if index.is_file() {
                    files.push(index);
                    let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)
                        .at(&dir)?
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.extension().is_some_and(|e| e == "safetensors")
                                && p.file_name().is_some_and(|n| n != "optimizer.safetensors")
                        })
                        .collect();
                    shards.sort();
                    files.extend(shards);
                } else {
                    return Err(Error::input(
                        &single,
                        "model folder lacks its weights (model.safetensors or model.safetensors.index.json)",
                    ));
                }
                Ok(files)
            }
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let dest = ctx.out_dir.join("model");
        let model_err =
            |path: &Path, e: crate::model::ModelError| Error::input(path, e.to_string());
        let summary = match model_source(ctx.params) {
            Source::Shipped(g) => {
                let report = gguf::import_gguf(&g, &dest).map_err(|e| model_err(&g, e))?;
                format!(
                    "SmolLM2 imported: {} tensors in {:.1}s",
                    report.tensors, report.seconds
                )
            }
            Source::Tiny(g) => {
                let tc = tiny::TinyConfig {
                    layers: ctx.params.u64("tiny_layers") as usize,
                    hidden: ctx.params.u64("tiny_hidden") as usize,
                    heads: 4,
                    kv_heads: 2,
                    intermediate: 2 * ctx.params.u64("tiny_hidden") as usize,
                    seed: ctx.seed,
                };
                tiny::init_tiny_from_gguf(&dest, &g, &ctx.out_dir, &tc)
                    .map_err(|e| model_err(&g, e))?;
                format!("tiny model: {} layers, hidden {}", tc.layers, tc.hidden)
            }
            Source::Folder(dir) => {
                copy_folder(&dir, &dest)?;
                format!("copied {}", dir.display())
            }
        };
        Ok(StageOutput {
            files: vec![dest],
            summary,
        })
    }
}

/// Copies the files of a model folder (not subfolders) under a temporary name, then renames it.
pub(crate) fn copy_folder(src: &Path, dest: &Path) -> Result<()> {
    let tmp = crate::fsutil::tmp_path_for(dest);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    for entry in std::fs::read_dir(src).at(src)? {
        let path = entry.at(src)?.path();
        if path.is_file() {
            let to = tmp.join(path.file_name().expect("a file has a name"));
            std::fs::copy(&path, &to).at(&to)?;
        }
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).at(dest)?;
    }
    std::fs::rename(&tmp, dest).at(dest)
}
