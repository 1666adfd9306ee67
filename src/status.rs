//! `asl status`: the manifest as a table a person can read — one row per stage part that is
//! current (the newest entry of each stage, step and part), in the order stages first ran.
//! For a run submitted to Slurm (`asl submit`) it also shows each part's job, the parts that are
//! queued and have not started, and the parts whose job is gone without finishing (cancelled,
//! node lost): what the next `asl submit` would submit again.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::manifest::{Entry, Manifest, ShardSpec, Status};
use crate::slurm::Submissions;

/// Slurm's view, when the run was submitted: its jobs and the ids Slurm still has queued or
/// running (`None`: `squeue` could not be asked).
pub struct SlurmView<'a> {
    pub submissions: &'a Submissions,
    pub live: Option<&'a [String]>,
}

/// The status table, and one line per failed or stopped part (its error, its Slurm job).
pub fn status_table(manifest: &Manifest, slurm: Option<&SlurmView>) -> (Table, Vec<String>) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["round", "stage", "shard", "status", "rows out", "wall s"];
    if slurm.is_some() {
        header.push("slurm job");
    }
    table.set_header(header);
    let mut notes = Vec::new();
    type Key = (u32, String, u32, ShardSpec);
    let mut seen: Vec<Key> = Vec::new();
    for entry in &manifest.entries {
        let key = (entry.round, entry.stage.clone(), entry.step, entry.shard);
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    let live = |id: &str| {
        slurm
            .and_then(|s| s.live)
            .map(|l| l.iter().any(|x| x == id))
    };
    for (round, stage, step, shard) in &seen {
        let Some(e) = manifest.entries.iter().rev().find(|e| {
            e.round == *round && e.stage == *stage && e.step == *step && e.shard == *shard
        }) else {
            continue;
        };
        let mut status = e.status.to_string();
        if e.status == Status::Running
            && let Some(job) = &e.slurm_job
            && live(job) == Some(false)
        {
            status = "stopped".into();
            notes.push(format!(
                "round {round} {} part {}: stopped without finishing (slurm job {job} is gone: cancelled or its node lost); `asl submit` again reruns it",
                label(stage, *step),
                e.shard
            ));
        }
        if e.status == Status::Failed {
            notes.push(format!(
                "round {round} {} part {}{}: {}",
                label(stage, *step),
                e.shard,
                e.slurm_job
                    .as_ref()
                    .map(|j| format!(" (slurm job {j})"))
                    .unwrap_or_default(),
                e.error.as_deref().unwrap_or("failed")
            ));
        }
        let mut row = vec![
            format!("{round}"),
            label(stage, *step),
            shard.to_string(),
            status,
            rows_out(e),
            e.wall_s
                .map(|w| format!("{w:.1}"))
                .unwrap_or_else(|| "-".into()),
        ];
        if slurm.is_some() {
            row.push(e.slurm_job.clone().unwrap_or_else(|| "-".into()));
        }
        table.add_row(row);
    }
    // Submitted parts that have no manifest entry yet: queued, or gone without starting.
    if let Some(view) = slurm {
        let mut shown: Vec<Key> = seen.clone();
        for first in &view.submissions.jobs {
            for &task in &first.tasks {
                let shard = ShardSpec {
                    index: task,
                    count: first.parts,
                };
                let key = (first.round, first.stage.clone(), first.step, shard);
                if shown.contains(&key) {
                    continue;
                }
                shown.push(key);
                // In plan order, each part's newest job.
                let job = view
                    .submissions
                    .job_of_part(first.round, &first.stage, first.step, shard)
                    .unwrap_or(first);
                let id = job.task_id(task);
                let status = match live(&id).or_else(|| live(&job.job_id)) {
                    Some(true) => "queued",
                    Some(false) => "never ran",
                    None => "submitted",
                };
                if status == "never ran" {
                    notes.push(format!(
                        "round {} {} part {shard}: slurm job {id} ended without running it (an upstream job failed, or it was cancelled); see {}",
                        job.round,
                        label(&job.stage, job.step),
                        job.script.replace(".sbatch", "-*.out").replace("/slurm/", "/slurm/logs/")
                    ));
                }
                table.add_row(vec![
                    job.round.to_string(),
                    label(&job.stage, job.step),
                    shard.to_string(),
                    status.to_string(),
                    "-".into(),
                    "-".into(),
                    id,
                ]);
            }
        }
    }
    (table, notes)
}

fn label(stage: &str, step: u32) -> String {
    match step {
        0 => stage.to_string(),
        s => format!("{stage} s{s}"),
    }
}

fn rows_out(e: &Entry) -> String {
    let rows: Option<u64> = e.outputs.iter().filter_map(|o| o.rows).reduce(|a, b| a + b);
    match rows {
        Some(n) => n.to_string(),
        None if e.outputs.is_empty() => "-".into(),
        None => format!("{} files", e.outputs.len()),
    }
}
