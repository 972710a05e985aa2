// Metrics: small multiples, one SVG line chart per series of
// GET /api/metrics/series ({"interval_s", "series": {name: [[t, v], ...]}}),
// refreshed every 5 s. Each chart is an <svg role="img"> with its own <title>
// and <desc> (the latest, lowest and highest values) for screen readers.

import { every, h, showError } from '../ui.js';

// The series of GET /api/metrics/series (dashboard/metrics.py SERIES).
const TITLES = {
  messages_in_per_s: 'Messages in (per s)',
  messages_out_per_s: 'Messages out (per s)',
  turn_p50_ms: 'Turn time p50 (ms)',
  turn_p99_ms: 'Turn time p99 (ms)',
  errors_per_s: 'Errors (per s)',
  active_sessions: 'Active sessions',
  mailbox_depth: 'Mailbox depth',
};
const SVG = 'http://www.w3.org/2000/svg';
const W = 320;
const H = 120;
const PAD = { top: 8, right: 8, bottom: 20, left: 44 };

export function mount(root, ctx) {
  let reported = false;
  const grid = h('div', { id: 'metrics-grid', class: 'charts' });
  const note = h('p', { id: 'metrics-note', class: 'muted' });
  root.append(h('h1', { text: 'Metrics' }), note, grid);

  async function refresh() {
    try {
      const data = await ctx.api('GET', '/api/metrics/series');
      reported = false;
      const series = Object.entries(data.series || {});
      note.textContent = `One point every ${data.interval_s ?? '?'} s; refreshed every 5 s.`;
      grid.replaceChildren(...series.map(([name, points]) => chartFigure(name, points || [])));
      if (!series.length) grid.append(h('p', { class: 'empty', text: 'No metrics yet.' }));
    } catch (err) {
      if (!reported) showError(err);
      reported = true;
    }
  }

  return every(5000, refresh);
}

function chartFigure(name, points) {
  const title = TITLES[name] || name.replace(/_/g, ' ');
  const values = points.map((p) => Number(p[1])).filter(Number.isFinite);
  const last = values.length ? values[values.length - 1] : null;
  const summary = values.length
    ? `latest ${fmt(last)}, lowest ${fmt(Math.min(...values))}, highest ${fmt(Math.max(...values))} over ${values.length} points`
    : 'no data yet';
  return h('figure', { class: 'chart', 'data-series': name },
    h('figcaption', {}, h('span', { class: 'chart-title', text: title }),
      h('span', { class: 'chart-value', text: last === null ? '—' : fmt(last) })),
    lineChart(points, { id: `chart-${name}`, title, desc: summary }));
}

/** An SVG line chart of [[t, v], ...] with a zero-based y axis and min/max labels. */
export function lineChart(points, { id, title, desc }) {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'line-chart',
    'aria-labelledby': `${id}-title ${id}-desc` });
  svg.append(el('title', { id: `${id}-title` }, title), el('desc', { id: `${id}-desc` }, desc));
  const data = points.filter((p) => Number.isFinite(Number(p[0])) && Number.isFinite(Number(p[1])));
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const ts = data.map((p) => Number(p[0]));
  const vs = data.map((p) => Number(p[1]));
  const t0 = Math.min(...ts);
  const t1 = Math.max(...ts);
  const vMax = Math.max(0, ...vs) || 1;
  const vMin = Math.min(0, ...vs);
  const x = (t) => PAD.left + (t1 > t0 ? ((t - t0) / (t1 - t0)) * innerW : innerW);
  const y = (v) => PAD.top + innerH - ((v - vMin) / (vMax - vMin)) * innerH;
  svg.append(
    el('line', { class: 'axis', x1: PAD.left, y1: PAD.top + innerH, x2: W - PAD.right, y2: PAD.top + innerH }),
    el('line', { class: 'axis', x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: PAD.top + innerH }),
    el('text', { class: 'tick', x: PAD.left - 4, y: PAD.top + 8, 'text-anchor': 'end' }, fmt(vMax)),
    el('text', { class: 'tick', x: PAD.left - 4, y: PAD.top + innerH, 'text-anchor': 'end' }, fmt(vMin)),
  );
  if (data.length) {
    const span = (t1 - t0) / (t0 > 1e12 ? 1000 : 1); // seconds, whether t is in s or ms
    svg.append(el('text', { class: 'tick', x: W - PAD.right, y: H - 4, 'text-anchor': 'end' },
      span >= 120 ? `last ${Math.round(span / 60)} min` : span > 0 ? `last ${Math.round(span)} s` : 'now'));
    const d = data.map((p, i) => `${i ? 'L' : 'M'}${x(Number(p[0])).toFixed(1)},${y(Number(p[1])).toFixed(1)}`);
    svg.append(el('path', { class: 'line', d: d.join(' ') }));
    if (data.length === 1) svg.append(el('circle', { class: 'point', cx: x(ts[0]), cy: y(vs[0]), r: 3 }));
  }
  return svg;
}

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(v) {
  if (!Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 1000) return `${(v / 1000).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
