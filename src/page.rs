//! `asl report --html`: one self-contained HTML page of a run, as a person wants to see it — the
//! pipeline and its params, a table of every round, the curves (inline SVG), the audit's
//! signals with the rule that raised each, and a browsable sample of tasks: the question and
//! reference, every attempt turn by turn (tool text marked), its verdicts and rewards,
//! filterable by round, role and verdict. No network: no script, style or font is fetched.
//!
//! The page stays small on long runs: figures are a few numbers a round, and the sample holds
//! `tasks` tasks of the `rounds` newest rounds (and round 1) only.
//!
//! The SVG charts are written by hand (a polyline per series, two axes, min/max labels): plotters'
//! SVG backend would add a feature and its font handling for what is forty lines here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::audit::{scan, signals, stats};
use crate::error::Result;
use crate::manifest::{Manifest, Status};
use crate::report::outputs;
use crate::roles::Role;
use crate::roles::grm::Verdict;
use crate::shards::read_kind;
use crate::shards::rows::{JudgmentRow, RewardRow, TaskRow, TrajectoryRow};

/// How much of the run the sample shows.
#[derive(Debug, Clone, Copy)]
pub struct PageOptions {
    /// Tasks per sampled round.
    pub tasks: usize,
    /// The newest rounds sampled (round 1 is always sampled too).
    pub rounds: usize,
}

impl Default for PageOptions {
    fn default() -> Self {
        PageOptions {
            tasks: 6,
            rounds: 3,
        }
    }
}

/// What was written.
pub struct PageSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub rounds: usize,
    pub sampled_tasks: usize,
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:12px} .chart{border:1px solid #eee;padding:4px;width:364px}
.chart h3{font-size:13px;margin:2px 4px}
.signal{background:#fff4e0;border-left:4px solid #e69500;padding:4px 8px;margin:4px 0}
.task{border:1px solid #ccc;border-radius:4px;margin:10px 0;padding:6px 10px}
.traj{border-left:3px solid #999;margin:6px 0 6px 8px;padding:2px 8px}
.traj[data-verdict=correct]{border-color:#2a2} .traj[data-verdict=wrong]{border-color:#c33}
.traj[data-role=grm]{border-color:#66c} .traj[data-role=generator]{border-color:#a6a}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12px}
pre.tool{background:#eef4ff;color:#345} pre.model{background:#fafafa}
.meta{color:#666;font-size:12px} .filters{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd}
details>summary{cursor:pointer}
"#;

const SCRIPT: &str = r#"
// A link can carry the filters: report.html#round=2&role=policy&verdict=wrong.
document.addEventListener('DOMContentLoaded',function(){
  var h=new URLSearchParams(location.hash.slice(1));
  [['round','f-round'],['role','f-role'],['verdict','f-verdict']].forEach(function(p){
    if(h.has(p[0])){document.getElementById(p[1]).value=h.get(p[0]);}});
  applyFilters();
});
function applyFilters(){
  var r=document.getElementById('f-round').value, o=document.getElementById('f-role').value,
      v=document.getElementById('f-verdict').value;
  document.querySelectorAll('.task').forEach(function(t){
    t.style.display=(r===''||t.dataset.round===r)?'':'none';});
  document.querySelectorAll('.traj').forEach(function(x){
    var ok=(o===''||x.dataset.role===o)&&(v===''||x.dataset.verdict===v);
    x.style.display=ok?'':'none';});
}
"#;

/// Writes the page of `run_dir` to `out`.
pub fn write_page(run_dir: &Path, out: &Path, opts: &PageOptions) -> Result<PageSummary> {
    let manifest = Manifest::load(run_dir)?;
    let last = manifest
        .entries
        .iter()
        .filter(|e| e.status == Status::Done)
        .map(|e| e.round)
        .max()
        .unwrap_or(0);
    let rounds: Vec<u32> = (1..=last).collect();
    // Round 0 shows in the figures when setup scored the starting checkpoint (`eval` in setup).
    let round0 = crate::report::round_scalars(run_dir, &manifest, 0)?;
    let mut html = String::with_capacity(1 << 20);
    let title = manifest
        .pipeline
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "run".into());
    write!(
        html,
        "<!doctype html><html><head><meta charset=utf-8><title>asl: {t}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        t = esc(&title)
    )
    .ok();
    write!(
        html,
        "<h1>asl run <code>{}</code></h1><p class=meta>{}</p>",
        esc(&run_dir.display().to_string()),
        esc(&match &manifest.pipeline {
            Some(p) => format!(
                "pipeline {} ({}), seed {}, {} rounds planned, {} finished",
                p.name, p.path, p.seed, p.rounds, last
            ),
            None => format!("no pipeline recorded, {last} rounds finished"),
        })
    )
    .ok();
    if let Some(p) = &manifest.pipeline {
        html.push_str("<details><summary>Resolved params of every stage</summary>");
        for (stage, params) in &p.params {
            write!(
                html,
                "<h3>{}</h3><pre>{}</pre>",
                esc(stage),
                esc(&serde_json::to_string_pretty(params).unwrap_or_default())
            )
            .ok();
        }
        html.push_str("</details>");
    }

    // Figures of every round and every optimizer step.
    let mut by_round: BTreeMap<u32, BTreeMap<String, f64>> = BTreeMap::new();
    let mut by_step: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    if !round0.is_empty() {
        by_round.insert(0, round0.into_iter().collect());
    }
    for &round in &rounds {
        by_round.insert(
            round,
            crate::report::round_scalars(run_dir, &manifest, round)?
                .into_iter()
                .collect(),
        );
        for (step, tag, value) in crate::report::step_scalars(run_dir, &manifest, round)? {
            by_step.entry(tag).or_default().push((step as f64, value));
        }
    }
    html.push_str("<h2>Rounds</h2>");
    html.push_str(&rounds_table(&by_round));

    html.push_str("<h2>Curves</h2><div class=charts>");
    let series = |pred: &dyn Fn(&str) -> bool| -> Vec<Series> {
        let mut tags: Vec<String> = by_round
            .values()
            .flat_map(|m| m.keys().cloned())
            .filter(|t| pred(t))
            .collect();
        tags.sort();
        tags.dedup();
        tags.into_iter()
            .map(|t| {
                let pts = by_round
                    .iter()
                    .filter_map(|(r, m)| m.get(&t).map(|v| (f64::from(*r), *v)))
                    .collect();
                (t, pts)
            })
            .collect()
    };
    let charts: Vec<(&str, Vec<Series>)> = vec![
        (
            "Held-out EM",
            series(&|t| t.starts_with("eval/") && t.ends_with("/policy/em")),
        ),
        (
            "GRM accuracy",
            series(&|t| t.starts_with("eval/") && t.ends_with("/grm/accuracy")),
        ),
        (
            "Mean reward per role",
            series(&|t| t.starts_with("reward/")),
        ),
        ("Policy solve rate", series(&|t| t == "policy/solve_rate")),
        (
            "Parse rate",
            series(&|t| t.starts_with("eval/") && t.ends_with("/parse_rate")),
        ),
        (
            "Groups with a learning signal",
            series(&|t| t == "policy/groups_with_signal"),
        ),
    ];
    for (name, s) in &charts {
        html.push_str(&chart(name, "round", s));
    }
    for (name, suffix) in [
        ("Loss per step", "/loss"),
        ("KL per step", "/kl"),
        ("Clip fraction per step", "/clip_fraction"),
        ("Gradient norm per step", "/grad_norm"),
    ] {
        let s: Vec<Series> = by_step
            .iter()
            .filter(|(t, _)| t.ends_with(suffix))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        html.push_str(&chart(name, "optimizer step", &s));
    }
    html.push_str("</div>");

    // The audit's signals.
    html.push_str("<h2>Audit signals</h2>");
    let mut notes = Vec::new();
    let audited: Vec<stats::RoundAudit> = scan::discover(run_dir, &mut notes)
        .iter()
        .filter_map(|f| stats::round_audit(f).ok())
        .collect();
    let thresholds = signals::Thresholds::default();
    let raised = signals::signals(&audited, &thresholds);
    if raised.is_empty() {
        html.push_str(
            "<p>No signal raised (default thresholds; <code>asl audit</code> for the tables).</p>",
        );
    }
    for s in &raised {
        write!(
            html,
            "<div class=signal><b>{}</b> (round {}): {}<br><span class=meta>rule: {}</span></div>",
            esc(&s.name),
            s.round,
            esc(&s.message),
            esc(&thresholds.rule(&s.name))
        )
        .ok();
    }

    // The sample of tasks.
    let mut sampled: Vec<u32> = rounds.iter().rev().take(opts.rounds).copied().collect();
    if !sampled.contains(&1) && !rounds.is_empty() {
        sampled.push(1);
    }
    sampled.sort_unstable();
    html.push_str("<h2>Tasks, attempts and verdicts</h2><div class=filters>");
    html.push_str(&select(
        "f-round",
        "round",
        &sampled.iter().map(u32::to_string).collect::<Vec<_>>(),
    ));
    html.push_str(&select(
        "f-role",
        "role",
        &[Role::Generator, Role::Policy, Role::Grm].map(|r| r.as_str().to_string()),
    ));
    html.push_str(&select(
        "f-verdict",
        "verdict",
        &Verdict::ALL.map(|v| v.name().to_string()),
    ));
    write!(
        html,
        " <span class=meta>{} tasks of rounds {}</span></div>",
        opts.tasks,
        sampled
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
    .ok();
    let tokenizer = tokenizers::Tokenizer::from_file(
        crate::shards::stage_dir(run_dir, 0, "init").join("model/tokenizer.json"),
    )
    .ok();
    let mut sampled_tasks = 0;
    for &round in &sampled {
        sampled_tasks += round_sample(
            &mut html,
            run_dir,
            &manifest,
            round,
            opts.tasks,
            tokenizer.as_ref(),
        )?;
    }
    html.push_str("</body></html>\n");
    crate::fsutil::write_atomic(out, html.as_bytes())?;
    Ok(PageSummary {
        path: out.to_path_buf(),
        bytes: html.len() as u64,
        rounds: rounds.len(),
        sampled_tasks,
    })
}

fn rounds_table(by_round: &BTreeMap<u32, BTreeMap<String, f64>>) -> String {
    let fixed = [
        ("tasks", "tasks/written"),
        ("valid", "tasks/valid"),
        ("after self-check", "tasks/valid_after_selfcheck"),
        ("solve rate", "policy/solve_rate"),
        ("reward: policy", "reward/policy"),
        ("reward: generator", "reward/generator"),
        ("reward: GRM", "reward/grm"),
        ("groups with signal", "policy/groups_with_signal"),
        ("GRM says correct", "grm/verdict_correct_rate"),
    ];
    let mut evals: Vec<String> = by_round
        .values()
        .flat_map(|m| m.keys())
        .filter(|t| {
            t.starts_with("eval/")
                && (t.ends_with("/policy/em")
                    || t.ends_with("/policy/f1")
                    || t.ends_with("/policy/parse_rate")
                    || t.ends_with("/grm/accuracy"))
        })
        .cloned()
        .collect();
    evals.sort();
    evals.dedup();
    let mut h = String::from("<table><tr><th>round</th>");
    for (label, _) in fixed {
        write!(h, "<th>{}</th>", esc(label)).ok();
    }
    for t in &evals {
        // `eval/<dataset>/<role>/<metric>` as "metric, role" over the dataset in small type.
        let parts: Vec<&str> = t.trim_start_matches("eval/").rsplitn(3, '/').collect();
        let head = match parts.as_slice() {
            [metric, role, dataset] => format!(
                "{} {}<br><span class=meta>{}</span>",
                esc(role),
                esc(metric),
                esc(dataset)
            ),
            _ => esc(t),
        };
        write!(h, "<th>{head}</th>").ok();
    }
    h.push_str("</tr>");
    for (round, m) in by_round {
        write!(h, "<tr><td>{round}</td>").ok();
        let cell = |tag: &str| match m.get(tag) {
            Some(v) if tag.starts_with("tasks/") => format!("{v:.0}"),
            Some(v) => format!("{v:.3}"),
            None => "-".into(),
        };
        for (_, tag) in fixed {
            write!(h, "<td>{}</td>", cell(tag)).ok();
        }
        for t in &evals {
            write!(h, "<td>{}</td>", cell(t)).ok();
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// A named line: (x, y) points.
type Series = (String, Vec<(f64, f64)>);

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A line chart of `series` as inline SVG; an empty chart says so.
fn chart(title: &str, x_label: &str, series: &[Series]) -> String {
    let (w, h, pad) = (360.0, 180.0, 36.0);
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let mut s = format!("<div class=chart><h3>{}</h3>", esc(title));
    if pts.is_empty() {
        s.push_str("<p class=meta>no data</p></div>");
        return s;
    }
    let (mut x0, mut x1) = min_max(pts.iter().map(|p| p.0));
    let (mut y0, mut y1) = min_max(pts.iter().map(|p| p.1));
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 <= y0 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    write!(
        s,
        "<svg width={w} height={h} viewBox='0 0 {w} {h}' xmlns='http://www.w3.org/2000/svg' font-size=10>\
<line x1={pad} y1={b} x2={r} y2={b} stroke=#999 /><line x1={pad} y1={pad} x2={pad} y2={b} stroke=#999 />\
<text x={pad} y={ty}>{x0}</text><text x={r} y={ty} text-anchor=end>{x1}</text>\
<text x={tx} y={b} text-anchor=end>{y0:.3}</text><text x={tx} y={yt} text-anchor=end>{y1:.3}</text>\
<text x={mid} y={ty} text-anchor=middle>{xl}</text>",
        b = h - pad,
        r = w - pad,
        ty = h - pad + 14.0,
        tx = pad - 3.0,
        yt = pad + 4.0,
        mid = w / 2.0,
        xl = esc(x_label),
    )
    .ok();
    let mut legend = String::new();
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if line.len() == 1 {
            let (x, y) = points[0];
            write!(
                s,
                "<circle cx={:.1} cy={:.1} r=3 fill='{color}'/>",
                sx(x),
                sy(y)
            )
            .ok();
        } else {
            write!(
                s,
                "<polyline fill=none stroke='{color}' stroke-width=1.5 points='{}'/>",
                line.join(" ")
            )
            .ok();
        }
        write!(
            legend,
            "<span style='color:{color}'>■ {}</span><br>",
            esc(name)
        )
        .ok();
    }
    s.push_str("</svg><div class=meta>");
    s.push_str(&legend);
    s.push_str("</div></div>");
    s
}

fn min_max(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    xs.filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        })
}

fn select(id: &str, label: &str, options: &[String]) -> String {
    let mut s =
        format!("{label} <select id={id} onchange='applyFilters()'><option value=''>all</option>");
    for o in options {
        write!(s, "<option>{}</option>", esc(o)).ok();
    }
    s.push_str("</select> ");
    s
}

/// Writes the first `n` tasks of `round` with their attempts, verdicts and rewards; returns how
/// many were written.
fn round_sample(
    html: &mut String,
    run_dir: &Path,
    m: &Manifest,
    round: u32,
    n: usize,
    tok: Option<&tokenizers::Tokenizer>,
) -> Result<usize> {
    let task_files = match outputs(run_dir, m, "selfcheck", round) {
        f if !f.is_empty() => f,
        _ => outputs(run_dir, m, "generate", round),
    };
    let tasks: Vec<TaskRow> = read_kind(&task_files)?;
    let mut trajectories: Vec<TrajectoryRow> = Vec::new();
    let mut judgments: Vec<JudgmentRow> = Vec::new();
    for stage in ["generate", "selfcheck", "rollout", "judge"] {
        let f = outputs(run_dir, m, stage, round);
        trajectories.extend(read_kind::<TrajectoryRow>(&f)?);
        judgments.extend(read_kind::<JudgmentRow>(&f)?);
    }
    let rewards: Vec<RewardRow> = read_kind(&outputs(run_dir, m, "reward", round))?;
    let reward_of: BTreeMap<&str, &RewardRow> = rewards
        .iter()
        .map(|r| (r.trajectory_id.as_str(), r))
        .collect();
    let by_judge: BTreeMap<&str, &JudgmentRow> = judgments
        .iter()
        .map(|j| (j.judge_trajectory_id.as_str(), j))
        .collect();
    let mut shown = 0;
    for task in tasks.iter().take(n) {
        shown += 1;
        write!(
            html,
            "<div class=task data-round={round}><b>round {round} · {}</b> <span class=meta>{}</span>\
<p><b>Q:</b> {}<br><b>reference:</b> {}{}</p>",
            esc(&task.task_id),
            esc(&match (&task.valid, &task.invalid_reason) {
                (true, _) => "valid".to_string(),
                (false, Some(r)) => format!("invalid: {r}"),
                (false, None) => "invalid".to_string(),
            }),
            esc(&task.question),
            esc(&task.answer),
            match task.answer_aliases.is_empty() {
                true => String::new(),
                false => format!(" <span class=meta>(also {})</span>", esc(&task.answer_aliases.join(", "))),
            }
        )
        .ok();
        let mine: Vec<&TrajectoryRow> = trajectories
            .iter()
            .filter(|t| t.task_id == task.task_id && t.role != "grm")
            .collect();
        for t in mine {
            // The GRM's verdicts on this trajectory (the generator's answer or an attempt).
            let verdicts: Vec<&JudgmentRow> = judgments
                .iter()
                .filter(|j| j.target_trajectory_id == t.trajectory_id)
                .collect();
            let correct = verdicts
                .iter()
                .filter(|j| Verdict::says_correct(&j.verdict))
                .count();
            let verdict = match (verdicts.len(), correct) {
                (0, _) => "",
                (k, c) => Verdict::from_correct(2 * c > k).name(),
            };
            html.push_str(&trajectory(
                t,
                verdict,
                reward_of.get(t.trajectory_id.as_str()).copied(),
                tok,
                &verdicts,
            ));
            for j in &verdicts {
                if let Some(g) = trajectories
                    .iter()
                    .find(|g| g.trajectory_id == j.judge_trajectory_id)
                {
                    let v = by_judge
                        .get(g.trajectory_id.as_str())
                        .map(|j| j.verdict.as_str())
                        .unwrap_or("");
                    html.push_str("<div style='margin-left:24px'>");
                    html.push_str(&trajectory(
                        g,
                        v,
                        reward_of.get(g.trajectory_id.as_str()).copied(),
                        tok,
                        &[],
                    ));
                    html.push_str("</div>");
                }
            }
        }
        html.push_str("</div>");
    }
    Ok(shown)
}

/// One trajectory: its header line, then its turns (model text and tool text marked apart),
/// folded under a summary.
fn trajectory(
    t: &TrajectoryRow,
    verdict: &str,
    reward: Option<&RewardRow>,
    tok: Option<&tokenizers::Tokenizer>,
    verdicts: &[&JudgmentRow],
) -> String {
    let mut s = format!(
        "<div class=traj data-role={} data-verdict='{}'><details><summary><b>{}</b> {} · answer <b>{}</b>",
        esc(&t.role),
        esc(verdict),
        esc(&t.role),
        esc(&t.trajectory_id),
        esc(t.answer.as_deref().unwrap_or("(none)")),
    );
    if !verdicts.is_empty() {
        let v: Vec<&str> = verdicts.iter().map(|j| j.verdict.as_str()).collect();
        write!(s, " · GRM: {}", esc(&v.join(", "))).ok();
    } else if t.role == "grm" && !verdict.is_empty() {
        write!(s, " · verdict {}", esc(verdict)).ok();
    }
    if let Some(r) = reward {
        write!(
            s,
            " · reward {:.3} (+{:.3} format), advantage {:.3}{}{}",
            r.reward,
            r.format_bonus,
            r.advantage,
            r.label
                .as_deref()
                .map(|l| format!(", label {l}"))
                .unwrap_or_default(),
            if r.train { ", trains" } else { "" }
        )
        .ok();
    }
    write!(
        s,
        " <span class=meta>{} turns, {} searches, {}</span></summary>",
        t.turns,
        t.searches,
        esc(&t.finish_reason)
    )
    .ok();
    match tok {
        Some(tok) => {
            for (model, ids) in crate::show::segments(&t.completion_ids, &t.loss_mask) {
                let text = tok.decode(&ids, false).unwrap_or_default();
                let class = if model { "model" } else { "tool" };
                write!(s, "<pre class={class}>{}</pre>", esc(&text)).ok();
            }
        }
        None => {
            write!(s, "<pre class=model>{}</pre>", esc(&t.text)).ok();
        }
    }
    s.push_str("</details></div>");
    s
}

/// HTML-escapes text (the five characters that matter in content and quoted attributes).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_chart_has_one_line_per_series_and_says_when_empty() {
        let s = chart(
            "EM",
            "round",
            &[
                ("a".into(), vec![(1.0, 0.1), (2.0, 0.3)]),
                ("b".into(), vec![(1.0, 0.2)]),
            ],
        );
        assert_eq!(s.matches("<polyline").count(), 1);
        assert_eq!(s.matches("<circle").count(), 1);
        assert!(chart("EM", "round", &[]).contains("no data"));
    }
}
