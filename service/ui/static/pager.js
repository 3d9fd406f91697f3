// Pages of a cursor-paged list endpoint behind "← previous", "1–100 of 3,000" and "next →".
import { el, showError } from "./api.js";

// fetchPage(cursor, limit) -> {data, next_cursor, count?}; show(page) draws its rows. The caller
// places `bar`; `root` is marked "loading" while a page is read and counts the pages shown
// (data-loads), which the UI tests wait on.
export function pager(root, { fetchPage, show, limit = () => 100 }) {
  const info = el("span", { class: "page-info" });
  const previous = el("button", { type: "button", class: "previous" }, "← previous");
  const next = el("button", { type: "button", class: "next" }, "next →");
  let cursors = [null];
  let index = 0;
  let request = 0;

  async function load() {
    const mine = ++request;
    root.classList.add("loading");
    const page = await fetchPage(cursors[index], limit());
    if (mine !== request) return; // a newer request replaced this one
    cursors[index + 1] = page.next_cursor;
    show(page);
    const first = index * limit() + 1;
    const range = page.data.length ? `${first}–${first + page.data.length - 1}` : "none";
    info.textContent = page.count !== undefined ? `${range} of ${page.count}` : range;
    info.dataset.count = page.count ?? "";
    previous.disabled = index === 0;
    next.disabled = page.next_cursor === null;
    root.classList.remove("loading");
    root.dataset.loads = String(Number(root.dataset.loads || 0) + 1);
  }
  const run = () => load().catch(showError);
  previous.addEventListener("click", () => { index -= 1; run(); });
  next.addEventListener("click", () => { index += 1; run(); });
  return {
    bar: el("div", { class: "pager" }, previous, info, next),
    // The first page again (the filters changed).
    reload() {
      cursors = [null];
      index = 0;
      return load();
    },
    // The page shown, read again (its rows changed).
    refresh: load,
  };
}
