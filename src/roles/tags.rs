//! Finding `<tag>…</tag>` blocks in model output. Hand-written rather than a regex: the rules
//! (first close after an open, unclosed blocks reported, tool text skipped) are few, and a scanner
//! states them plainly.

/// The contents of every complete `<tag>…</tag>` block, in order.
pub fn blocks<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        match after.find(&close) {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + close.len()..];
            }
            None => break,
        }
    }
    out
}

/// The complete blocks of any of `tags`, in the order they appear in `text`, each with its tag.
pub(crate) fn blocks_in_order<'a, 't>(text: &'a str, tags: &[&'t str]) -> Vec<(&'t str, &'a str)> {
    let mut found: Vec<(usize, &str, &str)> = Vec::new();
    for &tag in tags {
        let mut at = 0;
        for block in blocks(text, tag) {
            let start = text[at..].find(block).map_or(at, |p| at + p);
            at = start + block.len();
            found.push((start, tag, block));
        }
    }
    found.sort_by_key(|(at, _, _)| *at);
    found
        .into_iter()
        .map(|(_, tag, block)| (tag, block))
        .collect()
}

/// Number of opening tags, complete or not.
pub(crate) fn count_open(text: &str, tag: &str) -> usize {
    text.matches(&format!("<{tag}>")).count()
}

/// `text` with every `<tag>…</tag>` block removed (an unclosed one runs to the end).
pub(crate) fn without_blocks(text: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        out.push_str(&rest[..start]);
        let after = &rest[start + open.len()..];
        match after.find(&close) {
            Some(end) => rest = &after[end + close.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text after the last complete `<tag>…</tag>` block.
pub(crate) fn after_last_block<'a>(text: &'a str, tag: &str) -> &'a str {
    let close = format!("</{tag}>");
    match text.rfind(&close) {
        Some(i) => &text[i + close.len()..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_removal() {
        let t = "<think>a</think> x <search>q1</search><information>i</information><search>q2";
        assert_eq!(blocks(t, "search"), vec!["q1"]);
        assert_eq!(count_open(t, "search"), 2);
        assert_eq!(
            without_blocks(t, "information"),
            "<think>a</think> x <search>q1</search><search>q2"
        );
        assert_eq!(after_last_block("<a>1</a>tail", "a"), "tail");
    }
}
