//! A Hugging Face model folder as a whole: the network ([`super::llama::Model`]), its tokenizer,
//! its chat template and its end-of-sequence tokens, checked against each other when loaded.

use std::path::Path;

use candle_core::Device;

use super::chat::ChatTemplate;
use super::config::EosTokenId;
use super::error::{ModelError, Result};
use super::io::read_json;
use super::llama::Model;
use super::placement::Placement;

/// Reads `dir/tokenizer.json`. A file saved after a call with `truncation` or `padding` keeps
/// those settings, and the Rust tokenizer would apply them to every prompt and tool result
/// (cutting a long prompt's assistant header off); transformers resets both on each call, so
/// they are cleared here too.
pub(crate) fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path,
            what: "tokenizer.json",
        });
    }
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| ModelError::Tokenizer {
            path,
            msg: e.to_string(),
        })?
        .with_padding(None);
    Ok(tokenizer)
}

/// A loaded HF folder: model, tokenizer and chat template.
pub struct HfModel {
    pub model: Model,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
    eos_ids: Vec<u32>,
}

impl HfModel {
    /// Loads model (f32), `tokenizer.json` and the chat template from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_on(dir, &Placement::f32_on(device))
    }

    /// [`HfModel::load`] with the model in `placement`'s device and dtype.
    pub fn load_on(dir: &Path, placement: &Placement) -> Result<Self> {
        let model = Model::load_on(dir, placement)?;
        let mut eos_ids = model.config().eos_ids();
        for id in generation_eos_ids(dir)? {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let tokenizer = load_tokenizer(dir)?;
        // An id past the embedding (tokens added to the tokenizer without resizing the model)
        // would index past the logits when a guide forces it.
        // The largest id, not the count: ids may have gaps.
        let ids_end = tokenizer
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let rows = model.config().vocab_size;
        if ids_end > rows {
            return Err(ModelError::Tokenizer {
                path: dir.join("tokenizer.json"),
                msg: format!(
                    "token id {} is past the model's vocab_size {rows}: the added tokens have no embedding (resize the model's embeddings)",
                    ids_end - 1
                ),
            });
        }
        let chat = ChatTemplate::load(dir)?;
        check_template_tokens(dir, &chat, &tokenizer)?;
        Ok(Self {
            model,
            tokenizer,
            chat,
            eos_ids,
        })
    }

    /// Token ids that end a sequence: `eos_token_id` of `config.json` and of
    /// `generation_config.json` (Llama 3 and Qwen list their end-of-turn tokens there).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// `(role, content)` messages as prompt token ids, rendered by the folder's chat template
    /// with the assistant header at the end.
    pub fn encode_chat(&self, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
        let text = self.chat.render_pairs(messages, true)?;
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Refuses a chat template that writes special tokens (`<|…|>`, the end of a turn) the
/// tokenizer does not have: they would be split into ordinary pieces and the model would never
/// see its turn markers.
fn check_template_tokens(
    dir: &Path,
    chat: &ChatTemplate,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<()> {
    let text = chat.render_pairs(&[("system", "s"), ("user", "u"), ("assistant", "a")], true)?;
    let mut names: Vec<&str> = text
        .match_indices("<|")
        .filter_map(|(at, _)| text[at..].find("|>").map(|end| &text[at..at + end + 2]))
        .filter(|t| !t[2..t.len() - 2].contains(char::is_whitespace))
        .collect();
    names.push(chat.end_of_turn());
    for name in names {
        if tokenizer.token_to_id(name).is_none() {
            return Err(ModelError::Tokenizer {
                path: dir.join("tokenizer.json"),
                msg: format!(
                    "no token {name:?}, which the chat template ({}) writes",
                    chat.source().display()
                ),
            });
        }
    }
    Ok(())
}

/// `eos_token_id` of `dir/generation_config.json` (one id or a list), if the file has one.
fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = read_json(&path, "generation_config.json")?;
    match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(e) => serde_json::from_value::<EosTokenId>(e.clone())
            .map(|e| e.ids())
            .map_err(|_| ModelError::UnsupportedFile {
                path,
                msg: format!("eos_token_id {e} is neither an id nor a list of ids"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::tiny_model;

    /// A `tokenizer.json` saved with truncation and padding on loads with both off, as
    /// transformers treats them.
    #[test]
    fn saved_truncation_and_padding_are_cleared() {
        let Some(tiny) = tiny_model(3) else { return };
        let mut saved = tokenizers::Tokenizer::from_file(tiny.join("tokenizer.json")).unwrap();
        saved
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 4,
                ..Default::default()
            }))
            .unwrap()
            .with_padding(Some(tokenizers::PaddingParams {
                strategy: tokenizers::PaddingStrategy::Fixed(64),
                ..Default::default()
            }));
        let dir = tempfile::tempdir().unwrap();
        saved
            .save(dir.path().join("tokenizer.json"), false)
            .unwrap();
        let text = "one two three four five six seven eight nine ten";
        assert_eq!(saved.encode(text, false).unwrap().get_ids().len(), 64);
        let loaded = load_tokenizer(dir.path()).unwrap();
        let ids = loaded.encode(text, false).unwrap().get_ids().len();
        assert!((5..64).contains(&ids), "{ids} ids");
    }

    /// A tokenizer with more tokens than the model has embedding rows is refused at load.
    #[test]
    fn a_tokenizer_larger_than_the_embedding_is_refused() {
        let Some(tiny) = tiny_model(3) else { return };
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&tiny).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        let mut tok = load_tokenizer(dir.path()).unwrap();
        HfModel::load(dir.path(), &Device::Cpu).unwrap();
        tok.add_tokens([tokenizers::AddedToken::from("<extra-tool-tag>", true)])
            .unwrap();
        tok.save(dir.path().join("tokenizer.json"), false).unwrap();
        let e = HfModel::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("vocab_size"),
            "{e}"
        );
    }
}
