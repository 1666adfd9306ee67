//! Dense retrieval: sentence embeddings from a local BERT checkpoint
//! (all-MiniLM-L6-v2) and an exact inner-product index.
//!
//! The embedding recipe follows the checkpoint's sentence-transformers
//! configuration: mean of the last hidden states over real (non-padding)
//! tokens, then L2 normalisation, so inner product equals cosine similarity.
//!
//! The shipped `tokenizer.json` pads every input to 128 tokens. On a CPU that
//! wastes most of the work for short queries, so padding is switched off in
//! the tokenizer and each batch is padded to its own longest member after
//! sorting inputs by length. Truncation is at 256 tokens, the checkpoint's
//! `max_seq_length`.
//!
//! Search is brute force. At tens of thousands of 384-dim vectors an exact
//! scan takes milliseconds and, unlike an approximate index, its results
//! never depend on build order or randomness.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use super::{Passage, Result, SearchError, io_err};

/// Token cap per input; the checkpoint's `max_seq_length`.
pub(crate) const MAX_TOKENS: usize = 256;
/// Inputs per forward pass. Larger batches barely help on 2 cores and cost
/// memory proportional to batch × length².
pub(crate) const BATCH_SIZE: usize = 32;
/// Input bytes looked at per text; 32 bytes per token is far more than any
/// real text needs to fill MAX_TOKENS.
const MAX_INPUT_BYTES: usize = MAX_TOKENS * 32;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub struct Embedder {
    dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    pad_id: u32,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `model_dir` onto the CPU.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = model_dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(SearchError::Missing {
                    path: p,
                    what: "embedding model file",
                })
            }
        };
        let config_path = file("config.json")?;
        let tokenizer_path = file("tokenizer.json")?;
        let weights_path = file("model.safetensors")?;
        let model_err = |reason: String| SearchError::Model {
            dir: model_dir.to_path_buf(),
            reason,
        };

        let config_bytes = std::fs::read(&config_path).map_err(io_err(&config_path))?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| model_err(format!("config.json is not a BERT config: {e}")))?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| model_err(format!("cannot read tokenizer.json: {e}")))?;
        let pad_id = tokenizer
            .get_padding()
            .map_or(config.pad_token_id as u32, |p| p.pad_id);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| model_err(format!("cannot set truncation: {e}")))?;

        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(&weights_path, &device)
            .map_err(|e| model_err(format!("cannot read model.safetensors: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config)
            .map_err(|e| model_err(format!("model.safetensors does not match config.json: {e}")))?;
        Ok(Embedder {
            dir: model_dir.to_path_buf(),
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            pad_id,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Unit-length embeddings, one per input, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // MAX_TOKENS word pieces never need more than a few kB of text, and
        // tokenising a 100 kB query in full would cost more than the model.
        let clipped: Vec<&str> = texts.iter().map(|t| clip(t, MAX_INPUT_BYTES)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(clipped, true)
            .map_err(|e| SearchError::Embed(format!("tokenizer: {e}")))?;
        // Sorting by length makes batches of similar lengths, so little of
        // each batch is padding; the index breaks ties to stay deterministic.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (encodings[i].get_ids().len(), i));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH_SIZE) {
            let len = batch
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(1)
                .max(1);
            let mut ids = Vec::with_capacity(batch.len() * len);
            let mut mask = Vec::with_capacity(batch.len() * len);
            for &i in batch {
                let e = &encodings[i];
                ids.extend_from_slice(e.get_ids());
                mask.extend_from_slice(e.get_attention_mask());
                let pad = len - e.get_ids().len();
                ids.extend(std::iter::repeat_n(self.pad_id, pad));
                mask.extend(std::iter::repeat_n(0u32, pad));
            }
            let rows = self
                .forward(ids, mask, batch.len(), len)
                .map_err(|e| SearchError::Embed(e.to_string()))?;
            for (&i, row) in batch.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    fn forward(
        &self,
        ids: Vec<u32>,
        mask: Vec<u32>,
        b: usize,
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let input = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
        let type_ids = input.zeros_like()?;
        let hidden = self.model.forward(&input, &type_ids, Some(&mask))?;
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?;
        let counts = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

/// What a passage contributes to its embedding. The title is prepended
/// because some extracts never name their subject.
pub(crate) fn passage_embedding_text(p: &Passage) -> String {
    format!("{}. {}", p.title, p.text)
}

/// Row-major matrix of unit vectors, one per `ids[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseIndex {
    ids: Vec<String>,
    dim: usize,
    vectors: Vec<f32>,
}

/// Rows scored per rayon task: large enough to amortise scheduling, small
/// enough to spread 10k rows over both cores.
const ROWS_PER_TASK: usize = 1024;
const FILE_MAGIC: &[u8; 8] = b"ASLDENSE";
const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct FileHeader {
    dim: usize,
    count: usize,
    fingerprint: String,
    ids: Vec<String>,
}

impl DenseIndex {
    pub fn new(dim: usize) -> Self {
        DenseIndex {
            ids: Vec::new(),
            dim,
            vectors: Vec::new(),
        }
    }

    pub fn from_parts(ids: Vec<String>, dim: usize, vectors: Vec<f32>) -> Result<Self> {
        if dim == 0 || vectors.len() != ids.len() * dim {
            return Err(SearchError::Dimension {
                what: "dense index rows",
                expected: dim,
                found: if ids.is_empty() {
                    vectors.len()
                } else {
                    vectors.len() / ids.len()
                },
            });
        }
        Ok(DenseIndex { ids, dim, vectors })
    }

    /// Embeds every passage with [`passage_embedding_text`]. `progress` is
    /// called with (done, total) after each block so long builds can report.
    pub fn build(
        embedder: &Embedder,
        passages: &[Passage],
        progress: Option<&dyn Fn(usize, usize)>,
    ) -> Result<Self> {
        let mut index = DenseIndex::new(embedder.dim());
        index.ids.reserve(passages.len());
        index.vectors.reserve(passages.len() * embedder.dim());
        // Blocks larger than a batch let `embed` sort by length across them.
        for block in passages.chunks(BATCH_SIZE * 8) {
            let texts: Vec<String> = block.iter().map(passage_embedding_text).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (p, v) in block.iter().zip(embedder.embed(&refs)?) {
                index.push(p.doc_id.clone(), &v)?;
            }
            if let Some(f) = progress {
                f(index.len(), passages.len());
            }
        }
        Ok(index)
    }

    pub fn push(&mut self, id: String, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            return Err(SearchError::Dimension {
                what: "vector added to dense index",
                expected: self.dim,
                found: vector.len(),
            });
        }
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        Ok(())
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn vector(&self, row: usize) -> Option<&[f32]> {
        self.vectors.get(row * self.dim..(row + 1) * self.dim)
    }

    /// Exact top `k` rows by inner product with `query`, as (row, score),
    /// best first, ties broken by id.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        if query.len() != self.dim {
            return Err(SearchError::Dimension {
                what: "dense query",
                expected: self.dim,
                found: query.len(),
            });
        }
        if k == 0 || self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let dim = self.dim;
        let partial: Vec<Vec<(usize, f32)>> = self
            .vectors
            .par_chunks(dim * ROWS_PER_TASK)
            .enumerate()
            .map(|(task, block)| {
                let base = task * ROWS_PER_TASK;
                let mut scored: Vec<(usize, f32)> = block
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(i, row)| (base + i, dot(row, query)))
                    .collect();
                self.keep_top(&mut scored, k);
                scored
            })
            .collect();
        let mut merged: Vec<(usize, f32)> = partial.into_iter().flatten().collect();
        self.keep_top(&mut merged, k);
        Ok(merged)
    }

    fn keep_top(&self, scored: &mut Vec<(usize, f32)>, k: usize) {
        let cmp = |a: &(usize, f32), b: &(usize, f32)| {
            b.1.total_cmp(&a.1)
                .then_with(|| self.ids[a.0].cmp(&self.ids[b.0]))
        };
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, cmp);
            scored.truncate(k);
        }
        scored.sort_by(cmp);
    }

    /// Saves to one file (magic, version, JSON header with ids and corpus
    /// fingerprint, then little-endian f32 rows), via a temporary file and a
    /// rename so an interrupted save never leaves a loadable partial file.
    pub fn save(&self, path: &Path, fingerprint: &str) -> Result<()> {
        let header = FileHeader {
            dim: self.dim,
            count: self.ids.len(),
            fingerprint: fingerprint.to_string(),
            ids: self.ids.clone(),
        };
        let header = serde_json::to_vec(&header).map_err(|e| SearchError::BadIndex {
            dir: path.to_path_buf(),
            reason: format!("cannot serialise header: {e}"),
        })?;
        let mut bytes = Vec::with_capacity(24 + header.len() + self.vectors.len() * 4);
        bytes.extend_from_slice(FILE_MAGIC);
        bytes.extend_from_slice(&FILE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for x in &self.vectors {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(())
    }

    /// Loads a file written by [`DenseIndex::save`], refusing one built from
    /// a corpus other than `expected_fingerprint`.
    pub fn load(path: &Path, expected_fingerprint: &str) -> Result<Self> {
        if !path.is_file() {
            return Err(SearchError::Missing {
                path: path.to_path_buf(),
                what: "dense index file",
            });
        }
        let bad = |reason: String| SearchError::BadIndex {
            dir: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(path))?;
        if bytes.len() < 20 || &bytes[..8] != FILE_MAGIC {
            return Err(bad("not a dense index file (bad magic)".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FILE_VERSION {
            return Err(bad(format!(
                "file version {version}, this build reads {FILE_VERSION}"
            )));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[12..20]);
        let header_len = usize::try_from(u64::from_le_bytes(len8))
            .map_err(|_| bad("header too large".into()))?;
        let body_start = 20usize
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("truncated header".into()))?;
        let header: FileHeader = serde_json::from_slice(&bytes[20..body_start])
            .map_err(|e| bad(format!("malformed header: {e}")))?;
        if header.fingerprint != expected_fingerprint {
            return Err(SearchError::FingerprintMismatch {
                dir: path.to_path_buf(),
                expected: expected_fingerprint.to_string(),
                found: header.fingerprint,
            });
        }
        let body = &bytes[body_start..];
        if header.ids.len() != header.count || body.len() != header.count * header.dim * 4 {
            return Err(bad(format!(
                "header promises {} rows of dimension {} but the file holds {} bytes of vectors",
                header.count,
                header.dim,
                body.len()
            )));
        }
        let vectors = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Self::from_parts(header.ids, header.dim, vectors)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise without fast-math.
    let mut acc = [0f32; 4];
    let (ca, ra) = a.split_at(a.len() - a.len() % 4);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(4).zip(cb.chunks_exact(4)) {
        for j in 0..4 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    let s = acc[0] + acc[1] + acc[2] + acc[3] + tail;
    if s.is_nan() { f32::NEG_INFINITY } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn exact_top_k_over_many_chunks_with_id_ties() {
        let dim = 3;
        let mut idx = DenseIndex::new(dim);
        // 2.5 tasks' worth of rows so the cross-chunk merge is exercised.
        for i in 0..(ROWS_PER_TASK * 5 / 2) {
            let x = (i % 97) as f32 / 97.0;
            idx.push(format!("r{i:05}"), &unit(&[x, 1.0 - x, 0.1]))
                .expect("push");
        }
        idx.push("best".into(), &[1.0, 0.0, 0.0]).expect("push");
        idx.push("a-tie".into(), &[0.0, 0.0, 1.0]).expect("push");
        idx.push("b-tie".into(), &[0.0, 0.0, 1.0]).expect("push");
        let top = idx.search(&[1.0, 0.0, 0.0], 3).expect("search");
        assert_eq!(idx.ids()[top[0].0], "best");
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);

        let ties = idx.search(&[0.0, 0.0, 1.0], 2).expect("search");
        let names: Vec<&str> = ties.iter().map(|&(r, _)| idx.ids()[r].as_str()).collect();
        assert_eq!(names, ["a-tie", "b-tie"]);

        // Brute-force reference for a random-ish query.
        let q = unit(&[0.3, 0.9, 0.2]);
        let mut all: Vec<(usize, f32)> = (0..idx.len())
            .map(|r| (r, dot(idx.vector(r).expect("row"), &q)))
            .collect();
        all.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| idx.ids()[a.0].cmp(&idx.ids()[b.0]))
        });
        all.truncate(10);
        assert_eq!(idx.search(&q, 10).expect("search"), all);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }

    #[test]
    fn wrong_dimensions_are_errors() {
        let mut idx = DenseIndex::new(4);
        assert!(matches!(
            idx.push("x".into(), &[1.0, 2.0]),
            Err(SearchError::Dimension {
                expected: 4,
                found: 2,
                ..
            })
        ));
        idx.push("x".into(), &[1.0, 0.0, 0.0, 0.0]).expect("push");
        assert!(idx.search(&[1.0; 3], 1).is_err());
        assert!(DenseIndex::from_parts(vec!["a".into()], 4, vec![0.0; 3]).is_err());
        assert!(idx.search(&[1.0; 4], 0).expect("k=0").is_empty());
    }

    #[test]
    fn save_load_round_trip_and_fingerprint_check() {
        let dir = std::env::temp_dir().join(format!("asl-dense-test-{}", std::process::id()));
        let path = dir.join("dense.bin");
        let idx =
            DenseIndex::from_parts(vec!["a".into(), "b".into()], 2, vec![1.0, 0.0, 0.0, -1.5])
                .expect("parts");
        idx.save(&path, "fp1").expect("save");
        assert_eq!(DenseIndex::load(&path, "fp1").expect("load"), idx);
        let msg = DenseIndex::load(&path, "fp2")
            .expect_err("mismatch")
            .to_string();
        assert!(msg.contains("fp1") && msg.contains("dense.bin"), "{msg}");
        std::fs::write(&path, b"ASLDENSE\x01\0\0\0\xff\xff\xff\xff\0\0\0\0").expect("write");
        assert!(DenseIndex::load(&path, "fp1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_model_names_the_path() {
        let dir = std::env::temp_dir().join("asl-no-such-model-dir");
        let msg = Embedder::load(&dir).expect_err("missing").to_string();
        assert!(
            msg.contains("asl-no-such-model-dir") && msg.contains("config.json"),
            "{msg}"
        );
    }
}
