#!/usr/bin/env python3
"""The import graph of src/'s top-level modules (issue 19: imports run one way).

Reads every `crate::module` path outside comments and `#[cfg(test)] mod tests`, prints each
module's imports, and exits 1 when the graph has a cycle. Usage: scripts/import-graph.py
"""
import collections
import glob
import re
import sys

edges = collections.defaultdict(set)
for path in glob.glob("src/**/*.rs", recursive=True):
    rel = path[len("src/"):]
    top = rel.split("/")[0].removesuffix(".rs")
    if top in ("main", "lib"):
        continue
    text = open(path).read()
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    for m in re.finditer(r"crate::([a-z_]+)", code):
        if m.group(1) != top and m.group(1) != "test_cases":
            edges[top].add(m.group(1))

for module in sorted(edges):
    print(f"{module} -> {', '.join(sorted(edges[module]))}")


def reaches(start):
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


cycles = [m for m in sorted(edges) if m in reaches(m)]
if cycles:
    print(f"cycle through: {', '.join(cycles)}")
    sys.exit(1)
print("no cycle")
