//! The run page (`asl report --html`) in a real headless browser (Debian's `chromium`, which
//! `scripts/test.sh` installs when missing and then requires): no console errors, the rounds
//! table in the DOM holds the numbers `asl report` prints, the filter carried in the URL hides
//! what it should once the page's script has run, and a screenshot is taken
//! (`RUN_DIR/report.png`). Called from the smoke test, which has the run.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const HEADLESS: [&str; 4] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
];

fn has_chromium() -> bool {
    let ok = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("ASL_REQUIRE_CHROMIUM").is_none(),
            "ASL_REQUIRE_CHROMIUM is set but chromium does not run"
        );
        eprintln!("skipped the browser check: no chromium (apt-get install chromium)");
    }
    ok
}

/// The DOM after the page's scripts ran, and the browser's log (console messages included).
fn dump(page: &Path, hash: &str) -> (String, String) {
    let out = Command::new("chromium")
        .args(HEADLESS)
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("file://{}{hash}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (role, hidden) of every trajectory block in a dumped DOM.
fn trajectories(dom: &str) -> Vec<(String, bool)> {
    dom.split("<div class=\"traj\"")
        .skip(1)
        .map(|rest| {
            let tag = &rest[..rest.find('>').unwrap()];
            let role = tag
                .split("data-role=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string();
            (role, tag.contains("display: none"))
        })
        .collect()
}

/// `asl report`'s value of `label` in each round's table, by round.
fn table_values(run_dir: &Path, label: &str) -> Vec<(u32, String)> {
    let out = asl(&["report", "--run-dir", run_dir.to_str().unwrap()]);
    assert_ok(&out);
    let mut round = 0;
    let mut values = Vec::new();
    for line in stdout(&out).lines() {
        let cells: Vec<&str> = line
            .split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if let [first, "value"] = cells.as_slice()
            && let Some(r) = first.strip_prefix("round ")
        {
            round = r.parse().unwrap();
        }
        if cells.first() == Some(&label) {
            values.push((round, cells[1].to_string()));
        }
    }
    values
}

pub fn check_in_browser(run_dir: &Path) {
    if !has_chromium() {
        return;
    }
    let page = run_dir.join("report.html");
    let (dom, log) = dump(&page, "");
    assert!(!log.contains("CONSOLE("), "console messages: {log}");
    assert!(!log.contains("Uncaught"), "script errors: {log}");
    // The rounds table in the DOM holds the numbers the round tables print.
    for label in [
        "mean reward: policy",
        "policy solve rate",
        "mean reward: generator",
    ] {
        let values = table_values(run_dir, label);
        assert_eq!(values.len(), 2, "{label}: {values:?}");
        for (round, value) in values {
            let start = dom.find(&format!("<tr><td>{round}</td>")).unwrap();
            let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
            assert!(
                row.contains(&format!("<td>{value}</td>")),
                "{label} {value} not in {row}"
            );
        }
    }
    // Nothing hidden without a filter; `#role=grm` hides every other trajectory.
    let all = trajectories(&dom);
    assert!(all.iter().any(|(r, _)| r == "policy") && all.iter().all(|(_, hidden)| !hidden));
    let (filtered, _) = dump(&page, "#role=grm");
    let after = trajectories(&filtered);
    assert_eq!(after.len(), all.len());
    assert!(
        after
            .iter()
            .all(|(role, hidden)| *hidden == (role != "grm")),
        "{after:?}"
    );
    // A screenshot, to look at.
    let png = run_dir.join("report.png");
    let out = Command::new("chromium")
        .args(HEADLESS)
        .args([
            "--window-size=1300,2400",
            &format!("--screenshot={}", png.display()),
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
    eprintln!("run page screenshot: {}", png.display());
}
