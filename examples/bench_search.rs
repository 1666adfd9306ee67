//! Search benchmark over a run dir built by `pipelines/data.toml`: query latency p50/p99 and
//! recall@1/3/10 of the answer's source article on the QA dev split, for each mode whose index
//! the run has. Driven by `scripts/bench-search.sh`, which also times the stages.
//!
//! cargo run --release --example bench_search -- RUN_DIR [MAX_QUERIES] [DENSE_FROM_RUN_DIR]
//!
//! Embedding a replicated corpus of a million passages takes hours on a CPU, and its vectors
//! would be the originals' anyway; with DENSE_FROM_RUN_DIR (the 10k run) a run without an
//! `embed` stage gets each replica `ID-copyN` the vector of `ID`, so dense and hybrid latency
//! and memory are measured at full size. Recall counts a replica of the source article as a hit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use asl::manifest::Manifest;
use asl::search::dense::{DenseIndex, Embedder};
use asl::search::run::{SHIPPED_EMBEDDER, passages, read_embeddings};
use asl::search::{SearchEnv, SearchMode};
use asl::shards::read_rows;
use asl::shards::rows::QaRow;
use asl::stages::env::{open_env, stage_files};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run_dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: RUN_DIR [MAX_QUERIES] [DENSE_FROM_RUN_DIR]"))?,
    );
    let max_queries: usize = args.next().map_or(Ok(500), |s| s.parse())?;
    let dense_from = args.next().map(PathBuf::from);
    let manifest = Manifest::load(&run_dir)?;
    let files = stage_files(&run_dir, 0, "qa")?;
    let dev: Vec<QaRow> = read_rows::<QaRow>(&files)?
        .into_iter()
        .filter(|q| q.split == "dev" && q.source_doc_id.is_some())
        .take(max_queries)
        .collect();
    let has = |stage: &str| manifest.done_outputs(stage, 0).is_some();
    println!("| mode | queries | p50 ms | p99 ms | recall@1 | recall@3 | recall@10 | RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for mode in SearchMode::ALL {
        let needs_bm25 = matches!(mode, SearchMode::Bm25 | SearchMode::Hybrid);
        let needs_dense = matches!(mode, SearchMode::Dense | SearchMode::Hybrid);
        let replicate = needs_dense && !has("embed") && dense_from.is_some();
        if (needs_bm25 && !has("index")) || (needs_dense && !has("embed") && !replicate) {
            continue;
        }
        let env = if replicate {
            let bm25_mode = needs_bm25.then_some(SearchMode::Bm25);
            replicated_dense_env(&run_dir, dense_from.as_deref().unwrap(), bm25_mode)?
        } else {
            open_env(&run_dir, 0, mode)?
        };
        let mut latencies = Vec::with_capacity(dev.len());
        let mut hits_at = [0usize; 3];
        for q in &dev {
            let started = Instant::now();
            let hits = env.search(&q.question, 10, mode)?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let source = q.source_doc_id.as_deref();
            let rank = hits
                .iter()
                .position(|h| Some(original_id(&h.doc_id)) == source);
            for (slot, k) in [1, 3, 10].iter().enumerate() {
                if rank.is_some_and(|r| r < *k) {
                    hits_at[slot] += 1;
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let n = dev.len().max(1) as f64;
        println!(
            "| {mode} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {} |",
            dev.len(),
            pct(0.5),
            pct(0.99),
            hits_at[0] as f64 / n,
            hits_at[1] as f64 / n,
            hits_at[2] as f64 / n,
            resident_mib().map_or("?".to_string(), |m| m.to_string())
        );
    }
    Ok(())
}

/// Resident memory of this process now (the open environment included), from /proc.
fn resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The article a replica was copied from: `ID-copyN` → `ID`.
fn original_id(doc_id: &str) -> &str {
    doc_id.split_once("-copy").map_or(doc_id, |(id, _)| id)
}

/// The run's passages (and BM25 index when `bm25` asks for it) with a dense index whose rows
/// are the source run's vectors, one per replica.
fn replicated_dense_env(
    run_dir: &Path,
    source_run: &Path,
    bm25: Option<SearchMode>,
) -> anyhow::Result<SearchEnv> {
    let source = read_embeddings(&stage_files(source_run, 0, "embed")?)?;
    let row_of: HashMap<&str, usize> = source
        .ids()
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let env = match bm25 {
        Some(mode) => open_env(run_dir, 0, mode)?,
        None => SearchEnv::new(passages(&stage_files(run_dir, 0, "corpus")?)?)?,
    };
    let mut ids = Vec::with_capacity(env.len());
    let mut vectors = Vec::with_capacity(env.len() * source.dim());
    for p in env.passages() {
        if let Some(&row) = row_of.get(original_id(&p.doc_id)) {
            vectors.extend_from_slice(source.vector(row).expect("row of the source index"));
            ids.push(p.doc_id.clone());
        }
    }
    let index = DenseIndex::from_parts(ids, source.dim(), vectors)?;
    let embedder = Embedder::load(&asl::stages::assets_dir().join(SHIPPED_EMBEDDER))?;
    Ok(env.with_dense(index, embedder)?)
}
