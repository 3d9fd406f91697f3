// The label browser's grid: tiles of thumbnails with class, confidence and the teacher's top-k,
// paged by the API's cursor.
import { api, el, fixed, showError } from "./api.js";
import { pager } from "./pager.js";

const THUMBNAIL = 128;
let objectUrls = [];

async function loadThumbnail(img, itemId, size) {
  try {
    const blob = await (await api(`/items/${itemId}/thumbnail`, { size })).blob();
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    img.src = url;
    await img.decode();
    img.dataset.loaded = "true";
  } catch (error) {
    img.dataset.loaded = "error";
    showError(error);
  }
}

function detail(tile, classes) {
  const rows = tile.top.map((p) =>
    el("tr", {}, el("td", {}, classes[p.index]), el("td", { class: "num" }, fixed(p.probability))),
  );
  return el(
    "div",
    { class: "detail" },
    el("table", { class: "topk" }, el("tbody", {}, rows)),
    el(
      "p",
      {},
      tile.entropy !== null ? `entropy ${fixed(tile.entropy)} nats` : "",
      tile.rest_mass !== null ? ` · rest ${fixed(tile.rest_mass)}` : "",
    ),
    el("p", { class: "muted" }, `item ${tile.item_id}`),
  );
}

function pin(tile, classes, extra) {
  const panel = document.getElementById("pinned");
  if (!panel) return;
  const img = el("img", { alt: `item ${tile.item_id}`, width: 256, height: 256 });
  loadThumbnail(img, tile.item_id, 256);
  const truth = tile.true_class !== null ? el("p", {}, `true label: ${classes[tile.true_class]}`) : null;
  panel.replaceChildren(
    el("h2", {}, `Item ${tile.item_id}`),
    img,
    el("p", {}, `${classes[tile.class_index]} · ${fixed(tile.confidence)}`),
    extra ? el("p", {}, extra) : null,
    truth,
    detail(tile, classes),
    el("p", { class: "muted uri" }, tile.uri),
  );
  panel.hidden = false;
}

// extra(tile) -> optional text under the caption (the source of an entry, the class before a flip).
export function tileElement(tile, classes, extra = () => null) {
  const wrong = tile.correct === false;
  const img = el("img", { alt: `item ${tile.item_id}`, width: THUMBNAIL, height: THUMBNAIL });
  loadThumbnail(img, tile.item_id, THUMBNAIL);
  const note = extra(tile);
  return el(
    "figure",
    {
      class: wrong ? "tile wrong" : "tile",
      tabindex: 0,
      dataset: {
        itemId: tile.item_id,
        classIndex: tile.class_index,
        confidence: tile.confidence ?? "",
        correct: tile.correct === null ? "" : String(tile.correct),
      },
      onclick: () => pin(tile, classes, note),
    },
    img,
    el(
      "figcaption",
      {},
      el("span", { class: "class" }, classes[tile.class_index]),
      " ",
      el("span", { class: "confidence" }, tile.confidence === null ? "labeled" : fixed(tile.confidence, 2)),
      note ? el("span", { class: "note" }, note) : null,
      wrong ? el("span", { class: "truth" }, `true: ${classes[tile.true_class]}`) : null,
    ),
    detail(tile, classes),
  );
}

// fetchPage(cursor, limit) -> {data, next_cursor, count?, classes}
export function pagedGrid(root, { fetchPage, extra, limit = () => 100 }) {
  const grid = el("div", { class: "grid" });
  const pages = pager(root, {
    fetchPage,
    limit,
    show(page) {
      objectUrls.forEach((url) => URL.revokeObjectURL(url));
      objectUrls = [];
      grid.replaceChildren(...page.data.map((tile) => tileElement(tile, page.classes, extra)));
    },
  });
  root.append(pages.bar, grid);
  return pages;
}

// Class, confidence range, order and page size, kept in the address bar.
export function filterControls(root, classes, extraControls = []) {
  const query = new URLSearchParams(location.search);
  const classSelect = el(
    "select",
    { id: "class-filter", name: "class_index" },
    el("option", { value: "" }, "all classes"),
    classes.map((name, i) => el("option", { value: i }, name)),
  );
  const minInput = el("input", { id: "min-confidence", name: "min_confidence", type: "number", min: 0, max: 1, step: 0.05, placeholder: "0" });
  const maxInput = el("input", { id: "max-confidence", name: "max_confidence", type: "number", min: 0, max: 1, step: 0.05, placeholder: "1" });
  const order = el(
    "select",
    { id: "order", name: "order" },
    el("option", { value: "confidence_desc" }, "confidence ↓"),
    el("option", { value: "confidence_asc" }, "confidence ↑"),
    el("option", { value: "item" }, "item"),
  );
  const size = el("select", { id: "page-size", name: "limit" }, [50, 100, 200].map((n) => el("option", { value: n }, n)));
  size.value = "100";
  const inputs = [classSelect, minInput, maxInput, order, size, ...extraControls.map((c) => c.input)];
  for (const input of inputs) {
    const value = query.get(input.name);
    if (value === null) continue;
    if (input.type === "checkbox") input.checked = value === "true";
    else input.value = value;
  }
  root.append(
    el(
      "form",
      { class: "controls", id: "filters", onsubmit: (e) => e.preventDefault() },
      el("label", {}, "class ", classSelect),
      el("label", {}, "confidence ", minInput, " to ", maxInput),
      el("label", {}, "sort ", order),
      el("label", {}, "per page ", size),
      extraControls.map((c) => el("label", {}, c.label, " ", c.input)),
    ),
  );
  const values = () => {
    const params = {};
    for (const input of inputs) {
      const value = input.type === "checkbox" ? (input.checked ? "true" : "") : input.value;
      if (value !== "") params[input.name] = value;
    }
    return params;
  };
  return {
    inputs,
    values,
    limit: () => Number(size.value),
    remember() {
      const url = new URL(location.href);
      url.search = new URLSearchParams(values()).toString();
      history.replaceState(null, "", url);
    },
  };
}
