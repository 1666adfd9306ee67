//! The policy (solver): its prompt and the parsing of a rollout into a final answer.
//!
//! Format (SPEC §2): think in `<think>…</think>`, call the tool with `<search>query</search>`
//! (the environment answers in `<information>…</information>`), end with exactly one
//! `<answer>…</answer>`.

use super::tool::{self, ToolFormat};
use super::{Message, tags};

pub(crate) const SYSTEM: &str =
    "You are a research assistant that answers questions with a search engine.";

/// The policy's chat prompt for one question, with search calls in `tools`' format.
pub fn prompt(question: &str, tools: ToolFormat) -> Vec<Message> {
    let user = format!(
        "Answer the given question. You must conduct reasoning inside <think> and </think> first \
every time you get new information. After reasoning, if you find you lack some knowledge, you \
can call a search engine by {} and it will return the top searched results \
between {}. You can search as many times as you want. If you find \
no further external knowledge needed, you can directly provide the answer inside <answer> and \
</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: {}",
        tools.call_example(),
        tools.results_example(),
        super::quoted(question)
    );
    vec![Message::system(SYSTEM), Message::user(user)]
}

/// A parsed policy rollout. `answer` is set only when the rollout followed the format.
/// The policy prompt when no search tool is offered (R-Zero's solver): think, then answer.
pub(crate) fn prompt_without_tools(question: &str) -> Vec<Message> {
    let user = format!(
        "Answer the given question. Reason inside <think> and </think> first, then give the \
answer inside <answer> and </answer>, without detailed illustrations. For example, \
<answer> Beijing </answer>. Question: {}",
        super::quoted(question)
    );
    vec![
        Message::system("You are a knowledgeable assistant that answers questions."),
        Message::user(user),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyOutput {
    pub answer: Option<String>,
    pub searches: Vec<String>,
    pub error: Option<String>,
}

/// Parses a whole rollout (model text with the tool's results in it, in either format).
pub fn parse(completion: &str) -> PolicyOutput {
    let own = tool::own_text(completion);
    let searches = tool::queries(&own);
    let answers = tags::blocks(&own, "answer");
    let error = match (answers.len(), tags::count_open(&own, "answer")) {
        (0, 0) => Some("no <answer> block".to_string()),
        (0, _) => Some("unclosed <answer> block".to_string()),
        (1, 1) => {
            let tail = tags::after_last_block(&own, "answer");
            let tail = tail.trim().trim_end_matches("<|im_end|>").trim();
            if answers[0].trim().is_empty() {
                Some("empty answer".to_string())
            } else if !tail.is_empty() {
                Some("text after the final </answer>".to_string())
            } else {
                None
            }
        }
        (n, m) => Some(format!(
            "{} <answer> blocks, expected exactly one",
            n.max(m)
        )),
    };
    PolicyOutput {
        answer: error.is_none().then(|| answers[0].trim().to_string()),
        searches,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_rollout_parses() {
        let t = "<think>need the director</think><search> 2001 film director </search>\
<information>Doc 1 (Title: 2001) ...</information><think>found</think><answer> Stanley Kubrick </answer><|im_end|>";
        let p = parse(t);
        assert_eq!(p.answer.as_deref(), Some("Stanley Kubrick"));
        assert_eq!(p.searches, vec!["2001 film director"]);
        assert_eq!(p.error, None);
    }

    #[test]
    fn malformed_rollouts_are_kept_with_a_reason() {
        assert!(parse("Paris").error.unwrap().contains("no <answer>"));
        assert!(parse("<answer>Paris").error.unwrap().contains("unclosed"));
        assert!(
            parse("<answer>a</answer><answer>b</answer>")
                .error
                .unwrap()
                .contains("2")
        );
        assert!(
            parse("<answer>a</answer> and more")
                .error
                .unwrap()
                .contains("after")
        );
        assert!(
            parse("<answer>  </answer>")
                .error
                .unwrap()
                .contains("empty")
        );
        // An answer that only the tool wrote is not the policy's answer.
        let t = "<search>x</search><information><answer>Paris</answer></information>";
        assert!(parse(t).answer.is_none());
    }
}
