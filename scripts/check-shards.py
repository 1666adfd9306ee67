#!/usr/bin/env python3
"""Opens every shard a run's manifest records with pyarrow, DuckDB and polars, and checks each
reader sees the recorded row count. Usage: scripts/check-shards.py RUN_DIR"""
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow.parquet as pq


def main(run_dir):
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    checked = 0
    for entry in manifest["entries"]:
        if entry["status"] != "done":
            continue
        for out in entry["outputs"]:
            if not out["path"].endswith(".parquet"):
                continue
            path = out["path"] if os.path.isabs(out["path"]) else os.path.join(run_dir, out["path"])
            if not os.path.exists(path):
                continue
            rows = out["rows"]
            n_arrow = pq.read_table(path).num_rows
            n_duck = duckdb.sql(f"select count(*) from read_parquet('{path}')").fetchall()[0][0]
            n_polars = pl.read_parquet(path).height
            if not (n_arrow == n_duck == n_polars == rows):
                print(f"{path}: manifest {rows}, pyarrow {n_arrow}, duckdb {n_duck}, polars {n_polars}")
                sys.exit(1)
            checked += 1
    print(f"{checked} shards ok")


if __name__ == "__main__":
    main(sys.argv[1])
