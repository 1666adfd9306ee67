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

pub type Record = Map<String, Value>;
pub type Records = Box<dyn Iterator<Item = Result<Record>>>;

/// Opens `path` as a stream of records, choosing the reader by extension.
pub fn open_records(path: &Path) -> Result<Records> {
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
pub fn text_field(record: &Record, key: &str) -> Option<String> {
    match record.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
