// Conversations: full-text search over messages, the sessions list with paging
// (filter by text and platform), a session's conversations, and one
// conversation's messages styled by role. Deleting a conversation asks first.

import { busy, fmtTime, h, showError, table, toast } from '../ui.js';

const PAGE = 50;

export function mount(root, ctx) {
  let offset = 0;
  let openSession = null;

  const search = h('form', { id: 'conv-search-form', role: 'search', class: 'inline' },
    h('label', { for: 'conv-search', text: 'Search messages' }),
    h('input', { id: 'conv-search', name: 'q', type: 'search', required: true }),
    h('button', { id: 'conv-search-go', type: 'submit', text: 'Search' }));
  const hits = h('ol', { id: 'conv-hits', class: 'hits', 'aria-live': 'polite' });
  const filter = h('form', { id: 'conv-filter', class: 'inline' },
    h('label', { for: 'conv-filter-q', text: 'Session contains' }),
    h('input', { id: 'conv-filter-q', name: 'q', type: 'search' }),
    h('label', { for: 'conv-platform', text: 'Platform' }),
    h('input', { id: 'conv-platform', name: 'platform', class: 'narrow' }),
    h('button', { type: 'submit', text: 'Filter' }));
  const sessions = h('div', { id: 'conv-sessions', class: 'table-wrap' });
  const prev = h('button', { id: 'conv-prev', type: 'button', text: 'Previous' });
  const next = h('button', { id: 'conv-next', type: 'button', text: 'Next' });
  const pageLabel = h('span', { id: 'conv-page', 'aria-live': 'polite' });
  const convs = h('section', { id: 'conv-list', class: 'card', hidden: true, tabindex: -1 });
  const messages = h('section', { id: 'conv-messages', class: 'card', hidden: true, tabindex: -1 });

  root.append(
    h('h1', { text: 'Conversations' }),
    search, hits,
    h('h2', { text: 'Sessions' }), filter, sessions,
    h('div', { class: 'pager' }, prev, pageLabel, next),
    convs, messages,
  );

  search.addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = search.elements.q.value.trim();
    if (!q) return;
    await busy(search.querySelector('button'), async () => {
      const data = await ctx.api('GET', `/api/search?${new URLSearchParams({ q, limit: '50' })}`);
      const found = data.hits || [];
      hits.replaceChildren(...(found.length ? found.map(hit)
        : [h('li', { class: 'empty', text: 'No messages match.' })]));
    });
  });

  function hit(x) {
    return h('li', { class: `hit role-${x.role}` },
      h('div', { class: 'muted', text: `${x.session} · ${x.role} · ${fmtTime(x.time)}` }),
      h('p', { class: 'text', text: x.content }),
      h('button', { type: 'button', class: 'hit-open', text: 'Open conversation',
        onclick: () => showMessages(x.conversation_id, x.session, x.seq) }));
  }

  async function loadSessions() {
    const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    const q = filter.elements.q.value.trim();
    const platform = filter.elements.platform.value.trim();
    if (q) params.set('q', q);
    if (platform) params.set('platform', platform);
    const data = await ctx.api('GET', `/api/sessions?${params}`);
    const rows = (data.sessions || []).map((s) => h('tr', { 'data-session': s.key },
      h('td', { class: 'key', text: s.key }),
      h('td', { class: 'platform', text: s.platform || '' }),
      h('td', { class: 'chat-type', text: s.chat_type || '' }),
      h('td', { class: 'conversations', text: s.conversations ?? '' }),
      h('td', { class: 'messages', text: s.messages ?? '' }),
      h('td', { class: 'last-active', text: fmtTime(s.last_active) }),
      h('td', {}, h('button', { type: 'button', class: 'session-open', text: 'Open',
        'aria-label': `Open ${s.key}`, onclick: () => showConversations(s.key) }))));
    sessions.replaceChildren(rows.length
      ? table(['Session', 'Platform', 'Chat', 'Conversations', 'Messages', 'Last active', ''], rows)
      : h('p', { class: 'empty', text: 'No sessions.' }));
    const total = data.total ?? offset + rows.length;
    pageLabel.textContent = total
      ? `${offset + 1}–${offset + rows.length} of ${total}`
      : '0 sessions';
    prev.disabled = offset === 0;
    next.disabled = offset + rows.length >= total;
  }

  filter.addEventListener('submit', (e) => {
    e.preventDefault();
    offset = 0;
    loadSessions().catch((err) => showError(err));
  });
  prev.addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    loadSessions().catch((err) => showError(err));
  });
  next.addEventListener('click', () => {
    offset += PAGE;
    loadSessions().catch((err) => showError(err));
  });

  async function showConversations(key) {
    openSession = key;
    const data = await ctx.api('GET', `/api/sessions/${encodeURIComponent(key)}/conversations`)
      .catch((err) => showError(err));
    if (!data) return;
    const rows = (data.conversations || []).map((c) => h('tr', { 'data-conversation': c.id },
      h('td', { class: 'title', text: c.title || '(untitled)' },
        c.current ? h('span', { class: 'tag', text: 'current' }) : null),
      h('td', { class: 'persona', text: c.persona || 'default' }),
      h('td', { class: 'messages', text: c.messages ?? '' }),
      h('td', { class: 'updated', text: fmtTime(c.updated || c.created) }),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'conv-open', text: 'Messages',
          'aria-label': `Messages of ${c.title || c.id}`, onclick: () => showMessages(c.id, key) }),
        h('button', { type: 'button', class: 'conv-delete danger', text: 'Delete',
          'aria-label': `Delete ${c.title || c.id}`, onclick: (e) => remove(c, e.currentTarget) }))));
    convs.hidden = false;
    messages.hidden = true;
    convs.replaceChildren(h('h2', { text: `Conversations of ${key}` }), rows.length
      ? table(['Title', 'Persona', 'Messages', 'Updated', 'Actions'], rows)
      : h('p', { class: 'empty', text: 'No conversations.' }));
    convs.focus();
  }

  async function showMessages(id, session, seq = null) {
    const data = await ctx.api('GET', `/api/conversations/${encodeURIComponent(id)}/messages?limit=200`)
      .catch((err) => showError(err));
    if (!data) return;
    const items = (data.messages || []).map((m) => h('div', {
      class: `msg ${m.role === 'user' ? 'user' : m.role === 'assistant' ? 'bot' : 'other'} role-${m.role}${m.seq === seq ? ' highlight' : ''}`,
      'data-seq': m.seq },
    h('div', { class: 'meta', text: `${m.role} · ${fmtTime(m.time)}` }),
    h('div', { class: 'text', text: typeof m.content === 'string' ? m.content : JSON.stringify(m.content) })));
    messages.hidden = false;
    messages.replaceChildren(
      h('h2', { text: `Conversation ${id}${session ? ` (${session})` : ''}` }),
      items.length ? h('div', { class: 'chat-log static' }, items)
        : h('p', { class: 'empty', text: 'No messages.' }));
    messages.focus();
    messages.querySelector('.highlight')?.scrollIntoView({ block: 'center' });
  }

  async function remove(c, button) {
    if (!confirm(`Delete the conversation "${c.title || c.id}" and its messages?`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', `/api/conversations/${encodeURIComponent(c.id)}`);
      toast('Conversation deleted');
      messages.hidden = true;
      if (openSession) await showConversations(openSession);
      await loadSessions();
    });
  }

  loadSessions().catch((err) => showError(err));
}
