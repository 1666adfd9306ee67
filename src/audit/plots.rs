//! The audit's PNG plots (plotters): round-over-round curves, and histograms of reward and
//! solve rate for one round.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::stats::{RoundAudit, SOLVE_BUCKETS};
use crate::error::{Error, Result};

const SIZE: (u32, u32) = (800, 500);
const ROLE_COLORS: [(&str, RGBColor); 3] = [
    ("policy", RGBColor(31, 119, 180)),
    ("generator", RGBColor(255, 127, 14)),
    ("grm", RGBColor(44, 160, 44)),
];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(path, format!("could not draw the plot ({e})"))
}

/// One line of a curve plot: its label, colour and (round, value) points.
struct Curve {
    label: String,
    color: RGBColor,
    points: Vec<(u32, f64)>,
}

fn curves_png(path: &Path, title: &str, y_desc: &str, curves: &[Curve]) -> Result<()> {
    let rounds: Vec<u32> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    let (Some(&first), Some(&last)) = (rounds.iter().min(), rounds.iter().max()) else {
        return Ok(());
    };
    let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((0.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let x_hi = if last > first { last } else { first + 1 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(first..x_hi, lo..hi + 0.05 * (hi - lo))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(y_desc)
            .x_labels((x_hi - first + 1) as usize)
            .axis_desc_style(("sans-serif", 18))
            .draw()?;
        for curve in curves.iter().filter(|c| !c.points.is_empty()) {
            let color = curve.color;
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(curve.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                curve
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| plot_error(path, e))
}

/// Bars of one series: (lower edge, upper edge, count).
type Bars = Vec<(f64, f64, u64)>;

fn bars_png(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[(String, RGBColor, Bars)],
    x_labels: Option<&[&str]>,
) -> Result<()> {
    let bars: Vec<&(f64, f64, u64)> = series.iter().flat_map(|s| s.2.iter()).collect();
    if bars.is_empty() {
        return Ok(());
    }
    let lo = bars.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let hi = bars.iter().map(|b| b.1).fold(f64::NEG_INFINITY, f64::max);
    let top = bars.iter().map(|b| b.2).max().unwrap_or(1).max(1);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0u64..top + top / 10 + 1)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc)
            .y_desc("count")
            .axis_desc_style(("sans-serif", 18));
        let labeller = |x: &f64| {
            x_labels
                .and_then(|l| l.get(x.round() as usize))
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("{x:.2}"))
        };
        if let Some(labels) = x_labels {
            mesh.x_labels(labels.len() + 1).x_label_formatter(&labeller);
        }
        mesh.draw()?;
        let n = series.len().max(1) as f64;
        for (k, (label, color, bins)) in series.iter().enumerate() {
            let color = *color;
            // Side by side when several roles share a bin.
            chart
                .draw_series(bins.iter().map(|&(a, b, count)| {
                    let w = (b - a) / n;
                    let x0 = a + w * k as f64;
                    Rectangle::new(
                        [(x0 + w * 0.05, 0), (x0 + w * 0.95, count)],
                        color.mix(0.8).filled(),
                    )
                }))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| plot_error(path, e))
}

fn role_color(role: &str) -> RGBColor {
    ROLE_COLORS
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, c)| *c)
        .unwrap_or(RGBColor(120, 120, 120))
}

/// Where the plot `name` is drawn before it is renamed into place: a temporary name that keeps
/// the `.png` extension (plotters picks the image format by it).
fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        ".{name}{}{}.png",
        crate::fsutil::TMP_MARKER,
        std::process::id()
    ))
}

/// Writes every plot into `dir` and returns their paths. `reward_hist` is the chosen round's
/// (role, lower edge, upper edge, count) reward histogram.
pub(crate) fn write_plots(
    dir: &Path,
    rounds: &[RoundAudit],
    chosen: Option<&RoundAudit>,
    reward_hist: &[(String, f64, f64, u64)],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let trained: Vec<&RoundAudit> = rounds.iter().filter(|r| r.round > 0).collect();
    let mut written = Vec::new();
    // Each plot is drawn under a temporary name (`staged`) and renamed into place when drawn;
    // one with nothing to draw leaves no file, and an older run's PNG of that name goes, so the
    // list is what this audit drew.
    let mut emit = |name: &str, result: Result<()>| -> Result<()> {
        let (tmp, path) = (staged(dir, name), dir.join(name));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if tmp.exists() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            written.push(path);
        } else if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    };

    let series = |f: &dyn Fn(&RoundAudit) -> Option<f64>| -> Vec<(u32, f64)> {
        trained
            .iter()
            .filter_map(|r| Some((r.round, f(r)?)))
            .collect()
    };
    let heldout = [
        Curve {
            label: "held-out EM".into(),
            color: RGBColor(31, 119, 180),
            points: series(&|r| r.em()),
        },
        Curve {
            label: "GRM accuracy (held-out predictions)".into(),
            color: RGBColor(44, 160, 44),
            points: series(&|r| r.grm_accuracy()),
        },
        Curve {
            label: "GRM pass rate (policy attempts)".into(),
            color: RGBColor(214, 39, 40),
            points: series(&|r| r.grm_pass_rate()),
        },
        Curve {
            label: "GRM false accepts (passed, rule says wrong)".into(),
            color: RGBColor(148, 103, 189),
            points: series(&|r| r.grm_false_accept()),
        },
        Curve {
            label: "GRM pass rate on rule-right attempts".into(),
            color: RGBColor(255, 127, 14),
            points: series(&|r| r.grm_accept_right()),
        },
        Curve {
            label: "GRM pass rate on rule-wrong attempts".into(),
            color: RGBColor(140, 86, 75),
            points: series(&|r| r.grm_accept_wrong()),
        },
    ];
    let path = staged(dir, "heldout.png");
    emit(
        "heldout.png",
        curves_png(&path, "Held-out EM and the judge", "share", &heldout),
    )?;

    let rewards: Vec<Curve> = ROLE_COLORS
        .iter()
        .map(|(role, color)| Curve {
            label: format!("{role} mean reward"),
            color: *color,
            points: series(&|r| r.role(role).and_then(|s| s.reward.as_ref()).map(|d| d.mean)),
        })
        .collect();
    let path = staged(dir, "rewards.png");
    emit(
        "rewards.png",
        curves_png(&path, "Mean total reward per role", "reward", &rewards),
    )?;

    let solve = [
        Curve {
            label: "policy solve rate (mean over tasks)".into(),
            color: RGBColor(31, 119, 180),
            points: series(&|r| r.solve.as_ref().map(|s| s.mean)),
        },
        Curve {
            label: "valid tasks (share)".into(),
            color: RGBColor(255, 127, 14),
            points: series(&|r| {
                r.tasks
                    .as_ref()
                    .filter(|t| t.rows > 0)
                    .map(|t| t.valid as f64 / t.rows as f64)
            }),
        },
    ];
    let path = staged(dir, "solve_rate.png");
    emit(
        "solve_rate.png",
        curves_png(&path, "Solve rate and task validity", "share", &solve),
    )?;

    if let Some(chosen) = chosen {
        let round = chosen.round;
        let mut by_role: Vec<(String, RGBColor, Bars)> = Vec::new();
        for (role, lo, hi, n) in reward_hist {
            match by_role.iter_mut().find(|s| &s.0 == role) {
                Some(s) => s.2.push((*lo, *hi, *n)),
                None => by_role.push((role.clone(), role_color(role), vec![(*lo, *hi, *n)])),
            }
        }
        let name = format!("reward_hist_round_{round:03}.png");
        let path = staged(dir, &name);
        emit(
            &name,
            bars_png(
                &path,
                &format!("Total reward, round {round}"),
                "total reward",
                &by_role,
                None,
            ),
        )?;
        if let Some(solve) = &chosen.solve {
            let bins: Bars = solve
                .histogram
                .iter()
                .enumerate()
                .map(|(i, c)| (i as f64 - 0.5, i as f64 + 0.5, c.n))
                .collect();
            let name = format!("solve_hist_round_{round:03}.png");
            let path = staged(dir, &name);
            emit(
                &name,
                bars_png(
                    &path,
                    &format!("Per-task solve rate, round {round}"),
                    "solve rate (share of a task's attempts judged correct)",
                    &[("tasks".into(), RGBColor(31, 119, 180), bins)],
                    Some(&SOLVE_BUCKETS),
                ),
            )?;
        }
    }
    Ok(written)
}
