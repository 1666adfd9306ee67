//! Typed rows, one struct per shard kind with its fields in schema order, converted to and from
//! record batches by serde_arrow against the kind's schema. Columns are matched by name, so a
//! shard whose columns another tool reordered still reads.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use arrow::array::RecordBatch;

use super::ShardKind;

/// A row type of one shard kind.
pub trait ShardRow: Serialize + DeserializeOwned {
    const KIND: ShardKind;
}

/// Builds a batch of `rows` with the kind's exact schema.
pub fn to_batch<R: ShardRow>(rows: &[R]) -> RecordBatch {
    let schema = R::KIND.schema();
    let batch = serde_arrow::to_record_batch(schema.fields(), &rows)
        .unwrap_or_else(|e| panic!("{} rows match their schema: {e}", R::KIND));
    // serde_arrow builds the fields it was given; reattach the schema so writers can compare.
    RecordBatch::try_new(schema, batch.columns().to_vec()).expect("same columns")
}

/// Reads the rows of a batch whose schema `open_shard` checked.
pub fn from_batch<R: ShardRow>(batch: &RecordBatch) -> Result<Vec<R>, String> {
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

pub fn qa_batch(rows: &[QaRow]) -> RecordBatch {
    to_batch(rows)
}

pub fn qa_rows(batch: &RecordBatch) -> Vec<QaRow> {
    from_batch(batch).expect("qa shard schema checked")
}
