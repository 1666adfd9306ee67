//! The library's one error type. Every variant renders as a single line that names the file (or
//! stage, or key) and what is wrong with it, because that line is what a user sees at the CLI.

use std::path::{Path, PathBuf};

/// Errors raised by the asl library. `anyhow` is used only at the binary edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Shard { path: PathBuf, message: String },
    #[error("{path}: broken manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Pipeline { path: PathBuf, message: String },
    #[error("parameter {key}: {message}")]
    Param { key: String, message: String },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    /// A Slurm command (`sbatch`, `squeue`) failed or could not be run.
    #[error("{command}: {message}")]
    Slurm { command: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn shard(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Shard {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn input(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn stage(stage: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Stage {
            stage: stage.into(),
            message: message.into(),
        }
    }

    pub(crate) fn param(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Param {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Attaches a path to `std::io` results, so no I/O error reaches the user without its file.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// Runs `f`, turning a panic inside it into `Err(on_panic(message))`. For calls into decoders
/// that panic on corrupt input instead of returning an error (the `parquet` and polars readers
/// do, found by fuzzing), and around each stage run, so a panic still ends as one error line and
/// a `failed` manifest entry. The binary's panic hook keeps messages from those crates off stderr.
pub fn catch_panic<T>(
    f: impl FnOnce() -> Result<T>,
    on_panic: impl FnOnce(String) -> Error,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(on_panic(
                what.lines().next().unwrap_or_default().to_string(),
            ))
        }
    }
}
