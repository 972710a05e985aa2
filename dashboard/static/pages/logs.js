// Logs: filters (level, actor, session), an initial fill from GET /api/logs, then
// a live tail from the EventSource /api/logs/stream (same origin, so the session
// cookie authenticates it). Newest at the bottom, at most MAX lines kept. Pause
// holds new lines aside (still capped) and shows them on resume.

import { fmtTime, h, showError } from '../ui.js';

const MAX = 1000;
const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];

export function mount(root, ctx) {
  let source = null;
  let paused = false;
  let held = [];
  let generation = 0; // bumps on every (re)start so late answers are dropped

  const filters = h('form', { id: 'logs-filter', class: 'inline filters' },
    h('label', { for: 'logs-level', text: 'Level' }),
    h('select', { id: 'logs-level', name: 'level' },
      LEVELS.map((l) => h('option', { value: l, text: l, selected: l === 'INFO' }))),
    h('label', { for: 'logs-actor', text: 'Actor' }),
    h('input', { id: 'logs-actor', name: 'actor', placeholder: 'any', autocomplete: 'off' }),
    h('label', { for: 'logs-session', text: 'Session' }),
    h('input', { id: 'logs-session', name: 'session', placeholder: 'any', autocomplete: 'off' }),
    h('button', { id: 'logs-apply', type: 'submit', class: 'primary', text: 'Apply' }));
  const pause = h('button', { id: 'logs-pause', type: 'button', 'aria-pressed': 'false',
    text: 'Pause' });
  const clear = h('button', { id: 'logs-clear', type: 'button', text: 'Clear' });
  const status = h('span', { id: 'logs-status', class: 'muted', 'aria-live': 'polite' });
  const list = h('ol', { id: 'logs-list', class: 'logs', 'aria-label': 'Log lines', tabindex: 0 });
  root.append(
    h('h1', { text: 'Logs' }),
    filters,
    h('div', { class: 'inline' }, pause, clear, status),
    list,
  );

  function line(r) {
    return h('li', { class: `log level-${String(r.level || '').toLowerCase()}` },
      h('time', { text: fmtTime(r.time) }), ' ',
      h('span', { class: 'level', text: r.level || '' }), ' ',
      h('span', { class: 'actor', text: r.actor || '' }),
      r.session ? h('span', { class: 'session', text: ` [${r.session}]` }) : null, ' ',
      h('span', { class: 'message', text: r.message || '' }));
  }

  function add(records) {
    if (!records.length) return;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(...records.map(line));
    while (list.childElementCount > MAX) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function receive(record) {
    if (paused) {
      held.push(record);
      if (held.length > MAX) held = held.slice(-MAX);
      status.textContent = `paused, ${held.length} new line(s) held`;
    } else {
      add([record]);
    }
  }

  function query() {
    const params = new URLSearchParams();
    for (const name of ['level', 'actor', 'session']) {
      const v = filters.elements[name].value.trim();
      if (v) params.set(name, v);
    }
    return params;
  }

  function stopStream() {
    if (source) source.close();
    source = null;
  }

  async function start() {
    const mine = ++generation;
    stopStream();
    held = [];
    list.replaceChildren();
    const params = query();
    try {
      const data = await ctx.api('GET', `/api/logs?${params}&limit=200`);
      if (mine !== generation) return;
      add(data.logs || []);
      list.scrollTop = list.scrollHeight;
    } catch (err) {
      showError(err);
      if (err.status === 401) return;
    }
    if (mine !== generation) return;
    source = new EventSource(`/api/logs/stream?${params}`);
    source.addEventListener('open', () => {
      if (!paused) status.textContent = 'live';
    });
    source.addEventListener('message', (e) => {
      try {
        receive(JSON.parse(e.data));
      } catch {
        // a keep-alive or a malformed line: nothing to show
      }
    });
    source.addEventListener('error', () => {
      if (source && source.readyState === EventSource.CLOSED) {
        status.textContent = 'disconnected';
        // closed for good: maybe the login expired (a 401 brings the login back)
        ctx.api('GET', '/api/auth/me').catch(() => {});
      } else {
        status.textContent = 'reconnecting…';
      }
    });
  }

  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    start();
  });
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (paused) {
      status.textContent = 'paused';
    } else {
      add(held);
      held = [];
      status.textContent = source && source.readyState === EventSource.OPEN ? 'live' : '';
    }
  });
  clear.addEventListener('click', () => {
    list.replaceChildren();
    held = [];
  });

  start();
  return () => {
    generation += 1;
    stopStream();
  };
}
