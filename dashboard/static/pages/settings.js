// Settings: API keys (list, create with scopes -> the key shown once with a copy
// button, delete), the admin password, and a raw JSON editor per config section
// for what has no page of its own. Secrets in the config read {"set": true} or
// null; sending them back unchanged keeps the stored values.

import { busy, clearErrors, field, fmtTime, h, showError, showFieldError, table, toast } from '../ui.js';

const SCOPES = [
  ['read', 'read: every GET'],
  ['chat', 'chat: the chat endpoints'],
  ['admin', 'admin: everything'],
];

export function mount(root, ctx) {
  root.append(
    h('h1', { text: 'Settings' }),
    keysSection(ctx),
    passwordSection(ctx),
    configSection(ctx),
  );
}

function keysSection(ctx) {
  const list = h('div', { class: 'table-wrap', id: 'keys-list' });
  const created = h('div', { id: 'key-created', class: 'notice', hidden: true, 'aria-live': 'polite' });
  const form = h('form', { id: 'key-form', novalidate: true },
    h('h3', { text: 'New key' }),
    field({ label: 'Name', name: 'name', id: 'key-name', required: true, autocomplete: 'off' }),
    h('fieldset', { class: 'scopes' },
      h('legend', { text: 'Scopes' }),
      SCOPES.map(([value, label]) => h('div', { class: 'check' },
        h('input', { type: 'checkbox', name: 'scopes', value, id: `key-scope-${value}`,
          checked: value === 'read' }),
        h('label', { for: `key-scope-${value}`, text: label }))),
      h('p', { class: 'field-error', 'data-field': 'scopes' })),
    h('button', { id: 'key-create', type: 'submit', class: 'primary', text: 'Create key' }));

  async function load() {
    const data = await ctx.api('GET', '/api/keys');
    const rows = (data.keys || []).map((k) => h('tr', { 'data-key': k.id },
      h('td', { class: 'name', text: k.name }),
      h('td', { class: 'scopes', text: (k.scopes || []).join(', ') }),
      h('td', { class: 'created', text: fmtTime(k.created) }),
      h('td', { class: 'last-used', text: k.last_used ? fmtTime(k.last_used) : 'never' }),
      h('td', {}, h('button', { type: 'button', class: 'key-delete danger', text: 'Delete',
        'aria-label': `Delete key ${k.name}`, onclick: (e) => remove(k, e.currentTarget) }))));
    list.replaceChildren(rows.length
      ? table(['Name', 'Scopes', 'Created', 'Last used', ''], rows, { id: 'keys-table' })
      : h('p', { class: 'empty', text: 'No API keys.' }));
  }

  async function remove(k, button) {
    if (!confirm(`Delete the API key "${k.name}"? Scripts using it stop working.`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', `/api/keys/${encodeURIComponent(k.id)}`);
      toast(`Deleted key ${k.name}`);
      await load();
    });
  }

  function showKey(r) {
    const code = h('code', { id: 'key-value', text: r.key });
    const copy = h('button', { id: 'key-copy', type: 'button', text: 'Copy' });
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(r.key);
        toast('Copied');
      } catch {
        getSelection().selectAllChildren(code); // no clipboard access: select it for Ctrl+C
        toast('Press Ctrl+C to copy the selected key');
      }
    });
    created.replaceChildren(
      h('p', { text: `Key "${r.name}" (${(r.scopes || []).join(', ')}). It is shown only once: copy it now.` }),
      h('div', { class: 'inline' }, code, copy));
    created.hidden = false;
    copy.focus();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const scopes = Array.from(form.querySelectorAll('input[name="scopes"]:checked'), (c) => c.value);
    await busy(form.querySelector('#key-create'), async () => {
      const r = await ctx.api('POST', '/api/keys', { name: form.elements.name.value.trim(), scopes });
      showKey(r);
      form.reset();
      await load();
    }, form);
  });

  load().catch((err) => showError(err));
  return h('section', { class: 'card', 'aria-labelledby': 'keys-title' },
    h('h2', { id: 'keys-title', text: 'API keys' }),
    h('p', { class: 'muted', text: 'For scripts: send "Authorization: Bearer <key>".' }),
    list, created, form);
}

function passwordSection(ctx) {
  const form = h('form', { id: 'password-form', novalidate: true, 'aria-labelledby': 'password-title' },
    h('h2', { id: 'password-title', text: 'Password' }),
    field({ label: 'Current password', name: 'old', id: 'password-old', type: 'password',
      autocomplete: 'current-password', required: true }),
    field({ label: 'New password', name: 'new', id: 'password-new', type: 'password',
      autocomplete: 'new-password', required: true, minlength: 10, help: 'at least 10 characters' }),
    field({ label: 'New password again', name: 'confirm', id: 'password-confirm', type: 'password',
      autocomplete: 'new-password', required: true }),
    h('button', { id: 'password-save', type: 'submit', class: 'primary', text: 'Change password' }));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const el = form.elements;
    if (el.new.value !== el.confirm.value) {
      showFieldError(form, 'confirm', 'the two new passwords differ');
      return;
    }
    await busy(form.querySelector('#password-save'), async () => {
      try {
        await ctx.api('POST', '/api/auth/password', { old: el.old.value, new: el.new.value });
      } catch (err) {
        // without a field: 403 is the current password, 400 the new one
        if (!err.field && err.status === 403) err.field = 'old';
        if (!err.field && err.status === 400) err.field = 'new';
        throw err;
      }
      form.reset();
      toast('Password changed');
    }, form);
  });
  return h('section', { class: 'card' }, form);
}

function configSection(ctx) {
  const box = h('div', { id: 'config-sections' });
  const section = h('section', { class: 'card', 'aria-labelledby': 'config-title' },
    h('h2', { id: 'config-title', text: 'Configuration' }),
    h('p', { class: 'muted', text: 'Each section as JSON. Secrets show as {"set": true}; leave them so to keep the stored value.' }),
    box);

  function editor(name, value) {
    const id = `config-${name}`;
    const form = h('form', { class: 'config-section', 'data-section': name, novalidate: true },
      field({ label: `${name} (JSON)`, name: 'value', id, type: 'textarea', class: 'mono',
        rows: Math.min(24, JSON.stringify(value, null, 2).split('\n').length + 1),
        value: JSON.stringify(value, null, 2), spellcheck: 'false' }),
      h('button', { type: 'submit', class: 'config-save primary', text: `Save ${name}` }));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors(form);
      let parsed;
      try {
        parsed = JSON.parse(form.elements.value.value);
      } catch (err) {
        showFieldError(form, 'value', `not valid JSON: ${err.message}`);
        return;
      }
      await busy(form.querySelector('.config-save'), async () => {
        try {
          const r = await ctx.api('PUT', '/api/config', { section: name, value: parsed });
          const fresh = r.config && name in r.config ? r.config[name] : parsed;
          form.elements.value.value = JSON.stringify(fresh, null, 2);
          toast(`Saved ${name}`);
        } catch (err) {
          // a path like "speech.tts.workers" names no input here: show it on the editor
          if (err.status === 400) showError(err, form, { fallback: 'value' });
          else throw err;
        }
      });
    });
    return h('details', { class: 'config', 'data-section': name },
      h('summary', { text: name }), form);
  }

  ctx.api('GET', '/api/config').then((config) => {
    box.replaceChildren(...Object.entries(config || {}).map(([k, v]) => editor(k, v)));
  }, (err) => showError(err));
  return section;
}
