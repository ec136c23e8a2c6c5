// edgefed console: pages built in the browser from cloudcore's JSON API.
//
// Rules this file keeps (docs/console.md):
// - Every element is made with the DOM API by `h()`; text goes in as text nodes, never
//   through innerHTML, so a node's labels or messages cannot become markup.
// - No inline script or handler (the server's Content-Security-Policy forbids them):
//   handlers are attached with addEventListener.
// - The token lives in this tab's sessionStorage and travels only in the
//   Authorization header. The API decides; the page only hides what the role cannot do.
// - No page loads the whole fleet: nodes come a page at a time (`limit`/`continue`),
//   counts from the server's overview, live changes from filtered watch streams.

const TOKEN_KEY = "edgefed.console.token";
const ROLES = { "read-only": 0, operator: 1, admin: 2 };
const PAGE = 50;
const view = document.getElementById("view");
let session = null; // {name, role}
let pageAbort = null; // aborts the current page's fetches, watches and timers

// -- DOM -----------------------------------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "href") {
      const url = String(value);
      if (!url.startsWith("#") && !url.startsWith("/")) throw new Error("bad href");
      el.setAttribute("href", url);
    } else if (key === "value" || key === "checked" || key === "disabled") {
      el[key] = value;
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

const text = (value) => (value === null || value === undefined || value === "" ? "-" : String(value));
const seg = (s) => encodeURIComponent(s);

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function chips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))));
}

function stateCell(state) {
  return h("span", { class: `state-${state}` }, text(state));
}

const can = (role) => session !== null && ROLES[session.role] >= ROLES[role];

// -- API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${token()}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    signOut("Your token was refused (expired or revoked). Sign in again.");
    throw new ApiError(401, "unauthenticated");
  }
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      message = (await resp.json()).error || message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  return raw ? resp : resp.json();
}

// Follows a watch stream (JSON lines) until the page goes; reconnects after a drop.
// onBatch gets the events of one read; every (re)connection starts with a RESET event
// (drop what you hold) and then the current objects as ADDED, so nothing that changed
// or went while the stream was down is missed. onLive(true|false): connected or not.
async function watch(path, signal, onBatch, onLive) {
  const sep = path.includes("?") ? "&" : "?";
  while (!signal.aborted) {
    try {
      const resp = await api(`${path}${sep}sendInitialEvents=true`, { signal, raw: true });
      let reset = true; // the first batch (ends with the initialEventsEnd bookmark)
      onLive(true);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        const events = reset ? [{ type: "RESET" }] : [];
        for (const line of lines) {
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.type !== "BOOKMARK" || ev.initialEventsEnd) events.push(ev);
        }
        if (events.length > (reset ? 1 : 0)) {
          reset = false;
          onBatch(events);
        }
      }
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && err.status === 401)) return;
    }
    onLive(false);
    await sleep(2000, signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

function every(ms, signal, fn) {
  if (signal.aborted) return;
  const t = setInterval(fn, ms);
  signal.addEventListener("abort", () => clearInterval(t), { once: true });
}

function liveBadge() {
  const el = h("span", { class: "live", "data-live": "off" }, "live");
  el.set = (on) => {
    el.classList.toggle("on", on);
    el.dataset.live = on ? "on" : "off";
  };
  return el;
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, `${err.status || ""} ${err.message}`.trim());
}

// -- sign in -------------------------------------------------------------------------

async function signIn(candidate) {
  sessionStorage.setItem(TOKEN_KEY, candidate);
  try {
    const who = await api("/api/v1/whoami");
    session = { name: who.name, role: who.role };
    return null;
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    return err;
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  if (pageAbort) pageAbort.abort();
  showSignIn(message || "");
}

function showSignIn(message) {
  document.getElementById("top").hidden = true;
  view.replaceChildren();
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message;
  document.getElementById("token").focus();
}

document.getElementById("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  const err = await signIn(input.value.trim());
  input.value = "";
  if (err) {
    showSignIn(err.status === 401 ? "That token was refused." : err.message);
    return;
  }
  render();
});

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));

// -- pages ---------------------------------------------------------------------------

function hashQuery() {
  const [, query = ""] = location.hash.split("?");
  return new URLSearchParams(query);
}

async function fleetPage(signal) {
  const q = hashQuery();
  const selector = q.get("labelSelector") || "";
  const cont = q.get("continue") || "";
  const input = h("input", { name: "labelSelector", value: selector, size: 40,
    placeholder: "label selector, e.g. edgefed.io/site=lyon,arch!=arm64" });
  const form = h("form", { class: "toolbar", onsubmit: (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    if (input.value.trim()) next.set("labelSelector", input.value.trim());
    location.hash = `#/?${next}`;
  } }, h("label", {}, "Filter "), input, h("button", { type: "submit" }, "Apply"));
  const summary = h("div", { id: "summary" });
  const history = [];
  const historyBox = h("div", { id: "history" });
  const troubled = h("div", { id: "troubled" });
  const nodes = h("div", { id: "nodes" });
  view.replaceChildren(h("h1", {}, "Fleet"), form, summary, historyBox,
    h("h2", {}, "Nodes in trouble"), troubled, h("h2", {}, "Nodes"), nodes);

  const sel = selector ? `labelSelector=${seg(selector)}&` : "";
  async function refreshSummary() {
    try {
      const o = await api(`/console/api/overview?${sel}troubled=20`, { signal });
      history.push({ at: o.at, ...o.states });
      if (history.length > 120) history.shift();
      summary.replaceChildren(h("div", { class: "cards" },
        ["Ready", "NotReady", "Unknown"].map((s) => h("div", { class: `card ${s}`, "data-state": s },
          h("div", { class: "n" }, o.states[s]), s)),
        h("div", { class: "card" }, h("div", { class: "n" }, o.behind), "behind on gens"),
        h("div", { class: "card" }, h("div", { class: "n" }, o.total), "nodes")),
        h("p", { class: "muted" }, "By site: ",
          Object.keys(o.groups.site).length ? chips(o.groups.site) : "no site labels",
          " \u00b7 By arch: ", chips(o.groups.arch)));
      historyBox.replaceChildren(...(history.length > 1 ? [sparkline(history)] : []));
      troubled.replaceChildren(...[table(["node", "state", "reason", "last seen", "acked / desired gen", "labels"],
        o.troubled.map((n) => h("tr", {},
          h("td", {}, h("a", { href: `#/nodes/${seg(n.name)}` }, n.name)),
          h("td", {}, stateCell(n.ready)), h("td", {}, text(n.reason)), h("td", {}, ago(n.lastSeen)),
          h("td", { class: "num" }, `${n.ackedGen} / ${n.desiredGen}`), h("td", {}, chips(n.labels))))),
        o.troubledTotal > o.troubled.length
          ? h("p", { class: "muted" }, `${o.troubledTotal - o.troubled.length} more in trouble`) : null,
      ].filter(Boolean));
    } catch (err) {
      if (!signal.aborted) summary.replaceChildren(errorBox(err));
    }
  }
  async function refreshNodes() {
    try {
      const fields = "metadata.name,metadata.labels,status.ready,status.reason,status.lastSeen," +
        "status.desiredGen,status.ackedGen,status.arch,spec.unschedulable";
      const page = await api(`/api/v1/nodes?${sel}limit=${PAGE}&fields=${fields}` +
        (cont ? `&continue=${seg(cont)}` : ""), { signal });
      const more = new URLSearchParams();
      if (selector) more.set("labelSelector", selector);
      if (page.continue) more.set("continue", page.continue);
      const first = new URLSearchParams();
      if (selector) first.set("labelSelector", selector);
      nodes.replaceChildren(table(["node", "state", "arch", "last seen", "acked / desired gen", "labels"],
        page.items.map((n) => h("tr", { "data-node": n.metadata.name },
          h("td", {}, h("a", { href: `#/nodes/${seg(n.metadata.name)}` }, n.metadata.name),
            n.spec && n.spec.unschedulable ? h("span", { class: "chip" }, "cordoned") : null),
          h("td", {}, stateCell(n.status.ready)), h("td", {}, text(n.status.arch)),
          h("td", {}, ago(n.status.lastSeen)),
          h("td", { class: "num" }, `${n.status.ackedGen} / ${n.status.desiredGen}`),
          h("td", {}, chips(n.metadata.labels)))), { id: "node-table" }),
        h("p", { class: "toolbar" },
          cont ? h("a", { href: `#/?${first}` }, "First page") : null,
          page.continue ? h("a", { href: `#/?${more}`, id: "next-page" }, "Next page") : null,
          h("span", { class: "muted" },
            `${page.items.length} shown, ${PAGE} a page; refreshed every 5 s, counts every 15 s`)));
    } catch (err) {
      if (!signal.aborted) nodes.replaceChildren(errorBox(err));
    }
  }
  // Counts cost the server a walk of the fleet, the page a lookup of 50 nodes: the
  // counts refresh less often, and nothing refreshes while the tab is hidden.
  await Promise.all([refreshSummary(), refreshNodes()]);
  every(15000, signal, () => document.hidden || refreshSummary());
  every(5000, signal, () => document.hidden || refreshNodes());
}

// Node counts by state over the minutes this page has been open (one sample / 5 s).
function sparkline(history) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 360, hgt = 48;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "nodes by state over time");
  const max = Math.max(1, ...history.map((p) => p.Ready + p.NotReady + p.Unknown));
  const colors = { Ready: "#1e7b34", NotReady: "#b3261e", Unknown: "#9a6700" };
  for (const state of ["Ready", "NotReady", "Unknown"]) {
    const pts = history.map((p, i) => {
      const x = history.length > 1 ? (i / (history.length - 1)) * (w - 2) + 1 : w / 2;
      return `${x.toFixed(1)},${(hgt - 2 - (p[state] / max) * (hgt - 4)).toFixed(1)}`;
    });
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colors[state]);
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
  }
  return h("p", { class: "muted" }, svg, " nodes by state while this page is open");
}

async function nodePage(signal, name) {
  const live = liveBadge();
  const status = h("div", { id: "node-status" });
  const actions = h("div", { class: "toolbar" });
  const pods = new Map();
  const podsBox = h("div", { id: "node-pods" });
  const eventsBox = h("div", { id: "node-events" });
  const plots = h("div", { id: "node-plots", class: "plots" });
  view.replaceChildren(h("h1", {}, "Node ", h("span", { id: "node-name" }, name), " ", live),
    actions, status, h("h2", {}, "Telemetry and forecast"), plots,
    h("h2", {}, "Pods"), podsBox, h("h2", {}, "Events"), eventsBox);
  const loadTelemetry = async () => {
    try {
      const t = await api(`/console/api/nodes/${seg(name)}/telemetry`, { signal });
      plots.replaceChildren(...(t.points.length || t.forecast
        ? [forecastPlot(t, "cpu", 1), forecastPlot(t, "mem", 2)]
        : [h("p", { class: "muted" }, "no telemetry reported yet")]));
    } catch (err) {
      if (!signal.aborted) plots.replaceChildren(errorBox(err));
    }
  };

  function show(node) {
    const st = node.status || {};
    status.replaceChildren(kv([
      ["state", h("span", {}, stateCell(st.ready), st.reason ? ` (${st.reason})` : "")],
      ["last seen", ago(st.lastSeen)],
      ["acked / desired gen", `${st.ackedGen} / ${st.desiredGen}`],
      ["arch / os", `${text(st.arch)} / ${text(st.os)}`],
      ["agent", text(st.agentVersion)],
      ["schedulable", node.spec && node.spec.unschedulable ? "no (cordoned)" : "yes"],
      ["taints", ((node.spec && node.spec.taints) || []).map((t) => h("span", { class: "chip" },
        `${t.key}${t.value ? "=" + t.value : ""}:${t.effect}`))],
      ["capacity", chips(st.capacity)],
      ["allocatable", chips(st.allocatable)],
      ["usage (telemetry)", Object.keys(st.usage || {}).length
        ? chips(Object.fromEntries(Object.entries(st.usage).map(([k, v]) => [k, +Number(v).toFixed(3)])))
        : "not reported"],
      ["labels", h("span", { id: "node-labels" }, chips(node.metadata.labels))],
    ]));
    actions.replaceChildren();
    if (can("operator")) {
      const cordoned = node.spec && node.spec.unschedulable;
      actions.append(h("button", { type: "button", id: "cordon", onclick: async () => {
        try {
          show(await api(`/api/v1/nodes/${seg(name)}`, { method: "PATCH",
            body: { spec: { unschedulable: !cordoned } } }));
        } catch (err) { actions.append(errorBox(err)); }
      } }, cordoned ? "Uncordon" : "Cordon"));
    }
  }

  function showPods() {
    const rows = [...pods.values()].sort((a, b) =>
      `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
    podsBox.replaceChildren(podTable(rows));
  }

  try {
    show(await api(`/api/v1/nodes/${seg(name)}`, { signal }));
  } catch (err) {
    status.replaceChildren(errorBox(err));
    return;
  }
  loadEvents(eventsBox, `Node/${name}`, signal);
  loadTelemetry();
  every(30000, signal, () => document.hidden || loadTelemetry());
  watch(`/api/v1/watch/nodes?name=${seg(name)}`, signal, (events) => {
    for (const ev of events) if (ev.object && ev.type !== "DELETED") show(ev.object);
  }, live.set);
  watch(`/api/v1/watch/pods?node=${seg(name)}`, signal, (events) => {
    for (const ev of events) {
      if (ev.type === "RESET") pods.clear();
      if (!ev.object) continue;
      const key = `${ev.object.metadata.namespace}/${ev.object.metadata.name}`;
      if (ev.type === "DELETED") pods.delete(key);
      else pods.set(key, ev.object);
    }
    showPods();
  }, () => {});
}

// A node's last hour of one-minute utilisation (line) and its forecast for the next
// 15 minutes: the p50..p90 band of the peak, the p50 as a line. SVG built with the DOM.
function forecastPlot(t, resource, column) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 140, L = 40, R = 8, T = 8, B = 22;
  const svgEl = (tag, attrs, content) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (content !== undefined) el.textContent = content;
    return el;
  };
  const last = t.points.length ? t.points[t.points.length - 1][0] + 60 : Date.now() / 1000;
  const x0 = last - 3600, x1 = last + t.horizonSeconds;
  const x = (ts) => L + ((ts - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - Math.min(Math.max(v, 0), 1)) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${resource} utilisation and forecast`, class: "plot", "data-resource": resource });
  for (const v of [0, 0.5, 1]) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
      svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, `${v * 100}%`));
  }
  svg.append(svgEl("line", { x1: x(last), x2: x(last), y1: T, y2: H - B, class: "now" }),
    svgEl("text", { x: x(last), y: H - 6, "text-anchor": "middle", class: "axis" }, "now"),
    svgEl("text", { x: L, y: H - 6, class: "axis" }, "-60 min"),
    svgEl("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "axis" }, "+15 min"));
  const fc = t.forecast;
  if (fc) {
    const p50 = fc[`${resource}_p50`], p90 = fc[`${resource}_p90`];
    svg.append(svgEl("rect", { x: x(last), width: x(x1) - x(last), y: y(p90),
      height: Math.max(1, y(p50) - y(p90)), class: "band", "data-p90": p90 }),
    svgEl("line", { x1: x(last), x2: x(x1), y1: y(p50), y2: y(p50), class: "p50", "data-p50": p50 }));
  }
  const shown = t.points.filter((p) => p[0] >= x0);
  const pts = shown.map((p) => `${x(p[0] + 30).toFixed(1)},${y(p[column]).toFixed(1)}`);
  if (pts.length) {
    // the newest minute as a dot too: a line of one point (a node's first minute) has no length
    const newest = shown[shown.length - 1];
    svg.append(svgEl("polyline", { points: pts.join(" "), class: "actual", "data-points": pts.length }),
      svgEl("circle", { cx: x(newest[0] + 30).toFixed(1), cy: y(newest[column]).toFixed(1), r: 2.5,
        class: "newest", "data-value": newest[column] }));
  }
  const pct = (v) => `${Math.round(v * 100)} %`;
  const now = t.points.length ? pct(t.points[t.points.length - 1][column]) : "-";
  return h("figure", { class: "plot-box" }, svg, h("figcaption", {},
    `${resource}: now ${now}`,
    fc ? `; next 15 min peak p50 ${pct(fc[`${resource}_p50`])}, p90 ${pct(fc[`${resource}_p90`])}` +
      (fc.trusted ? "" : " (not trusted yet)") : "; no forecast yet"));
}

function podTable(rows) {
  return table(["pod", "phase", "ready", "restarts", "reason"], rows.map((p) => {
    const st = p.status || {};
    const cs = st.containerStatuses || [];
    return h("tr", {},
      h("td", {}, h("a", { href: `#/pods/${seg(p.metadata.namespace)}/${seg(p.metadata.name)}` },
        `${p.metadata.namespace}/${p.metadata.name}`)),
      h("td", {}, text(st.phase)),
      h("td", {}, `${cs.filter((c) => c.ready).length}/${(p.spec.containers || []).length}`),
      h("td", { class: "num" }, cs.reduce((n, c) => n + (c.restartCount || 0), 0)),
      h("td", {}, text(st.reason || cs.map((c) => c.reason).filter(Boolean).join(", "))));
  }));
}

async function loadEvents(box, object, signal) {
  try {
    const evs = await api(`/api/v1/events?object=${seg(object)}&limit=50`, { signal });
    box.replaceChildren(table(["when", "type", "reason", "message", "count"],
      evs.items.slice().reverse().map((e) => h("tr", {},
        h("td", {}, ago(e.lastTimestamp)), h("td", { class: e.type === "Warning" ? "warn" : "" }, e.type),
        h("td", {}, e.reason), h("td", {}, e.message), h("td", { class: "num" }, e.count)))));
  } catch (err) {
    if (!signal.aborted) box.replaceChildren(errorBox(err));
  }
}

async function workloadsPage(signal) {
  const live = liveBadge();
  const boxes = { daemonsets: h("div", { id: "daemonsets" }), deployments: h("div", { id: "deployments" }) };
  const focus = hashQuery().get("events");
  const eventsBox = h("div", { id: "workload-events" });
  view.replaceChildren(h("h1", {}, "Workloads ", live),
    h("h2", {}, "DaemonSets"), boxes.daemonsets, h("h2", {}, "Deployments"), boxes.deployments,
    h("p", { class: "muted" }, "Rollouts update live from the API's watch stream. " +
      "Open a workload for its events (batches, failures, rollbacks and why)."),
    ...(focus ? [h("h2", {}, `Events of ${focus}`), eventsBox] : []));
  if (focus) {
    loadEvents(eventsBox, focus, signal);
    every(5000, signal, () => document.hidden || loadEvents(eventsBox, focus, signal));
  }
  for (const plural of ["daemonsets", "deployments"]) {
    const items = new Map();
    let queued = false;
    const redraw = () => {
      queued = false;
      const rows = [...items.values()].sort((a, b) =>
        `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
      boxes[plural].replaceChildren(workloadTable(plural, rows, boxes[plural]));
    };
    redraw();
    watch(`/api/v1/watch/${plural}`, signal, (events) => {
      for (const ev of events) {
        if (ev.type === "RESET") items.clear();
        if (!ev.object) continue;
        const key = `${ev.object.metadata.namespace}/${ev.object.metadata.name}`;
        if (ev.type === "DELETED") items.delete(key);
        else items.set(key, ev.object);
      }
      if (!queued) {
        queued = true;
        requestAnimationFrame(redraw);
      }
    }, live.set);
  }
}

function workloadTable(plural, rows, box) {
  const ds = plural === "daemonsets";
  return table(["name", "progress", "desired", "updated", "ready", "available", "rollout", "revision", ""],
    rows.map((w) => {
      const st = w.status || {};
      const ro = st.rollout || {};
      const desired = ds ? st.desiredNumberScheduled : st.replicas;
      const updated = ds ? st.updatedNumberScheduled : st.updatedReplicas;
      const ready = ds ? st.numberReady : st.readyReplicas;
      const available = ds ? st.numberAvailable : st.availableReplicas;
      const pct = desired ? Math.round((100 * (available || 0)) / desired) : 0;
      const id = `${w.metadata.namespace}/${w.metadata.name}`;
      const kind = ds ? "DaemonSet" : "Deployment";
      return h("tr", { "data-workload": id },
        h("td", {}, h("a", { href: `#/workloads?events=${seg(`${kind}/${id}`)}` }, id)),
        h("td", {}, h("span", { class: "bar", title: `${pct}% available` }, h("span", {})), ` ${pct}%`),
        h("td", { class: "num" }, text(desired)), h("td", { class: "num", "data-col": "updated" }, text(updated)),
        h("td", { class: "num", "data-col": "ready" }, text(ready)),
        h("td", { class: "num", "data-col": "available" }, text(available)),
        h("td", {}, h("span", { "data-col": "phase" }, text(ro.phase)),
          ro.message ? h("div", { class: "muted" }, ro.message) : null,
          ro.failed ? h("div", { class: "error", "data-col": "failed" },
            `${ro.failed} failed (the workload's events say which and why)`) : null,
          ro.offline ? h("div", { class: "muted" }, `${ro.offline} on nodes not Ready`) : null),
        h("td", {}, text(st.updateRevision), st.currentRevision && st.currentRevision !== st.updateRevision
          ? h("div", { class: "muted" }, `stable ${st.currentRevision}`) : null),
        h("td", {}, can("operator") ? rolloutButtons(plural, w, box) : null));
    }).map(sizeBars));
}

// The CSP refuses inline styles, so bar widths are set through the CSSOM.
function sizeBars(row) {
  const bar = row.querySelector(".bar > span");
  if (bar) bar.style.width = `${parseInt(row.querySelector(".bar").title, 10) || 0}%`;
  return row;
}

function rolloutButtons(plural, w, box) {
  const path = `/api/v1/${plural}/${seg(w.metadata.namespace)}/${seg(w.metadata.name)}/rollout`;
  const act = (action) => async (ev) => {
    ev.target.disabled = true;
    try {
      await api(path, { method: "POST", body: { action } });
    } catch (err) {
      box.prepend(errorBox(err));
    }
    ev.target.disabled = false;
  };
  const paused = w.spec && w.spec.paused;
  const phase = w.status && w.status.rollout && w.status.rollout.phase;
  return [
    paused ? h("button", { type: "button", "data-action": "resume", onclick: act("resume") }, "Resume")
      : h("button", { type: "button", "data-action": "pause", onclick: act("pause") }, "Pause"),
    " ",
    h("button", { type: "button", "data-action": "undo", onclick: act("undo") }, "Undo"),
    phase === "Aborted" ? [" ", h("button", { type: "button", "data-action": "retry", onclick: act("retry") }, "Retry")] : null,
  ];
}

async function podPage(signal, namespace, name) {
  const live = liveBadge();
  const status = h("div", { id: "pod-status" });
  const containers = h("div", { id: "pod-containers" });
  const eventsBox = h("div", { id: "pod-events" });
  const ops = h("div", { id: "pod-ops" });
  view.replaceChildren(h("h1", {}, `Pod ${namespace}/${name} `, live), status,
    h("h2", {}, "Containers"), containers, ops, h("h2", {}, "Events"), eventsBox);
  let pod;
  const show = (p) => {
    pod = p;
    const st = p.status || {};
    const ann = p.metadata.annotations || {};
    const node = st.nodeName || p.spec.nodeName;
    status.replaceChildren(kv([
      ["phase", text(st.phase)],
      ["reason", text([st.reason, st.message].filter(Boolean).join(": "))],
      ["node", node ? h("a", { href: `#/nodes/${seg(node)}` }, node) : "not placed"],
      ["pod IP", text(st.podIP)],
      ["owner", text(ann["edgefed.io/owner"])],
      [st.phase === "Pending" && !node ? "why Pending" : "why here",
        h("pre", { id: "pod-scheduled" }, text(ann["edgefed.io/scheduled"]))],
      ["labels", chips(p.metadata.labels)],
    ]));
    const byName = new Map((st.containerStatuses || []).map((c) => [c.name, c]));
    containers.replaceChildren(table(["container", "image", "state", "ready", "restarts", "reason"],
      (p.spec.containers || []).map((c) => {
        const s = byName.get(c.name) || {};
        return h("tr", {}, h("td", {}, c.name), h("td", {}, c.image), h("td", {}, text(s.state)),
          h("td", {}, s.ready ? "yes" : "no"), h("td", { class: "num" }, text(s.restartCount)),
          h("td", {}, text([s.reason, s.message].filter(Boolean).join(": "))));
      })));
  };
  try {
    show(await api(`/api/v1/pods/${seg(namespace)}/${seg(name)}`, { signal }));
  } catch (err) {
    status.replaceChildren(errorBox(err));
    return;
  }
  loadEvents(eventsBox, `Pod/${namespace}/${name}`, signal);
  watch(`/api/v1/watch/pods?namespace=${seg(namespace)}&name=${seg(name)}`, signal, (events) => {
    for (const ev of events) if (ev.object && ev.type !== "DELETED") show(ev.object);
  }, live.set);
  if (!can("operator")) {
    ops.replaceChildren(h("p", { class: "muted", id: "ops-note" },
      `Logs and exec need an operator token; you are ${session.role}.`));
    return;
  }
  const names = (pod.spec.containers || []).map((c) => c.name);
  const pick = h("select", { id: "container" }, names.map((n) => h("option", { value: n }, n)));
  const follow = h("input", { type: "checkbox", id: "follow", checked: true });
  const out = h("pre", { class: "log", id: "log" });
  let logAbort = null;
  const showLogs = async () => {
    if (logAbort) logAbort.abort();
    logAbort = new AbortController();
    signal.addEventListener("abort", () => logAbort.abort(), { once: true });
    out.textContent = "";
    const url = `/api/v1/pods/${seg(namespace)}/${seg(name)}/log?tail=200&container=${seg(pick.value)}` +
      (follow.checked ? "&follow=true" : "");
    try {
      const resp = await api(url, { signal: logAbort.signal, raw: true });
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out.append(decoder.decode(value, { stream: true }));
        out.scrollTop = out.scrollHeight;
      }
    } catch (err) {
      if (!logAbort.signal.aborted) out.append(`\n${err.message}\n`);
    }
  };
  const cmd = h("input", { id: "exec-command", size: 40, placeholder: "command, e.g. cat /etc/hostname" });
  const execOut = h("pre", { class: "log", id: "exec-output" });
  const exec = async (ev) => {
    ev.preventDefault();
    const argv = cmd.value.trim().split(/\s+/).filter(Boolean);
    if (!argv.length) return;
    execOut.textContent = "running...";
    try {
      const r = await api(`/api/v1/pods/${seg(namespace)}/${seg(name)}/exec`, { method: "POST",
        body: { command: argv, container: pick.value || null, timeout: 30 } });
      execOut.textContent = `${r.stdout}${r.stderr}\n(exit code ${r.exitCode})`;
    } catch (err) {
      execOut.textContent = err.message;
    }
  };
  ops.replaceChildren(
    h("h2", {}, "Logs"),
    h("div", { class: "toolbar" }, h("label", {}, "container ", pick), h("label", {}, follow, " follow"),
      h("button", { type: "button", id: "show-logs", onclick: showLogs }, "Show logs"),
      h("button", { type: "button", onclick: () => logAbort && logAbort.abort() }, "Stop")),
    out,
    h("h2", {}, "Exec"),
    h("form", { class: "toolbar", onsubmit: exec }, cmd, h("button", { type: "submit", id: "exec" }, "Run")),
    execOut);
}

// -- router --------------------------------------------------------------------------

async function render() {
  if (pageAbort) pageAbort.abort();
  pageAbort = new AbortController();
  const signal = pageAbort.signal;
  if (!token() && session === null) {
    // a cloudcore started with --insecure answers without a token (anonymous admin)
    let who = null;
    try {
      const resp = await fetch("/api/v1/whoami", { cache: "no-store", credentials: "omit" });
      who = resp.ok ? await resp.json() : null;
    } catch (err) { // unreachable: say so on the sign-in form rather than a blank page
      showSignIn(`cloudcore did not answer (${err.message}); sign in to try again.`);
      return;
    }
    if (!who || who.authEnabled) {
      showSignIn("");
      return;
    }
    session = { name: who.name, role: who.role };
  }
  if (session === null && token()) {
    const err = await signIn(token());
    if (err) {
      showSignIn(err.status === 401 ? "" : err.message);
      return;
    }
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("top").hidden = false;
  document.getElementById("who").textContent = `${session.name} (${session.role})`;
  const [path] = location.hash.replace(/^#/, "").split("?");
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch (_) {
    parts = []; // a malformed address: the fleet page
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (parts[0] === "workloads" ? "workloads" : "fleet"));
  }
  view.replaceChildren(h("p", { class: "muted" }, "loading..."));
  if (parts[0] === "nodes" && parts.length === 2) await nodePage(signal, parts[1]);
  else if (parts[0] === "pods" && parts.length === 3) await podPage(signal, parts[1], parts[2]);
  else if (parts[0] === "workloads") await workloadsPage(signal);
  else await fleetPage(signal);
}

window.addEventListener("hashchange", render);
render();
