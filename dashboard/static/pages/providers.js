// LLM providers: the table in fallback order (the order the chain tries them:
// `fallback` ids first, then the rest as configured), test / edit / delete per
// row, up/down to reorder (PUT /api/providers/order with every id), and one form
// for adding or editing. The API key is write-only: an empty key field when
// editing keeps the stored one.

import { busy, clearErrors, field, h, showError, table, toast } from '../ui.js';

export function mount(root, ctx) {
  let providers = [];
  let order = [];
  let editing = null; // the id being edited, or null when adding

  const tableBox = h('div', { class: 'table-wrap' });
  const formTitle = h('h2', { id: 'provider-form-title', text: 'Add a provider' });
  const form = h('form', { id: 'provider-form', class: 'card', novalidate: true,
    'aria-labelledby': 'provider-form-title' },
    formTitle,
    field({ label: 'Id', name: 'id', id: 'provider-id', required: true,
      help: 'letters, digits, _ . -', autocomplete: 'off' }),
    field({ label: 'Model', name: 'model', id: 'provider-model', required: true,
      placeholder: 'e.g. gpt-4o-mini or openai/gpt-4o' }),
    field({ label: 'API base', name: 'api_base', id: 'provider-api-base',
      placeholder: 'https://api.openai.com/v1' }),
    field({ label: 'API key', name: 'api_key', id: 'provider-api-key', type: 'password',
      autocomplete: 'off' }),
    field({ label: 'Max retries', name: 'max_retries', id: 'provider-max-retries',
      type: 'number', min: 0, max: 10, step: 1 }),
    field({ label: 'Timeout (s)', name: 'timeout_s', id: 'provider-timeout', type: 'number',
      min: 0, step: 'any' }),
    field({ label: 'Enabled', name: 'enabled', id: 'provider-enabled', type: 'checkbox',
      checked: true }),
    h('div', { class: 'actions' },
      h('button', { id: 'provider-save', type: 'submit', class: 'primary', text: 'Save' }),
      h('button', { id: 'provider-cancel', type: 'button', text: 'Cancel', hidden: true,
        onclick: () => resetForm() })),
  );
  root.append(
    h('h1', { text: 'Providers' }),
    h('p', { class: 'muted', text: 'Tried top to bottom: a provider that fails hands the turn to the next.' }),
    tableBox,
    form,
  );

  function chainOrder() {
    const ids = providers.map((p) => p.id);
    const first = order.filter((id) => ids.includes(id));
    return [...first, ...ids.filter((id) => !first.includes(id))];
  }

  function render() {
    const ids = chainOrder();
    const byId = new Map(providers.map((p) => [p.id, p]));
    const rows = ids.map((id, i) => row(byId.get(id), i, ids.length));
    tableBox.replaceChildren(
      rows.length
        ? table(['#', 'Id', 'Model', 'API base', 'Key', 'Enabled', 'Order', 'Actions', 'Test'],
            rows, { id: 'providers-table' })
        : h('p', { class: 'empty', text: 'No providers yet: add one below.' }),
    );
  }

  function row(p, index, count) {
    const result = h('td', { class: 'test-result', 'aria-live': 'polite' });
    const test = h('button', { type: 'button', class: 'provider-test', text: 'Test',
      'aria-label': `Test ${p.id}` });
    test.addEventListener('click', () => runTest(p.id, test, result));
    return h('tr', { 'data-provider': p.id },
      h('td', { text: index + 1 }),
      h('td', { class: 'id', text: p.id }),
      h('td', { class: 'model', text: p.model }),
      h('td', { class: 'api-base', text: p.api_base || 'default' }),
      h('td', { class: 'key', text: p.api_key && p.api_key.set ? 'set' : 'none' }),
      h('td', { class: 'enabled', text: p.enabled === false ? 'no' : 'yes' }),
      h('td', { class: 'order' },
        h('button', { type: 'button', class: 'provider-up', text: '↑', disabled: index === 0,
          'aria-label': `Move ${p.id} up`, onclick: () => move(p.id, -1) }),
        h('button', { type: 'button', class: 'provider-down', text: '↓',
          disabled: index === count - 1, 'aria-label': `Move ${p.id} down`,
          onclick: () => move(p.id, 1) })),
      h('td', { class: 'actions' },
        test,
        h('button', { type: 'button', class: 'provider-edit', text: 'Edit',
          'aria-label': `Edit ${p.id}`, onclick: () => edit(p) }),
        h('button', { type: 'button', class: 'provider-delete danger', text: 'Delete',
          'aria-label': `Delete ${p.id}`, onclick: (e) => remove(p.id, e.currentTarget) })),
      result,
    );
  }

  async function load() {
    const data = await ctx.api('GET', '/api/providers');
    providers = data.providers || [];
    order = data.fallback || [];
    render();
  }

  async function runTest(id, button, cell) {
    cell.className = 'test-result';
    cell.textContent = 'testing…';
    button.disabled = true;
    try {
      const r = await ctx.api('POST', `/api/providers/${encodeURIComponent(id)}/test`, {});
      cell.classList.add(r.ok ? 'ok' : 'fail');
      cell.textContent = r.ok
        ? `ok, ${r.latency_ms} ms${r.reply ? `: ${r.reply}` : ''}`
        : `failed: ${r.error}`;
    } catch (err) {
      cell.classList.add('fail');
      cell.textContent = `failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function move(id, step) {
    const ids = chainOrder();
    const i = ids.indexOf(id);
    const j = i + step;
    if (j < 0 || j >= ids.length) return;
    [ids[i], ids[j]] = [ids[j], ids[i]];
    await busy(null, async () => {
      const r = await ctx.api('PUT', '/api/providers/order', { fallback: ids });
      order = r.fallback || ids;
      render();
      // keep the keyboard on the moved row (the other arrow when this one is now disabled)
      const moved = tableBox.querySelector(`tr[data-provider="${CSS.escape(id)}"]`);
      const same = moved.querySelector(step < 0 ? '.provider-up' : '.provider-down');
      (same.disabled ? moved.querySelector(step < 0 ? '.provider-down' : '.provider-up') : same).focus();
      toast(`Order saved: ${order.join(', ')}`);
    });
  }

  async function remove(id, button) {
    if (!confirm(`Delete the provider "${id}"?`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', `/api/providers/${encodeURIComponent(id)}`);
      if (editing === id) resetForm();
      toast(`Deleted ${id}`);
      await load();
    });
  }

  function edit(p) {
    editing = p.id;
    clearErrors(form);
    formTitle.textContent = `Edit provider ${p.id}`;
    form.elements.id.value = p.id;
    form.elements.id.readOnly = true;
    form.elements.model.value = p.model || '';
    form.elements.api_base.value = p.api_base || '';
    form.elements.api_key.value = '';
    form.elements.api_key.placeholder = 'unchanged';
    form.elements.max_retries.value = p.max_retries ?? '';
    form.elements.timeout_s.value = p.timeout_s ?? '';
    form.elements.enabled.checked = p.enabled !== false;
    form.querySelector('#provider-cancel').hidden = false;
    form.elements.model.focus();
  }

  function resetForm() {
    editing = null;
    form.reset();
    clearErrors(form);
    formTitle.textContent = 'Add a provider';
    form.elements.id.readOnly = false;
    form.elements.api_key.placeholder = '';
    form.querySelector('#provider-cancel').hidden = true;
  }

  function values() {
    const el = form.elements;
    const body = {
      model: el.model.value.trim(),
      api_base: el.api_base.value.trim() || null,
      enabled: el.enabled.checked,
    };
    if (el.max_retries.value !== '') body.max_retries = Number(el.max_retries.value);
    if (el.timeout_s.value !== '') body.timeout_s = Number(el.timeout_s.value);
    if (el.api_key.value) body.api_key = el.api_key.value; // empty: keep the stored key
    return body;
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body = values();
    await busy(form.querySelector('#provider-save'), async () => {
      if (editing) {
        await ctx.api('PUT', `/api/providers/${encodeURIComponent(editing)}`, body);
        toast(`Saved ${editing}`);
      } else {
        const id = form.elements.id.value.trim();
        await ctx.api('POST', '/api/providers', { id, ...body });
        toast(`Added ${id}`);
      }
      resetForm();
      await load();
    }, form);
  });

  load().catch((err) => showError(err));
}
