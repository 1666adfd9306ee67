//! File helpers shared by the model modules: JSON and safetensors I/O in the
//! Hugging Face folder layout, and atomic directory publication.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;

use super::error::{ModelError, Result};

/// Reads and parses a JSON file; `what` names the file's role in errors.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
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
pub(crate) fn load_safetensors_dir_as(
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

/// Tensors this process has read, by file: `asl run` loads a checkpoint in nearly every stage
/// of a round, and every checkpoint hard-links the shard of weights that do not train (481 of
/// SmolLM2's 538 MB under the default's last-4-block training), so later stages take those
/// tensors from here instead of reading, copying and page-faulting them in again. A file is
/// known by (device, inode, size, mtime): a rewrite is a new inode or a new mtime, as in the
/// manifest's hash cache. Tensors are immutable (a trainer copies what it trains into `Var`s),
/// so sharing them is safe. CPU only; least recently used files go first beyond
/// [`LOAD_CACHE_BYTES`].
struct LoadCache {
    entries: Vec<(FileKey, u64, HashMap<String, Tensor>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    dtype: DType,
}

/// What [`LoadCache`] keeps at most: the shared shard, a trained shard and a second model (a
/// KL reference) of SmolLM2's size.
const LOAD_CACHE_BYTES: u64 = 1536 << 20;

static LOAD_CACHE: std::sync::Mutex<LoadCache> = std::sync::Mutex::new(LoadCache {
    entries: Vec::new(),
});

impl FileKey {
    #[cfg(unix)]
    fn of(file: &Path, dtype: DType) -> Option<FileKey> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(file).ok()?;
        Some(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            dtype,
        })
    }

    #[cfg(not(unix))]
    fn of(_file: &Path, _dtype: DType) -> Option<FileKey> {
        None
    }
}

impl LoadCache {
    fn get(&mut self, key: &FileKey) -> Option<HashMap<String, Tensor>> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        let entry = self.entries.remove(i);
        let tensors = entry.2.clone();
        self.entries.push(entry);
        Some(tensors)
    }

    fn put(&mut self, key: FileKey, tensors: &HashMap<String, Tensor>) {
        let bytes: u64 = tensors
            .values()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        if bytes > LOAD_CACHE_BYTES {
            return;
        }
        self.entries.retain(|(k, _, _)| k != &key);
        self.entries.push((key, bytes, tensors.clone()));
        while self.entries.iter().map(|(_, b, _)| b).sum::<u64>() > LOAD_CACHE_BYTES {
            self.entries.remove(0);
        }
    }
}

fn load_safetensors_file_as(
    file: &Path,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let key = device.is_cpu().then(|| FileKey::of(file, dtype)).flatten();
    let cache = || LOAD_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = &key
        && let Some(tensors) = cache().get(key)
    {
        return Ok(tensors);
    }
    let tensors = read_safetensors_file_as(file, device, dtype)?;
    if let Some(key) = key {
        cache().put(key, &tensors);
    }
    Ok(tensors)
}

fn read_safetensors_file_as(
    file: &Path,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |msg: String| ModelError::Safetensors {
        path: file.to_path_buf(),
        msg,
    };
    let io = |e: std::io::Error| ModelError::io(file, e);
    let mut f = std::fs::File::open(file).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || header_len > size - 8 {
        return Err(bad(format!(
            "header of {header_len} bytes in a file of {size} (at most {MAX_HEADER_BYTES})"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = HashMap::with_capacity(entries.len());
    let mut bytes = Vec::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let info: TensorInfo =
            serde_json::from_value(entry).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let stored = candle_dtype(&info.dtype).ok_or_else(|| {
            bad(format!(
                "tensor {name}: dtype {} is not supported",
                info.dtype
            ))
        })?;
        let [start, end] = info.data_offsets;
        let elems = info
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let expected = elems.and_then(|n| n.checked_mul(stored.size_in_bytes() as u64));
        if end < start || data_start + end > size || expected != Some(end - start) {
            return Err(bad(format!(
                "tensor {name}: offsets {start}..{end} do not hold shape {:?} of {} in a file of {size} bytes",
                info.shape, info.dtype
            )));
        }
        // One tensor's bytes at a time, converted on arrival: a load holds the model once, in
        // the requested dtype, plus the tensor being read.
        bytes.resize((end - start) as usize, 0);
        f.seek(SeekFrom::Start(data_start + start)).map_err(io)?;
        f.read_exact(&mut bytes).map_err(io)?;
        let t = Tensor::from_raw_buffer(&bytes, stored, &info.shape, device)?.to_dtype(dtype)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One entry of a safetensors header.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The candle dtype of a safetensors dtype name, for the dtypes checkpoints use.
fn candle_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Writes tensors (converted to f32) as one safetensors file with the
/// `{"format": "pt"}` metadata that `transformers` expects. Names are sorted.
pub(crate) fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
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
pub(crate) struct StagingDir {
    tmp: PathBuf,
    final_dir: PathBuf,
    published: bool,
}

impl StagingDir {
    /// Creates `.<final_dir>.asl-tmp-<host>.<pid>` (removing a stale one first): the run's temporary
    /// name, so a killed write is cleared like any other when its stage runs again.
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
        let tmp = crate::fsutil::tmp_path_for(&parent.join(&name));
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
    pub(crate) fn publish(mut self) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file from a header and data bytes.
    fn file(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(format!("t{}.safetensors", header.len()));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A file read again comes from the process's cache (the very same tensors) until it is
    /// replaced by a rename, as every asl write is; another dtype is another entry.
    #[test]
    fn a_file_read_again_comes_from_the_cache_until_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let write = |v: f32| {
            let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
            let tmp = file(dir.path(), header, &v.to_le_bytes());
            std::fs::rename(tmp, &path).unwrap();
        };
        let value = |t: &HashMap<String, Tensor>| {
            t["w"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        write(1.0);
        let a = load_safetensors_file_as(&path, &Device::Cpu, DType::F32).unwrap();
        let b = load_safetensors_file_as(&path, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(a["w"].id(), b["w"].id());
        let half = load_safetensors_file_as(&path, &Device::Cpu, DType::BF16).unwrap();
        assert_eq!(half["w"].dtype(), DType::BF16);
        write(2.0);
        let c = load_safetensors_file_as(&path, &Device::Cpu, DType::F32).unwrap();
        assert_ne!(a["w"].id(), c["w"].id());
        assert_eq!((value(&a), value(&c)), (1.0, 2.0));
    }

    #[test]
    fn reads_each_tensor_in_the_requested_dtype_and_refuses_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ok = file(
            dir.path(),
            r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &data,
        );
        let t = load_safetensors_file_as(&ok, &Device::Cpu, DType::BF16).unwrap();
        assert_eq!(t["w"].dtype(), DType::BF16);
        assert_eq!(
            t["w"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [1.5, -2.0]
        );
        for (header, what) in [
            (
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
                "shape",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
                "offsets",
            ),
            (
                r#"{"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#,
                "dtype",
            ),
            (r#"{"w":[1,2]}"#, "tensor w"),
            ("not json", "JSON"),
        ] {
            let path = file(dir.path(), header, &data);
            let e = load_safetensors_file_as(&path, &Device::Cpu, DType::F32)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(what) && e.contains(&*path.to_string_lossy()),
                "{e}"
            );
        }
        // A header length larger than the file is refused before anything is allocated.
        let huge = dir.path().join("huge.safetensors");
        std::fs::write(&huge, u64::MAX.to_le_bytes()).unwrap();
        let e = load_safetensors_file_as(&huge, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header of"), "{e}");
    }
}
