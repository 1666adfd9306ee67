//! The search environment of a run dir: the files the `corpus`, `index` and `embed` stages
//! recorded as done in the manifest, opened by `search::run`.

use std::path::{Path, PathBuf};

use super::assets_dir;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, resolve_path};
use crate::search::run::{EnvFiles, SHIPPED_EMBEDDER};
use crate::search::{SearchEnv, SearchMode};

/// Outputs of `stage` that the manifest records as done, as paths.
pub fn stage_files(run_dir: &Path, round: u32, stage: &str) -> Result<Vec<PathBuf>> {
    let manifest = Manifest::load(run_dir)?;
    let (_, outputs) = manifest.done_outputs(stage, round).ok_or_else(|| {
        Error::stage(
            stage,
            format!(
                "no finished `{stage}` stage in {} (run `asl run pipelines/data.toml --run-dir {}`)",
                run_dir.display(),
                run_dir.display()
            ),
        )
    })?;
    Ok(outputs
        .iter()
        .map(|o| resolve_path(run_dir, &o.path))
        .collect())
}

/// Opens what `mode` needs from a run dir.
pub fn open_env(run_dir: &Path, round: u32, mode: SearchMode) -> Result<SearchEnv> {
    let mut files = EnvFiles {
        corpus: stage_files(run_dir, round, "corpus")?,
        ..EnvFiles::default()
    };
    if matches!(mode, SearchMode::Bm25 | SearchMode::Hybrid) {
        files.index = Some(
            stage_files(run_dir, round, "index")?
                .into_iter()
                .next()
                .ok_or_else(|| Error::stage("index", "recorded no index directory"))?,
        );
    }
    if matches!(mode, SearchMode::Dense | SearchMode::Hybrid) {
        files.embeddings = stage_files(run_dir, round, "embed")?;
        files.embedder = Some(assets_dir().join(SHIPPED_EMBEDDER));
    }
    crate::search::run::open_env(&files, mode)
}
