//! Parquet shards: the data every stage reads and writes. One schema per kind (`schema`),
//! streaming crash-safe I/O (`io`), typed rows for the kinds the stages build (`rows`), and the
//! path layout `RUN_DIR/round-NNN/<stage>/<kind>-NNNNN.parquet`.

mod io;
pub mod rows;
mod schema;

use std::path::{Path, PathBuf};

pub use io::{
    ShardWriter, check_footer, check_schema, count_rows, open_shard, read_rows, read_shard,
    write_rows,
};
pub use schema::{EMBEDDING_DIM, ShardKind};

/// Directory of one stage's outputs in one round.
pub(crate) fn stage_dir(run_dir: &Path, round: u32, stage: &str) -> PathBuf {
    run_dir.join(format!("round-{round:03}")).join(stage)
}

/// Path of shard number `index` of `kind` in a stage directory.
pub(crate) fn shard_path(stage_dir: &Path, kind: ShardKind, index: u32) -> PathBuf {
    stage_dir.join(format!("{}-{index:05}.parquet", kind.name()))
}

/// The files among a stage's outputs that hold shards of `kind` (a stage may write several
/// kinds, and directories).
pub(crate) fn shards_of(files: &[PathBuf], kind: ShardKind) -> Vec<PathBuf> {
    let prefix = format!("{}-", kind.name());
    files
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .cloned()
        .collect()
}

/// Every row of the `R::KIND` shards among a stage's output files.
pub(crate) fn read_kind<R: rows::ShardRow>(files: &[PathBuf]) -> crate::error::Result<Vec<R>> {
    read_rows(&shards_of(files, R::KIND))
}
