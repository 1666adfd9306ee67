//! `asl audit`: the datasets of a run looked at between rounds. Statistics per round and role
//! come from polars queries over the shards (`stats`), warnings from stated rules over them
//! (`signals`), PNG plots from plotters (`plots`); the report is printed as tables and written as
//! Markdown, CSV and JSON (`render`). `asl audit diff` compares two rounds.

mod plots;
mod render;
pub mod scan;
pub(crate) mod signals;
pub mod stats;
pub mod synthetic;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::shards::ShardKind;
pub use render::{diff_table, markdown, print_report};
pub use signals::{Signal, Thresholds};
pub use stats::RoundAudit;

/// What to audit and where to write.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub run_dir: PathBuf,
    /// The round shown in detail and histogrammed (default: the newest audited round).
    pub round: Option<u32>,
    /// Where the plots and reports go (default `RUN_DIR/audit`).
    pub out: Option<PathBuf>,
    pub thresholds: Thresholds,
    /// Write the PNG plots.
    pub plots: bool,
}

/// The whole audit, as printed and as written to `audit.json`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub run_dir: String,
    /// The round shown in detail.
    pub detail_round: Option<u32>,
    pub rounds: Vec<RoundAudit>,
    pub signals: Vec<Signal>,
    /// One line per thing that could not be audited (unreadable shard, unfinished stage, …).
    pub notes: Vec<String>,
    /// Files the audit wrote.
    pub files: Vec<String>,
}

impl AuditReport {
    pub fn detail(&self) -> Option<&RoundAudit> {
        let round = self.detail_round?;
        self.rounds.iter().find(|r| r.round == round)
    }
}

/// Audits every round of a run dir and writes plots and reports.
pub fn audit(opts: &AuditOptions) -> Result<AuditReport> {
    let run_dir = &opts.run_dir;
    if !run_dir.is_dir() {
        return Err(Error::input(run_dir, "no such run directory"));
    }
    let mut notes = Vec::new();
    let found = scan::discover(run_dir, &mut notes);
    if found.is_empty() {
        notes.push(format!(
            "{}: no tasks, trajectories, judgments, rewards or eval shards to audit",
            run_dir.display()
        ));
    }
    let bar = crate::progress::bar(found.len() as u64, "audit");
    let mut rounds = Vec::new();
    for files in &found {
        match stats::round_audit(files) {
            Ok(r) => rounds.push(r),
            Err(e) => notes.push(format!("round {}: {e}; round skipped", files.round)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let detail_round = match opts.round {
        Some(r) if rounds.iter().any(|a| a.round == r) => Some(r),
        Some(r) => {
            notes.push(format!(
                "{}: round {r} has no audited shards (rounds present: {})",
                run_dir.display(),
                list_rounds(&rounds)
            ));
            None
        }
        None => rounds.last().map(|r| r.round),
    };
    let signals = signals::signals(&rounds, &opts.thresholds);
    let mut report = AuditReport {
        run_dir: run_dir.display().to_string(),
        detail_round,
        rounds,
        signals,
        notes,
        files: Vec::new(),
    };
    if report.rounds.is_empty() {
        return Ok(report);
    }

    let out = opts.out.clone().unwrap_or_else(|| run_dir.join("audit"));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if opts.plots {
        let hist = match report.detail() {
            Some(d) => {
                let files = found.iter().find(|f| f.round == d.round);
                stats::reward_histogram(files.map(|f| f.of(ShardKind::Rewards)).unwrap_or(&[]), 20)?
            }
            None => Vec::new(),
        };
        match plots::write_plots(&out, &report.rounds, report.detail(), &hist) {
            Ok(paths) => report
                .files
                .extend(paths.iter().map(|p| p.display().to_string())),
            Err(e) => report.notes.push(format!("{e}; plots skipped")),
        }
    }
    report.files.extend(
        render::write_reports(&out, &report)?
            .iter()
            .map(|p| p.display().to_string()),
    );
    Ok(report)
}

fn list_rounds(rounds: &[RoundAudit]) -> String {
    if rounds.is_empty() {
        return "none".into();
    }
    rounds
        .iter()
        .map(|r| r.round.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two rounds' audits and how many of the later round's questions repeat the earlier's.
#[derive(Debug, Clone, Serialize)]
pub struct RoundDiff {
    pub a: RoundAudit,
    pub b: RoundAudit,
    /// Tasks of round B, and those whose question (case-insensitively) was already asked in A.
    pub b_tasks: u64,
    pub b_repeated: u64,
}

/// `asl audit diff`: the statistics of rounds `a` and `b` side by side.
pub fn diff(run_dir: &Path, a: u32, b: u32, notes: &mut Vec<String>) -> Result<RoundDiff> {
    if !run_dir.is_dir() {
        return Err(Error::input(run_dir, "no such run directory"));
    }
    let found = scan::discover(run_dir, notes);
    let files = |r: u32| {
        found.iter().find(|f| f.round == r).cloned().ok_or_else(|| {
            Error::input(
                run_dir,
                format!(
                    "round {r} has no audited shards (rounds present: {})",
                    found
                        .iter()
                        .map(|f| f.round.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    let (fa, fb) = (files(a)?, files(b)?);
    let (b_tasks, b_repeated) =
        stats::repeated_questions(fa.of(ShardKind::Tasks), fb.of(ShardKind::Tasks))?;
    Ok(RoundDiff {
        a: stats::round_audit(&fa)?,
        b: stats::round_audit(&fb)?,
        b_tasks,
        b_repeated,
    })
}
