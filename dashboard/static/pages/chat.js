// Chat with the bot over the WebSocket /api/chat/ws (web chat sessions
// "dash-<user>-<name>" on the server side).
//
// Protocol: first frame {"type":"auth","csrf"}; then per message
// {"type":"message","session","text","message_id","voice"?}. The server streams
// {"type":"chunk","message_id","text"} deltas, then one {"type":"reply",...} that
// replaces the streamed text, or {"type":"error","message_id"?,"message"}.
// Each sent message gets a bot bubble keyed by its message_id.

import { h, safeUrl, toast } from '../ui.js';

export function mount(root, ctx) {
  const pending = new Map(); // message_id -> {bubble, textEl, text}
  let ws = null;
  let queue = []; // frames waiting for the socket to open
  let closed = false;

  const session = h('input', { id: 'chat-session', name: 'session', value: 'main', required: true,
    autocomplete: 'off', maxlength: 64 });
  const log = h('div', { id: 'chat-log', class: 'chat-log', role: 'log', 'aria-live': 'polite',
    'aria-label': 'Conversation' });
  const input = h('textarea', { id: 'chat-input', name: 'text', rows: 2,
    placeholder: 'Message (Enter sends, Shift+Enter for a new line)' });
  const send = h('button', { id: 'chat-send', type: 'submit', class: 'primary', text: 'Send' });
  const record = h('button', { id: 'chat-record', type: 'button', 'aria-pressed': 'false',
    text: 'Record voice', hidden: !(window.MediaRecorder && navigator.mediaDevices) });
  const form = h('form', { id: 'chat-form', class: 'chat-form' },
    h('label', { for: 'chat-input', class: 'visually-hidden', text: 'Message' }), input,
    h('div', { class: 'actions' }, record, send));

  root.append(
    h('h1', { text: 'Chat' }),
    h('div', { class: 'field inline' },
      h('label', { for: 'chat-session', text: 'Session' }), session),
    log,
    form,
  );

  function newId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return `dash-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
  }

  function bubble(kind, text) {
    const textEl = h('div', { class: 'text', text });
    const el = h('div', { class: `msg ${kind}` }, textEl);
    log.append(el);
    log.scrollTop = log.scrollHeight;
    return { bubble: el, textEl, text };
  }

  function fail(entry, message) {
    entry.bubble.classList.add('failed');
    entry.bubble.append(h('div', { class: 'error', text: message }));
    if (!entry.text) entry.textEl.remove();
  }

  function attachments(items) {
    const out = [];
    for (const a of items || []) {
      const url = safeUrl(a.url);
      if (!url) continue;
      if (a.type === 'image') out.push(h('img', { src: url, alt: a.name || 'image from the bot' }));
      else if (a.type === 'voice') out.push(h('audio', { controls: true, src: url }));
      else out.push(h('a', { href: url, download: a.name || 'file', text: a.name || 'file' }));
    }
    return out.length ? h('div', { class: 'attachments' }, out) : null;
  }

  function onFrame(frame) {
    const entry = frame.message_id ? pending.get(frame.message_id) : null;
    if (frame.type === 'chunk' && entry) {
      entry.text += frame.text || '';
      entry.textEl.textContent = entry.text;
      entry.bubble.classList.add('streaming');
    } else if (frame.type === 'reply' && entry) {
      pending.delete(frame.message_id);
      entry.bubble.classList.remove('streaming', 'waiting');
      entry.text = frame.text || '';
      entry.textEl.textContent = entry.text;
      const extra = attachments(frame.attachments);
      if (extra) entry.bubble.append(extra);
      if (frame.error) fail(entry, frame.error);
    } else if (frame.type === 'error') {
      // an error without an id is about the oldest message still waiting
      const id = frame.message_id || pending.keys().next().value;
      const target = id ? pending.get(id) : null;
      if (target) {
        pending.delete(id);
        target.bubble.classList.remove('streaming', 'waiting');
        fail(target, frame.message || 'error');
      } else {
        toast(frame.message || 'chat error', { error: true });
      }
    }
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    ws = new WebSocket(`${scheme}://${location.host}/api/chat/ws`);
    ws.addEventListener('open', () => {
      ws.send(JSON.stringify({ type: 'auth', csrf: ctx.csrf() }));
      for (const frame of queue) ws.send(frame);
      queue = [];
    });
    ws.addEventListener('message', (e) => {
      try {
        onFrame(JSON.parse(e.data));
      } catch {
        // not JSON: nothing we can show
      }
    });
    ws.addEventListener('close', (e) => {
      ws = null;
      if (closed) return;
      for (const entry of pending.values()) {
        entry.bubble.classList.remove('streaming', 'waiting');
        fail(entry, 'connection lost before the reply');
      }
      pending.clear();
      // a refused login closes the socket: ask the API, whose 401 shows the login
      if (e.code === 1008 || e.code >= 4000) ctx.api('GET', '/api/auth/me').catch(() => {});
    });
  }

  function sendFrame(frame) {
    const data = JSON.stringify(frame);
    if (!ws) connect();
    if (ws.readyState === WebSocket.OPEN) ws.send(data);
    else queue.push(data);
  }

  function submit(text, voice = null) {
    const name = session.value.trim() || 'main';
    if (!text && !voice) return;
    const mine = bubble('user', text);
    if (voice) mine.bubble.append(h('audio', { controls: true, src: voice }));
    const id = newId();
    const entry = bubble('bot waiting', '');
    pending.set(id, entry);
    const frame = { type: 'message', session: name, text, message_id: id };
    if (voice) frame.voice = voice;
    sendFrame(frame);
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    submit(text);
    input.focus();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  const stopRecorder = setupRecorder(record, (dataUrl) => {
    if (closed) return; // the page was left while recording
    const text = input.value.trim();
    input.value = '';
    submit(text, dataUrl);
  });

  connect();
  return () => {
    closed = true;
    stopRecorder();
    if (ws) ws.close();
  };
}

/** The #chat-record toggle: MediaRecorder -> data: URL -> onVoice(url). */
function setupRecorder(button, onVoice) {
  let recorder = null;
  let stream = null;

  function release() {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
  }

  button.addEventListener('click', async () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      toast(`no microphone: ${err.message}`, { error: true });
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener('dataavailable', (e) => chunks.push(e.data));
    recorder.addEventListener('stop', () => {
      recorder = null;
      release();
      button.setAttribute('aria-pressed', 'false');
      button.textContent = 'Record voice';
      const blob = new Blob(chunks, { type: chunks[0]?.type || 'audio/webm' });
      const reader = new FileReader();
      reader.addEventListener('load', () => onVoice(reader.result));
      reader.readAsDataURL(blob);
    });
    recorder.start();
    button.setAttribute('aria-pressed', 'true');
    button.textContent = 'Stop and send';
  });

  return () => {
    if (recorder && recorder.state !== 'inactive') recorder.stop();
    release();
  };
}
