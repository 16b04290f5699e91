// The tokenpulse dashboard: reads /api/panels/*, /api/alerts and /v1/throttle, draws with Chart.js.
// No build step and no framework: one refresh() every 5 s, or when a filter changes.
"use strict";

const REFRESH_MS = 5000;
const COLORS = ["#4fb3ff", "#ffb84f", "#5bd19a", "#ff6b6b", "#b48cff", "#57d6d6", "#f78fb3", "#c4c96b"];
const charts = {};
let panelParams = {};  // panel name -> set of parameter names it accepts (from /api/panels)

Chart.defaults.color = "#8a96a3";
Chart.defaults.borderColor = "#222b35";
Chart.defaults.animation = false;  // refreshed every few seconds: no animation
Chart.defaults.maintainAspectRatio = false;

// ---------------------------------------------------------------- data

function token() { return sessionStorage.getItem("tokenpulse-admin-token") || ""; }

async function api(path) {
  const headers = token() ? {"Authorization": "Bearer " + token()} : {};
  const r = await fetch(path, {headers});
  if (r.status === 401) {
    document.getElementById("auth").hidden = false;
    throw new Error("the admin API needs a token");
  }
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error || ("HTTP " + r.status));
  return doc;
}

function filters() {
  return {since: document.getElementById("since").value, tenant: document.getElementById("tenant").value,
          feature: document.getElementById("feature").value};
}

// Ask a panel with the filters it accepts (a panel without a feature parameter ignores that filter).
function panel(name, extra = {}) {
  const accepted = panelParams[name] || new Set();
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries({...filters(), ...extra})) {
    if (v !== "" && accepted.has(k)) q.set(k, v);
  }
  return api(`/api/panels/${name}?${q}`);
}

function rowsOf(doc) {  // [{column: value}]
  return doc.rows.map(r => Object.fromEntries(doc.columns.map((c, i) => [c, r[i]])));
}

// ---------------------------------------------------------------- formatting

const num = v => Number(v || 0);
const int = v => Math.round(num(v)).toLocaleString("en-US");
const usd = v => "$" + num(v).toLocaleString("en-US", {minimumFractionDigits: 2,
                                                    maximumFractionDigits: num(v) < 1 ? 4 : 2});
function short(n) {
  n = num(n);
  if (n >= 1e6) return (n / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
  return String(n);
}
const hhmm = s => String(s).slice(11, 16);
const text = (id, value) => { document.getElementById(id).textContent = value; };

// Charts whose value axis turns logarithmic with the "log scale" box (one series flattening the rest).
const LOGGABLE = {"chart-feature": "x", "chart-tenant": "x", "chart-model": "x", "chart-role-minute": "y"};
const logScale = () => document.getElementById("log-scale").checked;

function chart(id, type, labels, datasets, options = {}) {
  const axis = LOGGABLE[id];
  if (axis && logScale()) {
    options = {...options, scales: {...(options.scales || {}),
      [axis]: {...((options.scales || {})[axis] || {}), type: "logarithmic"}}};
  }
  if (options.indexAxis === "y") {  // one bar per label: the box grows so labels stay readable
    document.getElementById(id).parentElement.style.height = Math.max(210, 24 * labels.length + 50) + "px";
  }
  datasets.forEach((d, i) => {
    const c = d.color || COLORS[i % COLORS.length];
    d.borderColor = c;
    d.backgroundColor = type === "line" ? c : c + "cc";
    d.pointRadius = type === "line" ? (labels.length <= 3 ? 4 : 0) : undefined;  // a lone hour still shows
    d.borderWidth = type === "line" ? 2 : 0;
  });
  if (charts[id]) {
    charts[id].data.labels = labels;
    charts[id].data.datasets = datasets;
    charts[id].update();
    return;
  }
  charts[id] = new Chart(document.getElementById(id), {type, data: {labels, datasets},
    options: {plugins: {legend: {display: datasets.length > 1, labels: {boxWidth: 10}}}, ...options}});
}

function table(id, rows, onClick = null) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells, i) => {
    const tr = document.createElement("tr");
    if (onClick) tr.addEventListener("click", () => onClick(i));
    for (const c of cells) {
      const td = document.createElement("td");
      if (c && typeof c === "object") { td.textContent = c.text; td.className = c.cls || ""; }
      else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }));
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length || 4;
    td.className = "empty";
    td.textContent = "none";
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

// ---------------------------------------------------------------- panels

async function kpis() {
  const rows = rowsOf(await panel("cost_by_dimension", {by: "provider", limit: "1000"}));
  const unpriced = rows.reduce((a, r) => a + num(r.unpriced_calls), 0);
  text("kpi-cost", usd(rows.reduce((a, r) => a + num(r.cost_usd), 0))
       + (unpriced ? ` + ${int(unpriced)} unpriced calls` : ""));
  text("kpi-calls", int(rows.reduce((a, r) => a + num(r.calls), 0)));
  text("kpi-tokens", short(rows.reduce((a, r) => a + num(r.input_tokens) + num(r.output_tokens), 0)));
}

async function tokensPerRun() {
  const rows = rowsOf(await panel("tokens_per_run"));
  const first = rows[0] || {};
  text("tpr-p50", int(first.p50_tokens));
  text("tpr-p95", int(first.p95_tokens));
  text("tpr-p99", int(first.p99_tokens));
  text("tpr-runs", int(first.total_runs));
  text("kpi-runs", int(first.total_runs));
  text("kpi-p99", int(first.p99_tokens));
  chart("chart-tokens-per-run", "bar", rows.map(r => `${short(r.bucket_from)}–${short(r.bucket_to)}`),
        [{label: "runs", data: rows.map(r => num(r.runs))}],
        {scales: {y: {type: "logarithmic", title: {display: true, text: "runs (log)"}},
                  x: {title: {display: true, text: "tokens per run"}}}});
}

async function roleMinute() {
  const rows = rowsOf(await panel("tokens_per_minute_by_agent_role"));
  const minutes = [...new Set(rows.map(r => r.minute))].sort();
  const roles = [...new Set(rows.map(r => r.role))].sort();
  const at = new Map(rows.map(r => [r.minute + "\u0000" + r.role, num(r.tokens)]));
  chart("chart-role-minute", "line", minutes.map(hhmm),
        roles.map(role => ({label: role, data: minutes.map(m => at.get(m + "\u0000" + role) || 0)})),
        {scales: {y: {title: {display: true, text: "tokens / min"}}}});
}

async function toolCalls() {
  const rows = rowsOf(await panel("tool_call_tokens"));
  chart("chart-tool", "bar", rows.map(r => r.tool_name),
        [{label: "mean tokens", data: rows.map(r => num(r.mean_tokens))},
         {label: "p95 tokens", data: rows.map(r => num(r.p95_tokens))}]);
}

// Spend of calls without a price is unknown, never $0.00: "unpriced" with the tokens, or "+ N unpriced".
function spendText(r) {
  if (r.cost_usd === null) return `unpriced (${short(num(r.unpriced_tokens))} tokens)`;
  const more = num(r.unpriced_calls) ? ` + ${int(r.unpriced_calls)} unpriced` : "";
  return `${usd(r.cost_usd)} (${num(r.cost_share_pct).toFixed(1)} %)${more}`;
}

async function spend(by) {
  const rows = rowsOf(await panel("cost_by_dimension", {by, limit: "8"}));
  chart(`chart-${by}`, "bar", rows.map(r => r.key), [{label: "USD", data: rows.map(r => num(r.cost_usd))}],
        {indexAxis: "y", scales: {x: {title: {display: true, text: "USD"}}, y: {ticks: {autoSkip: false}}}});
  table(`table-${by}`, rows.map(r => [r.key, spendText(r)]), i => drillTo({[by]: rows[i].key}));
  return rows;
}

async function ioRatio() {
  const rows = rowsOf(await panel("io_ratio"));
  const hours = [...new Set(rows.map(r => r.hour))].sort();
  const byFeature = new Map();  // feature -> hour -> [input, output]
  for (const r of rows) {
    const f = byFeature.get(r.feature) || new Map();
    const cell = f.get(r.hour) || [0, 0];
    cell[0] += num(r.input_tokens);
    cell[1] += num(r.output_tokens);
    f.set(r.hour, cell);
    byFeature.set(r.feature, f);
  }
  const features = [...byFeature.keys()].sort().slice(0, 8);
  chart("chart-io", "line", hours.map(h => String(h).slice(5, 16)), features.map(f => ({
    label: f, data: hours.map(h => { const c = byFeature.get(f).get(h); return c && c[1] ? +(c[0] / c[1]).toFixed(2) : null; }),
  })));
}

async function costPerSuccessfulRun() {
  const rows = rowsOf(await panel("cost_per_successful_run"));
  chart("chart-cpsr", "line", rows.map(r => String(r.hour).slice(5, 16)),
        [{label: "USD per successful run", data: rows.map(r => num(r.cost_per_successful_run))}]);
  const cost = rows.reduce((a, r) => a + num(r.cost_usd), 0);
  const ok = rows.reduce((a, r) => a + num(r.successful_runs), 0);
  text("kpi-cpsr", ok ? usd(cost / ok) : "–");
}

async function alerts() {
  const doc = await api("/api/alerts");
  // throttle notices (the tenant_throttled rule) have their own panel: #throttled
  const firing = doc.alerts.filter(a => a.state === "firing" && a.rule !== "tenant_throttled");
  text("alerts-count", firing.length);
  document.getElementById("alerts-count").classList.toggle("hot", firing.length > 0);
  table("alerts", firing.map(a => [a.rule, {text: a.labels.severity || "", cls: "sev-" + (a.labels.severity || "")},
                                   a.annotations.summary || "", new Date(a.fired_at * 1000).toLocaleTimeString()]),
        i => drillTo(drillOfLabels(firing[i].labels), firing[i].rule));
}

async function throttled() {
  const list = (await api("/v1/throttle")).throttled;
  text("throttled-count", list.length);
  document.getElementById("throttled-count").classList.toggle("hot", list.length > 0);
  table("throttled", list.map(d => [d.tenant, d.reason || d.message,
                                    `in ${d.retry_after_s} s` + (d.source === "manual" ? " (manual)" : "")]),
        i => drillTo({tenant: list[i].tenant}, "throttled"));
}

// ---------------------------------------------------------------- drill-down: runs, then a run's spans

let drill = {};  // the runs panel's own filter: tenant, feature, user, session or model
let openTrace = "";

// An alert's labels -> the runs behind it (budget alerts name their dimension and key).
function drillOfLabels(labels) {
  const d = {};
  for (const [from, to] of [["tenant", "tenant"], ["feature", "feature"], ["session", "session"],
                            ["session_id", "session"], ["user", "user"], ["user_id", "user"], ["model", "model"]]) {
    if (labels[from] && labels[from] !== "unattributed") d[to] = labels[from];
  }
  if (labels.dimension && labels.key) d[labels.dimension === "user_id" ? "user" : labels.dimension] = labels.key;
  return d;
}

function drillTo(d, from = "") {
  drill = d;
  const what = Object.entries(d).map(([k, v]) => `${k} = ${v}`).join(", ");
  text("runs-filter", what ? `(${what}${from ? ", from " + from : ""})` : "");
  document.getElementById("runs-clear").hidden = !what;
  runs().then(() => document.getElementById("runs-panel").scrollIntoView({block: "start"})).catch(showError);
}

// Answers can arrive out of order (a refresh started before a click answers after it): only the
// latest request of each of these two panels draws, so a stale answer never replaces a newer one.
let runsSeq = 0;
let spansSeq = 0;

async function runs() {
  const seq = ++runsSeq;
  const doc = await panel("runs", {...drill, limit: "20"});
  if (seq !== runsSeq) return;
  const rows = rowsOf(doc);
  const cost = r => r.cost_usd === null ? "unpriced" : usd(r.cost_usd) + (num(r.unpriced_calls) ? ` + ${int(r.unpriced_calls)} unpriced` : "");
  table("runs", rows.map(r => [String(r.start).slice(11, 19), r.tenant, r.feature, String(r.user_id || "").slice(0, 8),
                               r.models, int(r.llm_calls), int(r.tokens), cost(r), `${num(r.duration_s).toFixed(1)} s`,
                               {text: r.status, cls: r.status === "ok" ? "" : "sev-critical"}]),
        i => openRun(rows[i].trace_id));
  [...document.querySelectorAll("#runs tbody tr")].forEach((tr, i) => {
    tr.dataset.trace = rows[i] ? rows[i].trace_id : "";
    tr.classList.toggle("open", !!rows[i] && rows[i].trace_id === openTrace);
  });
}

async function openRun(traceId) {
  openTrace = traceId;
  const seq = ++spansSeq;
  const rows = rowsOf(await api(`/api/panels/run_spans?trace_id=${encodeURIComponent(traceId)}`));
  if (seq !== spansSeq) return;
  const parent = new Map(rows.map(r => [r.span_id, r.parent_span_id]));
  const depth = id => { let d = 0; for (let p = parent.get(id); p && parent.has(p) && d < 32; p = parent.get(p)) d++; return d; };
  table("spans", rows.map(r => {
    const counted = num(r.counted) ? "yes" : (r.excluded_reason ? `no: ${r.excluded_reason}` : "no");
    return [{text: "\u00a0\u00a0".repeat(depth(r.span_id)) + r.name, cls: num(r.counted) ? "" : "excluded"},
            r.operation, r.agent_role, r.model, num(r.input_tokens) || num(r.output_tokens)
              ? `${int(r.input_tokens)} / ${int(r.output_tokens)}` : "",
            r.cost_usd === null ? (r.price_status === "unknown_model" ? "unpriced" : "") : usd(r.cost_usd),
            counted, `+${num(r.start_ms).toFixed(0)} ms`, `${num(r.duration_ms).toFixed(0)} ms`];
  }));
  text("spans-run", traceId);
  const panelEl = document.getElementById("spans-panel");
  panelEl.hidden = false;
  document.querySelectorAll("#runs tbody tr").forEach(tr => tr.classList.toggle("open", tr.dataset.trace === traceId));
  panelEl.scrollIntoView({block: "start"});
}

function fillSelect(id, values) {
  const select = document.getElementById(id);
  const current = select.value;
  const wanted = ["", ...values.filter(v => v !== "unattributed").sort(), "unattributed"];
  const have = [...select.options].map(o => o.value);
  if (JSON.stringify(have) === JSON.stringify(wanted)) return;
  select.replaceChildren(...wanted.map(v => new Option(v || "all", v)));
  select.value = wanted.includes(current) ? current : "";
}

// ---------------------------------------------------------------- refresh

let running = false;
let again = false;  // a filter changed while a refresh was in flight: run once more when it ends
async function refresh() {
  if (running) {
    again = true;
    return;
  }
  running = true;
  const error = document.getElementById("error");
  try {
    const [features, tenants] = await Promise.all([spend("feature"), spend("tenant"), spend("model"), kpis(),
      tokensPerRun(), roleMinute(), toolCalls(), ioRatio(), costPerSuccessfulRun(), alerts(), throttled(), runs()]);
    if (!filters().tenant) fillSelect("tenant", tenants.map(r => r.key));
    if (!filters().feature) fillSelect("feature", features.map(r => r.key));
    error.hidden = true;
    text("updated", "updated " + new Date().toLocaleTimeString());
    document.body.dataset.loaded = "true";  // for tests and screenshots: every panel has drawn
  } catch (e) {
    error.textContent = "Could not refresh: " + e.message;
    error.hidden = false;
  } finally {
    running = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

async function start() {
  const list = await api("/api/panels");
  panelParams = Object.fromEntries(list.map(p => [p.name, new Set(p.params.map(x => x.name))]));
  // A notification's link (/?tenant=...#runs-panel) opens the runs behind the alert.
  const linked = Object.fromEntries([...new URLSearchParams(location.search)]
    .filter(([k, v]) => ["tenant", "feature", "session", "user", "model"].includes(k) && v));
  if (Object.keys(linked).length && !Object.keys(drill).length) drillTo(linked, "a notification");
  await refresh();
}

function showError(e) {
  const error = document.getElementById("error");
  error.textContent = "Could not load: " + e.message;
  error.hidden = false;
}

for (const id of ["since", "tenant", "feature"]) document.getElementById(id).addEventListener("change", refresh);
document.getElementById("runs-clear").addEventListener("click", () => drillTo({}));
document.getElementById("log-scale").addEventListener("change", () => {
  for (const id of Object.keys(LOGGABLE)) if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  refresh();
});
document.getElementById("token-save").addEventListener("click", () => {
  sessionStorage.setItem("tokenpulse-admin-token", document.getElementById("token").value);
  document.getElementById("auth").hidden = true;
  start().catch(showError);
});
setInterval(() => (Object.keys(panelParams).length ? refresh() : start()).catch(showError), REFRESH_MS);
start().catch(showError);
