// A job's labels: the grid, filtered and sorted, beside the class balance and the confidence
// histogram of the selected class; above them its progress and, unfolded, its shards and the
// images it could not read.
import { api, definitions, duration, el, field, fillTable, fixed, getJSON, inferenceField, number, showError, start, Unauthorized, waitingField } from "./api.js";
import { barChart } from "./charts.js";
import { pager } from "./pager.js";
import { filterControls, pagedGrid } from "./tiles.js";

const jobId = Number(document.body.dataset.jobId);
const POLL_MS = 2000;
let chartUrl = null;

// The job, and the workers when it waits for one (to say whether any is online).
async function readJob() {
  const job = await getJSON(`/jobs/${jobId}`);
  return [job, job.waiting_for_worker ? await getJSON("/workers") : null];
}

function renderProgress(job, workers, teacher, dataset) {
  document.getElementById("job-subtitle").textContent = `${teacher.name} on ${dataset.name}`;
  document.getElementById("job-progress").replaceChildren(
    el("span", { class: `state ${job.state}`, "data-field": "state" }, job.state),
    waitingField(job, workers),
    el("progress", { max: job.items_total || 1, value: job.items_done + job.items_failed }),
    field("items_done", job.items_done, number(job.items_done)),
    " of ",
    field("items_total", job.items_total, number(job.items_total)),
    " labeled · ",
    field("items_failed", job.items_failed, number(job.items_failed)),
    " failed · ",
    field("throughput", job.throughput_items_per_s, job.throughput_items_per_s === null ? "–" : `${job.throughput_items_per_s.toFixed(1)} items/s`),
    " · ETA ",
    field("eta", job.eta_s, duration(job.eta_s)),
    " · teacher ran in ",
    inferenceField(job),
  );
  itemErrorPanel.hidden = job.items_failed === 0;
  itemErrorPanel.querySelector('[data-field="errors-count"]').textContent = number(job.items_failed);
}

// A table that folds out, a page at a time: read only while open, from its first page when it
// opens, its page read again when polled (at most every FOLD_OUT_POLL_MS while the job runs: a
// long job has hundreds of thousands of shards). Listened for before the page's first read: a
// click while the page still loads fills it too.
const FOLD_OUT_POLL_MS = 10000;

function foldOut(panel, { fetchPage, row }) {
  const table = panel.querySelector("table");
  const pages = pager(panel, { fetchPage, show: (page) => fillTable(table, page.data.map(row)) });
  table.before(pages.bar);
  let readAt = 0;
  async function read({ again = false, unlessWithin = 0 } = {}) {
    if (!panel.open || Date.now() - readAt < unlessWithin) return;
    readAt = Date.now();
    await (again ? pages.refresh() : pages.reload());
  }
  panel.addEventListener("toggle", () => read().catch(showError));
  return { bar: pages.bar, read };
}

const shardState = document.getElementById("shard-state");
const shards = foldOut(document.getElementById("shards"), {
  fetchPage: (cursor, limit) => getJSON(`/jobs/${jobId}/shards`, { state: shardState.value, cursor, limit }),
  row: (s) =>
    Object.assign(
      [
        String(s.index),
        `${number(s.start_ordinal)}–${number(s.end_ordinal - 1)}`,
        el("span", { class: `state ${s.state}`, "data-field": "state" }, s.state),
        field("items_done", s.items_done, number(s.items_done)),
        field("items_failed", s.items_failed, number(s.items_failed)),
        field("attempts", s.attempts),
        field("inference", s.inference.join(", "), s.inference.join(", ") || "–"),
        field("workers", s.workers.join(", "), s.workers.join(", ") || "–"),
        field("error", s.error, s.error ?? ""),
      ],
      { attributes: { "data-index": s.index } },
    ),
});
shards.bar.prepend(shardState.parentElement); // the filter beside its pages
shardState.addEventListener("change", () => shards.read().catch(showError));

const itemErrorPanel = document.getElementById("item-errors");
const itemErrors = foldOut(itemErrorPanel, {
  fetchPage: (cursor, limit) => getJSON(`/jobs/${jobId}/errors`, { cursor, limit }),
  row: (e) =>
    Object.assign([field("item_id", e.item_id), field("uri", e.uri), field("message", e.message)], {
      attributes: { "data-item-id": e.item_id },
    }),
});

async function renderSide(controls) {
  const threshold = document.getElementById("threshold").value || "0.3";
  const [stats, chart] = await Promise.all([
    getJSON(`/jobs/${jobId}/stats`, { threshold }),
    api(`/jobs/${jobId}/stats/chart`, { threshold, format: "svg" }).then((r) => r.blob()),
  ]);
  if (chartUrl) URL.revokeObjectURL(chartUrl);
  chartUrl = URL.createObjectURL(chart);
  document.getElementById("balance-chart").src = chartUrl;

  const selected = controls.values().class_index;
  const classes = Object.entries(stats.classes);
  const chosen = selected === undefined ? classes.map(([, c]) => c) : [classes[Number(selected)][1]];
  const histogram = stats.bin_edges.slice(0, -1).map((_, i) => chosen.reduce((sum, c) => sum + c.histogram[i], 0));
  const sum = (key) => chosen.reduce((total, c) => total + (c[key] ?? 0), 0);
  const name = selected === undefined ? "all classes" : classes[Number(selected)][0];
  document.getElementById("histogram-class").textContent = name;
  barChart(document.getElementById("histogram"), {
    values: histogram,
    labels: stats.bin_edges.slice(0, -1).map((edge) => edge.toFixed(1)),
    format: number,
    marker: Number(threshold) * 10,
    title: `confidence histogram of ${name}`,
  });
  const labeled = stats.labeled_dataset_id === null ? "–" : number(sum("labeled"));
  definitions(document.getElementById("class-stats"), [
    ["pseudo-labeled", field("pseudo_labeled", sum("pseudo_labeled"), number(sum("pseudo_labeled")))],
    [`at or above ${threshold}`, field("above_threshold", sum("above_threshold"), number(sum("above_threshold")))],
    ["labeled", field("labeled", labeled, labeled)],
  ]);
}

async function render() {
  const [job, workers] = await readJob();
  const [teacher, dataset] = await Promise.all([getJSON(`/teachers/${job.teacher_id}`), getJSON(`/datasets/${job.dataset_id}`)]);
  renderProgress(job, workers, teacher, dataset);

  const truth = el(
    "select",
    { id: "correct-filter", name: "correct", disabled: dataset.classes === null },
    el("option", { value: "" }, "all"),
    el("option", { value: "false" }, "wrong only"),
    el("option", { value: "true" }, "right only"),
  );
  const browser = document.getElementById("browser");
  const controls = filterControls(browser, teacher.class_names, [{ label: "true label", input: truth }]);
  const grid = pagedGrid(browser, {
    limit: controls.limit,
    fetchPage: (cursor, limit) => getJSON(`/jobs/${jobId}/labels/browse`, { ...controls.values(), cursor, limit }),
  });
  const refresh = () => {
    controls.remember();
    grid.reload().catch(showError);
    renderSide(controls).catch(showError);
  };
  for (const input of controls.inputs) input.addEventListener("change", refresh);
  document.getElementById("threshold").addEventListener("change", () => renderSide(controls).catch(showError));
  await Promise.all([grid.reload(), renderSide(controls)]);
  if (["queued", "running"].includes(job.state)) setTimeout(() => poll(teacher, dataset, refresh), POLL_MS);
}

async function poll(teacher, dataset, refresh) {
  try {
    const [job, workers] = await readJob();
    renderProgress(job, workers, teacher, dataset);
    const running = ["queued", "running"].includes(job.state);
    const again = { again: true, unlessWithin: running ? FOLD_OUT_POLL_MS : 0 };
    await Promise.all([shards.read(again), itemErrors.read(again)]);
    if (running) setTimeout(() => poll(teacher, dataset, refresh), POLL_MS);
    else refresh(); // the last labels arrived: show them all
  } catch (error) {
    if (!(error instanceof Unauthorized)) showError(error);
  }
}

start(render);
