//! What several stages share: reading a round's tasks and trajectories, the trainer's view of a
//! trajectory, the answer-leak check, the verification target's name and the dev half each GRM
//! verification use reads. Stages import these
//! from here, never from a sibling stage.

use std::path::PathBuf;

use super::{StageContext, Upstream};
use crate::error::Result;
use crate::seed::stable_u64;
use crate::shards::read_kind;
use crate::shards::rows::{QaRow, TaskRow, TrajectoryRow};

/// Target name of the labelled verification items (`judge` writes them, `reward` scores them).
pub(crate) const VERIFICATION: &str = "verification";

/// Which half of dev a labelled question serves for the GRM's verification pairs: `true` for
/// the pairs `judge` injects into training (`judge.real_items`), `false` for those `eval`
/// scores (`eval.verification`, `eval.near_misses`), so a run that trains its GRM on real data
/// is never scored on the questions it trained on. Questions of one article (`source_doc_id`,
/// else the question's id) stay in one half.
pub(crate) fn dev_trains_grm(q: &QaRow) -> bool {
    let key = q.source_doc_id.as_deref().unwrap_or(&q.id);
    // Not FNV-1a's low bit: it is the parity of the key's odd bytes, which `split_for` (the same
    // hash of the same key) already fixed for every dev question.
    stable_u64(&["asl-dev-half-v1", key]).is_multiple_of(2)
}

/// Target name of the self-judgments (the generator's own answer).
pub(crate) const SELF_CHECK_TARGET: &str = "generator";

/// The trajectories among a stage's outputs.
pub fn trajectories(files: &[PathBuf]) -> Result<Vec<TrajectoryRow>> {
    read_kind(files)
}

/// The tasks among a stage's outputs.
pub fn tasks(files: &[PathBuf]) -> Result<Vec<TaskRow>> {
    read_kind(files)
}

/// The tasks a round works on: the self-check's when the round has one (`selfcheck?` among
/// `inputs`), else those `generate` wrote.
pub fn round_tasks(ctx: &StageContext) -> Result<Vec<TaskRow>> {
    let checked = ctx.input_files(Upstream::optional("selfcheck"))?;
    if checked.is_empty() {
        tasks(ctx.input_files(Upstream::needs("generate"))?)
    } else {
        tasks(checked)
    }
}

/// A trajectory as the trainer takes it: prompt ids, completion ids, completion loss mask.
pub(crate) fn training_sequence(t: &TrajectoryRow) -> (Vec<u32>, Vec<u32>, Vec<u8>) {
    (
        t.prompt_ids.clone(),
        t.completion_ids.clone(),
        t.loss_mask.iter().map(|&m| u8::from(m)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, article: Option<&str>) -> QaRow {
        QaRow {
            id: id.into(),
            question: String::new(),
            answers: vec![],
            split: "dev".into(),
            source: "wiki".into(),
            source_doc_id: article.map(str::to_string),
        }
    }

    /// Dev splits about in half, by article, and the assignment is pinned: moving a question
    /// between halves would let a run train its GRM on items an older eval scored. The keys are
    /// ones `split_for` puts in dev, as a run's dev questions are.
    #[test]
    fn dev_halves_are_even_keep_articles_together_and_are_pinned() {
        let dev: Vec<String> = (0..20_000)
            .map(|i| format!("Article {i}"))
            .filter(|k| crate::seed::split_for(k) == "dev")
            .collect();
        let training = dev
            .iter()
            .filter(|k| dev_trains_grm(&row("q", Some(k.as_str()))))
            .count();
        assert!(dev.len() > 1_500, "{}", dev.len());
        assert!(
            (dev.len() * 2 / 5..dev.len() * 3 / 5).contains(&training),
            "{training} of {}",
            dev.len()
        );
        let first = dev_trains_grm(&row("a", Some("Iliad")));
        assert!((0..50).all(|i| dev_trains_grm(&row(&format!("q{i}"), Some("Iliad"))) == first));
        // Without an article, the question's id is the key.
        assert_eq!(dev_trains_grm(&row("Iliad", None)), first);
        let pinned: Vec<bool> = (0..8)
            .map(|i| dev_trains_grm(&row(&format!("q{i}"), None)))
            .collect();
        // Computed independently (`stable_u64`'s SHA-256 framing in Python; even = training).
        assert_eq!(pinned, [false, true, false, true, true, false, true, true]);
    }
}
