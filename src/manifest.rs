//! `RUN_DIR/manifest.json`: the record of every stage run — what it read, what it wrote (with
//! content hashes and row counts), its resolved parameters, seed, timings and status. The runner
//! decides from it whether a stage is up to date, and a user audits a run by reading it.
//!
//! Updates take an exclusive lock on `RUN_DIR/.manifest.lock`, so stage shards run as separate
//! processes (a Slurm job array, say) can record their parts in one manifest.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{is_tmp_name, write_atomic};

pub(crate) const MANIFEST_FILE: &str = "manifest.json";
const LOCK_FILE: &str = ".manifest.lock";
const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        })
    }
}

fn first_version() -> u32 {
    1
}

/// A file or directory a stage read or wrote, identified by its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the run directory when inside it, absolute otherwise.
    pub path: String,
    pub sha256: String,
    /// Rows of a Parquet shard; absent for other files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Number of files hashed, for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
}

/// The part `i` of `n` of a stage's work; written `i/n` in the manifest and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

impl ShardSpec {
    pub const WHOLE: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// Whether item number `i` of the stage's input belongs to this part.
    pub(crate) fn owns(&self, i: usize) -> bool {
        i % self.count as usize == self.index as usize
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("--shard {s:?}: expected i/n with 0 <= i < n, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl From<ShardSpec> for String {
    fn from(s: ShardSpec) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ShardSpec {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One run of one stage (or one part of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub stage: String,
    pub round: u32,
    /// The optimizer step within the round, for the stages that repeat once per step (`train`,
    /// `apply`): 1..=`steps`. 0 for every other stage (and not written).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step: u32,
    /// How many steps the round had when this entry ran; 0 for a stage that does not step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub steps: u32,
    pub shard: ShardSpec,
    pub status: Status,
    pub params: Map<String, Value>,
    pub seed: u64,
    pub inputs: Vec<FileRecord>,
    pub outputs: Vec<FileRecord>,
    pub asl_version: String,
    /// The stage's semantic version when it ran (`Stage::version`): a stage whose output
    /// would change bumps it, and entries of an older version are rerun. Entries from before
    /// the field read as 1.
    #[serde(default = "first_version")]
    pub stage_version: u32,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The Slurm job that ran this part (`JOBID_TASK` for an array task), when it ran under
    /// Slurm (`asl submit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
}

/// The Slurm job this process runs as, from the variables Slurm sets in a job's environment:
/// `JOBID_TASK` for a task of a job array, `JOBID` otherwise, `None` outside Slurm.
pub(crate) fn slurm_job_from_env() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(job), Some(task)) => Some(format!("{job}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The pipeline the run was started with, so a single stage run by hand gets the same params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub path: String,
    pub name: String,
    pub seed: u64,
    pub rounds: u32,
    /// Parameters per stage, after `--set` overrides.
    pub params: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRecord>,
    pub entries: Vec<Entry>,
    /// Outputs deleted by checkpoint retention (`retention.rs`). Their entries stay `done`, so
    /// a pruned output never makes `asl run` rerun its stage; a stage that needs one as input
    /// fails with a line that says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<Pruned>,
}

/// One output removed by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// As recorded in the entry's outputs.
    pub path: String,
    pub stage: String,
    pub round: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step: u32,
    pub pruned_at: String,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            schema_version: SCHEMA_VERSION,
            pipeline: None,
            entries: Vec::new(),
            pruned: Vec::new(),
        }
    }
}

impl Manifest {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(MANIFEST_FILE)
    }

    /// Loads the manifest; a run dir without one has an empty manifest.
    pub fn load(run_dir: &Path) -> Result<Manifest> {
        let path = Self::path(run_dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: format!("not valid manifest JSON ({e})"),
        })?;
        if manifest.schema_version != SCHEMA_VERSION {
            return Err(Error::Manifest {
                path,
                message: format!(
                    "schema_version {} is not supported (this asl writes {SCHEMA_VERSION})",
                    manifest.schema_version
                ),
            });
        }
        Ok(manifest)
    }

    fn save(&self, run_dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        write_atomic(&Self::path(run_dir), text.as_bytes())
    }

    /// Loads, changes and saves the manifest under the run dir's lock.
    pub(crate) fn update<T>(run_dir: &Path, change: impl FnOnce(&mut Manifest) -> T) -> Result<T> {
        fs::create_dir_all(run_dir).at(run_dir)?;
        let lock_path = run_dir.join(LOCK_FILE);
        let lock = open_lock_file(&lock_path)?;
        lock.lock().at(&lock_path)?;
        let mut manifest = Manifest::load(run_dir)?;
        let out = change(&mut manifest);
        manifest.save(run_dir)?;
        Ok(out)
    }

    /// Whether retention removed this recorded output.
    pub fn is_pruned(&self, recorded: &str) -> bool {
        self.pruned.iter().any(|p| p.path == recorded)
    }

    /// The newest `done` entry of exactly this stage part. A later failed attempt does not
    /// hide it: outputs are replaced only when complete, so its outputs are still the last good
    /// ones (the hash check proves it).
    pub fn latest_done_part(
        &self,
        stage: &str,
        round: u32,
        step: u32,
        shard: ShardSpec,
    ) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| {
            e.stage == stage
                && e.round == round
                && e.step == step
                && e.shard == shard
                && e.status == Status::Done
        })
    }

    /// The outputs of a stage whose every part is done, looking back from `round` to the newest
    /// round where the stage ran (setup stages live in round 0). The parts are those of the
    /// newest complete split (`--shard i/n`), merged in shard order. For a stage that repeats
    /// once per optimizer step, these are the outputs of the round's last step (the step count
    /// of the newest done entry says which is last), so a step rerun by hand never passes for
    /// the round's result. A round where the stage has done parts but no complete split has no
    /// outputs: an earlier round's never stand in for them.
    pub fn done_outputs(&self, stage: &str, round: u32) -> Option<(u32, Vec<FileRecord>)> {
        let r = (0..=round).rev().find(|&r| {
            self.entries
                .iter()
                .any(|e| e.stage == stage && e.round == r && e.status == Status::Done)
        })?;
        let newest = self
            .entries
            .iter()
            .rev()
            .find(|e| e.stage == stage && e.round == r && e.status == Status::Done)?;
        let outputs = self.done_step_outputs(stage, r, newest.steps)?;
        Some((r, outputs))
    }

    /// The outputs of one step of a stepped stage in `round` (`step` 0: a stage that does not
    /// step): those of the newest split whose every part is done. A part of another split run
    /// by hand afterwards does not hide a complete one (its files are other files).
    pub fn done_step_outputs(&self, stage: &str, round: u32, step: u32) -> Option<Vec<FileRecord>> {
        let mut tried = Vec::new();
        for e in self.entries.iter().rev() {
            if e.stage != stage || e.round != round || e.step != step || e.status != Status::Done {
                continue;
            }
            let count = e.shard.count;
            if tried.contains(&count) {
                continue;
            }
            tried.push(count);
            let parts: Option<Vec<&Entry>> = (0..count)
                .map(|index| self.latest_done_part(stage, round, step, ShardSpec { index, count }))
                .collect();
            if let Some(parts) = parts {
                return Some(
                    parts
                        .iter()
                        .flat_map(|e| e.outputs.iter().cloned())
                        .collect(),
                );
            }
        }
        None
    }
}

/// The manifest's name for `path`: relative to the run dir when inside it.
pub(crate) fn record_path(run_dir: &Path, path: &Path) -> String {
    path.strip_prefix(run_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Resolves a recorded path back to a file path.
pub(crate) fn resolve_path(run_dir: &Path, recorded: &str) -> PathBuf {
    let p = Path::new(recorded);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        run_dir.join(p)
    }
}

/// Hashes a file, or a directory over its files (sorted relative paths and their hashes;
/// temporary files skipped).
#[cfg(test)]
fn hash_path(path: &Path) -> Result<(String, Option<u64>)> {
    let meta = fs::metadata(path).at(path)?;
    if !meta.is_dir() {
        return Ok((hash_file(path)?, None));
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in &files {
        let digest = hash_file(&path.join(rel))?;
        hasher.update(rel.as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.as_bytes());
        hasher.update(b"\n");
    }
    Ok((hex(&hasher.finalize()), Some(files.len() as u64)))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if is_tmp_name(&path) {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records a file or directory, with its row count when it is a Parquet shard. Hashes come
/// from the run's hash cache where a file is unchanged.
pub(crate) fn file_record(run_dir: &Path, path: &Path) -> Result<FileRecord> {
    let (sha256, files) = HashCache::with(run_dir, |cache| cache.hash_path(path))?;
    let rows = if path.extension().is_some_and(|e| e == "parquet") {
        Some(crate::shards::count_rows(path)?)
    } else {
        None
    };
    Ok(FileRecord {
        path: record_path(run_dir, path),
        sha256,
        rows,
        files,
    })
}

/// Whether every recorded output is present with its recorded hash (through the hash cache:
/// a file whose size, mtime and inode are unchanged is not read again), or was removed by
/// retention (`pruned` says which).
pub(crate) fn outputs_intact(run_dir: &Path, outputs: &[FileRecord], pruned: &[Pruned]) -> bool {
    HashCache::with(run_dir, |cache| {
        outputs.iter().all(|o| {
            pruned.iter().any(|p| p.path == o.path)
                || cache
                    .hash_path(&resolve_path(run_dir, &o.path))
                    .is_ok_and(|(sha, _)| sha == o.sha256)
        })
    })
}

/// `RUN_DIR/.hash-cache.json`: the SHA-256 of each file a run has hashed, with the size, mtime
/// (nanoseconds) and inode it had then. A file whose three are unchanged is not read again, so
/// resuming a long run re-hashes only what changed; any write changes the mtime (and a
/// replacement by rename the inode), so a changed file is still caught. The cache is only ever
/// a shortcut: a missing or unreadable cache file means hashing everything again, and two
/// processes saving at once lose entries, never correctness.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct HashCache {
    files: std::collections::BTreeMap<String, CachedHash>,
    #[serde(skip)]
    changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: u64,
    inode: u64,
    sha256: String,
}

pub(crate) const HASH_CACHE_FILE: &str = ".hash-cache.json";

impl HashCache {
    /// Runs `f` with the run dir's cache and saves it when `f` added to it. The cache is read
    /// from disk once per process and run dir (a resumed run checks thousands of outputs), and
    /// kept in memory while the process works on the same run dir.
    pub fn with<T>(run_dir: &Path, f: impl FnOnce(&mut HashCache) -> T) -> T {
        static MEMO: std::sync::Mutex<Option<(PathBuf, HashCache)>> = std::sync::Mutex::new(None);
        let path = run_dir.join(HASH_CACHE_FILE);
        let mut memo = MEMO
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, cache) = match memo.take() {
            Some((dir, cache)) if dir == run_dir => memo.insert((dir, cache)),
            _ => {
                let cache: HashCache = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                memo.insert((run_dir.to_path_buf(), cache))
            }
        };
        let out = f(cache);
        if cache.changed
            && run_dir.is_dir()
            && let Ok(bytes) = serde_json::to_vec(&*cache)
        {
            // A cache that cannot be saved costs time on the next run, nothing else.
            let _ = write_atomic(&path, &bytes);
            cache.changed = false;
        }
        out
    }

    /// As [`hash_path`], reading only files whose size, mtime or inode changed.
    pub(crate) fn hash_path(&mut self, path: &Path) -> Result<(String, Option<u64>)> {
        let meta = fs::metadata(path).at(path)?;
        if !meta.is_dir() {
            return Ok((self.hash_file(path, &meta)?, None));
        }
        let mut files = Vec::new();
        collect_files(path, path, &mut files)?;
        files.sort();
        let mut hasher = Sha256::new();
        for rel in &files {
            let file = path.join(rel);
            let meta = fs::metadata(&file).at(&file)?;
            let digest = self.hash_file(&file, &meta)?;
            hasher.update(rel.as_bytes());
            hasher.update(b"\0");
            hasher.update(digest.as_bytes());
            hasher.update(b"\n");
        }
        Ok((hex(&hasher.finalize()), Some(files.len() as u64)))
    }

    fn hash_file(&mut self, path: &Path, meta: &fs::Metadata) -> Result<String> {
        let key = fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .to_string_lossy()
            .into_owned();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        let stamp = |sha256: String| CachedHash {
            size: meta.len(),
            mtime_ns,
            inode,
            sha256,
        };
        if let Some(c) = self.files.get(&key)
            && *c == stamp(c.sha256.clone())
            && mtime_ns != 0
        {
            return Ok(c.sha256.clone());
        }
        let sha = hash_file(path)?;
        self.files.insert(key, stamp(sha.clone()));
        self.changed = true;
        Ok(sha)
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The right to work in a run dir, held for a whole command: `asl run` holds it alone, stage
/// commands share it (the parts of one stage, `--shard i/n`, run together as a Slurm array and
/// record themselves under the manifest's own lock). A second `asl run`, or a stage command
/// beside a running `asl run`, is refused with one line naming the holder instead of racing it
/// for the same outputs. The lock is the operating system's (`flock`): a killed holder releases
/// it, so a crash never leaves a run dir locked.
pub struct RunLock {
    file: File,
    exclusive: bool,
}

const RUN_LOCK_FILE: &str = ".run.lock";

/// A lock file, created empty if missing and never truncated on open (a holder may have
/// written its name into it).
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)
}

impl RunLock {
    /// Held alone (`asl run`); `what` says who holds it (written into the lock file).
    pub fn exclusive(run_dir: &Path, what: &str) -> Result<RunLock> {
        let (file, path) = Self::open(run_dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Self::busy(&path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(e).at(&path),
        }
        let holder = format!(
            "{what} (pid {}, since {})",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        file.set_len(0).at(&path)?;
        (&file).write_all(holder.as_bytes()).at(&path)?;
        Ok(RunLock {
            file,
            exclusive: true,
        })
    }

    /// Shared with other stage commands, refused while an `asl run` holds the run dir.
    pub fn shared(run_dir: &Path) -> Result<RunLock> {
        let (file, path) = Self::open(run_dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(RunLock {
                file,
                exclusive: false,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Self::busy(&path)),
            Err(std::fs::TryLockError::Error(e)) => Err(e).at(&path),
        }
    }

    fn open(run_dir: &Path) -> Result<(File, PathBuf)> {
        fs::create_dir_all(run_dir).at(run_dir)?;
        let path = run_dir.join(RUN_LOCK_FILE);
        let file = open_lock_file(&path)?;
        Ok((file, path))
    }

    fn busy(path: &Path) -> Error {
        let holder = fs::read_to_string(path).unwrap_or_default();
        let holder = match holder.trim() {
            "" => "stage commands (asl STAGE … --shard i/n)".to_string(),
            h => h.to_string(),
        };
        let dir = path.parent().unwrap_or(path);
        Error::input(
            dir,
            format!("run dir in use by {holder}; wait for it to finish (or stop it) and rerun"),
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.exclusive {
            // The holder's line goes with it; the lock itself is released on close.
            let _ = self.file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done_part(stage: &str, round: u32, index: u32, count: u32, path: &str) -> Entry {
        Entry {
            stage: stage.into(),
            round,
            step: 0,
            steps: 0,
            shard: ShardSpec { index, count },
            status: Status::Done,
            params: Map::new(),
            seed: 0,
            inputs: vec![],
            outputs: vec![FileRecord {
                path: path.into(),
                sha256: String::new(),
                rows: None,
                files: None,
            }],
            asl_version: String::new(),
            stage_version: 1,
            started_at: String::new(),
            finished_at: None,
            wall_s: None,
            error: None,
            slurm_job: None,
        }
    }

    /// One part of a new split run after a complete one does not hide it, and a round whose
    /// stage has parts but no complete split never falls back to an earlier round's outputs.
    #[test]
    fn done_outputs_take_the_newest_complete_split_of_the_round_or_none() {
        let paths = |m: &Manifest, round| {
            m.done_outputs("rollout", round)
                .map(|(r, o)| (r, o.into_iter().map(|f| f.path).collect::<Vec<_>>()))
        };
        let mut m = Manifest::default();
        m.entries.push(done_part("rollout", 1, 0, 1, "r1/a"));
        m.entries.push(done_part("rollout", 2, 0, 1, "r2/whole"));
        m.entries
            .push(done_part("rollout", 2, 1, 4, "r2/part-1-of-4"));
        assert_eq!(paths(&m, 2), Some((2, vec!["r2/whole".to_string()])));
        // Round 3 has only part 1 of 2: no outputs, and round 2's do not stand in.
        m.entries
            .push(done_part("rollout", 3, 1, 2, "r3/part-1-of-2"));
        assert_eq!(paths(&m, 3), None);
        m.entries
            .push(done_part("rollout", 3, 0, 2, "r3/part-0-of-2"));
        assert_eq!(
            paths(&m, 3),
            Some((
                3,
                vec!["r3/part-0-of-2".to_string(), "r3/part-1-of-2".to_string()]
            ))
        );
        // A round where the stage did not run at all looks back (setup stages in round 0).
        assert_eq!(paths(&m, 5).map(|(r, _)| r), Some(3));
    }

    /// The cache answers for an unchanged file without reading it, and a rewrite of the same
    /// size (new mtime or inode) is hashed again.
    #[test]
    fn hash_cache_reuses_unchanged_files_and_catches_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let file = run.join("shard.parquet.bin");
        fs::write(&file, b"first").unwrap();
        let first = HashCache::with(run, |c| c.hash_path(&file).unwrap().0);
        assert_eq!(first, hash_file(&file).unwrap());
        assert!(run.join(HASH_CACHE_FILE).is_file());

        // Poison the cached digest: an unchanged file is answered from the cache.
        let text = fs::read_to_string(run.join(HASH_CACHE_FILE)).unwrap();
        fs::write(
            run.join(HASH_CACHE_FILE),
            text.replace(&first, &"0".repeat(64)),
        )
        .unwrap();
        // The process keeps one run dir's cache in memory: touch another run dir so this one's
        // is read from disk again.
        let other = tempfile::tempdir().unwrap();
        HashCache::with(other.path(), |_| ());
        let cached = HashCache::with(run, |c| c.hash_path(&file).unwrap().0);
        assert_eq!(cached, "0".repeat(64));

        // Same size, new content (written through a new file and renamed: new inode and mtime).
        std::thread::sleep(std::time::Duration::from_millis(10));
        write_atomic(&file, b"secon").unwrap();
        let second = HashCache::with(run, |c| c.hash_path(&file).unwrap().0);
        assert_eq!(second, hash_file(&file).unwrap());
        assert_ne!(second, first);

        // A folder hashes to the same digest with and without the cache.
        let sub = run.join("model");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("a"), b"a").unwrap();
        fs::write(sub.join("b"), b"b").unwrap();
        let direct = hash_path(&sub).unwrap();
        assert_eq!(HashCache::with(run, |c| c.hash_path(&sub).unwrap()), direct);
        assert_eq!(HashCache::with(run, |c| c.hash_path(&sub).unwrap()), direct);
        // outputs_intact goes through the cache and still sees a change.
        let record = file_record(run, &sub).unwrap();
        assert!(outputs_intact(run, std::slice::from_ref(&record), &[]));
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(sub.join("b"), b"c").unwrap();
        assert!(!outputs_intact(run, std::slice::from_ref(&record), &[]));
        // A pruned output counts as intact.
        let pruned = Pruned {
            path: record.path.clone(),
            stage: "apply".into(),
            round: 1,
            step: 0,
            pruned_at: String::new(),
        };
        assert!(outputs_intact(run, &[record], &[pruned]));
    }
}
