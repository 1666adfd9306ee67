//! Typed rows, one struct per shard kind, which define the kind: its Arrow schema is derived from
//! the struct's fields (serde_arrow's `SchemaLike::from_type`), and rows convert to and from
//! record batches against it. Columns are matched by name, so a shard whose columns another tool
//! reordered still reads. Only `embeddings` (a fixed-width list, written column by column) has
//! no row type.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_arrow::schema::{SchemaLike, TracingOptions};

use super::{EMBEDDING_DIM, ShardKind};

impl ShardKind {
    /// The kind's Arrow schema: its row type's fields, in order.
    pub fn schema(self) -> SchemaRef {
        match self {
            ShardKind::Corpus => schema_of::<CorpusRow>(),
            ShardKind::Qa => schema_of::<QaRow>(),
            ShardKind::Tasks => schema_of::<TaskRow>(),
            ShardKind::Trajectories => schema_of::<TrajectoryRow>(),
            ShardKind::Judgments => schema_of::<JudgmentRow>(),
            ShardKind::Rewards => schema_of::<RewardRow>(),
            ShardKind::Gradients => schema_of::<GradientRow>(),
            ShardKind::Updates => schema_of::<UpdateRow>(),
            ShardKind::Steps => schema_of::<StepRow>(),
            ShardKind::Eval => schema_of::<EvalRow>(),
            ShardKind::EvalItems => schema_of::<EvalItemRow>(),
            ShardKind::Embeddings => Arc::new(Schema::new(vec![
                Field::new("doc_id", DataType::Utf8, false),
                Field::new(
                    "embedding",
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", DataType::Float32, false)),
                        EMBEDDING_DIM,
                    ),
                    false,
                ),
            ])),
        }
    }
}

/// The schema of a row type, in the shapes asl's shards have always had: `Utf8` strings and
/// `List`s (not the large variants serde_arrow picks by default) whose item field is `item`
/// (Arrow's name; serde_arrow says `element`); `Option` fields are the nullable columns.
fn schema_of<R: Serialize + DeserializeOwned>() -> SchemaRef {
    let options = TracingOptions::default()
        .strings_as_large_utf8(false)
        .sequence_as_large_list(false);
    let fields = Vec::<FieldRef>::from_type::<R>(options)
        .unwrap_or_else(|e| panic!("a shard row type is a struct of plain fields: {e}"));
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| match f.data_type() {
                DataType::List(item) => Field::new(
                    f.name(),
                    DataType::List(Arc::new(Field::new(
                        "item",
                        item.data_type().clone(),
                        item.is_nullable(),
                    ))),
                    f.is_nullable(),
                ),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<Field>>(),
    ))
}

/// A row type of one shard kind.
pub trait ShardRow: Serialize + DeserializeOwned {
    const KIND: ShardKind;
}

/// Builds a batch of `rows` with the kind's exact schema.
pub(crate) fn to_batch<R: ShardRow>(rows: &[R]) -> RecordBatch {
    let schema = R::KIND.schema();
    let batch = serde_arrow::to_record_batch(schema.fields(), &rows)
        .unwrap_or_else(|e| panic!("{} rows match their schema: {e}", R::KIND));
    // serde_arrow builds the fields it was given; reattach the schema so writers can compare.
    RecordBatch::try_new(schema, batch.columns().to_vec()).expect("same columns")
}

/// Reads the rows of a batch whose schema `open_shard` checked.
pub(crate) fn from_batch<R: ShardRow>(batch: &RecordBatch) -> Result<Vec<R>, String> {
    serde_arrow::from_record_batch(batch).map_err(|e| format!("rows do not decode: {e}"))
}

macro_rules! shard_row {
    ($ty:ident, $kind:ident) => {
        impl ShardRow for $ty {
            const KIND: ShardKind = ShardKind::$kind;
        }
    };
}

/// One passage of the search corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusRow {
    pub doc_id: String,
    pub title: String,
    pub text: String,
    pub topic: Option<String>,
    pub description: Option<String>,
}
shard_row!(CorpusRow, Corpus);

/// One labelled question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaRow {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub split: String,
    pub source: String,
    pub source_doc_id: Option<String>,
}
shard_row!(QaRow, Qa);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub task_id: String,
    pub round: u32,
    pub question: String,
    pub answer: String,
    pub answer_aliases: Vec<String>,
    pub template: String,
    pub parent_task_id: Option<String>,
    pub topic: Option<String>,
    pub generator_trajectory_id: Option<String>,
    pub valid: bool,
    pub invalid_reason: Option<String>,
}
shard_row!(TaskRow, Tasks);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryRow {
    pub trajectory_id: String,
    pub task_id: String,
    pub role: String,
    pub attempt: u32,
    pub seed: u64,
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
    /// Log-prob of each completion token at `temperature` over the full vocabulary: the
    /// distribution the loss scores, so the PPO ratio starts at 1.
    pub sampling_logprobs: Vec<f32>,
    /// Log-prob under the distribution the token was actually drawn from (top-p, top-k and
    /// guide masks applied); equal to `sampling_logprobs` when nothing truncated it.
    pub behavior_logprobs: Vec<f32>,
    /// The temperature the completion was sampled at (1 for greedy decoding).
    pub temperature: f32,
    pub text: String,
    pub turns: u32,
    pub searches: u32,
    pub answer: Option<String>,
    pub parsed: bool,
    pub parse_error: Option<String>,
    pub finish_reason: String,
}
shard_row!(TrajectoryRow, Trajectories);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgmentRow {
    pub judgment_id: String,
    pub task_id: String,
    pub target_trajectory_id: String,
    pub target: String,
    pub sample: u32,
    pub question: String,
    pub reference_answer: String,
    pub candidate_answer: Option<String>,
    pub verdict: String,
    pub parsed: bool,
    pub parse_error: Option<String>,
    pub judge_trajectory_id: String,
}
shard_row!(JudgmentRow, Judgments);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardRow {
    pub trajectory_id: String,
    pub task_id: String,
    pub role: String,
    pub group_id: String,
    pub scheme: String,
    pub reward: f32,
    pub format_bonus: f32,
    pub total: f32,
    pub advantage: f32,
    pub label: Option<String>,
    pub train: bool,
}
shard_row!(RewardRow, Rewards);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientRow {
    /// The role whose sequences this part of the gradient comes from: a worker writes one
    /// gradient per role it trained, already weighted as the loss says, so `apply` sums them
    /// and still knows each role's gradient norm.
    pub role: String,
    pub name: String,
    pub shape: Vec<u64>,
    pub values: Vec<f32>,
    pub sequences: u32,
    pub tokens: u64,
}
shard_row!(GradientRow, Gradients);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRow {
    pub trajectory_id: String,
    pub role: String,
    pub step: u32,
    pub loss: f32,
    pub mean_ratio: f32,
    pub clip_fraction: f32,
    pub kl: f32,
    pub entropy: f32,
    pub tokens: u32,
}
shard_row!(UpdateRow, Updates);

/// One optimizer step as `apply` took it: per role (the norm of that role's summed gradient)
/// and one row `all` (the global norm before clipping, and the learning rate used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u32,
    pub role: String,
    pub sequences: u32,
    pub tokens: u64,
    pub grad_norm: f32,
    pub lr: f64,
}
shard_row!(StepRow, Steps);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub round: u32,
    pub checkpoint: String,
    pub dataset: String,
    pub role: String,
    pub metric: String,
    pub value: f64,
    pub count: u64,
}
shard_row!(EvalRow, Eval);

/// One scored item of an eval: a policy's answer to one held-out question (one row per sample),
/// or one GRM verdict on a labelled answer. `correct` is what a paired comparison counts: EM > 0
/// for the policy, the verdict equal to the label for the GRM (an unparsable verdict is wrong).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalItemRow {
    pub round: u32,
    pub checkpoint: String,
    pub dataset: String,
    pub role: String,
    pub item_id: String,
    pub sample: u32,
    pub seed: u64,
    pub question: String,
    pub references: Vec<String>,
    /// The answer the GRM judged (GRM rows only).
    pub candidate: Option<String>,
    /// The policy's parsed answer, or the GRM's verdict (`correct` / `wrong`); none when the
    /// output did not parse.
    pub prediction: Option<String>,
    /// The GRM item's label (the candidate is right); none for policy rows.
    pub label: Option<bool>,
    pub parsed: bool,
    pub correct: bool,
    pub em: f64,
    pub f1: f64,
    pub subem: f64,
    pub searches: u32,
    pub turns: u32,
    pub truncated: bool,
}
shard_row!(EvalItemRow, EvalItems);

pub fn corpus_batch(rows: &[CorpusRow]) -> RecordBatch {
    to_batch(rows)
}

pub fn corpus_rows(batch: &RecordBatch) -> Vec<CorpusRow> {
    from_batch(batch).expect("corpus shard schema checked")
}

pub(crate) fn qa_batch(rows: &[QaRow]) -> RecordBatch {
    to_batch(rows)
}

/// Rows for unit tests across the stages: the shapes a test sets by hand.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{TaskRow, TrajectoryRow};

    /// A valid round-1 task whose generator run is `{id}-g`.
    pub(crate) fn task(id: &str, question: &str, answer: &str) -> TaskRow {
        TaskRow {
            task_id: id.into(),
            round: 1,
            question: question.into(),
            answer: answer.into(),
            answer_aliases: vec![],
            template: "seed".into(),
            parent_task_id: None,
            topic: None,
            generator_trajectory_id: Some(format!("{id}-g")),
            valid: true,
            invalid_reason: None,
        }
    }

    /// A one-token trajectory of `role` at `task`; parsed exactly when it has an `answer`.
    pub(crate) fn trajectory(
        id: &str,
        task: &str,
        role: &str,
        answer: Option<&str>,
    ) -> TrajectoryRow {
        TrajectoryRow {
            trajectory_id: id.into(),
            task_id: task.into(),
            role: role.into(),
            attempt: 0,
            seed: 0,
            prompt_ids: vec![1],
            completion_ids: vec![2],
            loss_mask: vec![true],
            sampling_logprobs: vec![-1.0],
            behavior_logprobs: vec![-1.0],
            temperature: 1.0,
            text: String::new(),
            turns: 1,
            searches: 0,
            answer: answer.map(str::to_string),
            parsed: answer.is_some(),
            parse_error: answer.is_none().then(|| "no <answer> block".to_string()),
            finish_reason: "stop".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Derived schemas are the ones the shards had when they were written by hand: same column
    /// names, types, nullability and list item fields, so every existing run dir still reads
    /// and a new shard's bytes are the same.
    #[test]
    fn derived_schemas_match_the_hand_written_ones() {
        for kind in ShardKind::ALL {
            assert_eq!(kind.schema(), written_by_hand(kind), "{kind}");
        }
    }

    /// The schema every kind had when it was written by hand (before 2026-12-04).
    fn written_by_hand(kind: ShardKind) -> SchemaRef {
        let fields = match kind {
            ShardKind::Corpus => vec![
                utf8("doc_id"),
                utf8("title"),
                utf8("text"),
                utf8_null("topic"),
                utf8_null("description"),
            ],
            ShardKind::Qa => vec![
                utf8("id"),
                utf8("question"),
                list_utf8("answers"),
                utf8("split"),
                utf8("source"),
                utf8_null("source_doc_id"),
            ],
            ShardKind::Tasks => vec![
                utf8("task_id"),
                u32f("round"),
                utf8("question"),
                utf8("answer"),
                list_utf8("answer_aliases"),
                utf8("template"),
                utf8_null("parent_task_id"),
                utf8_null("topic"),
                utf8_null("generator_trajectory_id"),
                Field::new("valid", DataType::Boolean, false),
                utf8_null("invalid_reason"),
            ],
            ShardKind::Trajectories => vec![
                utf8("trajectory_id"),
                utf8("task_id"),
                utf8("role"),
                u32f("attempt"),
                Field::new("seed", DataType::UInt64, false),
                list_of("prompt_ids", DataType::UInt32),
                list_of("completion_ids", DataType::UInt32),
                list_of("loss_mask", DataType::Boolean),
                list_of("sampling_logprobs", DataType::Float32),
                list_of("behavior_logprobs", DataType::Float32),
                f32f("temperature"),
                utf8("text"),
                u32f("turns"),
                u32f("searches"),
                utf8_null("answer"),
                Field::new("parsed", DataType::Boolean, false),
                utf8_null("parse_error"),
                utf8("finish_reason"),
            ],
            ShardKind::Judgments => vec![
                utf8("judgment_id"),
                utf8("task_id"),
                utf8("target_trajectory_id"),
                utf8("target"),
                u32f("sample"),
                utf8("question"),
                utf8("reference_answer"),
                utf8_null("candidate_answer"),
                utf8("verdict"),
                Field::new("parsed", DataType::Boolean, false),
                utf8_null("parse_error"),
                utf8("judge_trajectory_id"),
            ],
            ShardKind::Rewards => vec![
                utf8("trajectory_id"),
                utf8("task_id"),
                utf8("role"),
                utf8("group_id"),
                utf8("scheme"),
                f32f("reward"),
                f32f("format_bonus"),
                f32f("total"),
                f32f("advantage"),
                utf8_null("label"),
                Field::new("train", DataType::Boolean, false),
            ],
            ShardKind::Gradients => vec![
                utf8("role"),
                utf8("name"),
                list_of("shape", DataType::UInt64),
                list_of("values", DataType::Float32),
                u32f("sequences"),
                Field::new("tokens", DataType::UInt64, false),
            ],
            ShardKind::Updates => vec![
                utf8("trajectory_id"),
                utf8("role"),
                u32f("step"),
                f32f("loss"),
                f32f("mean_ratio"),
                f32f("clip_fraction"),
                f32f("kl"),
                f32f("entropy"),
                u32f("tokens"),
            ],
            ShardKind::Steps => vec![
                u32f("step"),
                utf8("role"),
                u32f("sequences"),
                Field::new("tokens", DataType::UInt64, false),
                f32f("grad_norm"),
                Field::new("lr", DataType::Float64, false),
            ],
            ShardKind::Eval => vec![
                u32f("round"),
                utf8("checkpoint"),
                utf8("dataset"),
                utf8("role"),
                utf8("metric"),
                Field::new("value", DataType::Float64, false),
                Field::new("count", DataType::UInt64, false),
            ],
            ShardKind::EvalItems => vec![
                u32f("round"),
                utf8("checkpoint"),
                utf8("dataset"),
                utf8("role"),
                utf8("item_id"),
                u32f("sample"),
                Field::new("seed", DataType::UInt64, false),
                utf8("question"),
                list_utf8("references"),
                utf8_null("candidate"),
                utf8_null("prediction"),
                Field::new("label", DataType::Boolean, true),
                Field::new("parsed", DataType::Boolean, false),
                Field::new("correct", DataType::Boolean, false),
                Field::new("em", DataType::Float64, false),
                Field::new("f1", DataType::Float64, false),
                Field::new("subem", DataType::Float64, false),
                u32f("searches"),
                u32f("turns"),
                Field::new("truncated", DataType::Boolean, false),
            ],
            ShardKind::Embeddings => vec![
                utf8("doc_id"),
                Field::new(
                    "embedding",
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", DataType::Float32, false)),
                        EMBEDDING_DIM,
                    ),
                    false,
                ),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    fn utf8(name: &str) -> Field {
        Field::new(name, DataType::Utf8, false)
    }

    fn utf8_null(name: &str) -> Field {
        Field::new(name, DataType::Utf8, true)
    }

    fn u32f(name: &str) -> Field {
        Field::new(name, DataType::UInt32, false)
    }

    fn f32f(name: &str) -> Field {
        Field::new(name, DataType::Float32, false)
    }

    fn list_of(name: &str, item: DataType) -> Field {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", item, false))),
            false,
        )
    }

    fn list_utf8(name: &str) -> Field {
        list_of(name, DataType::Utf8)
    }
}
