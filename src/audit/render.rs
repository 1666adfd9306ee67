//! How an audit reads: tables on stdout, and `audit.md`, `rounds.csv`, `stats.csv` and
//! `audit.json` beside the plots.

use std::io::Write;
use std::path::{Path, PathBuf};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::stats::{RoundAudit, ratio};
use super::{AuditReport, RoundDiff};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

fn show(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "-".into(),
    }
}

/// Every statistic of a round as (name, value): the rows of `stats.csv` and of `audit diff`.
pub(crate) fn stat_rows(r: &RoundAudit) -> Vec<(String, Option<f64>)> {
    let mut out: Vec<(String, Option<f64>)> = Vec::new();
    let mut push = |name: String, v: f64| out.push((name, Some(v)));
    if let Some(t) = &r.tasks {
        push("tasks.rows".into(), t.rows as f64);
        push("tasks.valid".into(), t.valid as f64);
        push("tasks.valid_share".into(), ratio(t.valid, t.rows));
        if let Some(n) = r.tasks_after_check() {
            push("tasks.valid_after_self_check".into(), n as f64);
        }
        push("tasks.exact_duplicates".into(), t.exact_duplicates as f64);
        push("tasks.near_duplicate_share".into(), t.duplicate_share());
        push("tasks.contains_answer".into(), t.contains_answer as f64);
        push("tasks.question_words".into(), t.question_words_mean);
        push("tasks.answer_words".into(), t.answer_words_mean);
        for c in &t.templates {
            push(format!("tasks.template.{}", c.value), c.n as f64);
        }
    }
    for s in &r.roles {
        let p = &s.role;
        if s.trajectories > 0 {
            push(format!("{p}.trajectories"), s.trajectories as f64);
            push(format!("{p}.parse_rate"), ratio(s.parsed, s.trajectories));
            push(format!("{p}.unparsable"), s.unparsable as f64);
            push(format!("{p}.turns"), s.turns_mean);
            push(format!("{p}.searches"), s.searches_mean);
            push(format!("{p}.search_rate"), s.search_rate);
            push(format!("{p}.truncation"), s.truncation_rate);
            if p == "policy" {
                push(format!("{p}.steering_answers"), s.steering_answers as f64);
            }
        }
        if let Some(d) = &s.reward {
            push(format!("{p}.reward_mean"), d.mean);
            push(format!("{p}.reward_std"), d.std);
            push(format!("{p}.reward_q10"), d.q10);
            push(format!("{p}.reward_q50"), d.q50);
            push(format!("{p}.reward_q90"), d.q90);
            push(format!("{p}.groups"), s.groups as f64);
            push(
                format!("{p}.all_equal_group_share"),
                ratio(s.all_equal_groups, s.groups),
            );
        }
    }
    for j in &r.judges {
        let p = format!("judge.{}", j.target);
        push(format!("{p}.judgments"), j.judgments as f64);
        push(format!("{p}.parse_rate"), ratio(j.parsed, j.judgments));
        push(format!("{p}.pass_rate"), j.pass_rate);
        push(format!("{p}.rule_agreement"), j.rule_agreement);
        push(format!("{p}.false_accept"), j.false_accept);
        push(format!("{p}.rule_right"), j.rule_right as f64);
        if let Some(a) = j.accept_right {
            push(format!("{p}.accept_right"), a);
        }
        if let Some(a) = j.accept_wrong {
            push(format!("{p}.accept_wrong"), a);
        }
    }
    if let Some(s) = &r.splits {
        push("judge.policy.split_tasks".into(), s.split as f64);
        push(
            "judge.policy.unsupported_splits".into(),
            s.unsupported as f64,
        );
    }
    if let Some(s) = &r.solve {
        push("solve.tasks".into(), s.tasks as f64);
        push("solve.mean".into(), s.mean);
        for c in &s.histogram {
            push(format!("solve.hist[{}]", c.value), c.n as f64);
        }
    }
    for e in &r.eval {
        push(
            format!("eval.{}.{}.{}", e.dataset, e.role, e.metric),
            e.value,
        );
    }
    out
}

const ROUND_COLUMNS: [&str; 10] = [
    "round",
    "tasks / valid / self-checked",
    "near-dup share",
    "solve rate",
    "GRM pass rate",
    "GRM–rule agree",
    "GRM false accepts",
    "held-out EM",
    "GRM accuracy",
    "flat policy groups",
];

fn round_cells(r: &RoundAudit) -> Vec<String> {
    let policy = r.role("policy");
    vec![
        r.round.to_string(),
        r.tasks
            .as_ref()
            .map(|t| {
                let checked = r
                    .tasks_after_check()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into());
                format!("{} / {} / {checked}", t.rows, t.valid)
            })
            .unwrap_or_else(|| "-".into()),
        show(r.tasks.as_ref().map(|t| t.duplicate_share())),
        show(r.solve.as_ref().map(|s| s.mean)),
        show(r.grm_pass_rate()),
        show(r.grm_rule_agreement()),
        show(r.grm_false_accept()),
        show(r.em()),
        show(r.grm_accuracy()),
        policy
            .filter(|p| p.groups > 0)
            .map(|p| format!("{} / {}", p.all_equal_groups, p.groups))
            .unwrap_or_else(|| "-".into()),
    ]
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    t
}

fn rounds_table(report: &AuditReport) -> Table {
    let mut t = table(&ROUND_COLUMNS);
    for r in &report.rounds {
        t.add_row(round_cells(r));
    }
    t
}

const ROLE_COLUMNS: [&str; 10] = [
    "role",
    "trajectories",
    "unparsable",
    "turns",
    "searches",
    "search rate",
    "truncated",
    "reward mean ± std",
    "reward q10 / q50 / q90",
    "flat groups",
];

fn role_cells(s: &super::stats::RoleStats) -> Vec<String> {
    let has = s.trajectories > 0;
    let opt = |v: f64| if has { format!("{v:.2}") } else { "-".into() };
    vec![
        s.role.clone(),
        s.trajectories.to_string(),
        if has {
            s.unparsable.to_string()
        } else {
            "-".into()
        },
        opt(s.turns_mean),
        opt(s.searches_mean),
        opt(s.search_rate),
        opt(s.truncation_rate),
        s.reward
            .as_ref()
            .map(|d| format!("{:.3} ± {:.3}", d.mean, d.std))
            .unwrap_or_else(|| "-".into()),
        s.reward
            .as_ref()
            .map(|d| format!("{:.2} / {:.2} / {:.2}", d.q10, d.q50, d.q90))
            .unwrap_or_else(|| "-".into()),
        if s.groups > 0 {
            format!("{} / {}", s.all_equal_groups, s.groups)
        } else {
            "-".into()
        },
    ]
}

/// Lines of detail for one round: tasks, judge, solve-rate histogram, reasons.
fn detail_lines(r: &RoundAudit) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(t) = &r.tasks {
        lines.push(format!(
            "tasks: {} written, {} valid; {} exact and {} near duplicates; {} contain their own \
             answer; question {:.1} words, answer {:.1} words",
            t.rows,
            t.valid,
            t.exact_duplicates,
            t.near_duplicates,
            t.contains_answer,
            t.question_words_mean,
            t.answer_words_mean
        ));
        if !t.templates.is_empty() {
            lines.push(format!(
                "templates: {}",
                t.templates
                    .iter()
                    .map(|c| format!("{} {}", c.value, c.n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for c in &t.invalid_reasons {
            lines.push(format!("invalid task ({}×): {}", c.n, c.value));
        }
    }
    for j in &r.judges {
        let rate = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{a:.3}"));
        lines.push(format!(
            "GRM on {} answers: {} verdicts, {} parsed, pass rate {:.3}, agreement with the rule \
             label {:.3}, false accepts {:.3}; passes {} of the {} the rule calls right and {} of \
             the {} it calls wrong",
            j.target,
            j.judgments,
            j.parsed,
            j.pass_rate,
            j.rule_agreement,
            j.false_accept,
            rate(j.accept_right),
            j.rule_right,
            rate(j.accept_wrong),
            j.judgments - j.rule_right,
        ));
    }
    if let Some(s) = &r.splits {
        lines.push(format!(
            "GRM verdicts split on {} of {} tasks (the generator's entropy reward pays for \
             these); on {} of them the rule label calls none of the passed answers right",
            s.split, s.tasks, s.unsupported
        ));
    }
    if let Some(s) = &r.solve {
        lines.push(format!(
            "policy solve rate over {} tasks: mean {:.3}; histogram {}",
            s.tasks,
            s.mean,
            s.histogram
                .iter()
                .map(|c| format!("{}: {}", c.value, c.n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for role in &r.roles {
        if !role.labels.is_empty() {
            lines.push(format!(
                "{} reward labels: {}",
                role.role,
                role.labels
                    .iter()
                    .map(|c| format!("{} {}", c.value, c.n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for c in &role.parse_errors {
            lines.push(format!("unparsable {} ({}×): {}", role.role, c.n, c.value));
        }
    }
    for e in &r.eval {
        lines.push(format!(
            "eval {} {} {} = {:.3} (n = {})",
            e.dataset, e.role, e.metric, e.value, e.count
        ));
    }
    lines
}

/// Prints the report for a person.
pub fn print_report(report: &AuditReport, out: &mut dyn Write) -> std::io::Result<()> {
    if !report.rounds.is_empty() {
        writeln!(out, "Rounds of {}", report.run_dir)?;
        writeln!(out, "{}", rounds_table(report))?;
    }
    if let Some(d) = report.detail() {
        writeln!(out, "\nRound {} by role", d.round)?;
        let mut t = table(&ROLE_COLUMNS);
        for s in &d.roles {
            t.add_row(role_cells(s));
        }
        writeln!(out, "{t}")?;
        for line in detail_lines(d) {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out)?;
    if report.signals.is_empty() {
        writeln!(out, "signals: none raised")?;
    } else {
        writeln!(out, "signals:")?;
        for s in &report.signals {
            writeln!(
                out,
                "  WARNING [{}] round {}: {}",
                s.name, s.round, s.message
            )?;
        }
    }
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    if !report.files.is_empty() {
        writeln!(out, "wrote:")?;
        for f in &report.files {
            writeln!(out, "  {f}")?;
        }
    }
    Ok(())
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// The report as Markdown, the plots linked by file name.
pub fn markdown(report: &AuditReport, plots: &[PathBuf]) -> String {
    let mut s = format!("# Audit of `{}`\n\n## Rounds\n\n", report.run_dir);
    let rows: Vec<Vec<String>> = report.rounds.iter().map(round_cells).collect();
    s.push_str(&md_table(&ROUND_COLUMNS, &rows));
    if let Some(d) = report.detail() {
        s.push_str(&format!("\n## Round {} by role\n\n", d.round));
        let rows: Vec<Vec<String>> = d.roles.iter().map(role_cells).collect();
        s.push_str(&md_table(&ROLE_COLUMNS, &rows));
        s.push('\n');
        for line in detail_lines(d) {
            s.push_str(&format!("- {line}\n"));
        }
    }
    s.push_str("\n## Signals\n\n");
    if report.signals.is_empty() {
        s.push_str("None raised.\n");
    }
    for sig in &report.signals {
        s.push_str(&format!(
            "- **{}** (round {}): {}\n",
            sig.name, sig.round, sig.message
        ));
    }
    if !report.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &report.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    if !plots.is_empty() {
        s.push_str("\n## Plots\n\n");
        for p in plots {
            if let Some(name) = p.file_name() {
                let name = name.to_string_lossy();
                s.push_str(&format!("![{name}]({name})\n\n"));
            }
        }
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `audit.md`, `rounds.csv`, `stats.csv` and `audit.json` into `dir`.
pub(crate) fn write_reports(dir: &Path, report: &AuditReport) -> Result<Vec<PathBuf>> {
    let plots: Vec<PathBuf> = report
        .files
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes())?;
        written.push(path);
        Ok(())
    };
    write("audit.md", markdown(report, &plots))?;

    let mut rounds = ROUND_COLUMNS
        .iter()
        .map(|c| csv_field(c))
        .collect::<Vec<_>>()
        .join(",");
    rounds.push('\n');
    for r in &report.rounds {
        let cells: Vec<String> = round_cells(r).iter().map(|c| csv_field(c)).collect();
        rounds.push_str(&cells.join(","));
        rounds.push('\n');
    }
    write("rounds.csv", rounds)?;

    let mut stats = String::from("round,stat,value\n");
    for r in &report.rounds {
        for (name, v) in stat_rows(r) {
            stats.push_str(&format!(
                "{},{},{}\n",
                r.round,
                csv_field(&name),
                v.map(|v| v.to_string()).unwrap_or_default()
            ));
        }
    }
    write("stats.csv", stats)?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::input(dir.join("audit.json"), e.to_string()))?;
    write("audit.json", json + "\n")?;
    Ok(written)
}

/// `asl audit diff`: every statistic of rounds A and B with the change, then the questions.
pub fn diff_table(d: &RoundDiff) -> Table {
    let (a, b) = (d.a.round, d.b.round);
    let mut t = table(&[
        "statistic",
        &format!("round {a}"),
        &format!("round {b}"),
        "change",
    ]);
    let ra = stat_rows(&d.a);
    let rb = stat_rows(&d.b);
    let mut names: Vec<&String> = ra.iter().map(|r| &r.0).collect();
    for (n, _) in &rb {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let find =
        |rows: &[(String, Option<f64>)], n: &str| rows.iter().find(|r| r.0 == n).and_then(|r| r.1);
    for n in names {
        let (va, vb) = (find(&ra, n), find(&rb, n));
        let change = match (va, vb) {
            (Some(x), Some(y)) => format!("{:+.3}", y - x),
            (None, Some(_)) => "new".into(),
            (Some(_), None) => "gone".into(),
            _ => "-".into(),
        };
        t.add_row(vec![n.clone(), show(va), show(vb), change]);
    }
    t.add_row(vec![
        format!("round {b} questions asked before in round {a}"),
        "-".into(),
        format!("{} of {}", d.b_repeated, d.b_tasks),
        "-".into(),
    ]);
    t.add_row(vec![
        format!("round {b} new questions"),
        "-".into(),
        (d.b_tasks - d.b_repeated.min(d.b_tasks)).to_string(),
        "-".into(),
    ]);
    t
}
