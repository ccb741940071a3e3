// fastq dashboard: draws every page from the JSON API (/api/...).
// No framework, no CDN. Data is always inserted as text (never as HTML).
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const REFRESH_MS = 2000;
const COLORS = ["#2f6fed", "#1f9d55", "#d64545", "#c98a00", "#7a4cd9", "#0f9fb0", "#e0672d", "#5b6478"];
let timer = null;

// --- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, options = {}) {
  const opts = { headers: { "Accept": "application/json" }, credentials: "same-origin", ...options };
  if (opts.method === "POST") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.body = JSON.stringify(options.body || {});
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function toast(text, error) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

const fmtNum = (v, digits = 0) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
const fmtTime = (ts) => ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
const fmtDate = (ts) => ts ? new Date(ts * 1000).toLocaleString() : "–";
const fmtBytes = (b) => b ? (b / 1048576).toFixed(1) + " MiB" : "–";
const fmtRuntime = (s) => (s === null || s === undefined) ? "–"
  : s < 0.001 ? (s * 1e6).toFixed(1) + " µs" : s < 1 ? (s * 1000).toFixed(2) + " ms" : s.toFixed(3) + " s";
const badge = (state) => h("span", { class: "badge " + state }, state);
const link = (href, text) => h("a", { href }, text);
const json = (v) => JSON.stringify(v, null, 2);

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map(([label, cls]) => h("th", { class: cls || "" }, label)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty", colspan: headers.length }, "nothing yet"))));
}

// --- charts (canvas) -------------------------------------------------------------------

function lineChart(canvas, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, hgt = canvas.clientHeight || 200;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, hgt);
  const pad = { l: 44, r: 10, t: 8, b: 22 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    ctx.fillStyle = "#6b7385"; ctx.font = "12px system-ui"; ctx.fillText("no data yet", w / 2 - 30, hgt / 2);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const vmax = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => pad.l + (t1 === t0 ? 0 : (t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => hgt - pad.b - (v / vmax) * (hgt - pad.t - pad.b);
  ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#6b7385"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4, yy = y(v);
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
    ctx.fillText(v >= 10 ? v.toFixed(0) : v.toFixed(1), 4, yy + 4);
  }
  ctx.fillText(fmtTime(t0), pad.l, hgt - 6);
  ctx.fillText(fmtTime(t1), w - pad.r - 60, hgt - 6);
  series.forEach((s) => {
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.8; ctx.beginPath();
    s.points.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
    ctx.stroke();
  });
}

function chartBox(title, id, series) {
  const canvas = h("canvas", { id });
  const legend = h("div", { class: "legend" }, series.map((s) => {
    const sw = h("i"); sw.style.background = s.color; return h("span", {}, sw, s.label);
  }));
  const box = h("div", { class: "chart" }, h("div", { class: "title" }, title), canvas, legend);
  requestAnimationFrame(() => lineChart(canvas, series));
  return box;
}

function taskSeries(stats) {
  // smooth per-second counts over 5 s so the lines are readable
  const rows = stats.tasks, avg = (i, k) => {
    let s = 0, n = 0;
    for (let j = Math.max(0, i - 4); j <= i; j++) { s += rows[j][k]; n++; }
    return s / n;
  };
  return [
    { label: "succeeded/s", color: "#1f9d55", points: rows.map((r, i) => [r[0], avg(i, 1)]) },
    { label: "failed/s", color: "#d64545", points: rows.map((r, i) => [r[0], avg(i, 2)]) },
  ];
}

function queueSeries(stats) {
  const q = stats.queues;
  return Object.keys(q.waiting).map((name, i) => ({
    label: name, color: COLORS[i % COLORS.length],
    points: q.t.map((t, j) => [t, q.waiting[name][j] + q.in_flight[name][j]]),
  }));
}

// --- views ----------------------------------------------------------------------------

function workersTable(workers, withActions) {
  const headers = [["Worker"], ["Status"], ["Pool"], ["Concurrency", "num"], ["Active", "num"], ["Processed", "num"],
    ["Failed", "num"], ["Load", "num"], ["Memory", "num"], ["Queues"], ["Last seen"]];
  if (withActions) headers.push(["Actions"]);
  const rows = workers.map((w) => {
    const cells = [
      h("td", { class: "mono" }, w.hostname), h("td", {}, badge(w.online ? "online" : "offline")),
      h("td", {}, w.pool || "–"), h("td", { class: "num" }, fmtNum(w.concurrency)),
      h("td", { class: "num" }, fmtNum(w.active)), h("td", { class: "num" }, fmtNum(w.processed)),
      h("td", { class: "num" }, fmtNum(w.failed)),
      h("td", { class: "num" }, w.loadavg ? w.loadavg.map((v) => v.toFixed(2)).join(" ") : "–"),
      h("td", { class: "num" }, fmtBytes(w.rss)), h("td", {}, (w.queues || []).join(", ")),
      h("td", {}, fmtTime(w.last_heartbeat)),
    ];
    if (withActions) {
      const act = (action, label, cls, confirmText) => h("button", {
        class: cls || "", "data-action": action, disabled: !w.online,
        onclick: async (ev) => {
          if (confirmText && !confirm(confirmText)) return;
          ev.target.disabled = true;
          try {
            const r = await api(`/api/workers/${encodeURIComponent(w.hostname)}/${action}`, { method: "POST", body: { n: 1 } });
            toast(`${w.hostname}: ${r.reply.ok || r.reply.error || JSON.stringify(r.reply)}`, !!r.reply.error);
          } catch (e) { toast(e.message, true); }
          setTimeout(refresh, 600);
        },
      }, label);
      cells.push(h("td", {}, h("div", { class: "actions" },
        act("pool_grow", "+1", "", null), act("pool_shrink", "−1", "", null),
        act("shutdown", "Shut down", "danger", `Shut down ${w.hostname}? Running tasks finish first.`))));
    }
    return h("tr", { "data-host": w.hostname }, cells);
  });
  return table(headers, rows, { id: "workers-table" });
}

function queuesTable(queues) {
  const rows = queues.map((q) => h("tr", { "data-queue": q.queue },
    h("td", { class: "mono" }, q.queue), h("td", { class: "num" }, fmtNum(q.waiting)),
    h("td", { class: "num" }, fmtNum(q.in_flight)), h("td", { class: "num" }, fmtNum(q.delayed)),
    h("td", { class: "num" }, q.dead ? link(`/queues/${encodeURIComponent(q.queue)}`, fmtNum(q.dead)) : "0"),
    h("td", { class: "num" }, fmtNum(q.rate_in, 1)), h("td", { class: "num" }, fmtNum(q.rate_out, 1))));
  return table([["Queue"], ["Waiting", "num"], ["In flight", "num"], ["Delayed", "num"], ["Dead-lettered", "num"],
    ["In/s", "num"], ["Out/s", "num"]], rows, { id: "queues-table" });
}

async function viewDashboard(view) {
  const [ov, workers, queues, stats] = await Promise.all([
    api("/api/overview"), api("/api/workers"), api("/api/queues"), api("/api/stats?minutes=10")]);
  const card = (label, value, id) => h("div", { class: "card", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
  view.replaceChildren(
    h("h1", {}, "Dashboard"),
    h("div", { class: "cards" },
      card("workers online", ov.workers_online, "card-workers"),
      card("succeeded (last min)", ov.succeeded_last_minute, "card-succeeded"),
      card("failed (last min)", ov.failed_last_minute, "card-failed"),
      card("waiting", queues.reduce((s, q) => s + q.waiting, 0), "card-waiting"),
      card("in flight", queues.reduce((s, q) => s + q.in_flight, 0), "card-inflight"),
      card("dead-lettered", queues.reduce((s, q) => s + q.dead, 0), "card-dead")),
    h("h2", {}, "Last 10 minutes"),
    h("div", { class: "charts" },
      chartBox("Tasks per second", "chart-tasks", taskSeries(stats)),
      chartBox("Queue lengths (waiting + in flight)", "chart-queues", queueSeries(stats))),
    h("h2", {}, "Workers"), workersTable(workers, false),
    h("h2", {}, "Queues"), queuesTable(queues));
}

async function viewWorkers(view) {
  const workers = await api("/api/workers");
  view.replaceChildren(h("h1", {}, "Workers"), workersTable(workers, true),
    h("p", { class: "muted" }, "Pool +1/−1 and shut down go to the worker over the control channel; a shrunk or stopped process finishes its running task first."));
}

async function viewQueues(view) {
  const [queues, stats] = await Promise.all([api("/api/queues"), api("/api/stats?minutes=10")]);
  view.replaceChildren(h("h1", {}, "Queues"), queuesTable(queues), h("h2", {}, "Queue lengths"),
    h("div", { class: "charts" }, chartBox("Waiting + in flight", "chart-queues", queueSeries(stats))));
}

async function viewDeadLetters(view, queue) {
  const data = await api(`/api/queues/${encodeURIComponent(queue)}/dlq`);
  const selected = new Set();
  const requeue = async (body) => {
    try {
      const r = await api(`/api/queues/${encodeURIComponent(queue)}/dlq/requeue`, { method: "POST", body });
      toast(`requeued ${r.requeued} message(s)`);
    } catch (e) { toast(e.message, true); }
    refresh();
  };
  const rows = data.items.map((d) => h("tr", { "data-dead-id": d.id },
    h("td", {}, h("input", { type: "checkbox", onchange: (e) => (e.target.checked ? selected.add(d.id) : selected.delete(d.id)) })),
    h("td", { class: "mono" }, d.id),
    h("td", {}, d.task ? d.task.name : "?"),
    h("td", { class: "mono" }, d.task ? link(`/tasks/${encodeURIComponent(d.task.id)}`, d.task.id) : "–"),
    h("td", {}, badge(d.reason || "?")), h("td", { class: "mono" }, (d.error || "").slice(0, 300))));
  view.replaceChildren(
    h("h1", {}, `Dead letters of ${queue}`),
    h("div", { class: "toolbar" },
      h("button", { id: "requeue-selected", onclick: () => selected.size && requeue({ ids: [...selected] }) }, "Requeue selected"),
      h("button", { id: "requeue-all", onclick: () => confirm(`Requeue all ${data.total} dead letters of ${queue}?`) && requeue({ all: true }) }, "Requeue all"),
      h("span", { class: "muted" }, `${data.total} dead-lettered`)),
    table([[""], ["Entry"], ["Task"], ["Task id"], ["Reason"], ["Error"]], rows, { id: "dlq-table" }));
  stopRefresh();  // checkboxes would be reset by a refresh
}

const taskFilters = { state: "", name: "", search: "" };

async function viewTasks(view, rebuild) {
  const qs = new URLSearchParams({ ...taskFilters, limit: 200 });
  const data = await api(`/api/tasks?${qs}`);
  const rows = data.tasks.map((t) => h("tr", { "data-task-id": t.id },
    h("td", {}, t.name || "?"), h("td", { class: "mono" }, link(`/tasks/${encodeURIComponent(t.id)}`, t.id)),
    h("td", {}, badge(t.state)), h("td", { class: "mono" }, t.hostname || "–"),
    h("td", { class: "num" }, fmtRuntime(t.runtime)), h("td", {}, fmtTime(t.timestamp)),
    h("td", { class: "mono" }, (t.exception || (t.meta ? JSON.stringify(t.meta) : "")).slice(0, 120))));
  const body = table([["Name"], ["Id"], ["State"], ["Worker"], ["Runtime", "num"], ["When"], ["Exception / progress"]], rows,
    { id: "tasks-table" });
  const existing = document.getElementById("task-filters");
  if (existing && !rebuild) {
    const names = document.getElementById("filter-name");
    const known = new Set([...names.options].map((o) => o.value));
    data.names.filter((n) => !known.has(n)).forEach((n) => names.append(h("option", { value: n }, n)));
    document.getElementById("tasks-total").textContent = `${data.total} task(s)`;
    document.getElementById("tasks-table").replaceWith(body);
    return;
  }
  const onFilter = () => {
    if (location.pathname !== "/tasks") return;  // a debounced call after leaving the list
    taskFilters.state = document.getElementById("filter-state").value;
    taskFilters.name = document.getElementById("filter-name").value;
    taskFilters.search = document.getElementById("filter-search").value;
    viewTasks(view, false).catch((e) => toast(e.message, true));
  };
  const stateSel = h("select", { id: "filter-state", onchange: onFilter },
    ["", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "DEAD"].map((s) => h("option", { value: s }, s || "any state")));
  stateSel.value = taskFilters.state;
  const nameSel = h("select", { id: "filter-name", onchange: onFilter },
    h("option", { value: "" }, "any task"), data.names.map((n) => h("option", { value: n }, n)));
  nameSel.value = taskFilters.name;
  const search = h("input", { id: "filter-search", type: "search", placeholder: "search by task id or name", value: taskFilters.search,
    onkeydown: (e) => {
      if (e.key !== "Enter") return;
      clearTimeout(search.t);
      const v = e.target.value.trim();
      // a full id opens the task even when it is not among the recent ones (a queued task)
      if (/^[0-9a-f-]{36}$/i.test(v)) { go(`/tasks/${encodeURIComponent(v)}`); return; }
      onFilter();
    }, oninput: () => { clearTimeout(search.t); search.t = setTimeout(onFilter, 300); } });
  view.replaceChildren(h("h1", {}, "Tasks"),
    h("div", { class: "toolbar", id: "task-filters" }, stateSel, nameSel, search,
      h("span", { class: "muted", id: "tasks-total" }, `${data.total} task(s)`)),
    body,
    h("p", { class: "muted" }, "Recent tasks come from the workers' event stream. Enter a full task id to open any task, queued ones included."));
}

async function viewTask(view, id) {
  const t = await api(`/api/tasks/${encodeURIComponent(id)}`);
  const kv = (label, value, attrs) => [h("dt", {}, label), h("dd", attrs || {}, value === null || value === undefined || value === "" ? "–" : value)];
  const taskLink = (tid) => tid ? link(`/tasks/${encodeURIComponent(tid)}`, tid) : "–";
  const loc = t.location;
  const final = ["SUCCESS", "FAILURE", "REVOKED"].includes(t.state);
  const revokeBtn = h("button", { id: "revoke-btn", class: "danger", disabled: final || t.revoked,
    onclick: async () => {
      try { await api(`/api/tasks/${encodeURIComponent(id)}/revoke`, { method: "POST", body: { terminate: ["STARTED", "PROGRESS"].includes(t.state) || (loc && loc.where === "in flight") } }); toast("revoked"); }
      catch (e) { toast(e.message, true); }
      refresh();
    } }, t.revoked ? "Revoked" : "Revoke");
  const retryBtn = h("button", { id: "retry-btn", disabled: !t.arguments_known,
    title: t.arguments_known ? "send again with the same arguments (new id)" : "arguments unknown: set result_extended = True",
    onclick: async () => {
      try { const r = await api(`/api/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" }); toast(`sent again as ${r.task_id}`); go(`/tasks/${r.task_id}`); }
      catch (e) { toast(e.message, true); }
    } }, "Retry");
  const sections = [
    h("h1", {}, t.name || "task", " ", badge(t.state)),
    h("div", { class: "toolbar" }, revokeBtn, retryBtn, t.revoked ? h("span", { class: "badge REVOKED", id: "revoked-flag" }, "revoked: will not run") : null),
    h("dl", { class: "kv", id: "task-detail" },
      kv("Id", t.id, { class: "mono", id: "task-id" }), kv("State", t.state, { id: "task-state" }), kv("Name", t.name),
      kv("Worker", t.hostname || (t.event && t.event.hostname)), kv("Runtime", fmtRuntime(t.runtime ?? (t.event && t.event.runtime))),
      kv("Retries", t.retries ?? (t.event && t.event.retries) ?? 0), kv("Done", fmtDate(t.date_done)),
      loc ? kv("Where", `${loc.where} in ${loc.queue}` + (loc.eta ? ` (due ${fmtDate(loc.eta)})` : "") + (loc.reason ? ` (${loc.reason})` : "")) : [],
      kv("Parent", taskLink(t.parent_id)), kv("Root", taskLink(t.root_id)),
      kv("Children", t.children && t.children.length ? h("span", {}, t.children.map((c, i) => [i ? ", " : "", taskLink(c)])) : "–")),
  ];
  sections.push(h("h2", {}, "Arguments"));
  if (t.arguments_known) sections.push(h("pre", { id: "task-args" }, "args = " + json(t.args) + "\nkwargs = " + json(t.kwargs)));
  else sections.push(h("p", { class: "muted" }, "Not stored: a finished task's arguments are kept only with app.conf.result_extended = True."));
  if (t.exc_type) {
    sections.push(h("h2", {}, "Exception"), h("pre", { id: "task-exception" }, `${t.exc_type}: ${t.exc_message || ""}`));
    if (t.traceback) sections.push(h("h2", {}, "Traceback"), h("pre", { id: "task-traceback" }, t.traceback));
  } else if (t.state === "SUCCESS") {
    sections.push(h("h2", {}, "Result"), h("pre", { id: "task-result" }, json(t.result)));
  }
  if (t.meta) sections.push(h("h2", {}, t.state === "PROGRESS" ? "Progress" : "Meta"), h("pre", { id: "task-meta" }, json(t.meta)));
  view.replaceChildren(...sections);
}

// --- routing --------------------------------------------------------------------------

function route() {
  const p = decodeURIComponent(location.pathname);
  let m;
  if (p === "/" || p === "") return ["dashboard", (v) => viewDashboard(v)];
  if (p === "/workers") return ["workers", (v) => viewWorkers(v)];
  if (p === "/queues") return ["queues", (v) => viewQueues(v)];
  if ((m = p.match(/^\/queues\/(.+)$/))) return ["queues", (v) => viewDeadLetters(v, m[1])];
  if (p === "/tasks") return ["tasks", (v, first) => viewTasks(v, first)];
  if ((m = p.match(/^\/tasks\/(.+)$/))) return ["tasks", (v) => viewTask(v, m[1])];
  return ["", (v) => v.replaceChildren(h("h1", {}, "Not found"))];
}

function stopRefresh() { clearInterval(timer); timer = null; }

async function refresh(first) {
  const [nav, draw] = route();
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
  try {
    await draw(document.getElementById("view"), first === true);
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("status").textContent = "error: " + e.message;
  }
}

function go(path) {
  history.pushState(null, "", path);
  start();
}

function start() {
  stopRefresh();
  refresh(true);
  timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || a.origin !== location.origin || e.metaKey || e.ctrlKey || e.shiftKey) return;
  e.preventDefault();
  go(a.pathname);
});
window.addEventListener("popstate", start);
start();
