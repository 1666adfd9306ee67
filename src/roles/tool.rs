//! How a role calls the search tool and how the results come back: the tool-call format.
//!
//! - `tags` (Search-R1's, the default): `<search> query </search>`, answered by
//!   `<information> … </information>` inside the same assistant turn.
//! - `qwen` (Qwen2.5 / Qwen3's, which the seed's reference code uses):
//!   `<tool_call>\n{"name": "search", "arguments": {"query": "…"}}\n</tool_call>`, answered by
//!   `<tool_response> … </tool_response>` in a tool turn that the model's own chat template
//!   renders (for Qwen: the assistant turn ends, a user turn holds the response, a new
//!   assistant turn opens).
//!
//! The parsers read both formats, so a trajectory parses the same whichever format its pipeline
//! chose; the prompts, the stop string, the guided-decoding segments and the warm-up's
//! demonstrations follow the chosen one.

use super::tags;

/// The tool-call format of a pipeline (`tool_format` of every model stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolFormat {
    #[default]
    Tags,
    Qwen,
}

/// The values `tool_format` takes, for error messages.
pub(crate) const TOOL_FORMATS: &str = "tags, qwen";

/// The tags of a tool result, in either format: parsers remove these blocks before they read
/// the model's own text.
pub(crate) const RESULT_TAGS: [&str; 2] = ["information", "tool_response"];

/// The text around a search result in the `tags` format (the `qwen` format's comes from the
/// model's chat template).
pub(crate) const TAGS_RESULT: (&str, &str) = ("\n\n<information>", "</information>\n\n");

/// `<tool_call>` JSON starts with this (`"query": ` follows); the guide forces it.
const QWEN_CALL_PREFIX: &str = "\n{\"name\": \"search\", \"arguments\": {\"query\": \"";
const QWEN_CALL_SUFFIX: &str = "\"}}\n";

impl ToolFormat {
    pub fn parse(name: &str) -> Option<ToolFormat> {
        match name {
            "tags" => Some(ToolFormat::Tags),
            "qwen" => Some(ToolFormat::Qwen),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Tags => "tags",
            ToolFormat::Qwen => "qwen",
        }
    }

    /// The tag a call is written in.
    pub(crate) fn call_tag(self) -> &'static str {
        match self {
            ToolFormat::Tags => "search",
            ToolFormat::Qwen => "tool_call",
        }
    }

    /// The text that ends a call: the model stops there and the tool answers.
    pub(crate) fn call_close(self) -> &'static str {
        match self {
            ToolFormat::Tags => "</search>",
            ToolFormat::Qwen => "</tool_call>",
        }
    }

    /// The tag the result is wrapped in.
    pub(crate) fn result_tag(self) -> &'static str {
        match self {
            ToolFormat::Tags => "information",
            ToolFormat::Qwen => "tool_response",
        }
    }

    /// A call for `query`, as the model writes it (the warm-up's demonstrations).
    pub fn call(self, query: &str) -> String {
        match self {
            ToolFormat::Tags => format!("<search>{query}</search>"),
            // Qwen's spacing (Python's json.dumps); the query as a JSON string.
            ToolFormat::Qwen => format!(
                "<tool_call>\n{{\"name\": \"search\", \"arguments\": {{\"query\": {}}}}}\n</tool_call>",
                serde_json::Value::from(query)
            ),
        }
    }

    /// What the guide forces after the call's opening tag, and before its closing tag.
    pub(crate) fn guided_call(self) -> (&'static str, &'static str) {
        match self {
            ToolFormat::Tags => ("", ""),
            ToolFormat::Qwen => (QWEN_CALL_PREFIX, QWEN_CALL_SUFFIX),
        }
    }

    /// A call as the prompts show it.
    pub(crate) fn call_example(self) -> &'static str {
        match self {
            ToolFormat::Tags => "<search> query </search>",
            ToolFormat::Qwen => {
                "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"...\"}}\n</tool_call>"
            }
        }
    }

    /// Where the prompts say results come back ("between X and Y").
    pub(crate) fn results_example(self) -> &'static str {
        match self {
            ToolFormat::Tags => "<information> and </information>",
            ToolFormat::Qwen => "<tool_response> and </tool_response>",
        }
    }
}

/// The model's own text: `completion` without tool results of either format.
pub(crate) fn own_text(completion: &str) -> String {
    RESULT_TAGS.iter().fold(completion.to_string(), |t, tag| {
        tags::without_blocks(&t, tag)
    })
}

/// Every tool result in `completion` (either format), in order, one per line: what the attempt
/// read from the search engine.
pub(crate) fn results_read(completion: &str) -> String {
    tags::blocks_in_order(completion, &RESULT_TAGS)
        .into_iter()
        .map(|(_, block)| block)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The queries of every complete call in `own` (tool results already removed), in order,
/// whichever format wrote them. A `<tool_call>` whose JSON does not parse still counts when its
/// `"query"` string can be read (a guided call cut by its budget); one naming another tool or
/// without a query counts as an empty query.
pub fn queries(own: &str) -> Vec<String> {
    tags::blocks_in_order(own, &["search", "tool_call"])
        .into_iter()
        .map(|(tag, block)| match tag {
            "search" => block.trim().to_string(),
            _ => qwen_query(block),
        })
        .collect()
}

/// The `query` argument of a `<tool_call>` body.
fn qwen_query(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body.trim()) {
        if v.get("name").and_then(|n| n.as_str()) != Some("search") {
            return String::new();
        }
        return v
            .pointer("/arguments/query")
            .and_then(|q| q.as_str())
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    // Not JSON (a quote inside the query, a cut call): the text of the "query" string.
    let Some(key) = body.find("\"query\"") else {
        return String::new();
    };
    let rest = body[key + "\"query\"".len()..].trim_start();
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.rfind('"').unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_in_both_formats_and_results_are_not_the_models() {
        for format in [ToolFormat::Tags, ToolFormat::Qwen] {
            let text = format!(
                "<think>t</think>{}\n<{r}>Doc 1 <search>planted</search></{r}>{}",
                format.call("2001 film \"director\""),
                format.call("Kubrick"),
                r = format.result_tag()
            );
            assert_eq!(
                queries(&own_text(&text)),
                ["2001 film \"director\"", "Kubrick"],
                "{format:?}: {text}"
            );
        }
        assert_eq!(
            ToolFormat::Qwen.call("q"),
            "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}\n</tool_call>"
        );
        // The guide's forced pieces around a query give the same call.
        let (prefix, suffix) = ToolFormat::Qwen.guided_call();
        assert_eq!(
            format!("<tool_call>{prefix}q{suffix}</tool_call>"),
            ToolFormat::Qwen.call("q")
        );
    }

    /// What an attempt read: every result block of either format, in order, and nothing of
    /// the model's own text.
    #[test]
    fn results_read_are_the_tool_results_in_order() {
        let text = "<think>Paris?</think><search>q</search><information>Doc A</information>\
                    <tool_call>{}</tool_call><tool_response>Doc B</tool_response>\
                    <information>Doc C</information><answer>Paris</answer>";
        assert_eq!(results_read(text), "Doc A\nDoc B\nDoc C");
        assert_eq!(results_read("<answer>Paris</answer>"), "");
    }

    #[test]
    fn a_broken_or_foreign_tool_call_reads_as_well_as_it_can() {
        let cut = "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"a \"b\" c\"}}\n</tool_call>";
        assert_eq!(queries(cut), ["a \"b\" c"]);
        let other =
            "<tool_call>{\"name\": \"calc\", \"arguments\": {\"query\": \"1+1\"}}</tool_call>";
        assert_eq!(queries(other), [""]);
        assert_eq!(queries("<tool_call>nonsense</tool_call>"), [""]);
    }
}
