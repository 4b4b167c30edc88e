// The dtk dashboard: a single page over the JSON API (docs/api.md). No library, no
// network beyond this server. Pages: #/ (the pipeline graph), #/source/NAME,
// #/node/ID, #/run/ID, #/prov/TARGET, #/runs.
"use strict";

const $main = document.getElementById("main");
const session = { csrf: null, enabled: false };
let feed = null; // the page's EventSource
let pageGen = 0; // which page is current (stale fetches are dropped)

// Build an element: h("a", {href: "#/"}, "text", child, ...). Text is never parsed as HTML.
function h(tag, attrs, ...kids) {
  const svg = ["svg", "g", "rect", "path", "text", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function flash(msg, ok) {
  const f = document.getElementById("flash");
  f.textContent = msg || "";
  f.className = ok ? "ok" : "";
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || r.statusText);
  return body;
}

async function act(path, body) {
  const headers = { "content-type": "application/json" };
  if (session.csrf) headers["x-csrf-token"] = session.csrf;
  const r = await fetch(path, { method: "POST", headers, credentials: "same-origin", body: JSON.stringify(body || {}) });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) { flash("refused: " + (out.error || r.statusText)); throw new Error(out.error); }
  flash("done: " + path.replace(/^\/api\//, ""), true);
  return out;
}

function short(id) { return id ? String(id).slice(0, 8) : "-"; }
function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "-"; }
function sv(x) { return x.source + ":" + short(String(x.version).split(":")[1]); }
function stateTag(s) { return h("span", { class: "state " + s }, s); }
function runLink(id) { return h("a", { href: "#/run/" + id, class: "run-link" }, short(id)); }
function nodeLink(id, name) { return h("a", { href: "#/node/" + id }, name || short(id)); }
function srcLink(n) { return h("a", { href: "#/source/" + encodeURIComponent(n) }, n); }

// ---- session (the token unlocks actions; the page keeps only the CSRF token) ----
async function loadSession() {
  const s = await api("/api/session");
  session.enabled = s.actions_enabled;
  session.csrf = s.csrf;
  const box = document.getElementById("auth");
  box.replaceChildren();
  if (!s.actions_enabled) box.append("read-only");
  else if (s.authorized) box.append(h("span", { id: "authorized" }, "actions unlocked"));
  else {
    const input = h("input", { type: "password", id: "token", placeholder: "dashboard token", autocomplete: "off" });
    const go = async () => {
      const r = await fetch("/api/login", { method: "POST", headers: { "content-type": "application/json" }, credentials: "same-origin", body: JSON.stringify({ token: input.value }) });
      input.value = "";
      const out = await r.json().catch(() => ({}));
      if (!r.ok) { flash("login refused: " + (out.error || r.statusText)); return; }
      flash("actions unlocked", true);
      loadSession();
    };
    box.append(input, h("button", { id: "login", onclick: go }, "unlock actions"));
  }
}

// ---- the live feed ----
function follow(query, onEvent) {
  if (feed) feed.close();
  feed = new EventSource("/api/events" + (query ? "?" + query : ""));
  // One message may carry several events, one JSON object per line.
  feed.onmessage = (m) => {
    for (const line of m.data.split("\n")) {
      try { onEvent(JSON.parse(line)); } catch (e) { /* ignore */ }
    }
  };
}

function debounce(f, ms) {
  let t = null;
  return () => { clearTimeout(t); t = setTimeout(f, ms); };
}

// ---- the pipeline graph ----
// A layered layout (Sugiyama-style): longest-path layers left to right, then a few
// barycentre sweeps to reduce crossings, then rows in order.
function layout(vertices, edges) {
  const idx = new Map(vertices.map((v, i) => [v.key, i]));
  const n = vertices.length;
  const outs = Array.from({ length: n }, () => []), ins = Array.from({ length: n }, () => []);
  for (const [a, b] of edges) {
    const i = idx.get(a), j = idx.get(b);
    if (i === undefined || j === undefined) continue;
    outs[i].push(j); ins[j].push(i);
  }
  const layer = new Array(n).fill(0), indeg = ins.map((x) => x.length);
  const queue = [];
  for (let i = 0; i < n; i++) if (!indeg[i]) queue.push(i);
  for (let q = 0; q < queue.length; q++) {
    const i = queue[q];
    for (const j of outs[i]) { layer[j] = Math.max(layer[j], layer[i] + 1); if (--indeg[j] === 0) queue.push(j); }
  }
  const layers = [];
  for (let i = 0; i < n; i++) (layers[layer[i]] = layers[layer[i]] || []).push(i);
  const pos = new Array(n).fill(0);
  layers.forEach((l) => l.forEach((v, k) => (pos[v] = k)));
  const bary = (v, nbrs) => (nbrs[v].length ? nbrs[v].reduce((s, u) => s + pos[u], 0) / nbrs[v].length : pos[v]);
  for (let sweep = 0; sweep < 4; sweep++) {
    const down = sweep % 2 === 0;
    const order = down ? layers.slice(1) : layers.slice(0, -1).reverse();
    for (const l of order) {
      const key = new Map(l.map((v) => [v, bary(v, down ? ins : outs)]));
      l.sort((a, b) => key.get(a) - key.get(b));
      l.forEach((v, k) => (pos[v] = k));
    }
  }
  const X = 230, Y = 34;
  return vertices.map((v, i) => ({ ...v, x: layer[i] * X, y: pos[i] * Y }));
}

function drawGraph(box, vertices, edges, onClick) {
  const placed = layout(vertices, edges);
  const at = new Map(placed.map((p) => [p.key, p]));
  const W = 170, H = 24;
  const g = h("g", { id: "viewport" });
  const eg = h("g", {});
  for (const [a, b] of edges) {
    const p = at.get(a), q = at.get(b);
    if (!p || !q) continue;
    const x1 = p.x + W, y1 = p.y + H / 2, x2 = q.x, y2 = q.y + H / 2, mx = (x1 + x2) / 2;
    eg.append(h("path", { class: "e", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
  }
  g.append(eg);
  for (const p of placed) {
    const label = p.label.length > 24 ? p.label.slice(0, 23) + "…" : p.label;
    const el = h("g", { class: "v " + p.cls, transform: `translate(${p.x},${p.y})`, "data-key": p.key, "data-id": p.id, "data-name": p.label },
      h("title", {}, p.title), h("rect", { width: W, height: H, rx: p.cls.startsWith("src") ? 12 : 3 }), h("text", { x: 8, y: 16 }, label));
    el.addEventListener("click", () => onClick(p));
    g.append(el);
  }
  const svg = h("svg", { id: "graph" }, g);
  box.replaceChildren(svg);
  // Zoom (wheel) and pan (drag).
  const view = { x: 20, y: 20, k: 1 };
  const apply = () => g.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
  const maxY = Math.max(0, ...placed.map((p) => p.y)) + H, maxX = Math.max(0, ...placed.map((p) => p.x)) + W;
  const fit = () => {
    const r = svg.getBoundingClientRect();
    view.k = Math.min(1, (r.width - 40) / maxX, (r.height - 40) / maxY);
    view.k = Math.max(view.k, 0.02);
    view.x = 20; view.y = 20; apply();
  };
  fit();
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
    const f = e.deltaY < 0 ? 1.2 : 1 / 1.2;
    view.x = mx - (mx - view.x) * f; view.y = my - (my - view.y) * f; view.k *= f; apply();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (e) => { drag = { x: e.clientX - view.x, y: e.clientY - view.y }; });
  window.addEventListener("mouseup", () => (drag = null));
  svg.addEventListener("mousemove", (e) => { if (drag) { view.x = e.clientX - drag.x; view.y = e.clientY - drag.y; apply(); } });
  const centre = (p) => {
    const r = svg.getBoundingClientRect();
    view.k = Math.max(view.k, 0.8);
    view.x = r.width / 2 - (p.x + W / 2) * view.k; view.y = r.height / 2 - (p.y + H / 2) * view.k; apply();
  };
  return { placed, fit, centre, zoom: (f) => { view.k *= f; apply(); } };
}

async function pageGraph(gen) {
  const graph = await api("/api/graph");
  if (gen !== pageGen) return;
  const vertices = [], edges = [];
  for (const s of graph.sources) vertices.push({ key: "s:" + s.name, id: s.name, label: s.name + (s.pinned ? "*" : ""), cls: "src", title: `source ${s.name} (${s.kind}) ${s.latest || "no version"}` });
  for (const n of graph.nodes) {
    const label = n.name || n.id;
    vertices.push({ key: "n:" + n.id_full, id: n.id_full, label, cls: "node " + n.state, title: `node ${n.id} ${n.name || ""}: ${n.state}` });
    for (const i of n.spec.inputs) edges.push(["s:" + i, "n:" + n.id_full]);
    for (const o of n.spec.outputs) edges.push(["n:" + n.id_full, "s:" + o]);
  }
  const search = h("input", { id: "search", placeholder: "search name or ID prefix", size: 30 });
  const info = h("span", { id: "graphinfo" }, `${graph.sources.length} sources, ${graph.nodes.length} nodes`);
  const box = h("div", { id: "graphbox" });
  const legend = h("span", { class: "legend" }, ["up-to-date", "outdated", "pending", "running", "failed"].map(stateTag));
  let g = null;
  const bar = h("div", { id: "graphbar" }, search,
    h("button", { onclick: () => g.zoom(1.25) }, "+"), h("button", { onclick: () => g.zoom(0.8) }, "−"),
    h("button", { onclick: () => g.fit() }, "fit"), info, legend);
  $main.replaceChildren(bar, box);
  g = drawGraph(box, vertices, edges, (p) => {
    location.hash = p.key.startsWith("s:") ? "#/source/" + encodeURIComponent(p.id) : "#/node/" + p.id;
  });
  let hits = [], at = 0;
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const q = search.value.trim().toLowerCase();
    for (const el of box.querySelectorAll(".v.hit")) el.classList.remove("hit");
    hits = q ? g.placed.filter((p) => p.id.toLowerCase().startsWith(q) || p.label.toLowerCase().includes(q)) : [];
    for (const p of hits) box.querySelector(`[data-key="${CSS.escape(p.key)}"]`).classList.add("hit");
    info.textContent = hits.length ? `${hits.length} match(es)` : q ? "no match" : "";
    if (hits.length) { g.centre(hits[at++ % hits.length]); }
  });
  document.body.dataset.graphReady = String(vertices.length);
  window.dtkGraphReadyMs = performance.now();
  follow("", debounce(() => { if (gen === pageGen) pageGraph(gen); }, 500));
}

// ---- a source ----
async function pageSource(gen, name) {
  const d = await api("/api/sources/" + encodeURIComponent(name));
  if (gen !== pageGen) return;
  const s = d.source;
  const actions = h("p", {},
    h("button", { id: "update", onclick: () => act(`/api/sources/${encodeURIComponent(name)}/update`).then(() => route()) }, "update now"), " ",
    h("button", { id: s.frozen ? "thaw" : "freeze", onclick: () => act(`/api/sources/${encodeURIComponent(name)}/${s.frozen ? "thaw" : "freeze"}`).then(() => route()) }, s.frozen ? "thaw" : "freeze"), " ",
    s.pinned ? h("button", { id: "unpin", onclick: () => act(`/api/sources/${encodeURIComponent(name)}/unpin`).then(() => route()) }, "unpin") : null);
  const rows = d.versions.items.map((v) => h("tr", {},
    h("td", {}, h("code", {}, v.version), s.latest === v.version ? " (current)" : ""),
    h("td", {}, when(v.recorded_ms)),
    h("td", {}, v.run ? runLink(v.run) : "polled"),
    h("td", {}, Object.entries(v.extra || {}).map(([k, x]) => `${k}=${x}`).join(" ")),
    h("td", {}, v.consumers.map((c) => [runLink(c), " "])),
    h("td", {}, h("a", { href: "#/prov/" + encodeURIComponent(s.name + ":" + v.version) }, "provenance"), " ",
      s.pinned && s.latest === v.version ? null : h("button", { class: "pin", onclick: () => act(`/api/sources/${encodeURIComponent(name)}/pin`, { version: v.version }).then(() => route()) }, "pin"))));
  $main.replaceChildren(
    h("h2", {}, "source ", s.name, s.pinned ? " (pinned)" : "", s.frozen ? " (frozen)" : ""),
    h("table", {}, [["kind", s.kind], ["location", s.location], ["tag", s.tag || "-"], ["path", s.path || "-"], ["current", s.latest || "-"]].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    actions,
    h("h3", {}, `versions (${d.versions.total})`),
    h("table", { id: "versions" }, h("tr", {}, ["version", "recorded", "made by", "fields", "read by runs", ""].map((x) => h("th", {}, x))), rows));
  follow("", debounce(() => { if (gen === pageGen) pageSource(gen, name); }, 500));
}

// ---- a node ----
async function pageNode(gen, id) {
  const d = await api("/api/nodes/" + encodeURIComponent(id));
  if (gen !== pageGen) return;
  const n = d.node;
  const runsTable = h("table", { id: "runs" });
  const more = h("p", {});
  const live = h("pre", { id: "live-log" });
  let liveRun = null;
  const loadRuns = async (after) => {
    const page = await api(`/api/nodes/${n.id_full}/runs?limit=50` + (after ? "&after=" + after : ""));
    if (!after) runsTable.replaceChildren(h("tr", {}, ["run", "status", "attempt", "queued", "started", "ended", "inputs", "outputs"].map((x) => h("th", {}, x))));
    const sorted = page.items.slice().sort((a, b) => b.queued_ms - a.queued_ms);
    for (const r of sorted) runsTable.append(h("tr", { class: "run-row", "data-run": r.id }, h("td", {}, runLink(r.id)), h("td", {}, stateTag(r.status)), h("td", {}, r.attempt),
      h("td", {}, when(r.queued_ms)), h("td", {}, when(r.started_ms)), h("td", {}, when(r.ended_ms)), h("td", {}, r.inputs.map(sv).join(", ")), h("td", {}, r.outputs.map(sv).join(", "))));
    more.replaceChildren(page.next ? h("button", { onclick: () => loadRuns(page.next) }, `more (${page.total} runs in all)`) : `${page.total} run(s)`);
  };
  const why = d.would_run ? JSON.stringify(d.would_run.reason) + (d.would_run.error ? " — " + d.would_run.error : "") : "nothing: it is up to date on its inputs (or its inputs have no version yet)";
  $main.replaceChildren(
    h("h2", {}, "node ", n.name ? n.name + " " : "", h("code", {}, n.id), " ", stateTag(d.state)),
    h("table", {}, [["command", JSON.stringify(n.spec.command)], ["labels", (n.spec.labels || []).join(", ") || "-"],
      ["inputs", n.spec.inputs.map((i) => [srcLink(i), " "])], ["outputs", n.spec.outputs.map((o) => [srcLink(o), " "])],
      ["current inputs", d.current_inputs ? d.current_inputs.map(sv).join(", ") : "-"], ["would run now", why]].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    d.script ? h("details", {}, h("summary", {}, "script"), h("pre", {}, d.script)) : null,
    h("p", {}, h("button", { id: "rerun", onclick: () => act(`/api/nodes/${n.id_full}/rerun`) }, "rerun"), " ",
      h("a", { href: "#/prov/" + n.id_full }, "provenance")),
    h("h3", {}, "runs"), runsTable, more, h("h3", {}, "live output"), live);
  await loadRuns(null);
  $main.dataset.page = "node:" + n.id_full;
  const refresh = debounce(() => { if (gen === pageGen) loadRuns(null); }, 200);
  follow("node=" + n.id_full, (e) => {
    if (e.event === "run-started") { liveRun = e.run; live.textContent = ""; refresh(); }
    else if (e.event === "log-line") { if (e.run !== liveRun) { liveRun = e.run; live.textContent = ""; } live.append(e.line + "\n"); }
    else if (e.event === "run-finished") { live.append(`[run ${short(e.run)}: ${e.status}]\n`); refresh(); }
    else if (e.event === "changed") refresh();
  });
}

// ---- a run ----
async function pageRun(gen, id) {
  const r = await api("/api/runs/" + encodeURIComponent(id));
  if (gen !== pageGen) return;
  const log = h("pre", { id: "log" });
  const status = h("span", { id: "run-status" }, stateTag(r.status));
  $main.replaceChildren(
    h("h2", {}, "run ", h("code", {}, r.id.slice(0, 8)), " ", status),
    h("table", {}, [["node", nodeLink(r.node)], ["attempt", r.attempt], ["worker", r.worker || "-"], ["queued", when(r.queued_ms)], ["started", when(r.started_ms)], ["ended", when(r.ended_ms)],
      ["exit code", r.exit_code ?? "-"], ["error", r.error || "-"], ["inputs", r.inputs.map((x) => [h("a", { href: "#/source/" + encodeURIComponent(x.source) }, sv(x)), " "])],
      ["outputs", r.outputs.map((x) => [h("a", { href: "#/prov/" + encodeURIComponent(x.source + ":" + x.version) }, sv(x)), " "])]].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    h("p", {}, h("button", { id: "cancel", onclick: () => act(`/api/runs/${r.id}/cancel`) }, "cancel"), " ", h("a", { href: "#/prov/" + r.id }, "provenance")),
    h("h3", {}, "log"), log);
  const live = r.status === "running" || r.status === "pending";
  if (live) follow("run=" + r.id, (e) => {
    if (e.event === "log-line") log.append(e.line + "\n");
    else if (e.event === "run-finished") { status.replaceChildren(stateTag(e.status)); setTimeout(() => { if (gen === pageGen) pageRun(gen, id); }, 300); }
  });
  log.textContent = await api(`/api/runs/${r.id}/log`);
}

// ---- provenance ----
async function pageProv(gen, target) {
  const m = await api("/api/provenance/" + encodeURIComponent(target));
  if (gen !== pageGen) return;
  const vertices = [], edges = [];
  for (const e of m) {
    if (e.relation) { edges.push([e.from, e.to]); continue; }
    const isRun = !!e.node;
    vertices.push({ key: e.ID, id: e.ID, label: isRun ? "run " + e.ID : `${e.source}:${e.ID}`, cls: isRun ? "node " + (e.status === "success" ? "up-to-date" : "failed") : "src", title: JSON.stringify(e) });
    for (const i of e.inputs || []) if (isRun) edges.push([i, e.ID]);
    if (!isRun && e.run) edges.push([e.run, e.ID]);
    if (!isRun && !e.run) for (const i of e.inputs || []) edges.push([i, e.ID]);
  }
  const box = h("div", { id: "graphbox" });
  const verify = h("div", { id: "verify" }, h("button", { id: "run-verify", onclick: async () => {
    verify.textContent = "verifying…";
    try {
      const v = await api(`/api/provenance/${encodeURIComponent(target)}/verify`);
      const bad = (v.checks || []).filter((c) => c.result === "mismatch");
      verify.replaceChildren(h("p", { id: "verify-result" }, bad.length ? `verify: ${bad.length} mismatch(es)` : "verify: ok"), h("pre", {}, JSON.stringify(v, null, 1)));
    } catch (e) { verify.textContent = "verify failed: " + e.message; }
  } }, "verify"));
  const t = encodeURIComponent(target);
  $main.replaceChildren(h("h2", {}, "provenance of ", h("code", {}, target)),
    h("p", {}, h("a", { href: `/api/provenance/${t}/slsa`, id: "slsa" }, "SLSA v1 statement"), " · ", h("a", { href: `/api/provenance/${t}/prov`, id: "prov" }, "W3C PROV-JSON"), " · ",
      h("a", { href: `/api/provenance/${t}` }, "manifest JSON"), " · ", h("a", { href: `/api/provenance/${t}?downstream=true` }, "downstream JSON")),
    verify, box, h("details", {}, h("summary", {}, "manifest"), h("pre", {}, JSON.stringify(m, null, 1))));
  drawGraph(box, vertices, edges, (p) => { location.hash = p.cls.startsWith("src") ? "#/prov/" + encodeURIComponent(p.label.split(":")[0] + ":" + p.id) : "#/run/" + p.id; });
}

// ---- every run ----
async function pageRuns(gen, after) {
  const page = await api("/api/runs?limit=100" + (after ? "&after=" + after : ""));
  if (gen !== pageGen) return;
  $main.replaceChildren(h("h2", {}, `runs (${page.total})`),
    h("table", { id: "runs" }, h("tr", {}, ["run", "node", "status", "queued", "inputs", "outputs"].map((x) => h("th", {}, x))),
      page.items.map((r) => h("tr", { class: "run-row" }, h("td", {}, runLink(r.id)), h("td", {}, nodeLink(r.node)), h("td", {}, stateTag(r.status)), h("td", {}, when(r.queued_ms)), h("td", {}, r.inputs.map(sv).join(", ")), h("td", {}, r.outputs.map(sv).join(", "))))),
    page.next ? h("a", { href: "#/runs/" + page.next }, "next page") : "");
}

async function route() {
  const gen = ++pageGen;
  delete $main.dataset.page;
  if (feed) { feed.close(); feed = null; }
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const arg = decodeURIComponent(parts.slice(1).join("/"));
  try {
    switch (parts[0]) {
      case "": await pageGraph(gen); break;
      case "source": await pageSource(gen, arg); break;
      case "node": await pageNode(gen, arg); break;
      case "run": await pageRun(gen, arg); break;
      case "prov": await pageProv(gen, arg); break;
      case "runs": await pageRuns(gen, arg); break;
      default: throw new Error("no such page");
    }
  } catch (e) {
    if (gen === pageGen) $main.replaceChildren(h("p", { id: "error" }, "error: " + e.message));
  }
}

window.addEventListener("hashchange", () => { flash(""); route(); });
loadSession().catch((e) => flash(e.message));
route();
