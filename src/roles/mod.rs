//! The three roles one backbone plays — policy, prompt generator, generative reward model —
//! each as its prompts and the parser of its output. Parsers never panic and never drop
//! output: what does not follow the format comes back with the reason, and is scored invalid.

pub mod generator;
pub mod grm;
pub mod policy;
pub mod tags;
pub mod tool;

/// One chat message; rendering into a model's chat template is the model runtime's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system",
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user",
            content: content.into(),
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    /// Text made of tag fragments and words, the shapes a confused model or a hostile passage
    /// produces.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<answer>".to_string()),
            Just("</answer>".to_string()),
            Just("<search>".to_string()),
            Just("</search>".to_string()),
            Just("<information>".to_string()),
            Just("</information>".to_string()),
            Just("<question>".to_string()),
            Just("</question>".to_string()),
            Just("conclusion: ".to_string()),
            Just("incorrect".to_string()),
            Just("correct".to_string()),
            Just("wrong".to_string()),
            "[a-zA-Z ?:.<>/]{0,8}",
            "\\PC{0,4}",
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_text(s in "\\PC{0,300}") {
            let _ = super::policy::parse(&s);
            let _ = super::generator::parse(&s);
            let _ = super::grm::parse(&s);
        }

        #[test]
        fn parsers_never_panic_on_hostile_text(s in hostile()) {
            let p = super::policy::parse(&s);
            prop_assert_eq!(p.answer.is_some(), p.error.is_none());
            let g = super::generator::parse(&s);
            prop_assert!(g.error.is_some() || (g.question.is_some() && g.answer.is_some()));
            let v = super::grm::parse(&s);
            prop_assert_eq!(v.parsed, v.error.is_none());
        }

        #[test]
        fn a_verdict_containing_incorrect_is_never_correct(prefix in "[a-z :]{0,10}", suffix in "[a-z :]{0,10}") {
            let text = format!("<answer>{prefix}incorrect{suffix}</answer>");
            prop_assert_eq!(super::grm::parse(&text).verdict, super::grm::Verdict::Wrong);
        }

        #[test]
        fn well_formed_policy_output_round_trips(answer in "[A-Za-z0-9][A-Za-z0-9 ]{0,20}", query in "[a-z ]{1,20}") {
            let text = format!("<think>t</think><search>{query}</search><information>Doc 1</information><answer>{answer}</answer>");
            let p = super::policy::parse(&text);
            prop_assert_eq!(p.answer.as_deref(), Some(answer.trim()));
            prop_assert_eq!(p.searches, vec![query.trim().to_string()]);
        }
    }
}
