// Datasets, teachers, jobs and workers (live) and manifests, as the API lists them.
import { duration, el, field, fillTable, fixed, getJSON, inferenceField, listAll, number, showError, short, start, Unauthorized, waitingField } from "./api.js";

// Quicker while a job runs; a job started elsewhere still shows up within IDLE_POLL_MS.
const POLL_MS = 2000;
const IDLE_POLL_MS = 5000;
const UNFINISHED = new Set(["queued", "running"]);

function progressBar(job) {
  const done = job.items_done + job.items_failed;
  return el(
    "div",
    { class: "progress" },
    el("progress", { max: job.items_total || 1, value: done }),
    " ",
    field("items_done", job.items_done, number(job.items_done)),
    " / ",
    field("items_total", job.items_total, number(job.items_total)),
  );
}

function metrics(values) {
  const entries = Object.entries(values).filter(([, v]) => typeof v === "number");
  return entries.map(([key, value]) => `${key} ${Number.isInteger(value) ? value : fixed(value)}`).join(" · ") || "–";
}

function renderWorkers(workers) {
  document.getElementById("workers-count").replaceChildren(field("workers-online", workers.online, `${workers.online} of ${workers.count} online`));
  fillTable(
    document.getElementById("workers"),
    workers.data.map((w) =>
      Object.assign(
        [
          w.name,
          String(w.pid),
          el("span", { class: `state worker-${w.state}`, "data-field": "state" }, w.state),
          field("device", w.device),
          field("concurrency", w.concurrency),
          field("last_seen", w.silent_s, `${duration(w.silent_s)} ago`),
          software(w.software),
        ],
        { attributes: { "data-name": w.name, "data-pid": w.pid } },
      ),
    ),
  );
  // Workers on different versions may label the same images differently in the last digits.
  const differs = Object.entries(workers.software_differs).map(
    ([name, versions]) =>
      `${name} ${Object.entries(versions).map(([version, names]) => `${version} on ${names.join(", ")}`).join("; ")}`,
  );
  const notice = document.getElementById("software-differs");
  notice.hidden = differs.length === 0;
  notice.textContent = differs.length ? `Different software online (the API and the workers): ${differs.join(" | ")}` : "";
}

// nst, torch and OpenVINO in the cell (what decides the labels), every package in its title.
function software(found) {
  if (!found) return field("software", null);
  const all = Object.entries(found).map(([name, version]) => `${name} ${version}`);
  const shown = ["nst", "torch", "openvino"].filter((name) => name in found).map((name) => `${name} ${found[name]}`);
  return Object.assign(field("software", all.join(", "), shown.join(" · ")), { title: all.join("\n") });
}

function renderJobs(jobs, workers, teachers, datasets) {
  document.getElementById("jobs-count").replaceChildren(field("jobs-count", jobs.count));
  fillTable(
    document.getElementById("jobs"),
    jobs.data.map((job) =>
      Object.assign(
        [
          el("a", { href: `/ui/jobs/${job.id}` }, `job ${job.id}`),
          teachers.get(job.teacher_id)?.name ?? short(job.teacher_id),
          datasets.get(job.dataset_id)?.name ?? `dataset ${job.dataset_id}`,
          [el("span", { class: `state ${job.state}`, "data-field": "state" }, job.state), waitingField(job, workers)],
          progressBar(job),
          field("items_failed", job.items_failed, number(job.items_failed)),
          field("throughput", job.throughput_items_per_s, job.throughput_items_per_s === null ? "–" : `${job.throughput_items_per_s.toFixed(1)} items/s`),
          field("eta", job.eta_s, duration(job.eta_s)),
          inferenceField(job),
          el("a", { href: `/ui/jobs/${job.id}` }, "labels →"),
        ],
        { attributes: { "data-id": job.id } },
      ),
    ),
  );
}

async function pollJobs(teachers, datasets) {
  try {
    const [jobs, workers] = await Promise.all([listAll("/jobs"), getJSON("/workers")]);
    renderJobs(jobs, workers, teachers, datasets);
    renderWorkers(workers);
    const running = jobs.data.some((job) => UNFINISHED.has(job.state));
    setTimeout(() => pollJobs(teachers, datasets), running ? POLL_MS : IDLE_POLL_MS);
  } catch (error) {
    if (!(error instanceof Unauthorized)) showError(error);
  }
}

async function render() {
  const [datasets, teachers, manifests] = await Promise.all([listAll("/datasets"), listAll("/teachers"), listAll("/manifests")]);
  const teacherById = new Map(teachers.data.map((t) => [t.id, t]));
  const datasetById = new Map(datasets.data.map((d) => [d.id, d]));

  document.getElementById("datasets-count").replaceChildren(field("datasets-count", datasets.count));
  fillTable(
    document.getElementById("datasets"),
    datasets.data.map((d) =>
      Object.assign(
        [
          String(d.id),
          d.name,
          field("kind", d.kind),
          field("split", d.split),
          field("item_count", d.item_count, number(d.item_count)),
          d.class_counts
            ? el(
                "details",
                {},
                el("summary", {}, field("classes", d.classes.length)),
                el("ul", { class: "counts" }, Object.entries(d.class_counts).map(([name, n]) => el("li", {}, `${name}: ${number(n)}`))),
              )
            : field("classes", null, "–"),
        ],
        { attributes: { "data-id": d.id } },
      ),
    ),
  );

  document.getElementById("teachers-count").replaceChildren(field("teachers-count", teachers.count));
  fillTable(
    document.getElementById("teachers"),
    teachers.data.map((t) =>
      Object.assign(
        [
          el("code", { title: t.id }, short(t.id)),
          t.name,
          el("span", { class: `state ${t.status}`, title: t.status_reason ?? "", "data-field": "status" }, t.status),
          field("architecture", t.architecture),
          field("generation", t.generation),
          t.parent_id ? el("code", { title: t.parent_id }, teacherById.get(t.parent_id)?.name ?? short(t.parent_id)) : "–",
          field("metrics", null, metrics(t.metrics)),
        ],
        { attributes: { "data-id": t.id } },
      ),
    ),
  );

  document.getElementById("manifests-count").replaceChildren(field("manifests-count", manifests.count));
  fillTable(
    document.getElementById("manifests"),
    manifests.data.map((m) =>
      Object.assign(
        [
          el("a", { href: `/ui/manifests/${m.id}` }, el("code", {}, short(m.id))),
          m.provenance.job_ids.map((id, i) => [i ? ", " : "", el("a", { href: `/ui/jobs/${id}` }, `job ${id}`)]),
          m.provenance.labeled_dataset_ids.map((id) => datasetById.get(id)?.name ?? `dataset ${id}`).join(", ") || "–",
          field("threshold", m.params.threshold),
          field("entries", m.totals.entries, number(m.totals.entries)),
          field("samples", m.totals.samples, number(m.totals.samples)),
          new Date(m.created_at).toLocaleString(),
        ],
        { attributes: { "data-id": m.id } },
      ),
    ),
  );

  await pollJobs(teacherById, datasetById);
}

start(render);
