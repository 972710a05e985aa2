// The dashboard shell: API client, login/logout, hash router and the phone menu.
//
// Contract with page modules (pages/<name>.js): each exports
//   mount(root, ctx) -> cleanup function | undefined
// `root` is a fresh element inside <main>; the router calls the cleanup (stop
// timers, close sockets) before the next page mounts or when the login shows.
// ctx = { api, upload, csrf, user }: see below.
//
// Auth: the session cookie is HttpOnly; the CSRF token from login / /api/auth/me
// is kept in memory only and sent as X-CSRF-Token on every unsafe request. Any
// 401 brings back the login screen.

import { toast } from './ui.js';

const PAGES = [
  'chat', 'providers', 'platforms', 'personas', 'plugins', 'knowledge',
  'conversations', 'actors', 'logs', 'metrics', 'settings',
];
const DEFAULT_PAGE = 'chat';
const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

const state = { csrf: null, user: null, cleanup: null, routeSerial: 0 };

export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function headersFor(method) {
  const headers = { Accept: 'application/json' };
  if (UNSAFE.has(method) && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  return headers;
}

/** JSON request; resolves to the parsed body, rejects with ApiError. */
async function api(method, path, body) {
  const headers = headersFor(method);
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'cannot reach the server');
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) throw failure(res.status, res.statusText, data, path);
  return data;
}

function failure(status, statusText, data, path) {
  const message = (data && data.error) || `${status} ${statusText || 'error'}`;
  if (status === 401 && path !== '/api/auth/login') showLogin();
  return new ApiError(status, message, (data && data.field) || null);
}

/**
 * Raw-body POST with upload progress (fetch has none): onProgress(sent, total).
 * Resolves to the parsed JSON body, rejects with ApiError.
 */
function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    for (const [k, v] of Object.entries(headersFor('POST'))) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: the status line says enough
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(failure(xhr.status, xhr.statusText, data, path));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'upload failed: network error')));
    xhr.send(file);
  });
}

const ctx = { api, upload, csrf: () => state.csrf, user: () => state.user };

// -- views -------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function unmountPage() {
  state.routeSerial += 1; // a page still loading will not mount
  if (state.cleanup) {
    try {
      state.cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  state.cleanup = null;
  $('main').replaceChildren();
}

function showLogin() {
  state.csrf = null;
  state.user = null;
  unmountPage();
  $('app-view').hidden = true;
  $('skip-link').hidden = true;
  $('login-view').hidden = false;
  $('login-password').value = '';
  $('login-password').focus();
}

function showApp(me) {
  state.csrf = me.csrf;
  state.user = me.user;
  $('whoami').textContent = me.user ? `Signed in as ${me.user}` : '';
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('skip-link').hidden = false;
  $('login-error').textContent = '';
  if (!pageFromHash()) history.replaceState(null, '', `#/${DEFAULT_PAGE}`);
  route(false);
}

async function login(event) {
  event.preventDefault();
  const button = $('login-submit');
  const error = $('login-error');
  error.textContent = '';
  button.disabled = true;
  try {
    const me = await api('POST', '/api/auth/login', {
      username: $('login-username').value,
      password: $('login-password').value,
    });
    showApp(me);
  } catch (err) {
    error.textContent = err.message;
    $('login-password').select();
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  try {
    await api('POST', '/api/auth/logout', {});
  } catch (err) {
    if (err.status !== 401) toast(err.message, { error: true });
  }
  showLogin();
}

// -- router ------------------------------------------------------------------------

function pageFromHash() {
  const m = /^#\/([a-z]+)/.exec(location.hash);
  return m && PAGES.includes(m[1]) ? m[1] : null;
}

async function route(moveFocus = true) {
  if ($('app-view').hidden) return;
  const name = pageFromHash();
  if (!name) {
    // "#main" from the skip link or an unknown page: keep what is shown
    if (!location.hash.startsWith('#/')) return;
    location.replace(`#/${DEFAULT_PAGE}`);
    return;
  }
  unmountPage();
  const serial = state.routeSerial;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  setMenu(false);
  const title = name[0].toUpperCase() + name.slice(1);
  document.title = `${title} · astr-ray`;
  let mod;
  try {
    mod = await import(`./pages/${name}.js`);
  } catch (err) {
    toast(`could not load the ${name} page: ${err.message}`, { error: true });
    return;
  }
  if (serial !== state.routeSerial) return; // navigated away meanwhile
  const root = document.createElement('div');
  root.className = `page page-${name}`;
  $('main').append(root);
  state.cleanup = mod.mount(root, ctx) || null;
  if (moveFocus) $('main').focus();
}

// -- menu (phones) -----------------------------------------------------------------

function setMenu(open) {
  $('menu-toggle').setAttribute('aria-expanded', String(open));
}

function boot() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('menu-toggle').addEventListener('click', () => {
    setMenu($('menu-toggle').getAttribute('aria-expanded') !== 'true');
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && $('menu-toggle').getAttribute('aria-expanded') === 'true') {
      setMenu(false);
      $('menu-toggle').focus();
    }
  });
  $('skip-link').addEventListener('click', (e) => {
    e.preventDefault(); // the hash is the router's
    $('main').focus();
  });
  window.addEventListener('hashchange', () => route(true));
  api('GET', '/api/auth/me').then(showApp, (err) => {
    if (err.status !== 401) {
      showLogin();
      $('login-error').textContent = err.message;
    }
  });
}

boot();
