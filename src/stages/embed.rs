//! Stage `embed`: every passage encoded with all-MiniLM-L6-v2 on candle (mean pooling with the
//! attention mask, L2 norm), batched, into `embeddings` shards for exact inner-product search.

use std::path::PathBuf;

use super::{Stage, StageContext, StageOutput, Upstream, assets_dir};
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::search::dense::{BATCH_SIZE, Embedder, passage_embedding_text};
use crate::search::run::{SHIPPED_EMBEDDER, embeddings_batch, passages};
use crate::shards::{ShardKind, ShardWriter, shard_path};

pub(crate) struct EmbedStage;

fn model_dir(params: &Params) -> PathBuf {
    match params.str("model") {
        "builtin" => assets_dir().join(SHIPPED_EMBEDDER),
        dir => PathBuf::from(dir),
    }
}

impl Stage for EmbedStage {
    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "embed"
    }

    fn about(&self) -> &'static str {
        "encode every passage for dense retrieval"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::new(
            "model",
            "builtin",
            "`builtin` (all-MiniLM-L6-v2 from the assets) or a BERT model folder",
        )]
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        vec![Upstream::needs("corpus")]
    }

    fn external_inputs(&self, params: &Params) -> Result<Vec<PathBuf>> {
        let weights = model_dir(params).join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::input(
                &weights,
                "embedding model not found (run scripts/fetch-assets.sh, or set ASL_ASSETS)",
            ));
        }
        Ok(vec![weights])
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let dir = model_dir(ctx.params);
        let embedder = Embedder::load(&dir).map_err(|e| Error::input(&dir, e.to_string()))?;
        let all = passages(ctx.input_files(Upstream::needs("corpus"))?)?;
        let mine: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| ctx.shard.owns(*i))
            .map(|(_, p)| p)
            .collect();
        let out = shard_path(&ctx.out_dir, ShardKind::Embeddings, ctx.shard.index);
        let mut writer = ShardWriter::create(&out, ShardKind::Embeddings)?;
        let bar = crate::progress::bar(mine.len() as u64, "embed");
        for block in mine.chunks(BATCH_SIZE * 8) {
            let texts: Vec<String> = block.iter().map(|p| passage_embedding_text(p)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder
                .embed(&refs)
                .map_err(|e| Error::stage("embed", e.to_string()))?;
            let ids: Vec<String> = block.iter().map(|p| p.doc_id.clone()).collect();
            let flat: Vec<f32> = vectors.into_iter().flatten().collect();
            writer.write(&embeddings_batch(&ids, &flat))?;
            bar.inc(block.len() as u64);
        }
        bar.finish_and_clear();
        let rows = writer.finish()?;
        Ok(StageOutput {
            files: vec![out],
            summary: format!("{rows} passages embedded"),
        })
    }
}
