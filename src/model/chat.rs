//! Chat templates rendered by the template itself: the `chat_template` a Hugging Face folder
//! ships (`chat_template.jinja`, or the `chat_template` of `tokenizer_config.json`, a string or
//! a list of named templates) run by `minijinja` with the conventions of `transformers`'
//! `apply_chat_template`: `trim_blocks` and `lstrip_blocks`, loop controls, Python string and
//! dict methods (`minijinja-contrib`'s pycompat), `raise_exception`, a `tojson` that writes
//! what Python's `json.dumps` writes (`", "` and `": "`, `indent`, non-ASCII kept), and the
//! variables `messages`, `tools`, `add_generation_prompt`, `bos_token` and `eos_token`.
//! `strftime_now` is not defined, so a template that dates its prompt (Llama 3.x) takes its
//! fixed fallback and prompts stay the same from day to day (determinism).
//!
//! A folder without a template gets ChatML, SmolLM2's format.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::json;

use super::error::{ModelError, Result};
use super::io::read_json;

/// The name the template is registered under (no extension: no auto-escaping).
const NAME: &str = "chat";
/// SmolLM2's template (ChatML with its default system turn): the format of a folder without one.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A folder's chat format: its template, the special tokens it names, and the text that closes
/// an assistant turn (found by rendering one, see [`ChatTemplate::end_of_turn`]).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for error messages.
    source: PathBuf,
    bos_token: String,
    eos_token: String,
    end_of_turn: String,
}

impl ChatTemplate {
    /// The template of the HF folder `dir`; ChatML when it has none.
    pub fn load(dir: &Path) -> Result<ChatTemplate> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            read_json(&config_path, "tokenizer_config.json")?
        } else {
            json!({})
        };
        let token = |key: &str| -> String {
            match config.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            }
        };
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let jinja = dir.join("chat_template.jinja");
        let (source, text) = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?;
            (jinja, text)
        } else {
            match config.get("chat_template") {
                Some(serde_json::Value::String(t)) => (config_path, t.clone()),
                Some(serde_json::Value::Array(named)) => {
                    let default = named
                        .iter()
                        .find(|t| t.get("name") == Some(&json!("default")));
                    let text = default
                        .and_then(|t| t.get("template"))
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| ModelError::UnsupportedFile {
                            path: config_path.clone(),
                            msg: "chat_template is a list without a \"default\" template".into(),
                        })?;
                    (config_path, text.to_string())
                }
                None | Some(serde_json::Value::Null) => (
                    PathBuf::from("ChatML (the folder has no chat template)"),
                    CHATML_TEMPLATE.into(),
                ),
                Some(other) => {
                    return Err(ModelError::UnsupportedFile {
                        path: config_path,
                        msg: format!("chat_template is neither a string nor a list: {other}"),
                    });
                }
            }
        };
        ChatTemplate::new(&text, source, bos, eos)
    }

    /// A template from its source text.
    pub fn new(text: &str, source: PathBuf, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, text.to_string())
            .map_err(|e| template_error(&source, &e))?;
        let mut template = ChatTemplate {
            env,
            source,
            bos_token,
            eos_token,
            end_of_turn: String::new(),
        };
        template.end_of_turn = template.find_end_of_turn()?;
        Ok(template)
    }

    /// Where the template came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// `messages` (`{"role", "content", …}` objects) as the model's prompt text, with the
    /// assistant header at the end when `add_generation_prompt`; `tools` as the template reads
    /// them (JSON schemas), if any.
    pub(crate) fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| template_error(&self.source, &e))?;
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), json!(messages));
        ctx.insert("add_generation_prompt".into(), json!(add_generation_prompt));
        ctx.insert("bos_token".into(), json!(self.bos_token));
        ctx.insert("eos_token".into(), json!(self.eos_token));
        // As `apply_chat_template`: `tools` and `documents` are defined, `None` when not given.
        ctx.insert(
            "tools".into(),
            tools.cloned().unwrap_or(serde_json::Value::Null),
        );
        ctx.insert("documents".into(), serde_json::Value::Null);
        template
            .render(Value::from_serialize(&ctx))
            .map_err(|e| template_error(&self.source, &e))
    }

    /// [`ChatTemplate::render`] of `(role, content)` pairs.
    pub(crate) fn render_pairs(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        self.render(&messages, None, add_generation_prompt)
    }

    /// The text that closes an assistant turn (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama
    /// 3's): a stop string for sampling and the end of a demonstration for the warm-up.
    pub fn end_of_turn(&self) -> &str {
        &self.end_of_turn
    }

    /// The text around a tool result, as the template renders a `tool` message after an
    /// assistant call and opens the next assistant turn: `(before, after)`. When the template
    /// does not wrap the result in `<result_tag>` itself (ChatML), the wrap is added inside.
    pub(crate) fn tool_turn(&self, result_tag: &str) -> Result<(String, String)> {
        const CALL: &str = "ASL-TOOL-CALL-PROBE";
        const BODY: &str = "ASL-TOOL-RESULT-PROBE";
        let messages = [
            json!({"role": "system", "content": "s"}),
            json!({"role": "user", "content": "u"}),
            json!({"role": "assistant", "content": CALL}),
            json!({"role": "tool", "content": BODY}),
        ];
        let text = self.render(&messages, None, true)?;
        let split = text.rfind(CALL).and_then(|at| {
            let rest = &text[at + CALL.len()..];
            let body = rest.find(BODY)?;
            Some((
                rest[..body].to_string(),
                rest[body + BODY.len()..].to_string(),
            ))
        });
        let Some((mut before, mut after)) = split else {
            return Err(ModelError::ChatTemplate {
                path: self.source.clone(),
                msg: "it renders no tool message after an assistant turn".into(),
            });
        };
        let open = format!("<{result_tag}>");
        if !before.trim_end().ends_with(&open) {
            before.push_str(&format!("{open}\n"));
            after.insert_str(0, &format!("\n</{result_tag}>"));
        }
        Ok((before, after))
    }

    /// Renders a user turn with the generation prompt and the same conversation with an
    /// assistant answer; what follows the answer, up to the first line break, closes a turn.
    /// Falls back to `eos_token` when the template does not show an answer that way.
    fn find_end_of_turn(&self) -> Result<String> {
        const ANSWER: &str = "ASL-END-OF-TURN-PROBE";
        let conversation = [("system", "s"), ("user", "u"), ("assistant", ANSWER)];
        let full = self.render_pairs(&conversation, false)?;
        let end = full
            .rfind(ANSWER)
            .map(|at| full[at + ANSWER.len()..].trim_start_matches([' ', '\n']))
            .map(|rest| {
                rest.split('\n')
                    .next()
                    .unwrap_or_default()
                    .trim_end()
                    .to_string()
            })
            .filter(|end| !end.is_empty())
            .unwrap_or_else(|| self.eos_token.clone());
        if end.is_empty() {
            return Err(ModelError::ChatTemplate {
                path: self.source.clone(),
                msg: "it shows no end to an assistant turn and there is no eos_token".into(),
            });
        }
        Ok(end)
    }
}

fn template_error(source: &Path, e: &minijinja::Error) -> ModelError {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    ModelError::ChatTemplate {
        path: source.to_path_buf(),
        msg: msg.replace('\n', " "),
    }
}

/// HF's `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// HF's `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, keys in their order.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if sort_keys == Some(true) {
        sort(&mut json);
    }
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &json,
                &mut serde_json::Serializer::with_formatter(&mut out, fmt),
            )
        }
        None => serde::Serialize::serialize(
            &json,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonCompact),
        ),
    };
    written.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

fn sort(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort),
        _ => {}
    }
}

/// `json.dumps`' default separators, `", "` and `": "`, on one line.
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> ChatTemplate {
        ChatTemplate::new(text, "t".into(), "<s>".into(), "</s>".into()).unwrap()
    }

    #[test]
    fn chatml_is_what_smollm2_got_before() {
        let t = template(CHATML_TEMPLATE);
        let text = t
            .render_pairs(&[("system", "S"), ("user", "U")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.end_of_turn(), "<|im_end|>");
        // Without a system turn SmolLM2's default one comes first.
        assert_eq!(
            t.render_pairs(&[("user", "Hi")], true).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_tool_turn_is_what_the_template_puts_around_a_tool_message() {
        // ChatML renders a `tool` turn without tags: the response wrap is added inside it.
        let (before, after) = template(CHATML_TEMPLATE)
            .tool_turn("tool_response")
            .unwrap();
        assert_eq!(before, "<|im_end|>\n<|im_start|>tool\n<tool_response>\n");
        assert_eq!(
            after,
            "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let t = template(
            "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': [1, 2.5, 'é\"']} | tojson(sort_keys=true) }}{{ eos_token }}",
        );
        let tools = json!([{"name": "search", "parameters": {"q": {"type": "string"}, "k": []}}]);
        let text = t.render(&[], Some(&tools), false).unwrap();
        assert_eq!(
            text,
            "[{\"name\": \"search\", \"parameters\": {\"q\": {\"type\": \"string\"}, \"k\": []}}]|{\n  \"name\": \"search\",\n  \"parameters\": {\n    \"q\": {\n      \"type\": \"string\"\n    },\n    \"k\": []\n  }\n}|{\"a\": [1, 2.5, \"é\\\"\"], \"b\": 1}</s>"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_one_line_naming_the_source() {
        let t = template(
            "{% if messages|length == 0 %}{{ raise_exception('no messages') }}{% endif %}",
        );
        let e = t.render(&[], None, true).unwrap_err().to_string();
        assert!(
            e.starts_with("t: ") && e.contains("no messages") && !e.contains('\n'),
            "{e}"
        );
        let e = ChatTemplate::new(
            "{% for x in %}",
            "bad.jinja".into(),
            String::new(),
            "</s>".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("bad.jinja: chat template") && !e.contains('\n'),
            "{e}"
        );
    }
}
