//! Paired comparison of two evals (`asl eval compare`): two rounds of a run, or two
//! `asl eval --model … --out DIR` folders, item by item. For every (role, dataset) the two
//! evals share, the items both scored are paired by id; the table gives each side's mean, the
//! difference B − A with a percentile-bootstrap 95 % interval over items, and McNemar's exact
//! two-sided p on the discordant pairs.
//!
//! An item's score is the mean of its samples (`em` for the policy, `correct` for the GRM), so
//! with `eval.samples = n` the difference is in mean@n. McNemar's test needs one right/wrong
//! per item: it uses each item's first sample (sample 0, the greedy answer with the default
//! temperature 0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::shards::rows::EvalItemRow;
use crate::shards::{ShardKind, read_rows, shards_of};
use crate::stages::qa::{asks_for_a_fact, family_of};

/// Bootstrap resamples for the interval.
pub(crate) const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// The bootstrap's fixed seed, so the same two evals always print the same interval.
const BOOTSTRAP_SEED: u64 = 0x5eed_c0a1_0000_0001;

/// One (role, dataset) compared.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Paired {
    pub role: String,
    pub dataset: String,
    /// Items scored by both evals.
    pub n: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// `mean_b − mean_a`.
    pub delta: f64,
    /// Percentile-bootstrap 95 % interval of `delta`.
    pub ci: (f64, f64),
    /// Items right in A's first sample and wrong in B's, and the reverse.
    pub only_a: u64,
    pub only_b: u64,
    /// McNemar's exact two-sided p-value on `only_a` vs `only_b`.
    pub p_value: f64,
}

/// Where the eval items of one side come from.
#[derive(Debug, Clone)]
pub enum Side<'a> {
    Round { run_dir: &'a Path, round: u32 },
    Folder(&'a Path),
}

impl Side<'_> {
    pub fn label(&self) -> String {
        match self {
            Side::Round { round, .. } => format!("round {round}"),
            Side::Folder(dir) => dir.display().to_string(),
        }
    }

    /// The `eval_items` shards of this side.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let files = match self {
            Side::Round { run_dir, round } => {
                let manifest = Manifest::load(run_dir)?;
                let outputs = manifest
                    .done_step_outputs("eval", *round, 0)
                    .ok_or_else(|| {
                        Error::stage(
                            "eval",
                            format!("{}: round {round} has no finished eval", run_dir.display()),
                        )
                    })?;
                let outputs: Vec<PathBuf> = outputs
                    .iter()
                    .map(|f| crate::manifest::resolve_path(run_dir, &f.path))
                    .collect();
                shards_of(&outputs, ShardKind::EvalItems)
            }
            Side::Folder(dir) => {
                let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
                let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                files.sort();
                shards_of(&files, ShardKind::EvalItems)
            }
        };
        if files.is_empty() {
            return Err(Error::stage(
                "eval",
                format!(
                    "{}: no eval_items shards (evals from before per-item rows cannot be paired; rerun eval)",
                    self.label()
                ),
            ));
        }
        Ok(files)
    }
}

/// Compares the items of `a` and `b`.
pub fn compare(a: &Side, b: &Side) -> Result<Vec<Paired>> {
    let rows_a: Vec<EvalItemRow> = read_rows(&a.files()?)?;
    let rows_b: Vec<EvalItemRow> = read_rows(&b.files()?)?;
    let out = pair_up(&rows_a, &rows_b);
    if out.is_empty() {
        return Err(Error::stage(
            "eval",
            format!(
                "{} and {} share no scored items (different questions or datasets)",
                a.label(),
                b.label()
            ),
        ));
    }
    Ok(out)
}

/// One item of one eval: its mean score over its samples and whether its first sample is right.
#[derive(Debug, Clone, Copy, Default)]
struct ItemScore {
    mean: f64,
    first_right: bool,
}

/// The items of one (role, dataset), by id.
type Group = BTreeMap<String, ItemScore>;

/// The subset of a corpus-built dataset whose questions ask for a fact in an article's text
/// (`qa::asks_for_a_fact`), scored again as its own row: most corpus-built questions ask for an
/// article's subject, and the policy can score well on them while answering no fact.
fn fact_subset(r: &EvalItemRow) -> Option<String> {
    let family = family_of(&r.item_id)?;
    (r.role == "policy" && asks_for_a_fact(family))
        .then(|| format!("{}, fact questions", r.dataset))
}

fn by_group(rows: &[EvalItemRow]) -> BTreeMap<(String, String), Group> {
    // Sums first (in `mean`) with each item's sample count beside them, then the means.
    let mut out: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut samples: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for r in rows {
        let score = if r.role == "policy" {
            r.em
        } else {
            f64::from(u8::from(r.correct))
        };
        for dataset in std::iter::once(r.dataset.clone()).chain(fact_subset(r)) {
            let item = out
                .entry((r.role.clone(), dataset.clone()))
                .or_default()
                .entry(r.item_id.clone())
                .or_default();
            item.mean += score;
            if r.sample == 0 {
                item.first_right = r.correct;
            }
            *samples
                .entry((r.role.clone(), dataset, r.item_id.clone()))
                .or_default() += 1;
        }
    }
    for ((role, dataset), group) in out.iter_mut() {
        for (id, item) in group.iter_mut() {
            let n = samples[&(role.clone(), dataset.clone(), id.clone())];
            item.mean /= f64::from(n);
        }
    }
    out
}

/// Pairs the items of two evals by (role, dataset, item id) and summarises each group.
pub(crate) fn pair_up(a: &[EvalItemRow], b: &[EvalItemRow]) -> Vec<Paired> {
    let (ga, gb) = (by_group(a), by_group(b));
    let mut out = Vec::new();
    for ((role, dataset), items_a) in &ga {
        let Some(items_b) = gb.get(&(role.clone(), dataset.clone())) else {
            continue;
        };
        let pairs: Vec<(ItemScore, ItemScore)> = items_a
            .iter()
            .filter_map(|(id, sa)| items_b.get(id).map(|sb| (*sa, *sb)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let n = pairs.len();
        let mean_a = pairs.iter().map(|p| p.0.mean).sum::<f64>() / n as f64;
        let mean_b = pairs.iter().map(|p| p.1.mean).sum::<f64>() / n as f64;
        let diffs: Vec<f64> = pairs.iter().map(|p| p.1.mean - p.0.mean).collect();
        let only_a = pairs
            .iter()
            .filter(|p| p.0.first_right && !p.1.first_right)
            .count() as u64;
        let only_b = pairs
            .iter()
            .filter(|p| !p.0.first_right && p.1.first_right)
            .count() as u64;
        out.push(Paired {
            role: role.clone(),
            dataset: dataset.clone(),
            n,
            mean_a,
            mean_b,
            delta: mean_b - mean_a,
            ci: bootstrap_mean_ci(&diffs, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
            only_a,
            only_b,
            p_value: mcnemar_exact(only_a, only_b),
        });
    }
    out
}

/// Percentile-bootstrap 95 % interval of the mean of `values`: `resamples` means of `n` draws
/// with replacement, seeded, cut at 2.5 % and 97.5 % (linear interpolation between order
/// statistics, as numpy's default percentile).
pub(crate) fn bootstrap_mean_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    let n = values.len();
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (percentile(&means, 2.5), percentile(&means, 97.5))
}

/// The `q`-th percentile of sorted `xs`, interpolating linearly between order statistics.
fn percentile(xs: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (xs.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
}

/// McNemar's exact test, two-sided: with `b` and `c` discordant pairs, the probability under
/// Binomial(b + c, ½) of a split at least as uneven, `min(1, 2 · P(X ≤ min(b, c)))`; 1 when
/// there are no discordant pairs.
pub(crate) fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // log C(n, i) − n·ln 2, built up term by term so large n neither overflows nor underflows
    // before the sum.
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut log_c = 0.0f64;
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            log_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (log_c - ln2n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// The comparison as a table.
pub fn table(a: &Side, b: &Side, rows: &[Paired]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "role".to_string(),
        "dataset".to_string(),
        "n".to_string(),
        format!("A: {}", a.label()),
        format!("B: {}", b.label()),
        "B − A".to_string(),
        "95% CI".to_string(),
        "A only / B only".to_string(),
        "McNemar p".to_string(),
    ]);
    for r in rows {
        let metric = if r.role == "policy" { "EM" } else { "accuracy" };
        t.add_row(vec![
            format!("{} {metric}", r.role),
            r.dataset.clone(),
            r.n.to_string(),
            format!("{:.3}", r.mean_a),
            format!("{:.3}", r.mean_b),
            format!("{:+.3}", r.delta),
            format!("[{:+.3}, {:+.3}]", r.ci.0, r.ci.1),
            format!("{} / {}", r.only_a, r.only_b),
            format!("{:.4}", r.p_value),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values: b = 1, c = 9 gives 2·(1 + 10)/1024 = 0.021484375; b = c gives 1; b = 0,
    /// c = 6 gives 2/64.
    #[test]
    fn mcnemar_matches_hand_computed_binomial_tails() {
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_exact(0, 6) - 2.0 / 64.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large counts stay finite and in (0, 1].
        let p = mcnemar_exact(400, 520);
        assert!(p > 0.0 && p < 0.001, "{p}");
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_deterministic() {
        // 30 items improved, 10 got worse, 60 unchanged: mean +0.2.
        let mut d = vec![1.0; 30];
        d.extend(vec![-1.0; 10]);
        d.extend(vec![0.0; 60]);
        let (lo, hi) = bootstrap_mean_ci(&d, 5000, 7);
        assert!(lo < 0.2 && 0.2 < hi, "({lo}, {hi})");
        // The normal approximation: sd of the mean = sqrt((0.4 − 0.04)/100) = 0.06, so the
        // interval is about ±0.118.
        assert!((hi - lo - 2.0 * 1.96 * 0.06).abs() < 0.03, "({lo}, {hi})");
        assert_eq!((lo, hi), bootstrap_mean_ci(&d, 5000, 7));
        // No spread, no width.
        assert_eq!(bootstrap_mean_ci(&[0.5; 8], 100, 1), (0.5, 0.5));
    }

    fn item(role: &str, id: &str, sample: u32, correct: bool) -> EvalItemRow {
        let s = f64::from(u8::from(correct));
        EvalItemRow {
            round: 0,
            checkpoint: String::new(),
            dataset: "qa:test".into(),
            role: role.into(),
            item_id: id.into(),
            sample,
            seed: 0,
            question: String::new(),
            references: vec![],
            candidate: None,
            prediction: None,
            label: None,
            parsed: true,
            correct,
            em: s,
            f1: s,
            subem: s,
            searches: 0,
            turns: 1,
            truncated: false,
        }
    }

    /// 10 paired questions: A right on 1 and 2, B right on 2..=9; an item only A scored is left
    /// out; the GRM group is compared on its own.
    #[test]
    fn pairs_items_by_id_and_counts_discordant_pairs() {
        let mut a: Vec<EvalItemRow> = (0..10)
            .map(|i| item("policy", &format!("q{i}"), 0, i == 1 || i == 2))
            .collect();
        a.push(item("policy", "only-in-a", 0, true));
        a.push(item("grm", "q0", 0, true));
        let mut b: Vec<EvalItemRow> = (0..10)
            .map(|i| item("policy", &format!("q{i}"), 0, (2..=9).contains(&i)))
            .collect();
        b.push(item("grm", "q0", 0, false));
        let rows = pair_up(&a, &b);
        assert_eq!(rows.len(), 2);
        let p = rows.iter().find(|r| r.role == "policy").unwrap();
        assert_eq!(p.n, 10);
        assert!((p.mean_a - 0.2).abs() < 1e-12 && (p.mean_b - 0.8).abs() < 1e-12);
        assert_eq!((p.only_a, p.only_b), (1, 7));
        assert!((p.p_value - mcnemar_exact(1, 7)).abs() < 1e-15);
        assert!(p.ci.0 > 0.0, "{:?}", p.ci);
        let g = rows.iter().find(|r| r.role == "grm").unwrap();
        assert_eq!((g.n, g.only_a, g.only_b), (1, 1, 0));
    }

    /// Corpus-built questions that ask for a fact are also compared on their own; title
    /// questions, other datasets' items and the GRM's are not.
    #[test]
    fn fact_questions_get_a_row_of_their_own() {
        let ids = [
            "wiki-def-01",
            "wiki-directed-02",
            "wiki-capital-03",
            "fanoutqa-4",
        ];
        let a: Vec<EvalItemRow> = ids.iter().map(|id| item("policy", id, 0, false)).collect();
        let mut b: Vec<EvalItemRow> = ids.iter().map(|id| item("policy", id, 0, true)).collect();
        b.push(item("grm", "wiki-directed-02", 0, true));
        let rows = pair_up(&a, &b);
        let facts: Vec<&Paired> = rows
            .iter()
            .filter(|r| r.dataset.ends_with("fact questions"))
            .collect();
        assert_eq!(facts.len(), 1);
        assert_eq!(facts[0].dataset, "qa:test, fact questions");
        assert_eq!((facts[0].n, facts[0].only_b), (2, 2));
        let all = rows.iter().find(|r| r.dataset == "qa:test").unwrap();
        assert_eq!(all.n, 4);
    }

    /// With several samples an item scores its mean; McNemar reads sample 0.
    #[test]
    fn samples_average_into_the_item_score() {
        let a = vec![item("policy", "q", 0, false), item("policy", "q", 1, true)];
        let b = vec![item("policy", "q", 0, true), item("policy", "q", 1, true)];
        let rows = pair_up(&a, &b);
        assert_eq!(rows[0].mean_a, 0.5);
        assert_eq!(rows[0].mean_b, 1.0);
        assert_eq!((rows[0].only_a, rows[0].only_b), (0, 1));
    }
}
