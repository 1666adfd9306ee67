//! Search benchmark over a run dir built by `pipelines/data.toml`: query latency p50/p99 and
//! recall@1/3/10 of the answer's source article on the QA dev split, for each mode whose index
//! the run has. Driven by `scripts/bench-search.sh`, which also times the stages.
//!
//! cargo run --release --example bench_search -- RUN_DIR [MAX_QUERIES]

use std::path::PathBuf;
use std::time::Instant;

use asl::manifest::{Manifest, resolve_path};
use asl::search::SearchMode;
use asl::search::run::open_env;
use asl::shards::read_rows;
use asl::shards::rows::QaRow;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run_dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: RUN_DIR [MAX_QUERIES]"))?,
    );
    let max_queries: usize = args.next().map_or(Ok(500), |s| s.parse())?;
    let manifest = Manifest::load(&run_dir)?;
    let (_, qa) = manifest
        .done_outputs("qa", 0)
        .ok_or_else(|| anyhow::anyhow!("no qa stage in {}", run_dir.display()))?;
    let files: Vec<PathBuf> = qa.iter().map(|o| resolve_path(&run_dir, &o.path)).collect();
    let dev: Vec<QaRow> = read_rows::<QaRow>(&files)?
        .into_iter()
        .filter(|q| q.split == "dev" && q.source_doc_id.is_some())
        .take(max_queries)
        .collect();
    let has = |stage: &str| manifest.done_outputs(stage, 0).is_some();
    println!("| mode | queries | p50 ms | p99 ms | recall@1 | recall@3 | recall@10 |");
    println!("|---|---|---|---|---|---|---|");
    for mode in SearchMode::ALL {
        let needs_bm25 = matches!(mode, SearchMode::Bm25 | SearchMode::Hybrid);
        let needs_dense = matches!(mode, SearchMode::Dense | SearchMode::Hybrid);
        if (needs_bm25 && !has("index")) || (needs_dense && !has("embed")) {
            continue;
        }
        let env = open_env(&run_dir, 0, mode)?;
        let mut latencies = Vec::with_capacity(dev.len());
        let mut hits_at = [0usize; 3];
        for q in &dev {
            let started = Instant::now();
            let hits = env.search(&q.question, 10, mode)?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let source = q.source_doc_id.as_deref();
            let rank = hits.iter().position(|h| Some(h.doc_id.as_str()) == source);
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
            "| {mode} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} |",
            dev.len(),
            pct(0.5),
            pct(0.99),
            hits_at[0] as f64 / n,
            hits_at[1] as f64 / n,
            hits_at[2] as f64 / n
        );
    }
    Ok(())
}
