//! TensorBoard scalars, so `tensorboard --logdir RUN_DIR` shows a run with no conversion.
//!
//! After every stage of a round, the round's figures are written again, whole, to one event
//! file per round (`RUN_DIR/tensorboard/events.out.tfevents.RRRRRR.asl`, replaced atomically):
//! the round table's figures and every eval metric at step = round, the training figures per
//! optimizer step at step = (round − 1) × steps + step. A stage that reruns rewrites its round's
//! file, so a point is never duplicated.
//!
//! The format is TensorFlow's event file: TFRecord framing (length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes) around `Event` protobuf messages. The few
//! messages needed are encoded by hand (about forty lines, below) rather than with a protobuf
//! code generator and `.proto` files; the CRC comes from the `crc32c` crate.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::manifest::{Manifest, Status};

/// The folder of a run's event files.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("tensorboard")
}

/// The event file of `round`.
pub(crate) fn round_file(run_dir: &Path, round: u32) -> PathBuf {
    dir(run_dir).join(format!("events.out.tfevents.{round:06}.asl"))
}

/// Writes the event file of `round` from the round's shards as they are now.
pub(crate) fn write_round(run_dir: &Path, round: u32) -> Result<()> {
    let manifest = Manifest::load(run_dir)?;
    let done: Vec<_> = manifest
        .entries
        .iter()
        .filter(|e| e.round == round && e.status == Status::Done)
        .collect();
    // Wall time: when the round's newest stage finished (so rewriting the file keeps it).
    let wall = done
        .iter()
        .filter_map(|e| e.finished_at.as_deref())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .fold(0.0, f64::max);
    let mut events: Vec<(i64, Vec<(String, f64)>)> = Vec::new();
    let round_scalars = crate::report::round_scalars(run_dir, &manifest, round)?;
    if !round_scalars.is_empty() {
        events.push((i64::from(round), round_scalars));
    }
    let mut by_step: std::collections::BTreeMap<i64, Vec<(String, f64)>> = Default::default();
    for (step, tag, value) in crate::report::step_scalars(run_dir, &manifest, round)? {
        by_step.entry(step as i64).or_default().push((tag, value));
    }
    events.extend(by_step);
    if events.is_empty() {
        // Setup stages before the warm-up's eval (round 0) have no figures.
        return Ok(());
    }
    let mut bytes = Vec::new();
    record(&mut bytes, &file_version_event(wall));
    for (step, scalars) in &events {
        record(&mut bytes, &scalar_event(wall, *step, scalars));
    }
    write_atomic(&round_file(run_dir, round), &bytes)
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

// Protobuf wire format: a key is (field << 3 | wire type) as a varint; wire 0 varint,
// 1 fixed64, 2 length-delimited, 5 fixed32.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1, file_version = 3 }`: the first record of every event file.
fn file_version_event(wall: f64) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall.to_le_bytes());
    bytes_field(&mut e, 3, b"brain.Event:2");
    e
}

/// `Event { wall_time = 1, step = 2, summary = 5 }` with `Summary { value = 1 }` and
/// `Summary.Value { tag = 1, simple_value = 2 }`.
fn scalar_event(wall: f64, step: i64, scalars: &[(String, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        key(&mut v, 2, 5);
        v.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(&mut summary, 1, &v);
    }
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    bytes_field(&mut e, 5, &summary);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C against RFC 3720's test vector (32 zero bytes) and the check value of
    /// "123456789"; the framing of an empty record with TensorFlow's mask (computed by hand:
    /// CRC-32C of eight zero bytes is 0x8c28b28a, masked 0x07980329; of nothing, 0, masked
    /// 0xa282ead8). `tests/integration/tensorboard.rs` reads whole files back with TensorBoard.
    #[test]
    fn empty_record_is_framed_with_masked_crc32c() {
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut out = Vec::new();
        record(&mut out, b"");
        assert_eq!(
            out,
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0x29, 0x03, 0x98, 0x07, 0xd8, 0xea, 0x82, 0xa2
            ]
        );
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut out = Vec::new();
        varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
    }
}
