//! `asl export`: a round's valid self-generated tasks, or the run's labelled QA, in the layouts
//! the peers train from, so tasks asl wrote can train a large model with their tooling:
//!
//! - `verl`: verl's RL Parquet (as Search-R1's `nq_search.py` writes it): `data_source`,
//!   `prompt` (the policy's `{role, content}` messages, its instructions included), `ability`,
//!   `reward_model {style, ground_truth {target: [answers]}}`, `extra_info {split, index, id,
//!   question, round}`;
//! - `flashrag`: FlashRAG's / Search-R1's QA JSONL (`id`, `question`, `golden_answers`, plus
//!   `metadata`);
//! - `jsonl`: asl's own QA JSONL (`id`, `question`, `answers`, `split`, `source`).
//!
//! Every layout imports back through `asl qa` (`qa.source = FILE`) with the same questions and
//! answers. The mapping is in `docs/shards.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::datatypes::FieldRef;
use parquet::arrow::ArrowWriter;
use serde::Serialize;
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::AtomicFile;
use crate::manifest::{Manifest, resolve_path};
use crate::roles::{policy, tool::ToolFormat};
use crate::shards::read_kind;
use crate::shards::rows::{QaRow, TaskRow};

/// The layouts `asl export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Verl,
    FlashRag,
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "verl" => Ok(Format::Verl),
            "flashrag" | "search-r1" => Ok(Format::FlashRag),
            "jsonl" => Ok(Format::Jsonl),
            _ => Err(format!(
                "unknown export format {s:?} (verl, flashrag, jsonl)"
            )),
        }
    }
}

/// One question to export, whatever it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub question: String,
    /// The reference first, then its aliases.
    pub answers: Vec<String>,
    pub split: String,
    pub source: String,
    /// The round whose generator wrote it (labelled QA: none).
    pub round: Option<u32>,
}

/// The newest round whose tasks are complete: every part of its `generate` done, and of its
/// `selfcheck` too when the run's pipeline has one.
pub fn latest_task_round(run_dir: &Path) -> Result<u32> {
    let manifest = Manifest::load(run_dir)?;
    let checks = has_selfcheck(&manifest);
    let newest = manifest.entries.iter().map(|e| e.round).max().unwrap_or(0);
    (1..=newest)
        .rev()
        .find(|&r| {
            let done = |stage| manifest.done_outputs(stage, r).is_some_and(|(at, _)| at == r);
            done("generate") && (!checks || done("selfcheck"))
        })
        .ok_or_else(|| Error::Input {
            path: Manifest::path(run_dir),
            message: "no round has finished tasks yet (asl generate, and asl selfcheck where the pipeline has it)".into(),
        })
}

/// Whether the run's pipeline (as `asl run` last recorded it) decides validity by a self-check.
fn has_selfcheck(manifest: &Manifest) -> bool {
    manifest
        .pipeline
        .as_ref()
        .is_some_and(|p| p.params.contains_key("selfcheck"))
}

/// The valid tasks of `round`: the self-check's decision where the round has one, else the
/// generator's tasks as written. A round whose pipeline has a self-check that has not finished
/// is refused: the generator's validity is not the round's.
pub fn round_tasks(run_dir: &Path, round: u32) -> Result<Vec<Item>> {
    let manifest = Manifest::load(run_dir)?;
    let checked = manifest
        .done_outputs("selfcheck", round)
        .is_some_and(|(r, _)| r == round);
    if has_selfcheck(&manifest) && !checked {
        return Err(Error::Input {
            path: Manifest::path(run_dir),
            message: format!(
                "round {round}'s self-check has not finished, so its valid tasks are not known yet (asl selfcheck --round {round})"
            ),
        });
    }
    let outputs = ["selfcheck", "generate"]
        .iter()
        .find_map(|stage| {
            manifest
                .done_outputs(stage, round)
                .filter(|(r, _)| *r == round)
        })
        .ok_or_else(|| Error::Input {
            path: Manifest::path(run_dir),
            message: format!("round {round} has no finished `generate` (no tasks to export)"),
        })?
        .1;
    let files: Vec<PathBuf> = outputs
        .iter()
        .map(|o| resolve_path(run_dir, &o.path))
        .collect();
    let tasks: Vec<TaskRow> = read_kind(&files)?;
    Ok(tasks
        .into_iter()
        .filter(|t| t.valid)
        .map(|t| Item {
            id: t.task_id,
            question: t.question,
            answers: std::iter::once(t.answer).chain(t.answer_aliases).collect(),
            split: "train".into(),
            source: format!("asl-round-{round}"),
            round: Some(round),
        })
        .collect())
}

/// The run's labelled QA (`qa` stage), optionally one split.
pub fn labelled_qa(run_dir: &Path, split: Option<&str>) -> Result<Vec<Item>> {
    let manifest = Manifest::load(run_dir)?;
    let (_, outputs) = manifest.done_outputs("qa", 0).ok_or_else(|| Error::Input {
        path: Manifest::path(run_dir),
        message: "the run has no finished `qa` stage (no labelled QA to export)".into(),
    })?;
    let files: Vec<PathBuf> = outputs
        .iter()
        .map(|o| resolve_path(run_dir, &o.path))
        .collect();
    let rows: Vec<QaRow> = read_kind(&files)?;
    Ok(rows
        .into_iter()
        .filter(|r| split.is_none_or(|s| r.split == s))
        .map(|r| Item {
            id: r.id,
            question: r.question,
            answers: r.answers,
            split: r.split,
            source: r.source,
            round: None,
        })
        .collect())
}

#[derive(Serialize, serde::Deserialize)]
struct VerlMessage {
    role: String,
    content: String,
}

#[derive(Serialize, serde::Deserialize)]
struct GroundTruth {
    target: Vec<String>,
}

#[derive(Serialize, serde::Deserialize)]
struct RewardModel {
    style: String,
    ground_truth: GroundTruth,
}

#[derive(Serialize, serde::Deserialize)]
struct ExtraInfo {
    split: String,
    index: u64,
    id: String,
    question: String,
    round: Option<u32>,
}

#[derive(Serialize, serde::Deserialize)]
struct VerlRow {
    data_source: String,
    prompt: Vec<VerlMessage>,
    ability: String,
    reward_model: RewardModel,
    extra_info: ExtraInfo,
}

/// Writes `items` to `out` in `format` (atomically: a temporary name, renamed when complete).
/// `tools` is how the prompt tells the policy to call search (verl only).
pub fn write(items: &[Item], format: Format, tools: ToolFormat, out: &Path) -> Result<()> {
    let mut file = AtomicFile::create(out)?;
    match format {
        Format::Verl => {
            let rows: Vec<VerlRow> = items
                .iter()
                .enumerate()
                .map(|(i, it)| VerlRow {
                    data_source: it.source.clone(),
                    prompt: policy::prompt(&it.question, tools)
                        .into_iter()
                        .map(|m| VerlMessage {
                            role: m.role.to_string(),
                            content: m.content,
                        })
                        .collect(),
                    ability: "fact-reasoning".into(),
                    reward_model: RewardModel {
                        style: "rule".into(),
                        ground_truth: GroundTruth {
                            target: it.answers.clone(),
                        },
                    },
                    extra_info: ExtraInfo {
                        split: it.split.clone(),
                        index: i as u64,
                        id: it.id.clone(),
                        question: it.question.clone(),
                        round: it.round,
                    },
                })
                .collect();
            let bad = |e: String| Error::Input {
                path: out.to_path_buf(),
                message: e,
            };
            let fields = Vec::<FieldRef>::from_type::<VerlRow>(
                TracingOptions::default().allow_null_fields(true),
            )
            .map_err(|e| bad(format!("cannot derive the verl schema: {e}")))?;
            let batch = serde_arrow::to_record_batch(&fields, &rows)
                .map_err(|e| bad(format!("cannot build the verl rows: {e}")))?;
            let mut writer = ArrowWriter::try_new(file.try_clone_file()?, batch.schema(), None)
                .map_err(|e| bad(format!("cannot start parquet writer: {e}")))?;
            writer
                .write(&batch)
                .map_err(|e| bad(format!("write failed: {e}")))?;
            writer
                .close()
                .map_err(|e| bad(format!("cannot close parquet file: {e}")))?;
        }
        Format::FlashRag | Format::Jsonl => {
            let mut text = String::new();
            for it in items {
                let line = match format {
                    Format::FlashRag => serde_json::json!({
                        "id": it.id,
                        "question": it.question,
                        "golden_answers": it.answers,
                        "metadata": {"split": it.split, "source": it.source, "round": it.round},
                    }),
                    _ => serde_json::json!({
                        "id": it.id,
                        "question": it.question,
                        "answers": it.answers,
                        "split": it.split,
                        "source": it.source,
                    }),
                };
                text.push_str(&line.to_string());
                text.push('\n');
            }
            file.file().write_all(text.as_bytes()).at(out)?;
        }
    }
    file.commit()
}
