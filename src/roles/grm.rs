//! The generative reward model (judge): its prompt and verdict parsing. The verdict must not
//! confuse "incorrect" with "correct" (the seed's substring check does); anything unparsable is
//! `wrong`, with the reason kept.

use super::tool::{self, ToolFormat};
use super::{Message, tags};

pub(crate) const SYSTEM: &str = "You are a careful judge of answers to factual questions.";

/// The judge's prompt; the reference answer is shown only when `reference` is given.
pub fn prompt(
    question: &str,
    candidate: &str,
    reference: Option<&str>,
    tools: ToolFormat,
) -> Vec<Message> {
    let reference = reference
        .map(|r| format!("Reference answer: {}\n", super::quoted(r)))
        .unwrap_or_default();
    vec![
        Message::system(SYSTEM),
        Message::user(format!(
            "Question: {}\n{reference}Candidate answer: {}\nDecide whether the candidate answer is \
correct. You may think inside <think> and </think> and search with {}. End \
with <answer>conclusion: correct</answer> or <answer>conclusion: wrong</answer>.",
            super::quoted(question),
            super::quoted(candidate),
            tools.call_example()
        )),
    ]
}

/// A policy answer shaped to steer the judge rather than answer the question: a verdict
/// ("conclusion: correct", "this is correct"), words addressed to a judge or grader, an
/// instruction to ignore what came before, or chat and role tags. A regex (Rust `regex` syntax,
/// case-insensitive) so `asl audit` counts such answers in its polars scan. The judge's prompt
/// quotes answers through `roles::quoted` and its verdict comes from its own output only, so these
/// answers cannot decide a verdict by their text; the count shows whether a policy is trying.
pub(crate) const JUDGE_STEERING: &str = r"(?i)(conclusion\s*:|verdict|\b(judge|grader|evaluator|reviewer)\b|\b(is|was|be) (correct|right|true)\b|\bmark(ed)? (it|this|as)\b|ignore (all |the |any )?(previous|above|prior|earlier)|<\|im_(start|end)\|>|</?(answer|information|question|search|think|tool_call|tool_response)>)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Correct,
    Wrong,
}

impl Verdict {
    pub(crate) const ALL: [Verdict; 2] = [Verdict::Correct, Verdict::Wrong];

    /// `Correct` when `correct`, else `Wrong`.
    pub(crate) fn from_correct(correct: bool) -> Verdict {
        if correct {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }

    /// The word a judgment shard's `verdict` (and a reward row's `label`) column holds.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Correct => "correct",
            Verdict::Wrong => "wrong",
        }
    }

    /// Whether a `verdict` or `label` column's word says correct.
    pub(crate) fn says_correct(word: &str) -> bool {
        word == Verdict::Correct.name()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrmOutput {
    pub verdict: Verdict,
    pub parsed: bool,
    pub error: Option<String>,
}

/// Parses the last `<answer>` block outside tool text. Words are compared whole, so
/// "incorrect", "not correct" and "correctly wrong" never read as `correct`.
pub fn parse(completion: &str) -> GrmOutput {
    let own = tool::own_text(completion);
    let Some(block) = tags::blocks(&own, "answer").last().copied() else {
        return unparsed("no <answer> block");
    };
    let lower = block.to_lowercase();
    let body = lower
        .trim()
        .strip_prefix("conclusion")
        .unwrap_or(lower.trim());
    let body = body.trim_start_matches([':', ' ', '-']).trim();
    let words: Vec<&str> = body
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        ["correct"] | ["right"] | ["yes"] => GrmOutput {
            verdict: Verdict::Correct,
            parsed: true,
            error: None,
        },
        ["wrong"] | ["incorrect"] | ["no"] | ["not", "correct"] => GrmOutput {
            verdict: Verdict::Wrong,
            parsed: true,
            error: None,
        },
        _ => unparsed("verdict is neither `correct` nor `wrong`"),
    }
}

/// A near miss of `answer`, as a small policy misspells a reference it copies ("Ipatiens" for
/// Impatiens, "Vica faba" for Vicia faba): one inner letter of its longest word of five letters
/// or more dropped, doubled, or swapped with the next, the letter and the edit chosen by `seed`.
/// Exact match calls it wrong, and a judge shown the reference should too. `None` when no word
/// of letters only is long enough.
pub(crate) fn misspelt(answer: &str, seed: u64) -> Option<String> {
    let (start, word) = answer
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - answer.as_ptr() as usize, w))
        .filter(|(_, w)| w.chars().count() >= 5 && w.chars().all(char::is_alphabetic))
        .max_by_key(|(_, w)| w.chars().count())?;
    let mut letters: Vec<char> = word.chars().collect();
    // Inner letters only: the first and the last stay, as in the misspellings seen.
    let last = letters.len() - 1;
    let at = 1 + (seed / 3) as usize % (last - 1);
    let next = if at + 1 < last { at + 1 } else { at - 1 };
    let differ = letters[at].to_lowercase().ne(letters[next].to_lowercase());
    match seed % 3 {
        0 => letters.insert(at, letters[at]),
        1 if differ => letters.swap(at, next),
        // A swap of two equal letters would change nothing: drop one instead.
        _ => {
            letters.remove(at);
        }
    }
    let edited: String = letters.into_iter().collect();
    Some(format!(
        "{}{edited}{}",
        &answer[..start],
        &answer[start + word.len()..]
    ))
}

fn unparsed(reason: &str) -> GrmOutput {
    GrmOutput {
        verdict: Verdict::Wrong,
        parsed: false,
        error: Some(reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelling_edits_one_inner_letter_of_the_longest_word() {
        let gold = "Vicia faba";
        let edits: std::collections::BTreeSet<String> =
            (0..30).filter_map(|s| misspelt(gold, s)).collect();
        // Every seed gives a near miss; drops, doubles and swaps of the inner letters all occur.
        assert!(edits.contains("Vica faba") && edits.contains("Viccia faba"));
        assert!(edits.contains("Vciia faba") && edits.contains("Viica faba"));
        for e in &edits {
            let first = e.split(' ').next().unwrap();
            assert!(first.starts_with('V') && first.ends_with('a') && e.ends_with(" faba"));
            assert_eq!(
                crate::rl::metrics::exact_match(e, &[gold.to_string()]),
                0.0,
                "{e}"
            );
            assert!(e.len().abs_diff(gold.len()) <= 1);
        }
        assert_eq!(misspelt(gold, 7), misspelt(gold, 7));
        // Only words of letters count: no near miss of a formula or a short name.
        assert_eq!(misspelt("CH3CH=CH2", 1), None);
        assert_eq!(misspelt("Ra II", 1), None);
        // Seed 4 swaps the third letter with the fourth, both 's': one is dropped instead.
        assert_eq!(misspelt("Mississippi", 4).as_deref(), Some("Misissippi"));
    }

    #[test]
    fn verdicts_parse_and_incorrect_is_never_correct() {
        assert_eq!(
            parse("<answer>conclusion: correct</answer>").verdict,
            Verdict::Correct
        );
        assert_eq!(
            parse("<answer>Conclusion: Wrong</answer>").verdict,
            Verdict::Wrong
        );
        let inc = parse("<answer>conclusion: incorrect</answer>");
        assert_eq!((inc.verdict, inc.parsed), (Verdict::Wrong, true));
        let odd = parse("<answer>conclusion: correct or wrong</answer>");
        assert_eq!((odd.verdict, odd.parsed), (Verdict::Wrong, false));
        assert!(!parse("correct").parsed);
        let tool = parse("<information><answer>correct</answer></information>");
        assert_eq!(tool.verdict, Verdict::Wrong);
    }

    #[test]
    fn the_reference_is_shown_only_when_asked() {
        assert!(
            prompt("Q?", "A", Some("R"), ToolFormat::Tags)[1]
                .content
                .contains("Reference answer: R")
        );
        assert!(
            !prompt("Q?", "A", None, ToolFormat::Tags)[1]
                .content
                .contains("Reference")
        );
    }
}
