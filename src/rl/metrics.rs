//! Answer matching as the QA literature does it: SQuAD normalisation (lower-case, strip
//! punctuation and the articles a/an/the, collapse whitespace), then exact match, token F1 and
//! SubEM (a gold answer appears inside the prediction). Scores take the best over all gold
//! answers.

/// SQuAD's answer normalisation, as Search-R1 scores with it: lower-case, delete ASCII
/// punctuation (nothing in its place: "U.S." is "us", "1,000" is "1000", "Jean-Paul" is
/// "jeanpaul"), drop the articles a/an/the, collapse whitespace.
pub(crate) fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn exact_match(prediction: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    bool_score(golds.iter().any(|g| normalize_answer(g) == p))
}

/// A gold answer is contained in the prediction (after normalisation, on word boundaries).
pub(crate) fn sub_exact_match(prediction: &str, golds: &[String]) -> f64 {
    let p = format!(" {} ", normalize_answer(prediction));
    bool_score(golds.iter().any(|g| {
        let g = normalize_answer(g);
        !g.is_empty() && p.contains(&format!(" {g} "))
    }))
}

pub fn f1(prediction: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|g| token_f1(prediction, g))
        .fold(0.0, f64::max)
}

fn token_f1(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    if p.is_empty() || g.is_empty() {
        return bool_score(p == g);
    }
    let mut remaining = g.clone();
    let mut common = 0usize;
    for token in &p {
        if let Some(i) = remaining.iter().position(|t| t == token) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

fn bool_score(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalisation_follows_squad() {
        assert_eq!(normalize_answer("  The Eiffel   Tower! "), "eiffel tower");
        assert_eq!(normalize_answer("An apple, a day"), "apple day");
        // Punctuation is deleted, not spaced (SQuAD's `remove_punc`), so these match as they
        // do in Search-R1's scoring, and a hyphenated name is one word.
        assert_eq!(exact_match("U.S.", &golds(&["US"])), 1.0);
        assert_eq!(exact_match("1,000", &golds(&["1000"])), 1.0);
        assert_eq!(exact_match("McDonald's", &golds(&["McDonalds"])), 1.0);
        assert_eq!(normalize_answer("Jean-Paul Sartre"), "jeanpaul sartre");
    }

    #[test]
    fn em_f1_subem_on_hand_computed_cases() {
        let g = golds(&["Stanley Kubrick", "Kubrick"]);
        assert_eq!(exact_match("stanley kubrick.", &g), 1.0);
        assert_eq!(exact_match("Stanley", &g), 0.0);
        assert_eq!(
            sub_exact_match("It was directed by Stanley Kubrick in 1968", &g),
            1.0
        );
        assert_eq!(sub_exact_match("Kubricks", &g), 0.0);
        // "stanley" vs "stanley kubrick": precision 1, recall 1/2 → F1 2/3.
        assert!((f1("Stanley", &g) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1("", &g), 0.0);
        assert_eq!(f1("", &golds(&[""])), 1.0);
    }
}
