//! Error type of the model layer.

use std::path::PathBuf;

/// Errors of the model layer; messages name the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: missing file ({what})", path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{}: I/O error: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: corrupt or unreadable safetensors: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: bad GGUF file: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    #[error("{}: tokenizer error: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenizer error: {0}")]
    Tokenize(String),
    #[error("unsupported model config: {0}")]
    Unsupported(String),
    #[error("{}: unsupported model: {msg}", path.display())]
    UnsupportedFile { path: PathBuf, msg: String },
    #[error("{}: chat template: {msg}", path.display())]
    ChatTemplate { path: PathBuf, msg: String },
    #[error("{}: missing or mis-shaped weight: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;
