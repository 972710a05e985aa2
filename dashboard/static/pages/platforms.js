// Chat accounts (config `platforms`): health table refreshed every 5 s, and one
// form to add or edit an account whose fields follow the chosen type. Secrets
// (tokens) are write-only: the API masks them, and an empty secret field when
// editing keeps the stored value.

import { busy, clearErrors, every, field, h, showError, table, toast } from '../ui.js';

// The fields each type's form shows: [name, label, kind, extra field options].
const TYPES = {
  onebot: [
    ['mode', 'Mode', 'select', { options: [['reverse', 'reverse (NapCat connects to us)'],
      ['forward', 'forward (we connect)']] }],
    ['host', 'Host', 'text', { placeholder: '127.0.0.1' }],
    ['port', 'Port', 'number', { min: 0, max: 65535, placeholder: '6199' }],
    ['access_token', 'Access token', 'secret', {}],
  ],
  telegram: [
    ['token', 'Bot token', 'secret', { help: 'from @BotFather' }],
    ['mode', 'Mode', 'select', { options: [['polling', 'polling'], ['webhook', 'webhook']] }],
  ],
  discord: [['token', 'Bot token', 'secret', {}]],
  slack: [
    ['mode', 'Mode', 'select', { options: [['socket', 'Socket Mode'], ['events', 'Events API']] }],
    ['bot_token', 'Bot token', 'secret', { help: 'xoxb-…' }],
    ['app_token', 'App token', 'secret', { help: 'xapp-… (Socket Mode)' }],
    ['signing_secret', 'Signing secret', 'secret', { help: 'Events API' }],
  ],
};

export function mount(root, ctx) {
  let editing = null; // the account being edited, or null when adding
  let shown = '';

  const list = h('div', { class: 'table-wrap', id: 'platforms-list' });
  const typeSelect = field({ label: 'Type', name: 'type', id: 'platform-type', type: 'select',
    options: Object.keys(TYPES).map((t) => [t, t]) });
  const typeFields = h('fieldset', { class: 'type-fields' });
  const title = h('h2', { id: 'platform-form-title', text: 'Add account' });
  const form = h('form', { id: 'platform-form', class: 'card', novalidate: true,
    'aria-labelledby': 'platform-form-title' },
    title,
    typeSelect,
    field({ label: 'Id', name: 'id', id: 'platform-id', required: true, autocomplete: 'off',
      help: 'a name for this account, e.g. qq-main' }),
    typeFields,
    field({ label: 'Enabled', name: 'enabled', id: 'platform-enabled', type: 'checkbox',
      checked: true }),
    h('div', { class: 'actions' },
      h('button', { id: 'platform-save', type: 'submit', class: 'primary', text: 'Save' }),
      h('button', { id: 'platform-cancel', type: 'button', text: 'Cancel', hidden: true,
        onclick: () => resetForm() })),
  );
  root.append(h('h1', { text: 'Platforms' }), list, form);

  function showTypeFields(type, config = {}) {
    typeFields.replaceChildren(h('legend', { text: `${type} settings` }));
    for (const [name, label, kind, extra] of TYPES[type]) {
      const secret = kind === 'secret';
      const opts = { label, name, id: `platform-${name.replace(/_/g, '-')}`, ...extra,
        type: secret ? 'password' : kind, autocomplete: secret ? 'off' : null };
      if (secret && editing) opts.placeholder = config[name] ? 'unchanged' : 'not set';
      else if (!secret && config[name] !== undefined && config[name] !== null) {
        opts.value = config[name];
      }
      typeFields.append(field(opts));
    }
  }

  form.elements.type.addEventListener('change', () => showTypeFields(form.elements.type.value));

  function values() {
    const el = form.elements;
    const body = { enabled: el.enabled.checked };
    for (const [name, , kind] of TYPES[el.type.value]) {
      const value = el[name].value.trim();
      if (kind === 'secret') {
        if (value) body[name] = value; // empty: keep (edit) or leave unset (add)
      } else if (kind === 'number') {
        if (value !== '') body[name] = Number(value);
      } else if (value !== '') {
        body[name] = value;
      }
    }
    return body;
  }

  function health(p) {
    const up = Boolean(p.connected);
    return h('span', { class: 'health' },
      h('span', { class: `dot ${up ? 'up' : 'down'}`, 'aria-hidden': 'true' }),
      `${up ? 'connected' : 'disconnected'}${p.state ? ` (${p.state})` : ''}`);
  }

  function row(p) {
    return h('tr', { 'data-platform': p.id },
      h('td', { class: 'id', text: p.id }),
      h('td', { class: 'type', text: p.type }),
      h('td', { class: 'enabled', text: p.enabled === false ? 'no' : 'yes' }),
      h('td', { class: 'status' }, health(p)),
      h('td', { class: 'reconnects', text: p.reconnects ?? 0 }),
      h('td', { class: 'events', text: p.events ?? 0 }),
      h('td', { class: 'replies', text: p.replies ?? 0 }),
      h('td', { class: 'send-failures', text: p.send_failures ?? 0 }),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'platform-edit', text: 'Edit',
          'aria-label': `Edit ${p.id}`, onclick: () => edit(p) }),
        h('button', { type: 'button', class: 'platform-delete danger', text: 'Delete',
          'aria-label': `Delete ${p.id}`, onclick: (e) => remove(p.id, e.currentTarget) })),
    );
  }

  async function load(force = false) {
    const data = await ctx.api('GET', '/api/platforms');
    const json = JSON.stringify(data);
    if (json === shown && !force) return; // unchanged: keep the DOM (and keyboard focus)
    shown = json;
    const rows = (data.platforms || []).map(row);
    list.replaceChildren(rows.length
      ? table(['Id', 'Type', 'Enabled', 'Health', 'Reconnects', 'Events', 'Replies',
          'Send failures', 'Actions'], rows, { id: 'platforms-table' })
      : h('p', { class: 'empty', text: 'No chat accounts yet.' }));
  }

  function edit(p) {
    editing = p.id;
    clearErrors(form);
    title.textContent = `Edit ${p.id}`;
    form.elements.type.value = p.type;
    form.elements.type.disabled = true;
    form.elements.id.value = p.id;
    form.elements.id.readOnly = true;
    form.elements.enabled.checked = p.enabled !== false;
    showTypeFields(p.type, p.config || {});
    form.querySelector('#platform-cancel').hidden = false;
    form.elements.id.focus();
  }

  function resetForm() {
    editing = null;
    form.reset();
    clearErrors(form);
    title.textContent = 'Add account';
    form.elements.type.disabled = false;
    form.elements.id.readOnly = false;
    form.querySelector('#platform-cancel').hidden = true;
    showTypeFields(form.elements.type.value);
  }

  async function remove(id, button) {
    if (!confirm(`Delete the account "${id}"? The bot leaves that chat platform.`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', `/api/platforms/${encodeURIComponent(id)}`);
      if (editing === id) resetForm();
      toast(`Deleted ${id}`);
      await load(true);
    });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body = values();
    await busy(form.querySelector('#platform-save'), async () => {
      if (editing) {
        await ctx.api('PUT', `/api/platforms/${encodeURIComponent(editing)}`, body);
        toast(`Saved ${editing}`);
      } else {
        const id = form.elements.id.value.trim();
        await ctx.api('POST', '/api/platforms', { id, type: form.elements.type.value, ...body });
        toast(`Added ${id}`);
      }
      resetForm();
      await load(true);
    }, form);
  });

  showTypeFields(form.elements.type.value);
  let reported = false;
  return every(5000, () => load().then(() => { reported = false; }, (err) => {
    if (!reported) showError(err); // one toast, not one every 5 s
    reported = true;
  }));
}
