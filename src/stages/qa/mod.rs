//! Stage `qa`: labelled question–answer sets into `qa` shards (`id`, `question`, `answers`,
//! `split`, `source`, `source_doc_id`). Sources: `fanoutqa` (the human-written single-hop
//! sub-questions of the shipped FanOutQA dev set), or a user's JSONL/JSON/Parquet file in the
//! plain layout (`question`, `answers`), FlashRAG / Search-R1's (`golden_answers`,
//! `data_source`) or verl's RL layout (`prompt` messages, `reward_model.ground_truth.target`).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use serde_json::Value;

mod questions;

pub(crate) use questions::{asks_for_a_fact, fact_quota, facts_in_turn, family_of};

pub use super::sources::read_qa_file;
use super::sources::{answer_strings, open_records, user_row};
use super::{Stage, StageContext, StageOutput, Upstream, assets_dir};
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::metrics::normalize_answer;
use crate::search::WikiArticle;
use crate::seed::{SPLITS, split_for};
use crate::shards::read_rows;
use crate::shards::rows::{CorpusRow, QaRow, qa_batch};
use crate::shards::{ShardKind, ShardWriter, shard_path};
use questions::build_qa;

const BATCH_ROWS: usize = 4096;
pub(crate) const BUILTIN_FANOUTQA: &str = "fanoutqa/data/fanout-final-dev.json";
/// The split of `extra = fanoutqa` rows: scored by eval when named, never trained on.
pub(crate) const FANOUTQA_SPLIT: &str = "fanoutqa";

pub(crate) struct QaStage;

/// Where the questions come from (`source`).
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Single-hop questions built from the corpus (docs/qa.md).
    Corpus,
    /// The shipped FanOutQA sub-questions.
    FanOutQa,
    /// A user's JSONL / JSON / Parquet file; rows without a split get `default_split`.
    File(PathBuf),
}

/// The qa stage's settings, typed when the pipeline loads.
#[derive(Debug, Clone)]
struct Settings {
    source: Source,
    default_split: String,
    /// Questions kept from the source (0: all).
    max_rows: usize,
    /// Also import FanOutQA's sub-questions the corpus holds, as split `fanoutqa`.
    extra_fanoutqa: bool,
}

impl Settings {
    fn from_params(params: &Params) -> Settings {
        Settings {
            source: match params.str("source") {
                "corpus" => Source::Corpus,
                "fanoutqa" => Source::FanOutQa,
                path => Source::File(PathBuf::from(path)),
            },
            default_split: params.str("default_split").to_string(),
            max_rows: params.u64("max_rows") as usize,
            // `extra` is one of "" and "fanoutqa" (checked by its ParamSpec).
            extra_fanoutqa: params.str("extra") == "fanoutqa",
        }
    }

    /// The file the questions are read from (none for corpus-built ones).
    fn source_file(&self) -> Option<PathBuf> {
        match &self.source {
            Source::Corpus => None,
            Source::FanOutQa => Some(assets_dir().join(BUILTIN_FANOUTQA)),
            Source::File(path) => Some(path.clone()),
        }
    }

    /// Whether the stage reads the corpus (to build questions, or to keep FanOutQA's extra ones).
    fn reads_corpus(&self) -> bool {
        self.source == Source::Corpus || self.extra_fanoutqa
    }
}

impl Stage for QaStage {
    /// 2: ids are unique (a repeated one is qualified by its source, one repeated within its
    ///    source refused); FanOutQA's sub-questions shared by several top-level questions are
    ///    one row; SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US").
    fn version(&self) -> u32 {
        2
    }

    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "qa"
    }

    fn about(&self) -> &'static str {
        "import labelled question-answer sets into qa shards"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "source",
                "fanoutqa",
                "`corpus` (single-hop QA built from the corpus, docs/qa.md), `fanoutqa` (shipped sub-questions) or a JSONL/JSON/Parquet file with question and answers",
            ),
            ParamSpec::new(
                "default_split",
                "test",
                "split for rows of a user file that carry none",
            ),
            ParamSpec::new("max_rows", 0, "import only the first N questions (0: all)"),
            ParamSpec::new(
                "extra",
                "",
                "`fanoutqa`: also import the FanOutQA sub-questions whose answer the corpus holds (their evidence article is in the corpus and contains the answer) as split `fanoutqa`, for eval only (`eval.split = \"test,fanoutqa\"`); empty: none",
            ).one_of(&["", "fanoutqa"]),
        ]
    }

    fn check(&self, params: &Params) -> Result<()> {
        let s = Settings::from_params(params);
        if s.source == Source::FanOutQa && s.extra_fanoutqa {
            return Err(Error::param(
                "qa.extra",
                "`fanoutqa` adds FanOutQA's sub-questions for eval only, but `qa.source = fanoutqa` already imports them into train/dev/test; with the same ids the eval-only split would repeat train rows. Use one of the two",
            ));
        }
        Ok(())
    }

    fn qa_splits_written(&self, params: &Params) -> Option<Vec<&'static str>> {
        let s = Settings::from_params(params);
        let mut splits = match s.source {
            Source::Corpus | Source::FanOutQa => SPLITS.to_vec(),
            Source::File(_) => return None,
        };
        if s.extra_fanoutqa {
            splits.push(FANOUTQA_SPLIT);
        }
        Some(splits)
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        if Settings::from_params(params).reads_corpus() {
            vec![Upstream::needs("corpus")]
        } else {
            Vec::new()
        }
    }

    fn external_inputs(&self, params: &Params) -> Result<Vec<PathBuf>> {
        let s = Settings::from_params(params);
        let mut paths: Vec<PathBuf> = s.source_file().into_iter().collect();
        if s.extra_fanoutqa {
            paths.push(assets_dir().join(BUILTIN_FANOUTQA));
        }
        for path in &paths {
            check_source(path)?;
        }
        Ok(paths)
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let settings = Settings::from_params(ctx.params);
        // Named in the "no questions" error; the corpus-built source has no file.
        let source = settings
            .source_file()
            .unwrap_or_else(|| PathBuf::from("corpus"));
        let rows: Box<dyn Iterator<Item = Result<QaRow>>> = match &settings.source {
            Source::FanOutQa => Box::new(fanoutqa_rows(&source)?.into_iter().map(Ok)),
            Source::Corpus => Box::new(
                corpus_qa_rows(ctx.input_files(Upstream::needs("corpus"))?)?
                    .into_iter()
                    .map(Ok),
            ),
            Source::File(_) => {
                let default_split = settings.default_split.clone();
                let stem = source
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let path = source.clone();
                Box::new(open_records(&source)?.enumerate().map(move |(i, r)| {
                    let record = r?;
                    user_row(&record, i, &default_split, &stem)
                        .map_err(|m| Error::input(&path, format!("record {}: {m}", i + 1)))
                }))
            }
        };
        let max_rows = match settings.max_rows {
            0 => usize::MAX,
            n => n,
        };
        let extra = if settings.extra_fanoutqa {
            fanoutqa_held_by_corpus(
                &assets_dir().join(BUILTIN_FANOUTQA),
                ctx.input_files(Upstream::needs("corpus"))?,
            )?
        } else {
            Vec::new()
        };
        let rows = rows.take(max_rows).chain(extra.into_iter().map(Ok));
        let out = shard_path(&ctx.out_dir, ShardKind::Qa, ctx.shard.index);
        let mut writer = ShardWriter::create(&out, ShardKind::Qa)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut splits = std::collections::BTreeMap::<String, u64>::new();
        // Ids key eval's rows and the comparison of two evals, so they must be unique. Search-R1's
        // merged files keep each dataset's own ids ("test_0" in NQ and in HotpotQA): a repeated
        // id is qualified by its row's source; one that repeats within a source is refused.
        let mut ids = UniqueIds::default();
        for (i, row) in rows.enumerate() {
            let mut row = row?;
            ids.assign(&mut row)
                .map_err(|m| Error::input(&source, format!("record {}: {m}", i + 1)))?;
            if !ctx.shard.owns(i) {
                continue;
            }
            *splits.entry(row.split.clone()).or_default() += 1;
            batch.push(row);
            if batch.len() == BATCH_ROWS {
                writer.write(&qa_batch(&batch))?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            writer.write(&qa_batch(&batch))?;
        }
        let rows = writer.finish()?;
        if rows == 0 {
            return Err(Error::input(&source, "no questions in the QA source"));
        }
        let by_split: Vec<String> = splits.iter().map(|(s, n)| format!("{s} {n}")).collect();
        Ok(StageOutput {
            files: vec![out],
            summary: format!("{rows} questions ({})", by_split.join(", ")),
        })
    }
}

/// The ids given so far, so each row's is unique: a repeated id is qualified by the row's
/// source (`nq:test_0`); an id repeated within its source is refused.
#[derive(Default)]
struct UniqueIds {
    /// (source, id) pairs as the file spells them.
    seen: std::collections::HashSet<(String, String)>,
    /// Ids given out.
    given: std::collections::HashSet<String>,
}

impl UniqueIds {
    fn assign(&mut self, row: &mut QaRow) -> std::result::Result<(), String> {
        if !self.seen.insert((row.source.clone(), row.id.clone())) {
            return Err(format!(
                "id {:?} of source {:?} appears twice; ids must be unique within a source",
                row.id, row.source
            ));
        }
        if self.given.insert(row.id.clone()) {
            return Ok(());
        }
        let qualified = format!("{}:{}", row.source, row.id);
        if !self.given.insert(qualified.clone()) {
            return Err(format!(
                "id {:?} of source {:?} is taken, and so is {qualified:?}",
                row.id, row.source
            ));
        }
        row.id = qualified;
        Ok(())
    }
}

/// A QA source file that must exist before the stage runs.
fn check_source(path: &std::path::Path) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let hint = if path == assets_dir().join(BUILTIN_FANOUTQA) {
        " (run scripts/fetch-assets.sh, or set ASL_ASSETS)"
    } else {
        ""
    };
    Err(Error::input(path, format!("QA source not found{hint}")))
}

/// FanOutQA's human-written sub-questions whose answer the corpus holds: the sub-question's
/// evidence article is in the corpus (by title, any case) and its text contains an answer after
/// SQuAD normalisation, on word boundaries. They get split `fanoutqa`, so neither `generate`
/// (train) nor eval's verification (dev) ever reads them.
fn fanoutqa_held_by_corpus(path: &std::path::Path, corpus_files: &[PathBuf]) -> Result<Vec<QaRow>> {
    let texts: std::collections::HashMap<String, String> = read_rows::<CorpusRow>(corpus_files)?
        .into_iter()
        .map(|r| {
            (
                r.title.to_lowercase(),
                format!(" {} ", normalize_answer(&r.text)),
            )
        })
        .collect();
    let mut rows = fanoutqa_rows(path)?;
    rows.retain(|q| {
        let Some(text) = q
            .source_doc_id
            .as_ref()
            .and_then(|t| texts.get(&t.to_lowercase()))
        else {
            return false;
        };
        q.answers.iter().any(|a| {
            let a = normalize_answer(a);
            !a.is_empty() && text.contains(&format!(" {a} "))
        })
    });
    for q in &mut rows {
        q.split = FANOUTQA_SPLIT.to_string();
    }
    Ok(rows)
}

/// Single-hop questions built deterministically from the corpus passages (`questions`).
fn corpus_qa_rows(corpus_files: &[PathBuf]) -> Result<Vec<QaRow>> {
    let articles: Vec<WikiArticle> = read_rows::<CorpusRow>(corpus_files)?
        .into_iter()
        .map(|r| WikiArticle {
            doc_id: r.doc_id,
            title: r.title,
            extract: r.text,
            description: r.description.unwrap_or_default(),
            topic: r.topic.unwrap_or_default(),
        })
        .collect();
    Ok(build_qa(&articles))
}

/// FanOutQA's multi-hop questions have list or table answers; their decomposition trees hold
/// single-hop sub-questions with short answers and the Wikipedia page that holds each. Those
/// sub-questions are the rows. The split follows the top-level question, so no multi-hop
/// question contributes to two splits. A sub-question shared by several top-level questions
/// (the same node id, or the same text: "What is the capital of China?" sits under five) is one
/// row, in the split of the first question that has it, so it is never in two splits nor
/// counted twice in one.
fn fanoutqa_rows(path: &std::path::Path) -> Result<Vec<QaRow>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let items: Vec<Value> = serde_json::from_reader(BufReader::new(file))
        .map_err(|e| Error::input(path, format!("not FanOutQA JSON ({e})")))?;
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in &items {
        let root = item
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::input(path, "a question has no `id`"))?;
        let split = split_for(root);
        let mut stack: Vec<&Value> = item
            .get("decomposition")
            .and_then(Value::as_array)
            .map(|d| d.iter().rev().collect())
            .unwrap_or_default();
        while let Some(node) = stack.pop() {
            if let Some(children) = node.get("decomposition").and_then(Value::as_array) {
                stack.extend(children.iter().rev());
            }
            let (Some(id), Some(question)) = (
                node.get("id").and_then(Value::as_str),
                node.get("question").and_then(Value::as_str),
            ) else {
                continue;
            };
            let answers = match node.get("answer") {
                Some(v @ (Value::String(_) | Value::Number(_))) => answer_strings(v),
                _ => Vec::new(),
            };
            if answers.is_empty() {
                continue;
            }
            let first_of_id = seen.insert(format!("id {id}"));
            let first_of_text = seen.insert(format!("q {}", normalize_answer(question)));
            if !(first_of_id && first_of_text) {
                continue;
            }
            rows.push(QaRow {
                id: format!("fanoutqa-{id}"),
                question: question.trim().to_string(),
                answers,
                split: split.to_string(),
                source: "fanoutqa".to_string(),
                source_doc_id: node
                    .get("evidence")
                    .and_then(|e| e.get("title"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::sources::Record;
    use super::*;
    use serde_json::json;

    fn record(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn fanoutqa_extra_keeps_only_sub_questions_the_corpus_answers() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.parquet");
        let article = |title: &str, text: &str| CorpusRow {
            doc_id: title.to_lowercase(),
            title: title.into(),
            text: text.into(),
            topic: None,
            description: None,
        };
        crate::shards::write_rows(
            &corpus,
            &[
                article("Asia", "Asia is the largest continent, east of Europe."),
                article(
                    "Busan",
                    "Busan is a port city; the Asian camellias bloom there.",
                ),
            ],
        )
        .unwrap();
        let node = |id: &str, q: &str, a: &str, title: &str| json!({"id": id, "question": q, "answer": a, "evidence": {"title": title}});
        let fanout = dir.path().join("fanout.json");
        std::fs::write(
            &fanout,
            json!([{"id": "root", "question": "Multi?", "answer": ["x"], "decomposition": [
                node("kept", "Find the largest continent", "The Asia", "asia"),
                node("absent", "What is the symbol flower of Busan?", "Camellia", "Busan"),
                node("partial", "Which continent lies east of Busan?", "Asia", "Busan"),
                node("elsewhere", "Where is Kyoto?", "Japan", "Kyoto"),
            ]}])
            .to_string(),
        )
        .unwrap();
        let rows = fanoutqa_held_by_corpus(&fanout, &[corpus]).unwrap();
        // "Camellia" is in the Busan article only inside "camellias"; "Asia" only inside "Asian".
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["fanoutqa-kept"]);
        assert_eq!(rows[0].split, FANOUTQA_SPLIT);
        assert_eq!(rows[0].source, "fanoutqa");
    }

    /// The same sub-question under two top-level questions (by node id, or by text under
    /// another id) is one row, in the first question's split, and never in two splits.
    #[test]
    fn a_shared_fanoutqa_sub_question_is_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let node = |id: &str, q: &str, a: &str| json!({"id": id, "question": q, "answer": a});
        // Two roots that land in different splits.
        let (a, b) = (0..100)
            .map(|k| format!("root{k}"))
            .find_map(|r| (split_for(&r) != split_for("root-a")).then(|| ("root-a".to_string(), r)))
            .unwrap();
        let fanout = dir.path().join("fanout.json");
        let root = |id: &str, nodes: Vec<Value>| json!({"id": id, "question": "Multi?", "answer": ["x"], "decomposition": nodes});
        std::fs::write(
            &fanout,
            json!([
                root(
                    &a,
                    vec![
                        node("x", "What is the capital of China?", "Beijing"),
                        node("y", "Who?", "Ann")
                    ]
                ),
                root(
                    &b,
                    vec![
                        node("x", "What is the capital of China?", "Beijing"),
                        node("z", "what is the capital of china", "Beijing"),
                        node("w", "Where?", "Rome")
                    ]
                ),
            ])
            .to_string(),
        )
        .unwrap();
        let rows = fanoutqa_rows(&fanout).unwrap();
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.split.as_str()))
            .collect();
        let (sa, sb) = (split_for(&a), split_for(&b));
        assert_eq!(
            got,
            [("fanoutqa-x", sa), ("fanoutqa-y", sa), ("fanoutqa-w", sb)]
        );
    }

    /// Search-R1's merged files repeat ids across datasets: qualified by source, and refused
    /// when one source repeats its own.
    #[test]
    fn a_repeated_id_is_qualified_by_its_source_or_refused() {
        let mut ids = UniqueIds::default();
        let row = |id: &str, source: &str| QaRow {
            id: id.into(),
            question: "Q?".into(),
            answers: vec!["a".into()],
            split: "test".into(),
            source: source.into(),
            source_doc_id: None,
        };
        let mut nq = row("test_0", "nq");
        let mut hotpot = row("test_0", "hotpotqa");
        ids.assign(&mut nq).unwrap();
        ids.assign(&mut hotpot).unwrap();
        assert_eq!(
            (nq.id.as_str(), hotpot.id.as_str()),
            ("test_0", "hotpotqa:test_0")
        );
        // Repeated within its source: refused at the second row, whichever row it repeats.
        for again in [row("test_0", "nq"), row("test_0", "hotpotqa")] {
            let e = ids.assign(&mut again.clone()).unwrap_err();
            assert!(e.contains("test_0") && e.contains(&again.source), "{e}");
        }
        let mut fresh = UniqueIds::default();
        fresh.assign(&mut row("q1", "nq")).unwrap();
        let e = fresh.assign(&mut row("q1", "nq")).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn fanoutqa_as_source_and_as_extra_is_refused() {
        let specs = QaStage.params();
        let params = crate::params::resolve(
            "qa",
            &specs,
            None,
            &[
                "qa.source=fanoutqa".parse().unwrap(),
                "qa.extra=fanoutqa".parse().unwrap(),
            ],
        )
        .unwrap();
        let e = QaStage.check(&params).unwrap_err().to_string();
        assert!(e.contains("qa.extra"), "{e}");
        let params =
            crate::params::resolve("qa", &specs, None, &["qa.extra=fanoutqa".parse().unwrap()])
                .unwrap();
        QaStage.check(&params).unwrap_err();
    }

    #[test]
    fn a_row_without_question_or_answers_is_refused() {
        let err = user_row(
            &record(json!({"query": "Q?", "answers": ["a"]})),
            0,
            "t",
            "f",
        );
        assert!(err.unwrap_err().contains("question"));
        let err = user_row(&record(json!({"question": "Q?"})), 0, "t", "f");
        assert!(err.unwrap_err().contains("answers"));
    }
}
