// The Sweep dashboard: renders the page its path names from the HTTP API, and keeps it
// current by polling while the experiment runs. The token lives in sessionStorage only.
"use strict";

const API = "/api/v1";
const POLL_MS = 3000;
const PLOTS = [
  ["history", "Optimization history"],
  ["intermediate", "Intermediate values (learning curves)"],
  ["parallel", "Parallel coordinates"],
  ["importance", "Parameter importance"],
  ["slice", "Slice"],
  ["contour", "Contour of the two most important parameters"],
  ["pareto", "Pareto front"],
  ["timeline", "Timeline of trials per worker"],
];
const ENDED = new Set(["completed", "failed", "cancelled"]);

let timer = null;

// plotly.js (3.5 MB) loads beside the page, not before it: tables show at once, plots when
// it has come.
const plotly = new Promise((resolve, reject) => {
  const script = document.createElement("script");
  script.src = "/dashboard/static/plotly.min.js";
  script.async = true;
  script.onload = resolve;
  script.onerror = () => reject(new Error("plotly.js did not load"));
  document.head.append(script);
});
let signedOut = false;  // the sign-in form is up: nothing polls meanwhile

// ---------------------------------------------------------------------------------------
// Talking to the API

function token() {
  return sessionStorage.getItem("sweep-token") || "";
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(API + path, { ...options, headers });
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not our error shape */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

// ---------------------------------------------------------------------------------------
// Building the page (text always goes in as text, never as HTML)

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function table(headings, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

const stateBadge = (state) => el("span", { class: `state state-${state}` }, state);
const number = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(5));

function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function showError(error) {
  if (error && error.status === 401) {  // the token was revoked while the page was open
    signIn(true);
    return;
  }
  document.getElementById("error").textContent = error ? String(error.message || error) : "";
}

// ---------------------------------------------------------------------------------------
// Experiments page

async function experimentsPage() {
  const filter = el("select", { id: "state-filter" },
    ["", "running", "paused", "completed", "failed", "cancelled"].map(
      (s) => el("option", { value: s }, s || "every state")));
  filter.value = new URLSearchParams(location.search).get("state") || "";
  filter.addEventListener("change", () => {
    history.replaceState(null, "", filter.value ? `?state=${filter.value}` : location.pathname);
    refresh();
  });
  const holder = el("div", { id: "experiments" });
  show(el("h1", {}, "Experiments"), el("label", {}, "State: ", filter), holder);

  async function refresh() {
    const query = filter.value ? `&state=${filter.value}` : "";
    const page = await getJson(`/experiments?limit=200${query}`);
    holder.replaceChildren(table(
      ["id", "name", "project", "state", "finished / n_trials", "running", "pruned", "failed",
        "objective", "best value", "age"],
      page.items.map((e) => {
        const c = e.counts;
        const finished = c.completed + c.pruned + c.failed + c.cancelled;
        return [e.id, el("a", { href: `/dashboard/experiments/${e.id}` }, e.name), e.project,
          stateBadge(e.state), `${finished} / ${e.n_trials}`, c.running, c.pruned, c.failed,
          objective(e.spec), number(e.best_value), age(e.created_at)];
      })), el("p", {}, `${page.total} experiment(s)`));
  }
  await poll(refresh, () => true);
}

// ---------------------------------------------------------------------------------------
// Experiment page: summary and controls, plots, the trials table, and a comparison of the
// trials selected in it.

const PAGE_SIZE = 50;

async function experimentPage(id, me) {
  const summary = el("div", { id: "summary" });
  const actions = el("div", { class: "actions", id: "actions" });
  const forms = el("div", { class: "forms", id: "forms" });
  const plots = el("div", { class: "plots" });
  const holders = {};
  for (const [kind, title] of PLOTS) {
    holders[kind] = el("div", { class: "plot", id: `plot-${kind}`, "data-title": title });
    plots.append(el("div", { class: "plot-card" }, plotToolbar(holders[kind], kind),
      holders[kind]));
  }
  const trials = new TrialsTable(id);
  const compare = new Comparison(id);
  trials.onSelect = (numbers) => compare.show(numbers, trials.metricNames());
  const spec = el("pre", { id: "spec" });
  show(el("h1", { id: "title" }, `Experiment ${id}`), summary, actions, forms, plots,
    el("h2", {}, "Trials"), trials.node, compare.node, el("h2", {}, "Spec"), spec);

  let experiment = null;
  // Whether the forms were built for an ended experiment: they are rebuilt only when that
  // changes, never under the user's typing.
  let formsFor = null;
  async function refresh() {
    experiment = await getJson(`/experiments/${id}`);
    const e = experiment;
    const c = e.counts;
    document.getElementById("title").textContent = `${e.name} (experiment ${e.id})`;
    spec.textContent = JSON.stringify(e.spec, null, 2);
    summary.replaceChildren(table(
      ["state", "finished / n_trials", "running", "queued", "completed", "pruned", "failed",
        "objective", "best value", "best trial", "stop reason"],
      [[stateBadge(e.state), `${c.completed + c.pruned + c.failed + c.cancelled} / ${e.n_trials}`,
        c.running, c.queued, c.completed, c.pruned, c.failed, objective(e.spec),
        number(e.best_value),
        e.best_trial_id ? el("a", { href: `/dashboard/trials/${e.best_trial_id}` },
          `trial ${e.best_trial ?? e.best_trial_id}`) : "–", e.stop_reason || ""]]),
    e.waiting_for ? el("p", { id: "waiting-for" }, `Waiting: ${e.waiting_for}`) : "");
    mark("summary");
    renderActions(e, me, actions, refresh);
    if (formsFor !== ENDED.has(e.state)) {
      formsFor = ENDED.has(e.state);
      renderForms(e, me, forms, refresh);
    }
    trials.spec = e.spec;
    await trials.refresh();
    mark("trials");
    const notReady = await getJson(`/experiments/${id}/plots`);
    await Promise.all([
      ...PLOTS.map(([kind]) => drawPlot(id, kind, holders[kind], notReady[kind])),
      compare.refresh(),
    ]);
    mark("plots");
  }
  await poll(refresh, () => !experiment || !ENDED.has(experiment.state));
}

// When the page first showed each part (ms since navigation), for whoever measures it.
const timings = {};
window.sweepTimings = timings;
function mark(part) {
  if (!(part in timings)) timings[part] = performance.now();
}

// Why a trial failed (or waits again), its message on hover: no need to open each trial.
function reasonCell(t) {
  if (!t.failure_reason) return "";
  return el("span", { class: "reason", title: t.failure_message || "" }, t.failure_reason);
}

// ---------------------------------------------------------------------------------------
// The trials table: the server filters, sorts and pages; the user picks the columns.

const BASE_COLUMNS = [
  // [key, heading, sort (null: not sortable), cell]
  ["state", "state", null, (t) => stateBadge(t.state)],
  ["reason", "reason", null, reasonCell],
  ["value", "value", "objective", (t) => number(t.value)],
  ["best_epoch", "best epoch", null, (t) => t.best_epoch ?? "–"],
  ["epochs", "epochs", null, (t) => t.last_epoch],
  ["worker", "worker", null, (t) => t.worker_id ?? "–"],
];

class TrialsTable {
  constructor(experimentId) {
    this.id = experimentId;
    this.spec = null;
    this.query = { state: "", sort: "number", order: "asc", where: [], offset: 0 };
    this.selected = new Set();
    this.metrics = new Set();
    this.onSelect = () => {};
    const saved = localStorage.getItem(`sweep-columns-${experimentId}`);
    this.hidden = new Set(saved ? JSON.parse(saved) : ["worker"]);
    this.shownMetrics = new Set(JSON.parse(localStorage.getItem("sweep-metric-columns") || "[]"));
    this.filters = el("form", { id: "trial-filters", class: "filters" });
    this.columns = el("details", { id: "trial-columns", class: "columns" });
    this.body = el("div", { id: "trials" });
    this.pager = el("div", { id: "trial-pager", class: "pager" });
    this.node = el("div", {}, this.filters, this.columns, this.body, this.pager);
    this.filtersFor = null;
  }

  metricNames() {
    return [...this.metrics].sort();
  }

  params() {
    return Object.entries(this.spec.search_space);
  }

  async refresh() {
    if (this.filtersFor !== this.id) {
      this.filtersFor = this.id;
      this.renderFilters();
    }
    const q = this.query;
    const search = new URLSearchParams({ limit: PAGE_SIZE, offset: q.offset, sort: q.sort,
      order: q.order });
    if (q.state) search.set("state", q.state);
    for (const w of q.where) search.append("where", w);
    const page = await getJson(`/experiments/${this.id}/trials?${search}`);
    for (const t of page.items) {
      for (const name of Object.keys(t.last_metrics || {})) this.metrics.add(name);
    }
    this.renderColumns();
    this.renderRows(page);
    this.renderPager(page);
  }

  renderFilters() {
    const state = el("select", { id: "trial-state" },
      ["", "running", "queued", "completed", "pruned", "failed", "cancelled"].map(
        (s) => el("option", { value: s }, s || "every state")));
    const inputs = [el("label", {}, "state ", state)];
    for (const [name, p] of this.params()) {
      if (p.type === "categorical") {
        const choice = el("select", { "data-param": name, class: "param-choice" },
          el("option", { value: "" }, "any"),
          p.choices.map((c) => el("option", { value: typeof c === "string" ? c : JSON.stringify(c) },
            String(c))));
        inputs.push(el("label", {}, `${name} `, choice));
      } else {
        inputs.push(el("label", {}, `${name} ≥ `,
          el("input", { "data-param": name, "data-op": ">=", size: 7, class: "param-bound" }),
          " ≤ ", el("input", { "data-param": name, "data-op": "<=", size: 7,
            class: "param-bound" })));
      }
    }
    const apply = el("button", { type: "submit", id: "trial-filter-apply" }, "Filter");
    const clear = el("button", { type: "reset", id: "trial-filter-clear" }, "Clear");
    this.filters.replaceChildren(...inputs, apply, clear);
    this.filters.onsubmit = (event) => {
      event.preventDefault();
      const where = [];
      for (const input of this.filters.querySelectorAll(".param-bound")) {
        if (input.value.trim()) where.push(`${input.dataset.param}${input.dataset.op}${input.value.trim()}`);
      }
      for (const select of this.filters.querySelectorAll(".param-choice")) {
        if (select.value) where.push(`${select.dataset.param}=${select.value}`);
      }
      Object.assign(this.query, { state: state.value, where, offset: 0 });
      this.reload();
    };
    this.filters.onreset = () => {
      Object.assign(this.query, { state: "", where: [], offset: 0 });
      setTimeout(() => this.reload());  // after the form has cleared its inputs
    };
  }

  async reload() {
    try {
      await this.refresh();
      showError(null);
    } catch (error) {
      showError(error);
    }
  }

  renderColumns() {
    const box = (key, label, group) => {
      const checked = group === "metric" ? this.shownMetrics.has(key) : !this.hidden.has(key);
      const input = el("input", { type: "checkbox", "data-column": key });
      input.checked = checked;
      input.addEventListener("change", () => {
        if (group === "metric") {
          if (input.checked) this.shownMetrics.add(key);
          else this.shownMetrics.delete(key);
          localStorage.setItem("sweep-metric-columns", JSON.stringify([...this.shownMetrics]));
        } else {
          if (input.checked) this.hidden.delete(key);
          else this.hidden.add(key);
          localStorage.setItem(`sweep-columns-${this.id}`, JSON.stringify([...this.hidden]));
        }
        this.reload();
      });
      return el("label", {}, input, label);
    };
    const open = this.columns.open;
    this.columns.replaceChildren(el("summary", {}, "Columns"),
      el("div", {}, "Trial: ", BASE_COLUMNS.map(([key, heading]) => box(key, heading, "base"))),
      el("div", {}, "Params: ", this.params().map(([name]) => box(`param:${name}`, name, "param"))),
      el("div", {}, "Metrics (last epoch): ",
        this.metricNames().map((name) => box(name, name, "metric"))));
    this.columns.open = open;
  }

  visibleColumns() {
    const columns = BASE_COLUMNS.filter(([key]) => !this.hidden.has(key));
    for (const [name] of this.params()) {
      if (this.hidden.has(`param:${name}`)) continue;
      columns.push([`param:${name}`, name, `param:${name}`,
        (t) => (name in t.params ? formatParam(t.params[name]) : "–")]);
    }
    for (const name of this.metricNames()) {
      if (!this.shownMetrics.has(name)) continue;
      columns.push([`metric:${name}`, name, `metric:${name}`,
        (t) => number((t.last_metrics || {})[name])]);
    }
    return columns;
  }

  renderRows(page) {
    const columns = this.visibleColumns();
    const heading = (label, sort) => {
      if (!sort) return el("th", {}, label);
      const active = this.query.sort === sort;
      const arrow = active ? (this.query.order === "desc" ? " ▼" : " ▲") : "";
      return el("th", { class: "sortable", "data-sort": sort, onclick: () => {
        const order = active && this.query.order === "asc" ? "desc" : "asc";
        Object.assign(this.query, { sort, order, offset: 0 });
        this.reload();
      } }, label + arrow);
    };
    const rows = page.items.map((t) => {
      const pick = el("input", { type: "checkbox", class: "pick", "data-number": t.number ?? "" });
      pick.checked = this.selected.has(t.number);
      pick.disabled = t.number === null;
      pick.addEventListener("change", () => {
        if (pick.checked) this.selected.add(t.number);
        else this.selected.delete(t.number);
        this.onSelect([...this.selected]);
      });
      return el("tr", { "data-number": t.number ?? "" },
        el("td", {}, pick),
        el("td", {}, el("a", { href: `/dashboard/trials/${t.id}` }, t.name ?? "(waiting)")),
        columns.map(([, , , cell]) => el("td", {}, cell(t))));
    });
    this.body.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, el("th", { title: "compare" }, "⇄"),
        heading("trial", "number"), columns.map(([, label, sort]) => heading(label, sort)))),
      el("tbody", {}, rows)));
  }

  renderPager(page) {
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.items.length;
    const go = (offset) => () => {
      this.query.offset = offset;
      this.reload();
    };
    const prev = el("button", { id: "trials-prev", onclick: go(Math.max(0, page.offset - PAGE_SIZE)) },
      "‹ previous");
    const next = el("button", { id: "trials-next", onclick: go(page.offset + PAGE_SIZE) }, "next ›");
    prev.disabled = page.offset === 0;
    next.disabled = last >= page.total;
    this.pager.replaceChildren(prev,
      el("span", { id: "trials-range" }, ` ${first}-${last} of ${page.total} trial(s) `), next);
  }
}

function formatParam(value) {
  return typeof value === "number" && !Number.isInteger(value) ? number(value) : String(value);
}

// ---------------------------------------------------------------------------------------
// Comparing trials: the curves of any metric for the trials selected in the table.

class Comparison {
  constructor(experimentId) {
    this.id = experimentId;
    this.numbers = [];
    this.metric = null;
    this.select = el("select", { id: "compare-metric" });
    this.select.addEventListener("change", () => {
      this.metric = this.select.value;
      this.refresh();
    });
    this.plot = el("div", { class: "plot", id: "compare-plot" });
    this.node = el("section", { id: "compare", hidden: "" },
      el("h2", {}, "Compare"), el("label", {}, "metric ", this.select),
      el("div", { class: "plot-card" }, plotToolbar(this.plot, "compare"), this.plot));
  }

  show(numbers, metrics) {
    this.numbers = numbers;
    if (!this.metric) this.metric = metrics.includes("val_loss") ? "val_loss" : metrics[0];
    this.select.replaceChildren(...metrics.map((m) => el("option", { value: m }, m)));
    this.select.value = this.metric;
    this.refresh();
  }

  async refresh() {
    this.node.hidden = this.numbers.length === 0;
    if (!this.numbers.length || !this.metric) return;
    const search = new URLSearchParams({ metric: this.metric });
    for (const n of this.numbers) search.append("trial", n);
    try {
      const answer = await getJson(`/experiments/${this.id}/curves?${search}`);
      await plotly;
      const data = answer.curves.map((c) => ({
        type: "scatter", mode: "lines+markers", name: `${c.name} (${c.state})`,
        x: c.epochs, y: c.values,
      }));
      await Plotly.react(this.plot, data, {
        title: { text: `${answer.metric} per epoch` },
        xaxis: { title: { text: "epoch" } },
        yaxis: { title: { text: answer.metric } },
        showlegend: true,
      }, { responsive: true });
      applyToolbar(this.plot);
      this.plot.dataset.drawn = "true";
    } catch (error) {
      showError(error);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Plots: each with toggles for log axes and, where an outlier squeezes the rest, for fitting
// the axes to the bulk of the points.

const TOGGLES = {
  history: ["log-y", "fit"],
  intermediate: ["log-y"],
  slice: ["log-x", "log-y"],
  pareto: ["log-x", "log-y", "fit"],
  compare: ["log-y"],
};

function plotToolbar(holder, kind) {
  const bar = el("div", { class: "plot-toolbar" });
  for (const toggle of TOGGLES[kind] || []) {
    const input = el("input", { type: "checkbox", "data-toggle": toggle,
      id: `${holder.id}-${toggle}` });
    input.checked = toggle === "fit";
    input.addEventListener("change", () => applyToolbar(holder));
    const label = { "log-x": "log x", "log-y": "log y", fit: "fit axes to the bulk" }[toggle];
    bar.append(el("label", {}, input, label));
  }
  holder.toolbar = bar;
  return bar;
}

// The figure's axes as it came (Optuna sets log axes for log-scaled params), to go back to.
function rememberAxes(holder) {
  holder.axes = {};
  for (const [key, axis] of Object.entries(holder._fullLayout || {})) {
    if (/^[xy]axis\d*$/.test(key)) holder.axes[key] = { type: axis.type };
  }
}

function applyToolbar(holder) {
  if (!holder.toolbar || !holder._fullLayout || !holder.axes) return;
  const on = (t) => holder.toolbar.querySelector(`[data-toggle='${t}']`)?.checked;
  const update = {};
  const fitted = on("fit") ? bulkRanges(holder) : {};
  for (const [key, original] of Object.entries(holder.axes)) {
    if (["category", "date", "multicategory"].includes(original.type)) continue;
    const letter = key[0];
    const log = on(`log-${letter}`);
    const now = holder._fullLayout[key];
    const type = log ? "log" : (original.type || "linear");
    if (now.type !== type) update[`${key}.type`] = type;
    if (fitted[letter] && !log) {
      update[`${key}.range`] = fitted[letter];
    } else if (now.autorange === false) {  // fitted before: let plotly fit all points again
      update[`${key}.autorange`] = true;
    } else if (update[`${key}.type`]) {
      update[`${key}.autorange`] = true;
    }
  }
  holder.dataset.outliers = String(fitted.outliers || 0);
  holder.toolbar.querySelector(".outliers")?.remove();
  if (fitted.outliers) {
    holder.toolbar.append(el("span", { class: "outliers" },
      `${fitted.outliers} point(s) beyond the axes`));
  }
  // Only what changes: a relayout draws the whole plot again.
  if (Object.keys(update).length) Plotly.relayout(holder, update);
}

// Axis ranges that leave out points far outside the rest (beyond 3 interquartile ranges),
// or nothing when there are none.
function bulkRanges(holder) {
  const out = { outliers: 0 };
  for (const letter of ["x", "y"]) {
    const values = (holder.data || []).flatMap((trace) => (trace[letter] || []))
      .filter((v) => typeof v === "number" && Number.isFinite(v)).sort((a, b) => a - b);
    if (values.length < 8) continue;
    const q = (f) => values[Math.floor(f * (values.length - 1))];
    const iqr = q(0.75) - q(0.25);
    const low = q(0.25) - 3 * iqr;
    const high = q(0.75) + 3 * iqr;
    const inside = values.filter((v) => v >= low && v <= high);
    const beyond = values.length - inside.length;
    if (!beyond || !inside.length) continue;
    const pad = (inside[inside.length - 1] - inside[0]) * 0.05 || 1;
    out[letter] = [inside[0] - pad, inside[inside.length - 1] + pad];
    out.outliers = Math.max(out.outliers, beyond);
  }
  return out;
}

async function drawPlot(id, kind, holder, notReady) {
  const title = holder.dataset.title;
  await plotly;
  if (notReady) {
    Plotly.purge(holder);
    holder.replaceChildren(el("div", { class: "note" }, `${title}: ${notReady}`));
    holder.dataset.drawn = "false";
    return;
  }
  if (holder.dataset.drawn !== "true") {  // the first time: say it is coming
    holder.replaceChildren(el("div", { class: "note loading" }, `${title}: loading…`));
  }
  const figure = await getJson(`/experiments/${id}/plots/${kind}`);
  const note = figure.layout?.meta?.note;
  figure.layout = { ...figure.layout, title: { text: note ? `${title}<br><sub>${escapeHtml(note)}</sub>` : title } };
  holder.querySelector(".note")?.remove();
  await Plotly.react(holder, figure.data, figure.layout, { responsive: true });
  rememberAxes(holder);
  applyToolbar(holder);
  holder.dataset.drawn = "true";
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// ---------------------------------------------------------------------------------------
// Controls, for roles that may: pause, resume, cancel, delete; the budget; a queued trial.

function renderActions(e, me, holder, refresh) {
  holder.replaceChildren();
  if (!me.can_control) return;
  const allowed = {
    pause: e.state === "running",
    resume: e.state === "paused",
    cancel: !ENDED.has(e.state),
  };
  for (const [verb, ok] of Object.entries(allowed)) {
    if (!ok) continue;
    holder.append(el("button", {
      id: `action-${verb}`,
      onclick: async () => {
        if (verb === "cancel" && !confirm(`Cancel experiment ${e.id}?`)) return;
        try {
          await api(`/experiments/${e.id}/${verb}`, { method: "POST" });
          await refresh();
        } catch (error) {
          showError(error);
        }
      },
    }, verb));
  }
  holder.append(el("button", {
    id: "action-delete",
    class: "danger",
    onclick: async () => {
      const total = Object.values(e.counts).reduce((a, b) => a + b, 0);
      const running = e.state === "running" ? " It is running: its workers stop its trials." : "";
      if (!confirm(`Delete experiment ${e.id} (${e.name}) with its ${total} trial(s), their ` +
        `metrics, weights and checkpoints? This cannot be undone.${running}`)) return;
      try {
        await api(`/experiments/${e.id}`, { method: "DELETE" });
        location.assign("/dashboard/");
      } catch (error) {
        showError(error);
      }
    },
  }, "delete…"));
}

function renderForms(e, me, holder, refresh) {
  holder.replaceChildren();
  if (!me.can_control || ENDED.has(e.state)) return;
  const nTrials = el("input", { id: "budget-n-trials", type: "number", min: 1, value: e.n_trials,
    size: 6 });
  const concurrent = el("input", { id: "budget-max-concurrent", type: "number", min: 1,
    value: e.max_concurrent, size: 4 });
  const budget = el("form", { id: "budget-form", class: "inline-form" },
    el("strong", {}, "Budget "), el("label", {}, "n_trials ", nTrials),
    el("label", {}, " max_concurrent ", concurrent), el("button", { type: "submit" }, "save"));
  budget.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/experiments/${e.id}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ budget: { n_trials: Number(nTrials.value),
          max_concurrent: Number(concurrent.value) } }),
      });
      await refresh();
    } catch (error) {
      showError(error);
    }
  });

  const inputs = Object.entries(e.spec.search_space).map(([name, p]) => {
    const input = p.type === "categorical"
      ? el("select", { "data-param": name },
        el("option", { value: "" }, "(sampler picks)"),
        p.choices.map((c, i) => el("option", { value: String(i) }, String(c))))
      : el("input", { "data-param": name, placeholder: `${p.low} to ${p.high}`, size: 9 });
    return el("label", {}, `${name} `, input);
  });
  const enqueue = el("form", { id: "enqueue-form", class: "inline-form" },
    el("strong", {}, "Queue a trial "), ...inputs, el("button", { type: "submit" }, "queue"),
    el("span", { id: "enqueue-done" }));
  enqueue.addEventListener("submit", async (event) => {
    event.preventDefault();
    const params = {};
    for (const input of enqueue.querySelectorAll("[data-param]")) {
      const p = e.spec.search_space[input.dataset.param];
      if (input.value === "") continue;
      params[input.dataset.param] = p.type === "categorical"
        ? p.choices[Number(input.value)] : Number(input.value);
    }
    try {
      await (await api(`/experiments/${e.id}/trials`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ params }),
      })).json();
      document.getElementById("enqueue-done").textContent = " queued: it runs next";
      await refresh();
    } catch (error) {
      showError(error);
    }
  });
  holder.append(budget, enqueue);
}

// ---------------------------------------------------------------------------------------
// Trial page

// What an experiment optimizes, e.g. "maximize val_accuracy" (each objective, comma-separated).
function objective(spec) {
  const objectives = spec.objectives || (spec.objective ? [spec.objective] : []);
  return objectives.map((o) => `${o.direction} ${o.metric}`).join(", ");
}

async function trialPage(id) {
  const t = await getJson(`/trials/${id}`);
  const metricNames = [...new Set(t.metrics.flatMap((m) => Object.keys(m.values)))];
  const shown = metricNames.filter((n) => !["epoch_seconds", "train_seconds", "n_params",
    "latency_ms"].includes(n));
  // One chart per metric, each on its own axis: a loss, an accuracy and a learning rate
  // share no scale.
  const holders = shown.map((n) => el("div", { class: "plot metric-curve", "data-metric": n,
    id: `curve-${n.replace(/[^A-Za-z0-9_-]/g, "_")}` }));
  const curves = el("div", { class: "plots", id: "trial-curves" },
    ...holders.map((h) => el("div", { class: "plot-card" }, plotToolbar(h, "compare"), h)));
  const download = el("button", {
    id: "download-weights",
    onclick: async () => {
      try {
        const blob = await (await api(`/trials/${id}/model`)).blob();
        const file = `trial-${(t.name ?? String(id)).replace("/", "-")}.pt`;
        const link = el("a", { href: URL.createObjectURL(blob), download: file });
        document.body.append(link);
        link.click();
        link.remove();
      } catch (error) {
        showError(error);
      }
    },
  }, "Download weights");
  show(
    el("h1", {}, `Trial ${t.name ?? "(waiting to start)"} of `,
      el("a", { href: `/dashboard/experiments/${t.experiment_id}` },
        `experiment ${t.experiment_id}`)),
    table(["state", "value", "best epoch", "epochs", "attempt", "retries", "worker",
      "failure", "message"],
    [[stateBadge(t.state), number(t.value), t.best_epoch ?? "–", t.last_epoch, t.attempt,
      t.retries, t.worker_id ?? "–", t.failure_reason || "", t.failure_message || ""]]),
    t.has_weights ? download : el("p", {}, "No weights stored."),
    el("h2", {}, "Params"),
    table(["param", "value"], Object.entries(t.params).map(([k, v]) => [k, JSON.stringify(v)])),
    el("h2", {}, "Config (every hyperparameter it trained with)"),
    el("div", { id: "trial-config" }, table(["name", "value"],
      Object.entries(t.config).map(([k, v]) => [k, JSON.stringify(v)]))),
    el("h2", {}, "Metrics per epoch"),
    curves,
    table(["epoch", ...metricNames],
      t.metrics.map((m) => [m.epoch, ...metricNames.map((n) => number(m.values[n]))])),
    ...(t.output ? [el("h2", {}, "Its program's output (the tail)"),
      el("pre", { id: "trial-output" }, t.output)] : []),
  );
  await plotly;
  await Promise.all(holders.map(async (holder) => {
    const n = holder.dataset.metric;
    await Plotly.react(holder, [{
      type: "scatter",
      mode: "lines+markers",
      name: n,
      x: t.metrics.map((m) => m.epoch),
      y: t.metrics.map((m) => m.values[n]),
    }], {
      title: { text: n },
      xaxis: { title: { text: "epoch" } },
      yaxis: { title: { text: n }, type: n === "lr" ? "log" : "linear" },
      showlegend: false,
    }, { responsive: true });
    rememberAxes(holder);
    applyToolbar(holder);
    holder.dataset.drawn = "true";
  }));
}

// ---------------------------------------------------------------------------------------
// Polling, the token form, and which page to render

async function poll(refresh, goOn) {
  clearTimeout(timer);
  const tick = async () => {
    try {
      await refresh();
      showError(null);
    } catch (error) {
      showError(error);
    }
    if (goOn() && !signedOut) timer = setTimeout(tick, POLL_MS);
  };
  await tick();
}

async function render() {
  const me = await getJson("/me");
  document.getElementById("who").textContent =
    `signed in: ${me.role}${me.project ? ` in ${me.project}` : ", every project"}`;
  document.getElementById("token-forget").hidden = false;
  const path = location.pathname.replace(/\/+$/, "");
  let match;
  if ((match = path.match(/^\/dashboard\/experiments\/(\d+)$/))) {
    await experimentPage(match[1], me);
  } else if ((match = path.match(/^\/dashboard\/trials\/(\d+)$/))) {
    await trialPage(match[1]);
  } else {
    await experimentsPage();
  }
}

// Asked for when there is no token, or the server refused the one given.
function signIn(refused) {
  clearTimeout(timer);
  signedOut = true;
  document.getElementById("who").textContent = "";
  document.getElementById("token-forget").hidden = true;
  const input = el("input", { id: "token-input", type: "password", autocomplete: "off",
    placeholder: "paste a token", size: 48 });
  const form = el("form", { id: "token-form" }, input,
    el("button", { type: "submit", id: "token-use" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("sweep-token", input.value.trim());
    start();
  });
  show(el("section", { id: "sign-in", class: "card" },
    el("h1", {}, "Sign in to Sweep"),
    el("p", {}, "Enter an API token to see experiments. Whoever runs the server makes one with ",
      el("code", {}, "sweep token create --role viewer --name YOU"),
      " (viewer: read; user: also submit and control experiments)."),
    refused ? el("p", { id: "token-refused", class: "problem" },
      "The server did not accept that token: it may be mistyped, revoked, or made for " +
      "another server. Paste it again or ask for a new one.") : "",
    form,
    el("p", { class: "hint" },
      "The token stays in this browser tab (session storage) and never goes into a URL.")));
  showError(null);
  input.focus();
}

function start() {
  signedOut = false;
  render().catch((error) => {
    if (error.status === 401) {
      signIn(Boolean(token()));
      return;
    }
    show(el("p", {}, "Could not load this page."));
    showError(error);
  });
}

document.getElementById("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem("sweep-token");
  start();
});
start();
