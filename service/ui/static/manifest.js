// A manifest: what built it, what it holds per class, and its entries in the browser.
import { definitions, el, field, getJSON, number, short, showError, start } from "./api.js";
import { filterControls, pagedGrid } from "./tiles.js";

const manifestId = encodeURIComponent(document.body.dataset.manifestId);

function value(v) {
  if (v === null || v === undefined) return "–";
  if (Array.isArray(v)) return v.join(", ") || "–";
  return String(v);
}

async function render() {
  const manifest = await getJSON(`/manifests/${manifestId}`);
  const { provenance } = manifest;
  definitions(
    document.getElementById("params"),
    Object.entries(manifest.params).map(([key, v]) => [key, field(`param-${key}`, v, value(v))]),
  );
  const datasets = await Promise.all(
    [...provenance.labeled_dataset_ids, ...provenance.unlabeled_dataset_ids].map((id) => getJSON(`/datasets/${id}`)),
  );
  const name = (id) => datasets.find((d) => d.id === id)?.name ?? `dataset ${id}`;
  definitions(document.getElementById("provenance"), [
    ["teachers", provenance.teacher_ids.map((id) => el("code", { title: id }, short(id), " "))],
    ["jobs", provenance.job_ids.map((id) => [el("a", { href: `/ui/jobs/${id}` }, `job ${id}`), " "])],
    ["labeled datasets", provenance.labeled_dataset_ids.map(name).join(", ") || "–"],
    ["unlabeled datasets", provenance.unlabeled_dataset_ids.map(name).join(", ") || "–"],
    ["created", new Date(manifest.created_at).toLocaleString()],
  ]);

  const table = document.getElementById("class-counts");
  const counts = Object.entries(manifest.class_counts);
  table.querySelector("tbody").replaceChildren(
    ...counts.map(([className, c]) =>
      el(
        "tr",
        { "data-class": className },
        el("td", {}, className),
        el("td", {}, field("labeled", c.labeled, number(c.labeled))),
        el("td", {}, field("pseudo_unique", c.pseudo_unique, number(c.pseudo_unique))),
        el("td", {}, field("pseudo_with_copies", c.pseudo_with_copies, number(c.pseudo_with_copies))),
        el("td", {}, field("target", c.target, number(c.target))),
        el("td", {}, field("threshold", c.threshold, value(c.threshold))),
      ),
    ),
  );
  const t = manifest.totals;
  table.querySelector("tfoot").replaceChildren(
    el(
      "tr",
      {},
      el("th", {}, "total"),
      el("th", {}, field("total-labeled", t.labeled, number(t.labeled))),
      el("th", {}, field("total-pseudo_unique", t.pseudo_unique, number(t.pseudo_unique))),
      el("th", {}, field("total-pseudo_with_copies", t.pseudo_with_copies, number(t.pseudo_with_copies))),
      el("th", { colspan: 2 }, field("total-entries", t.entries, `${number(t.entries)} entries`), ", ", field("total-samples", t.samples, `${number(t.samples)} samples`)),
    ),
  );

  const source = el(
    "select",
    { id: "source-filter", name: "source" },
    el("option", { value: "" }, "all"),
    el("option", { value: "pseudo" }, "pseudo"),
    el("option", { value: "labeled" }, "labeled"),
  );
  const browser = document.getElementById("browser");
  const controls = filterControls(browser, manifest.classes, [{ label: "source", input: source }]);
  const grid = pagedGrid(browser, {
    limit: controls.limit,
    extra: (tile) => (tile.source === "labeled" ? "labeled" : tile.copies > 1 ? `× ${tile.copies}` : null),
    fetchPage: (cursor, limit) => getJSON(`/manifests/${manifestId}/entries/browse`, { ...controls.values(), cursor, limit }),
  });
  for (const input of controls.inputs) {
    input.addEventListener("change", () => {
      controls.remember();
      grid.reload().catch(showError);
    });
  }
  await grid.reload();
}

start(render);
