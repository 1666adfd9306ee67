//! Streaming shard I/O. Writers take record batches one at a time and flush bounded row groups,
//! so memory does not grow with the size of a shard; readers check the schema before the first
//! row is used, so a wrong file fails with a line naming the file and the column.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::ShardKind;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::AtomicFile;

/// Row groups are also bounded in bytes, so a few very large rows cannot make one huge group.
const MAX_ROW_GROUP_BYTES: usize = 64 << 20;
const READ_BATCH_ROWS: usize = 4096;

/// Writes one shard of a given kind under a temporary name; `finish` renames it into place.
pub struct ShardWriter {
    path: PathBuf,
    kind: ShardKind,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    out: Option<AtomicFile>,
    rows: u64,
}

impl ShardWriter {
    pub fn create(path: &Path, kind: ShardKind) -> Result<Self> {
        let out = AtomicFile::create(path)?;
        let schema = kind.schema();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(kind.max_row_group_rows()))
            .set_max_row_group_bytes(Some(MAX_ROW_GROUP_BYTES))
            // A gradient's values are millions of distinct floats: building a dictionary for
            // them was 7 % of a training step's samples under `perf` (docs/model-bench.md), and
            // parquet drops it anyway once it outgrows its page.
            .set_dictionary_enabled(kind != ShardKind::Gradients)
            // A fixed writer string keeps shard bytes independent of the asl build.
            .set_created_by("asl".to_string())
            .build();
        let writer = ArrowWriter::try_new(out.try_clone_file()?, schema.clone(), Some(props))
            .map_err(|e| Error::shard(path, format!("cannot start parquet writer: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            kind,
            schema,
            writer: Some(writer),
            out: Some(out),
            rows: 0,
        })
    }

    pub fn kind(&self) -> ShardKind {
        self.kind
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema() != self.schema {
            return Err(Error::shard(
                &self.path,
                format!("batch does not match the {} schema", self.kind),
            ));
        }
        let writer = self.writer.as_mut().expect("ShardWriter used after finish");
        writer
            .write(batch)
            .map_err(|e| Error::shard(&self.path, format!("write failed: {e}")))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the Parquet footer, fsyncs and renames into place. Returns the row count.
    pub fn finish(mut self) -> Result<u64> {
        let writer = self.writer.take().expect("ShardWriter finished twice");
        writer
            .close()
            .map_err(|e| Error::shard(&self.path, format!("cannot close parquet file: {e}")))?;
        self.out.take().expect("output present").commit()?;
        Ok(self.rows)
    }
}

/// Runs a read of `path` in which the `parquet` crate may panic on corrupt bytes (it asserts
/// on some footer values instead of returning an error; found by fuzzing).
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::catch_panic(read, |what| {
        Error::shard(path, format!("corrupt Parquet file ({what})"))
    })
}

/// Opens a shard for streaming reads after checking its schema against `kind`. Decoding the
/// batches can still fail on corrupt pages: [`read_shard`] and [`read_rows`] guard it, and a
/// stage that streams is guarded where the pipeline runs it.
pub fn open_shard(path: &Path, kind: ShardKind) -> Result<ParquetRecordBatchReader> {
    guarded(path, || {
        let file = File::open(path).at(path)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::shard(path, format!("not a readable Parquet file ({e})")))?;
        check_schema(path, kind, builder.schema())?;
        builder
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| Error::shard(path, format!("cannot read: {e}")))
    })
}

/// Reads every batch of a shard; for small shards and tests.
pub fn read_shard(path: &Path, kind: ShardKind) -> Result<Vec<RecordBatch>> {
    let reader = open_shard(path, kind)?;
    guarded(path, || {
        reader
            .map(|b| b.map_err(|e| Error::shard(path, format!("corrupt data: {e}"))))
            .collect()
    })
}

/// Checks a shard's footer without reading data: it parses, has `kind`'s columns, and every
/// column chunk lies inside the file with row counts that add up. polars trusts those byte
/// ranges (an out-of-range one made it read out of bounds, found by fuzzing), so a shard is
/// checked here before polars scans it (`asl audit`).
pub fn check_footer(path: &Path, kind: ShardKind) -> Result<()> {
    guarded(path, || {
        let file = File::open(path).at(path)?;
        let size = file.metadata().at(path)?.len();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::shard(path, format!("not a readable Parquet file ({e})")))?;
        check_schema(path, kind, builder.schema())?;
        let meta = builder.metadata();
        let mut rows = 0i64;
        for (g, group) in meta.row_groups().iter().enumerate() {
            if group.num_rows() < 0 {
                return Err(Error::shard(
                    path,
                    format!("row group {g}: negative row count"),
                ));
            }
            rows = rows.saturating_add(group.num_rows());
            for column in group.columns() {
                let start = column
                    .dictionary_page_offset()
                    .unwrap_or(column.data_page_offset());
                let len = column.compressed_size();
                let end = start.checked_add(len);
                if start < 0 || len < 0 || end.is_none_or(|e| e as u64 > size) {
                    return Err(Error::shard(
                        path,
                        format!(
                            "row group {g}: column chunk at {start}+{len} is outside the file of {size} bytes"
                        ),
                    ));
                }
            }
        }
        if rows != meta.file_metadata().num_rows() {
            return Err(Error::shard(
                path,
                format!(
                    "row groups hold {rows} rows but the footer says {}",
                    meta.file_metadata().num_rows()
                ),
            ));
        }
        Ok(())
    })
}

/// Row count from the footer alone.
pub fn count_rows(path: &Path) -> Result<u64> {
    guarded(path, || {
        let file = File::open(path).at(path)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::shard(path, format!("not a readable Parquet file ({e})")))?;
        Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
    })
}

/// Checks that every column of `kind` is present with the expected type. Nullability and the
/// names of list items are not compared: pyarrow and polars write both differently, and a shard
/// they rewrote must still read.
pub fn check_schema(path: &Path, kind: ShardKind, actual: &SchemaRef) -> Result<()> {
    for expected in kind.schema().fields() {
        let Ok(found) = actual.field_with_name(expected.name()) else {
            return Err(Error::shard(
                path,
                format!(
                    "not a {kind} shard: missing column `{}` ({})",
                    expected.name(),
                    type_name(expected.data_type())
                ),
            ));
        };
        if !same_type(expected.data_type(), found.data_type()) {
            return Err(Error::shard(
                path,
                format!(
                    "not a {kind} shard: column `{}` is {} but must be {}",
                    expected.name(),
                    type_name(found.data_type()),
                    type_name(expected.data_type())
                ),
            ));
        }
    }
    Ok(())
}

fn same_type(expected: &DataType, actual: &DataType) -> bool {
    match (expected, actual) {
        (DataType::List(e), DataType::List(a)) => same_type(e.data_type(), a.data_type()),
        (DataType::FixedSizeList(e, n), DataType::FixedSizeList(a, m)) => {
            n == m && same_type(e.data_type(), a.data_type())
        }
        (e, a) => e == a,
    }
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::List(item) => format!("list<{}>", type_name(item.data_type())),
        DataType::FixedSizeList(item, n) => {
            format!("fixed_size_list<{}, {n}>", type_name(item.data_type()))
        }
        other => other.to_string().to_lowercase(),
    }
}

/// Every row of every shard in `paths`, in order. For stages whose inputs are small enough to
/// hold (tasks, judgments); large inputs are streamed with `open_shard`.
pub fn read_rows<R: super::rows::ShardRow>(paths: &[PathBuf]) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for path in paths {
        let reader = open_shard(path, R::KIND)?;
        guarded(path, || {
            for batch in reader {
                let batch = batch.map_err(|e| Error::shard(path, format!("corrupt data: {e}")))?;
                out.extend(
                    super::rows::from_batch::<R>(&batch).map_err(|m| Error::shard(path, m))?,
                );
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Writes `rows` as one shard, a batch per 4096 rows.
pub fn write_rows<R: super::rows::ShardRow>(path: &Path, rows: &[R]) -> Result<u64> {
    let mut writer = ShardWriter::create(path, R::KIND)?;
    for chunk in rows.chunks(4096) {
        writer.write(&super::rows::to_batch(chunk))?;
    }
    writer.finish()
}
