// Knowledge bases: list and create bases; per base its documents, uploads with
// a <progress> per file (bytes sent, then the ingestion job polled until it
// ends), deletes, and a search box showing passages with their scores.
//
// Job shape: {"job": {"state": running|done|failed, "done", "total", "error"?}}.
// The knowledge API as dashboard/knowledge_api.py serves it today is read too:
// the job unwrapped ({"status": parsing|embedding|ready|unchanged|failed,
// "chunks", "embedded"}), uploads named by ?name=, documents deleted by name,
// and search by POST {"query", "k"} (tried when GET answers 404 or 405).

import { busy, clearErrors, fmtBytes, h, field, showError, table, toast } from '../ui.js';

const POLL_MS = 1000;

export function mount(root, ctx) {
  let stopped = false;
  const list = h('div', { class: 'table-wrap' });
  const detail = h('section', { id: 'kb-detail', class: 'card', hidden: true, tabindex: -1,
    'aria-labelledby': 'kb-detail-title' });
  const create = h('form', { id: 'kb-form', class: 'card', novalidate: true,
    'aria-labelledby': 'kb-form-title' },
    h('h2', { id: 'kb-form-title', text: 'New knowledge base' }),
    field({ label: 'Name', name: 'name', id: 'kb-name', required: true, autocomplete: 'off',
      help: 'letters, digits, _ . -' }),
    field({ label: 'Description', name: 'description', id: 'kb-description' }),
    h('button', { id: 'kb-create', type: 'submit', class: 'primary', text: 'Create' }));
  root.append(h('h1', { text: 'Knowledge' }), list, detail, create);

  const kbPath = (name) => `/api/kb/${encodeURIComponent(name)}`;

  async function load() {
    const data = await ctx.api('GET', '/api/kb');
    const bases = data.bases || data.kbs || [];
    list.replaceChildren(bases.length
      ? table(['Name', 'Description', 'Documents', 'Chunks', 'Actions'], bases.map((b) =>
          h('tr', { 'data-kb': b.name },
            h('td', { class: 'name', text: b.name }),
            h('td', { class: 'description', text: b.description || '' }),
            h('td', { class: 'documents', text: b.documents ?? '—' }),
            h('td', { class: 'chunks', text: b.chunks ?? '—' }),
            h('td', { class: 'actions' },
              h('button', { type: 'button', class: 'kb-open', text: 'Open',
                'aria-label': `Open ${b.name}`, onclick: () => open(b.name) }),
              h('button', { type: 'button', class: 'kb-delete danger', text: 'Delete',
                'aria-label': `Delete ${b.name}`, onclick: (e) => removeBase(b.name, e.currentTarget) })))),
          { id: 'kb-table' })
      : h('p', { class: 'empty', text: 'No knowledge bases yet.' }));
  }

  async function removeBase(name, button) {
    if (!confirm(`Delete the knowledge base "${name}" and all its documents?`)) return;
    await busy(button, async () => {
      await ctx.api('DELETE', kbPath(name));
      if (detail.dataset.kb === name) detail.hidden = true;
      toast(`Deleted ${name}`);
      await load();
    });
  }

  create.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(create);
    const name = create.elements.name.value.trim();
    await busy(create.querySelector('#kb-create'), async () => {
      await ctx.api('POST', '/api/kb', { name, description: create.elements.description.value.trim() });
      toast(`Created ${name}`);
      create.reset();
      await load();
      await open(name);
    }, create);
  });

  // -- one base ------------------------------------------------------------------

  async function open(name) {
    detail.dataset.kb = name;
    detail.hidden = false;
    const docs = h('div', { class: 'table-wrap', id: 'kb-documents' });
    const files = h('input', { id: 'kb-files', type: 'file', multiple: true, name: 'files' });
    const uploads = h('ul', { id: 'kb-uploads', class: 'uploads', 'aria-live': 'polite' });
    const uploadForm = h('form', { id: 'kb-upload-form' },
      h('label', { for: 'kb-files', text: 'Add documents (Markdown, text, HTML, PDF…)' }),
      h('div', { class: 'inline' }, files,
        h('button', { id: 'kb-upload', type: 'submit', class: 'primary', text: 'Upload' })),
      uploads);
    const results = h('ol', { id: 'kb-results', class: 'passages', 'aria-live': 'polite' });
    const searchForm = h('form', { id: 'kb-search-form', role: 'search' },
      h('label', { for: 'kb-query', text: 'Test a search' }),
      h('div', { class: 'inline' },
        h('input', { id: 'kb-query', name: 'q', type: 'search', required: true }),
        h('label', { for: 'kb-k', class: 'visually-hidden', text: 'Passages' }),
        h('input', { id: 'kb-k', name: 'k', type: 'number', min: 1, max: 50, value: '5',
          class: 'narrow' }),
        h('button', { id: 'kb-search', type: 'submit', text: 'Search' })),
      results);
    detail.replaceChildren(
      h('h2', { id: 'kb-detail-title', text: name }),
      h('h3', { text: 'Documents' }), docs, uploadForm,
      h('h3', { text: 'Search' }), searchForm);

    const refreshDocs = async () => {
      const data = await ctx.api('GET', `${kbPath(name)}/documents`);
      const rows = (data.documents || []).map((d) => {
        const key = d.id ?? d.name;
        return h('tr', { 'data-document': key },
          h('td', { class: 'name', text: d.name || d.filename || key }),
          h('td', { class: 'status', text: d.status || d.state || '' },
            d.error ? h('div', { class: 'error', text: d.error }) : null),
          h('td', { class: 'size', text: fmtBytes(d.size) }),
          h('td', { class: 'chunks', text: d.chunks ?? '—' }),
          h('td', { class: 'actions' }, h('button', { type: 'button', class: 'doc-delete danger',
            text: 'Delete', 'aria-label': `Delete ${d.name || key}`,
            onclick: (e) => removeDoc(key, e.currentTarget) })));
      });
      docs.replaceChildren(rows.length
        ? table(['Document', 'Status', 'Size', 'Chunks', 'Actions'], rows)
        : h('p', { class: 'empty', text: 'No documents yet.' }));
    };

    const removeDoc = async (key, button) => {
      if (!confirm(`Delete the document "${key}"?`)) return;
      await busy(button, async () => {
        await ctx.api('DELETE', `${kbPath(name)}/documents/${encodeURIComponent(key)}`);
        toast(`Deleted ${key}`);
        await Promise.all([refreshDocs(), load()]);
      });
    };

    uploadForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const chosen = Array.from(files.files);
      if (!chosen.length) {
        toast('Choose one or more files first', { error: true });
        return;
      }
      files.value = '';
      await Promise.all(chosen.map((file) => uploadOne(name, file, uploads)));
      await Promise.all([refreshDocs(), load()]).catch((err) => showError(err));
    });

    searchForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const q = searchForm.elements.q.value.trim();
      const k = Number(searchForm.elements.k.value) || 5;
      if (!q) return;
      await busy(searchForm.querySelector('#kb-search'), async () => {
        const data = await searchBase(name, q, k);
        const passages = data.passages || [];
        results.replaceChildren(...(passages.length ? passages.map(passage)
          : [h('li', { class: 'empty', text: 'Nothing found.' })]));
      });
    });

    detail.focus();
    await refreshDocs().catch((err) => showError(err));
  }

  /** Upload one file: its <li> shows bytes sent, then the job's progress. */
  async function uploadOne(name, file, into) {
    const bar = h('progress', { max: 1, value: 0, 'aria-label': `${file.name} progress` });
    const status = h('span', { class: 'upload-status', text: 'uploading' });
    const item = h('li', { 'data-file': file.name },
      h('span', { class: 'file-name', text: file.name }), bar, status);
    into.append(item);
    // `filename` is the dashboard contract's name, `name` the knowledge API's own
    const params = new URLSearchParams({ filename: file.name, name: file.name });
    try {
      const res = await ctx.upload(`${kbPath(name)}/documents?${params}`, file, (sent, total) => {
        bar.max = total;
        bar.value = sent;
      });
      const job = (res && res.job) || res || {};
      status.textContent = 'processing';
      bar.removeAttribute('value'); // indeterminate until the job reports numbers
      const end = await pollJob(job, bar, status);
      item.classList.add(end);
    } catch (err) {
      item.classList.add('failed');
      status.textContent = `failed: ${err.message}`;
    }
  }

  async function pollJob(job, bar, status) {
    let current = job;
    for (;;) {
      const p = progressOf(current);
      if (p.total) {
        bar.max = p.total;
        bar.value = p.done;
      }
      if (p.end === 'done') {
        bar.max = 1;
        bar.value = 1;
        status.textContent = p.label === 'unchanged' ? 'unchanged' : 'done';
        return 'done';
      }
      if (p.end === 'failed') {
        status.textContent = `failed: ${current.error || 'unknown error'}`;
        return 'failed';
      }
      status.textContent = p.total ? `${p.label} ${p.done}/${p.total}` : p.label;
      if (stopped || !current.id) return 'left';
      await new Promise((r) => setTimeout(r, POLL_MS));
      const res = await ctx.api('GET', `/api/kb/jobs/${encodeURIComponent(current.id)}`);
      current = (res && res.job) || res;
    }
  }

  /** GET ?q=&k= (the contract); POST {"query", "k"} where the GET route is missing. */
  async function searchBase(name, q, k) {
    try {
      return await ctx.api('GET', `${kbPath(name)}/search?${new URLSearchParams({ q, k: String(k) })}`);
    } catch (err) {
      if (err.status !== 405 && err.status !== 404) throw err;
      return ctx.api('POST', `${kbPath(name)}/search`, { query: q, k });
    }
  }

  load().catch((err) => showError(err));
  return () => {
    stopped = true;
  };
}

/** {end: 'done'|'failed'|null, done, total, label} from either job shape. */
function progressOf(job) {
  const state = job.state || job.status || 'running';
  let end = null;
  if (state === 'failed' || job.error) end = 'failed';
  else if (['done', 'ready', 'unchanged'].includes(state)) end = 'done';
  const total = job.total ?? job.chunks ?? 0;
  const done = job.done ?? job.embedded ?? 0;
  return { end, done, total, label: state };
}

function passage(p) {
  const score = typeof p.score === 'number' ? p.score.toFixed(3) : String(p.score ?? '');
  const source = [p.document, p.heading].filter(Boolean).join(' › ');
  return h('li', { class: 'passage' },
    h('div', { class: 'passage-head' },
      h('span', { class: 'document', text: source }),
      h('span', { class: 'score', text: `score ${score}` })),
    h('p', { class: 'text', text: p.text }));
}
