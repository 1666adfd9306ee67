//! `asl status`: the manifest as a table a person can read — one row per stage run that is
//! current (the newest entry of each stage part), in the order stages first ran.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::manifest::{Entry, Manifest};

pub fn status_table(manifest: &Manifest) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "round", "stage", "shard", "status", "rows out", "wall s",
    ]);
    let mut seen: Vec<(u32, &str, String)> = Vec::new();
    for entry in &manifest.entries {
        let key = (entry.round, entry.stage.as_str(), entry.shard.to_string());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    for (round, stage, shard) in &seen {
        let Some(e) = manifest
            .entries
            .iter()
            .rev()
            .find(|e| e.round == *round && e.stage == *stage && e.shard.to_string() == *shard)
        else {
            continue;
        };
        table.add_row(vec![
            format!("{round}"),
            stage.to_string(),
            shard.clone(),
            e.status.to_string(),
            rows_out(e),
            e.wall_s
                .map(|w| format!("{w:.1}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table
}

fn rows_out(e: &Entry) -> String {
    let rows: Option<u64> = e.outputs.iter().filter_map(|o| o.rows).reduce(|a, b| a + b);
    match rows {
        Some(n) => n.to_string(),
        None if e.outputs.is_empty() => "-".into(),
        None => format!("{} files", e.outputs.len()),
    }
}
