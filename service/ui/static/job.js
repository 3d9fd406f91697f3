// A job's labels: the grid, filtered and sorted, beside the class balance and the confidence
// histogram of the selected class; above them its progress and, unfolded, its shards.
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
}

// A page of shards, read only while unfolded and, while the job runs, at most every
// SHARDS_POLL_MS: a long job has hundreds of thousands.
const SHARDS_POLL_MS = 10000;
const shardPanel = document.getElementById("shards");
const shardState = document.getElementById("shard-state");
const shardPages = pager(shardPanel, {
  fetchPage: (cursor, limit) => getJSON(`/jobs/${jobId}/shards`, { state: shardState.value, cursor, limit }),
  show: (page) => fillTable(shardPanel.querySelector("table"), page.data.map(shardRow)),
});
shardPanel.querySelector("table").before(shardPages.bar);
shardPages.bar.prepend(shardState.parentElement); // the filter beside its pages
let shardsReadAt = 0;

function shardRow(s) {
  return Object.assign(
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
  );
}

// The first page when unfolded or filtered; the page shown again when polled.
async function renderShards({ again = false, unlessWithin = 0 } = {}) {
  if (!shardPanel.open || Date.now() - shardsReadAt < unlessWithin) return;
  shardsReadAt = Date.now();
  await (again ? shardPages.refresh() : shardPages.reload());
}

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
    await renderShards({ again: true, unlessWithin: running ? SHARDS_POLL_MS : 0 });
    if (running) setTimeout(() => poll(teacher, dataset, refresh), POLL_MS);
    else refresh(); // the last labels arrived: show them all
  } catch (error) {
    if (!(error instanceof Unauthorized)) showError(error);
  }
}

// Listened for before the first read: a click while the page still loads must fill the table.
shardPanel.addEventListener("toggle", () => renderShards().catch(showError));
shardState.addEventListener("change", () => renderShards().catch(showError));
start(render);
