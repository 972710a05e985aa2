// Actors: the Supervisor's status every 2 s. A <section> per Ray node (address,
// alive, resources) with a table of its actors, the session hosts' load, and the
// recent restart events. The DOM is rebuilt only when the status changed, so
// keyboard focus survives the polling.

import { every, fmtBytes, fmtTime, h, safeUrl, showError, table } from '../ui.js';

export function mount(root, ctx) {
  let shown = '';
  let reported = false;
  const head = h('div', { class: 'page-head' }, h('h1', { text: 'Actors' }));
  const overall = h('p', { id: 'actors-overall', 'aria-live': 'polite' });
  const body = h('div', { id: 'actors-body' });
  root.append(head, overall, body);

  function render(s) {
    const link = safeUrl(s.ray_dashboard);
    head.replaceChildren(h('h1', { text: 'Actors' }), link
      ? h('a', { id: 'ray-dashboard', href: link, target: '_blank', rel: 'noopener',
          text: 'Ray dashboard' })
      : null);
    overall.className = s.ok ? 'ok' : 'fail';
    overall.textContent = s.ok ? 'All actors are up.' : 'Some actors are not running.';

    const actors = s.actors || [];
    const nodes = s.nodes || [];
    const known = new Set(nodes.map((n) => n.node_id));
    const sections = nodes.map((n) => nodeSection(n, actors.filter((a) => a.node_id === n.node_id)));
    const lost = actors.filter((a) => !known.has(a.node_id));
    if (lost.length) {
      sections.push(h('section', { class: 'node', 'data-node': '' },
        h('h2', { text: 'Not placed on a known node' }), actorTable(lost)));
    }
    body.replaceChildren(
      ...sections,
      hostsSection(s.hosts || []),
      eventsSection(s.events || []),
    );
  }

  async function refresh() {
    try {
      const s = await ctx.api('GET', '/api/status');
      reported = false;
      const json = JSON.stringify(s);
      if (json !== shown) {
        shown = json;
        render(s);
      }
    } catch (err) {
      if (!reported) showError(err); // one toast, not one every 2 s
      reported = true;
    }
  }

  return every(2000, refresh);
}

function nodeSection(n, actors) {
  const resources = Object.entries(n.resources || {});
  return h('section', { class: 'node', 'data-node': n.node_id },
    h('h2', {},
      h('span', { class: `dot ${n.alive ? 'up' : 'down'}`, 'aria-hidden': 'true' }),
      `Node ${shortId(n.node_id)} `,
      h('span', { class: 'muted', text: `${n.address || ''} · ${n.alive ? 'alive' : 'dead'}` })),
    resources.length
      ? h('dl', { class: 'resources' }, resources.map(([k, v]) => [
          h('dt', { text: k }), h('dd', { text: resource(k, v) }),
        ]))
      : null,
    actors.length ? actorTable(actors) : h('p', { class: 'empty', text: 'No actors on this node.' }));
}

function actorTable(actors) {
  const rows = actors.map((a) => h('tr', { 'data-actor': a.name, class: `state-${a.state}` },
    h('th', { scope: 'row', class: 'name', text: a.name }),
    h('td', { class: 'kind', text: a.kind || '' }),
    h('td', { class: 'state', text: a.state || '' }),
    h('td', { class: 'pid', text: a.pid ?? '—' }),
    h('td', { class: 'restarts', text: a.restarts ?? 0 }),
    h('td', { class: 'node', text: shortId(a.node_id) })));
  return h('div', { class: 'table-wrap' },
    table(['Actor', 'Kind', 'State', 'Pid', 'Restarts', 'Node'], rows, { class: 'actors' }));
}

function hostsSection(hosts) {
  const rows = hosts.map((x) => h('tr', { 'data-host': x.name },
    h('th', { scope: 'row', class: 'name', text: x.name }),
    h('td', { class: 'shards', text: x.shards ?? '' }),
    h('td', { class: 'sessions', text: x.sessions ?? '' }),
    h('td', { class: 'mailbox', text: x.mailbox ?? '' })));
  return h('section', { id: 'actor-hosts' },
    h('h2', { text: 'Session hosts' }),
    rows.length
      ? h('div', { class: 'table-wrap' }, table(['Host', 'Shards', 'Sessions', 'Mailbox'], rows))
      : h('p', { class: 'empty', text: 'No session hosts.' }));
}

function eventsSection(events) {
  const newest = [...events].sort((a, b) => (stamp(b.time) - stamp(a.time)) || 0);
  const items = newest.slice(0, 50).map((e) => h('li', { class: `event kind-${e.kind}` },
    h('time', { text: fmtTime(e.time) }), ' ',
    h('strong', { text: e.actor }), ` ${e.kind}`,
    e.reason ? ` (${e.reason})` : '',
    e.pid ? h('span', { class: 'muted', text: ` pid ${e.pid}` }) : null));
  return h('section', {},
    h('h2', { text: 'Recent restarts' }),
    h('ul', { id: 'actor-events', class: 'events' },
      items.length ? items : h('li', { class: 'empty', text: 'No restarts recorded.' })));
}

function resource(name, value) {
  if (typeof value !== 'number') return String(value);
  return /memory/.test(name) ? fmtBytes(value) : String(+value.toFixed(2));
}

function stamp(t) {
  const n = typeof t === 'number' ? t : Date.parse(t);
  return Number.isNaN(n) ? 0 : n;
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : '—';
}
