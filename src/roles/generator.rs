//! The prompt generator (PG): prompts from a topic seed or, from round 2 on, from a previous
//! task with a HARDER / EASIER instruction under the *width* or *depth* curriculum template; and
//! the parsing of its output into a question and its reference answer.

use super::tool::{self, ToolFormat};
use super::{Message, tags};

pub(crate) const SYSTEM: &str =
    "You write quiz questions with short answers, using a search engine to check facts.";

/// Curriculum direction for a task built from a previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Harder,
    Easier,
}

/// Curriculum template: *width* (a similar question needing different knowledge) or *depth*
/// (add or remove one reasoning hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Template {
    Width,
    Depth,
}

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Width => "width",
            Template::Depth => "depth",
        }
    }
}

/// The format instructions, with search calls in `tools`' format.
fn format(tools: ToolFormat) -> String {
    format!(
        "You may think inside <think> and </think> and search with {}; results come back between \
{}. Finish with the question inside <question> and </question>, then its answer, a short entity \
of a few words, inside <answer> and </answer>. The question must end with a question mark and \
must not contain its answer.",
        tools.call_example(),
        tools.results_example()
    )
}

/// A first-round prompt from a topic seed.
pub(crate) fn seed_prompt(topic: &str, tools: ToolFormat) -> Vec<Message> {
    vec![
        Message::system(SYSTEM),
        Message::user(format!(
            "Write one factual question about {} that can be answered by searching Wikipedia. {}",
            super::quoted(topic),
            format(tools)
        )),
    ]
}

/// A prompt that rewrites a previous task.
pub(crate) fn evolve_prompt(
    question: &str,
    answer: &str,
    direction: Direction,
    template: Template,
    tools: ToolFormat,
) -> Vec<Message> {
    let instruction = match (direction, template) {
        (Direction::Harder, Template::Width) => {
            "Write a new question on a similar subject that needs less well-known knowledge, so it is harder to answer."
        }
        (Direction::Easier, Template::Width) => {
            "Write a new question on a similar subject that needs better-known knowledge, so it is easier to answer."
        }
        (Direction::Harder, Template::Depth) => {
            "Write a harder question by adding one reasoning step: the answer should be found by first finding something else."
        }
        (Direction::Easier, Template::Depth) => {
            "Write an easier question by removing one reasoning step, so one search finds the answer."
        }
    };
    vec![
        Message::system(SYSTEM),
        Message::user(format!(
            "Previous question: {}\nIts answer: {}\n{instruction} {}",
            super::quoted(question),
            super::quoted(answer),
            format(tools)
        )),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GeneratorOutput {
    pub question: Option<String>,
    pub answer: Option<String>,
    pub error: Option<String>,
}

/// Parses the PG's output: the last `<question>` and the `<answer>` after it, outside tool text.
pub fn parse(completion: &str) -> GeneratorOutput {
    let own = tool::own_text(completion);
    let questions = tags::blocks(&own, "question");
    let Some(question) = questions.last().map(|q| q.trim().to_string()) else {
        return GeneratorOutput {
            question: None,
            answer: None,
            error: Some("no <question> block".into()),
        };
    };
    let after = tags::after_last_block(&own, "question");
    let answer = tags::blocks(after, "answer")
        .last()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty());
    let error = match &answer {
        None => Some("no <answer> block after the question".to_string()),
        Some(a) if a.split_whitespace().count() > 10 => {
            Some("answer longer than 10 words".to_string())
        }
        Some(_) if question.is_empty() => Some("empty question".to_string()),
        Some(_) => None,
    };
    GeneratorOutput {
        question: Some(question),
        answer,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_and_answer_parse() {
        let p = parse(
            "<think>films</think><question> Who directed Alien? </question><answer>Ridley Scott</answer>",
        );
        assert_eq!(p.question.as_deref(), Some("Who directed Alien?"));
        assert_eq!(p.answer.as_deref(), Some("Ridley Scott"));
        assert_eq!(p.error, None);
    }

    #[test]
    fn missing_or_long_answers_are_errors() {
        assert!(parse("no tags").error.unwrap().contains("question"));
        assert!(
            parse("<question>Q?</question>")
                .error
                .unwrap()
                .contains("answer")
        );
        let long = format!(
            "<question>Q?</question><answer>{}</answer>",
            "w ".repeat(11)
        );
        assert!(parse(&long).error.unwrap().contains("longer"));
        // An answer written before the question is not its answer.
        assert!(
            parse("<answer>x</answer><question>Q?</question>")
                .error
                .is_some()
        );
    }

    #[test]
    fn prompts_carry_the_instruction() {
        let p = evolve_prompt(
            "Q?",
            "A",
            Direction::Harder,
            Template::Depth,
            ToolFormat::Tags,
        );
        assert!(p[1].content.contains("adding one reasoning step"));
        let tags = &seed_prompt("a river", ToolFormat::Tags)[1].content;
        assert!(tags.contains("a river"));
        // The tags wording is the one the shipped model was warmed up on.
        assert!(tags.contains(
            "search with <search> query </search>; results come back between <information> and \
</information>. Finish"
        ));
        let qwen = &seed_prompt("a river", ToolFormat::Qwen)[1].content;
        assert!(qwen.contains("<tool_call>") && qwen.contains("<tool_response>"));
    }
}
