//! Structure-guided decoding: the environment constrains only the tags of a role's format while
//! the model writes all content. A turn opens with `<think>`; after `</think>` only one of the
//! role's actions may open (`<search>` or `<answer>` for the policy); content is bounded by a
//! token budget, after which the closing tag is forced; end-of-sequence is banned until the
//! format is complete. Which action opens is the model's own choice: the sampler draws among the
//! tags' distinguishing tokens with the model's probabilities. Forced tag tokens are recorded
//! with loss mask `forced_in_loss` (0 by default, see docs/format.md).

use std::collections::VecDeque;

use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

/// One tagged segment an action writes: `open`, optional forced `prefix`, content (free text
/// under `budget` tokens, or one of `choices`), `close`, then optionally another segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub open: String,
    pub close: String,
    pub budget: usize,
    pub prefix: String,
    pub choices: Vec<String>,
    pub next: Option<Box<Segment>>,
    /// A tool call: the turn ends after `close` and the tool's text follows.
    pub tool: bool,
    /// Text forced before `close` when the budget runs out (a question's `?`).
    pub terminator: String,
}

impl Segment {
    /// A search call: the tool answers after `</search>`.
    fn search(budget: usize) -> Segment {
        Segment {
            tool: true,
            ..Segment::free("search", budget)
        }
    }

    fn free(tag: &str, budget: usize) -> Segment {
        Segment {
            open: format!("<{tag}>"),
            close: format!("</{tag}>"),
            budget,
            prefix: String::new(),
            choices: Vec::new(),
            next: None,
            tool: false,
            terminator: String::new(),
        }
    }
}

/// A role's format.
#[derive(Debug, Clone, PartialEq)]
pub struct Guide {
    pub think_budget: usize,
    pub actions: Vec<Segment>,
    pub forced_in_loss: bool,
    /// Tool calls made before a final action may open (while tool turns and budget remain).
    pub min_tool_calls: usize,
}

impl Guide {
    /// The policy: think, then search or answer.
    pub fn policy(think_budget: usize, query_budget: usize, answer_budget: usize) -> Guide {
        Guide {
            think_budget,
            actions: vec![
                Segment::search(query_budget),
                Segment::free("answer", answer_budget),
            ],
            forced_in_loss: false,
            min_tool_calls: 0,
        }
    }

    /// The Prompt Generator: think, then search, or write the question and then its answer.
    pub fn generator(think_budget: usize, query_budget: usize, question_budget: usize) -> Guide {
        Guide {
            think_budget,
            actions: vec![
                Segment::search(query_budget),
                Segment {
                    next: Some(Box::new(Segment::free("answer", 8))),
                    terminator: "?".into(),
                    ..Segment::free("question", question_budget)
                },
            ],
            forced_in_loss: false,
            min_tool_calls: 0,
        }
    }

    /// The GRM: think, then search, or conclude with one of `verdicts` (the judge's words are
    /// the GRM role's to define, `roles::grm::Verdict`).
    pub fn grm(think_budget: usize, query_budget: usize, verdicts: &[&str]) -> Guide {
        Guide {
            think_budget,
            actions: vec![
                Segment::search(query_budget),
                Segment {
                    prefix: "conclusion: ".into(),
                    choices: verdicts.iter().map(|v| v.to_string()).collect(),
                    ..Segment::free("answer", 4)
                },
            ],
            forced_in_loss: false,
            min_tool_calls: 0,
        }
    }

    /// Only the final (non-tool) actions: a role that has no search tool.
    pub(crate) fn without_tools(mut self) -> Guide {
        self.actions.retain(|a| !a.tool);
        self.min_tool_calls = 0;
        self
    }

    /// Tool calls written as `open` `prefix` query `terminator` `close` (the `qwen` format's
    /// `<tool_call>` JSON); the model may close the call itself, the terminator is forced only
    /// when the query's budget runs out.
    pub(crate) fn with_tool_call(
        mut self,
        open: &str,
        prefix: &str,
        close: &str,
        terminator: &str,
    ) -> Guide {
        for a in self.actions.iter_mut().filter(|a| a.tool) {
            a.open = open.to_string();
            a.prefix = prefix.to_string();
            a.close = close.to_string();
            a.terminator = terminator.to_string();
        }
        self
    }

    /// Requires `n` tool calls before a final action: a role meant to explore (the generator
    /// reading the corpus before it writes a task) does not skip straight to its answer. The
    /// requirement lapses when no tool turn or too little budget is left, so the format still
    /// completes.
    pub(crate) fn with_min_tool_calls(mut self, n: usize) -> Guide {
        self.min_tool_calls = n;
        self
    }
}

/// What the guide allows at the next position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Sample freely, except these tokens.
    Free { ban: Vec<u32> },
    /// This token, not sampled.
    Force(u32),
    /// Sample among these tokens only.
    Choose(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    TurnStart,
    Think,
    /// Drawing which of `options` to emit, token by token.
    Choosing(Choice),
    Content(Segment),
    AfterClose(Segment),
    /// Waiting for the tool's text after a tool segment closed.
    WaitTool,
    Done,
}

#[derive(Debug, Clone, PartialEq)]
enum Choice {
    Action,
    Word(Segment),
}

/// The guide's state for one sequence.
#[derive(Debug, Clone)]
pub(crate) struct GuideState {
    guide: Guide,
    phase: Phase,
    queue: VecDeque<u32>,
    /// Token ids of each option being chosen among, and how many of them are emitted.
    options: Vec<(usize, Vec<u32>)>,
    emitted: usize,
    /// Tokens written in the current free phase, and where that phase started.
    phase_tokens: usize,
    pub phase_start: usize,
    eos: Vec<u32>,
    tools_left: bool,
    /// Tool results received so far.
    tool_calls: usize,
    /// Tokens the final action needs; below this many left, the guide wraps up.
    reserve: usize,
    /// How much of the closing tag the free content ends with (`</ans` of `</answer>`): when
    /// the budget runs out there, only the rest of the tag is forced.
    partial_close: usize,
}

/// The length of the longest proper prefix of `close` (at least `</`) that `text` ends with.
fn partial_tag_at_end(text: &str, close: &str) -> usize {
    (2..close.len())
        .rev()
        .find(|&k| close.is_char_boundary(k) && text.ends_with(&close[..k]))
        .unwrap_or(0)
}

/// Tokens a segment chain may take: content budget plus room for its tags.
fn chain_cost(seg: &Segment) -> usize {
    seg.budget + 12 + seg.next.as_deref().map_or(0, chain_cost)
}

/// How a guided turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnEnd {
    /// A tool segment closed: the tool's text comes next.
    Tool,
    /// The format is complete.
    Done,
}

fn ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| ModelError::Tokenize(e.to_string()))?
        .get_ids()
        .to_vec())
}

impl GuideState {
    pub fn new(guide: &Guide, eos: &[u32]) -> GuideState {
        GuideState {
            guide: guide.clone(),
            phase: Phase::TurnStart,
            queue: VecDeque::new(),
            options: Vec::new(),
            emitted: 0,
            phase_tokens: 0,
            phase_start: 0,
            eos: eos.to_vec(),
            tools_left: true,
            tool_calls: 0,
            partial_close: 0,
            reserve: 8 + guide
                .actions
                .iter()
                .filter(|a| !a.tool)
                .map(chain_cost)
                .max()
                .unwrap_or(0),
        }
    }

    pub(crate) fn forced_in_loss(&self) -> bool {
        self.guide.forced_in_loss
    }

    /// Whether the turn is over, once the queued tag tokens are out.
    pub(crate) fn turn_end(&self) -> Option<TurnEnd> {
        if !self.queue.is_empty() {
            return None;
        }
        match &self.phase {
            Phase::WaitTool => Some(TurnEnd::Tool),
            Phase::Done => Some(TurnEnd::Done),
            Phase::AfterClose(seg) if seg.next.is_none() => Some(if seg.tool {
                TurnEnd::Tool
            } else {
                TurnEnd::Done
            }),
            _ => None,
        }
    }

    /// The constraint on the next token. `tool_turns_left` is false when no further tool call
    /// is allowed; `len` is the completion's length so far and `remaining` the tokens left in
    /// its budget: when only the final action still fits, thinking and searching wrap up so
    /// the sequence ends with an answer instead of running out mid-tag.
    pub fn next(
        &mut self,
        tok: &Tokenizer,
        tool_turns_left: bool,
        len: usize,
        remaining: usize,
    ) -> Result<Next> {
        let short = remaining <= self.reserve;
        self.tools_left = tool_turns_left && remaining > 2 * self.reserve;
        loop {
            if let Some(&t) = self.queue.front() {
                return Ok(Next::Force(t));
            }
            match self.phase.clone() {
                Phase::TurnStart => {
                    self.queue.extend(ids(tok, "<think>")?);
                    self.enter(Phase::Think, len);
                }
                Phase::Think => {
                    if self.phase_tokens >= self.guide.think_budget || short {
                        self.queue.extend(ids(tok, "</think>")?);
                        self.start_action_choice(tok, self.tools_left)?;
                    } else {
                        return Ok(Next::Free {
                            ban: self.eos.clone(),
                        });
                    }
                }
                Phase::Choosing(_) => return Ok(self.choose_step()),
                Phase::Content(seg) => {
                    if self.phase_tokens >= seg.budget || (seg.tool && short) {
                        if self.partial_close > 0 {
                            // The model was closing the tag when the budget ran out: finish
                            // it rather than leave `</answer` in the content.
                            self.queue
                                .extend(ids(tok, &seg.close[self.partial_close..])?);
                        } else {
                            self.queue.extend(ids(tok, &seg.terminator)?);
                            self.queue.extend(ids(tok, &seg.close)?);
                        }
                        self.phase = Phase::AfterClose(seg);
                    } else {
                        return Ok(Next::Free {
                            ban: self.eos.clone(),
                        });
                    }
                }
                Phase::AfterClose(seg) => match (&seg.next, seg.tool) {
                    (Some(next), _) => {
                        let next = (**next).clone();
                        self.queue.extend(ids(tok, &next.open)?);
                        self.open_segment(tok, next, len)?;
                    }
                    (None, true) => self.phase = Phase::WaitTool,
                    (None, false) => self.phase = Phase::Done,
                },
                Phase::WaitTool | Phase::Done => return Ok(Next::Free { ban: Vec::new() }),
            }
        }
    }

    fn enter(&mut self, phase: Phase, len: usize) {
        self.phase = phase;
        self.phase_tokens = 0;
        self.partial_close = 0;
        self.phase_start = len + self.queue.len();
    }

    fn start_action_choice(&mut self, tok: &Tokenizer, tool_turns_left: bool) -> Result<()> {
        self.options = Vec::new();
        let must_call = tool_turns_left && self.tool_calls < self.guide.min_tool_calls;
        for (i, a) in self.guide.actions.iter().enumerate() {
            if (a.tool && !tool_turns_left) || (must_call && !a.tool) {
                continue;
            }
            self.options.push((i, ids(tok, &a.open)?));
        }
        if self.options.is_empty() {
            return Err(ModelError::InvalidArgument(
                "guided decoding: no action may open".into(),
            ));
        }
        self.emitted = 0;
        self.phase = Phase::Choosing(Choice::Action);
        Ok(())
    }

    fn open_segment(&mut self, tok: &Tokenizer, seg: Segment, len: usize) -> Result<()> {
        self.queue.extend(ids(tok, &seg.prefix)?);
        if seg.choices.is_empty() {
            self.enter(Phase::Content(seg), len);
        } else {
            self.options = seg
                .choices
                .iter()
                .enumerate()
                .map(|(i, c)| Ok((i, ids(tok, c)?)))
                .collect::<Result<_>>()?;
            self.emitted = 0;
            self.phase = Phase::Choosing(Choice::Word(seg));
        }
        Ok(())
    }

    /// The distinct next tokens of the options still possible: one is forced, several drawn.
    fn choose_step(&self) -> Next {
        let mut next: Vec<u32> = self
            .options
            .iter()
            .filter_map(|(_, o)| o.get(self.emitted).copied())
            .collect();
        next.sort_unstable();
        next.dedup();
        match next.as_slice() {
            [one] => Next::Force(*one),
            _ => Next::Choose(next),
        }
    }

    /// Records the token just appended. `since_phase_start` decodes the completion from
    /// [`GuideState::phase_start`]; it is called only in free phases, where the model may close
    /// the tag itself.
    pub(crate) fn observe(
        &mut self,
        tok: &Tokenizer,
        token: u32,
        len_after: usize,
        since_phase_start: impl FnOnce() -> Result<String>,
    ) -> Result<()> {
        if self.queue.front() == Some(&token) {
            // A forced tag token; choices advance only on the tokens drawn or forced by the
            // choice itself, which never come from the queue.
            self.queue.pop_front();
            return Ok(());
        }
        match self.phase.clone() {
            Phase::Choosing(_) => self.advance_choice(tok, token, len_after)?,
            Phase::Think => {
                self.phase_tokens += 1;
                if since_phase_start()?.contains("</think>") {
                    self.start_action_choice(tok, self.tools_left)?;
                }
            }
            Phase::Content(seg) => {
                self.phase_tokens += 1;
                let text = since_phase_start()?;
                self.partial_close = partial_tag_at_end(&text, &seg.close);
                if text.contains(seg.close.as_str()) {
                    self.phase = Phase::AfterClose(seg);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn advance_choice(&mut self, tok: &Tokenizer, token: u32, len_after: usize) -> Result<()> {
        let at = self.emitted;
        self.options.retain(|(_, o)| o.get(at) == Some(&token));
        self.emitted += 1;
        let finished = self
            .options
            .iter()
            .find(|(_, o)| o.len() == self.emitted)
            .map(|(i, _)| *i);
        let Some(i) = finished else {
            return Ok(());
        };
        match self.phase.clone() {
            Phase::Choosing(Choice::Action) => {
                let seg = self.guide.actions[i].clone();
                self.open_segment(tok, seg, len_after)
            }
            Phase::Choosing(Choice::Word(seg)) => {
                self.queue.extend(ids(tok, &seg.close)?);
                self.phase = Phase::AfterClose(seg);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The tool's text was appended: a new turn begins.
    pub(crate) fn on_tool_text(&mut self) {
        self.tool_calls += 1;
        self.phase = Phase::TurnStart;
        self.queue.clear();
    }
}

#[cfg(test)]
mod fuzz {
    //! The guide driven by a hostile "model": in free phases it writes any token, tag fragments
    //! included (`</think>`, `<answer>`, `<|im_end|>` pieces); where it must choose, any allowed
    //! token. The guide never panics, never forces a banned token, and every guided sequence ends
    //! (`Done`) within its token budget plus the closing tags.
    use super::*;
    use proptest::prelude::*;

    fn tokenizer() -> Tokenizer {
        let path = crate::model::test_util::tokenizer_json()
            .expect("the shipped GGUF's tokenizer (scripts/fetch-assets.sh)");
        Tokenizer::from_file(path).expect("tokenizer.json loads")
    }

    /// Pieces a confused or hostile model writes.
    const PIECES: [&str; 14] = [
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<answer>",
        "</answer>",
        "<information>",
        "<|im_end|>",
        "<tool_call>",
        "{\"name\": \"search\"",
        " Paris",
        " the",
        "\n",
        "?",
    ];

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: crate::test_cases(48),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn any_model_output_under_a_guide_ends_within_budget(
            role in 0usize..3,
            tools in any::<bool>(),
            picks in prop::collection::vec((0usize..64, any::<u32>()), 1..400),
            budget in 24usize..200,
        ) {
            let tok = tokenizer();
            let vocab = tok.get_vocab_size(true) as u32;
            let eos = vec![tok.token_to_id("<|im_end|>").unwrap_or(0)];
            let guide = match role {
                0 => Guide::policy(16, 8, 8),
                1 => Guide::generator(16, 8, 16),
                _ => Guide::grm(16, 8, &["correct", "wrong"]),
            };
            let guide = if tools { guide } else { guide.without_tools() };
            let mut state = GuideState::new(&guide, &eos);
            let piece_ids: Vec<Vec<u32>> = PIECES
                .iter()
                .map(|p| tok.encode(*p, false).unwrap().get_ids().to_vec())
                .collect();
            let mut out: Vec<u32> = Vec::new();
            let mut pending: Vec<u32> = Vec::new();
            let mut picks = picks.into_iter().cycle();
            let mut tool_turns = 2usize;
            // Tags the guide forces after the budget: room for the closing chain.
            let limit = budget + 64;
            while out.len() < limit {
                if let Some(end) = state.turn_end() {
                    match end {
                        TurnEnd::Done => break,
                        TurnEnd::Tool => {
                            tool_turns = tool_turns.saturating_sub(1);
                            state.on_tool_text();
                            continue;
                        }
                    }
                }
                let remaining = budget.saturating_sub(out.len());
                let next = state.next(&tok, tool_turns > 0, out.len(), remaining).unwrap();
                let (which, raw) = picks.next().unwrap();
                let token = match &next {
                    Next::Force(t) => *t,
                    Next::Choose(options) => {
                        prop_assert!(!options.is_empty());
                        options[raw as usize % options.len()]
                    }
                    Next::Free { ban } => {
                        if pending.is_empty() {
                            if which < PIECES.len() {
                                pending = piece_ids[which].clone();
                                pending.reverse();
                            } else {
                                pending.push(raw % vocab);
                            }
                        }
                        let t = pending.pop().unwrap();
                        // A sampler never draws a banned token: the first allowed id from a
                        // seeded start (found by scripts/fuzz.sh: the old substitute could be
                        // a banned end of turn itself).
                        let mut c = t;
                        if ban.contains(&c) {
                            c = raw % vocab.max(2) / 2 + 1;
                            while ban.contains(&c) {
                                c = (c + 1) % vocab.max(2);
                            }
                        }
                        c
                    }
                };
                if let Next::Free { ban } = &next {
                    prop_assert!(!ban.contains(&token) || ban.is_empty() || token != eos[0]);
                }
                out.push(token);
                let start = state.phase_start.min(out.len());
                let text = tok.decode(&out[start..], false).unwrap_or_default();
                state.observe(&tok, token, out.len(), || Ok(text)).unwrap();
            }
            prop_assert!(
                state.turn_end() == Some(TurnEnd::Done),
                "not done after {} tokens (budget {budget})",
                out.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `guide` with a scripted model (`script`'s tokens in free phases, the first option
    /// where it must choose) and returns the decoded sequence.
    fn drive(guide: &Guide, script: &str, budget: usize) -> String {
        let path = crate::model::test_util::tokenizer_json()
            .expect("the shipped GGUF's tokenizer (scripts/fetch-assets.sh)");
        let tok = Tokenizer::from_file(path).expect("tokenizer.json loads");
        let eos = vec![tok.token_to_id("<|im_end|>").unwrap()];
        let mut script: VecDeque<u32> = ids(&tok, script).unwrap().into();
        let mut state = GuideState::new(guide, &eos);
        let mut out: Vec<u32> = Vec::new();
        while state.turn_end() != Some(TurnEnd::Done) && out.len() < budget + 64 {
            let next = state
                .next(&tok, false, out.len(), budget.saturating_sub(out.len()))
                .unwrap();
            let token = match next {
                Next::Force(t) => t,
                Next::Choose(options) => options[0],
                Next::Free { .. } => script.pop_front().expect("script long enough"),
            };
            out.push(token);
            let text = tok
                .decode(&out[state.phase_start.min(out.len())..], false)
                .unwrap();
            state.observe(&tok, token, out.len(), || Ok(text)).unwrap();
        }
        tok.decode(&out, false).unwrap()
    }

    /// The budget runs out while the model writes the closing tag: the tag is finished, not
    /// left in the content with a second one after it (`Paris</answer</answer>` before).
    #[test]
    fn a_closing_tag_cut_by_the_budget_is_completed() {
        let tok_path = crate::model::test_util::tokenizer_json().unwrap();
        let tok = Tokenizer::from_file(tok_path).unwrap();
        // Budget the answer so it runs out after `</answer` and before `>`.
        let content = " Paris</answer";
        let n = ids(&tok, content).unwrap().len();
        let guide = Guide::policy(4, 8, n).without_tools();
        let text = drive(&guide, &format!(" ok</think>{content}>\n\n\n\n"), 200);
        assert!(text.ends_with("<answer> Paris</answer>"), "{text:?}");
        // Cut earlier (inside `</`), the rest is still completed.
        let content = " Paris</";
        let n = ids(&tok, content).unwrap().len();
        let guide = Guide::policy(4, 8, n).without_tools();
        let text = drive(&guide, &format!(" ok</think>{content}answer>\n\n\n\n"), 200);
        assert!(text.ends_with("<answer> Paris</answer>"), "{text:?}");
        // Content that is not a tag fragment still gets the full closing tag.
        let guide = Guide::policy(4, 8, 2).without_tools();
        let text = drive(&guide, " ok</think> Paris Texas and more", 200);
        assert!(
            text.ends_with("</answer>") && !text.contains("</answer</"),
            "{text:?}"
        );
    }

    #[test]
    fn partial_tags_are_found_at_the_end_only() {
        assert_eq!(partial_tag_at_end("Paris</answer", "</answer>"), 8);
        assert_eq!(partial_tag_at_end("Paris</", "</answer>"), 2);
        assert_eq!(partial_tag_at_end("Paris<", "</answer>"), 0);
        assert_eq!(partial_tag_at_end("</answer> x", "</answer>"), 0);
        assert_eq!(partial_tag_at_end("Paris", "</answer>"), 0);
    }
}
