// weft's dashboard: a page per view (#/, #/workload/NS/NAME, #/topology,
// #/tap, #/health), each drawn from the controller's JSON API (the same
// one `weft stat`, `weft edges`, `weft routes`, `weft tap` and
// `weft check` use) and redrawn every REFRESH_MS. Charts are uPlot's;
// the topology's layout is dagre's. No framework: the DOM, built with h().
"use strict";

const REFRESH_MS = 2000;
/// Below this success rate a workload is shown as unhealthy.
const HEALTHY = 0.95;
const CHART_WINDOW = 300;

const state = {
  namespace: localStorage.getItem("weft.namespace") ?? "",
  window: Number(localStorage.getItem("weft.window") ?? 30),
  sort: { key: "name", dir: 1 },
  timer: null,
  /// Called when the page goes away (charts, taps).
  cleanup: [],
  tap: null,
};

// === helpers ===

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path) {
  const rsp = await fetch(path, { cache: "no-store" });
  if (!rsp.ok) throw new Error(`${path}: ${rsp.status} ${(await rsp.text()).trim()}`);
  return rsp.json();
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  return q.toString();
}

const pct = (v) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(2)}%`);
const rps = (v) => (v === null || v === undefined ? "-" : v.toFixed(1));
const ms = (v) => (v === null || v === undefined ? "-" : v < 10 ? `${v.toFixed(1)}ms` : `${v.toFixed(0)}ms`);
const shortId = (id) => (id ? id.split(".serviceaccount.")[0] : "-");

/// Green, amber or red by success rate (grey without traffic).
function srClass(v) {
  if (v === null || v === undefined) return "sr-none";
  if (v >= 0.99) return "sr-good";
  if (v >= HEALTHY) return "sr-warn";
  return "sr-bad";
}

function srColour(v) {
  return { "sr-none": "#9aa3b2", "sr-good": "#1f9d55", "sr-warn": "#d69e2e", "sr-bad": "#e53e3e" }[srClass(v)];
}

/// A workload or service is unhealthy when it fails too often or a proxy
/// is not ready.
function unhealthy(row) {
  const [ready, all] = (row.meshed ?? "0/0").split("/").map(Number);
  return (row.success_rate !== null && row.success_rate < HEALTHY) || ready < all;
}

function mtls(secured) {
  return secured ? h("span", { class: "mtls yes", title: "mutual TLS" }, "✓ mTLS") : h("span", { class: "mtls no" }, "plaintext");
}

function errorBox(e) {
  return h("div", { class: "error" }, String(e.message ?? e));
}

function section(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

/// A table; `cols` are [label, value(row), opts]; sorted by the column
/// clicked when `sortable`.
function table(cols, rows, { sortable = false, rowAttrs = () => ({}), empty = "Nothing yet." } = {}) {
  if (sortable) {
    const col = cols.find((c) => c[2]?.key === state.sort.key);
    if (col) {
      const key = col[2].sortBy ?? col[1];
      rows = [...rows].sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === y) return 0;
        if (x === null || x === undefined || x === "-") return 1;
        if (y === null || y === undefined || y === "-") return -1;
        return (x < y ? -1 : 1) * state.sort.dir;
      });
    }
  }
  const head = h("tr", {}, cols.map(([label, , opts]) => {
    if (!sortable || !opts?.key) return h("th", {}, label);
    const active = state.sort.key === opts.key;
    return h("th", {
      class: "sortable" + (active ? " active" : ""),
      "data-sort": opts.key,
      onclick: () => {
        // The sort as it is now: a redraw may be on its way.
        const again = state.sort.key === opts.key;
        state.sort = { key: opts.key, dir: again ? -state.sort.dir : 1 };
        render();
      },
    }, label, active ? (state.sort.dir > 0 ? " ▲" : " ▼") : "");
  }));
  const body = rows.length
    ? rows.map((r) => h("tr", rowAttrs(r), cols.map(([, value, opts]) => h("td", { class: opts?.class?.(r) }, value(r)))))
    : [h("tr", {}, h("td", { colspan: cols.length, class: "empty" }, empty))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

// === overview ===

function statColumns(linkWorkloads) {
  return [
    ["Namespace", (r) => r.namespace, { key: "namespace", sortBy: (r) => r.namespace }],
    ["Name", (r) => (linkWorkloads ? h("a", { href: `#/workload/${r.namespace}/${r.name}` }, r.name) : r.name),
      { key: "name", sortBy: (r) => r.name }],
    ["Meshed", (r) => r.meshed, { key: "meshed", sortBy: (r) => r.meshed }],
    ["Success", (r) => pct(r.success_rate), { key: "success", sortBy: (r) => r.success_rate, class: (r) => "sr " + srClass(r.success_rate) }],
    ["RPS", (r) => rps(r.rps), { key: "rps", sortBy: (r) => r.rps }],
    ["P50", (r) => ms(r.latency_p50_ms), { key: "p50", sortBy: (r) => r.latency_p50_ms }],
    ["P95", (r) => ms(r.latency_p95_ms), { key: "p95", sortBy: (r) => r.latency_p95_ms }],
    ["P99", (r) => ms(r.latency_p99_ms), { key: "p99", sortBy: (r) => r.latency_p99_ms }],
    ["TCP", (r) => r.tcp_connections, { key: "tcp", sortBy: (r) => r.tcp_connections }],
    ["", (r) => (unhealthy(r) ? h("span", { class: "pill bad" }, "unhealthy") : h("span", { class: "pill good" }, "ok"))],
  ];
}

async function overview() {
  const w = state.window;
  const [workloads, services] = await Promise.all([
    api(`/api/stat?${query({ by: "deploy", namespace: state.namespace, window: w })}`),
    api(`/api/stat?${query({ by: "svc", namespace: state.namespace, window: w })}`),
  ]);
  const bad = workloads.filter(unhealthy);
  const total = workloads.reduce((s, r) => s + r.rps, 0);
  const summary = h("div", { class: "summary" },
    h("div", { class: "stat" }, h("b", {}, workloads.length), " workloads"),
    h("div", { class: "stat" + (bad.length ? " bad" : "") }, h("b", {}, bad.length), " unhealthy",
      bad.length ? h("small", {}, " (" + bad.map((r) => r.name).join(", ") + ")") : ""),
    h("div", { class: "stat" }, h("b", {}, rps(total)), " requests/s served"),
    h("div", { class: "stat" }, "window ", h("b", {}, `${w}s`)));
  const rowAttrs = (kind) => (r) => ({
    class: unhealthy(r) ? "unhealthy" : "",
    "data-kind": kind,
    "data-namespace": r.namespace,
    "data-name": r.name,
  });
  return [
    summary,
    section("Workloads", table(statColumns(true), workloads, { sortable: true, rowAttrs: rowAttrs("workload"), empty: "No meshed workloads (yet)." })),
    section("Services", table(statColumns(false), services, { sortable: true, rowAttrs: rowAttrs("service"), empty: "No traffic to services in the window." })),
  ];
}

// === workload ===

function chart(title, series, opts = {}) {
  const el = h("div", { class: "chart", "data-chart": title });
  const plot = new uPlot({
    title,
    width: 400,
    height: 200,
    scales: { x: { time: true }, y: opts.y ?? {} },
    axes: [{}, { values: (u, vals) => vals.map(opts.fmt ?? ((v) => v)), size: 60 }],
    series: [{}, ...series],
    legend: { live: false },
  }, [[], ...series.map(() => [])], el);
  state.cleanup.push(() => plot.destroy());
  return { el, plot };
}

async function workload(ns, name) {
  const w = state.window;
  const main = document.getElementById("main");
  // The charts are made once per visit and fed new data on each refresh.
  let charts = main.querySelector(".charts")?._charts;
  const [stats, series, topo, edges, routes, policies, denials] = await Promise.all([
    api(`/api/stat?${query({ namespace: ns, window: w })}`),
    api(`/api/series?${query({ namespace: ns, workload: name, window: CHART_WINDOW })}`),
    api(`/api/topology?${query({ namespace: ns, window: w })}`),
    api(`/api/edges?${query({ namespace: ns })}`),
    api(`/api/routes?${query({ namespace: ns, workload: name, window: w })}`),
    api(`/api/policy?${query({ namespace: ns, workload: name })}`),
    api(`/api/denials?${query({ namespace: ns, workload: name, window: 600 })}`),
  ]);
  const me = stats.find((r) => r.name === name) ?? { name, namespace: ns, meshed: "0/0", success_rate: null, rps: 0 };
  const head = h("div", { class: "summary" },
    h("div", { class: "stat big" }, h("a", { href: "#/" }, "Overview"), " / ", h("b", {}, `${ns}/${name}`)),
    h("div", { class: "stat" }, "meshed ", h("b", {}, me.meshed)),
    h("div", { class: "stat " + srClass(me.success_rate) }, "success ", h("b", { id: "workload-sr" }, pct(me.success_rate))),
    h("div", { class: "stat" }, h("b", {}, rps(me.rps)), " rps"),
    h("div", { class: "stat" }, "p50 ", h("b", {}, ms(me.latency_p50_ms)), " p95 ", h("b", {}, ms(me.latency_p95_ms)), " p99 ", h("b", {}, ms(me.latency_p99_ms))),
    unhealthy(me) ? h("span", { class: "pill bad" }, "unhealthy") : h("span", { class: "pill good" }, "ok"));

  let chartsEl;
  if (!charts) {
    const sr = chart("Success rate", [{ label: "success", stroke: "#1f9d55", width: 2 }], { y: { range: [0, 1] }, fmt: (v) => `${(v * 100).toFixed(0)}%` });
    const rate = chart("Requests/s", [{ label: "rps", stroke: "#3b5bdb", width: 2 }]);
    const lat = chart("Latency (ms)", [
      { label: "p50", stroke: "#1f9d55", width: 2 },
      { label: "p95", stroke: "#d69e2e", width: 2 },
      { label: "p99", stroke: "#e53e3e", width: 2 },
    ]);
    chartsEl = h("div", { class: "charts" }, sr.el, rate.el, lat.el);
    charts = { sr: sr.plot, rate: rate.plot, lat: lat.plot };
    chartsEl._charts = charts;
    chartsEl._plots = charts;
  } else {
    chartsEl = main.querySelector(".charts");
  }
  const t = series.map((p) => p.t);
  charts.sr.setData([t, series.map((p) => p.success_rate)]);
  charts.rate.setData([t, series.map((p) => p.rps)]);
  charts.lat.setData([t, series.map((p) => p.latency_p50_ms), series.map((p) => p.latency_p95_ms), series.map((p) => p.latency_p99_ms)]);

  const traffic = (src, dst) => topo.edges.find((e) => e.src === src && e.dst === dst);
  const edgeCols = (peer, id) => [
    [peer === "src" ? "From" : "To", (e) => h("a", { href: `#/workload/${e[peer + "_namespace"]}/${e[peer]}` }, `${e[peer + "_namespace"]}/${e[peer]}`)],
    ["Identity", (e) => h("code", {}, e[id] || "-")],
    ["TLS", (e) => mtls(e.secured)],
    ["RPS", (e) => rps(traffic(e.src, e.dst)?.rps)],
    ["Success", (e) => pct(traffic(e.src, e.dst)?.success_rate), { class: (e) => "sr " + srClass(traffic(e.src, e.dst)?.success_rate) }],
  ];
  const inbound = edges.filter((e) => e.dst === name && e.dst_namespace === ns);
  const outbound = edges.filter((e) => e.src === name && e.src_namespace === ns);
  const routeCols = [
    ["Parent", (r) => `${r.parent_namespace}/${r.parent}:${r.parent_port}`],
    ["Route", (r) => r.route],
    ["Protocol", (r) => r.protocol],
    ["RPS", (r) => rps(r.rps)],
    ["Effective success", (r) => pct(r.effective_success), { class: (r) => "sr " + srClass(r.effective_success) }],
    ["Actual success", (r) => pct(r.actual_success), { class: (r) => "sr " + srClass(r.actual_success) }],
    ["Retries", (r) => pct(r.retry_ratio)],
    ["P50", (r) => ms(r.latency_p50_ms)],
    ["P95", (r) => ms(r.latency_p95_ms)],
    ["P99", (r) => ms(r.latency_p99_ms)],
  ];
  const policyRows = policies.flatMap((p) => p.routes.map((r) => ({ ...p, route: r.route, routeAuthz: r.authorizations })));
  const policyCols = [
    ["Pod", (p) => p.pod],
    ["Port", (p) => p.port],
    ["Server", (p) => p.server],
    ["Protocol", (p) => p.protocol],
    ["Route", (p) => p.route],
    ["Authorizations", (p) => (p.routeAuthz.length ? p.routeAuthz.join(", ") : h("span", { class: "sr-bad" }, "none: denied"))],
    ["Who (connections)", (p) => p.authorizations.join("; ") || "-"],
  ];
  const denialCols = [
    ["Pod", (d) => d.pod],
    ["", (d) => d.protocol],
    ["Server", (d) => d.server],
    ["Route", (d) => d.route ?? "-"],
    ["Client", (d) => h("code", {}, d.client_id ?? (d.tls === "true" ? "?" : "no identity"))],
    ["Last 10 min", (d) => d.recent],
    ["Since start", (d) => d.total],
  ];
  return [
    head,
    section("Live (last 5 minutes, every 2 s)", chartsEl),
    h("div", { class: "two" },
      section("Inbound", table(edgeCols("src", "client_id"), inbound, { empty: "Nobody calls this workload." })),
      section("Outbound", table(edgeCols("dst", "server_id"), outbound, { empty: "This workload calls nobody in the mesh." }))),
    section("Routes", table(routeCols, routes, { empty: "No per-route metrics from this workload's proxies in the window." })),
    section("Policies", table(policyCols, policyRows, { empty: "No ports." })),
    section("Recent denials", table(denialCols, denials, { empty: "None: no request or connection was denied." })),
  ];
}

// === topology ===

async function topology() {
  const topo = await api(`/api/topology?${query({ namespace: state.namespace, window: state.window })}`);
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 40, ranksep: 140, marginx: 20, marginy: 20 });
  g.setDefaultEdgeLabel(() => ({}));
  const id = (ns, name) => `${ns}/${name}`;
  const nodes = new Map(topo.nodes.map((n) => [id(n.namespace, n.name), n]));
  for (const e of topo.edges) {
    for (const [ns, name] of [[e.src_namespace, e.src], [e.dst_namespace, e.dst]]) {
      if (!nodes.has(id(ns, name))) nodes.set(id(ns, name), { namespace: ns, name, success_rate: null, rps: 0, meshed: "?" });
    }
  }
  for (const [key] of nodes) g.setNode(key, { width: 170, height: 58 });
  for (const e of topo.edges) g.setEdge(id(e.src_namespace, e.src), id(e.dst_namespace, e.dst), { width: 60, height: 20, labelpos: "c" });
  dagre.layout(g);
  const maxRps = Math.max(1, ...topo.edges.map((e) => e.rps));
  const graph = g.graph();
  const root = svg("svg", { class: "topology", width: Math.max(graph.width, 300), height: Math.max(graph.height, 120), "data-edges": topo.edges.length },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 12, markerHeight: 12, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5b6475" }))));
  for (const e of topo.edges) {
    const pts = g.edge(id(e.src_namespace, e.src), id(e.dst_namespace, e.dst)).points;
    const d = pts.map((p, i) => `${i ? "L" : "M"} ${p.x} ${p.y}`).join(" ");
    const width = 1.5 + 6 * Math.sqrt(e.rps / maxRps);
    const mid = pts[Math.floor(pts.length / 2)];
    root.append(svg("g", { class: "edge", "data-src": e.src, "data-dst": e.dst, "data-success-rate": e.success_rate ?? "" },
      svg("title", {}, `${e.src} → ${e.dst}: ${rps(e.rps)} rps, ${pct(e.success_rate)} success, ${e.secured ? "mTLS" : "plaintext"}`),
      svg("path", { d, stroke: srColour(e.success_rate), "stroke-width": width, fill: "none", "marker-end": "url(#arrow)" }),
      svg("text", { x: mid.x, y: mid.y - 8, "text-anchor": "middle", class: "edge-label" },
        `${rps(e.rps)} rps · ${pct(e.success_rate)}${e.secured ? " · mTLS" : " · plaintext"}`)));
  }
  for (const [key, n] of nodes) {
    const p = g.node(key);
    const x = p.x - p.width / 2, y = p.y - p.height / 2;
    root.append(svg("g", { class: "node", "data-name": n.name, onclick: () => (location.hash = `#/workload/${n.namespace}/${n.name}`) },
      svg("rect", { x, y, width: p.width, height: p.height, rx: 8, fill: "#fff", stroke: srColour(n.success_rate), "stroke-width": unhealthy(n) ? 3 : 1.5 }),
      svg("text", { x: p.x, y: y + 22, "text-anchor": "middle", class: "node-name" }, n.name),
      svg("text", { x: p.x, y: y + 42, "text-anchor": "middle", class: "node-stats" },
        n.success_rate === null ? `${rps(n.rps)} rps` : `${pct(n.success_rate)} · ${rps(n.rps)} rps`)));
  }
  const legend = h("div", { class: "legend" },
    h("span", { class: "sr-good" }, "■ ≥ 99%"), h("span", { class: "sr-warn" }, "■ ≥ 95%"),
    h("span", { class: "sr-bad" }, "■ < 95%"), h("span", { class: "sr-none" }, "■ no traffic"),
    " · edge width: requests/s · mTLS: mutual TLS");
  return [section(`Topology (${state.namespace || "all namespaces"}, last ${state.window}s)`, legend,
    topo.edges.length ? h("div", { class: "graph" }, root) : h("p", { class: "empty" }, "No edges yet: the controller scrapes the proxies every 2 s."))];
}

// === tap ===

function tapPage() {
  const t = state.tap ?? (state.tap = { rows: new Map(), order: [], running: false, abort: null, count: 0, error: null });
  // The form is made once, so that redraws while events stream in do
  // not take what is being typed.
  if (!t.form) {
    const field = (name, label, value, placeholder) =>
      h("label", {}, label, h("input", { name, value: value ?? "", placeholder: placeholder ?? "" }));
    t.form = h("form", { class: "tap-form", onsubmit: (ev) => { ev.preventDefault(); startTap(new FormData(ev.target)); } },
      field("namespace", "Namespace", state.namespace || "default"),
      field("resource", "Resource", "ns", "deploy/NAME, pod/NAME or ns"),
      field("method", "Method", "", "GET"),
      field("path", "Path prefix", "", "/"),
      field("authority", "Authority", ""),
      field("max", "Max per proxy", "", "0: until stopped"),
      h("button", { type: "submit", id: "tap-start" }, "Start"),
      h("button", { type: "button", id: "tap-stop", onclick: stopTap }, "Stop"),
      h("span", { id: "tap-status" }));
  }
  t.form.querySelector("#tap-start").disabled = t.running;
  t.form.querySelector("#tap-stop").disabled = !t.running;
  const status = t.form.querySelector("#tap-status");
  status.className = t.running ? "running" : "";
  status.textContent = t.error ? `error: ${t.error}` : t.running ? `tapping… ${t.count} requests` : `${t.count} requests`;
  const form = t.form;
  const cols = [
    ["Dir", (r) => r.direction],
    ["Pod", (r) => r.pod],
    ["From", (r) => (r.direction === "in" ? shortId(r.client_id) : r.pod)],
    ["To", (r) => (r.direction === "out" ? shortId(r.server_id) : r.pod)],
    ["TLS", (r) => mtls(r.tls === "true")],
    ["Method", (r) => r.method],
    ["Authority", (r) => r.authority],
    ["Path", (r) => r.path],
    ["Status", (r) => r.status ?? "…", { class: (r) => (r.failed ? "sr-bad" : r.status ? "sr-good" : "") }],
    ["gRPC", (r) => (r.grpc_status ?? "-")],
    ["Latency", (r) => ms(r.latency_ms)],
    ["Bytes", (r) => r.bytes ?? "-"],
  ];
  const rows = t.order.map((k) => t.rows.get(k));
  return [section("Tap: live requests through the proxies (read-only, as weft tap shows them)", form,
    table(cols, rows, { rowAttrs: () => ({ class: "tap-row" }), empty: t.running ? "Waiting for requests…" : "Start a tap to see requests." }))];
}

const TAP_ROWS = 200;

async function startTap(form) {
  const t = state.tap;
  stopTap();
  const params = Object.fromEntries(form.entries());
  t.params = params;
  t.rows = new Map();
  t.order = [];
  t.count = 0;
  t.error = null;
  const q = { namespace: params.namespace, method: params.method, path: params.path, authority: params.authority, limit: params.max };
  const [kind, name] = params.resource.includes("/") ? params.resource.split("/", 2) : [params.resource, ""];
  if (["deploy", "deployment", "workload"].includes(kind)) q.workload = name;
  else if (["pod", "po"].includes(kind)) q.pod = name;
  else if (!["ns", "namespace", ""].includes(kind)) {
    t.error = `${params.resource}: tap deploy/NAME, pod/NAME, or ns`;
    return render();
  }
  const abort = new AbortController();
  t.abort = abort;
  t.running = true;
  render();
  try {
    const rsp = await fetch(`/api/tap?${query(q)}`, { signal: abort.signal });
    if (!rsp.ok) throw new Error(`${rsp.status}: ${(await rsp.text()).trim()}`);
    const reader = rsp.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    let drawn = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.startsWith("error: ")) t.error = line.slice(7);
        else if (line) tapEvent(t, JSON.parse(line));
      }
      // Redraw at most every 300 ms while events stream in.
      if (Date.now() - drawn > 300 && currentPage() === "tap") {
        drawn = Date.now();
        render();
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") t.error = e.message;
  }
  if (t.abort === abort) {
    t.running = false;
    t.abort = null;
  }
  if (currentPage() === "tap") render();
}

function tapEvent(t, e) {
  const key = `${e.pod}/${e.id}`;
  let row = t.rows.get(key);
  if (e.event === "request") {
    row = { ...e };
    t.rows.set(key, row);
    t.order.unshift(key);
    t.count += 1;
    while (t.order.length > TAP_ROWS) t.rows.delete(t.order.pop());
    return;
  }
  if (!row) return;
  if (e.event === "response") {
    row.status = e.status;
    row.latency_ms = e.latency_ms;
    row.failed = !(e.status < 500);
  } else if (e.event === "end") {
    row.grpc_status = e.grpc_status;
    row.bytes = e.bytes;
    if ((e.grpc_status ?? 0) !== 0 || e.reset) row.failed = true;
  }
}

function stopTap() {
  const t = state.tap;
  if (t?.abort) {
    t.abort.abort();
    t.abort = null;
    t.running = false;
    if (currentPage() === "tap") render();
  }
}

// === health ===

async function health() {
  const [checks, proxies] = await Promise.all([api("/api/check"), api("/api/proxies")]);
  const ok = checks.every((c) => c.ok || c.warning);
  const list = h("ul", { class: "checks" }, checks.map((c) =>
    h("li", { class: c.ok ? "ok" : c.warning ? "warn" : "fail" },
      h("span", { class: "mark" }, c.ok ? "√" : c.warning ? "‼" : "×"), " ", c.check,
      c.hint ? h("div", { class: "hint" }, c.hint) : null)));
  const now = Date.now() / 1000;
  const cols = [
    ["Namespace", (p) => p.namespace],
    ["Pod", (p) => p.pod],
    ["Workload", (p) => h("a", { href: `#/workload/${p.namespace}/${p.workload}` }, p.workload)],
    ["Ready", (p) => (p.ready ? h("span", { class: "sr-good" }, "√") : h("span", { class: "sr-bad" }, "×"))],
    ["Certificate", (p) => (p.certificate_expires ? `expires in ${((p.certificate_expires - now) / 3600).toFixed(1)}h` : "none")],
    ["Admin", (p) => p.admin],
    ["Error", (p) => p.error ?? ""],
  ];
  return [
    section("Health: what weft check says", list,
      h("p", { id: "check-result", class: ok ? "sr-good" : "sr-bad" }, `Status check results are ${ok ? "√" : "×"}`)),
    section("Proxies", table(cols, proxies, { empty: "No meshed proxies." })),
  ];
}

// === the frame ===

function currentPage() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  return parts[0] || "overview";
}

let rendering = false;
let again = false;

async function render() {
  if (rendering) {
    again = true;
    return;
  }
  rendering = true;
  const main = document.getElementById("main");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  document.body.dataset.page = page;
  try {
    let content;
    if (page === "workload") content = await workload(parts[1], parts[2]);
    else if (page === "topology") content = await topology();
    else if (page === "tap") content = tapPage();
    else if (page === "health") content = await health();
    else content = await overview();
    // Keep the charts' element (and its plots) across refreshes.
    main.replaceChildren(...content);
    main.dataset.loaded = page;
    // From navigation to the first page drawn with data (the browser test
    // holds it under a second).
    document.body.dataset.firstRenderMs ??= String(Math.round(performance.now()));
  } catch (e) {
    main.replaceChildren(errorBox(e));
  }
  rendering = false;
  if (again) {
    again = false;
    render();
  }
}

async function badge() {
  const el = document.getElementById("health-badge");
  try {
    const checks = await api("/api/check");
    const failing = checks.filter((c) => !c.ok && !c.warning);
    el.textContent = failing.length ? `× ${failing.length} check${failing.length > 1 ? "s" : ""} failing` : "√ healthy";
    el.className = failing.length ? "bad" : "good";
  } catch (e) {
    el.textContent = "× controller unreachable";
    el.className = "bad";
  }
}

async function namespaces() {
  const select = document.getElementById("namespace");
  try {
    const proxies = await api("/api/proxies");
    const names = [...new Set(proxies.map((p) => p.namespace))].sort();
    const have = [...select.options].map((o) => o.value);
    for (const n of names) if (!have.includes(n)) select.append(h("option", { value: n }, n));
  } catch (e) {
    // The badge says so.
  }
  select.value = state.namespace;
}

function navigate() {
  for (const f of state.cleanup.splice(0)) f();
  document.getElementById("main").replaceChildren();
  state.sort = { key: "name", dir: 1 };
  render();
}

function init() {
  const win = document.getElementById("window");
  win.value = String(state.window);
  win.addEventListener("change", () => {
    state.window = Number(win.value);
    localStorage.setItem("weft.window", win.value);
    render();
  });
  const ns = document.getElementById("namespace");
  ns.addEventListener("change", () => {
    state.namespace = ns.value;
    localStorage.setItem("weft.namespace", ns.value);
    render();
  });
  window.addEventListener("hashchange", navigate);
  namespaces().then(render);
  badge();
  // The tap page streams; the others are redrawn on a timer.
  state.timer = setInterval(() => {
    if (currentPage() !== "tap") render();
    badge();
    namespaces();
  }, REFRESH_MS);
}

init();
