//! Crash-safe file output. Every file asl writes goes to a temporary name in the same directory,
//! is fsynced, and is renamed into place only when complete, so a crash (even `kill -9`) can never
//! leave a half-written file under a name that looks finished.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Marker in the names of temporary files; anything carrying it is never taken for an output.
pub(crate) const TMP_MARKER: &str = ".asl-tmp-";

/// The temporary name used while `path` is being written: `.NAME.asl-tmp-HOST.PID`.
pub(crate) fn tmp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}{TMP_MARKER}{}.{}",
        this_host(),
        std::process::id()
    ))
}

/// This machine's name as temporary names carry it (letters, digits and '-'): parts of one
/// stage may run on several nodes of a cluster over one shared folder.
fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = raw
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if host.is_empty() { "host".into() } else { host }
    })
}

/// Whether the temporary `path` may still be written by another process: one of another host
/// (its liveness cannot be seen from here: a sibling part on another node), or one of this
/// host that is still running (pid from the name, liveness from `/proc`, so elsewhere every
/// temporary of this host counts as stale). Names without a host (older runs) are this host's.
fn written_by_another_live_process(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((_, suffix)) = name.rsplit_once(TMP_MARKER) else {
        return false;
    };
    let (host, pid) = suffix.rsplit_once('.').unwrap_or((this_host(), suffix));
    if host != this_host() {
        return true;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    pid != std::process::id() && Path::new("/proc").join(pid.to_string()).exists()
}

pub fn is_tmp_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(TMP_MARKER))
}

/// A file being written under a temporary name; `commit` makes it visible atomically. Dropping
/// it uncommitted removes the temporary file.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        let tmp = tmp_path_for(dest);
        let file = File::create(&tmp).at(&tmp)?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    pub(crate) fn try_clone_file(&self) -> Result<File> {
        self.file
            .as_ref()
            .expect("AtomicFile used after commit")
            .try_clone()
            .at(&self.tmp)
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        file.sync_all().at(&self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).at(&self.dest)?;
        sync_dir(&self.dest);
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = AtomicFile::create(dest)?;
    out.file().write_all(bytes).at(&out.tmp)?;
    out.commit()
}

/// Makes a rename durable. Best effort: not every filesystem lets a directory be fsynced.
fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// Removes temporary files that a killed run left in `dir` (not recursive). A temporary file of
/// a process that is still running is left alone: parts of one stage (`--shard i/n`) write into
/// the same folder at the same time, and one part starting must not delete another's
/// half-written output.
pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.at(dir)?.path();
        if is_tmp_name(&path) && !written_by_another_live_process(&path) {
            if path.is_dir() {
                fs::remove_dir_all(&path).at(&path)?;
            } else {
                fs::remove_file(&path).at(&path)?;
            }
        }
    }
    Ok(())
}

/// Makes `dest` a folder holding the files of `src` (not its subfolders), hard-linked where the
/// file system allows and copied where it does not, built under a temporary name and renamed
/// into place when complete. For checkpoints inside a run dir: asl never changes a written file
/// in place (every write is a new file renamed over the old), so a link is as safe as a copy.
pub(crate) fn link_folder(src: &Path, dest: &Path) -> Result<()> {
    let tmp = tmp_path_for(dest);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir_all(&tmp).at(&tmp)?;
    for entry in fs::read_dir(src).at(src)? {
        let path = entry.at(src)?.path();
        if path.is_file() && !is_tmp_name(&path) {
            let to = tmp.join(path.file_name().expect("a file has a name"));
            if fs::hard_link(&path, &to).is_err() {
                fs::copy(&path, &to).at(&to)?;
            }
        }
    }
    if dest.exists() {
        fs::remove_dir_all(dest).at(dest)?;
    }
    fs::rename(&tmp, dest).at(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_go_but_a_running_processs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = |pid: u32| dir.path().join(format!(".out.parquet{TMP_MARKER}{pid}"));
        // pid 1 is always running; u32::MAX never is; our own are ours to clear.
        for pid in [1, u32::MAX, std::process::id()] {
            fs::write(tmp(pid), b"half").unwrap();
        }
        fs::write(dir.path().join("out.parquet"), b"done").unwrap();
        remove_stale_tmp(dir.path()).unwrap();
        assert!(tmp(1).exists() || !Path::new("/proc/1").exists());
        assert!(!tmp(u32::MAX).exists());
        assert!(!tmp(std::process::id()).exists());
        assert!(dir.path().join("out.parquet").exists());
    }

    /// Temporaries carry the host: this host's dead ones go, another host's stay (a sibling
    /// part on another node may still be writing it).
    #[test]
    fn another_hosts_temporaries_stay() {
        let dir = tempfile::tempdir().unwrap();
        let ours = tmp_path_for(&dir.path().join("a.parquet"));
        let name = ours.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".a.parquet.asl-tmp-")
                && name.ends_with(&format!(".{}", std::process::id()))
        );
        let dead_here = dir.path().join(format!(
            ".b.parquet{TMP_MARKER}{}.{}",
            this_host(),
            u32::MAX
        ));
        let elsewhere = dir
            .path()
            .join(format!(".c.parquet{TMP_MARKER}other-node-7.{}", u32::MAX));
        for p in [&ours, &dead_here, &elsewhere] {
            fs::write(p, b"half").unwrap();
        }
        remove_stale_tmp(dir.path()).unwrap();
        assert!(!ours.exists() && !dead_here.exists());
        assert!(elsewhere.exists());
    }
}
