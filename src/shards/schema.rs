//! One Arrow schema per shard kind, defined once. `docs/shards.md` documents every column; a
//! test keeps the two in step.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Width of passage embeddings (all-MiniLM-L6-v2).
pub const EMBEDDING_DIM: i32 = 384;

/// Every kind of shard asl reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardKind {
    Corpus,
    Qa,
    Tasks,
    Trajectories,
    Judgments,
    Rewards,
    Gradients,
    Updates,
    Steps,
    Eval,
    EvalItems,
    Embeddings,
}

impl ShardKind {
    pub const ALL: [ShardKind; 12] = [
        ShardKind::Corpus,
        ShardKind::Qa,
        ShardKind::Tasks,
        ShardKind::Trajectories,
        ShardKind::Judgments,
        ShardKind::Rewards,
        ShardKind::Gradients,
        ShardKind::Updates,
        ShardKind::Steps,
        ShardKind::Eval,
        ShardKind::EvalItems,
        ShardKind::Embeddings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShardKind::Corpus => "corpus",
            ShardKind::Qa => "qa",
            ShardKind::Tasks => "tasks",
            ShardKind::Trajectories => "trajectories",
            ShardKind::Judgments => "judgments",
            ShardKind::Rewards => "rewards",
            ShardKind::Gradients => "gradients",
            ShardKind::Updates => "updates",
            ShardKind::Steps => "steps",
            ShardKind::Eval => "eval",
            ShardKind::EvalItems => "eval_items",
            ShardKind::Embeddings => "embeddings",
        }
    }

    /// Rows per row group: small where a row is large (a gradient row holds a whole tensor), so
    /// neither the writer nor a reader ever holds more than a bounded slice of a shard.
    pub fn max_row_group_rows(self) -> usize {
        match self {
            ShardKind::Gradients => 1,
            ShardKind::Trajectories => 1024,
            _ => 8192,
        }
    }

    pub fn schema(self) -> SchemaRef {
        let fields = match self {
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
}

impl fmt::Display for ShardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ShardKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ShardKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ShardKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown shard kind {s:?} (known: {})", names.join(", "))
            })
    }
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
