//! Shard I/O on real files: round trips, schema checks, truncation, crash-safe writes.

use asl::shards::rows::{CorpusRow, corpus_batch, corpus_rows};
use asl::shards::{ShardKind, ShardWriter, count_rows, read_shard};

fn rows(n: usize) -> Vec<CorpusRow> {
    (0..n)
        .map(|i| CorpusRow {
            doc_id: i.to_string(),
            title: format!("T{i}"),
            text: "x".repeat(i % 50),
            topic: (i % 2 == 0).then(|| "Science".to_string()),
            description: None,
        })
        .collect()
}

fn write(path: &std::path::Path, rows: &[CorpusRow]) {
    let mut w = ShardWriter::create(path, ShardKind::Corpus).unwrap();
    for chunk in rows.chunks(1000) {
        w.write(&corpus_batch(chunk)).unwrap();
    }
    assert_eq!(w.finish().unwrap(), rows.len() as u64);
}

#[test]
fn rows_round_trip_and_row_groups_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus-00000.parquet");
    let original = rows(20_000);
    write(&path, &original);
    let back: Vec<CorpusRow> = read_shard(&path, ShardKind::Corpus)
        .unwrap()
        .iter()
        .flat_map(corpus_rows)
        .collect();
    assert_eq!(back, original);
    assert_eq!(count_rows(&path).unwrap(), 20_000);
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert!(
        meta.num_row_groups() >= 3,
        "row groups: {}",
        meta.num_row_groups()
    );
    assert!((0..meta.num_row_groups()).all(|i| meta.row_group(i).num_rows() <= 8192));
    let compression = meta.row_group(0).column(0).compression();
    assert!(
        matches!(compression, parquet::basic::Compression::ZSTD(_)),
        "{compression:?}"
    );
}

#[test]
fn a_shard_of_another_kind_names_the_file_and_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus-00000.parquet");
    write(&path, &rows(3));
    let err = read_shard(&path, ShardKind::Qa).unwrap_err().to_string();
    assert!(err.contains("corpus-00000.parquet"), "{err}");
    assert!(
        err.contains("not a qa shard") && err.contains("missing column `id`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_column_of_the_wrong_type_is_named() {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Int64, false),
        Field::new("title", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["t"])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = read_shard(&path, ShardKind::Corpus)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd.parquet") && err.contains("`doc_id` is int64 but must be utf8"),
        "{err}"
    );
}

#[test]
fn truncated_and_non_parquet_files_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus-00000.parquet");
    write(&path, &rows(500));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_shard(&path, ShardKind::Corpus)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corpus-00000.parquet") && err.contains("not a readable Parquet"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::write(&path, "hello").unwrap();
    let err = read_shard(&path, ShardKind::Corpus)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable Parquet"), "{err}");
}

#[test]
fn an_unfinished_writer_leaves_nothing_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus-00000.parquet");
    let mut w = ShardWriter::create(&path, ShardKind::Corpus).unwrap();
    w.write(&corpus_batch(&rows(10))).unwrap();
    assert!(!path.exists());
    drop(w);
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp file left behind"
    );
}

#[test]
fn every_kind_has_a_documented_schema() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/shards.md")).unwrap();
    for kind in ShardKind::ALL {
        let heading = format!("## `{}`", kind.name());
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/shards.md lacks {heading}"));
        let section = &doc[start + heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for field in kind.schema().fields() {
            assert!(
                section.contains(&format!("| `{}` |", field.name())),
                "docs/shards.md: {} lacks column {}",
                kind.name(),
                field.name()
            );
        }
    }
}

#[test]
fn every_row_type_round_trips_through_a_shard() {
    use asl::shards::rows::*;
    use asl::shards::{read_rows, write_rows};
    fn check<R: ShardRow + PartialEq + std::fmt::Debug + Clone>(rows: Vec<R>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        assert_eq!(write_rows(&path, &rows).unwrap(), rows.len() as u64);
        assert_eq!(read_rows::<R>(&[path]).unwrap(), rows);
    }
    check(vec![TaskRow {
        task_id: "t1".into(),
        round: 2,
        question: "Who?".into(),
        answer: "Me".into(),
        answer_aliases: vec!["myself".into()],
        template: "harder/depth".into(),
        parent_task_id: Some("t0".into()),
        topic: None,
        generator_trajectory_id: Some("g1".into()),
        valid: false,
        invalid_reason: Some("no answer".into()),
    }]);
    check(vec![TrajectoryRow {
        trajectory_id: "p1".into(),
        task_id: "t1".into(),
        role: "policy".into(),
        attempt: 3,
        seed: u64::MAX,
        prompt_ids: vec![1, 2, 3],
        completion_ids: vec![4, 5],
        loss_mask: vec![true, false],
        sampling_logprobs: vec![-0.5, 0.0],
        behavior_logprobs: vec![-0.4, 0.0],
        temperature: 0.7,
        text: "<answer>x</answer>".into(),
        turns: 1,
        searches: 0,
        answer: None,
        parsed: false,
        parse_error: Some("e".into()),
        finish_reason: "length".into(),
    }]);
    check(vec![JudgmentRow {
        judgment_id: "j".into(),
        task_id: "t".into(),
        target_trajectory_id: "p1".into(),
        target: "policy".into(),
        sample: 0,
        question: "Q?".into(),
        reference_answer: "A".into(),
        candidate_answer: None,
        verdict: "wrong".into(),
        parsed: true,
        parse_error: None,
        judge_trajectory_id: "g".into(),
    }]);
    check(vec![RewardRow {
        trajectory_id: "p1".into(),
        task_id: "t".into(),
        role: "policy".into(),
        group_id: "t".into(),
        scheme: "grm".into(),
        reward: 1.0,
        format_bonus: 0.25,
        total: 1.25,
        advantage: -0.5,
        label: None,
        train: true,
    }]);
    check(vec![GradientRow {
        role: "policy".into(),
        name: "model.norm.weight".into(),
        shape: vec![2, 3],
        values: vec![0.5; 6],
        sequences: 4,
        tokens: 100,
    }]);
    check(vec![UpdateRow {
        trajectory_id: "p1".into(),
        role: "policy".into(),
        step: 1,
        loss: 0.1,
        mean_ratio: 1.0,
        clip_fraction: 0.0,
        kl: 0.01,
        entropy: 2.0,
        tokens: 12,
    }]);
    check(vec![StepRow {
        step: 2,
        role: "all".into(),
        sequences: 8,
        tokens: 400,
        grad_norm: 0.7,
        lr: 1e-5,
    }]);
    check(vec![EvalRow {
        round: 1,
        checkpoint: "round-001/apply/model".into(),
        dataset: "corpus-test".into(),
        role: "policy".into(),
        metric: "em".into(),
        value: 0.25,
        count: 100,
    }]);
    let policy = EvalItemRow {
        round: 2,
        checkpoint: "round-002/apply/step-004/model".into(),
        dataset: "qa:test".into(),
        role: "policy".into(),
        item_id: "q7".into(),
        sample: 1,
        seed: 42,
        question: "Who?".into(),
        references: vec!["Ada".into(), "Ada Lovelace".into()],
        candidate: None,
        prediction: Some("Ada".into()),
        label: None,
        parsed: true,
        correct: true,
        em: 1.0,
        f1: 1.0,
        subem: 1.0,
        searches: 2,
        turns: 3,
        truncated: false,
    };
    let grm = EvalItemRow {
        role: "grm".into(),
        candidate: Some("Babbage".into()),
        prediction: None,
        label: Some(false),
        parsed: false,
        correct: false,
        em: 0.0,
        f1: 0.0,
        subem: 0.0,
        ..policy.clone()
    };
    check(vec![policy, grm]);
}

#[test]
fn an_embeddings_shard_of_another_width_is_refused_with_file_and_column() {
    use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("embeddings-00000.parquet");
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item.clone(), 8), false),
    ]));
    let list = FixedSizeListArray::new(item, 8, Arc::new(Float32Array::from(vec![0.5; 8])), None);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["d0"])), Arc::new(list)],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = asl::search::run::read_embeddings(&[path])
        .unwrap_err()
        .to_string();
    assert!(err.contains("embeddings-00000.parquet"), "{err}");
    assert!(
        err.contains(
            "`embedding` is fixed_size_list<float32, 8> but must be fixed_size_list<float32, 384>"
        ),
        "{err}"
    );
}

/// `docs/settings.md` lists every stage's settings from the stages' own definitions; a new or
/// changed parameter fails here until the doc is regenerated (`ASL_BLESS=1`).
#[test]
fn settings_doc_lists_every_stage_setting() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/settings.md");
    let generated = asl::stages::settings_markdown();
    if std::env::var_os("ASL_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/settings.md is out of date: run `ASL_BLESS=1 cargo test --test integration settings_doc`"
    );
}
