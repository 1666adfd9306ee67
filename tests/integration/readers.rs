//! Shards must open as they are in pyarrow, DuckDB and polars. The check runs in Python; CI
//! installs the readers and sets ASL_REQUIRE_PY_READERS=1 so the test cannot quietly skip there.

use std::process::Command;

use crate::common::*;

#[test]
fn shards_open_in_pyarrow_duckdb_and_polars() {
    let has_readers = Command::new("python3")
        .args(["-c", "import pyarrow, duckdb, polars"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_readers {
        assert!(
            std::env::var_os("ASL_REQUIRE_PY_READERS").is_none(),
            "ASL_REQUIRE_PY_READERS is set but pyarrow/duckdb/polars do not import"
        );
        eprintln!("skipped: python3 with pyarrow, duckdb and polars not found");
        return;
    }
    let fx = Fixture::new(40);
    let rd = fx.run_dir("run");
    assert_ok(&fx.run(&rd, &[]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-shards.py");
    let out = Command::new("python3")
        .args([script, rd.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 shards ok"), "{text}");
}
