//! The kinds of shard asl reads and writes: names, row-group sizes. Each kind's Arrow schema is
//! derived from its row type (`rows.rs`); `docs/shards.md` documents every column and a test
//! keeps the two in step.

use std::fmt;
use std::str::FromStr;

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
    pub(crate) fn max_row_group_rows(self) -> usize {
        match self {
            ShardKind::Gradients => 1,
            ShardKind::Trajectories => 1024,
            _ => 8192,
        }
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
