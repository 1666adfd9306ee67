//! Typed rows for the shard kinds that stages build row by row, with conversions to and from
//! record batches. Columns are looked up by name, so a shard whose columns were reordered by
//! another tool still reads.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
};

use super::ShardKind;

/// One passage of the search corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusRow {
    pub doc_id: String,
    pub title: String,
    pub text: String,
    pub topic: Option<String>,
    pub description: Option<String>,
}

/// One labelled question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaRow {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub split: String,
    pub source: String,
    pub source_doc_id: Option<String>,
}

pub fn corpus_batch(rows: &[CorpusRow]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| Some(r.doc_id.as_str()))),
        strings(rows.iter().map(|r| Some(r.title.as_str()))),
        strings(rows.iter().map(|r| Some(r.text.as_str()))),
        strings(rows.iter().map(|r| r.topic.as_deref())),
        strings(rows.iter().map(|r| r.description.as_deref())),
    ];
    RecordBatch::try_new(ShardKind::Corpus.schema(), columns).expect("corpus columns match schema")
}

pub fn corpus_rows(batch: &RecordBatch) -> Vec<CorpusRow> {
    let doc_id = str_col(batch, "doc_id");
    let title = str_col(batch, "title");
    let text = str_col(batch, "text");
    let topic = str_col(batch, "topic");
    let description = str_col(batch, "description");
    (0..batch.num_rows())
        .map(|i| CorpusRow {
            doc_id: doc_id.value(i).to_string(),
            title: title.value(i).to_string(),
            text: text.value(i).to_string(),
            topic: opt_str(topic, i),
            description: opt_str(description, i),
        })
        .collect()
}

pub fn qa_batch(rows: &[QaRow]) -> RecordBatch {
    let mut answers = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, false),
    ));
    for row in rows {
        for a in &row.answers {
            answers.values().append_value(a);
        }
        answers.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| Some(r.id.as_str()))),
        strings(rows.iter().map(|r| Some(r.question.as_str()))),
        Arc::new(answers.finish()),
        strings(rows.iter().map(|r| Some(r.split.as_str()))),
        strings(rows.iter().map(|r| Some(r.source.as_str()))),
        strings(rows.iter().map(|r| r.source_doc_id.as_deref())),
    ];
    RecordBatch::try_new(ShardKind::Qa.schema(), columns).expect("qa columns match schema")
}

pub fn qa_rows(batch: &RecordBatch) -> Vec<QaRow> {
    let id = str_col(batch, "id");
    let question = str_col(batch, "question");
    let answers = batch
        .column_by_name("answers")
        .and_then(|c| c.as_any().downcast_ref::<ListArray>())
        .expect("schema checked: answers is list<utf8>");
    let split = str_col(batch, "split");
    let source = str_col(batch, "source");
    let source_doc_id = str_col(batch, "source_doc_id");
    (0..batch.num_rows())
        .map(|i| {
            let list = answers.value(i);
            let items = list
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("schema checked: answers items are utf8");
            QaRow {
                id: id.value(i).to_string(),
                question: question.value(i).to_string(),
                answers: (0..items.len())
                    .map(|j| items.value(j).to_string())
                    .collect(),
                split: split.value(i).to_string(),
                source: source.value(i).to_string(),
                source_doc_id: opt_str(source_doc_id, i),
            }
        })
        .collect()
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

/// A utf8 column by name. Callers read only shards whose schema `open_shard` checked.
pub fn str_col<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .unwrap_or_else(|| panic!("schema checked: column {name} is utf8"))
}

fn opt_str(col: &StringArray, i: usize) -> Option<String> {
    col.is_valid(i).then(|| col.value(i).to_string())
}
