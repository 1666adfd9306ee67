//! Rewards of the three roles (SPEC §2, §5): the ASL generator reward (entropy of the verdicts),
//! R-Zero's uncertainty with its BLEU-cluster repetition penalty, Absolute Zero's learnability,
//! the policy's correctness under each verifier, the format bonus, the GRM's reward, and the
//! generator's validity gate. The GRM's labels are `rl::labels`.

use crate::rl::metrics::{exact_match, normalize_answer};

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

/// The generator's reward for a valid task of solve rate `p`, less R-Zero's repetition
/// `penalty` (0 for the other schemes), never below 0.
pub(crate) fn penalised_generator_reward(scheme: GeneratorScheme, p: f64, penalty: f64) -> f64 {
    (generator_reward(scheme, p) - penalty).max(0.0)
}

impl GeneratorScheme {
    /// The `scheme` column of a generator reward row.
    pub(crate) fn row_name(self) -> &'static str {
        match self {
            Self::Entropy => "asl-entropy",
            Self::Uncertainty => "r-zero",
            Self::Learnability => "azr-learnability",
        }
    }
}

/// How a policy attempt is decided correct (`reward.verifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verifier {
    /// The GRM's verdict, the majority when it judged the attempt several times.
    Grm,
    /// Exact match, after SQuAD normalisation, against the reference or an alias.
    Rule,
    /// Agreement with the group's most common normalised answer (R-Zero's pseudo-label).
    Majority,
}

impl std::str::FromStr for Verifier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grm" => Ok(Self::Grm),
            "rule" => Ok(Self::Rule),
            "majority" => Ok(Self::Majority),
            _ => Err(format!("unknown verifier {s:?} (grm, rule, majority)")),
        }
    }
}

impl Verifier {
    /// The `scheme` column of a policy reward row.
    pub(crate) fn row_name(self) -> &'static str {
        match self {
            Self::Grm => "grm-verdict",
            Self::Rule => "rule-em",
            Self::Majority => "majority-vote",
        }
    }
}

/// What decides one attempt: the task's question, the attempt's answer, the task's reference
/// and aliases, the group's majority answer (normalised) and the GRM's verdicts on it (correct,
/// judged). `unread`: answers must be grounded in the search results the attempt read
/// (`reward.grounded_answers`) and this one is in none of them ([`unread`]).
pub(crate) struct Attempt<'a> {
    pub question: &'a str,
    pub answer: Option<&'a str>,
    pub golds: &'a [String],
    pub majority: Option<&'a str>,
    pub verdicts: Option<(usize, usize)>,
    pub unread: bool,
}

/// Whether an attempt is correct under `verifier`; `None` when the GRM decides and never judged
/// it (scored wrong, and counted by the caller). An attempt without an answer is wrong.
///
/// Under the label-free verifiers an answer taken from the question is wrong when no reference
/// is in the question: a valid generated task never holds its answer ([`contains_answer`]), so
/// the attempt cannot match it, whatever a lenient judge or a majority of echoes says. Without
/// this rule the default's policy learned to answer with its question (223 of 300 held-out
/// answers after 30 rounds, docs/rounds.md).
///
/// An `unread` answer, found in none of the search results the attempt read, is wrong under the
/// label-free verifiers too: a generated task's answer is a span of the passages its
/// question finds (`generate`'s grounding check), and the 135M judge passes near-copies that are
/// not (`Ipatiens` for `Impatiens`, `Denia Chand` for `Dhyan Chand`; docs/rounds.md).
pub(crate) fn attempt_correct(verifier: Verifier, a: &Attempt) -> Option<bool> {
    let Some(answer) = a.answer else {
        return Some(false);
    };
    let echoes = || {
        contains_answer(a.question, answer)
            && !a.golds.iter().any(|g| contains_answer(a.question, g))
    };
    if verifier != Verifier::Rule && (a.unread || echoes()) {
        return Some(false);
    }
    match verifier {
        Verifier::Rule => Some(exact_match(answer, a.golds) > 0.0),
        Verifier::Majority => Some(a.majority == Some(normalize_answer(answer).as_str())),
        Verifier::Grm => a.verdicts.map(|(correct, judged)| 2 * correct > judged),
    }
}

/// The most common normalised answer of a group (ties: the smallest string), R-Zero's
/// pseudo-label. Answers that normalise to nothing ("the", ".") do not vote: they would agree
/// with each other and win, and as the smallest string every tie.
pub(crate) fn majority_answer<'a>(answers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for answer in answers {
        let normal = normalize_answer(answer);
        if !normal.is_empty() {
            *counts.entry(normal).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(a, _)| a)
}

/// The share of `group` that is correct (0 for an empty group).
pub fn solve_rate(correct: &[bool]) -> f64 {
    if correct.is_empty() {
        0.0
    } else {
        correct.iter().filter(|c| **c).count() as f64 / correct.len() as f64
    }
}

/// The policy's reward for one attempt: 1 when correct.
pub(crate) fn policy_reward(correct: bool) -> f64 {
    f64::from(u8::from(correct))
}

/// Search-R1's format term (its `structure_format_score`): a wrong attempt that still ends in
/// an answer of its own earns `score`; one without an answer, or whose answer is taken from the
/// question ([`taken_from_question`]), earns nothing, and a correct one gets no more than its 1.
/// It pushes unparsable attempts back under a rule reward, where they otherwise score the same
/// as a wrong answer. Without the question check the 135M policy, solving 6 % of its tasks,
/// learnt within four rounds that the cheapest parsed answer is the question itself
/// (docs/rounds.md).
pub(crate) fn answered_bonus(a: &Attempt, correct: bool, score: f64) -> f64 {
    match a.answer {
        Some(answer) if !correct && !taken_from_question(a.question, answer) => score,
        _ => 0.0,
    }
}

/// Whether `answer` is taken from `question`: it occurs in it as whole words
/// ([`contains_answer`]) or shares a two-word phrase with it ([`restates_question`]).
pub(crate) fn taken_from_question(question: &str, answer: &str) -> bool {
    contains_answer(question, answer) || restates_question(question, answer)
}

/// Why a generated task is invalid, if it is (SPEC §2: validity): [`format_validity`], then at
/// least `v_min` of the GRM's verdicts on the generator's own answer saying correct
/// (`self_correct`). The self-check with its judgment count is [`self_check`].
pub(crate) fn validity(
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

/// Whether the normalised `answer` occurs as whole words in the normalised `text` (a question
/// that gives its answer away, a passage that holds it).
pub fn contains_answer(text: &str, answer: &str) -> bool {
    let a = normalize_answer(answer);
    !a.is_empty() && format!(" {} ", normalize_answer(text)).contains(&format!(" {a} "))
}

/// Whether `answer` is in none of the search results an attempt `read` (`grounded_answers`).
pub(crate) fn unread(read: &str, answer: &str) -> bool {
    !contains_answer(read, answer)
}

/// Whether `answer` restates `question`: the two share a two-word phrase after normalisation.
/// A generator that copies the start of a passage as its answer (`What is the history of
/// Peru?` → `The history of Peru spans 15`) does; of the 7,965 corpus-built questions, whose
/// answers are article titles and facts, 4 do (`World War II` after `World War I`).
pub(crate) fn restates_question(question: &str, answer: &str) -> bool {
    let q = normalize_answer(question);
    let q: Vec<&str> = q.split_whitespace().collect();
    let a = normalize_answer(answer);
    let a: Vec<&str> = a.split_whitespace().collect();
    a.windows(2).any(|pair| q.windows(2).any(|w| w == pair))
}

/// Why a task is not grounded in the corpus, if it is not: none of the `passages` the search
/// engine returns for its question holds its answer (`generate.grounding_k`). A label-free
/// check that the task is solvable by searching, as the policy will: it rejects questions that
/// name nothing (`What is this?`) and answers that are sentences of the generator's own
/// (`The capital of France is Paris`), both of which a 135M judge accepts.
pub fn grounding<'a>(answer: &str, passages: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut n = 0;
    for p in passages {
        if contains_answer(p, answer) {
            return None;
        }
        n += 1;
    }
    Some(if n == 0 {
        "the search engine finds no passage for the question".to_string()
    } else {
        format!(
            "the answer is in none of the {n} passages the search engine finds for the question"
        )
    })
}

/// The checks on the text alone: a question of at least 10 characters ending in `?`, an
/// answer, a question that does not contain its answer ([`contains_answer`]) and an answer
/// that does not restate its question ([`restates_question`]).
pub(crate) fn format_validity(question: &str, answer: Option<&str>) -> Option<String> {
    let q = question.trim();
    if q.chars().count() < 10 {
        return Some("question shorter than 10 characters".into());
    }
    if !q.ends_with('?') {
        return Some("question does not end with `?`".into());
    }
    let Some(answer) = answer.filter(|a| !a.trim().is_empty()) else {
        return Some("no answer".into());
    };
    if contains_answer(question, answer) {
        return Some("the question contains its answer".into());
    }
    if restates_question(question, answer) {
        return Some("the answer restates the question".into());
    }
    None
}

/// The outcome of the generator's self-check (SPEC §2): the GRM judged the generator's own
/// answer `judged` times and said correct `correct` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelfCheck {
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
pub(crate) const SELF_CHECK_REJECTED: &str = "self-check: the judge accepted";
/// Start of the invalid reason of a task with fewer self-judgments than `v_min`.
pub(crate) const SELF_CHECK_TOO_FEW: &str = "self-check: only";

/// The self-check's decision (see [`SelfCheck`]).
pub(crate) fn self_check(correct: usize, judged: usize, v_min: usize) -> SelfCheck {
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
    pub(crate) fn of_reason(reason: &str) -> Option<&'static str> {
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

/// The format bonus of one trajectory from its own text (tool results removed): its turns end at
/// a tool call in either format (`</search>`, `</tool_call>`), and a turn counts when it opens
/// with `<think>` (at most `turns` of them).
pub(crate) fn format_bonus_of_text(own_text: &str, turns: usize, searched: bool) -> f64 {
    let own = own_text.replace("</tool_call>", "</search>");
    let think = own
        .split("</search>")
        .filter(|turn| opens_with_think(turn))
        .count()
        .min(turns);
    format_bonus(turns, think, searched)
}

/// Whether a turn opens with `<think>`, past what the chat template puts before it. With
/// `tool_format = qwen` a tool result is a turn of its own, so once its `<tool_response>` is
/// removed the model's next turn still starts after the template's scaffolding
/// (`<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n` in ChatML): special
/// tokens and the role names right after them.
fn opens_with_think(turn: &str) -> bool {
    const ROLES: [&str; 5] = ["assistant", "user", "tool", "ipython", "system"];
    let mut rest = turn.trim_start();
    loop {
        let special = rest
            .strip_prefix("<|")
            .and_then(|r| r.split_once("|>"))
            .filter(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace));
        let Some((_, after)) = special else { break };
        rest = after;
        if let Some(after) = ROLES.iter().find_map(|role| rest.strip_prefix(role)) {
            rest = after;
        }
        rest = rest.trim_start();
    }
    rest.starts_with("<think>")
}

/// R-Zero's repetition penalty: questions are clustered by BLEU similarity (single linkage at
/// `threshold`), and each is penalised by its cluster's share of the batch.
pub(crate) fn repetition_penalties(questions: &[String], threshold: f64) -> Vec<f64> {
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
pub(crate) fn bleu(candidate: &[String], reference: &[String]) -> f64 {
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

/// The GRM's reward: 1 when its verdict equals the label.
pub(crate) fn grm_reward(verdict_correct: bool, label_correct: bool) -> f64 {
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
    fn an_answer_that_repeats_a_phrase_of_its_question_restates_it() {
        let q = "What is the history of Peru?";
        assert!(restates_question(q, "The history of Peru spans 15"));
        assert!(restates_question(q, "history, of"));
        assert!(!restates_question(q, "Peru"));
        assert!(!restates_question(q, "Inca history"));
        assert!(!restates_question("Who directed Alien?", "Ridley Scott"));
    }

    #[test]
    fn a_task_is_grounded_when_a_passage_holds_its_answer() {
        let passages = ["Paris is the capital of France.", "Lyon is a city."];
        assert_eq!(grounding("paris", passages), None);
        assert_eq!(grounding("the Lyon", passages), None);
        let missing = grounding("Marseille", passages).unwrap();
        assert!(missing.contains("none of the 2 passages"), "{missing}");
        // Whole words only, and a sentence of the generator's own is not in the corpus.
        assert!(grounding("Par", passages).is_some());
        assert!(grounding("The capital of France is Paris", passages).is_some());
        assert_eq!(
            grounding("Paris", []).unwrap(),
            "the search engine finds no passage for the question"
        );
        assert!(contains_answer(
            "Who was the King of Prussia?",
            "king of prussia"
        ));
        assert!(!contains_answer("Who was the King of Prussia?", ""));
    }

    #[test]
    fn attempts_are_decided_by_each_verifier() {
        let golds = vec!["Paris".to_string()];
        let a = |answer, majority, verdicts| Attempt {
            question: "Which city is the capital of France?",
            answer,
            golds: &golds,
            majority,
            verdicts,
            unread: false,
        };
        let paris = a(Some("the Paris"), Some("lyon"), Some((1, 3)));
        assert_eq!(attempt_correct(Verifier::Rule, &paris), Some(true));
        assert_eq!(attempt_correct(Verifier::Majority, &paris), Some(false));
        assert_eq!(attempt_correct(Verifier::Grm, &paris), Some(false));
        assert_eq!(
            attempt_correct(Verifier::Grm, &a(Some("x"), None, Some((2, 3)))),
            Some(true)
        );
        // Judged by nobody: the caller counts it and scores it wrong.
        assert_eq!(
            attempt_correct(Verifier::Grm, &a(Some("x"), None, None)),
            None
        );
        // An answer taken from the question is wrong unless the reference is in it too.
        let echo = a(
            Some("capital of France"),
            Some("capital of france"),
            Some((3, 3)),
        );
        assert_eq!(attempt_correct(Verifier::Grm, &echo), Some(false));
        assert_eq!(attempt_correct(Verifier::Majority, &echo), Some(false));
        assert_eq!(attempt_correct(Verifier::Rule, &echo), Some(false));
        let in_question = vec!["France".to_string()];
        let listed = Attempt {
            golds: &in_question,
            ..a(Some("France"), None, Some((2, 3)))
        };
        assert_eq!(attempt_correct(Verifier::Grm, &listed), Some(true));
        assert_eq!(attempt_correct(Verifier::Rule, &listed), Some(true));
        // No answer is wrong under every verifier, judged or not.
        assert_eq!(
            attempt_correct(Verifier::Grm, &a(None, None, None)),
            Some(false)
        );
        assert_eq!(majority_answer(["C", "b", "c", "B"]), Some("b".to_string()));
        assert_eq!(majority_answer([]), None);
        // Answers that normalise to nothing do not vote, so they never win.
        assert_eq!(
            majority_answer([".", "the", "Paris", "Lyon", "Rome"]),
            Some("lyon".to_string())
        );
        assert_eq!(majority_answer([".", "the"]), None);
        assert_eq!(solve_rate(&[true, false, false, true]), 0.5);
        assert_eq!(solve_rate(&[]), 0.0);
        assert_eq!(
            penalised_generator_reward(GeneratorScheme::Uncertainty, 0.5, 0.25),
            0.75
        );
        assert_eq!(
            penalised_generator_reward(GeneratorScheme::Uncertainty, 0.0, 0.25),
            0.0
        );
    }

    /// An answer in none of the results its attempt read is unread (words match whole, in any
    /// case; nothing read holds nothing), and an unread attempt is wrong under the label-free
    /// verifiers, whatever the judge says; the rule verifier reads only the reference.
    #[test]
    fn an_answer_the_attempt_did_not_read_is_wrong_when_answers_must_be_grounded() {
        let golds = vec!["Impatiens".to_string()];
        let read = "Doc 1 (Title: Impatiens) Impatiens is a genus of more than 1,000 species\n\
                    Doc 1 (Title: Balsam) Balsam is a common name";
        assert!(unread(read, "Ipatiens"));
        // Read in the second result, in another case: grounded.
        assert!(!unread(read, "the balsam"));
        // A word cut from a longer one is not grounded: words match whole.
        assert!(unread(read, "Impatien"));
        // Nothing read (no search).
        assert!(unread("", "Impatiens"));
        let a = |answer, unread| Attempt {
            question: "What is the genus of more than 1,000 species of flowering plants?",
            answer: Some(answer),
            golds: &golds,
            majority: Some("ipatiens"),
            verdicts: Some((3, 3)),
            unread,
        };
        let misspelt = a("Ipatiens", true);
        assert_eq!(attempt_correct(Verifier::Grm, &misspelt), Some(false));
        assert_eq!(attempt_correct(Verifier::Majority, &misspelt), Some(false));
        assert_eq!(attempt_correct(Verifier::Rule, &misspelt), Some(false));
        assert_eq!(
            attempt_correct(Verifier::Grm, &a("the balsam", false)),
            Some(true)
        );
        // The check off.
        assert_eq!(
            attempt_correct(Verifier::Grm, &a("Ipatiens", false)),
            Some(true)
        );
        assert_eq!(
            attempt_correct(Verifier::Rule, &a("Impatiens", true)),
            Some(true)
        );
    }

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
    fn answered_bonus_rewards_a_wrong_answer_of_its_own_and_nothing_else() {
        let golds = ["Frank Herbert".to_string()];
        let a = |answer| Attempt {
            question: "Who wrote the novel Dune?",
            answer,
            golds: &golds,
            majority: None,
            verdicts: None,
            unread: false,
        };
        assert_eq!(answered_bonus(&a(Some("Asimov")), false, 0.2), 0.2);
        assert_eq!(answered_bonus(&a(None), false, 0.2), 0.0);
        assert_eq!(answered_bonus(&a(Some("Frank Herbert")), true, 0.2), 0.0);
        assert_eq!(answered_bonus(&a(Some("Asimov")), false, 0.0), 0.0);
        // Taken from the question: the question itself, a word of it, a phrase of it.
        assert_eq!(
            answered_bonus(&a(Some("Who wrote the novel Dune?")), false, 0.2),
            0.0
        );
        assert_eq!(answered_bonus(&a(Some("Dune")), false, 0.2), 0.0);
        assert_eq!(
            answered_bonus(&a(Some("the novel Dune, by Asimov")), false, 0.2),
            0.0
        );
    }

    #[test]
    fn format_bonus_ranges_from_zero_to_half() {
        let two_turns = "<think>a</think><search>q</search> <think>b</think><answer>x</answer>";
        assert_eq!(format_bonus_of_text(two_turns, 2, true), 0.5);
        let qwen = "<think>a</think><tool_call>{}</tool_call><answer>x</answer>";
        assert_eq!(format_bonus_of_text(qwen, 2, true), 0.375);
        // A qwen tool turn leaves the template's scaffolding before the next turn once its
        // result is removed (ChatML, as SmolLM2 and Qwen render it; Llama 3's headers).
        let qwen_two_turns = "<think>a</think><tool_call>{}</tool_call><|im_end|>\n<|im_start|>user\n\n<|im_end|>\n<|im_start|>assistant\n<think>b</think><answer>x</answer>";
        assert_eq!(format_bonus_of_text(qwen_two_turns, 2, true), 0.5);
        let llama = "<think>a</think><tool_call>{}</tool_call><|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>b</think>";
        assert_eq!(format_bonus_of_text(llama, 2, true), 0.5);
        // Text that is not scaffolding still comes first.
        let chatter =
            "<think>a</think><search>q</search><|im_start|>assistant\nSo <think>b</think>";
        assert_eq!(format_bonus_of_text(chatter, 2, true), 0.375);
        // A text with more think openings than turns counts at most its turns.
        assert_eq!(format_bonus_of_text("<think>a</think>", 0, false), 0.0);
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
}
