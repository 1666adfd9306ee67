//! BM25 retrieval with a tantivy index kept in a directory.
//!
//! The index is written once, by one indexing thread in one commit, so the
//! same passages always give the same segment and the same doc addresses (and
//! so the same tie order). Next to tantivy's files we keep `asl-index.json`
//! with the corpus fingerprint: an index left over from another corpus would
//! otherwise silently answer with the wrong passages.
//!
//! User queries never reach tantivy's query parser. Its syntax (`AND`, `:`,
//! quotes, `^`, ranges) would make ordinary model output fail or change
//! meaning, so the query is tokenised with the field's own analyzer and
//! turned into a disjunction of term queries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::indexer::NoMergePolicy;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::{Hit, Passage, Result, SearchError, io_err, sort_hits};

/// Name of asl's metadata file inside the index directory.
pub(crate) const META_FILE: &str = "asl-index.json";
const FORMAT_VERSION: u32 = 1;
/// Far above the ~6 MB the wiki corpus needs in one segment, far below what
/// a 24 GB machine shared with a model can spare.
const WRITER_MEMORY_BYTES: usize = 50_000_000;
/// Long queries are cut here: beyond a few dozen terms BM25 only gets slower
/// (one posting list per term), not better.
pub(crate) const MAX_QUERY_TERMS: usize = 64;
/// Bounds tokenising work on pathological input (e.g. 100 kB of one word).
const MAX_QUERY_TOKENS_SCANNED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bm25Meta {
    pub format_version: u32,
    pub passage_count: usize,
    pub fingerprint: String,
}

#[derive(Clone, Copy)]
struct Fields {
    doc_id: Field,
    title: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let doc_id = b.add_text_field("doc_id", STRING | STORED);
    let title = b.add_text_field("title", TEXT | STORED);
    let text = b.add_text_field("text", TEXT | STORED);
    (
        b.build(),
        Fields {
            doc_id,
            title,
            text,
        },
    )
}

pub struct Bm25Index {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    meta: Bm25Meta,
}

impl std::fmt::Debug for Bm25Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Index")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Bm25Index {
    /// Builds a new index in `dir` (created if absent). Refuses a directory
    /// that already holds files, rather than deleting someone's data.
    pub fn build<I>(dir: &Path, passages: I, fingerprint: &str) -> Result<Self>
    where
        I: IntoIterator<Item = Passage>,
    {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
        if entries.next().is_some() {
            return Err(SearchError::BadIndex {
                dir: dir.to_path_buf(),
                reason: "directory is not empty; remove it or open the existing index".into(),
            });
        }
        let tv = tv_err(dir);
        let (schema, fields) = schema();
        let index = Index::create_in_dir(dir, schema).map_err(tv)?;
        let mut writer: IndexWriter<TantivyDocument> = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .map_err(tv_err(dir))?;
        writer.set_merge_policy(Box::new(NoMergePolicy));
        let mut count = 0usize;
        for p in passages {
            let mut doc = TantivyDocument::new();
            doc.add_text(fields.doc_id, &p.doc_id);
            doc.add_text(fields.title, &p.title);
            doc.add_text(fields.text, &p.text);
            writer.add_document(doc).map_err(tv_err(dir))?;
            count += 1;
        }
        writer.commit().map_err(tv_err(dir))?;
        writer.wait_merging_threads().map_err(tv_err(dir))?;

        let meta = Bm25Meta {
            format_version: FORMAT_VERSION,
            passage_count: count,
            fingerprint: fingerprint.to_string(),
        };
        write_meta(dir, &meta)?;
        Self::from_index(dir, index, fields, meta)
    }

    /// Opens an index built by [`Bm25Index::build`] and checks that it was
    /// built from the corpus identified by `expected_fingerprint`.
    pub fn open(dir: &Path, expected_fingerprint: &str) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        if !dir.is_dir() {
            return Err(SearchError::Missing {
                path: dir.to_path_buf(),
                what: "BM25 index directory",
            });
        }
        if !meta_path.exists() {
            return Err(SearchError::BadIndex {
                dir: dir.to_path_buf(),
                reason: format!("{META_FILE} is missing, so this is not an index built by asl"),
            });
        }
        let bytes = std::fs::read(&meta_path).map_err(io_err(&meta_path))?;
        let meta: Bm25Meta = serde_json::from_slice(&bytes).map_err(|e| SearchError::BadIndex {
            dir: dir.to_path_buf(),
            reason: format!("{META_FILE} is malformed: {e}"),
        })?;
        if meta.format_version != FORMAT_VERSION {
            return Err(SearchError::BadIndex {
                dir: dir.to_path_buf(),
                reason: format!(
                    "format version {} in {META_FILE}, this build reads {FORMAT_VERSION}; rebuild the index",
                    meta.format_version
                ),
            });
        }
        if meta.fingerprint != expected_fingerprint {
            return Err(SearchError::FingerprintMismatch {
                dir: dir.to_path_buf(),
                expected: expected_fingerprint.to_string(),
                found: meta.fingerprint,
            });
        }
        let index = Index::open_in_dir(dir).map_err(tv_err(dir))?;
        let (expected_schema, fields) = schema();
        if index.schema() != expected_schema {
            return Err(SearchError::BadIndex {
                dir: dir.to_path_buf(),
                reason: "tantivy schema differs from asl's (doc_id, title, text)".into(),
            });
        }
        let opened = Self::from_index(dir, index, fields, meta)?;
        let found = opened.reader.searcher().num_docs();
        if found != opened.meta.passage_count as u64 {
            return Err(SearchError::BadIndex {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{META_FILE} promises {} passages but the index holds {found}",
                    opened.meta.passage_count
                ),
            });
        }
        Ok(opened)
    }

    fn from_index(dir: &Path, index: Index, fields: Fields, meta: Bm25Meta) -> Result<Self> {
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tv_err(dir))?;
        Ok(Bm25Index {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            meta,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &Bm25Meta {
        &self.meta
    }

    pub fn len(&self) -> usize {
        self.meta.passage_count
    }

    pub fn is_empty(&self) -> bool {
        self.meta.passage_count == 0
    }

    /// The distinct analysed terms of `query`, in first-seen order, at most
    /// [`MAX_QUERY_TERMS`].
    pub(crate) fn query_terms(&self, query: &str) -> Result<Vec<String>> {
        let mut analyzer = self
            .index
            .tokenizer_for_field(self.fields.text)
            .map_err(tv_err(&self.dir))?;
        let mut stream = analyzer.token_stream(query);
        let mut terms: Vec<String> = Vec::new();
        let mut scanned = 0usize;
        while terms.len() < MAX_QUERY_TERMS
            && scanned < MAX_QUERY_TOKENS_SCANNED
            && stream.advance()
        {
            scanned += 1;
            let t = &stream.token().text;
            if !t.is_empty() && !terms.iter().any(|x| x == t) {
                terms.push(t.clone());
            }
        }
        Ok(terms)
    }

    /// Top `k` passages by BM25 summed over title and text.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let terms = self.query_terms(query)?;
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(terms.len() * 2);
        for t in &terms {
            for field in [self.fields.title, self.fields.text] {
                let q = TermQuery::new(
                    Term::from_field_text(field, t),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((Occur::Should, Box::new(q)));
            }
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(k).order_by_score())
            .map_err(tv_err(&self.dir))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let p = self.load(&searcher, addr)?;
            hits.push(Hit {
                doc_id: p.doc_id,
                title: p.title,
                text: p.text,
                score,
            });
        }
        sort_hits(&mut hits);
        Ok(hits)
    }

    /// All stored passages in index order (which is insertion order).
    pub fn passages(&self) -> Result<Vec<Passage>> {
        let searcher = self.reader.searcher();
        let mut out = Vec::with_capacity(self.meta.passage_count);
        for (seg, reader) in searcher.segment_readers().iter().enumerate() {
            let seg = u32::try_from(seg).map_err(|_| SearchError::BadIndex {
                dir: self.dir.clone(),
                reason: "too many segments".into(),
            })?;
            for doc in reader.doc_ids_alive() {
                out.push(self.load(&searcher, DocAddress::new(seg, doc))?);
            }
        }
        Ok(out)
    }

    fn load(&self, searcher: &tantivy::Searcher, addr: DocAddress) -> Result<Passage> {
        let doc: TantivyDocument = searcher.doc(addr).map_err(tv_err(&self.dir))?;
        let get = |f: Field| {
            doc.get_first(f)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        Ok(Passage {
            doc_id: get(self.fields.doc_id),
            title: get(self.fields.title),
            text: get(self.fields.text),
        })
    }
}

fn tv_err(dir: &Path) -> impl FnOnce(tantivy::TantivyError) -> SearchError + '_ {
    move |source| SearchError::Tantivy {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Written through a temporary file and a rename so a crash never leaves a
/// half-written metadata file that would pass for a finished index.
fn write_meta(dir: &Path, meta: &Bm25Meta) -> Result<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(meta).map_err(|e| SearchError::BadIndex {
        dir: dir.to_path_buf(),
        reason: format!("cannot serialise {META_FILE}: {e}"),
    })?;
    std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, title: &str, text: &str) -> Passage {
        Passage {
            doc_id: id.into(),
            title: title.into(),
            text: text.into(),
        }
    }

    fn small() -> Vec<Passage> {
        vec![
            p(
                "paris",
                "Paris",
                "Paris is the capital and largest city of France.",
            ),
            p(
                "berlin",
                "Berlin",
                "Berlin is the capital and largest city of Germany.",
            ),
            p(
                "tomato",
                "Tomato",
                "The tomato is a plant whose fruit is an edible berry.",
            ),
            p(
                "kubrick",
                "Stanley Kubrick",
                "Stanley Kubrick was an American film director.",
            ),
            p(
                "odyssey",
                "2001: A Space Odyssey",
                "2001: A Space Odyssey is a 1968 film directed by Stanley Kubrick.",
            ),
        ]
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("asl-bm25-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ranks_matching_passage_first_and_survives_hostile_queries() {
        let dir = tmpdir("rank");
        let idx = Bm25Index::build(&dir, small(), "fp-small").expect("build");
        let hits = idx.search("capital of Germany", 2).expect("search");
        assert_eq!(hits[0].doc_id, "berlin");
        assert_eq!(hits.len(), 2);
        assert!(hits[0].score >= hits[1].score);

        let hits = idx
            .search("who directed 2001: a space odyssey?", 3)
            .expect("search");
        assert_eq!(hits[0].doc_id, "odyssey");

        for q in [
            "",
            "   ",
            "?!:",
            "AND OR NOT",
            "title:\"unclosed",
            "(((",
            "a^2 [x TO y]",
            "\u{0}",
        ] {
            let hits = idx.search(q, 3).expect("hostile query must not error");
            assert!(hits.len() <= 3, "{q:?}");
        }
        assert!(idx.search("", 3).expect("empty").is_empty());
        assert!(idx.search("Paris", 0).expect("k=0").is_empty());

        let huge = "berry ".repeat(20_000) + &"lorem ipsum dolor ".repeat(2_000);
        let t = std::time::Instant::now();
        let hits = idx.search(&huge, 3).expect("huge");
        assert_eq!(hits.first().map(|h| h.doc_id.as_str()), Some("tomato"));
        assert!(t.elapsed().as_secs() < 5);
        let distinct: String = (0..5000).map(|i| format!("w{i} ")).collect();
        assert!(idx.query_terms(&distinct).expect("terms").len() == MAX_QUERY_TERMS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopen_checks_fingerprint_and_keeps_passages() {
        let dir = tmpdir("reopen");
        let built = Bm25Index::build(&dir, small(), "fp-a").expect("build");
        drop(built);
        let err = Bm25Index::open(&dir, "fp-b").expect_err("mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("fp-a") && msg.contains("fp-b") && msg.contains("rebuild"),
            "{msg}"
        );

        let idx = Bm25Index::open(&dir, "fp-a").expect("open");
        assert_eq!(idx.passages().expect("passages"), small());
        assert!(
            Bm25Index::build(&dir, small(), "fp-a").is_err(),
            "non-empty dir must be refused"
        );

        let missing = dir.join("nope");
        let msg = Bm25Index::open(&missing, "x")
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("nope"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn identical_scores_tie_break_by_doc_id() {
        let dir = tmpdir("ties");
        let same = "identical body text about zebras";
        let ps = vec![p("c", "x", same), p("a", "x", same), p("b", "x", same)];
        let idx = Bm25Index::build(&dir, ps, "fp").expect("build");
        let ids: Vec<String> = idx
            .search("zebras", 3)
            .expect("search")
            .into_iter()
            .map(|h| h.doc_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
