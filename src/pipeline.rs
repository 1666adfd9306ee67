//! Pipelines and the runner. A pipeline file (`pipelines/*.toml`) names the setup stages (run
//! once, in round 0), the stages of every round, the run seed and the stages' parameters. The
//! runner executes them in order and records each run in the manifest; a stage whose params,
//! seed and input hashes match its last `done` entry, and whose outputs are intact, is skipped.
//! A stage that reruns with byte-identical outputs leaves what reads it up to date (the input
//! hashes are the same); `--force` reruns a stage and everything downstream of it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::remove_stale_tmp;
use crate::manifest::{
    Entry, FileRecord, Manifest, PipelineRecord, RunLock, ShardSpec, Status, file_record,
    now_rfc3339, outputs_intact, resolve_path,
};
use crate::params::{ParamSpec, Params, SetOverride, resolve, toml_to_json};
use crate::seed::derive_seed;
use crate::shards::stage_dir;
use crate::stages::{self, Reads, Stage, StageContext, Upstream};

pub(crate) const ASL_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    rounds: u32,
    #[serde(default = "default_stall_rounds")]
    stall_rounds: u32,
    #[serde(default)]
    setup: Vec<String>,
    #[serde(default)]
    round: Vec<String>,
    #[serde(default)]
    params: toml::Table,
    /// Job resources for `asl submit` (read by `slurm.rs`; `asl run` ignores them).
    #[serde(default)]
    slurm: toml::Table,
}

/// A validated pipeline: every stage known, every parameter accepted by its stage.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub rounds: u32,
    /// After this many rounds in a row in which no role had anything to train, the run stops
    /// (0: never). Such a round leaves the checkpoint as it was, so the next one could only
    /// repeat it with other seeds; see `run_pipeline`.
    pub stall_rounds: u32,
    pub setup: Vec<String>,
    pub round: Vec<String>,
    /// Parameters per stage name, as written in the file.
    pub params: Map<String, Value>,
    /// The `[slurm]` table, as written (see `slurm::Resources`).
    pub slurm: toml::Table,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Pipeline> {
        let perr = |message: String| Error::Pipeline {
            path: path.to_path_buf(),
            message,
        };
        let merged = read_with_parents(path, &mut Vec::new())?;
        let file: PipelineFile =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    perr(
                        e.message()
                            .lines()
                            .next()
                            .unwrap_or("TOML error")
                            .to_string(),
                    )
                })?;
        let mut params = Map::new();
        for (stage, table) in file.params {
            let toml::Value::Table(table) = table else {
                return Err(perr(format!("[params.{stage}] must be a table")));
            };
            params.insert(stage, toml_to_json(toml::Value::Table(table)));
        }
        let pipeline = Pipeline {
            path: path.to_path_buf(),
            name: file.name.unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            description: file.description,
            seed: file.seed,
            rounds: file.rounds,
            stall_rounds: file.stall_rounds,
            setup: file.setup,
            round: file.round,
            params,
            slurm: file.slurm,
        };
        pipeline.validate(&[]).map_err(|e| match e {
            Error::Param { key, message } => perr(format!("{key}: {message}")),
            Error::Stage { stage, message } => perr(format!("stage {stage}: {message}")),
            other => other,
        })?;
        Ok(pipeline)
    }

    pub(crate) fn stage_names(&self) -> impl Iterator<Item = &String> {
        self.setup.iter().chain(self.round.iter())
    }

    /// Checks stage names and that every stage's params resolve under `sets`.
    pub fn validate(&self, sets: &[SetOverride]) -> Result<()> {
        for name in self.stage_names() {
            let stage = stages::find(name).ok_or_else(|| {
                Error::stage(
                    name.clone(),
                    format!("unknown stage (known: {})", stages::known_names()),
                )
            })?;
            stage.check(&self.stage_params(stage, sets)?)?;
        }
        self.check_splits(sets)?;
        if let Some(name) = self.setup.iter().find(|n| stepped(n)) {
            return Err(Error::stage(
                name.clone(),
                "repeats once per optimizer step, so it belongs in `round`, not `setup`",
            ));
        }
        let at: Vec<usize> = (0..self.round.len())
            .filter(|&i| stepped(&self.round[i]))
            .collect();
        if let (Some(first), Some(last)) = (at.first(), at.last())
            && last - first + 1 != at.len()
        {
            return Err(Error::stage(
                self.round[*first].clone(),
                "the stepped stages (train, apply) must stand next to each other in `round`",
            ));
        }
        for key in self.params.keys() {
            if !self.stage_names().any(|n| n == key) {
                return Err(Error::param(
                    format!("params.{key}"),
                    "no such stage in this pipeline",
                ));
            }
        }
        for set in sets {
            if let Some(stage) = &set.stage
                && !self.stage_names().any(|n| n == stage)
            {
                return Err(Error::param(
                    format!("{stage}.{}", set.key),
                    "no such stage in this pipeline",
                ));
            } else if set.stage.is_none()
                && set.key != "seed"
                && !crate::params::RUN_WIDE_KEYS.contains(&set.key.as_str())
            {
                return Err(Error::param(
                    set.key.clone(),
                    "unknown run setting (`seed`, `device`, `dtype`, or stage.key)",
                ));
            }
        }
        Ok(())
    }

    /// Every QA split a stage reads (`eval.split`, `generate.source = "qa"`'s train, `judge`'s
    /// verification dev) is one the pipeline's `qa` writes, when its source says which: a typo
    /// fails here, not after a round's work.
    fn check_splits(&self, sets: &[SetOverride]) -> Result<()> {
        let mut written: Option<Vec<&str>> = None;
        let mut read = Vec::new();
        for name in self.stage_names() {
            let Some(stage) = stages::find(name) else {
                continue;
            };
            let params = self.stage_params(stage, sets)?;
            if let Some(splits) = stage.qa_splits_written(&params) {
                written.get_or_insert_with(Vec::new).extend(splits);
            }
            read.extend(stage.qa_splits_read(&params));
        }
        let Some(written) = written else {
            return Ok(());
        };
        match read
            .into_iter()
            .find(|(_, split)| !written.contains(&split.as_str()))
        {
            Some((key, split)) => Err(Error::param(
                key,
                format!(
                    "split {split:?}: this pipeline's qa writes {}",
                    written.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn stage_params(&self, stage: &dyn Stage, sets: &[SetOverride]) -> Result<Params> {
        let table = self.params.get(stage.name()).and_then(Value::as_object);
        resolve(stage.name(), &stage.params(), table, sets)
    }
}

/// Three idle rounds: one can happen by chance (every task rejected, every group flat); three in
/// a row mean the roles no longer produce anything to learn from.
fn default_stall_rounds() -> u32 {
    3
}

/// A pipeline file's table with the file it `extends` (a path relative to it) merged under it:
/// tables merge key by key, the child's value wins, arrays and other values are replaced whole.
/// `name` and `description` are the child's own (a child without a name is named after its
/// file). `chain` holds the files being read, so a cycle is refused.
fn read_with_parents(path: &Path, chain: &mut Vec<PathBuf>) -> Result<toml::Table> {
    let perr = |message: String| Error::Pipeline {
        path: path.to_path_buf(),
        message,
    };
    let canonical = std::fs::canonicalize(path).at(path)?;
    if chain.contains(&canonical) {
        let names: Vec<String> = chain
            .iter()
            .chain(std::iter::once(&canonical))
            .map(|p| p.display().to_string())
            .collect();
        return Err(perr(format!(
            "`extends` makes a cycle: {}",
            names.join(" -> ")
        )));
    }
    chain.push(canonical);
    let text = std::fs::read_to_string(path).at(path)?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(0);
        perr(format!(
            "line {line}: {}",
            e.message().lines().next().unwrap_or("TOML error")
        ))
    })?;
    let Some(parent) = table.remove("extends") else {
        chain.pop();
        return Ok(table);
    };
    let toml::Value::String(parent) = parent else {
        return Err(perr("`extends` must be a file name (a string)".into()));
    };
    let parent_path = path.parent().unwrap_or(Path::new(".")).join(&parent);
    if !parent_path.is_file() {
        return Err(perr(format!(
            "extends {parent:?}: no such file ({})",
            parent_path.display()
        )));
    }
    let mut base = read_with_parents(&parent_path, chain)?;
    chain.pop();
    base.remove("name");
    base.remove("description");
    let own: BTreeSet<String> = table
        .get("params")
        .and_then(|p| p.as_table())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    merge_tables(&mut base, table);
    if chain.is_empty() {
        // Only the file being loaded decides which stages run; an intermediate file's choice
        // may be undone by its child.
        drop_unused_inherited_params(&own, &mut base);
    }
    Ok(base)
}

/// A parent's `[params.<stage>]` for a stage the merged pipeline does not run (a baseline that
/// extends the default without its judge, say) is dropped; the file's own tables are kept, so a
/// typo in them is still refused by `validate`.
fn drop_unused_inherited_params(own: &BTreeSet<String>, merged: &mut toml::Table) {
    let stages: BTreeSet<String> = ["setup", "round"]
        .iter()
        .filter_map(|k| merged.get(*k).and_then(|v| v.as_array()))
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if let Some(toml::Value::Table(params)) = merged.get_mut("params") {
        params.retain(|stage, _| stages.contains(stage) || own.contains(stage));
    }
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The run seed after a `--set seed=N` override.
pub(crate) fn run_seed(base: u64, sets: &[SetOverride]) -> Result<u64> {
    match sets
        .iter()
        .rev()
        .find(|s| s.stage.is_none() && s.key == "seed")
    {
        None => Ok(base),
        Some(s) => s
            .value
            .as_u64()
            .ok_or_else(|| Error::param("seed", "expected a non-negative integer")),
    }
}

/// The seed of one stage in one round.
pub(crate) fn stage_seed(run_seed: u64, stage: &str, round: u32) -> u64 {
    derive_seed(run_seed, &format!("{stage}/round-{round}"))
}

pub struct RunOptions {
    pub rounds: Option<u32>,
    pub sets: Vec<SetOverride>,
    pub force: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ran,
    Skipped,
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub round: u32,
    pub stage: String,
    pub action: Action,
    pub summary: String,
}

/// A pipeline resolved for one run dir: the run seed, the rounds and every stage's params
/// under the run's overrides — what the manifest records and every stage command reads back.
pub(crate) struct ResolvedRun {
    pub seed: u64,
    pub rounds: u32,
    pub params: Map<String, Value>,
}

impl ResolvedRun {
    /// Validates the pipeline under `opts` and resolves every stage's params.
    pub fn new(pipeline: &Pipeline, opts: &RunOptions) -> Result<ResolvedRun> {
        pipeline.validate(&opts.sets)?;
        for name in &opts.force {
            if !pipeline.stage_names().any(|n| n == name) {
                return Err(Error::stage(
                    name.clone(),
                    "--force names a stage that is not in this pipeline",
                ));
            }
        }
        let mut params = Map::new();
        for name in pipeline.stage_names() {
            let stage = stages::find(name).expect("validated");
            params.insert(
                name.clone(),
                Value::Object(pipeline.stage_params(stage, &opts.sets)?),
            );
        }
        Ok(ResolvedRun {
            seed: run_seed(pipeline.seed, &opts.sets)?,
            rounds: opts.rounds.unwrap_or(pipeline.rounds),
            params,
        })
    }

    /// Records the pipeline and its resolved params in the run dir's manifest.
    pub fn record(&self, pipeline: &Pipeline, run_dir: &Path) -> Result<()> {
        let record = PipelineRecord {
            path: pipeline.path.to_string_lossy().into_owned(),
            name: pipeline.name.clone(),
            seed: self.seed,
            rounds: self.rounds,
            params: self.params.clone(),
        };
        Manifest::update(run_dir, |m| m.pipeline = Some(record))
    }

    /// One stage's resolved params.
    pub(crate) fn stage_params(&self, name: &str) -> Params {
        self.params[name]
            .as_object()
            .cloned()
            .expect("params are objects")
    }

    /// The optimizer steps of each round.
    pub fn steps(&self) -> u32 {
        optimizer_steps(&self.params)
    }

    /// Every stage run of the pipeline in order: the setup in round 0, then each round's
    /// stages with the stepped block repeated per optimizer step. Stages that skip a round
    /// (`Stage::runs_in_round`) are left out.
    pub(crate) fn plan<'p>(&self, pipeline: &'p Pipeline) -> Vec<Planned<'p>> {
        let steps = self.steps();
        let mut plan: Vec<(u32, &String, u32)> = pipeline.setup.iter().map(|s| (0, s, 0)).collect();
        for r in 1..=self.rounds {
            plan.extend(round_plan(&pipeline.round, steps).map(|(name, step)| (r, name, step)));
        }
        plan.into_iter()
            .map(|(round, name, step)| {
                let stage = stages::find(name).expect("validated");
                Planned {
                    round,
                    stage,
                    at: StepAt::new(step, steps),
                    runs: stage.runs_in_round(&self.stage_params(name), round, self.rounds),
                }
            })
            .collect()
    }
}

/// One stage run of a pipeline's plan.
pub(crate) struct Planned<'p> {
    pub round: u32,
    pub stage: &'p dyn Stage,
    pub at: StepAt,
    /// False for a stage that skips this round (`eval.every`).
    pub runs: bool,
}

/// Runs a pipeline, printing one line per stage to `log`.
pub fn run_pipeline(
    pipeline: &Pipeline,
    run_dir: &Path,
    opts: &RunOptions,
    log: &mut dyn Write,
) -> Result<Vec<StageReport>> {
    let run = ResolvedRun::new(pipeline, opts)?;
    // One `asl run` per run dir at a time (see `RunLock`).
    let _lock = RunLock::exclusive(run_dir, &format!("asl run {}", pipeline.path.display()))?;
    run.record(pipeline, run_dir)?;
    let (seed, resolved) = (run.seed, &run.params);
    // Stages run by `--force` or downstream of one: what reads them runs too. A stage that ran
    // because it was stale does not force anything; what reads it compares the input hashes its
    // new manifest entry records, so identical outputs leave the rest of the run up to date.
    let mut forced_ran: BTreeSet<String> = BTreeSet::new();
    let mut reports = Vec::new();
    let mut current_round = 0;
    // Whether a stage of the current round ran (a round that was all skipped prints no table).
    let mut round_ran = false;
    // Loaded once and again only after something changed it, so resuming a run of hundreds of
    // rounds does not parse the manifest once per stage.
    let mut manifest = Manifest::load(run_dir)?;
    let retention = match resolved.get("apply").and_then(Value::as_object) {
        Some(apply) => crate::retention::Retention::from_params(apply)?,
        None => None,
    };
    // Rounds in a row in which no role had anything to train, and the round the run ends with
    // (earlier than `rounds` once `stall_rounds` of them follow each other).
    let mut idle_rounds = 0;
    let mut last_round = run.rounds;
    for Planned {
        round,
        stage,
        at,
        runs,
    } in run.plan(pipeline)
    {
        if round > last_round {
            break;
        }
        let name = &stage.name().to_string();
        if round != current_round {
            if close_round(
                run_dir,
                &manifest,
                current_round,
                round_ran,
                retention.as_ref(),
                log,
            )? {
                manifest = Manifest::load(run_dir)?;
            }
            current_round = round;
            round_ran = false;
        }
        let params = run.stage_params(name);
        // A stalled run's last round runs what the pipeline's last round would (`eval.every`).
        let runs = runs
            || (round == last_round
                && round < run.rounds
                && stage.runs_in_round(&params, round, round));
        if !runs {
            writeln!(log, "round {round} {name}: not this round").ok();
            continue;
        }
        let forced = opts.force.iter().any(|f| f == name)
            || stage
                .upstream(&params)
                .iter()
                .any(|u| forced_ran.contains(u.stage));
        let seed = stage_seed(seed, name, round);
        let prepared = prepare(&manifest, run_dir, stage, round, at, &params, seed)?;
        let label = at.label(name);
        if !forced && prepared.is_up_to_date(&manifest, run_dir, ShardSpec::WHOLE)? {
            writeln!(log, "round {round} {label}: didn't change, skipping").ok();
            reports.push(StageReport {
                round,
                stage: name.clone(),
                action: Action::Skipped,
                summary: String::new(),
            });
        } else {
            writeln!(log, "round {round} {label}: running").ok();
            round_ran = true;
            let executed = prepared.execute(run_dir, ShardSpec::WHOLE);
            manifest = Manifest::load(run_dir)?;
            let (entry, summary) = executed?;
            writeln!(
                log,
                "round {round} {label}: done in {:.1}s, {summary}",
                entry.wall_s.unwrap_or_default()
            )
            .ok();
            if forced {
                forced_ran.insert(name.clone());
            }
            reports.push(StageReport {
                round,
                stage: name.clone(),
                action: Action::Ran,
                summary,
            });
        }
        if name == "reward" && pipeline.stall_rounds > 0 {
            idle_rounds = match trained_rows(run_dir, &manifest, round)? {
                0 => idle_rounds + 1,
                _ => 0,
            };
            if idle_rounds >= pipeline.stall_rounds && round < run.rounds {
                last_round = round;
                writeln!(
                    log,
                    "round {round}: the run stops after this round: {idle_rounds} rounds in a row gave no role anything to train (no valid task or only flat groups), so the checkpoint no longer changes and later rounds would repeat these (stall_rounds = {}; 0 never stops)",
                    pipeline.stall_rounds
                )
                .ok();
            }
        }
    }
    close_round(
        run_dir,
        &manifest,
        current_round,
        round_ran,
        retention.as_ref(),
        log,
    )?;
    Ok(reports)
}

/// How many of `round`'s reward rows train a role (0 when its `reward` wrote none).
fn trained_rows(run_dir: &Path, manifest: &Manifest, round: u32) -> Result<usize> {
    let files = crate::report::outputs(run_dir, manifest, "reward", round);
    let rows: Vec<crate::shards::rows::RewardRow> = crate::shards::read_kind(&files)?;
    Ok(rows.iter().filter(|r| r.train).count())
}

/// The optimizer steps each round takes, from the pipeline's `train` params (1 when it has no
/// `train`).
fn optimizer_steps(resolved: &Map<String, Value>) -> u32 {
    resolved
        .get("train")
        .and_then(Value::as_object)
        .and_then(|p| crate::stages::train::optimizer_steps(p).ok())
        .unwrap_or(1)
}

fn stepped(name: &str) -> bool {
    stages::find(name).is_some_and(|s| s.stepped())
}

/// A round's stages in the order they run: the stepped stages (`train`, `apply`) form a block
/// that repeats once per optimizer step, `train` step 1, `apply` step 1, `train` step 2, …
fn round_plan(names: &[String], steps: u32) -> impl Iterator<Item = (&String, u32)> {
    let start = names.iter().position(|n| stepped(n)).unwrap_or(names.len());
    let end = start + names[start..].iter().take_while(|n| stepped(n)).count();
    let before = names[..start].iter().map(|n| (n, 0));
    let block = (1..=steps).flat_map(move |s| names[start..end].iter().map(move |n| (n, s)));
    let after = names[end..].iter().map(|n| (n, 0));
    before.chain(block).chain(after)
}

/// Where a stage run sits among a round's optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepAt {
    /// 1..=`steps` for a stepped stage, 0 for any other.
    pub step: u32,
    pub steps: u32,
}

impl StepAt {
    pub(crate) const NONE: StepAt = StepAt { step: 0, steps: 0 };

    fn new(step: u32, steps: u32) -> StepAt {
        if step == 0 {
            StepAt::NONE
        } else {
            StepAt { step, steps }
        }
    }

    /// A stepped stage writes into `step-SSS/` under its stage dir.
    pub fn dir(self, stage_dir: PathBuf) -> PathBuf {
        if self.step == 0 {
            stage_dir
        } else {
            stage_dir.join(format!("step-{:03}", self.step))
        }
    }

    fn label(self, name: &str) -> String {
        if self.step == 0 {
            name.to_string()
        } else {
            format!("{name} step {}/{}", self.step, self.steps)
        }
    }
}

/// After a round's last stage: prints the round table when a stage of the round ran (round 0
/// is setup and has none), then applies checkpoint retention. Returns whether it changed the
/// manifest.
fn close_round(
    run_dir: &Path,
    manifest: &Manifest,
    round: u32,
    ran: bool,
    retention: Option<&crate::retention::Retention>,
    log: &mut dyn Write,
) -> Result<bool> {
    if round == 0 {
        return Ok(false);
    }
    if ran {
        match crate::report::round_table(run_dir, round) {
            Ok(table) => writeln!(log, "{table}").ok(),
            Err(e) => writeln!(log, "round {round}: no round table: {e}").ok(),
        };
        match crate::report::updates_table(run_dir, round) {
            Ok(table) if !table.is_empty() => writeln!(log, "{table}").ok(),
            Ok(_) => None,
            Err(e) => writeln!(log, "round {round}: no updates table: {e}").ok(),
        };
    }
    let mut changed = false;
    if let Some(r) = retention {
        let pruned = crate::retention::prune(run_dir, manifest, round, r)?;
        changed = !pruned.is_empty();
        if !pruned.is_empty() {
            writeln!(
                log,
                "round {round}: retention removed {} checkpoint and gradient outputs (apply.keep_checkpoints = {})",
                pruned.len(),
                r.keep_last
            )
            .ok();
        }
    }
    Ok(changed)
}

/// Runs one stage by hand with the params of the run's pipeline (from the manifest) and any
/// overrides; it always runs.
pub fn run_single_stage(
    run_dir: &Path,
    stage: &dyn Stage,
    round: u32,
    step: Option<u32>,
    sets: &[SetOverride],
    shard: ShardSpec,
) -> Result<(Entry, String)> {
    // Beside other stage commands (parts of a stage), never beside an `asl run`.
    let _lock = match run_dir.exists() {
        true => Some(RunLock::shared(run_dir)?),
        false => None,
    };
    let mut executed = false;
    let result = prepare_and_run(run_dir, stage, round, step, sets, shard, &mut executed);
    // A part that fails before it starts (a bad parameter, a missing input) under Slurm leaves
    // a `failed` entry too: there, the manifest is where a person looks (`asl status`), not the
    // job's stderr. (`execute` records its own failures.)
    if let (Err(e), false, Some(job)) = (&result, executed, crate::manifest::slurm_job_from_env()) {
        let now = now_rfc3339();
        let entry = Entry {
            stage: stage.name().to_string(),
            round,
            step: step.unwrap_or(u32::from(stage.stepped())),
            steps: 0,
            shard,
            status: Status::Failed,
            params: Map::new(),
            seed: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            asl_version: ASL_VERSION.to_string(),
            stage_version: stage.version(),
            started_at: now.clone(),
            finished_at: Some(now),
            wall_s: None,
            error: Some(e.to_string()),
            slurm_job: Some(job),
        };
        Manifest::update(run_dir, |m| m.entries.push(entry))?;
    }
    result
}

fn prepare_and_run(
    run_dir: &Path,
    stage: &dyn Stage,
    round: u32,
    step: Option<u32>,
    sets: &[SetOverride],
    shard: ShardSpec,
    executed: &mut bool,
) -> Result<(Entry, String)> {
    let manifest = Manifest::load(run_dir)?;
    let (base_seed, table) = match &manifest.pipeline {
        Some(p) => (
            p.seed,
            p.params.get(stage.name()).and_then(Value::as_object),
        ),
        None => (0, None),
    };
    if shard.count > 1 && !stage.splits() {
        return Err(Error::param(
            "--shard",
            format!(
                "stage `{}` does not split into parts (it reads the whole round); run it as one part",
                stage.name()
            ),
        ));
    }
    let seed = run_seed(base_seed, sets)?;
    let params = resolve(stage.name(), &stage.params(), table, sets)?;
    stage.check(&params)?;
    let at = if stage.stepped() {
        // The step count comes from the run's `train` params, as `asl run` would compute it.
        let train = crate::stages::train::TrainStage;
        let train_table = manifest
            .pipeline
            .as_ref()
            .and_then(|p| p.params.get("train"))
            .and_then(Value::as_object);
        let train_params = resolve("train", &train.params(), train_table, sets)?;
        let steps = crate::stages::train::optimizer_steps(&train_params)?;
        let step = step.unwrap_or(1);
        if step == 0 || step > steps {
            return Err(Error::param(
                "--step",
                format!("{step} is outside 1..={steps} (this run's optimizer steps per round)"),
            ));
        }
        StepAt::new(step, steps)
    } else {
        if step.is_some() {
            return Err(Error::param(
                "--step",
                format!(
                    "stage `{}` does not repeat per optimizer step (only train and apply do)",
                    stage.name()
                ),
            ));
        }
        StepAt::NONE
    };
    let prepared = prepare(
        &manifest,
        run_dir,
        stage,
        round,
        at,
        &params,
        stage_seed(seed, stage.name(), round),
    )?;
    *executed = true;
    prepared.execute(run_dir, shard)
}

/// Whether part `shard` of a planned stage run is done and up to date (same params, seed,
/// code version and inputs, outputs intact). False when its upstream has not finished: what
/// `asl submit` uses to submit only what is not done.
pub(crate) fn part_is_current(
    manifest: &Manifest,
    run_dir: &Path,
    run: &ResolvedRun,
    planned: &Planned,
    shard: ShardSpec,
) -> Result<bool> {
    let name = planned.stage.name();
    let params = run.stage_params(name);
    let seed = stage_seed(run.seed, name, planned.round);
    match prepare(
        manifest,
        run_dir,
        planned.stage,
        planned.round,
        planned.at,
        &params,
        seed,
    ) {
        Ok(prepared) => prepared.is_up_to_date(manifest, run_dir, shard),
        Err(_) => Ok(false),
    }
}

/// A stage with its params, seed and inputs resolved, ready to check or run.
struct Prepared<'a> {
    stage: &'a dyn Stage,
    round: u32,
    at: StepAt,
    params: Params,
    seed: u64,
    upstream: Vec<(Upstream, Vec<PathBuf>)>,
    inputs: Vec<FileRecord>,
    /// Inputs that retention removed: fine for the up-to-date check (their hashes are
    /// recorded), fatal for a run.
    pruned_inputs: Vec<String>,
}

fn prepare<'a>(
    manifest: &Manifest,
    run_dir: &Path,
    stage: &'a dyn Stage,
    round: u32,
    at: StepAt,
    params: &Params,
    seed: u64,
) -> Result<Prepared<'a>> {
    let mut upstream = Vec::new();
    let mut inputs = Vec::new();
    let mut pruned_inputs = Vec::new();
    // The stages of the run's pipeline (as `asl run` last recorded it): an optional upstream
    // the pipeline no longer has is absent, whatever an earlier pipeline left in the manifest.
    let in_pipeline = |up: &str| {
        manifest
            .pipeline
            .as_ref()
            .is_none_or(|p| p.params.contains_key(up))
    };
    for spec in stage.upstream(params) {
        let up = spec.stage;
        if spec.optional && !in_pipeline(up) {
            upstream.push((spec, Vec::new()));
            continue;
        }
        let same_step = at.step > 0 && stages::find(up).is_some_and(|u| u.stepped());
        let found = match spec.reads {
            Reads::PreviousStep => at
                .step
                .checked_sub(1)
                .filter(|s| *s > 0)
                .and_then(|s| manifest.done_step_outputs(up, round, s))
                .map(|outputs| (round, outputs)),
            Reads::Latest if same_step => manifest
                .done_step_outputs(up, round, at.step)
                .map(|outputs| (round, outputs)),
            Reads::PreviousRound => round
                .checked_sub(1)
                .and_then(|r| manifest.done_outputs(up, r)),
            // An optional upstream is this round's or setup's (round 0); another round's would
            // be stale.
            Reads::Latest if spec.optional => manifest
                .done_outputs(up, round)
                .filter(|(r, _)| *r == round || *r == 0),
            Reads::Latest => manifest.done_outputs(up, round),
        };
        if found.is_none() && spec.optional {
            upstream.push((spec, Vec::new()));
            continue;
        }
        let (_, outputs) = found.ok_or_else(|| {
            Error::stage(
                stage.name(),
                format!(
                    "needs the outputs of stage `{up}`, which has not finished in round {round} or before (run `asl {up} --run-dir {}`)",
                    run_dir.display()
                ),
            )
        })?;
        let mut files = Vec::with_capacity(outputs.len());
        for output in &outputs {
            let file = resolve_path(run_dir, &output.path);
            if !file.exists() && manifest.is_pruned(&output.path) {
                pruned_inputs.push(format!("{} (an output of `{up}`)", output.path));
                continue;
            }
            if !file.exists() {
                return Err(Error::Manifest {
                    path: Manifest::path(run_dir),
                    message: format!(
                        "names {} (an output of stage `{up}`), which is missing; rerun `asl {up}`",
                        file.display()
                    ),
                });
            }
            files.push(file);
        }
        upstream.push((spec, files));
        inputs.extend(outputs);
    }
    for path in stage.external_inputs(params)? {
        inputs.push(file_record(run_dir, &path)?);
    }
    Ok(Prepared {
        stage,
        round,
        at,
        params: params.clone(),
        seed,
        upstream,
        inputs,
        pruned_inputs,
    })
}

/// Whether two resolved params of one stage agree on every setting in its run's identity
/// (runner-only settings such as retention may differ). A setting at its default counts as
/// absent, so an entry recorded before the setting existed (its default keeps the old
/// behaviour, as every new setting's must) still matches: resuming a run with a newer binary
/// does not rerun a finished stage, and with it a stage whose checkpoint retention deleted.
/// A default that changes still reruns it: the entry recorded the old value.
fn same_identity(specs: &[ParamSpec], a: &Params, b: &Params) -> bool {
    let identity = |p: &Params| -> Params {
        p.iter()
            .filter(|(k, v)| {
                !specs
                    .iter()
                    .any(|s| s.key == k.as_str() && (!s.identity || s.default == **v))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    identity(a) == identity(b)
}

impl Prepared<'_> {
    /// The cheap checks first (status, params, seed, input hashes), output hashes last.
    fn is_up_to_date(&self, manifest: &Manifest, run_dir: &Path, shard: ShardSpec) -> Result<bool> {
        let Some(entry) =
            manifest.latest_done_part(self.stage.name(), self.round, self.at.step, shard)
        else {
            return Ok(false);
        };
        let same_inputs = entry.inputs.len() == self.inputs.len()
            && entry
                .inputs
                .iter()
                .zip(&self.inputs)
                .all(|(a, b)| a.path == b.path && a.sha256 == b.sha256);
        Ok(entry.asl_version == ASL_VERSION
            && entry.stage_version == self.stage.version()
            && entry.steps == self.at.steps
            && same_identity(&self.stage.params(), &entry.params, &self.params)
            && entry.seed == self.seed
            && same_inputs
            && outputs_intact(run_dir, &entry.outputs, &manifest.pruned))
    }

    fn execute(&self, run_dir: &Path, shard: ShardSpec) -> Result<(Entry, String)> {
        let name = self.stage.name();
        if let Some(first) = self.pruned_inputs.first() {
            return Err(Error::stage(
                name,
                format!(
                    "needs {first}, which checkpoint retention deleted (apply.keep_checkpoints); raise keep_checkpoints, or rerun from a round whose checkpoint is kept"
                ),
            ));
        }
        let out_dir = self.at.dir(stage_dir(run_dir, self.round, name));
        std::fs::create_dir_all(&out_dir).at(&out_dir)?;
        remove_stale_tmp(&out_dir)?;
        let mut entry = Entry {
            stage: name.to_string(),
            round: self.round,
            step: self.at.step,
            steps: self.at.steps,
            shard,
            status: Status::Running,
            params: self.params.clone(),
            seed: self.seed,
            inputs: self.inputs.clone(),
            outputs: Vec::new(),
            asl_version: ASL_VERSION.to_string(),
            stage_version: self.stage.version(),
            started_at: now_rfc3339(),
            finished_at: None,
            wall_s: None,
            error: None,
            slurm_job: crate::manifest::slurm_job_from_env(),
        };
        let index = Manifest::update(run_dir, |m| {
            m.entries.push(entry.clone());
            m.entries.len() - 1
        })?;
        let started = Instant::now();
        let ctx = StageContext {
            stage: self.stage.name(),
            run_dir,
            round: self.round,
            step: self.at.step,
            steps: self.at.steps,
            params: &self.params,
            seed: self.seed,
            shard,
            inputs: &self.upstream,
            out_dir,
        };
        let name = self.stage.name();
        let run = crate::error::catch_panic(
            || self.stage.run(&ctx),
            |what| Error::stage(name, format!("internal error: {what}")),
        );
        let result = run.and_then(|out| {
            let records = out
                .files
                .iter()
                .map(|f| file_record(run_dir, f))
                .collect::<Result<Vec<_>>>()?;
            Ok((records, out.summary))
        });
        // Freed pages stay with the process for the next stage (a round's stages reuse the same
        // sizes: every train step and apply of `asl run` is a stage), unless it holds more than
        // half the machine's memory.
        crate::memory::release_free_memory_if_large();
        entry.finished_at = Some(now_rfc3339());
        entry.wall_s = Some((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
        let outcome = match result {
            Ok((outputs, summary)) => {
                entry.status = Status::Done;
                entry.outputs = outputs;
                Ok(summary)
            }
            Err(e) => {
                entry.status = Status::Failed;
                entry.error = Some(e.to_string());
                Err(e)
            }
        };
        let recorded = entry.clone();
        Manifest::update(run_dir, move |m| m.entries[index] = recorded)?;
        if outcome.is_ok()
            && let Err(e) = crate::tensorboard::write_round(run_dir, self.round)
        {
            // The figures are a view of the shards: a failure to write them loses nothing.
            eprintln!("warning: TensorBoard scalars of round {}: {e}", self.round);
        }
        outcome.map(|summary| (entry, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Settings of the runner (which rounds eval scores, how many checkpoints are kept) leave a
    /// finished stage run up to date; a setting of its output does not.
    #[test]
    fn runner_settings_are_outside_a_stage_runs_identity() {
        let resolve = |stage: &dyn Stage, sets: &[&str]| {
            let sets: Vec<_> = sets.iter().map(|s| s.parse().unwrap()).collect();
            crate::params::resolve(stage.name(), &stage.params(), None, &sets).unwrap()
        };
        let eval = &crate::stages::eval::EvalStage;
        let specs = eval.params();
        let base = resolve(eval, &[]);
        assert!(same_identity(
            &specs,
            &base,
            &resolve(eval, &["eval.every=5"])
        ));
        assert!(!same_identity(
            &specs,
            &base,
            &resolve(eval, &["eval.questions=7"])
        ));
        let apply = &crate::stages::apply::ApplyStage;
        assert!(same_identity(
            &apply.params(),
            &resolve(apply, &[]),
            &resolve(apply, &["apply.keep_checkpoints=9"])
        ));
    }

    /// An entry recorded before a setting existed lacks its key: the setting at its default
    /// matches it (the judge's `samples` arrived after bl20's rounds were recorded); set to
    /// anything else, or a recorded value that is not today's default, it does not.
    #[test]
    fn a_setting_newer_than_the_entry_matches_it_at_its_default() {
        let judge = &crate::stages::judge::JudgeStage;
        let specs = judge.params();
        let resolve = |sets: &[&str]| {
            let sets: Vec<_> = sets.iter().map(|s| s.parse().unwrap()).collect();
            crate::params::resolve("judge", &specs, None, &sets).unwrap()
        };
        let now = resolve(&[]);
        let mut recorded = now.clone();
        assert!(recorded.remove("samples").is_some());
        assert!(same_identity(&specs, &recorded, &now));
        assert!(!same_identity(
            &specs,
            &recorded,
            &resolve(&["judge.samples=4"])
        ));
        let mut other_default = now.clone();
        other_default.insert("samples".into(), 2.into());
        assert!(!same_identity(&specs, &other_default, &now));
    }

    /// A child's tables merge into its parent's key by key (the child wins, arrays are
    /// replaced whole), through two levels; name and description stay the child's own.
    #[test]
    fn extends_deep_merges_and_the_child_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "name = \"base\"\ndescription = \"the base\"\nseed = 3\nrounds = 2\nsetup = [\"corpus\", \"qa\", \"index\"]\n[params.corpus]\nsource = \"builtin\"\nmax_docs = 50\n[params.qa]\nsource = \"corpus\"\n",
        );
        write(
            dir.path(),
            "mid.toml",
            "extends = \"base.toml\"\nrounds = 5\n[params.corpus]\nmax_docs = 20\n",
        );
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"mid.toml\"\nsetup = [\"corpus\", \"qa\"]\n[params.qa]\nmax_rows = 9\n",
        );
        let p = Pipeline::load(&child).unwrap();
        assert_eq!(p.name, "child");
        assert_eq!(p.description, None);
        assert_eq!((p.seed, p.rounds), (3, 5));
        assert_eq!(p.setup, ["corpus", "qa"]);
        assert_eq!(p.params["corpus"]["max_docs"], 20);
        assert_eq!(p.params["corpus"]["source"], "builtin");
        assert_eq!(p.params["qa"]["source"], "corpus");
        assert_eq!(p.params["qa"]["max_rows"], 9);
        // The parent's params of a stage the child does not run are dropped; the child's own
        // params of such a stage are refused.
        let only_corpus = write(
            dir.path(),
            "only-corpus.toml",
            "extends = \"mid.toml\"\nsetup = [\"corpus\"]\n",
        );
        let p = Pipeline::load(&only_corpus).unwrap();
        assert!(!p.params.contains_key("qa"));
        let typo = write(
            dir.path(),
            "typo.toml",
            "extends = \"mid.toml\"\nsetup = [\"corpus\"]\n[params.judge]\nx = 1\n",
        );
        let e = Pipeline::load(&typo).unwrap_err().to_string();
        assert!(e.contains("params.judge"), "{e}");
    }

    #[test]
    fn extends_refuses_cycles_and_missing_parents_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        let b = write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
        let e = Pipeline::load(&b).unwrap_err().to_string();
        assert!(
            e.contains("cycle") && e.contains("a.toml") && !e.contains('\n'),
            "{e}"
        );
        let c = write(dir.path(), "c.toml", "extends = \"nope.toml\"\n");
        let e = Pipeline::load(&c).unwrap_err().to_string();
        assert!(e.contains("nope.toml") && e.contains("no such file"), "{e}");
        let d = write(dir.path(), "d.toml", "extends = 3\n");
        let e = Pipeline::load(&d).unwrap_err().to_string();
        assert!(e.contains("extends") && e.contains("string"), "{e}");
    }

    /// The shipped ablations are the default plus what they ablate, nothing else (the frozen
    /// judge: no GRM loss, and the warm-up's checkpoint for the GRM's stages; the rule-labelled
    /// GRM: SubEM labels and no generator rows).
    #[test]
    fn shipped_ablations_differ_from_the_default_only_in_what_they_ablate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let base = Pipeline::load(&dir.join("default.toml")).unwrap();
        let frozen = Pipeline::load(&dir.join("asl-frozen-grm.toml")).unwrap();
        let inject = Pipeline::load(&dir.join("asl-real-inject.toml")).unwrap();
        let rule_grm = Pipeline::load(&dir.join("asl-rule-grm.toml")).unwrap();
        for p in [&frozen, &inject, &rule_grm] {
            assert_eq!(
                (p.seed, p.rounds, &p.setup, &p.round),
                (base.seed, base.rounds, &base.setup, &base.round)
            );
        }
        let mut expected = base.params.clone();
        expected
            .entry("reward")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .unwrap()
            .insert("train_roles".into(), "policy,generator".into());
        for stage in ["selfcheck", "judge"] {
            expected[stage]
                .as_object_mut()
                .unwrap()
                .insert("judge_model".into(), "start".into());
        }
        assert_eq!(frozen.params, expected);
        let mut expected = base.params.clone();
        let judge = expected["judge"].as_object_mut().unwrap();
        judge.insert("real_items".into(), 4.into());
        judge.insert("real_from_round".into(), 2.into());
        expected["eval"]
            .as_object_mut()
            .unwrap()
            .insert("verification".into(), 6.into());
        assert_eq!(inject.params, expected);
        let mut expected = base.params.clone();
        let reward = expected
            .entry("reward")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .unwrap();
        reward.insert("train_roles".into(), "policy,grm".into());
        reward.insert("grm_labels".into(), "rule".into());
        reward.insert("grm_balance".into(), "round".into());
        assert_eq!(rule_grm.params, expected);
    }

    /// The shipped baselines extend the default: the same seed, setup (one shared warm-up
    /// checkpoint), optimiser and eval, so a comparison differs only in tasks, rollouts and reward.
    #[test]
    fn shipped_baselines_share_the_defaults_setup_training_and_eval() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let base = Pipeline::load(&dir.join("default.toml")).unwrap();
        for name in ["search-r1", "r-zero", "absolute-zero"] {
            let p = Pipeline::load(&dir.join(format!("{name}.toml"))).unwrap();
            p.validate(&[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, name);
            assert_eq!(
                (p.seed, p.rounds, &p.setup),
                (base.seed, base.rounds, &base.setup)
            );
            for stage in ["corpus", "qa", "init", "warmup", "apply", "eval"] {
                assert_eq!(
                    p.params.get(stage),
                    base.params.get(stage),
                    "{name}: {stage}"
                );
            }
            let mut train = base.params["train"].clone();
            if name == "search-r1" {
                train["kl_beta"] = 0.001.into();
            }
            assert_eq!(p.params["train"], train, "{name}: train");
            assert!(!p.params.contains_key("judge") && !p.params.contains_key("selfcheck"));
        }
    }
}
