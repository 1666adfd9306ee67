//! Rewards of the three roles (SPEC §2, §5): the ASL generator reward (entropy of the verdicts),
//! R-Zero's uncertainty with its BLEU-cluster repetition penalty, Absolute Zero's learnability,
//! the rule reward, the format bonus, the GRM's labels and reward, and the generator's validity
//! gate.

/// A generator reward scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorScheme {
    /// ASL: entropy of the verdict distribution, −Σ p ln p; ln 2 at a 50% solve rate.
    Entropy,
    /// R-Zero: 1 − 2|p − ½|, minus a repetition penalty.
    Uncertainty,
    /// Absolute Zero: 1 − p when 0 < p < 1, else 0.
    Learnability,
}

impl std::str::FromStr for GeneratorScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "entropy" => Ok(Self::Entropy),
            "uncertainty" => Ok(Self::Uncertainty),
            "learnability" => Ok(Self::Learnability),
            _ => Err(format!(
                "unknown generator reward {s:?} (entropy, uncertainty, learnability)"
            )),
        }
    }
}

/// The generator's reward from the share `p` of attempts judged correct.
pub fn generator_reward(scheme: GeneratorScheme, p: f64) -> f64 {
    match scheme {
        GeneratorScheme::Entropy => {
            let h = |x: f64| if x > 0.0 { -x * x.ln() } else { 0.0 };
            h(p) + h(1.0 - p)
        }
        GeneratorScheme::Uncertainty => 1.0 - 2.0 * (p - 0.5).abs(),
        GeneratorScheme::Learnability => {
            if p > 0.0 && p < 1.0 {
                1.0 - p
            } else {
                0.0
            }
        }
    }
}

/// Why a generated task is invalid, if it is (SPEC §2: validity): [`format_validity`], then at
/// least `v_min` of the GRM's verdicts on the generator's own answer saying correct
/// (`self_correct`). The self-check with its judgment count is [`self_check`].
pub fn validity(
    question: &str,
    answer: Option<&str>,
    self_correct: usize,
    v_min: usize,
) -> Option<String> {
    format_validity(question, answer).or_else(|| {
        (self_correct < v_min).then(|| {
            format!(
                "the judge accepted the generator's own answer {self_correct} times, fewer than {v_min}"
            )
        })
    })
}

/// The checks on the text alone: a question of at least 10 characters ending in `?`, and an
/// answer.
pub fn format_validity(question: &str, answer: Option<&str>) -> Option<String> {
    let q = question.trim();
    if q.chars().count() < 10 {
        return Some("question shorter than 10 characters".into());
    }
    if !q.ends_with('?') {
        return Some("question does not end with `?`".into());
    }
    if answer.is_none_or(|a| a.trim().is_empty()) {
        return Some("no answer".into());
    }
    None
}

/// The outcome of the generator's self-check (SPEC §2): the GRM judged the generator's own
/// answer `judged` times and said correct `correct` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfCheck {
    /// At least `v_min` judgments, at least `v_min` of them correct.
    Passed,
    /// Fewer than `v_min` verdicts said correct.
    Rejected {
        correct: usize,
        judged: usize,
        v_min: usize,
    },
    /// Fewer than `v_min` judgments at all: the gate cannot be passed, so the task is invalid
    /// (it is never lowered to the number of judgments there happen to be).
    TooFewJudgments { judged: usize, v_min: usize },
}

/// Start of the invalid reason of a task the self-check rejected.
pub const SELF_CHECK_REJECTED: &str = "self-check: the judge accepted";
/// Start of the invalid reason of a task with fewer self-judgments than `v_min`.
pub const SELF_CHECK_TOO_FEW: &str = "self-check: only";

/// The self-check's decision (see [`SelfCheck`]).
pub fn self_check(correct: usize, judged: usize, v_min: usize) -> SelfCheck {
    if judged < v_min {
        SelfCheck::TooFewJudgments { judged, v_min }
    } else if correct < v_min {
        SelfCheck::Rejected {
            correct,
            judged,
            v_min,
        }
    } else {
        SelfCheck::Passed
    }
}

impl SelfCheck {
    /// The task's invalid reason, or `None` when it passed. The reasons start with
    /// [`SELF_CHECK_REJECTED`] or [`SELF_CHECK_TOO_FEW`], which [`SelfCheck::of_reason`] reads
    /// back.
    pub fn reason(&self) -> Option<String> {
        match *self {
            SelfCheck::Passed => None,
            SelfCheck::Rejected {
                correct,
                judged,
                v_min,
            } => Some(format!(
                "{SELF_CHECK_REJECTED} the generator's answer {correct} of {judged} times, fewer than v_min = {v_min}"
            )),
            SelfCheck::TooFewJudgments { judged, v_min } => Some(format!(
                "{SELF_CHECK_TOO_FEW} {judged} self-judgments, fewer than v_min = {v_min}"
            )),
        }
    }

    /// Which self-check failure an invalid reason records: `Some("rejected")`,
    /// `Some("too_few_judgments")`, or `None` for a reason of another kind.
    pub fn of_reason(reason: &str) -> Option<&'static str> {
        if reason.starts_with(SELF_CHECK_REJECTED) {
            Some("rejected")
        } else if reason.starts_with(SELF_CHECK_TOO_FEW) {
            Some("too_few_judgments")
        } else {
            None
        }
    }
}

/// Format bonus: (share of turns that open with a think block + [a tool was called]) / 4.
pub fn format_bonus(turns: usize, turns_opening_with_think: usize, searched: bool) -> f64 {
    let share = if turns == 0 {
        0.0
    } else {
        turns_opening_with_think as f64 / turns as f64
    };
    (share + if searched { 1.0 } else { 0.0 }) / 4.0
}

/// R-Zero's repetition penalty: questions are clustered by BLEU similarity (single linkage at
/// `threshold`), and each is penalised by its cluster's share of the batch.
pub fn repetition_penalties(questions: &[String], threshold: f64) -> Vec<f64> {
    let n = questions.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while parent[r] != r {
            r = parent[r];
        }
        parent[i] = r;
        r
    }
    let tokens: Vec<Vec<String>> = questions
        .iter()
        .map(|q| {
            super::metrics::normalize_answer(q)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect();
    for i in 0..n {
        for j in i + 1..n {
            let sim = bleu(&tokens[i], &tokens[j]).max(bleu(&tokens[j], &tokens[i]));
            if sim >= threshold {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let roots: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    roots
        .iter()
        .map(|r| roots.iter().filter(|x| *x == r).count() as f64 / n as f64)
        .collect()
}

/// Sentence BLEU-4 with add-one smoothing on higher orders, as a similarity in [0, 1].
pub fn bleu(candidate: &[String], reference: &[String]) -> f64 {
    if candidate.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let mut log_sum = 0.0;
    for n in 1..=4usize {
        let grams = |t: &[String]| -> Vec<Vec<String>> {
            if t.len() < n {
                Vec::new()
            } else {
                t.windows(n).map(|w| w.to_vec()).collect()
            }
        };
        let cand = grams(candidate);
        let mut refs = grams(reference);
        let mut matched = 0usize;
        for g in &cand {
            if let Some(i) = refs.iter().position(|r| r == g) {
                refs.swap_remove(i);
                matched += 1;
            }
        }
        let (num, den) = if n == 1 {
            (matched as f64, cand.len() as f64)
        } else {
            (matched as f64 + 1.0, cand.len() as f64 + 1.0)
        };
        if num == 0.0 {
            return 0.0;
        }
        log_sum += (num / den).ln() / 4.0;
    }
    let (c, r) = (candidate.len() as f64, reference.len() as f64);
    let brevity = if c >= r { 1.0 } else { (1.0 - r / c).exp() };
    brevity * log_sum.exp()
}

/// GRM label modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMode {
    /// The GRM's own verdicts, class-balanced.
    SelfVerdict,
    /// Does the attempt match the generator's reference (SubEM)?
    Rule,
    /// Labelled verification data.
    Real,
}

impl std::str::FromStr for LabelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "self" => Ok(Self::SelfVerdict),
            "rule" => Ok(Self::Rule),
            "real" => Ok(Self::Real),
            _ => Err(format!("unknown GRM label mode {s:?} (self, rule, real)")),
        }
    }
}

/// The `self` label of one judgment: the majority verdict of the *other* judgments of the same
/// (question, answer) key, leaving this judgment's own verdict out, so the GRM is never trained
/// to agree with itself. `key_correct` and `key_votes` count the whole key, this judgment
/// included (`own_correct` is its verdict). `None`, and the judgment does not train, when no
/// other judgment of the key exists (a single vote has no independent label) or when the others
/// tie (no majority to learn).
pub fn leave_one_out_label(
    key_correct: usize,
    key_votes: usize,
    own_correct: bool,
) -> Option<bool> {
    let others = key_votes.checked_sub(1)?;
    let others_correct = key_correct.checked_sub(usize::from(own_correct))?;
    majority_label(others_correct, others)
}

/// The majority of `votes` verdicts of which `correct` said correct: `None` without votes or on
/// a tie.
pub fn majority_label(correct: usize, votes: usize) -> Option<bool> {
    if votes == 0 || correct > votes || 2 * correct == votes {
        return None;
    }
    Some(2 * correct > votes)
}

/// Class balancing for `self` labels: keep every item of the minority verdict and an equal
/// number of the majority, chosen by a seeded order (`order_key` per item). Returns the kept
/// indices in input order.
pub fn class_balance(verdicts: &[bool], order_key: impl Fn(usize) -> u64) -> Vec<usize> {
    let (pos, neg): (Vec<usize>, Vec<usize>) = (0..verdicts.len()).partition(|&i| verdicts[i]);
    let (minority, mut majority) = if pos.len() <= neg.len() {
        (pos, neg)
    } else {
        (neg, pos)
    };
    majority.sort_by_key(|&i| (order_key(i), i));
    majority.truncate(minority.len());
    let mut kept: Vec<usize> = minority.into_iter().chain(majority).collect();
    kept.sort_unstable();
    kept
}

/// Where `self` labels are class-balanced (`reward.grm_balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrmBalance {
    /// Per question, as the seed does (the default). Leave-one-out labels agree within a
    /// question far more often than the seed's raw verdicts, so few rows train.
    Question,
    /// Over the whole round: every minority label and as many of the majority. More rows
    /// train; on the default benchmark the GRM then drifted to rejecting the generator's answers
    /// and the self-check shut every task out (docs/rounds.md).
    Round,
    /// No balancing: every labelled judgment trains.
    None,
}

impl std::str::FromStr for GrmBalance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "question" => Ok(Self::Question),
            "round" => Ok(Self::Round),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown GRM balance {s:?} (question, round, none)")),
        }
    }
}

/// The `self` labels that train under `mode`: indices into `labels` (input order), `groups`
/// holding each label's question.
pub fn balance_self_labels<K: Ord>(
    mode: GrmBalance,
    labels: &[bool],
    groups: &[K],
    order_key: impl Fn(usize) -> u64,
) -> Vec<usize> {
    match mode {
        GrmBalance::Question => class_balance_by_group(labels, groups, order_key),
        GrmBalance::Round => class_balance(labels, order_key),
        GrmBalance::None => (0..labels.len()).collect(),
    }
}

/// [`class_balance`] within each group (the seed balances per question): a group keeps its
/// minority class and as many of its majority; a group with one class only (no disagreement)
/// keeps nothing. Returns the kept indices in input order.
pub fn class_balance_by_group<K: Ord>(
    labels: &[bool],
    groups: &[K],
    order_key: impl Fn(usize) -> u64,
) -> Vec<usize> {
    assert_eq!(labels.len(), groups.len(), "one group key per label");
    let mut members: std::collections::BTreeMap<&K, Vec<usize>> = Default::default();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut kept: Vec<usize> = members
        .values()
        .flat_map(|idx| {
            let sub: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
            class_balance(&sub, |k| order_key(idx[k]))
                .into_iter()
                .map(|k| idx[k])
                .collect::<Vec<_>>()
        })
        .collect();
    kept.sort_unstable();
    kept
}

/// The GRM's reward: 1 when its verdict equals the label.
pub fn grm_reward(verdict_correct: bool, label_correct: bool) -> f64 {
    if verdict_correct == label_correct {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_rewards_match_the_spec() {
        let e = |p| generator_reward(GeneratorScheme::Entropy, p);
        assert!((e(0.5) - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(e(0.0), 0.0);
        assert_eq!(e(1.0), 0.0);
        assert!(e(0.3) > 0.0 && e(0.3) < e(0.5));
        let u = |p| generator_reward(GeneratorScheme::Uncertainty, p);
        assert_eq!((u(0.5), u(0.0), u(1.0)), (1.0, 0.0, 0.0));
        assert!((u(0.25) - 0.5).abs() < 1e-12);
        let l = |p| generator_reward(GeneratorScheme::Learnability, p);
        assert_eq!((l(0.0), l(1.0)), (0.0, 0.0));
        assert!((l(0.2) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn validity_rules() {
        assert!(validity("Who?", Some("x"), 5, 4).unwrap().contains("10"));
        assert!(
            validity("Who wrote Hamlet", Some("x"), 5, 4)
                .unwrap()
                .contains("?")
        );
        assert!(
            validity("Who wrote Hamlet?", None, 5, 4)
                .unwrap()
                .contains("answer")
        );
        assert!(validity("Who wrote Hamlet?", Some(" "), 5, 4).is_some());
        assert!(validity("Who wrote Hamlet?", Some("Shakespeare"), 3, 4).is_some());
        assert_eq!(
            validity("Who wrote Hamlet?", Some("Shakespeare"), 4, 4),
            None
        );
    }

    /// Fewer self-judgments than `v_min` is invalid, never a lowered gate; the reasons read back.
    #[test]
    fn self_check_with_too_few_judgments_is_invalid() {
        assert_eq!(self_check(4, 5, 4), SelfCheck::Passed);
        let rejected = self_check(3, 5, 4);
        assert_eq!(
            rejected,
            SelfCheck::Rejected {
                correct: 3,
                judged: 5,
                v_min: 4
            }
        );
        // Two judgments, both correct, v_min 4: the old `v_min.min(judged)` passed this task.
        let too_few = self_check(2, 2, 4);
        assert_eq!(
            too_few,
            SelfCheck::TooFewJudgments {
                judged: 2,
                v_min: 4
            }
        );
        assert_eq!(
            self_check(0, 0, 1),
            SelfCheck::TooFewJudgments {
                judged: 0,
                v_min: 1
            }
        );
        assert_eq!(self_check(0, 0, 0), SelfCheck::Passed);
        assert_eq!(SelfCheck::Passed.reason(), None);
        let r = rejected.reason().unwrap();
        assert_eq!(SelfCheck::of_reason(&r), Some("rejected"), "{r}");
        let r = too_few.reason().unwrap();
        assert_eq!(SelfCheck::of_reason(&r), Some("too_few_judgments"), "{r}");
        assert_eq!(SelfCheck::of_reason("no answer"), None);
    }

    #[test]
    fn leave_one_out_labels_never_count_the_own_verdict() {
        // A single vote: nothing independent, no label (the old rule gave it its own verdict).
        assert_eq!(leave_one_out_label(1, 1, true), None);
        assert_eq!(leave_one_out_label(0, 1, false), None);
        // Two votes that disagree: each is labelled by the other.
        assert_eq!(leave_one_out_label(1, 2, true), Some(false));
        assert_eq!(leave_one_out_label(1, 2, false), Some(true));
        // 2 correct of 3: a correct verdict sees 1 of 2 (a tie, no label), the wrong one sees
        // 2 of 2 (correct).
        assert_eq!(leave_one_out_label(2, 3, true), None);
        assert_eq!(leave_one_out_label(2, 3, false), Some(true));
        // 3 of 4: a correct verdict sees 2 of 3 → correct; the wrong one 3 of 3 → correct.
        assert_eq!(leave_one_out_label(3, 4, true), Some(true));
        assert_eq!(leave_one_out_label(3, 4, false), Some(true));
        // Counts that cannot be (a correct verdict in a key with none) give no label.
        assert_eq!(leave_one_out_label(0, 2, true), None);
    }

    #[test]
    fn class_balance_is_per_group_and_a_group_without_disagreement_keeps_nothing() {
        // Question a: 1 correct, 3 wrong → keeps 2; question b: 2 correct, 2 wrong → keeps 4;
        // question c: 3 correct → keeps nothing. Batch-wide balancing (6 correct, 5 wrong)
        // would keep question c's labels too.
        let labels = [
            true, false, false, false, true, true, false, false, true, true, true,
        ];
        let groups = ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c"];
        let kept = class_balance_by_group(&labels, &groups, |i| i as u64);
        assert_eq!(kept, vec![0, 1, 4, 5, 6, 7]);
        let batch = class_balance(&labels, |i| i as u64);
        assert!(batch.iter().any(|&i| groups[i] == "c"), "{batch:?}");
    }

    #[test]
    fn format_bonus_ranges_from_zero_to_half() {
        assert_eq!(format_bonus(0, 0, false), 0.0);
        assert_eq!(format_bonus(2, 2, true), 0.5);
        assert_eq!(format_bonus(4, 2, false), 0.125);
    }

    #[test]
    fn repeated_questions_share_a_penalty() {
        let qs: Vec<String> = [
            "Who directed the film 2001 A Space Odyssey in 1968?",
            "Who directed the film 2001 A Space Odyssey in 1968 ?",
            "What is the capital city of the country France?",
            "Which river flows through the city of Cairo in Egypt?",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = repetition_penalties(&qs, 0.5);
        assert_eq!(p, vec![0.5, 0.5, 0.25, 0.25]);
        let same = vec!["a b c d".to_string(); 1];
        assert!(
            (bleu(
                &same[0].split(' ').map(String::from).collect::<Vec<_>>(),
                &same[0].split(' ').map(String::from).collect::<Vec<_>>()
            ) - 1.0)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn class_balance_keeps_the_minority_and_as_many_of_the_majority() {
        let verdicts = [true, true, true, false, true, false];
        let kept = class_balance(&verdicts, |i| (10 - i) as u64);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept.iter().filter(|&&i| verdicts[i]).count(), 2);
        assert!(kept.contains(&3) && kept.contains(&5));
        assert!(class_balance(&[true, true], |i| i as u64).is_empty());
    }
}
