//! Deterministic single-hop QA built from the offline Wikipedia summaries.
//!
//! Every question is answered by one article and its answer is a short
//! string (the article's title, a name, a year, a number or a symbol) that
//! the article's extract supports. Three families of questions are made:
//!
//! * `def`: the first sentence `X is/was/are/were P.` becomes
//!   `What is P?` / `Who was P?` with X (the title) as answer;
//! * `desc`: the short Wikidata description, when it is specific enough and
//!   its words are backed by the extract, becomes `What is the D?`;
//! * relation patterns in the first sentence (`directed by`, `novel by`,
//!   `composed by`, `founded by`/`in`, `a 1968 film`, `Its capital is`,
//!   `atomic number`, `symbol`) become `Who directed X?` and the like.
//!
//! Ambiguity is handled by counting: a definition, description or final
//! question text shared by more than one article is dropped for all of them.
//! Splits are decided by a stable hash of the source article, so no article
//! contributes to two splits, and the result never depends on map order.

use crate::search::WikiArticle;
use crate::seed::{fnv1a, split_for};
use crate::shards::rows::QaRow;
use std::collections::HashMap;

/// The id of a question of `family` built from the article `doc_id`: `wiki-<family>-<hash>`.
fn question_id(family: &str, doc_id: &str) -> String {
    format!("wiki-{family}-{:016x}", fnv1a(doc_id.as_bytes()))
}

/// The family of a corpus-built question from its id (`question_id`); `None` for other ids.
pub(crate) fn family_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("wiki-")?;
    Some(&rest[..rest.rfind('-')?])
}

/// Whether a corpus-built question of `family` asks for a fact stated in its article's text (a
/// director, a year, a capital, a symbol: `Who directed X?`) rather than for the article's
/// subject itself (`def` and `desc`, whose answer is the title of the article a search for the
/// question finds first). Human-written questions (FanOutQA's) are almost all of the first kind,
/// while ~96 % of the corpus-built ones are of the second: a policy trained on those alone
/// learns to answer with the title of the top hit.
pub(crate) fn asks_for_a_fact(family: &str) -> bool {
    !matches!(family, "def" | "desc")
}

/// The questions that ask for a fact, in `rows`' order within each family and the families
/// taken in turn (one of each, then the next of each, …), so a quota is not filled by the one
/// family the corpus has most of (chemical elements' symbols and atomic numbers).
pub(crate) fn facts_in_turn<'a>(rows: &[&'a QaRow]) -> Vec<&'a QaRow> {
    let mut by_family: std::collections::BTreeMap<&str, Vec<&'a QaRow>> = Default::default();
    for q in rows {
        if let Some(f) = family_of(&q.id).filter(|f| asks_for_a_fact(f)) {
            by_family.entry(f).or_default().push(q);
        }
    }
    let longest = by_family.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| by_family.values().filter_map(move |qs| qs.get(i).copied()))
        .collect()
}

/// How many of `n` questions a `fact_share` asks to be fact questions (`warmup.fact_share`,
/// `generate.fact_share`): the nearest whole number.
pub(crate) fn fact_quota(n: usize, fact_share: f64) -> usize {
    ((n as f64) * fact_share.clamp(0.0, 1.0)).round() as usize
}

/// Shortest first sentence we turn into a definition question, in words;
/// shorter ones ("a fruit") describe many things.
const MIN_DEF_WORDS: usize = 6;
const MAX_DEF_WORDS: usize = 40;
/// "a Roman general and statesman" fits dozens of people; person
/// definitions need more detail before they single one out.
const MIN_PERSON_DEF_WORDS: usize = 12;
/// Descriptions without a year or a superlative need this many words to
/// single out one thing rather than a class ("Marvel Comics superhero").
const MIN_PLAIN_DESC_WORDS: usize = 7;
/// Longest answer we emit, in words; longer titles are rarely typed exactly.
const MAX_ANSWER_WORDS: usize = 8;
const MAX_NAME_WORDS: usize = 5;

/// Builds the QA rows for `articles`. Output order follows `articles`
/// (sorted by doc_id when loaded with `load_wiki_corpus`), then family.
pub(crate) fn build_qa(articles: &[WikiArticle]) -> Vec<QaRow> {
    let normalised: Vec<WikiArticle> = articles.iter().map(plain_spaces).collect();
    let articles = normalised.as_slice();
    let mut def_count: HashMap<String, usize> = HashMap::new();
    let mut desc_count: HashMap<String, usize> = HashMap::new();
    for a in articles {
        if let Some(l) = lead(a) {
            *def_count.entry(norm_key(&l.predicate)).or_default() += 1;
        }
        if !a.description.trim().is_empty() {
            *desc_count.entry(norm_key(&a.description)).or_default() += 1;
        }
    }

    let mut rows: Vec<QaRow> = Vec::new();
    for a in articles {
        let title = title_core(&a.title);
        if title.is_empty() || word_count(&title) > MAX_ANSWER_WORDS {
            continue;
        }
        let lead = lead(a);
        let mut add = |family: &str, question: String, answers: Vec<String>| {
            rows.push(QaRow {
                id: question_id(family, &a.doc_id),
                question,
                answers,
                split: split_for(&a.doc_id).to_string(),
                source: "corpus".into(),
                source_doc_id: Some(a.doc_id.clone()),
            });
        };

        if let Some(l) = &lead
            && def_count.get(&norm_key(&l.predicate)) == Some(&1)
            && let Some(q) = definition_question(a, &title, l)
        {
            let mut answers = vec![title.clone()];
            for alias in alias_names(&l.subject) {
                if word_count(&alias) <= MAX_ANSWER_WORDS
                    && !answers.iter().any(|a| a.eq_ignore_ascii_case(&alias))
                {
                    answers.push(alias);
                }
            }
            add("def", q, answers);
        }

        if desc_count.get(&norm_key(&a.description)) == Some(&1)
            && let Some(q) = description_question(a, &title)
        {
            add("desc", q, vec![title.clone()]);
        }

        if let Some(l) = &lead {
            for (family, q, ans) in relation_questions(a, &title, l) {
                add(family, q, vec![ans]);
            }
        }
    }

    // The same question text from two articles has two answers; drop both.
    let mut q_count: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *q_count.entry(norm_key(&r.question)).or_default() += 1;
    }
    rows.retain(|r| q_count.get(&norm_key(&r.question)) == Some(&1));
    rows
}

/// The article with every Unicode space (U+00A0 in "atomic number\u{a0}89", thin spaces) made
/// a plain one, so the builder's markers match however the extract was typeset.
fn plain_spaces(a: &WikiArticle) -> WikiArticle {
    let plain = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c != '\n' && c.is_whitespace() {
                    ' '
                } else {
                    c
                }
            })
            .collect()
    };
    WikiArticle {
        doc_id: a.doc_id.clone(),
        title: plain(&a.title),
        extract: plain(&a.extract),
        description: plain(&a.description),
        topic: a.topic.clone(),
    }
}

/// The names a lead subject gives: "Shen Kuo or Shen Gua" is two answers, and the "; or"
/// that ends "Uncle Tom's Cabin; or" is punctuation, not a name.
fn alias_names(subject: &str) -> Vec<String> {
    subject
        .split(" or ")
        .map(|part| {
            part.trim_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'))
                .trim_end_matches("; or")
                .trim()
        })
        .filter(|name| !name.is_empty() && !name.eq_ignore_ascii_case("or"))
        .map(str::to_string)
        .collect()
}

/// The first sentence of an extract, split into subject, copula and
/// predicate.
#[derive(Debug, Clone)]
struct Lead {
    /// The subject's main phrase, without article, aliases or parentheses.
    subject: String,
    verb: &'static str,
    /// Parentheticals removed, no final period.
    predicate: String,
    sentence: String,
}

fn lead(a: &WikiArticle) -> Option<Lead> {
    let sentence = first_sentence(&a.extract);
    let (pos, verb) = [" is ", " was ", " are ", " were "]
        .iter()
        .filter_map(|v| find_at_depth0(sentence, v).map(|p| (p, *v)))
        .min_by_key(|&(p, _)| p)?;
    if pos > 120 {
        return None;
    }
    let mut subject = sentence[..pos].trim();
    // "In linguistics, diglossia is ..." puts the subject after the field.
    if subject.starts_with("In ")
        && let Some(i) = subject.find(", ")
    {
        subject = &subject[i + 2..];
    }
    let main = subject.split([',', '(']).next().unwrap_or("").trim();
    let main = strip_article(main);
    let predicate =
        strip_parentheticals(sentence[pos + verb.len()..].trim().trim_end_matches('.'))?;
    let subject_ok = {
        let t = stems(&title_core(&a.title));
        let s = stems(main);
        !t.is_empty() && t.iter().all(|w| s.contains(w))
    };
    if !subject_ok {
        return None;
    }
    Some(Lead {
        subject: main.to_string(),
        verb: verb.trim(),
        predicate,
        sentence: sentence.to_string(),
    })
}

fn definition_question(a: &WikiArticle, title: &str, l: &Lead) -> Option<String> {
    let mut words: Vec<&str> = l.predicate.split_whitespace().collect();
    if words.len() > MAX_DEF_WORDS {
        // Cut at the last clause boundary that still leaves a specific
        // description; a cut mid-clause reads badly and may change meaning.
        let cut = (MIN_DEF_WORDS + 2..=MAX_DEF_WORDS)
            .rev()
            .find(|&n| words[n - 1].ends_with(',') || words[n - 1].ends_with(';'))?;
        words.truncate(cut);
    }
    let person = is_person(a);
    let min_words = if person {
        MIN_PERSON_DEF_WORDS
    } else {
        MIN_DEF_WORDS
    };
    if words.len() < min_words || !starts_like_a_noun_phrase(&words) {
        return None;
    }
    let predicate = words.join(" ");
    let predicate = predicate.trim_end_matches([',', ';', ':']);
    if leaks(predicate, title) || leaks(predicate, &l.subject) {
        return None;
    }
    let wh = if person { "Who" } else { "What" };
    Some(format!("{wh} {} {predicate}?", l.verb))
}

fn description_question(a: &WikiArticle, title: &str) -> Option<String> {
    let desc = a.description.trim();
    let words: Vec<&str> = desc.split_whitespace().collect();
    let specific = words.len() >= MIN_PLAIN_DESC_WORDS
        || (words.len() >= 3 && (has_year(desc) || words.iter().any(|w| is_superlative(w))));
    if !specific || leaks(desc, title) {
        return None;
    }
    // Every number and most content words must be in the extract, so the
    // question is answerable from the passage and not only from Wikidata.
    let extract_lc = a.extract.to_lowercase();
    let extract_words: Vec<String> = tokens(&a.extract);
    for w in tokens(desc) {
        if w.chars().all(|c| c.is_ascii_digit()) && !extract_words.contains(&w) {
            return None;
        }
    }
    let content: Vec<String> = tokens(desc)
        .into_iter()
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .collect();
    if content.is_empty() {
        return None;
    }
    let backed = content
        .iter()
        .filter(|w| {
            let prefix: String = w.chars().take(5).collect();
            extract_lc.contains(&prefix)
        })
        .count();
    if backed * 3 < content.len() * 2 {
        return None;
    }
    let first = words[0];
    // "Prime Minister of ...": a capitalised second word means a name-like
    // phrase, and lowering only its first word reads worse than keeping both.
    let capitalised_phrase = words
        .get(1)
        .is_some_and(|w| w.chars().next().is_some_and(char::is_uppercase));
    let keep_case = capitalised_phrase || extract_has_word_only_capitalised(&a.extract, first);
    let desc = if keep_case {
        desc.to_string()
    } else {
        lowercase_first(desc)
    };
    let desc = desc.trim_end_matches('.');
    let q = if is_person(a) {
        // Life dates or a reign mean a historical figure; "(born 1950)"
        // a living one.
        let verb = if has_year(desc) && !desc.contains("born") {
            "was"
        } else {
            "is"
        };
        format!("Who {verb} the {desc}?")
    } else {
        format!("What is the {desc}?")
    };
    Some(q)
}

/// The topic label misses many people (Leonardo is filed under Arts), but
/// their descriptions carry life dates.
fn is_person(a: &WikiArticle) -> bool {
    if a.topic == "People" {
        return true;
    }
    // Empires and wars carry parenthesised dates too.
    let dated = a
        .description
        .split('(')
        .skip(1)
        .any(|inner| has_year_range(inner) || inner.starts_with("born "));
    dated && !["History", "Geography"].contains(&a.topic.as_str())
}

/// Rejects predicates that only make sense with the subject in front:
/// "its height above ...", "located in ...", "broadly defined as ...", and
/// "one of two epics", which has another right answer by construction.
fn starts_like_a_noun_phrase(words: &[&str]) -> bool {
    let Some(first) = words.first() else {
        return false;
    };
    let first = first.to_lowercase();
    let pronoun = [
        "its", "their", "his", "her", "it", "they", "he", "she", "also",
    ]
    .contains(&first.as_str());
    let verbish = first.ends_with("ed") || first.ends_with("ly") || first.ends_with("ing");
    let one_of = words.len() > 1 && first == "one" && words[1] == "of";
    !(pronoun || verbish || one_of)
}

fn has_year(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_digit())
        .any(|d| (3..=4).contains(&d.len()))
}

fn is_superlative(word: &str) -> bool {
    const SUPERLATIVES: &[&str] = &[
        "largest",
        "longest",
        "highest",
        "smallest",
        "oldest",
        "tallest",
        "deepest",
        "biggest",
        "busiest",
        "brightest",
        "closest",
        "nearest",
        "most",
        "first",
        "only",
    ];
    let w = word.to_lowercase();
    let last = w.rsplit('-').next().unwrap_or("");
    SUPERLATIVES.contains(&last) || (last.len() > 6 && last.ends_with("most"))
}

fn relation_questions(
    a: &WikiArticle,
    title: &str,
    l: &Lead,
) -> Vec<(&'static str, String, String)> {
    let s = l.sentence.as_str();
    let mut out = Vec::new();
    let mut name_rel = |family: &'static str, markers: &[&str], question: String| {
        for m in markers {
            if let Some(p) = s.find(m)
                && let Some(name) = name_at(after_role_noun(&s[p + m.len()..]))
                && !leaks(&name, title)
            {
                out.push((family, question, name));
                return;
            }
        }
    };
    name_rel(
        "directed",
        &["directed by "],
        format!("Who directed {title}?"),
    );
    name_rel(
        "wrote",
        &[
            "written by ",
            " novel by ",
            " novella by ",
            " play by ",
            " book by ",
            " poem by ",
            " tragedy by ",
            " comedy by ",
        ],
        format!("Who wrote {title}?"),
    );
    name_rel(
        "composed",
        &["composed by ", " opera by ", " symphony by "],
        format!("Who composed {title}?"),
    );
    name_rel(
        "painted",
        &["painted by ", " painting by "],
        format!("Who painted {title}?"),
    );
    name_rel(
        "founded_by",
        &["founded by "],
        format!("Who founded {title}?"),
    );

    if let Some(p) = s.find("founded in ")
        && let Some(y) = year_at(&s[p + "founded in ".len()..])
    {
        out.push((
            "founded_year",
            format!("In what year was {title} founded?"),
            y,
        ));
    }
    // "is a 1968 epic science fiction film": the year directly after the
    // article, and "film" before the next comma.
    for art in ["is a ", "is an "] {
        if let Some(p) = s.find(art) {
            let rest = &s[p + art.len()..];
            let clause = rest.split(',').next().unwrap_or("");
            if let Some(y) = year_at(rest)
                && clause.split_whitespace().any(|w| w == "film")
            {
                out.push((
                    "film_year",
                    format!("In what year was the film {title} released?"),
                    y,
                ));
                break;
            }
        }
    }
    let extract = a.extract.as_str();
    for m in [
        "Its capital and largest city is ",
        "Its capital is ",
        "The capital and largest city is ",
    ] {
        if let Some(p) = extract.find(m)
            && let Some(name) = name_at(&extract[p + m.len()..])
            && !leaks(&name, title)
        {
            out.push(("capital", format!("What is the capital of {title}?"), name));
            break;
        }
    }
    if a.topic == "Physical sciences" {
        if let Some(p) = extract.find("atomic number ")
            && let Some(n) = number_at(&extract[p + "atomic number ".len()..])
        {
            out.push((
                "atomic_number",
                format!("What is the atomic number of {title}?"),
                n,
            ));
        }
        if let Some(p) = extract.find("symbol ")
            && let Some(sym) = element_symbol_at(&extract[p + "symbol ".len()..])
        {
            out.push((
                "symbol",
                format!("What is the chemical symbol of {title}?"),
                sym,
            ));
        }
    }
    out
}

const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "from", "that", "which", "its", "his", "her", "their", "was",
    "are", "were", "has", "have", "been", "who", "whom", "this", "used", "into", "over", "also",
    "other", "such",
];

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "c", "ca", "e.g", "i.e", "vs", "etc", "u.s", "u.k",
    "no", "mt", "ft", "gen", "col", "lt", "prof", "rev", "inc", "ltd", "co", "approx",
];

fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'\n' => return &text[..i],
            b'.' if depth <= 0 => {
                let next = text[i + 1..].chars().next();
                let after = text[i + 1..].trim_start().chars().next();
                let boundary = next.is_none_or(char::is_whitespace)
                    && after.is_none_or(|c| c.is_uppercase() || c.is_ascii_digit() || c == '"');
                if boundary {
                    let word = text[..i]
                        .rsplit(|c: char| c.is_whitespace() || c == '(')
                        .next()
                        .unwrap_or("");
                    let lw = word.to_lowercase();
                    let initial = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
                    if !initial && !ABBREVIATIONS.contains(&lw.as_str()) {
                        return &text[..=i];
                    }
                }
            }
            _ => {}
        }
    }
    text
}

/// Byte offset of `needle` outside any parentheses.
fn find_at_depth0(hay: &str, needle: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = hay[from..].find(needle) {
        let p = from + off;
        let prefix = &hay[..p];
        if prefix.matches('(').count() == prefix.matches(')').count() {
            return Some(p);
        }
        from = p + needle.len();
    }
    None
}

fn strip_article(s: &str) -> &str {
    for a in ["The ", "A ", "An ", "the ", "a ", "an "] {
        if let Some(rest) = s.strip_prefix(a) {
            return rest.trim();
        }
    }
    s
}

/// Parentheticals are mostly pronunciations, native spellings and
/// abbreviations; removing them shortens questions without losing the
/// clue. `None` if the parentheses do not balance.
fn strip_parentheticals(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    let joined = out.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(joined.replace(" ,", ",").replace(" ;", ";"))
}

/// The title without a trailing disambiguation like " (film)".
fn title_core(title: &str) -> String {
    let t = title.trim();
    match t.rfind(" (") {
        Some(p) if t.ends_with(')') => t[..p].trim().to_string(),
        _ => t.to_string(),
    }
}

fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Tokens with a crude plural strip, enough to match "Dung beetles" with
/// "Dung beetle".
fn stems(s: &str) -> Vec<String> {
    tokens(s)
        .into_iter()
        .map(|w| {
            if w.chars().count() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w[..w.len() - 1].to_string()
            } else {
                w
            }
        })
        .collect()
}

/// Whether `text` gives away `answer`: any of its longer words appears.
fn leaks(text: &str, answer: &str) -> bool {
    let t = stems(text);
    stems(answer)
        .iter()
        .filter(|w| w.chars().count() >= 4 || w.chars().all(|c| c.is_ascii_digit()))
        .any(|w| t.contains(w))
}

fn norm_key(s: &str) -> String {
    tokens(s).join(" ")
}

fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// True when `word` occurs in `text` capitalised but never in lower case,
/// i.e. it is a proper noun or adjective ("English", "Dravidian").
fn extract_has_word_only_capitalised(text: &str, word: &str) -> bool {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .collect();
    let lower = word.to_lowercase();
    let cap = words.contains(&word);
    let low = words.contains(&lower.as_str());
    cap && !low
}

fn has_year_range(s: &str) -> bool {
    let s = s.split(')').next().unwrap_or("");
    s.contains('–') && s.chars().filter(char::is_ascii_digit).count() >= 4
}

/// A personal or place name at the start of `s`: capitalised words, initials
/// like "C." and a few lowercase particles ("van", "de") between them.
fn name_at(s: &str) -> Option<String> {
    const PARTICLES: &[&str] = &[
        "van", "von", "de", "da", "del", "der", "di", "du", "la", "le", "bin", "ibn",
    ];
    let mut parts: Vec<&str> = Vec::new();
    for raw in s.split_whitespace() {
        let w = raw.trim_end_matches([',', ';', ':', ')', '"']);
        let clean_end = w.len() == raw.len();
        let is_initial =
            w.len() == 2 && w.ends_with('.') && w.chars().next().is_some_and(char::is_uppercase);
        let w_noperiod = if is_initial {
            w
        } else {
            w.trim_end_matches('.')
        };
        let cap = w_noperiod.chars().next().is_some_and(char::is_uppercase)
            && w_noperiod
                .chars()
                .all(|c| c.is_alphabetic() || matches!(c, '-' | '\'' | '.'));
        if cap {
            parts.push(w_noperiod);
        } else if PARTICLES.contains(&w) && !parts.is_empty() && clean_end {
            parts.push(w);
        } else {
            break;
        }
        if !clean_end || (w_noperiod.len() != w.len()) || parts.len() > MAX_NAME_WORDS {
            break;
        }
    }
    while parts.last().is_some_and(|w| PARTICLES.contains(w)) {
        parts.pop();
    }
    if parts.is_empty() || parts.len() > MAX_NAME_WORDS {
        return None;
    }
    // A lone capitalised function word ("The", "A") is not a name.
    if parts.len() == 1 && ["The", "A", "An", "His", "Her", "Its"].contains(&parts[0]) {
        return None;
    }
    Some(parts.join(" "))
}

/// Words that introduce a name after a nationality: "novel by American author Frank Herbert".
const ROLE_NOUNS: &[&str] = &[
    "author",
    "writer",
    "novelist",
    "poet",
    "playwright",
    "dramatist",
    "composer",
    "painter",
    "artist",
    "director",
    "filmmaker",
    "screenwriter",
    "songwriter",
    "musician",
];

/// Skips a capitalised descriptor and its role noun ("American author ", "Russian composer ")
/// so the name after them is read, not the nationality.
fn after_role_noun(s: &str) -> &str {
    let mut offset = 0;
    for (i, word) in s.split_inclusive(' ').enumerate().take(4) {
        offset += word.len();
        if ROLE_NOUNS.contains(&word.trim().trim_end_matches(',')) {
            return &s[offset..];
        }
        // Only descriptors may come before the role noun.
        let first = word.chars().next();
        if i > 0 && !first.is_some_and(|c| c.is_uppercase() || c.is_lowercase()) {
            break;
        }
    }
    s
}

/// A year, with its era when it has one: "founded in 478 BC" is not the year 478.
fn year_at(s: &str) -> Option<String> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let rest = &s[digits.len()..];
    let next = rest.chars().next();
    let plausible = (3..=4).contains(&digits.len()) && next.is_none_or(|c| !c.is_alphanumeric());
    if !plausible {
        return None;
    }
    let era = ["BCE", "BC", "CE", "AD"].into_iter().find(|era| {
        rest.strip_prefix(' ')
            .and_then(|r| r.strip_prefix(era))
            .is_some_and(|after| after.chars().next().is_none_or(|c| !c.is_alphanumeric()))
    });
    Some(match era {
        Some(era) => format!("{digits} {era}"),
        None => digits,
    })
}

fn number_at(s: &str) -> Option<String> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty() && digits.len() <= 3).then_some(digits)
}

/// "Fe and atomic number 26": one capital letter and at most one lower-case
/// letter, followed by a non-letter.
fn element_symbol_at(s: &str) -> Option<String> {
    let sym: String = s.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let mut c = sym.chars();
    let ok = matches!(c.next(), Some(f) if f.is_ascii_uppercase())
        && c.clone().count() <= 1
        && c.all(|x| x.is_ascii_lowercase());
    ok.then_some(sym)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_ids_family_reads_back() {
        for family in ["def", "desc", "directed", "film_year"] {
            assert_eq!(family_of(&question_id(family, "doc-7")), Some(family));
        }
        assert_eq!(family_of("fanoutqa-12"), None);
        assert!(!asks_for_a_fact("def") && !asks_for_a_fact("desc"));
        assert!(asks_for_a_fact("directed") && asks_for_a_fact("atomic_number"));
        assert_eq!(family_of("wiki-nohash"), None);
    }

    fn art(title: &str, extract: &str, description: &str, topic: &str) -> WikiArticle {
        WikiArticle {
            doc_id: title.into(),
            title: title.into(),
            extract: extract.into(),
            description: description.into(),
            topic: topic.into(),
        }
    }

    fn sample() -> Vec<WikiArticle> {
        vec![
            art(
                "2001: A Space Odyssey",
                "2001: A Space Odyssey is a 1968 epic science fiction film produced and directed by Stanley Kubrick, who co-wrote the screenplay with Arthur C. Clarke. Its plot was inspired by stories.",
                "1968 film by Stanley Kubrick",
                "Arts",
            ),
            art(
                "Amsterdam",
                "Amsterdam is the capital and largest city of the Netherlands, with a population of 933,680 in 2024.",
                "Capital and largest city of the Netherlands",
                "Geography",
            ),
            art(
                "Iron",
                "Iron is a chemical element; it has symbol Fe and atomic number 26. It is a metal.",
                "Chemical element with atomic number 26 (Fe)",
                "Physical sciences",
            ),
            art(
                "Edward Thorndike",
                "Edward Lee Thorndike was an American psychologist who spent nearly his entire career at Teachers College, Columbia University.",
                "American psychologist (1874–1949)",
                "People",
            ),
            art(
                "Iliad",
                "The Iliad is one of two major ancient Greek epic poems attributed to Homer. It is old.",
                "Epic poem attributed to Homer",
                "Arts",
            ),
            art(
                "Leonardo da Vinci",
                "Leonardo da Vinci was an Italian polymath of the High Renaissance who was active as a painter, draughtsman, engineer, scientist, theorist, sculptor, and architect.",
                "Italian Renaissance polymath (1452–1519)",
                "Arts",
            ),
            art(
                "Sulla",
                "Lucius Cornelius Sulla Felix was a Roman general and statesman of the late Roman Republic.",
                "Roman dictator",
                "People",
            ),
            art(
                "Spanish flu",
                "The 1918–1920 flu pandemic, also known as the Spanish flu, was an exceptionally deadly global influenza pandemic.",
                "1918–1920 global influenza pandemic",
                "History",
            ),
            art(
                "Robin",
                "A robin is a bird that sings in gardens in spring.",
                "Bird",
                "Biology",
            ),
            art(
                "Wren",
                "A wren is a bird that sings in gardens in spring.",
                "Bird",
                "Biology",
            ),
            art(
                "Freedonia",
                "Freedonia is a fictional country in a film by the Marx Brothers. Its capital and largest city is Freedonia City.",
                "",
                "Geography",
            ),
        ]
    }

    fn find<'a>(rows: &'a [QaRow], q: &str) -> Option<&'a QaRow> {
        rows.iter().find(|r| r.question == q)
    }

    #[test]
    fn builds_expected_questions() {
        let rows = build_qa(&sample());
        let dir = find(&rows, "Who directed 2001: A Space Odyssey?").expect("directed");
        assert_eq!(dir.answers, ["Stanley Kubrick"]);
        let year = find(
            &rows,
            "In what year was the film 2001: A Space Odyssey released?",
        )
        .expect("year");
        assert_eq!(year.answers, ["1968"]);
        let def = find(&rows, "What is the capital and largest city of the Netherlands, with a population of 933,680 in 2024?")
            .expect("def");
        assert_eq!(def.answers, ["Amsterdam"]);
        let who = rows
            .iter()
            .find(|r| r.question.starts_with("Who was an American psychologist"))
            .expect("who");
        assert_eq!(who.answers, ["Edward Thorndike", "Edward Lee Thorndike"]);
        assert_eq!(
            find(&rows, "What is the atomic number of Iron?").map(|r| r.answers.clone()),
            Some(vec!["26".to_string()])
        );
        assert_eq!(
            find(&rows, "What is the chemical symbol of Iron?").map(|r| r.answers.clone()),
            Some(vec!["Fe".to_string()])
        );
        assert!(find(&rows, "What is the 1968 film by Stanley Kubrick?").is_some());
        // Years of the description are not in the extract: not answerable.
        assert!(!rows.iter().any(|r| r.question.contains("1874")));
        assert!(
            !rows
                .iter()
                .any(|r| r.source_doc_id.as_deref() == Some("Iliad")),
            "'one of two' has two answers"
        );
        assert!(find(&rows, "What is the 1918–1920 global influenza pandemic?").is_some());
        assert!(
            !rows
                .iter()
                .any(|r| r.source_doc_id.as_deref() == Some("Sulla")),
            "too generic for one person"
        );
        assert!(find(&rows, "Who was an Italian polymath of the High Renaissance who was active as a painter, draughtsman, engineer, scientist, theorist, sculptor, and architect?").is_some());
        // Identical definitions: the question would have two answers.
        assert!(
            !rows
                .iter()
                .any(|r| matches!(r.source_doc_id.as_deref(), Some("Robin" | "Wren")))
        );
        // The capital's name contains the title: it would give itself away.
        assert!(
            !rows
                .iter()
                .any(|r| r.question == "What is the capital of Freedonia?")
        );
        for r in &rows {
            assert_eq!(r.source, "corpus");
            assert!(
                r.answers
                    .iter()
                    .all(|a| !a.is_empty() && a.split_whitespace().count() <= MAX_ANSWER_WORDS)
            );
        }
    }

    #[test]
    fn deterministic_and_splits_share_no_article() {
        let arts = sample();
        let a = build_qa(&arts);
        let mut rev = arts.clone();
        rev.reverse();
        let mut b = build_qa(&rev);
        b.sort_by(|x, y| x.id.cmp(&y.id));
        let mut a_sorted = a.clone();
        a_sorted.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(a_sorted, b, "input order must not change the rows");
        assert_eq!(a, build_qa(&arts));

        let mut split_of: HashMap<&Option<String>, &String> = HashMap::new();
        for r in &a {
            let s = split_of.entry(&r.source_doc_id).or_insert(&r.split);
            assert_eq!(*s, &r.split, "{:?} in two splits", r.source_doc_id);
        }
        let ids: std::collections::HashSet<&str> = a.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), a.len(), "ids must be unique");
    }

    #[test]
    fn or_aliases_are_separate_answers_and_unicode_spaces_match_markers() {
        assert_eq!(
            alias_names("Shen Kuo or Shen Gua"),
            ["Shen Kuo", "Shen Gua"]
        );
        assert_eq!(alias_names("Uncle Tom's Cabin; or"), ["Uncle Tom's Cabin"]);
        assert_eq!(alias_names("Robin"), ["Robin"]);
        let rows = build_qa(&[
            art(
                "Brassicaceae",
                "Brassicaceae or Cruciferae is a medium-sized and economically important family of flowering plants.",
                "",
                "Biology",
            ),
            art(
                "Actinium",
                "Actinium is a chemical element; it has symbol Ac and atomic number\u{a0}89. It was discovered in 1899.",
                "",
                "Physical sciences",
            ),
            art(
                "Delian League",
                "The Delian League was an association of Greek city-states, founded in 478\u{a0}BC, under the leadership of Athens.",
                "",
                "History",
            ),
        ]);
        let answers = |q: &str| find(&rows, q).map(|r| r.answers.clone());
        assert_eq!(
            answers(
                "What is a medium-sized and economically important family of flowering plants?"
            ),
            Some(vec!["Brassicaceae".to_string(), "Cruciferae".to_string()])
        );
        assert_eq!(
            answers("What is the atomic number of Actinium?"),
            Some(vec!["89".to_string()])
        );
        assert_eq!(
            answers("In what year was Delian League founded?"),
            Some(vec!["478 BC".to_string()])
        );
    }

    #[test]
    fn a_nationality_before_the_role_is_not_the_name() {
        let s = "American author Frank Herbert and others";
        assert_eq!(
            name_at(after_role_noun(s)).as_deref(),
            Some("Frank Herbert")
        );
        assert_eq!(
            name_at(after_role_noun("Russian composer Pyotr Ilyich Tchaikovsky")).as_deref(),
            Some("Pyotr Ilyich Tchaikovsky")
        );
        assert_eq!(
            name_at(after_role_noun("Stanley Kubrick, who co-wrote")).as_deref(),
            Some("Stanley Kubrick")
        );
    }

    #[test]
    fn sentence_and_name_helpers() {
        assert_eq!(
            first_sentence("Arthur C. Clarke wrote it. Then more."),
            "Arthur C. Clarke wrote it."
        );
        assert_eq!(
            first_sentence("It is c. 300 years old. X."),
            "It is c. 300 years old."
        );
        assert_eq!(
            name_at("Stanley Kubrick, who"),
            Some("Stanley Kubrick".into())
        );
        assert_eq!(
            name_at("Arthur C. Clarke."),
            Some("Arthur C. Clarke".into())
        );
        assert_eq!(
            name_at("Ludwig van Beethoven in 1808"),
            Some("Ludwig van Beethoven".into())
        );
        assert_eq!(name_at("the studio"), None);
        assert_eq!(year_at("1968 epic"), Some("1968".into()));
        assert_eq!(year_at("19680 x"), None);
        assert_eq!(year_at("478 BC by Athens"), Some("478 BC".into()));
        assert_eq!(year_at("204 BCE."), Some("204 BCE".into()));
        assert_eq!(year_at("1848 Bavaria"), Some("1848".into()));
        assert_eq!(element_symbol_at("Fe and"), Some("Fe".into()));
        assert_eq!(element_symbol_at("FeO"), None);
        assert_eq!(title_core("Tomato (fruit)"), "Tomato");
    }
}
