// Small DOM helpers shared by every page: element building, form fields with
// their error slots, API error display, toasts, polling and formatting.
//
// Contract: nothing here uses innerHTML, so server text is never parsed as HTML;
// event handlers are attached with addEventListener (the page runs under a CSP
// without 'unsafe-inline').

/**
 * Build an element. attrs: `class`, `text`, `on<event>` (a function), `data-*`,
 * `aria-*`, boolean attributes (true sets, false/null leaves out), and any
 * property that exists on the element (value, checked...). Children may be
 * nodes, strings, numbers, arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'text') {
      el.textContent = String(value);
    } else if (key === 'value') {
      el.value = value; // the property: textarea and select have no value attribute
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

let fieldSerial = 0;

/**
 * One labelled form control with its help text and error slot:
 *   <div class="field"><label for=id>…</label><input name=…>
 *   <p class="help">…</p><p class="field-error" data-field="<name>"></p></div>
 * opts: label, name, id?, type (text|password|number|checkbox|textarea|select),
 * value, help, options ([value, label] pairs for select), plus any input attributes.
 */
export function field(opts) {
  const { label, name, id = `f${++fieldSerial}-${name}`, type = 'text', help, options, ...rest } =
    opts;
  const errorId = `${id}-error`;
  const helpId = help ? `${id}-help` : null;
  const describedBy = [helpId, errorId].filter(Boolean).join(' ');
  let control;
  if (type === 'textarea') {
    control = h('textarea', { id, name, 'aria-describedby': describedBy, ...rest });
  } else if (type === 'select') {
    const { value, ...other } = rest;
    control = h(
      'select',
      { id, name, 'aria-describedby': describedBy, ...other },
      (options || []).map(([v, text]) => h('option', { value: v, text: text ?? v })),
    );
    if (value !== undefined && value !== null) control.value = String(value);
  } else {
    control = h('input', { id, name, type, 'aria-describedby': describedBy, ...rest });
  }
  const labelEl = h('label', { for: id, text: label });
  const parts =
    type === 'checkbox'
      ? [h('div', { class: 'check' }, control, labelEl)]
      : [labelEl, control];
  return h(
    'div',
    { class: `field field-${type}` },
    parts,
    help ? h('p', { class: 'help', id: helpId, text: help }) : null,
    h('p', { class: 'field-error', id: errorId, 'data-field': name }),
  );
}

/** The form control name a server path points at: `providers[2].model` -> `model`. */
export function fieldName(path) {
  const parts = String(path).split('.').map((p) => p.replace(/\[\d+\]$/, ''));
  for (let i = parts.length - 1; i >= 0; i--) {
    if (parts[i] && !/^\d+$/.test(parts[i])) return parts[i];
  }
  return '';
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error')) {
    el.textContent = '';
    el.removeAttribute('data-path');
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/** Put `message` in the error slot of the field `path` names; false when the form has none. */
export function showFieldError(form, path, message) {
  const slot = findSlot(form, fieldName(path));
  if (!slot) return false;
  slot.textContent = message;
  slot.setAttribute('data-path', path);
  const control = form.elements.namedItem(slot.dataset.field);
  const first = control instanceof RadioNodeList ? control[0] : control;
  if (first && first.setAttribute) {
    first.setAttribute('aria-invalid', 'true');
    first.focus();
  }
  return true;
}

function findSlot(form, name) {
  for (const el of form.querySelectorAll('.field-error[data-field]')) {
    if (el.dataset.field === name) return el;
  }
  return null;
}

/**
 * Show an API error where the user will look: next to the field a 400 names,
 * else in the slot `fallback` names (prefixed with the path), else as a toast.
 */
export function showError(err, form = null, { fallback = null } = {}) {
  if (err && err.status === 401) return; // app.js is already showing the login
  const message = err && err.message ? err.message : String(err);
  if (form && err && err.field) {
    if (showFieldError(form, err.field, message)) return;
    if (fallback && showFieldError(form, fallback, `${err.field}: ${message}`)) return;
  }
  toast(err && err.field ? `${err.field}: ${message}` : message, { error: true });
}

let toastTimer = 0;

/** A short message in the #toast live region (role=status); errors stay longer. */
export function toast(message, { error = false } = {}) {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = message;
  el.classList.toggle('error', error);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.textContent = '';
  }, error ? 8000 : 4000);
}

/** Run `fn` with `button` disabled; errors go to showError(err, form). */
export async function busy(button, fn, form = null) {
  if (button) button.disabled = true;
  try {
    return await fn();
  } catch (err) {
    showError(err, form);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/**
 * Call `fn` now and then every `ms` after it settles (never two at once); skipped
 * while the tab is hidden. Returns the stop function.
 */
export function every(ms, fn) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch {
        // the page shows its own errors; polling goes on
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** A table with a header row; `rows` are <tr> elements. */
export function table(headers, rows, attrs = {}) {
  return h(
    'table',
    attrs,
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows),
  );
}

export function fmtTime(t) {
  if (t === null || t === undefined || t === '') return '—';
  const d = typeof t === 'number' ? new Date(t < 1e12 ? t * 1000 : t) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

export function fmtBytes(n) {
  if (typeof n !== 'number') return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** A URL safe for src/href: http(s), data:, or same-origin relative; else null. */
export function safeUrl(url) {
  if (typeof url !== 'string' || !url) return null;
  if (/^(https?:|data:)/i.test(url)) return url;
  if (url.startsWith('/') && !url.startsWith('//')) return url;
  return null;
}

/** Comma-separated text -> trimmed non-empty items. */
export function splitList(text) {
  return String(text)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}
