#!/usr/bin/env bash
# The dashboard's figures (issue 15):
#  1. the graph page of a 1,000-node pipeline (2,100 vertices) ready, i.e. drawn, in
#     headless Chromium: from navigation start to the end of the drawing (median of 5);
#  2. a page of the API listing of 100,000 runs (one node's runs, and all runs): median
#     and worst of 20 requests per page position;
#  3. 100 open connections following a run's live log: the CPU time of the `dkt serve`
#     process while the run prints 4,000 lines, against the same run followed by none.
# The projects are built from records by `examples/dashboard_data.rs`. Prints a Markdown
# table on stdout; progress on stderr.
#
#   cargo build --release -p dtk-cli && cargo build --release --example dashboard_data
#   benches/dashboard.sh
#
# Needs python3, chromium and chromedriver (scripts/test.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
DKT=${DKT:-$target/release/dkt}
DATA=${DATA:-$target/release/examples/dashboard_data}
work=$(mktemp -d "${TMPDIR:-/tmp}/dkt-dash-XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
log() { echo "dashboard: $*" >&2; }

log "building the projects in $work"
big=$("$DATA" "$work" | tail -1)

exec python3 - "$DKT" "$work" "$big" <<'PY'
import json, os, socket, statistics, subprocess, sys, threading, time, urllib.request

dkt, work, big = sys.argv[1:4]

def serve(project, *args):
    p = subprocess.Popen([dkt, "serve", "--listen", "127.0.0.1:0", *args], cwd=project,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    addr = line.split("http://")[1].split("/")[0]
    return p, addr

def get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}") as r:
        return r.read()

def log(*a):
    print("dashboard:", *a, file=sys.stderr)

rows = []

# 2. API pages of 100,000 runs.
p, addr = serve(os.path.join(work, "runs"))
t = time.perf_counter()
first = json.loads(get(addr, f"/api/nodes/{big}/runs?limit=50"))
rows.append(("first request after start (counts the node's 100,000 runs once)",
             f"{(time.perf_counter() - t)*1000:.0f} ms", ""))
log(rows[-1])
assert first["total"] == 100000, first["total"]
mid = "8" + "0" * 63  # run IDs are uniform: about half of them sort after this
for label, path in [
    ("first page of one node's 100,000 runs", f"/api/nodes/{big}/runs?limit=50"),
    ("a page half-way through them", f"/api/nodes/{big}/runs?limit=50&after={mid}"),
    ("first page of all 100,000 runs", "/api/runs?limit=50"),
]:
    t = time.perf_counter(); get(addr, path); cold = time.perf_counter() - t
    ts = []
    for _ in range(20):
        t = time.perf_counter(); get(addr, path); ts.append(time.perf_counter() - t)
    rows.append((label, f"{statistics.median(ts)*1000:.1f} ms (worst {max(ts)*1000:.1f} ms; "
                        f"the first request of the path {cold*1000:.0f} ms)", "< 50 ms"))
    log(rows[-1])
p.terminate(); p.wait()

# 1. The graph page in headless Chromium, through chromedriver.
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

port = free_port()
driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def wd(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body or {}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["value"]
for _ in range(200):
    try:
        wd("GET", "/status"); break
    except Exception:
        time.sleep(0.05)
sid = wd("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]}}}})["sessionId"]
p, addr = serve(os.path.join(work, "graph"))
api = []
for _ in range(5):
    t = time.perf_counter(); get(addr, "/api/graph"); api.append(time.perf_counter() - t)
ready = []
for i in range(6):
    wd("POST", f"/session/{sid}/url", {"url": "about:blank"})
    wd("POST", f"/session/{sid}/url", {"url": f"http://{addr}/"})
    for _ in range(1200):
        v = wd("POST", f"/session/{sid}/execute/sync", {"script": "return [document.body.dataset.graphReady, window.dtkGraphReadyMs]", "args": []})
        if v[0]:
            break
        time.sleep(0.02)
    assert v[0] == "2100", v
    if i:  # the first load warms the browser's cache
        ready.append(v[1] / 1000)
wd("DELETE", f"/session/{sid}")
driver.terminate()
p.terminate(); p.wait()
rows.append(("graph page of 1,000 nodes (2,100 vertices) drawn, from navigation start",
             f"{statistics.median(ready)*1000:.0f} ms (worst {max(ready)*1000:.0f} ms)", "< 1 s"))
rows.append(("of which GET /api/graph", f"{statistics.median(api)*1000:.0f} ms", ""))
log(rows[-2]); log(rows[-1])

# 3. 100 dashboards following a live log.
proj = os.path.join(work, "live")
os.makedirs(os.path.join(proj, "out"), exist_ok=True)
subprocess.run([dkt, "init", "--no-signing-key"], cwd=proj, check=True, capture_output=True)
subprocess.run([dkt, "source", "add", "out", "out"], cwd=proj, check=True, capture_output=True)
node = subprocess.run([dkt, "node", "run", "--no-run", "--output=out",
                       "for i in $(seq 1 4000); do echo line $i of the live log; sleep 0.001; done; date > ${out:ROOT}/t"],
                      cwd=proj, check=True, capture_output=True, text=True).stdout.strip()
p, addr = serve(proj)
token = open(os.path.join(proj, ".dkt/secrets/DKT_SERVE_TOKEN")).read().strip()
full = json.loads(get(addr, f"/api/nodes/{node}"))["node"]["id_full"]

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def follower(counts, i, stop):
    s = socket.create_connection(tuple(addr.split(":")[0:1]) + (int(addr.split(":")[1]),))
    s.sendall(f"GET /api/events?node={full} HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())
    f = s.makefile("rb")
    for line in f:
        if line.startswith(b"data: ") and b"log-line" in line:
            counts[i] += 1
        if b"run-finished" in line:
            break
    s.close()

def one(n):
    counts = [0] * n
    ts = [threading.Thread(target=follower, args=(counts, i, None)) for i in range(n)]
    for t in ts: t.start()
    time.sleep(1)
    c0, t0 = cpu(p.pid), time.perf_counter()
    req = urllib.request.Request(f"http://{addr}/api/nodes/{node}/rerun", method="POST", data=b"",
                                 headers={"authorization": f"Bearer {token}"})
    urllib.request.urlopen(req).read()
    if n:
        for t in ts: t.join()
    else:
        while json.loads(get(addr, f"/api/nodes/{node}"))["state"] in ("running", "pending", "outdated"):
            time.sleep(0.05)
    c1, t1 = cpu(p.pid), time.perf_counter()
    return (c1 - c0) / (t1 - t0) * 100, t1 - t0, counts

base, wall0, _ = one(0)
loaded, wall1, counts = one(100)
p.terminate(); p.wait()
assert min(counts) >= 4000, (min(counts), max(counts))
rows.append(("dkt serve CPU, a run printing 4,000 lines, followed by no page",
             f"{base:.1f}% of one core over {wall0:.1f} s", ""))
rows.append(("the same run followed live by 100 connections (each got all 4,000 lines)",
             f"{loaded:.1f}% of one core over {wall1:.1f} s", "< 5% more"))
log(rows[-2]); log(rows[-1])

print("| what | measured | target |")
print("|------|---------:|-------:|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
PY
