// Personas: the list (store personas editable, config personas read-only, since
// they live in the config file) and one form to create or edit a store persona.
// Tools: a comma list; empty means every tool (null on the wire).

import { busy, clearErrors, field, h, showError, splitList, table, toast } from '../ui.js';

export function mount(root, ctx) {
  let personas = [];
  let editing = null; // the persona being edited (keeps its begin_dialogs)

  const list = h('div', { class: 'table-wrap' });
  const title = h('h2', { id: 'persona-form-title', text: 'New persona' });
  const form = h('form', { id: 'persona-form', class: 'card', novalidate: true,
    'aria-labelledby': 'persona-form-title' },
    title,
    field({ label: 'Name', name: 'name', id: 'persona-name', required: true, autocomplete: 'off',
      help: 'letters, digits, _ . -' }),
    field({ label: 'System prompt', name: 'system_prompt', id: 'persona-prompt', type: 'textarea',
      rows: 8, required: true }),
    field({ label: 'Tools', name: 'tools', id: 'persona-tools',
      help: 'comma-separated tool names; empty = every tool' }),
    h('div', { class: 'actions' },
      h('button', { id: 'persona-save', type: 'submit', class: 'primary', text: 'Save' }),
      h('button', { id: 'persona-cancel', type: 'button', text: 'Cancel', hidden: true,
        onclick: () => resetForm() })),
  );
  const viewer = h('section', { id: 'persona-view', class: 'card', hidden: true, tabindex: -1,
    'aria-live': 'polite' });
  root.append(h('h1', { text: 'Personas' }), list, viewer, form);

  function row(p) {
    const readOnly = p.source === 'config';
    return h('tr', { 'data-persona': p.name },
      h('td', { class: 'name', text: p.name }),
      h('td', { class: 'source', text: readOnly ? 'config (read-only)' : 'store' }),
      h('td', { class: 'tools', text: p.tools ? p.tools.join(', ') || 'none' : 'all' }),
      h('td', { class: 'prompt', text: truncate(p.system_prompt, 80) }),
      h('td', { class: 'actions' },
        readOnly
          ? h('button', { type: 'button', class: 'persona-view', text: 'View',
              'aria-label': `View ${p.name}`, onclick: () => view(p) })
          : [
              h('button', { type: 'button', class: 'persona-edit', text: 'Edit',
                'aria-label': `Edit ${p.name}`, onclick: () => edit(p) }),
              h('button', { type: 'button', class: 'persona-delete danger', text: 'Delete',
                'aria-label': `Delete ${p.name}`, onclick: (e) => remove(p.name, e.currentTarget) }),
            ]),
    );
  }

  async function load() {
    const data = await ctx.api('GET', '/api/personas');
    personas = data.personas || [];
    list.replaceChildren(personas.length
      ? table(['Name', 'Source', 'Tools', 'System prompt', 'Actions'], personas.map(row),
          { id: 'personas-table' })
      : h('p', { class: 'empty', text: 'No personas yet.' }));
  }

  function view(p) {
    viewer.hidden = false;
    viewer.replaceChildren(
      h('h2', { text: `${p.name} (from the config file)` }),
      h('p', { class: 'muted', text: 'Edit the config file to change this persona.' }),
      h('pre', { class: 'prompt-text', text: p.system_prompt }),
      (p.begin_dialogs || []).length
        ? h('ol', { class: 'dialogs' }, p.begin_dialogs.map(([u, a]) =>
            h('li', {}, h('p', { text: `User: ${u}` }), h('p', { text: `Bot: ${a}` }))))
        : null,
    );
    viewer.focus();
  }

  function edit(p) {
    editing = p;
    clearErrors(form);
    viewer.hidden = true;
    title.textContent = `Edit ${p.name}`;
    form.elements.name.value = p.name;
    form.elements.name.readOnly = true;
    form.elements.system_prompt.value = p.system_prompt || '';
    form.elements.tools.value = (p.tools || []).join(', ');
    form.querySelector('#persona-cancel').hidden = false;
    form.elements.system_prompt.focus();
  }

  function resetForm() {
    editing = null;
    form.reset();
    clearErrors(form);
    title.textContent = 'New persona';
    form.elements.name.readOnly = false;
    form.querySelector('#persona-cancel').hidden = true;
  }

  async function remove(name, button) {
    if (!confirm(`Delete the persona "${name}"?`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', `/api/personas/${encodeURIComponent(name)}`);
      if (editing && editing.name === name) resetForm();
      toast(`Deleted ${name}`);
      await load();
    });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const name = form.elements.name.value.trim();
    const tools = splitList(form.elements.tools.value);
    const body = {
      system_prompt: form.elements.system_prompt.value,
      tools: tools.length ? tools : null,
    };
    if (editing) body.begin_dialogs = editing.begin_dialogs || [];
    await busy(form.querySelector('#persona-save'), async () => {
      if (!name) throw Object.assign(new Error('a persona needs a name'), { field: 'name' });
      await ctx.api('PUT', `/api/personas/${encodeURIComponent(name)}`, body);
      toast(`Saved ${name}`);
      resetForm();
      await load();
    }, form);
  });

  load().catch((err) => showError(err));
}

function truncate(text, n) {
  const s = String(text || '');
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}
