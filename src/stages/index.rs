//! Stage `index`: a tantivy BM25 index over the corpus shards, written as a directory output
//! (`RUN_DIR/round-000/index/bm25/`) that the manifest hashes over its files.

use std::path::PathBuf;

use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::tmp_path_for;
use crate::params::{ParamSpec, Params};
use crate::search::bm25::Bm25Index;
use crate::search::corpus_fingerprint;
use crate::search::run::passages;

pub(crate) struct IndexStage;

impl Stage for IndexStage {
    fn name(&self) -> &'static str {
        "index"
    }

    fn about(&self) -> &'static str {
        "build the BM25 search index over the corpus"
    }

    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        vec![Upstream::needs("corpus")]
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let passages = passages(ctx.input_files(Upstream::needs("corpus"))?)?;
        let fingerprint = corpus_fingerprint(&passages);
        let n = passages.len();
        let dest = ctx.out_dir.join("bm25");
        // Built under a temporary name and renamed, so a killed build never looks finished.
        let tmp = tmp_path_for(&dest);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        let bar = crate::progress::bar(0, "index");
        Bm25Index::build(&tmp, passages, &fingerprint)
            .map_err(|e| Error::stage("index", e.to_string()))?;
        bar.finish_and_clear();
        if dest.exists() {
            std::fs::remove_dir_all(&dest).at(&dest)?;
        }
        std::fs::rename(&tmp, &dest).at(&dest)?;
        Ok(StageOutput {
            files: vec![dest],
            summary: format!("{n} passages indexed"),
        })
    }
}
