#!/usr/bin/env python3
"""An independent verifier of a dtk store's provenance records.

Written from docs/format.md alone (store format 4), without reading dtk's source, to show
that the document is exact. It reads the metadata repository only with git plumbing
(`rev-parse`, `ls-tree`, `cat-file`) and checks, for the target and every record of its
ancestry, the record-level checks of "What `dkt verify` checks" (1 to 8). It does not
re-hash data (check 9, `content`, needs the kinds) nor re-read origins: those are
reported `skipped`.

    python3 tests/verifier/dtk_verify.py --git-dir PROJECT/.dkt/.git TARGET [--json]

TARGET is SOURCE:VERSION (ALGO:HEX, or a unique prefix of it or of HEX), a run ID or a
node ID (a unique prefix of either). Exit 0 when nothing mismatched, 1 when something
did, 2 on bad usage or an unreadable store.

Where docs/format.md left a choice open, the choice made here is marked `GUESS:` and
listed in tests/verifier/README.md.
"""

import argparse
import json
import re
import subprocess
import sys

try:
    import blake3
    import rfc8785
except ImportError as e:  # pragma: no cover
    sys.stderr.write(f"dtk_verify: missing Python module: {e.name} (pip install blake3 rfc8785)\n")
    sys.exit(3)

BRANCH = "refs/heads/main"
FORMAT = "dtk-store 4\n"
MAX_INT = 2**53 - 1
HEX_LEN = {"sha1": 40, "sha256": 64, "md5": 32, "blake3": 64}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(Exception):
    pass


def _ssh_strings(data):
    """Split an SSH wire-format buffer into its length-prefixed strings."""
    out = []
    while data:
        if len(data) < 4:
            raise ValueError("truncated SSH string")
        n = int.from_bytes(data[:4], "big")
        if len(data) < 4 + n:
            raise ValueError("truncated SSH string")
        out.append(data[4:4 + n])
        data = data[4 + n:]
    return out


def _ssh_string(b):
    return len(b).to_bytes(4, "big") + b


def sshsig_verify(namespace, message, armored):
    """Check an armored SSHSIG (ed25519) of `message` in `namespace` (the format of
    OpenSSH's PROTOCOL.sshsig); returns the key's `SHA256:` fingerprint, raises ValueError
    when it does not verify, ImportError without the module cryptography."""
    import base64
    import hashlib
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    lines = [l.strip() for l in armored.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN SSH SIGNATURE-----" or lines[-1] != "-----END SSH SIGNATURE-----":
        raise ValueError("not an armored SSH signature")
    blob = base64.b64decode("".join(lines[1:-1]))
    if blob[:6] != b"SSHSIG" or int.from_bytes(blob[6:10], "big") != 1:
        raise ValueError("not an SSHSIG blob")
    pub, ns, reserved, hash_alg, sig = _ssh_strings(blob[10:])
    if ns.decode() != namespace:
        raise ValueError(f"namespace {ns.decode()!r}, not {namespace!r}")
    kind, raw_pub = _ssh_strings(pub)
    sig_kind, raw_sig = _ssh_strings(sig)
    if kind != b"ssh-ed25519" or sig_kind != b"ssh-ed25519":
        raise ValueError("not an ed25519 signature")
    h = {b"sha512": hashlib.sha512, b"sha256": hashlib.sha256}.get(hash_alg)
    if h is None:
        raise ValueError(f"hash {hash_alg!r}")
    signed = (b"SSHSIG" + _ssh_string(ns) + _ssh_string(reserved) + _ssh_string(hash_alg)
              + _ssh_string(h(message).digest()))
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(pub).digest()).decode().rstrip("=")
    try:
        Ed25519PublicKey.from_public_bytes(raw_pub).verify(raw_sig, signed)
    except InvalidSignature:
        raise ValueError(f"the signature by {fp} does not verify")
    return fp


# ---------------------------------------------------------------------------------------
# Reading the store with git plumbing


class Store:
    def __init__(self, git_dir):
        self.git_dir = git_dir
        tip = self._git("rev-parse", "--verify", "-q", BRANCH + "^{commit}")
        if tip is None:
            raise StoreError(f"{git_dir}: no branch {BRANCH}")
        self.tip = tip.decode().strip()
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", self.tip)
        if listing is None:
            raise StoreError(f"{git_dir}: cannot list {self.tip}")
        # path -> blob id, for every blob of the tree
        self.blobs = {}
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, path = entry.split(b"\t", 1)
            _mode, kind, oid = meta.split(b" ")
            if kind == b"blob":
                self.blobs[path.decode("utf-8", "surrogateescape")] = oid.decode()
        self._cache = {}
        fmt = self.read("format")
        if fmt is None:
            raise StoreError("the store has no `format` file")
        if fmt.decode("utf-8", "replace") != FORMAT:
            raise StoreError(f"store format {fmt!r}, this verifier reads {FORMAT!r}")

    def _git(self, *args):
        r = subprocess.run(
            ["git", "--git-dir", self.git_dir, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if r.returncode != 0:
            return None
        return r.stdout

    def oid(self, path):
        return self.blobs.get(path)

    def read(self, path):
        """The bytes of the blob at `path`, or None."""
        oid = self.blobs.get(path)
        if oid is None:
            return None
        if oid not in self._cache:
            data = self._git("cat-file", "blob", oid)
            if data is None:
                raise StoreError(f"cannot read object {oid} ({path})")
            self._cache[oid] = data
        return self._cache[oid]

    def paths_under(self, prefix):
        return [p for p in self.blobs if p.startswith(prefix)]


# ---------------------------------------------------------------------------------------
# Hashes, paths and encodings (docs/format.md)


def b3(data):
    return blake3.blake3(data).hexdigest()


def name_fan(name):
    """`x/y`: the first two hex digits of BLAKE3 of a source name."""
    h = b3(name.encode("utf-8"))
    return f"{h[0]}/{h[1]}"


def split_version(version):
    algo, _, hexd = version.partition(":")
    return algo, hexd


def version_path(source, version):
    algo, hexd = split_version(version)
    return f"versions/{name_fan(source)}/{source}/{hexd[0]}/{hexd[1]}/{algo}-{hexd}.json"


def node_path(node_id):
    return f"nodes/{node_id[0]}/{node_id[1]}/{node_id}.json"


def run_path(run_id, ext="json"):
    a, b, c, d = run_id[:4]
    return f"runs/{a}/{b}/{c}/{d}/{run_id}.{ext}"


def node_run_path(node_id, run_id):
    return f"node-runs/{node_id[0]}/{node_id[1]}/{node_id}/{run_id[0]}/{run_id[1]}/{run_id}.json"


def consumer_path(source, version, run_id):
    algo, hexd = split_version(version)
    return (
        f"consumers/{name_fan(source)}/{source}/{hexd[0]}/{hexd[1]}/{algo}-{hexd}/{run_id}.json"
    )


def short_version(source, version):
    _, hexd = split_version(version)
    return f"{source}:{hexd[:8]}"


def enc_field(name, items):
    out = f"{name} {len(items)}\n".encode()
    for item in items:
        b = item.encode("utf-8")
        out += str(len(b)).encode() + b" " + b + b"\n"
    return out


def sorted_unique(items):
    return sorted(set(items), key=lambda s: s.encode("utf-8"))


def node_encoding(spec):
    """The node's canonical encoding (encoding version 1), or raise ValueError."""
    cmd = spec["command"]
    out = b"dtk-node\n1\n"
    out += enc_field("command-type", [cmd["type"]])
    out += enc_field("command", list(cmd["value"]))
    out += enc_field("labels", sorted_unique(spec.get("labels", [])))
    out += enc_field("inputs", sorted_unique(spec.get("inputs", [])))
    out += enc_field("outputs", sorted_unique(spec.get("outputs", [])))
    for member, field in (("on_success", "on-success"), ("on_failure", "on-failure")):
        hook = spec.get(member)
        out += enc_field(field, [] if hook is None else [hook])
    script = spec.get("script")
    if script is not None:
        # GUESS: the doc writes these items `LEN PATH "\n"` (no " " between them, unlike
        # every other field's `LEN " " ITEM "\n"`); the generic item form is used.
        out += enc_field("script", [script["path"], script["digest"]])
    retry = spec.get("retry")
    if retry is not None:
        count = retry["count"]
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError("retry count is not an integer")
        out += enc_field("retry", [str(count), retry["backoff"]])
    policy = spec.get("on_conflict")
    if policy is not None:
        out += enc_field("on-conflict", [policy])
    for flag in ("sandbox", "network"):
        value = spec.get(flag, False)
        if not isinstance(value, bool):
            raise ValueError(flag + " is not a boolean")
        if value:
            out += enc_field(flag, [])
    return out


def run_id_of(node, inputs, attempt):
    out = b"dtk-run\n1\n" + node.encode() + b"\n"
    for inp in sorted(inputs, key=lambda i: (i["source"].encode("utf-8"), i["version"])):
        name = inp["source"].encode("utf-8")
        out += str(len(name)).encode() + b" " + name + b"\n" + inp["version"].encode() + b"\n"
    out += f"attempt {attempt}\n".encode()
    return b3(out)


def link_id_of(link):
    f, t = link["from"], link["to"]
    text = f"{f['source']}:{f['version']}\n{t['source']}:{t['version']}\n"
    return b3(text.encode("utf-8"))[:32]


# ---------------------------------------------------------------------------------------
# Seals


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate member")
    return dict(pairs)  # dicts keep insertion (stored) order


def _bad_const(name):
    raise ValueError(f"non-finite number {name}")


def parse_record(data):
    """A stored record as a dict with its members in stored order; raises ValueError."""
    obj = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_bad_const)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _check_numbers(v):
    """Raise ValueError for what has no canonical form: fractional or too large numbers."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, float):
        raise ValueError("fractional number")
    if isinstance(v, int):
        if not -MAX_INT <= v <= MAX_INT:
            raise ValueError("integer beyond 2^53-1")
        return
    if isinstance(v, list):
        for x in v:
            _check_numbers(x)
        return
    if isinstance(v, dict):
        for x in v.values():
            _check_numbers(x)
        return
    raise ValueError(f"unexpected value {v!r}")


def seal_of(rec):
    """(expected, computed) for a parsed record; computed None when it has no seal."""
    stored = rec.get("digest")
    if not isinstance(stored, str):
        return stored, None
    body = {k: v for k, v in rec.items() if k != "digest"}
    _check_numbers(body)
    if stored.startswith("blake3-jcs:"):
        return stored, "blake3-jcs:" + b3(rfc8785.dumps(body))
    if HEX64.match(stored):
        legacy = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return stored, b3(legacy.encode("utf-8"))
    return stored, None


# ---------------------------------------------------------------------------------------
# The verifier


class Verifier:
    def __init__(self, store):
        self.s = store
        self.checks = []
        self._records = {}

    def add(self, subject, check, ok, detail=None):
        if ok is None:
            result = "skipped"
        else:
            result = "ok" if ok else "mismatch"
        c = {"subject": subject, "check": check, "result": result}
        if detail:
            c["detail"] = detail
        self.checks.append(c)

    def record(self, path):
        """(parsed record or None, error or None)."""
        if path not in self._records:
            data = self.s.read(path)
            if data is None:
                self._records[path] = (None, "no record")
            else:
                try:
                    self._records[path] = (parse_record(data), None)
                except (ValueError, UnicodeDecodeError) as e:
                    self._records[path] = (None, f"unreadable record: {e}")
        return self._records[path]

    # -- resolving the target ------------------------------------------------------------

    def resolve(self, target):
        """(label, versions [(source, version)], runs [run id])."""
        if ":" in target:
            source, _, want = target.partition(":")
            want = want.lower()
            prefix = f"versions/{name_fan(source)}/{source}/"
            found = []
            for p in self.s.paths_under(prefix):
                m = re.match(r"^[0-9a-f]/[0-9a-f]/([a-z0-9]+)-([0-9a-f]+)\.json$", p[len(prefix):])
                if not m:
                    continue
                version = f"{m.group(1)}:{m.group(2)}"
                if version.startswith(want) or m.group(2).startswith(want):
                    found.append(version)
            if len(found) != 1:
                raise StoreError(f"{target}: {len(found)} versions match {sorted(found)}")
            return short_version(source, found[0]), [(source, found[0])], []
        want = target.lower()
        if not re.match(r"^[0-9a-f]+$", want):
            raise StoreError(f"{target}: neither SOURCE:VERSION nor a run or node ID")
        runs = sorted(
            {p.rsplit("/", 1)[1][:-5] for p in self.s.paths_under("runs/") if p.endswith(".json")}
        )
        nodes = sorted(
            {p.rsplit("/", 1)[1][:-5] for p in self.s.paths_under("nodes/") if p.endswith(".json")}
        )
        run_hits = [r for r in runs if r.startswith(want)]
        node_hits = [n for n in nodes if n.startswith(want)]
        if len(run_hits) + len(node_hits) != 1:
            raise StoreError(f"{target}: {len(run_hits)} runs and {len(node_hits)} nodes match")
        if run_hits:
            return f"run {run_hits[0][:8]}", [], run_hits
        node = node_hits[0]
        # GUESS (not in format.md): a node's runs are the ones its node-runs/ index names.
        prefix = f"node-runs/{node[0]}/{node[1]}/{node}/"
        node_runs = sorted(
            {p.rsplit("/", 1)[1][:-5] for p in self.s.paths_under(prefix) if p.endswith(".json")}
        )
        return f"node {node[:8]}", [], node_runs

    # -- the ancestry ----------------------------------------------------------------------

    def links(self):
        out = []
        for p in sorted(self.s.paths_under("links/")):
            if not p.endswith(".json"):
                continue
            rec, err = self.record(p)
            out.append((p, rec, err))
        return out

    def ancestry(self, versions, runs):
        """Every version and run of the ancestry, each in dependency order (inputs first),
        and the links that touch a version of it."""
        seen_v, seen_r = set(), set()
        order_v, order_r = [], []
        all_links = self.links()

        def visit_version(sv):
            if sv in seen_v:
                return
            seen_v.add(sv)
            rec, _ = self.record(version_path(*sv))
            if rec is not None and isinstance(rec.get("run"), str):
                visit_run(rec["run"])
            # A link's `from` is upstream of its `to` (inspect shows it so).
            for _p, link, _e in all_links:
                try:
                    to = (link["to"]["source"], link["to"]["version"])
                    fr = (link["from"]["source"], link["from"]["version"])
                except (TypeError, KeyError):
                    continue
                if to == sv:
                    visit_version(fr)
            order_v.append(sv)

        def visit_run(run_id):
            if run_id in seen_r:
                return
            seen_r.add(run_id)
            rec, _ = self.record(run_path(run_id))
            if rec is not None:
                for inp in rec.get("inputs") or []:
                    try:
                        visit_version((inp["source"], inp["version"]))
                    except (TypeError, KeyError):
                        pass
            order_r.append(run_id)

        for r in runs:
            visit_run(r)
            # GUESS (not in format.md): a run's outputs are verified with it (dkt does).
            rec, _ = self.record(run_path(r))
            if rec is not None:
                for out in rec.get("outputs") or []:
                    try:
                        visit_version((out["source"], out["version"]))
                    except (TypeError, KeyError):
                        pass
        for sv in versions:
            visit_version(sv)

        touching = []
        for p, link, err in all_links:
            try:
                to = (link["to"]["source"], link["to"]["version"])
                fr = (link["from"]["source"], link["from"]["version"])
            except (TypeError, KeyError):
                continue
            if to in seen_v or fr in seen_v:
                touching.append((p, link))
        return order_v, order_r, touching

    # -- the checks ------------------------------------------------------------------------

    def check_seal(self, subject, rec):
        try:
            stored, computed = seal_of(rec)
        except ValueError as e:
            self.add(subject, "record digest", False, f"no canonical form: {e}")
            return
        if computed is None:
            self.add(subject, "record digest", False, f"no seal or unknown scheme: {stored!r}")
        else:
            self.add(subject, "record digest", stored == computed,
                     None if stored == computed else f"stored {stored}, computed {computed}")

    def check_version(self, source, version):
        subject = short_version(source, version)
        path = version_path(source, version)
        rec, err = self.record(path)
        if rec is None:
            # GUESS: a version of the ancestry without a record fails its seal check.
            self.add(subject, "record digest", False, f"{path}: {err}")
            return
        self.check_seal(subject, rec)  # check 1
        self.add(subject, "record names its version",  # check 2
                 rec.get("source") == source and rec.get("version") == version)
        run_id = rec.get("run")
        if run_id is not None:  # check 3
            run, rerr = self.record(run_path(run_id)) if isinstance(run_id, str) and HEX64.match(run_id) else (None, "bad run ID")
            if run is None:
                self.add(subject, "producing run's digest", False, f"run {run_id}: {rerr}")
            else:
                # GUESS: "its seal is the version's run_digest" compares the run record's
                # stored `digest` (itself checked by the run's own seal check).
                self.add(subject, "producing run's digest", run.get("digest") == rec.get("run_digest"))
                self.add(subject, "producing run succeeded", run.get("status") == "success")
                self.add(subject, "producing run's node", run.get("node") == rec.get("node"))
                self.add(subject, "inputs are the run's",
                         (rec.get("inputs") or []) == (run.get("inputs") or []))
                self.add(subject, "run names it as an output",
                         {"source": source, "version": version} in (run.get("outputs") or []))
        self.add(subject, "origin", None, "origins are re-read by the kinds (not checked here)")
        self.add(subject, "content", None, "check 9 re-hashes data with the kinds (not checked here)")

    def check_run(self, run_id):
        subject = f"run {run_id[:8]}"
        path = run_path(run_id)
        rec, err = self.record(path)
        if rec is None:
            self.add(subject, "record digest", False, f"{path}: {err}")
            return
        self.check_seal(subject, rec)  # check 1
        node = rec.get("node")
        inputs = rec.get("inputs") or []
        # check 4: the run ID, from the node, inputs and attempt, is the one it is stored as
        try:
            computed = run_id_of(node, inputs, rec["attempt"])
            self.add(subject, "run ID", computed == run_id and rec.get("id") == run_id,
                     None if computed == run_id else f"computed {computed}")
        except (TypeError, KeyError, AttributeError) as e:
            self.add(subject, "run ID", False, f"cannot encode: {e!r}")
        # check 4: the node's ID
        if isinstance(node, str) and HEX64.match(node):
            spec, nerr = self.record(node_path(node))
            if spec is None:
                self.add(subject, "node ID", False, f"node {node}: {nerr}")
            else:
                try:
                    computed = b3(node_encoding(spec))
                    self.add(subject, "node ID", computed == node,
                             None if computed == node else f"computed {computed}")
                except (TypeError, KeyError, AttributeError, ValueError) as e:
                    self.add(subject, "node ID", False, f"cannot encode: {e!r}")
        else:
            self.add(subject, "node ID", False, f"bad node ID {node!r}")
        # check 5: input digests
        digests = rec.get("input_digests")
        if inputs and digests is None:
            # GUESS: the doc says such a run "is reported, not passed silently" without
            # naming the result; reported here as `skipped`.
            self.add(subject, "input digests", None, "recorded without input digests")
        elif inputs:
            for i, inp in enumerate(inputs):
                try:
                    source, version = inp["source"], inp["version"]
                except (TypeError, KeyError):
                    self.add(subject, f"input {inp!r} digest", False, "malformed input")
                    continue
                check = f"input {short_version(source, version)} digest"
                want = digests[i] if isinstance(digests, list) and i < len(digests) else None
                vrec, _ = self.record(version_path(source, version))
                have = vrec.get("digest") if vrec is not None else None
                if want == "":
                    # GUESS: "empty string: the input version had no record" - skipped
                    # when there still is none; a record appeared since is a mismatch.
                    self.add(subject, check, None if have is None else False)
                else:
                    self.add(subject, check, want is not None and want == have)
        # check 6: the log
        log_digest = rec.get("log_digest")
        if log_digest is None:
            self.add(subject, "log digest", None, "recorded without a log digest")
        else:
            log = self.s.read(run_path(run_id, "log"))
            self.add(subject, "log digest",
                     log is not None and log_digest == "blake3:" + b3(log))
        # Worker signatures (a run executed by a remote worker)
        self.check_worker(subject, rec)
        # check 7: index entries are the run record's blob
        blob = self.s.oid(path)
        if isinstance(node, str) and HEX64.match(node):
            p = node_run_path(node, run_id)
            self.add(subject, f"node-runs index ({p})", self.s.oid(p) == blob)
        if rec.get("status") == "success":
            for inp in inputs:
                try:
                    p = consumer_path(inp["source"], inp["version"], run_id)
                except (TypeError, KeyError, IndexError):
                    continue
                self.add(subject, f"consumers index ({p})", self.s.oid(p) == blob)

    def check_worker(self, subject, rec):
        """'Worker signatures': the SSHSIG over the stored statement's canonical JSON, by
        the key `worker_key` names, about this run; its log. Trust is not checked here."""
        ws, key = rec.get("worker_signature"), rec.get("worker_key")
        if ws is None:
            if key is not None:
                self.add(subject, "worker signature", False, "worker_key without worker_signature")
            return
        st = ws.get("statement") if isinstance(ws, dict) else None
        if not isinstance(st, dict):
            self.add(subject, "worker signature", False, "no statement")
            return
        try:
            fp = sshsig_verify("dtk-worker-result", rfc8785.dumps(st), ws.get("signature", ""))
        except ImportError:
            self.add(subject, "worker signature", None,
                     "the Python module cryptography is needed to check ed25519 signatures")
            fp = None
        except ValueError as e:
            self.add(subject, "worker signature", False, str(e))
            return
        if fp is not None:
            if fp == key:
                self.add(subject, f"signed by worker key {fp}", True)
            else:
                self.add(subject, "worker signature", False, f"signed by {fp}, record names {key}")

        def about(r, worker):
            return (r.get("run", r.get("id")), r.get("node"), r.get("attempt"),
                    json.dumps(r.get("inputs")), worker)
        self.add(subject, "worker statement",
                 about(st, st.get("worker")) == about(rec, rec.get("worker", "-")))
        if st.get("log") == rec.get("log_digest"):
            self.add(subject, "worker log", True)
        else:
            self.add(subject, "worker log", None, "the stored log is not the one the worker signed")
        self.add(subject, "worker key trusted", None, "trust is not checked by this verifier")

    def check_link(self, path, link):
        f, t = link["from"], link["to"]
        subject = f"link {short_version(f['source'], f['version'])} -> {short_version(t['source'], t['version'])}"
        try:
            lid = link_id_of(link)
        except (TypeError, KeyError) as e:
            self.add(subject, "link ID", False, f"cannot encode: {e!r}")
            return
        self.add(subject, "link ID", path == f"links/{lid[0]}/{lid[1]}/{lid}.json",
                 None if path.endswith(f"/{lid}.json") else f"stored as {path}, computed {lid}")

    def verify(self, target):
        label, versions, runs = self.resolve(target)
        order_v, order_r, links = self.ancestry(versions, runs)
        for sv in order_v:
            self.check_version(*sv)
        for r in order_r:
            self.check_run(r)
        for p, link in links:
            self.check_link(p, link)
        return label


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--git-dir", required=True, help="the project's .dkt/.git")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("target", help="SOURCE:VERSION, a run ID or a node ID")
    args = ap.parse_args(argv)
    try:
        v = Verifier(Store(args.git_dir))
        label = v.verify(args.target)
    except StoreError as e:
        sys.stderr.write(f"dtk_verify: {e}\n")
        return 2
    bad = [c for c in v.checks if c["result"] == "mismatch"]
    if args.json:
        json.dump({"target": label, "checks": v.checks}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for c in v.checks:
            line = f"{c['subject']:<36} {c['check']:<40} {c['result'].upper() if c['result'] == 'mismatch' else c['result']}"
            if c.get("detail"):
                line += f"  ({c['detail']})"
            print(line)
        skipped = sum(c["result"] == "skipped" for c in v.checks)
        if bad:
            print(f"FAILED: {len(bad)} of {len(v.checks)} checks mismatched")
        else:
            print(f"verified: {len(v.checks) - skipped} checks passed, {skipped} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
