// Plugins: the list with enable/disable, load errors and "Reload plugins", and a
// settings form generated from each plugin's `config_schema` (JSON schema):
// string, integer, number, boolean, enum, array of strings (one per line), and a
// JSON textarea for anything else. `$ref` into `$defs` and `anyOf [T, null]`
// (what pydantic writes for optional fields) are understood. The server checks
// the values; its 400 `field` lands next to the matching input.

import { busy, clearErrors, field, h, showError, showFieldError, table, toast } from '../ui.js';

export function mount(root, ctx) {
  const list = h('div', { class: 'table-wrap' });
  const reload = h('button', { id: 'plugins-reload', type: 'button', text: 'Reload plugins' });
  const editor = h('section', { id: 'plugin-config', class: 'card', hidden: true,
    'aria-labelledby': 'plugin-config-title' });
  root.append(
    h('div', { class: 'page-head' }, h('h1', { text: 'Plugins' }), reload),
    list,
    editor,
  );

  function row(p) {
    const hasConfig = Boolean(p.config_schema && Object.keys(p.config_schema.properties || {}).length);
    const provides = [
      (p.commands || []).length ? `commands: ${p.commands.join(', ')}` : null,
      (p.tools || []).length ? `tools: ${p.tools.join(', ')}` : null,
    ].filter(Boolean).join('; ');
    return h('tr', { 'data-plugin': p.name },
      h('td', { class: 'name', text: p.name }),
      h('td', { class: 'version', text: p.version || '' }),
      h('td', { class: 'description' },
        p.description || '',
        p.author ? h('div', { class: 'muted', text: `by ${p.author}` }) : null,
        provides ? h('div', { class: 'muted', text: provides }) : null),
      h('td', { class: 'plugin-state', text: `${p.enabled ? 'enabled' : 'disabled'}${p.isolated ? ', isolated' : ''}` }),
      h('td', { class: 'plugin-error', text: p.error || '' }),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'plugin-toggle', text: p.enabled ? 'Disable' : 'Enable',
          'aria-label': `${p.enabled ? 'Disable' : 'Enable'} ${p.name}`,
          onclick: (e) => toggle(p, e.currentTarget) }),
        hasConfig
          ? h('button', { type: 'button', class: 'plugin-config', text: 'Settings',
              'aria-label': `Settings of ${p.name}`, onclick: () => openConfig(p) })
          : null),
    );
  }

  async function load() {
    const data = await ctx.api('GET', '/api/plugins');
    const plugins = data.plugins || [];
    list.replaceChildren(plugins.length
      ? table(['Name', 'Version', 'Description', 'State', 'Error', 'Actions'], plugins.map(row),
          { id: 'plugins-table' })
      : h('p', { class: 'empty', text: 'No plugins installed.' }));
  }

  async function toggle(p, button) {
    const action = p.enabled ? 'disable' : 'enable';
    await busy(button, async () => {
      const r = await ctx.api('POST', `/api/plugins/${encodeURIComponent(p.name)}/${action}`, {});
      toast(`${p.name} ${r.enabled ? 'enabled' : 'disabled'}`);
      await load();
      list.querySelector(`tr[data-plugin="${CSS.escape(p.name)}"] .plugin-toggle`)?.focus();
    });
  }

  reload.addEventListener('click', () => busy(reload, async () => {
    const r = await ctx.api('POST', '/api/plugins/reload', {});
    const errors = Object.entries(r.errors || {});
    const done = `Reloaded ${(r.reloaded || []).length} plugin(s)`;
    if (errors.length) {
      toast(`${done}; failed: ${errors.map(([n, e]) => `${n}: ${e}`).join('; ')}`, { error: true });
    } else {
      toast(done);
    }
    await load();
  }));

  function openConfig(p) {
    const schema = p.config_schema;
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    const specs = Object.entries(props).map(([key, raw]) => ({ key, ...describe(raw, schema) }));
    const form = h('form', { id: 'plugin-config-form', novalidate: true },
      specs.map((s) => control(s, required.has(s.key), (p.config || {})[s.key])),
      h('div', { class: 'actions' },
        h('button', { id: 'plugin-config-save', type: 'submit', class: 'primary', text: 'Save' }),
        h('button', { id: 'plugin-config-cancel', type: 'button', text: 'Close',
          onclick: () => { editor.hidden = true; } })));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors(form);
      const values = collect(form, specs);
      if (!values) return;
      await busy(form.querySelector('#plugin-config-save'), async () => {
        await ctx.api('PUT', `/api/plugins/${encodeURIComponent(p.name)}/config`, values);
        toast(`Saved the settings of ${p.name}`);
        await load();
      }, form);
    });
    editor.replaceChildren(h('h2', { id: 'plugin-config-title', text: `Settings of ${p.name}` }), form);
    editor.hidden = false;
    form.querySelector('input, select, textarea')?.focus();
  }

  load().catch((err) => showError(err));
}

/** A property schema reduced to {kind, schema, nullable}; kind drives the control. */
function describe(raw, rootSchema) {
  let s = deref(raw, rootSchema);
  let nullable = false;
  const alts = s.anyOf || s.oneOf;
  if (alts) {
    const real = alts.map((a) => deref(a, rootSchema)).filter((a) => a.type !== 'null');
    nullable = real.length < alts.length;
    if (real.length === 1) s = { ...real[0], ...withoutAlts(s) };
  }
  let type = s.type;
  if (Array.isArray(type)) {
    nullable = nullable || type.includes('null');
    type = type.find((t) => t !== 'null');
  }
  let kind = 'json';
  if (Array.isArray(s.enum)) kind = 'enum';
  else if (['string', 'integer', 'number', 'boolean'].includes(type)) kind = type;
  else if (type === 'array') {
    const items = deref(s.items || {}, rootSchema);
    if (!items.type || items.type === 'string') kind = 'list';
  }
  return { kind, schema: s, nullable };
}

function deref(s, rootSchema) {
  if (!s || !s.$ref) return s || {};
  const name = s.$ref.split('/').pop();
  const defs = rootSchema.$defs || rootSchema.definitions || {};
  return { ...(defs[name] || {}), ...withoutRef(s) };
}

function withoutRef({ $ref, ...rest }) { return rest; }
function withoutAlts({ anyOf, oneOf, ...rest }) { return rest; }

function control({ key, kind, schema, nullable }, required, current) {
  const value = current !== undefined ? current : schema.default;
  const limits = [
    schema.minimum !== undefined ? `min ${schema.minimum}` : null,
    schema.maximum !== undefined ? `max ${schema.maximum}` : null,
    schema.minLength !== undefined ? `at least ${schema.minLength} characters` : null,
    schema.maxLength !== undefined ? `at most ${schema.maxLength} characters` : null,
  ].filter(Boolean);
  const notes = {
    list: 'one per line',
    json: 'JSON',
  };
  const help = [schema.description, notes[kind], limits.join(', ')].filter(Boolean).join(' · ');
  const base = {
    label: `${schema.title || key}${required ? ' (required)' : ''}`,
    name: key, id: `plugin-cfg-${key}`, help: help || null, required,
  };
  switch (kind) {
    case 'boolean':
      return field({ ...base, type: 'checkbox', checked: value === true, required: false });
    case 'integer':
    case 'number':
      return field({ ...base, type: 'number', value: value ?? '', step: kind === 'integer' ? 1 : 'any',
        min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum ?? schema.exclusiveMaximum });
    case 'enum': {
      const options = schema.enum.map((v, i) => [String(i), String(v)]);
      if (nullable || !required) options.unshift(['', '(none)']);
      const index = schema.enum.findIndex((v) => v === value);
      return field({ ...base, type: 'select', options, value: index >= 0 ? String(index) : '' });
    }
    case 'list':
      return field({ ...base, type: 'textarea', rows: 4,
        value: Array.isArray(value) ? value.join('\n') : '' });
    case 'json':
      return field({ ...base, type: 'textarea', rows: 4, class: 'mono',
        value: value === undefined ? '' : JSON.stringify(value, null, 2) });
    default:
      return field({ ...base, type: schema.writeOnly || schema.format === 'password' ? 'password' : 'text',
        value: value ?? '', minlength: schema.minLength, maxlength: schema.maxLength,
        autocomplete: 'off' });
  }
}

/** The form's values by the schema's types; null (after showing why) when one is not valid. */
function collect(form, specs) {
  const out = {};
  for (const { key, kind, schema, nullable } of specs) {
    const el = form.elements.namedItem(key);
    const text = kind === 'boolean' ? '' : el.value;
    if (kind === 'boolean') out[key] = el.checked;
    else if (kind === 'integer' || kind === 'number') {
      if (text !== '') out[key] = Number(text);
      else if (nullable) out[key] = null;
    } else if (kind === 'enum') out[key] = text === '' ? null : schema.enum[Number(text)];
    else if (kind === 'list') out[key] = text.split('\n').map((s) => s.trim()).filter(Boolean);
    else if (kind === 'json') {
      if (text.trim() === '') {
        if (nullable) out[key] = null;
        continue;
      }
      try {
        out[key] = JSON.parse(text);
      } catch (err) {
        showFieldError(form, key, `not valid JSON: ${err.message}`);
        return null;
      }
    } else out[key] = text === '' && nullable ? null : text;
  }
  return out;
}
