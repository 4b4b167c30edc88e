#!/usr/bin/env python3
"""The dependency policy, checked offline from `cargo metadata` (what `cargo deny check
licenses bans sources` would check; the advisory database needs the network, so advisories
are not checked here).

- licences: every crate's SPDX expression must be satisfiable with the ALLOWED licences;
- sources: crates come from crates.io (or are the workspace's own);
- bans: none of BANNED is in the tree (dtk is rustls-only; serde_yaml is unmaintained);
- rust-version: no locked dependency needs a newer Rust than the crates declare;
- duplicates: a crate that a dtk crate depends on directly is in the tree in one version,
  except those in DUPLICATES_ALLOWED, each with its reason.

Usage: python3 scripts/deny.py   (exit 1 on any violation, naming it)
"""
import json
import re
import subprocess
import sys
from collections import defaultdict

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause",
    "BSD-3-Clause", "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016", "MPL-2.0", "CC0-1.0",
    "0BSD", "BSL-1.0", "Unlicense", "CDLA-Permissive-2.0",
}
BANNED = {
    "openssl": "dtk uses rustls only",
    "openssl-sys": "dtk uses rustls only",
    "native-tls": "dtk uses rustls only",
    "serde_yaml": "unmaintained; dtk uses yaml_serde",
    "serde_norway": "no release since 2024; dtk uses yaml_serde",
}
DUPLICATES_ALLOWED = {
    # object_store 0.14 uses md-5 0.11, which has no `asm` feature; the path kind's
    # digest throughput comes from md-5 0.10's assembly.
    "md-5": "the path kind keeps md-5 0.10 for its `asm` feature (object_store uses 0.11)",
    # tokio-postgres (postgres-protocol 0.6) hashes SCRAM with sha2 0.11; the docker and
    # http kinds stay on 0.10 with md-5 0.10 (one digest 0.10 stack) until md-5 0.11 has
    # its assembly.
    "sha2": "tokio-postgres's SCRAM uses sha2 0.11; the kinds stay on 0.10 with md-5 0.10",
}


def satisfiable(expr):
    """Whether an SPDX expression (OR, AND, parentheses, WITH; legacy `/`) is satisfied."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def atom():
        nonlocal pos
        if tokens[pos] == "(":
            pos += 1
            v = disjunction()
            pos += 1  # ")"
            return v
        name = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == "WITH":
            name = f"{name} WITH {tokens[pos + 1]}"
            pos += 2
        return name in ALLOWED

    def conjunction():
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            v = atom() and v
        return v

    def disjunction():
        nonlocal pos
        v = conjunction()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            v = conjunction() or v
        return v

    return disjunction()


def main():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
         "--all-features"]))
    packages = {p["id"]: p for p in meta["packages"]}
    members = set(meta["workspace_members"])
    resolved = {n["id"] for n in meta["resolve"]["nodes"]}
    problems = []
    versions = defaultdict(set)
    for pid in resolved:
        p = packages[pid]
        versions[p["name"]].add(p["version"])
        if pid in members:
            continue
        lic = p.get("license")
        if not lic:
            problems.append(f"licence: {p['name']} {p['version']} declares no SPDX licence")
        elif not satisfiable(lic):
            problems.append(f"licence: {p['name']} {p['version']} is {lic!r}, not allowed")
        src = p.get("source") or ""
        if not src.startswith("registry+https://github.com/rust-lang/crates.io-index"):
            problems.append(f"source: {p['name']} {p['version']} comes from {src or 'a path'}")
        if p["name"] in BANNED:
            problems.append(f"banned: {p['name']} ({BANNED[p['name']]})")
    # rust-version: no dependency (as locked, every feature on) needs a newer Rust than the
    # workspace declares. (The toolchain itself cannot be installed offline to build with.)
    def rv(v):
        return tuple(int(x) for x in v.split("."))
    declared = {packages[m]["rust_version"] for m in members}
    for pid in resolved:
        p = packages[pid]
        need = p.get("rust_version")
        if need and pid not in members and any(rv(need) > rv(d or "0") for d in declared):
            problems.append(
                f"rust-version: {p['name']} {p['version']} needs Rust {need}, the workspace "
                f"declares {', '.join(sorted(d or 'none' for d in declared))}")
    direct = set()
    for pid in members:
        for dep in packages[pid]["dependencies"]:
            if dep["kind"] in (None, "build"):
                direct.add(dep["name"])
    for name in sorted(direct):
        if len(versions.get(name, ())) > 1 and name not in DUPLICATES_ALLOWED:
            problems.append(
                f"duplicate: {name} is in the tree as {', '.join(sorted(versions[name]))}")
    for p in problems:
        print(f"deny: {p}", file=sys.stderr)
    dups = sum(1 for v in versions.values() if len(v) > 1)
    print(f"deny: {len(resolved)} crates: licences, sources, bans, rust-version and "
          f"duplicates {'FAILED' if problems else 'ok'} ({dups} crate(s) in several "
          f"versions, of which dtk's direct dependencies: "
          f"{', '.join(sorted(n for n in direct if len(versions.get(n, ())) > 1)) or 'none'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
