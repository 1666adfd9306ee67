//! `asl submit`: a pipeline as Slurm jobs. Each stage run of each round (each optimizer step
//! of `train` and `apply`) is one job, or a job array of N parts for a stage that splits
//! (`--parts rollout=4`). An array task runs `asl STAGE --run-dir DIR --round R [--step S]
//! --shard $SLURM_ARRAY_TASK_ID/N`, exactly what a user runs by hand, and waits
//! (`--dependency=afterok`) for the jobs whose outputs it reads, found the way the runner finds
//! a stage's inputs (`Stage::upstream`). The manifest records every part; a stage is done when
//! all its parts are. Submitting again submits only the parts that are not done (and what reads
//! them), so a failed or cancelled part is fixed by running the same `asl submit` again.
//!
//! Files under `RUN_DIR/slurm/`: one job script per stage run (`r001-rollout.sbatch`,
//! `r001-train-s02.sbatch`), `submit.sh` (the `sbatch` lines of the last submission, runnable
//! as they are), `jobs.json` (every job submitted: what it runs and its Slurm id) and `logs/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::manifest::{Manifest, RunLock, ShardSpec, now_rfc3339};
use crate::pipeline::{Pipeline, Planned, ResolvedRun, RunOptions, part_is_current};
use crate::stages::{self, Reads};

/// What a job asks Slurm for. Every field is optional: what is unset is the cluster's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resources {
    pub partition: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem`, as Slurm writes it (`16G`).
    pub mem: Option<String>,
    /// `--time`, as Slurm writes it (`02:00:00`).
    pub time: Option<String>,
    /// `--gres` (`gpu:1`).
    pub gres: Option<String>,
    /// Any other `#SBATCH` options, one per item (`--account=abc`).
    #[serde(default)]
    pub args: Vec<String>,
}

impl Resources {
    /// `self` with every field `over` sets replaced (its `args` appended).
    fn overridden(&self, over: &Resources) -> Resources {
        Resources {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            gres: over.gres.clone().or_else(|| self.gres.clone()),
            args: self.args.iter().chain(&over.args).cloned().collect(),
        }
    }

    fn sbatch_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut opt = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                lines.push(format!("--{flag}={v}"));
            }
        };
        opt("partition", self.partition.clone());
        opt("cpus-per-task", self.cpus.map(|c| c.to_string()));
        opt("mem", self.mem.clone());
        opt("time", self.time.clone());
        opt("gres", self.gres.clone());
        lines.extend(self.args.iter().cloned());
        lines
    }
}

/// A pipeline's `[slurm]` table: defaults for every job, `[slurm.stages.NAME]` per stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlurmTable {
    partition: Option<String>,
    cpus: Option<u32>,
    mem: Option<String>,
    time: Option<String>,
    gres: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    stages: BTreeMap<String, Resources>,
}

/// Job resources per stage, from a pipeline's `[slurm]` table.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobResources {
    default: Resources,
    stages: BTreeMap<String, Resources>,
}

impl JobResources {
    pub(crate) fn from_pipeline(pipeline: &Pipeline) -> Result<JobResources> {
        let perr = |message: String| Error::Pipeline {
            path: pipeline.path.clone(),
            message,
        };
        let table: SlurmTable = toml::Value::Table(pipeline.slurm.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                let first = e.message().lines().next().unwrap_or("TOML error");
                perr(format!("[slurm]: {first}"))
            })?;
        for name in table.stages.keys() {
            if !pipeline.stage_names().any(|n| n == name) {
                return Err(perr(format!(
                    "[slurm.stages.{name}]: no such stage in this pipeline"
                )));
            }
        }
        Ok(JobResources {
            default: Resources {
                partition: table.partition,
                cpus: table.cpus,
                mem: table.mem,
                time: table.time,
                gres: table.gres,
                args: table.args,
            },
            stages: table.stages,
        })
    }

    pub(crate) fn for_stage(&self, stage: &str) -> Resources {
        match self.stages.get(stage) {
            Some(over) => self.default.overridden(over),
            None => self.default.clone(),
        }
    }
}

/// How `asl submit` was asked to submit.
pub struct SubmitOptions {
    pub rounds: Option<u32>,
    pub sets: Vec<crate::params::SetOverride>,
    /// Parts per stage (`--parts rollout=4`); stages not named run as one part.
    pub parts: BTreeMap<String, u32>,
    /// Extra `sbatch` options for every job (`--sbatch-arg`).
    pub sbatch_args: Vec<String>,
    /// Write the job scripts and `submit.sh`, print the `sbatch` lines, submit nothing.
    pub dry_run: bool,
    /// The `asl` binary the jobs run (default: this one).
    pub asl: PathBuf,
}

/// One job of a submission, as `jobs.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubmittedJob {
    pub round: u32,
    pub stage: String,
    /// Optimizer step for `train` / `apply`, else 0.
    #[serde(default)]
    pub step: u32,
    /// Parts of the stage run (1: a plain job, no `--shard`).
    pub parts: u32,
    /// The parts this job runs (all of them, or the ones not done on a resubmission).
    pub tasks: Vec<u32>,
    pub job_id: String,
    /// The jobs it waits for.
    pub after: Vec<String>,
    pub script: String,
    pub submitted_at: String,
}

impl SubmittedJob {
    /// The Slurm id of part `task` as Slurm and the manifest name it (`JOB_TASK` for arrays).
    pub fn task_id(&self, task: u32) -> String {
        if self.parts > 1 {
            format!("{}_{task}", self.job_id)
        } else {
            self.job_id.clone()
        }
    }
}

/// `RUN_DIR/slurm/jobs.json`: every job `asl submit` submitted to this run dir, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Submissions {
    pub jobs: Vec<SubmittedJob>,
}

impl Submissions {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("slurm").join("jobs.json")
    }

    /// The run dir's submissions; empty when nothing was ever submitted.
    pub fn load(run_dir: &Path) -> Result<Submissions> {
        let path = Self::path(run_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Input {
                path,
                message: format!("not a jobs file: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Submissions::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn save(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("jobs serialize");
        write_atomic(&Self::path(run_dir), text.as_bytes())
    }

    /// The newest job that ran part `shard` of (round, stage, step).
    pub(crate) fn job_of_part(
        &self,
        round: u32,
        stage: &str,
        step: u32,
        shard: ShardSpec,
    ) -> Option<&SubmittedJob> {
        self.jobs.iter().rev().find(|j| {
            j.round == round
                && j.stage == stage
                && j.step == step
                && j.parts == shard.count
                && j.tasks.contains(&shard.index)
        })
    }
}

/// What `submit` did with one planned stage run.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub round: u32,
    pub stage: String,
    pub step: u32,
    pub parts: u32,
    /// The parts submitted (empty: every part was done).
    pub tasks: Vec<u32>,
    /// Slurm's job id, or the shell variable that holds it in a dry run.
    pub job: Option<String>,
    pub after: Vec<String>,
}

/// Submits the pipeline's stage runs that are not done as Slurm jobs, in plan order, each
/// waiting for the jobs whose outputs it reads. `log` gets the `sbatch` lines.
pub fn submit(
    pipeline: &Pipeline,
    run_dir: &Path,
    opts: &SubmitOptions,
    log: &mut dyn std::io::Write,
) -> Result<Vec<Submitted>> {
    let run = ResolvedRun::new(
        pipeline,
        &RunOptions {
            rounds: opts.rounds,
            sets: opts.sets.clone(),
            force: Vec::new(),
        },
    )?;
    let resources = JobResources::from_pipeline(pipeline)?;
    for (name, n) in &opts.parts {
        let Some(stage) = pipeline
            .stage_names()
            .find(|s| *s == name)
            .and_then(|s| stages::find(s))
        else {
            return Err(Error::param(
                format!("--parts {name}"),
                "no such stage in this pipeline",
            ));
        };
        if *n == 0 {
            return Err(Error::param(
                format!("--parts {name}"),
                "needs at least 1 part",
            ));
        }
        if *n > 1 && !stage.splits() {
            return Err(Error::param(
                format!("--parts {name}"),
                format!(
                    "stage `{name}` does not split into parts (splitting stages: {})",
                    stages::all()
                        .iter()
                        .filter(|s| s.splits())
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    let run_dir = std::fs::canonicalize(run_dir).at(run_dir)?;
    let run_dir = run_dir.as_path();
    let mut submissions = Submissions::load(run_dir)?;
    if !opts.dry_run {
        let active = active_jobs(&submissions)?;
        if !active.is_empty() {
            return Err(Error::Slurm {
                command: "asl submit".into(),
                message: format!(
                    "jobs {} of an earlier submission to {} are still queued or running (squeue); wait for them or scancel them, then submit again",
                    active.join(", "),
                    run_dir.display()
                ),
            });
        }
    }
    {
        // Held while recording the pipeline only: refused beside an `asl run` or a running part,
        // and released before the first job can start (its stage command takes it shared).
        let _lock =
            RunLock::exclusive(run_dir, &format!("asl submit {}", pipeline.path.display()))?;
        run.record(pipeline, run_dir)?;
    }
    let manifest = Manifest::load(run_dir)?;
    // `#SBATCH` values are double-quoted where they need it; Slurm has no escape for a quote.
    for (what, value) in [
        ("run dir", run_dir.to_string_lossy().into_owned()),
        ("pipeline name", pipeline.name.clone()),
    ] {
        if value.contains(['"', '\n']) {
            return Err(Error::input(
                run_dir,
                format!(
                    "the {what} {value:?} has a double quote or a newline, which an #SBATCH line cannot hold"
                ),
            ));
        }
    }
    let slurm_dir = run_dir.join("slurm");
    std::fs::create_dir_all(slurm_dir.join("logs")).at(&slurm_dir)?;
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let asl = std::fs::canonicalize(&opts.asl).at(&opts.asl)?;

    let mut by_key: BTreeMap<(u32, String, u32), String> = BTreeMap::new();
    let mut done = Vec::new();
    let mut lines = String::from(
        "#!/bin/bash\n# Written by `asl submit`: the sbatch lines of its last submission.\nset -euo pipefail\n",
    );
    for planned in run.plan(pipeline).iter().filter(|p| p.runs) {
        let name = planned.stage.name();
        let step = planned.at.step;
        let parts = opts.parts.get(name).copied().unwrap_or(1);
        let after = upstream_jobs(planned, &run, &by_key);
        let tasks: Vec<u32> = if after.is_empty() {
            let mut t = Vec::new();
            for index in 0..parts {
                let shard = ShardSpec {
                    index,
                    count: parts,
                };
                if !part_is_current(&manifest, run_dir, &run, planned, shard)? {
                    t.push(index);
                }
            }
            t
        } else {
            (0..parts).collect()
        };
        if tasks.is_empty() {
            done.push(Submitted {
                round: planned.round,
                stage: name.to_string(),
                step,
                parts,
                tasks,
                job: None,
                after,
            });
            continue;
        }
        let base = match step {
            0 => format!("r{:03}-{name}", planned.round),
            s => format!("r{:03}-{name}-s{s:02}", planned.round),
        };
        let script = slurm_dir.join(format!("{base}.sbatch"));
        let text = job_script(&JobSpec {
            pipeline: &pipeline.name,
            run_dir,
            cwd: &cwd,
            asl: &asl,
            planned,
            parts,
            log: &slurm_dir.join("logs").join(match parts {
                1 => format!("{base}-%j.out"),
                _ => format!("{base}-%a-%A.out"),
            }),
            resources: &resources.for_stage(name),
        });
        write_atomic(&script, text.as_bytes())?;
        let var = base.replace('-', "_");
        let mut args = vec!["--parsable".to_string()];
        if parts > 1 {
            args.push(format!("--array={}", array_spec(&tasks)));
        }
        if !after.is_empty() {
            args.push(format!("--dependency=afterok:{}", after.join(":")));
        }
        args.extend(opts.sbatch_args.iter().cloned());
        // The dependency list is ids or, in a dry run, `${r001_rollout}` shell variables.
        let shown: Vec<String> = args
            .iter()
            .map(|a| match a.starts_with("--dependency=") {
                true => a.clone(),
                false => shell_quote(a),
            })
            .collect();
        let line = format!(
            "{var}=$(sbatch {} {})",
            shown.join(" "),
            shell_quote(&script.to_string_lossy())
        );
        writeln!(lines, "{line}").ok();
        writeln!(log, "{line}").ok();
        let job = if opts.dry_run {
            format!("${{{var}}}")
        } else {
            let id = sbatch(&args, &script)?;
            submissions.jobs.push(SubmittedJob {
                round: planned.round,
                stage: name.to_string(),
                step,
                parts,
                tasks: tasks.clone(),
                job_id: id.clone(),
                after: after.clone(),
                script: script.to_string_lossy().into_owned(),
                submitted_at: now_rfc3339(),
            });
            // Saved after every job, so a failure half-way leaves a record of what is queued.
            submissions.save(run_dir)?;
            id
        };
        by_key.insert((planned.round, name.to_string(), step), job.clone());
        done.push(Submitted {
            round: planned.round,
            stage: name.to_string(),
            step,
            parts,
            tasks,
            job: Some(job),
            after,
        });
    }
    write_atomic(&slurm_dir.join("submit.sh"), lines.as_bytes())?;
    Ok(done)
}

/// The jobs of this submission that `planned` reads from: the same rules by which the runner
/// finds a stage's inputs (`pipeline::prepare`), over the jobs submitted so far.
fn upstream_jobs(
    planned: &Planned,
    run: &ResolvedRun,
    by_key: &BTreeMap<(u32, String, u32), String>,
) -> Vec<String> {
    let params = run.stage_params(planned.stage.name());
    let (round, step) = (planned.round, planned.at.step);
    // The newest submitted run of `stage` within `rounds`, its last step when it steps.
    let newest = |stage: &str, rounds: std::ops::RangeInclusive<u32>| {
        by_key
            .iter()
            .filter(|((r, s, _), _)| s == stage && rounds.contains(r))
            .max_by_key(|((r, _, st), _)| (*r, *st))
            .map(|((r, _, _), id)| (*r, id.clone()))
    };
    let mut after = Vec::new();
    for spec in planned.stage.upstream(&params) {
        let up = spec.stage;
        let up_stepped = stages::find(up).is_some_and(|u| u.stepped());
        let found = match spec.reads {
            Reads::PreviousStep => step
                .checked_sub(1)
                .filter(|s| *s > 0)
                .and_then(|s| by_key.get(&(round, up.to_string(), s)).cloned()),
            Reads::Latest if step > 0 && up_stepped => {
                by_key.get(&(round, up.to_string(), step)).cloned()
            }
            Reads::PreviousRound => round
                .checked_sub(1)
                .and_then(|r| newest(up, 0..=r))
                .map(|(_, id)| id),
            Reads::Latest if spec.optional => newest(up, 0..=round)
                .filter(|(r, _)| *r == round || *r == 0)
                .map(|(_, id)| id),
            Reads::Latest => newest(up, 0..=round).map(|(_, id)| id),
        };
        if let Some(id) = found
            && !after.contains(&id)
        {
            after.push(id);
        }
    }
    after
}

struct JobSpec<'a> {
    pipeline: &'a str,
    run_dir: &'a Path,
    cwd: &'a Path,
    asl: &'a Path,
    planned: &'a Planned<'a>,
    parts: u32,
    log: &'a Path,
    resources: &'a Resources,
}

/// A job script a person can read: what it runs, the resources, and the one `asl` command.
fn job_script(j: &JobSpec) -> String {
    let name = j.planned.stage.name();
    let round = j.planned.round;
    let mut what = format!("round {round}, stage {name}");
    if j.planned.at.step > 0 {
        write!(what, ", step {}/{}", j.planned.at.step, j.planned.at.steps).ok();
    }
    if j.parts > 1 {
        write!(what, ", {} parts (one array task each)", j.parts).ok();
    }
    let mut s = format!(
        "#!/bin/bash\n# Written by `asl submit` (pipeline {}): {what}.\n",
        j.pipeline
    );
    let mut sbatch = vec![
        format!(
            "--job-name={}",
            sbatch_quote(&format!("asl-{}-r{round}-{name}", j.pipeline))
        ),
        format!("--output={}", sbatch_quote(&j.log.to_string_lossy())),
        // A job whose upstream failed is cancelled, not left pending forever.
        "--kill-on-invalid-dep=yes".to_string(),
    ];
    sbatch.extend(j.resources.sbatch_lines());
    for line in sbatch {
        writeln!(s, "#SBATCH {line}").ok();
    }
    let mut cmd = vec![
        shell_quote(&j.asl.to_string_lossy()),
        name.to_string(),
        "--run-dir".into(),
        shell_quote(&j.run_dir.to_string_lossy()),
        "--round".into(),
        round.to_string(),
    ];
    if j.planned.at.step > 0 {
        cmd.push("--step".into());
        cmd.push(j.planned.at.step.to_string());
    }
    if j.parts > 1 {
        cmd.push("--shard".into());
        cmd.push(format!("\"${{SLURM_ARRAY_TASK_ID}}/{}\"", j.parts));
    }
    write!(
        s,
        "set -euo pipefail\ncd {}\nexec {}\n",
        shell_quote(&j.cwd.to_string_lossy()),
        cmd.join(" ")
    )
    .ok();
    s
}

/// Slurm's `--array` list: `0-3`, or `1,3` for the parts a resubmission runs.
fn array_spec(tasks: &[u32]) -> String {
    let contiguous = tasks.windows(2).all(|w| w[1] == w[0] + 1);
    match (tasks.first(), tasks.last()) {
        (Some(a), Some(b)) if contiguous && a != b => format!("{a}-{b}"),
        _ => tasks
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Whether `s` needs no quoting, in a shell word or an `#SBATCH` value.
fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
}

/// An `#SBATCH` option's value: as is when plain, else in double quotes (sbatch splits an
/// unquoted value at a space and reads `#` as a comment; callers refuse `"` and newlines).
fn sbatch_quote(s: &str) -> String {
    if plain_word(s) {
        s.to_string()
    } else {
        format!("\"{s}\"")
    }
}

/// `s` as one shell word: unchanged when it is plainly safe, else single-quoted. (Hand-written:
/// six lines, where a crate would add a dependency for one function.)
fn shell_quote(s: &str) -> String {
    if plain_word(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a Slurm command and returns its stdout; a failure is one line naming the command, with
/// the last line of its stderr.
fn slurm_command(program: &str, args: &[&std::ffi::OsStr], shown: String) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Slurm {
            command: program.into(),
            message: format!("cannot run it ({e}); is Slurm installed and on PATH?"),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Slurm {
            command: shown,
            message: stderr.trim().lines().last().unwrap_or("failed").to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `sbatch --parsable ARGS SCRIPT` and returns the job id.
fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let shown = format!("sbatch {}", script.display());
    let mut argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    argv.push(script.as_os_str());
    let stdout = slurm_command("sbatch", &argv, shown.clone())?;
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Slurm {
            command: shown,
            message: format!("printed {:?}, not a job id", stdout.trim()),
        });
    }
    Ok(id)
}

/// Slurm's live jobs (queued or running), one id per array task (`12_3`) or job (`12`).
pub fn live_jobs() -> Result<Vec<String>> {
    let argv: Vec<&std::ffi::OsStr> = ["-h", "-r", "-o", "%i"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    Ok(slurm_command("squeue", &argv, "squeue".into())?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The jobs of earlier submissions that Slurm still has queued or running.
fn active_jobs(submissions: &Submissions) -> Result<Vec<String>> {
    if submissions.jobs.is_empty() {
        return Ok(Vec::new());
    }
    let live = live_jobs()?;
    let mut active: Vec<String> = submissions
        .jobs
        .iter()
        .filter(|j| {
            live.iter()
                .any(|l| l == &j.job_id || l.starts_with(&format!("{}_", j.job_id)))
        })
        .map(|j| j.job_id.clone())
        .collect();
    active.dedup();
    Ok(active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_lists_are_ranges_when_contiguous() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[1, 3]), "1,3");
        assert_eq!(array_spec(&[2]), "2");
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/runs/a-1"), "/runs/a-1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            sbatch_quote("/runs/a/r001-rollout-%j.out"),
            "/runs/a/r001-rollout-%j.out"
        );
        assert_eq!(sbatch_quote("/My Runs/#1/x.out"), "\"/My Runs/#1/x.out\"");
    }

    #[test]
    fn stage_resources_override_the_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            r#"
setup = ["corpus"]
round = []
[params.corpus]
source = "builtin"
[slurm]
partition = "cpu"
mem = "4G"
args = ["--account=abc"]
[slurm.stages.corpus]
partition = "gpu"
gres = "gpu:1"
args = ["--qos=high"]
"#,
        )
        .unwrap();
        let p = Pipeline::load(&path).unwrap();
        let r = JobResources::from_pipeline(&p).unwrap().for_stage("corpus");
        assert_eq!(r.partition.as_deref(), Some("gpu"));
        assert_eq!(r.mem.as_deref(), Some("4G"));
        assert_eq!(r.gres.as_deref(), Some("gpu:1"));
        assert_eq!(r.args, ["--account=abc", "--qos=high"]);
        std::fs::write(
            &path,
            "setup = [\"corpus\"]\nround = []\n[slurm]\npartion = \"cpu\"\n",
        )
        .unwrap();
        let e = JobResources::from_pipeline(&Pipeline::load(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[slurm]") && e.contains("partion"), "{e}");
        std::fs::write(
            &path,
            "setup = [\"corpus\"]\nround = []\n[slurm.stages.rollout]\ncpus = 2\n",
        )
        .unwrap();
        let e = JobResources::from_pipeline(&Pipeline::load(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[slurm.stages.rollout]: no such stage"), "{e}");
    }
}
