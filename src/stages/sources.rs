//! Reading records from files users bring: JSON Lines, a JSON array or object of objects, or
//! Parquet with any columns. Every record comes out as a JSON object, so the importers handle
//! one shape whatever the file format. JSONL and Parquet stream; a single JSON document is read
//! whole.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::shards::rows::QaRow;

pub(crate) type Record = Map<String, Value>;
pub(crate) type Records = Box<dyn Iterator<Item = Result<Record>>>;

/// Opens `path` as a stream of records, choosing the reader by extension.
pub(crate) fn open_records(path: &Path) -> Result<Records> {
    if !path.exists() {
        return Err(Error::input(path, "file not found"));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => jsonl_records(path),
        "json" => json_records(path),
        "parquet" => parquet_records(path),
        _ => Err(Error::input(
            path,
            "unknown file type (expected .jsonl, .json or .parquet)",
        )),
    }
}

fn jsonl_records(path: &Path) -> Result<Records> {
    let file = File::open(path).at(path)?;
    let path: PathBuf = path.to_path_buf();
    let lines = BufReader::new(file).lines().enumerate();
    Ok(Box::new(lines.filter_map(move |(i, line)| {
        let line = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(Error::io(&path, e))),
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::input(
                &path,
                format!("line {}: not a JSON object", i + 1),
            )),
            Err(e) => Err(Error::input(
                &path,
                format!("line {}: not valid JSON ({e})", i + 1),
            )),
        })
    })))
}

fn json_records(path: &Path) -> Result<Records> {
    let file = File::open(path).at(path)?;
    let value: Value = serde_json::from_reader(BufReader::new(file))
        .map_err(|e| Error::input(path, format!("not valid JSON ({e})")))?;
    let items: Vec<Value> = match value {
        Value::Array(items) => items,
        // An object of objects keyed by name (the shipped Wikipedia summaries): the key is kept
        // as `key` in case the values lack a title.
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::Object(mut m) => {
                    m.entry("key").or_insert(Value::String(k));
                    Value::Object(m)
                }
                other => other,
            })
            .collect(),
        _ => {
            return Err(Error::input(
                path,
                "expected a JSON array or object of records",
            ));
        }
    };
    let path = path.to_path_buf();
    Ok(Box::new(items.into_iter().enumerate().map(
        move |(i, v)| match v {
            Value::Object(m) => Ok(m),
            _ => Err(Error::input(
                &path,
                format!("record {}: not a JSON object", i + 1),
            )),
        },
    )))
}

/// The `parquet` crate asserts on some corrupt footer values instead of returning an error
/// (found by fuzzing: "column start and length should not be negative"); a user's file is
/// opened and decoded under `catch_panic`, so it fails in one line like any other bad input.
fn parquet_records(path: &Path) -> Result<Records> {
    let file = File::open(path).at(path)?;
    let mut reader = crate::error::catch_panic(
        || {
            ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Error::input(path, format!("not a readable Parquet file ({e})")))?
                .with_batch_size(1024)
                .build()
                .map_err(|e| Error::input(path, format!("cannot read: {e}")))
        },
        |what| Error::input(path, format!("corrupt Parquet file ({what})")),
    )?;
    let path = path.to_path_buf();
    let mut stopped = false;
    let batches = std::iter::from_fn(move || {
        if stopped {
            return None;
        }
        let next = crate::error::catch_panic(
            || Ok(reader.next()),
            |what| Error::input(&path, format!("corrupt Parquet file ({what})")),
        );
        match next {
            Ok(None) => None,
            Ok(Some(batch)) => Some(batch_records(&path, batch)),
            Err(e) => {
                // A reader that panicked is in no state to go on.
                stopped = true;
                Some(Err(e))
            }
        }
    });
    Ok(Box::new(batches.flat_map(|b| match b {
        Ok(rows) => rows,
        Err(e) => vec![Err(e)],
    })))
}

/// One decoded batch as JSON records.
fn batch_records(
    path: &Path,
    batch: std::result::Result<arrow::record_batch::RecordBatch, arrow::error::ArrowError>,
) -> Result<Vec<Result<Record>>> {
    let batch = batch.map_err(|e| Error::input(path, format!("corrupt data: {e}")))?;
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer
        .write(&batch)
        .and_then(|_| writer.finish())
        .map_err(|e| Error::input(path, format!("cannot convert rows: {e}")))?;
    let bytes = writer.into_inner();
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match serde_json::from_slice::<Value>(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::input(path, "row did not convert to a JSON object")),
        })
        .collect())
}

/// A field as text: strings as they are, numbers and booleans printed; null or absent → None.
pub(crate) fn text_field(record: &Record, key: &str) -> Option<String> {
    match record.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
/// Every question of a user QA file (JSONL, JSON or Parquet in any layout `user_row` reads).
pub fn read_qa_file(path: &Path) -> Result<Vec<QaRow>> {
    if !path.is_file() {
        return Err(Error::input(path, "QA file not found"));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    open_records(path)?
        .enumerate()
        .map(|(i, r)| {
            let record = r?;
            user_row(&record, i, "test", &stem)
                .map_err(|m| Error::input(path, format!("record {}: {m}", i + 1)))
        })
        .collect()
}

/// One record of a user QA file, in any of the layouts the peers use.
pub(crate) fn user_row(
    record: &Record,
    index: usize,
    default_split: &str,
    file_stem: &str,
) -> std::result::Result<QaRow, String> {
    // verl's and FlashRAG's rows (and `asl export`'s) keep the plain fields under
    // `extra_info` / `metadata`; verl's question otherwise sits inside the prompt.
    let nested = |key: &str| {
        ["extra_info", "metadata"].iter().find_map(|outer| {
            record
                .get(*outer)
                .and_then(Value::as_object)
                .and_then(|m| text_field(m, key))
        })
    };
    let question = text_field(record, "question")
        .or_else(|| nested("question"))
        .or_else(|| verl_question(record))
        .ok_or("no `question` column (nor a verl `prompt`)")?;
    let answers = ["answers", "golden_answers", "answer"]
        .iter()
        .find_map(|k| record.get(*k))
        .or_else(|| {
            record
                .get("reward_model")
                .and_then(|r| r.get("ground_truth"))
                .and_then(|g| g.get("target").or(Some(g)))
        })
        .map(answer_strings)
        .unwrap_or_default();
    if answers.is_empty() {
        return Err("no answers (`answers`, `golden_answers`, `answer` or verl target)".into());
    }
    Ok(QaRow {
        id: text_field(record, "id")
            .or_else(|| nested("id"))
            .unwrap_or_else(|| index.to_string()),
        question,
        answers,
        split: text_field(record, "split")
            .or_else(|| nested("split"))
            .unwrap_or_else(|| default_split.to_string()),
        source: text_field(record, "data_source")
            .or_else(|| text_field(record, "source"))
            .or_else(|| nested("source"))
            .unwrap_or_else(|| file_stem.to_string()),
        source_doc_id: text_field(record, "source_doc_id"),
    })
}

/// verl's RL layout keeps the question inside the last user message of `prompt`, often after a
/// `Question:` marker in an instruction template.
fn verl_question(record: &Record) -> Option<String> {
    let messages = record.get("prompt")?.as_array()?;
    let content = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?
        .get("content")?
        .as_str()?;
    let question = match content.rfind("Question:") {
        Some(at) => &content[at + "Question:".len()..],
        None => content,
    };
    Some(question.trim().to_string())
}

/// Answers as strings: a string, a number, or a list of them; other shapes are skipped.
pub(crate) fn answer_strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => vec![s.trim().to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(items) => items.iter().flat_map(answer_strings).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_plain_flashrag_and_verl_layouts() {
        let plain = user_row(
            &record(json!({"question": "Q?", "answers": ["a", 3]})),
            0,
            "test",
            "f",
        );
        assert_eq!(plain.unwrap().answers, vec!["a", "3"]);
        let flash = user_row(
            &record(
                json!({"id": "x1", "question": "Q?", "golden_answers": ["b"], "data_source": "nq"}),
            ),
            0,
            "test",
            "f",
        )
        .unwrap();
        assert_eq!((flash.id.as_str(), flash.source.as_str()), ("x1", "nq"));
        let verl = user_row(
            &record(json!({
                "prompt": [{"role": "user", "content": "Answer it.\nQuestion: who wrote Hamlet?"}],
                "reward_model": {"ground_truth": {"target": ["Shakespeare"]}},
                "extra_info": {"split": "train"}
            })),
            4,
            "dev",
            "f",
        )
        .unwrap();
        assert_eq!(verl.question, "who wrote Hamlet?");
        assert_eq!(verl.answers, vec!["Shakespeare"]);
        // The split verl and Search-R1 keep in `extra_info` is the row's; no id → the row number.
        assert_eq!((verl.split.as_str(), verl.id.as_str()), ("train", "4"));
    }
}
