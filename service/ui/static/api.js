// The public REST API, called with the token this tab holds, and the token prompt.
const KEY = "nst-token";

export class Unauthorized extends Error {}

export function token() {
  return sessionStorage.getItem(KEY);
}

function showPrompt(message) {
  document.getElementById("content").hidden = true;
  document.getElementById("token-prompt").hidden = false;
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("token-input").focus();
}

export async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(url, { headers });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showPrompt("That token was refused.");
    throw new Unauthorized(path);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${path}: ${response.status} ${detail || response.statusText}`);
  }
  return response;
}

export async function getJSON(path, params) {
  return (await api(path, params)).json();
}

export function showError(error) {
  if (error instanceof Unauthorized) return;
  console.error(error);
  const banner = document.getElementById("error");
  banner.textContent = String(error.message || error);
  banner.hidden = false;
}

// Runs the page once a token is at hand (or none is needed); nothing is fetched before.
export function start(render) {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("token-input").value);
    location.reload();
  });
  if (document.body.dataset.authRequired === "true" && !token()) {
    showPrompt();
    return;
  }
  document.getElementById("content").hidden = false;
  render().catch(showError);
}

// --- small DOM and formatting helpers ----------------------------------------------------------

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return node;
}

export function field(name, value, text) {
  return el("span", { "data-field": name }, text ?? String(value ?? "–"));
}

export const number = (n) => (n === null || n === undefined ? "–" : n.toLocaleString("en-US"));
export const fixed = (x, digits = 3) => (x === null || x === undefined ? "–" : x.toFixed(digits));
export const percent = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
export const short = (id) => (id ? id.slice(0, 12) : "–");

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// How long a job in progress has waited for a worker, once none has touched it for a minute (10 s
// while none is online), and how many workers are online (`workers`: GET /workers's answer, when
// the page read it).
export function waitingField(job, workers) {
  if (!job.waiting_for_worker) return "";  // not null: replaceChildren would show it as the text "null"
  const none = workers && workers.online === 0;
  const online = !workers ? "" : none ? " (no worker online)" : ` (${workers.online} online)`;
  const why = none
    ? "No worker has reported for three of its heartbeats: start one (`nst worker`) against this database and broker."
    : "No worker has claimed, renewed or finished one of its shards: are the workers busy with other jobs, or on another broker?";
  return el("span", { class: "waiting", "data-field": "waiting", title: why }, `waiting for a worker ${duration(job.worker_idle_s)}${online}`);
}

// How a job's teacher runs: the modes its shards ran in, or the mode asked for before any ran.
export function inferenceField(job) {
  return field("inference", job.inference, job.inference_used.join(", ") || job.inference);
}

export function fillTable(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => el("tr", cells.attributes || {}, ...cells.map((c) => el("td", {}, c)))));
}

export function definitions(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

// Every page of a list endpoint (they cap a page at 1,000).
export async function listAll(path) {
  const data = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await getJSON(path, { offset, limit: 1000 });
    data.push(...page.data);
    if (data.length >= page.count || page.data.length === 0) return { data, count: page.count };
  }
}
