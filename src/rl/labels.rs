//! The GRM's training labels (SPEC §2, docs/rounds.md *GRM labels*): `self` — the
//! leave-one-out majority of the other verdicts on the same answer to the same question,
//! class-balanced; `rule` — SubEM of an attempt against the task's reference; `real` — only
//! labelled verification items. Verification items always carry their real label.

use std::collections::{BTreeMap, BTreeSet};

use crate::rl::metrics::{normalize_answer, sub_exact_match};

/// What one GRM judgment judged, as its label sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Judged<'a> {
    /// A labelled verification item: correct exactly when the candidate is its gold answer.
    Verification { gold: &'a str },
    /// The generator's own answer (the self-check). It *is* the task's reference, so it has no
    /// independent rule label.
    SelfCheck,
    /// A policy attempt at a task with this reference and aliases; `unread` when answers must
    /// be grounded (`reward.grounded_answers`) and this one is in none of the results the
    /// attempt read.
    Attempt { golds: &'a [String], unread: bool },
}

/// One GRM judgment: the question (task) it belongs to, the candidate answer, whether the
/// verdict parsed and what it said.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judgment<'a> {
    pub question: &'a str,
    pub candidate: &'a str,
    pub parsed: bool,
    pub said_correct: bool,
    pub judged: Judged<'a>,
}

/// Every judgment's label under `mode` (`Some(true)`: correct); `None` trains nothing.
/// `self` votes are every parsable judgment of one (question, normalised answer) key but
/// verification items; an unparsable verdict is no opinion and casts no vote.
pub(crate) fn grm_labels(mode: LabelMode, judgments: &[Judgment]) -> Vec<Option<bool>> {
    let mut votes: BTreeMap<(&str, String), (usize, usize)> = BTreeMap::new();
    for j in judgments {
        if j.parsed && !matches!(j.judged, Judged::Verification { .. }) {
            let e = votes.entry(answer_key(j)).or_default();
            e.0 += usize::from(j.said_correct);
            e.1 += 1;
        }
    }
    judgments
        .iter()
        .map(|j| match (j.judged, mode) {
            (Judged::Verification { gold }, _) => {
                Some(normalize_answer(j.candidate) == normalize_answer(gold))
            }
            (_, LabelMode::Real) => None,
            // SubEM against the generator's answer would label every self-judgment correct by
            // construction and train the GRM to accept the generator.
            (Judged::SelfCheck, LabelMode::Rule) => None,
            (Judged::Attempt { golds, .. }, LabelMode::Rule) => {
                Some(sub_exact_match(j.candidate, golds) > 0.0)
            }
            // The policy's reward calls such an answer wrong whatever the judge says; a `self`
            // label that passed it would train the judge to pass what the reward refuses
            // (docs/rounds.md: the judge passed more misspelt copies each round).
            (Judged::Attempt { unread: true, .. }, LabelMode::SelfVerdict) => Some(false),
            (_, LabelMode::SelfVerdict) => {
                let (c, n) = votes.get(&answer_key(j)).copied().unwrap_or_default();
                if j.parsed {
                    leave_one_out_label(c, n, j.said_correct)
                } else {
                    // It cast no vote: every vote of its key is another judgment's.
                    majority_label(c, n)
                }
            }
        })
        .collect()
}

/// The answer a judgment judged, as its `self` label pools votes: (question, normalised answer).
fn answer_key<'a>(j: &Judgment<'a>) -> (&'a str, String) {
    (j.question, normalize_answer(j.candidate))
}

/// Which judgments train, given their `labels`: every labelled one, but `self` and `rule` labels
/// only as `balance` keeps them (`order_key` orders each class's items for the seeded sample);
/// verification items always train. Rule labels are balanced too: most of a 135M policy's
/// attempts are wrong, and a GRM trained on every SubEM label learnt to reject everything (the
/// self-check passed no task in rounds 2-3 of `asl-rule-grm`'s first run, docs/rounds.md).
pub(crate) fn grm_trains(
    mode: LabelMode,
    balance: GrmBalance,
    judgments: &[Judgment],
    labels: &[Option<bool>],
    order_key: impl Fn(usize) -> u64,
) -> Vec<bool> {
    let balanced: Vec<usize> = (0..judgments.len())
        .filter(|&i| {
            matches!(mode, LabelMode::SelfVerdict | LabelMode::Rule)
                && !matches!(judgments[i].judged, Judged::Verification { .. })
                && labels[i].is_some()
        })
        .collect();
    let classes: Vec<bool> = balanced.iter().map(|&i| labels[i] == Some(true)).collect();
    // The self-check's judgments (no reference shown) and the judge's (reference shown) are
    // balanced apart: they are different prompts, and balanced together a question's "wrong"
    // labels (the judge's, on the policy's wrong attempts) were paired with "correct" ones that
    // came mostly from the self-check's verdicts on the generator's own answer, so every round
    // taught the judge to say "correct" whenever it sees no reference (bl20: its accuracy on
    // verification pairs without a reference fell from 0.880 to 0.583 in 8 rounds, passing 160 of
    // 200 wrong answers; docs/rounds.md).
    let groups: Vec<(bool, &str)> = balanced
        .iter()
        .map(|&i| {
            let self_check = matches!(judgments[i].judged, Judged::SelfCheck);
            let question = match balance {
                GrmBalance::Round => "",
                _ => judgments[i].question,
            };
            (self_check, question)
        })
        .collect();
    let kept: BTreeSet<usize> =
        balance_labels(balance, &classes, &groups, |k| order_key(balanced[k]))
            .into_iter()
            .map(|k| balanced[k])
            .collect();
    let balanced: BTreeSet<usize> = balanced.into_iter().collect();
    (0..judgments.len())
        .map(|i| labels[i].is_some() && (!balanced.contains(&i) || kept.contains(&i)))
        .collect()
}

impl LabelMode {
    /// The `scheme` column of a GRM reward row (`real` for a verification item).
    pub(crate) fn row_name(self, judged: &Judged) -> &'static str {
        if let Judged::Verification { .. } = judged {
            return "grm-label/real";
        }
        match self {
            Self::SelfVerdict => "grm-label/self",
            Self::Rule => "grm-label/rule",
            Self::Real => "grm-label/real",
        }
    }
}

/// GRM label modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabelMode {
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
pub(crate) fn leave_one_out_label(
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
pub(crate) fn majority_label(correct: usize, votes: usize) -> Option<bool> {
    if votes == 0 || correct > votes || 2 * correct == votes {
        return None;
    }
    Some(2 * correct > votes)
}

/// Class balancing for `self` labels: keep every item of the minority verdict and an equal
/// number of the majority, chosen by a seeded order (`order_key` per item). Returns the kept
/// indices in input order.
pub(crate) fn class_balance(verdicts: &[bool], order_key: impl Fn(usize) -> u64) -> Vec<usize> {
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

/// Where `self` and `rule` labels are class-balanced (`reward.grm_balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrmBalance {
    /// Per question, as the seed does (the default), the self-check's judgments apart from the
    /// judge's. Leave-one-out labels agree within a question far more often than the seed's raw
    /// verdicts, so few rows train.
    Question,
    /// Over the whole round (the self-check's judgments and the judge's apart): every minority
    /// label and as many of the majority. More rows
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

/// What the GRM's advantages are centred within (`reward.grm_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrmGroup {
    /// Every GRM row of the round is one group (the default).
    Round,
    /// The verdicts on one answer to one question — the key its `self` labels pool: every
    /// attempt's verdicts (`judge.samples` each) on that normalised answer, and the self-check's
    /// when it is the generator's — are a group, as GRPO groups the samples of one prompt: a
    /// verdict gains where it agrees with its label more than its siblings do. Verification
    /// items are one group.
    Answer,
}

impl GrmGroup {
    /// The group of judgment `j`.
    pub(crate) fn group_id(self, j: &Judgment) -> String {
        match (self, j.judged) {
            (Self::Round, _) => "grm".into(),
            (Self::Answer, Judged::Verification { .. }) => "grm/verification".into(),
            (Self::Answer, _) => {
                let (question, answer) = answer_key(j);
                format!("grm/{question}/{answer}")
            }
        }
    }
}

impl std::str::FromStr for GrmGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round" => Ok(Self::Round),
            "answer" => Ok(Self::Answer),
            _ => Err(format!("unknown GRM group {s:?} (round, answer)")),
        }
    }
}

/// The `self` or `rule` labels that train under `mode`: indices into `labels` (input order),
/// `groups` holding each label's balance group (its question and whether it is a self-check
/// judgment; under `Round` the kind alone).
pub(crate) fn balance_labels<K: Ord>(
    mode: GrmBalance,
    labels: &[bool],
    groups: &[K],
    order_key: impl Fn(usize) -> u64,
) -> Vec<usize> {
    match mode {
        GrmBalance::Question => class_balance_by_group(labels, groups, order_key),
        GrmBalance::Round => class_balance_by_group(labels, groups, order_key),
        GrmBalance::None => (0..labels.len()).collect(),
    }
}

/// [`class_balance`] within each group (the seed balances per question): a group keeps its
/// minority class and as many of its majority; a group with one class only (no disagreement)
/// keeps nothing. Returns the kept indices in input order.
pub(crate) fn class_balance_by_group<K: Ord>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn judgment<'a>(
        question: &'a str,
        candidate: &'a str,
        said: bool,
        judged: Judged<'a>,
    ) -> Judgment<'a> {
        Judgment {
            question,
            candidate,
            parsed: true,
            said_correct: said,
            judged,
        }
    }

    /// Hand-counted labels of one round under each mode: question q, gold "Paris" (alias "City
    /// of Paris"); the self-check judged the generator's answer twice, the judge three attempts
    /// (two say "paris", one "Lyon"), one verdict unparsable, and one verification item.
    #[test]
    fn labels_under_each_mode() {
        let golds = vec!["Paris".to_string(), "City of Paris".to_string()];
        let attempt = Judged::Attempt {
            golds: &golds,
            unread: false,
        };
        let mut unparsable = judgment("q", "Paris", false, attempt);
        unparsable.parsed = false;
        let js = [
            judgment("q", "Paris", true, Judged::SelfCheck),
            judgment("q", "Paris", true, Judged::SelfCheck),
            judgment("q", "the paris", false, attempt),
            judgment("q", "Lyon", true, attempt),
            unparsable,
            judgment("v", "Rome", true, Judged::Verification { gold: "Madrid" }),
        ];
        // self: the Paris key has votes correct, correct, wrong (the unparsable one casts none).
        // A correct vote sees 1 of 2 others correct: a tie, no label; the wrong one sees 2 of 2
        // → correct; Lyon was judged once → no label; the unparsable one gets the key's
        // majority (2 of 3 → correct); the verification item its real label.
        assert_eq!(
            grm_labels(LabelMode::SelfVerdict, &js),
            [None, None, Some(true), None, Some(true), Some(false)]
        );
        // rule: SubEM for attempts, nothing for self-checks.
        assert_eq!(
            grm_labels(LabelMode::Rule, &js),
            [None, None, Some(true), Some(false), Some(true), Some(false)]
        );
        // real: only the verification item.
        assert_eq!(
            grm_labels(LabelMode::Real, &js),
            [None, None, None, None, None, Some(false)]
        );
        // An answer its attempt did not read is wrong under `self`, whatever the votes; `rule`
        // still reads the reference.
        let unread = Judged::Attempt {
            golds: &golds,
            unread: true,
        };
        let mut grounded = js;
        grounded[2].judged = unread;
        assert_eq!(
            grm_labels(LabelMode::SelfVerdict, &grounded)[2],
            Some(false)
        );
        assert_eq!(grm_labels(LabelMode::Rule, &grounded)[2], Some(true));
        assert_eq!(LabelMode::Rule.row_name(&js[5].judged), "grm-label/real");
        assert_eq!(LabelMode::Rule.row_name(&js[2].judged), "grm-label/rule");
    }

    /// Per-question balance trains only a question whose labels disagree, one of each class, for
    /// `self` and `rule` labels; real labels are never balanced away; unlabelled judgments never
    /// train.
    #[test]
    fn training_judgments_balance_labels_per_question() {
        let js: Vec<Judgment> = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "y")]
            .iter()
            .map(|(q, c)| judgment(q, c, true, Judged::SelfCheck))
            .chain([judgment("v", "g", true, Judged::Verification { gold: "g" })])
            .collect();
        let labels = [
            Some(true),
            Some(true),
            Some(false),
            Some(true),
            None,
            Some(true),
        ];
        let trains = grm_trains(
            LabelMode::SelfVerdict,
            GrmBalance::Question,
            &js,
            &labels,
            |i| i as u64,
        );
        assert_eq!(trains, [true, false, true, false, false, true]);
        let all = grm_trains(
            LabelMode::SelfVerdict,
            GrmBalance::None,
            &js,
            &labels,
            |i| i as u64,
        );
        assert_eq!(all, [true, true, true, true, false, true]);
        // Rule labels are balanced the same way; `real` labels (verification items only) never.
        let rule = grm_trains(LabelMode::Rule, GrmBalance::Question, &js, &labels, |i| {
            i as u64
        });
        assert_eq!(rule, trains);
        let rule_all = grm_trains(LabelMode::Rule, GrmBalance::None, &js, &labels, |i| {
            i as u64
        });
        assert_eq!(rule_all, all);
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
    fn class_balance_keeps_the_minority_and_as_many_of_the_majority() {
        let verdicts = [true, true, true, false, true, false];
        let kept = class_balance(&verdicts, |i| (10 - i) as u64);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept.iter().filter(|&&i| verdicts[i]).count(), 2);
        assert!(kept.contains(&3) && kept.contains(&5));
        assert!(class_balance(&[true, true], |i| i as u64).is_empty());
    }
}
