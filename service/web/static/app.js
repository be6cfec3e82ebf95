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
  document.getElementById("error").textContent = error ? String(error.message || error) : "";
  if (error && error.status === 401) document.getElementById("token-input").focus();
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
// Experiment page

async function experimentPage(id, me) {
  const summary = el("div", { id: "summary" });
  const actions = el("div", { class: "actions", id: "actions" });
  const plots = el("div", { class: "plots" });
  const holders = {};
  for (const [kind, title] of PLOTS) {
    holders[kind] = el("div", { class: "plot", id: `plot-${kind}`, "data-title": title });
    plots.append(holders[kind]);
  }
  const trials = el("div", { id: "trials" });
  const spec = el("pre", { id: "spec" });
  show(el("h1", { id: "title" }, `Experiment ${id}`), summary, actions, plots,
    el("h2", {}, "Trials"), trials, el("h2", {}, "Spec"), spec);

  let experiment = null;
  async function refresh() {
    experiment = await getJson(`/experiments/${id}`);
    const e = experiment;
    const c = e.counts;
    document.getElementById("title").textContent = `${e.name} (experiment ${e.id})`;
    spec.textContent = JSON.stringify(e.spec, null, 2);
    summary.replaceChildren(table(
      ["state", "finished / n_trials", "running", "queued", "completed", "pruned", "failed",
        "best value", "best trial", "stop reason"],
      [[stateBadge(e.state), `${c.completed + c.pruned + c.failed + c.cancelled} / ${e.n_trials}`,
        c.running, c.queued, c.completed, c.pruned, c.failed, number(e.best_value),
        e.best_trial_id ? el("a", { href: `/dashboard/trials/${e.best_trial_id}` },
          `trial ${e.best_trial ?? e.best_trial_id}`) : "–", e.stop_reason || ""]]),
    e.waiting_for ? el("p", { id: "waiting-for" }, `Waiting: ${e.waiting_for}`) : "");
    renderActions(e, me, actions, refresh);
    const page = await getJson(`/experiments/${id}/trials?limit=500`);
    trials.replaceChildren(table(
      ["trial", "state", "reason", "value", "best epoch", "epochs", "attempt", "worker", "params"],
      page.items.map((t) => [
        el("a", { href: `/dashboard/trials/${t.id}` }, t.name ?? "(waiting)"),
        stateBadge(t.state), reasonCell(t), number(t.value), t.best_epoch ?? "–", t.last_epoch,
        t.attempt, t.worker_id ?? "–", JSON.stringify(t.params)])));
    const notReady = await getJson(`/experiments/${id}/plots`);
    await Promise.all(PLOTS.map(([kind]) => drawPlot(id, kind, holders[kind], notReady[kind])));
  }
  await poll(refresh, () => !experiment || !ENDED.has(experiment.state));
}

// Why a trial failed (or waits again), its message on hover: no need to open each trial.
function reasonCell(t) {
  if (!t.failure_reason) return "";
  return el("span", { class: "reason", title: t.failure_message || "" }, t.failure_reason);
}

async function drawPlot(id, kind, holder, notReady) {
  const title = holder.dataset.title;
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
  figure.layout = { ...figure.layout, title: { text: title } };
  holder.querySelector(".note")?.remove();
  await Plotly.react(holder, figure.data, figure.layout, { responsive: true });
  holder.dataset.drawn = "true";
}

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
  const curves = el("div", { class: "plots", id: "trial-curves" },
    ...shown.map((n) => el("div", { class: "plot metric-curve", "data-metric": n })));
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
    el("h2", {}, "Metrics per epoch"),
    curves,
    table(["epoch", ...metricNames],
      t.metrics.map((m) => [m.epoch, ...metricNames.map((n) => number(m.values[n]))])),
    ...(t.output ? [el("h2", {}, "Its program's output (the tail)"),
      el("pre", { id: "trial-output" }, t.output)] : []),
  );
  await Promise.all([...curves.children].map(async (holder) => {
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
    if (goOn()) timer = setTimeout(tick, POLL_MS);
  };
  await tick();
}

async function render() {
  const me = await getJson("/me");
  document.getElementById("who").textContent =
    `${me.role}${me.project ? ` in ${me.project}` : ""}`;
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

function start() {
  render().catch((error) => {
    show(el("p", {}, error.status === 401
      ? "Enter an API token (sweep token create) to see experiments."
      : "Could not load this page."));
    showError(error);
  });
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  sessionStorage.setItem("sweep-token", input.value.trim());
  input.value = "";
  start();
});
document.getElementById("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem("sweep-token");
  start();
});
start();
