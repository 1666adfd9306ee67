//! File helpers shared by the model modules: JSON and safetensors I/O in the
//! Hugging Face folder layout, and atomic directory publication.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;

use super::error::{ModelError, Result};

/// Reads and parses a JSON file; `what` names the file's role in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes pretty JSON with a trailing newline.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

/// Loads every tensor of a HF folder as f32: `model.safetensors`, or the
/// shards listed in `model.safetensors.index.json`.
pub fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    load_safetensors_dir_as(dir, device, DType::F32)
}

/// [`load_safetensors_dir`] converting every tensor to `dtype` (whatever the file stores: f32,
/// bf16 or f16 checkpoints all load).
pub fn load_safetensors_dir_as(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = read_json(&index, "safetensors shard index")?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    } else {
        return Err(ModelError::MissingFile {
            path: single,
            what: "model weights (model.safetensors or model.safetensors.index.json)",
        });
    };
    let mut out = HashMap::new();
    for file in files {
        if !file.exists() {
            return Err(ModelError::MissingFile {
                path: file,
                what: "safetensors shard listed in the index",
            });
        }
        out.extend(load_safetensors_file_as(&file, device, dtype)?);
    }
    Ok(out)
}

/// Loads every tensor of one safetensors file as f32.
pub fn load_safetensors_dir_file(file: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    load_safetensors_file_as(file, device, DType::F32)
}

fn load_safetensors_file_as(
    file: &Path,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let ts = candle_core::safetensors::load(file, device).map_err(|e| ModelError::Safetensors {
        path: file.to_path_buf(),
        msg: e.to_string(),
    })?;
    ts.into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect()
}

/// Writes tensors (converted to f32) as one safetensors file with the
/// `{"format": "pt"}` metadata that `transformers` expects. Names are sorted.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?;
        let shape = t.dims().to_vec();
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bufs.push((name.clone(), shape, bytes));
    }
    let mut views = Vec::with_capacity(bufs.len());
    for (name, shape, bytes) in &bufs {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| ModelError::Safetensors {
                    path: path.to_path_buf(),
                    msg: format!("{name}: {e}"),
                })?;
        views.push((name.clone(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// A temporary sibling directory that is renamed onto `final_dir` by
/// [`StagingDir::publish`], or removed when dropped unpublished.
pub struct StagingDir {
    tmp: PathBuf,
    final_dir: PathBuf,
    published: bool,
}

impl StagingDir {
    /// Creates `<final_dir>.tmp-<pid>` (removing a stale one first).
    pub fn new(final_dir: &Path) -> Result<Self> {
        let name = final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "output directory {} has no file name",
                    final_dir.display()
                ))
            })?;
        let parent = final_dir.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        Ok(Self {
            tmp,
            final_dir: final_dir.to_path_buf(),
            published: false,
        })
    }

    /// The directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces `final_dir` (if present) by the staged directory.
    pub fn publish(mut self) -> Result<()> {
        if self.final_dir.exists() {
            std::fs::remove_dir_all(&self.final_dir)
                .map_err(|e| ModelError::io(&self.final_dir, e))?;
        }
        std::fs::rename(&self.tmp, &self.final_dir)
            .map_err(|e| ModelError::io(&self.final_dir, e))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
