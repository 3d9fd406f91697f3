// Bar charts as inline SVG: a few bins or generations need no chart library.
import { el } from "./api.js";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// values: numbers (null draws no bar); labels: one per bar; marker: an x position in bar units.
export function barChart(container, { values, labels, format = String, marker = null, title = "" }) {
  const width = 360, height = 190, left = 8, right = 8, top = 18, bottom = 34;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = Math.max(1e-9, ...values.filter((v) => v !== null));
  const step = plotW / values.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  values.forEach((value, i) => {
    const x = left + i * step;
    if (value !== null) {
      const h = (value / max) * plotH;
      const bar = svg("rect", { x: x + step * 0.1, y: top + plotH - h, width: step * 0.8, height: h, class: "bar" });
      bar.append(svg("title", {}, `${labels[i]}: ${format(value)}`));
      chart.append(bar, svg("text", { x: x + step / 2, y: top + plotH - h - 4, class: "value" }, format(value)));
    }
    chart.append(svg("text", { x: x + step / 2, y: height - bottom + 14, class: "tick" }, labels[i]));
  });
  if (marker !== null) {
    const x = left + marker * step;
    chart.append(svg("line", { x1: x, x2: x, y1: top - 6, y2: top + plotH, class: "marker" }));
  }
  chart.append(svg("line", { x1: left, x2: width - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
  container.replaceChildren(el("figure", { class: "chart-figure" }, chart));
}
