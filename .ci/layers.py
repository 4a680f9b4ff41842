#!/usr/bin/env python3
"""Checks that the crate's top-level modules import downward only (docs/architecture.md):
model <- storage <- backends <- runtime <- engines <- cli, fuzzing. Reads `crate::<module>` paths (and
`use crate::{...}` groups) in src/, ignoring comments. Exits 1 naming every upward import."""
import os
import re
import sys

LAYERS = ["model", "storage", "backends", "runtime", "engines", "cli", "fuzzing"]
RANK = {name: i for i, name in enumerate(LAYERS)}
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")

path_pat = re.compile(r"crate::([a-z_][a-z0-9_]*)")
group_pat = re.compile(r"use\s+crate::\{([^;]*)\}", re.S)
bad = []
for root, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(root, name)
        rel = os.path.relpath(path, src).split(os.sep)
        top = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
        if top in ("lib", "bin") or top not in RANK:
            if top not in ("lib", "bin"):
                bad.append(f"{path}: module `{top}` is in no layer (add it to .ci/layers.py)")
            continue
        text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
        targets = set(path_pat.findall(text))
        for group in group_pat.findall(text):
            targets |= set(re.findall(r"(?:^|[\s,{])([a-z_][a-z0-9_]*)(?=::)", group))
        for item in sorted(set(re.findall(r"crate::([A-Z][A-Za-z0-9_]*)", text))):
            bad.append(f"{path}: `crate::{item}` hides its layer; import it by its module path")
        for target in sorted(targets):
            if target not in RANK and target not in ("self",):
                bad.append(f"{path}: `crate::{target}` is a re-export; use the module's own path")
            if target in RANK and RANK[target] > RANK[top]:
                bad.append(f"{path}: `{top}` imports `crate::{target}`, a layer above it")
for line in bad:
    print(line)
if bad:
    sys.exit(1)
print(f"layers ok: {' <- '.join(LAYERS)}")
