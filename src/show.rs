//! `asl show`: one row of a stage's shards printed for a person. A trajectory is printed as its
//! turns, tool text marked as masked out of the loss, followed by its judgments and reward.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};

use crate::error::{Error, Result};
use crate::shards::rows::{JudgmentRow, RewardRow, TrajectoryRow, from_batch};
use crate::shards::{ShardKind, check_schema, count_rows, read_rows, stage_dir};

/// The shard files of `kind` in a stage directory, in part order (temporary names skipped).
fn files_of(dir: &Path, kind: ShardKind) -> Vec<PathBuf> {
    let prefix = format!("{}-", kind.name());
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".parquet")
            })
        })
        .collect();
    out.sort();
    out
}

/// A stepped stage (`train`, `apply`) writes into `step-SSS/` folders: show the round's last step.
fn last_step_dir(dir: PathBuf) -> PathBuf {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    steps.pop().unwrap_or(dir)
}

/// The kind `asl show` prints for a stage when none is asked for: the stage's main output.
fn default_kind(dir: &Path) -> Option<ShardKind> {
    [
        ShardKind::Tasks,
        ShardKind::Judgments,
        ShardKind::Rewards,
        ShardKind::Trajectories,
        ShardKind::Eval,
        ShardKind::Updates,
        ShardKind::Steps,
        ShardKind::Qa,
        ShardKind::Corpus,
    ]
    .into_iter()
    .find(|k| !files_of(dir, *k).is_empty())
}

fn parse_kind(name: &str) -> Option<ShardKind> {
    ShardKind::ALL.into_iter().find(|k| k.name() == name)
}

/// Reads row `index` of one shard without reading the others.
fn read_one(path: &Path, kind: ShardKind, index: u64) -> Result<RecordBatch> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::shard(path, format!("not a readable Parquet file ({e})")))?;
    check_schema(path, kind, builder.schema())?;
    let selection = RowSelection::from(vec![
        RowSelector::skip(index as usize),
        RowSelector::select(1),
    ]);
    let mut reader = builder
        .with_row_selection(selection)
        .build()
        .map_err(|e| Error::shard(path, format!("cannot read: {e}")))?;
    match reader.next() {
        Some(Ok(batch)) => Ok(batch),
        Some(Err(e)) => Err(Error::shard(path, format!("corrupt data: {e}"))),
        None => Err(Error::shard(path, format!("has no row {index}"))),
    }
}

/// Formats every column of a one-row batch as `name: value` lines.
fn columns(batch: &RecordBatch) -> Result<String> {
    let mut out = String::new();
    let options = FormatOptions::default().with_null("null");
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let f = ArrayFormatter::try_new(array.as_ref(), &options)
            .map_err(|e| Error::stage("show", e.to_string()))?;
        let mut value = f.value(0).to_string();
        if value.chars().count() > 400 {
            value = value.chars().take(400).collect::<String>() + " …";
        }
        let _ = writeln!(out, "{:>22}: {value}", field.name());
    }
    Ok(out)
}

/// Splits a completion into runs of model tokens and tool text by its loss mask.
pub(crate) fn segments(ids: &[u32], mask: &[bool]) -> Vec<(bool, Vec<u32>)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (id, m) in ids.iter().zip(mask) {
        match out.last_mut() {
            Some((last, run)) if last == m => run.push(*id),
            _ => out.push((*m, vec![*id])),
        }
    }
    out
}

fn tokenizer(run_dir: &Path) -> Option<tokenizers::Tokenizer> {
    let path = stage_dir(run_dir, 0, "init").join("model/tokenizer.json");
    tokenizers::Tokenizer::from_file(path).ok()
}

fn trajectory_text(run_dir: &Path, t: &TrajectoryRow) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trajectory {} — role {}, task {}, attempt {}, {} turns, {} searches, finish {}, parsed {}{}",
        t.trajectory_id,
        t.role,
        t.task_id,
        t.attempt,
        t.turns,
        t.searches,
        t.finish_reason,
        t.parsed,
        t.parse_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "answer: {}", t.answer.as_deref().unwrap_or("(none)"));
    match tokenizer(run_dir) {
        Some(tok) => {
            if let Ok(prompt) = tok.decode(&t.prompt_ids, false) {
                let _ = writeln!(
                    out,
                    "\n── prompt ({} tokens) ──\n{prompt}",
                    t.prompt_ids.len()
                );
            }
            let mut turn = 0;
            for (model, ids) in segments(&t.completion_ids, &t.loss_mask) {
                let text = tok.decode(&ids, false).unwrap_or_default();
                if model {
                    turn += 1;
                    let _ = writeln!(
                        out,
                        "\n── turn {turn}: model ({} tokens, in the loss) ──\n{text}",
                        ids.len()
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "\n── tool text ({} tokens, masked out of the loss) ──\n{text}",
                        ids.len()
                    );
                }
            }
        }
        None => {
            let _ = writeln!(
                out,
                "\n(no tokenizer at round-000/init/model; the decoded completion follows, \
                 tool text not marked)\n{}",
                t.text
            );
        }
    }
    out
}

/// Judgments and rewards in `round` that concern trajectory `id`.
fn related(run_dir: &Path, round: u32, id: &str) -> Result<String> {
    let mut out = String::new();
    let round_dir = run_dir.join(format!("round-{round:03}"));
    let mut stage_dirs: Vec<PathBuf> = std::fs::read_dir(&round_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    stage_dirs.sort();
    for dir in &stage_dirs {
        let judgments: Vec<JudgmentRow> = read_rows(&files_of(dir, ShardKind::Judgments))?;
        for j in judgments
            .iter()
            .filter(|j| j.target_trajectory_id == id || j.judge_trajectory_id == id)
        {
            let _ = writeln!(
                out,
                "judgment {}: {} on the {} answer {:?} (reference {:?}) — verdict {}{}",
                j.judgment_id,
                if j.judge_trajectory_id == id {
                    "this GRM trajectory's verdict"
                } else {
                    "GRM verdict"
                },
                j.target,
                j.candidate_answer.as_deref().unwrap_or("(none)"),
                j.reference_answer,
                j.verdict,
                if j.parsed { "" } else { " (unparsable)" }
            );
        }
        let rewards: Vec<RewardRow> = read_rows(&files_of(dir, ShardKind::Rewards))?;
        for r in rewards.iter().filter(|r| r.trajectory_id == id) {
            let _ = writeln!(
                out,
                "reward ({}): {:.3} + format {:.3} = {:.3}, advantage {:+.3} in group {}{}{}",
                r.scheme,
                r.reward,
                r.format_bonus,
                r.total,
                r.advantage,
                r.group_id,
                r.label
                    .as_deref()
                    .map(|l| format!(", label {l}"))
                    .unwrap_or_default(),
                if r.train { "" } else { ", not trained on" }
            );
        }
    }
    Ok(out)
}

/// Renders row `row` of `stage`'s shards of `kind` (default: the stage's main output) in `round`.
pub fn show(
    run_dir: &Path,
    stage: &str,
    round: u32,
    kind: Option<&str>,
    row: u64,
) -> Result<String> {
    let dir = last_step_dir(stage_dir(run_dir, round, stage));
    if !dir.is_dir() {
        return Err(Error::input(
            &dir,
            format!("stage `{stage}` has no outputs in round {round}"),
        ));
    }
    let kind = match kind {
        Some(name) => parse_kind(name).ok_or_else(|| {
            Error::param(
                "kind",
                format!(
                    "`{name}` is not a shard kind ({})",
                    ShardKind::ALL.map(|k| k.name()).join(", ")
                ),
            )
        })?,
        None => default_kind(&dir).ok_or_else(|| Error::input(&dir, "holds no shards to show"))?,
    };
    let files = files_of(&dir, kind);
    if files.is_empty() {
        return Err(Error::input(&dir, format!("holds no {kind} shards")));
    }
    let mut offset = row;
    let mut total = 0;
    for path in &files {
        let n = count_rows(path)?;
        total += n;
        if offset >= n {
            offset -= n;
            continue;
        }
        let batch = read_one(path, kind, offset)?;
        let mut out = format!("{} row {row} (row {offset} of {})\n", kind, path.display());
        if kind == ShardKind::Trajectories {
            let t: TrajectoryRow = from_batch(&batch)
                .map_err(|e| Error::shard(path, e))?
                .remove(0);
            out.push_str(&trajectory_text(run_dir, &t));
            out.push('\n');
            out.push_str(&related(run_dir, round, &t.trajectory_id)?);
        } else {
            out.push_str(&columns(&batch)?);
        }
        return Ok(out);
    }
    Err(Error::input(
        &dir,
        format!("row {row} is past the end: the stage's {kind} shards hold {total} rows"),
    ))
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn segments_follow_the_loss_mask() {
        let s = segments(&[1, 2, 3, 4, 5], &[true, true, false, false, true]);
        assert_eq!(
            s,
            vec![(true, vec![1, 2]), (false, vec![3, 4]), (true, vec![5])]
        );
    }
}
