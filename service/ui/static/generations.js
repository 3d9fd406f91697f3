// The lineage of teachers, test accuracy per generation, and the label flips between a
// teacher's job and its student's job over the same dataset.
import { el, field, fillTable, getJSON, listAll, number, percent, short, showError, start } from "./api.js";
import { barChart } from "./charts.js";
import { pagedGrid } from "./tiles.js";

const top1 = (teacher) => (typeof teacher.metrics.top1 === "number" ? teacher.metrics.top1 : null);

function renderLineage(teachers, byId) {
  const ordered = [...teachers].sort((a, b) => a.generation - b.generation || a.created_at.localeCompare(b.created_at));
  fillTable(
    document.getElementById("lineage"),
    ordered.map((t) =>
      Object.assign(
        [
          field("generation", t.generation),
          el("span", { title: t.id }, t.name),
          t.architecture,
          t.parent_id ? `${byId.get(t.parent_id)?.name ?? short(t.parent_id)} →` : "–",
          t.manifest_id ? el("a", { href: `/ui/manifests/${t.manifest_id}` }, el("code", {}, short(t.manifest_id))) : "–",
          field("top1", top1(t), percent(top1(t))),
          el("span", { class: `state ${t.status}` }, t.status),
        ],
        { attributes: { "data-id": t.id } },
      ),
    ),
  );
  const best = new Map();
  for (const t of ordered) {
    if (top1(t) !== null) best.set(t.generation, Math.max(best.get(t.generation) ?? 0, top1(t)));
  }
  const generations = [...best.keys()].sort((a, b) => a - b);
  const chart = document.getElementById("accuracy-chart");
  if (!generations.length) {
    chart.replaceChildren(el("p", { class: "muted" }, "No teacher has a test accuracy (metrics.top1) yet."));
    return;
  }
  barChart(chart, {
    values: generations.map((g) => best.get(g)),
    labels: generations.map((g) => `gen ${g}`),
    format: percent,
    title: "best test top-1 per generation",
  });
}

// The newest (teacher, student) pair of jobs over one dataset; else the two newest jobs over one.
function defaultPair(jobs, byId) {
  const newest = [...jobs].sort((a, b) => b.id - a.id);
  for (const b of newest) {
    const parent = byId.get(b.teacher_id)?.parent_id;
    const a = newest.find((j) => j.dataset_id === b.dataset_id && j.teacher_id === parent);
    if (a) return [a.id, b.id];
  }
  for (const b of newest) {
    const a = newest.find((j) => j.id < b.id && j.dataset_id === b.dataset_id);
    if (a) return [a.id, b.id];
  }
  return [newest[1]?.id, newest[0]?.id];
}

async function render() {
  const [teachers, jobs, datasets] = await Promise.all([listAll("/teachers"), listAll("/jobs"), listAll("/datasets")]);
  const byId = new Map(teachers.data.map((t) => [t.id, t]));
  renderLineage(teachers.data, byId);

  const datasetName = new Map(datasets.data.map((d) => [d.id, d.name]));
  const selectA = document.getElementById("job-a");
  const selectB = document.getElementById("job-b");
  for (const select of [selectA, selectB]) {
    select.replaceChildren(
      ...jobs.data.map((j) => el("option", { value: j.id }, `job ${j.id}: ${byId.get(j.teacher_id)?.name ?? short(j.teacher_id)} on ${datasetName.get(j.dataset_id) ?? j.dataset_id}`)),
    );
  }
  const query = new URLSearchParams(location.search);
  const [a, b] = defaultPair(jobs.data, byId);
  selectA.value = query.get("a") ?? a ?? "";
  selectB.value = query.get("b") ?? b ?? "";

  let flipFilter = {};
  const browser = document.getElementById("browser");
  const grid = pagedGrid(browser, {
    extra: (tile) => `was ${tile.fromName} ${tile.from_confidence.toFixed(2)}`,
    fetchPage: async (cursor, limit) => {
      const page = await getJSON(`/jobs/${selectA.value}/compare/${selectB.value}/flips`, { ...flipFilter, cursor, limit });
      for (const tile of page.data) tile.fromName = page.classes[tile.from_class];
      return page;
    },
  });

  async function compare() {
    if (!selectA.value || !selectB.value) {
      document.getElementById("compare-summary").textContent = "Two labeling jobs over one dataset are needed.";
      return;
    }
    const url = new URL(location.href);
    url.search = new URLSearchParams({ a: selectA.value, b: selectB.value }).toString();
    history.replaceState(null, "", url);
    flipFilter = {};
    document.getElementById("flip-filter").textContent = "";
    const result = await getJSON(`/jobs/${selectA.value}/compare/${selectB.value}`);
    document.getElementById("compare-summary").replaceChildren(
      field("flipped", result.flipped, number(result.flipped)),
      " of ",
      field("compared", result.compared, number(result.compared)),
      ` items changed class (${percent(result.flip_rate)}) from job ${result.job_id} to job ${result.other_job_id}`,
    );
    const names = result.classes;
    fillTable(
      document.getElementById("changes"),
      result.changes.map((c) =>
        Object.assign(
          [
            names[c.from_class],
            names[c.to_class],
            el(
              "a",
              {
                href: "#browser",
                "data-field": "change-count",
                onclick: () => {
                  flipFilter = { from_class: c.from_class, to_class: c.to_class };
                  document.getElementById("flip-filter").textContent = `${names[c.from_class]} → ${names[c.to_class]}`;
                  grid.reload().catch(showError);
                },
              },
              number(c.count),
            ),
          ],
          { attributes: { "data-from": c.from_class, "data-to": c.to_class } },
        ),
      ),
    );
    await grid.reload();
  }
  for (const select of [selectA, selectB]) select.addEventListener("change", () => compare().catch(showError));
  await compare();
}

start(render);
