//! Synthetic runs for testing and benchmarking the audit: shards of every audited kind with
//! known statistics, written in bounded batches so a million-trajectory run is cheap to make.
//! `Pattern::FrozenJudge` plants the seed paper's failure: the judge passes more and more wrong
//! answers each round while the held-out EM stays flat; `Pattern::Healthy` improves both.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::shards::rows::{
    EvalRow, JudgmentRow, RewardRow, ShardRow, TaskRow, TrajectoryRow, to_batch,
};
use crate::shards::{ShardWriter, shard_path, stage_dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Policy accuracy and the judge's pass rate rise together; held-out EM rises.
    Healthy,
    /// The judge passes a growing share of wrong answers; accuracy and EM stay flat.
    FrozenJudge,
}

#[derive(Debug, Clone)]
pub struct SyntheticRun {
    pub rounds: u32,
    pub tasks_per_round: usize,
    pub attempts: u32,
    /// Completion tokens per trajectory (the token lists dominate a real shard's size).
    pub tokens: usize,
    pub pattern: Pattern,
    pub seed: u64,
}

const BATCH: usize = 8192;

/// Buffers rows and writes them to one shard in batches.
struct Sink<R: ShardRow> {
    writer: ShardWriter,
    rows: Vec<R>,
}

impl<R: ShardRow> Sink<R> {
    fn new(run_dir: &Path, round: u32, stage: &str) -> Result<Self> {
        let dir = stage_dir(run_dir, round, stage);
        std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
        Ok(Sink {
            writer: ShardWriter::create(&shard_path(&dir, R::KIND, 0), R::KIND)?,
            rows: Vec::with_capacity(BATCH),
        })
    }

    fn push(&mut self, row: R) -> Result<()> {
        self.rows.push(row);
        if self.rows.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.rows.is_empty() {
            self.writer.write(&to_batch(&self.rows))?;
            self.rows.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer.finish()?;
        Ok(())
    }
}

impl SyntheticRun {
    /// Policy accuracy, chance the judge passes a wrong answer, held-out EM, for a round.
    fn rates(&self, round: u32) -> (f64, f64, f64) {
        let step = f64::from(round.saturating_sub(1));
        match self.pattern {
            Pattern::Healthy => (0.3 + 0.1 * step, 0.05, 0.2 + 0.08 * step),
            Pattern::FrozenJudge => (0.3, (0.05 + 0.25 * step).min(0.95), 0.2),
        }
    }

    fn trajectory(&self, id: String, task_id: &str, role: &str, attempt: u32) -> TrajectoryRow {
        TrajectoryRow {
            trajectory_id: id,
            task_id: task_id.to_string(),
            role: role.to_string(),
            attempt,
            seed: u64::from(attempt),
            prompt_ids: vec![1; 16],
            completion_ids: vec![2; self.tokens],
            loss_mask: vec![true; self.tokens],
            sampling_logprobs: vec![-1.0; self.tokens],
            behavior_logprobs: vec![-1.0; self.tokens],
            temperature: 1.0,
            text: String::new(),
            turns: 1,
            searches: 1,
            answer: None,
            parsed: true,
            parse_error: None,
            finish_reason: "stop".into(),
        }
    }

    /// Writes the run's shards under `run_dir` (tasks, trajectories, judgments, rewards, eval
    /// per round) and returns the number of trajectories written.
    pub fn write(&self, run_dir: &Path) -> Result<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut trajectories = 0u64;
        for round in 1..=self.rounds {
            let (accuracy, false_pass, em) = self.rates(round);
            let mut tasks = Sink::<TaskRow>::new(run_dir, round, "generate")?;
            let mut generated = Sink::<TrajectoryRow>::new(run_dir, round, "rollout")?;
            let mut judgments = Sink::<JudgmentRow>::new(run_dir, round, "judge")?;
            let mut rewards = Sink::<RewardRow>::new(run_dir, round, "reward")?;
            for t in 0..self.tasks_per_round {
                let task_id = format!("r{round}-t{t}");
                let answer = format!("Entity {t}");
                tasks.push(TaskRow {
                    task_id: task_id.clone(),
                    round,
                    question: format!("Which place is linked to item {t} of round {round}?"),
                    answer: answer.clone(),
                    answer_aliases: Vec::new(),
                    template: if round == 1 { "seed" } else { "harder" }.into(),
                    parent_task_id: None,
                    topic: None,
                    generator_trajectory_id: Some(format!("{task_id}-g")),
                    valid: t % 10 != 9,
                    invalid_reason: (t % 10 == 9).then(|| "no self-judgment passed".into()),
                })?;
                let mut g = self.trajectory(format!("{task_id}-g"), &task_id, "generator", 0);
                g.answer = Some(answer.clone());
                generated.push(g)?;
                trajectories += 1;
                let mut passes = 0u32;
                for a in 0..self.attempts {
                    let id = format!("{task_id}-p{a}");
                    let right = rng.random_bool(accuracy);
                    let candidate = if right {
                        answer.clone()
                    } else {
                        format!("Wrong {a}")
                    };
                    let pass = right || rng.random_bool(false_pass);
                    passes += u32::from(pass);
                    let mut p = self.trajectory(id.clone(), &task_id, "policy", a);
                    p.answer = Some(candidate.clone());
                    generated.push(p)?;
                    trajectories += 1;
                    judgments.push(JudgmentRow {
                        judgment_id: format!("{id}-j"),
                        task_id: task_id.clone(),
                        target_trajectory_id: id.clone(),
                        target: "policy".into(),
                        sample: 0,
                        question: String::new(),
                        reference_answer: answer.clone(),
                        candidate_answer: Some(candidate),
                        verdict: if pass { "correct" } else { "wrong" }.into(),
                        parsed: true,
                        parse_error: None,
                        judge_trajectory_id: format!("{id}-j"),
                    })?;
                    let reward = f32::from(u8::from(pass));
                    rewards.push(RewardRow {
                        trajectory_id: id,
                        task_id: task_id.clone(),
                        role: "policy".into(),
                        group_id: task_id.clone(),
                        scheme: "grm".into(),
                        reward,
                        format_bonus: 0.0,
                        total: reward,
                        advantage: 0.0,
                        label: None,
                        train: true,
                    })?;
                }
                let p = f64::from(passes) / f64::from(self.attempts.max(1));
                let entropy = if p > 0.0 && p < 1.0 {
                    -(p * p.ln() + (1.0 - p) * (1.0 - p).ln())
                } else {
                    0.0
                };
                rewards.push(RewardRow {
                    trajectory_id: format!("{task_id}-g"),
                    task_id: task_id.clone(),
                    role: "generator".into(),
                    group_id: format!("generator-{round}"),
                    scheme: "asl-entropy".into(),
                    reward: entropy as f32,
                    format_bonus: 0.0,
                    total: entropy as f32,
                    advantage: 0.0,
                    label: Some(
                        if t % 10 == 9 {
                            "invalid: no self-judgment passed"
                        } else {
                            "valid"
                        }
                        .into(),
                    ),
                    train: true,
                })?;
            }
            tasks.finish()?;
            generated.finish()?;
            judgments.finish()?;
            rewards.finish()?;
            let mut eval = Sink::<EvalRow>::new(run_dir, round, "eval")?;
            for (role, metric, value) in [("policy", "em", em), ("grm", "accuracy", 0.7)] {
                eval.push(EvalRow {
                    round,
                    checkpoint: format!("round-{round:03}/apply/model"),
                    dataset: "corpus-test".into(),
                    role: role.into(),
                    metric: metric.into(),
                    value,
                    count: 100,
                })?;
            }
            eval.finish()?;
        }
        Ok(trajectories)
    }
}
