// The spotml web console: a single-page app over the same /api/v1 the CLI
// uses, with the same bearer token. Plain ES module, no framework and no build
// step; the only library is uPlot (window.uPlot, assets/vendor), for charts.
//
// Data flow: one fetch('/api/v1/watch') stream (server-sent events, read with
// a ReadableStream because EventSource cannot send the Authorization header)
// keeps `store` current; pages render from `store` and re-render the parts a
// stream message changed. Pages that need more (a job's tasks, a service's
// history, the cost history) fetch it themselves.

const API = '/api/v1';
const TOKEN_KEY = 'spotml.token';
const CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
  'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
const ENDED_NODE = new Set(['preempted', 'deallocated', 'lost', 'terminated']);
const PALETTE = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed',
  '#0891b2', '#65a30d', '#dc2626', '#4b5563', '#c026d3'];

// ---------------------------------------------------------------- state

const session = { token: sessionStorage.getItem(TOKEN_KEY) || '' };

const store = {
  info: {},          // GET /info; {} until known
  fleet: null,       // {time, pools, nodes}
  jobs: null,        // []Job
  services: null,    // []Service
  events: [],        // []Event, oldest first
  eventIds: new Set(),
  cost: null,        // cost.Summary
  batches: null,     // []BatchInference (the stream's "batches")
  offset: 0,         // server clock − browser clock, ms
};

let page = null;     // the mounted page: {el, update(kind), destroy()}
let watcher = null;  // AbortController of the live stream

// serverNow is the control plane's idea of now, so a notice countdown is
// right even when the browser's clock is not.
const serverNow = () => Date.now() + store.offset;

// ---------------------------------------------------------------- DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);

// h builds an element: h('a', {href: '#/x', class: 'c', onclick: f}, 'text', child).
// Text is always set as text, never parsed as HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function announce(msg) {
  const region = $('#announce');
  region.append(h('p', null, msg));
  while (region.childNodes.length > 3) region.firstChild.remove();
}

// table makes an accessible table in a scrolling wrapper. cols are labels or
// {label, cls}.
function table(caption, cols, { captionVisible = false } = {}) {
  const tbody = h('tbody');
  const thead = h('thead', null, h('tr', null, cols.map((c) => {
    const col = typeof c === 'string' ? { label: c } : c;
    return h('th', { scope: 'col', class: col.cls }, col.label);
  })));
  const t = h('table', null,
    h('caption', { class: captionVisible ? null : 'sr-only' }, caption), thead, tbody);
  return { wrap: h('div', { class: 'table-wrap' }, t), table: t, thead, tbody };
}

// syncRows makes tbody hold one row per item, in order, rebuilding only the
// rows whose signature changed, so that a live update neither loses the
// keyboard focus nor the text a user selected in an unchanged row.
function syncRows(tbody, items, keyOf, sigOf, build) {
  const old = new Map();
  for (const r of [...tbody.rows]) if (r.dataset.key != null) old.set(r.dataset.key, r);
    else r.remove();
  let prev = null;
  for (const it of items) {
    const key = String(keyOf(it));
    const sig = sigOf(it);
    let row = old.get(key);
    if (!row || row.dataset.sig !== sig) {
      const fresh = build(it);
      fresh.dataset.key = key;
      fresh.dataset.sig = sig;
      if (row) {
        const focusAt = row.contains(document.activeElement)
          ? [...row.querySelectorAll('a,button,input,select')].indexOf(document.activeElement) : -1;
        row.replaceWith(fresh);
        if (focusAt >= 0) fresh.querySelectorAll('a,button,input,select')[focusAt]?.focus();
      }
      row = fresh;
    }
    old.delete(key);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== row) tbody.insertBefore(row, want);
    prev = row;
  }
  for (const r of old.values()) r.remove();
}

function badge(text, cls) { return h('span', { class: `badge ${cls || ''}` }, text); }
function priorityBadge(p) {
  return p === 'spot' ? badge('spot', 'spot') : badge('on-demand', 'ondemand');
}
function stateBadge(s) { return badge(s || '—', `state state-${s}`); }

function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, err instanceof Error ? err.message : String(err));
}

// ---------------------------------------------------------------- formatting

const isZero = (t) => !t || t.startsWith('0001-01-01');
const ms = (t) => (isZero(t) ? 0 : Date.parse(t));

// fmtUSD keeps cents, and up to four decimals for the small sums a spot
// price or a few node-minutes come to: $0.06, $0.019, $0.0027, $12.40.
function fmtUSD(v) {
  if (!Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 1) return `$${v.toFixed(2)}`;
  // A small local fleet spends fractions of a cent: keep two significant
  // digits rather than show $0.00.
  if (v !== 0 && Math.abs(v) < 0.001) return `$${Number(v.toPrecision(2)).toFixed(Math.min(8, 1 - Math.floor(Math.log10(Math.abs(v)))))}`;
  return `$${v.toFixed(4).replace(/(\.\d\d\d*?)0+$/, '$1')}`;
}
function fmtNum(v, d = 1) { return Number.isFinite(v) ? v.toFixed(d) : '—'; }
function fmtDur(sec) {
  if (!Number.isFinite(sec) || sec < 0) return '—';
  sec = Math.round(sec);
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} m ${String(sec % 60).padStart(2, '0')} s`;
  const hrs = Math.floor(sec / 3600);
  return `${hrs} h ${String(Math.floor((sec % 3600) / 60)).padStart(2, '0')} m`;
}
function fmtAgo(t) { const m = ms(t); return m ? `${fmtDur((serverNow() - m) / 1000)} ago` : '—'; }
function fmtTime(t) {
  const m = ms(t);
  if (!m) return '—';
  const d = new Date(m);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}
function timeEl(t) {
  return isZero(t) ? '—' : h('time', { datetime: t, title: new Date(ms(t)).toString() }, fmtTime(t));
}
function span(start, end) {
  const a = ms(start);
  if (!a) return '—';
  return fmtDur(((ms(end) || serverNow()) - a) / 1000);
}
function noticeText(deadline) {
  const left = Math.ceil((deadline - serverNow()) / 1000);
  return left > 0 ? `notice · ${fmtDur(left)} left` : 'notice · due now';
}
const enc = encodeURIComponent;
const blobURLPath = (key) => key.split('/').map(enc).join('/');

// ---------------------------------------------------------------- API

class HTTPError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  headers.set('Authorization', `Bearer ${session.token}`);
  const res = await fetch(API + path, { ...opts, headers });
  if (res.status === 401) {
    logout('The control plane refused the token (401). Log in again with the token from DATA_DIR/token.');
    throw new HTTPError(401, 'unauthorized');
  }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const body = await res.text(); msg = JSON.parse(body).error || body || msg; } catch { /* keep the status */ }
    throw new HTTPError(res.status, msg);
  }
  return res;
}
const getJSON = async (path) => (await api(path)).json();

async function download(key) {
  const res = await api(`/blobs/${blobURLPath(key)}`);
  const url = URL.createObjectURL(await res.blob());
  const a = h('a', { href: url, download: key.split('/').pop() || 'download' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

function saveText(name, text, type = 'application/json') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

// ---------------------------------------------------------------- live stream

function setLive(state, label) {
  const el = $('#live');
  el.dataset.state = state;
  $('.label', el).textContent = label;
}

// watch reads /watch until logout, reconnecting with backoff. A control plane
// without /watch (older than the console) is polled instead.
async function watch(ctrl) {
  let backoff = 500;
  while (!ctrl.signal.aborted) {
    const attempt = new AbortController();
    const abort = () => attempt.abort();
    ctrl.signal.addEventListener('abort', abort);
    let idle;
    const kick = () => { clearTimeout(idle); idle = setTimeout(abort, 45000); };
    try {
      kick();
      const res = await fetch(`${API}/watch`, {
        headers: { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' },
        signal: attempt.signal, cache: 'no-store',
      });
      if (res.status === 401) { logout('The control plane refused the token (401). Log in again.'); return; }
      if (res.status === 404) { clearTimeout(idle); await poll(ctrl); return; }
      if (!res.ok || !res.body) throw new Error(`watch: ${res.status}`);
      setLive('live', 'live');
      backoff = 500;
      await readSSE(res.body, (name, data) => { kick(); if (name) receive(name, data); });
    } catch (e) {
      if (ctrl.signal.aborted) return;
      console.debug('watch:', e);
    } finally {
      clearTimeout(idle);
      ctrl.signal.removeEventListener('abort', abort);
    }
    if (ctrl.signal.aborted) return;
    setLive('reconnecting', 'reconnecting');
    await sleep(backoff, ctrl.signal);
    backoff = Math.min(backoff * 2, 15000);
  }
}

// readSSE parses a text/event-stream body, calling on(event, data) per event
// and on('', '') per comment (a keep-alive).
async function readSSE(body, on) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) on(event || 'message', data.join('\n'));
        event = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) { on('', ''); continue; }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') event = val;
      else if (field === 'data') data.push(val);
    }
  }
}

function sleep(t, signal) {
  return new Promise((resolve) => {
    const id = setTimeout(resolve, t);
    signal?.addEventListener('abort', () => { clearTimeout(id); resolve(); }, { once: true });
  });
}

// poll stands in for /watch on a control plane that lacks it.
async function poll(ctrl) {
  let first = true;
  while (!ctrl.signal.aborted) {
    try {
      const lastID = store.events.length ? store.events[store.events.length - 1].id : 0;
      const [pools, nodes, jobs, services, events, costRes] = await Promise.all([
        api('/pools'), getJSON('/nodes?all=true'), getJSON('/jobs'), getJSON('/services'),
        getJSON(first ? '/events?limit=500' : `/events?after=${lastID}&limit=500`), getJSON('/cost'),
      ]);
      const time = new Date(Date.parse(pools.headers.get('Date')) || Date.now()).toISOString();
      const recent = serverNow() - 15 * 60 * 1000;
      receive('fleet', JSON.stringify({
        time, pools: await pools.json(),
        nodes: nodes.filter((n) => !ENDED_NODE.has(n.state) || ms(n.stateAt) > recent),
      }));
      receive('jobs', JSON.stringify(jobs));
      receive('services', JSON.stringify(services));
      receive('events', JSON.stringify(events));
      receive('cost', JSON.stringify(costRes));
      setLive('reconnecting', 'polling');
      first = false;
    } catch (e) {
      if (e.status === 401) return;
      setLive('reconnecting', 'reconnecting');
    }
    await sleep(3000, ctrl.signal);
  }
}

function receive(name, raw) {
  let data;
  try { data = JSON.parse(raw); } catch { console.warn('watch: bad JSON in', name); return; }
  switch (name) {
    case 'fleet': {
      const t = Date.parse(data.time);
      if (t) store.offset = t - Date.now();
      const before = new Map((store.fleet?.nodes || []).map((n) => [n.name, n]));
      for (const n of data.nodes || []) {
        const was = before.get(n.name);
        if (!isZero(n.noticeDeadline) && was && isZero(was.noticeDeadline)) {
          announce(`Node ${n.name} got an eviction notice: ${noticeText(ms(n.noticeDeadline)).replace('notice · ', '')}.`);
        }
        if (was && !ENDED_NODE.has(was.state) && ENDED_NODE.has(n.state)) {
          announce(`Node ${n.name} is ${n.state}${n.reason ? ` (${n.reason})` : ''}.`);
        }
      }
      store.fleet = { time: data.time, pools: data.pools || [], nodes: data.nodes || [] };
      break;
    }
    case 'jobs': store.jobs = data || []; break;
    case 'services': store.services = data || []; break;
    case 'events': addEvents(data || []); break;
    case 'cost': store.cost = data; break;
    case 'batches': store.batches = data || []; break;
    default: return;
  }
  page?.update(name);
}

function addEvents(list) {
  let added = false;
  for (const e of list) {
    if (store.eventIds.has(e.id)) continue;
    store.eventIds.add(e.id);
    store.events.push(e);
    added = true;
  }
  if (!added) return;
  store.events.sort((a, b) => a.id - b.id);
  if (store.events.length > 5000) {
    for (const e of store.events.splice(0, store.events.length - 5000)) store.eventIds.delete(e.id);
  }
}

// ---------------------------------------------------------------- session

async function login(token) {
  const res = await fetch(`${API}/info`, { headers: { Authorization: `Bearer ${token}` } });
  if (res.status === 401) throw new Error('That token was refused. Use the one `spotml up` printed (also in DATA_DIR/token).');
  let info = {};
  if (res.ok) info = await res.json();
  else if (res.status === 404) {
    // A control plane without /info: check the token on another endpoint.
    const r2 = await fetch(`${API}/pools`, { headers: { Authorization: `Bearer ${token}` } });
    if (r2.status === 401) throw new Error('That token was refused.');
    if (!r2.ok) throw new Error(`The control plane answered ${r2.status}.`);
    info = { predict: true };
  } else throw new Error(`The control plane answered ${res.status} ${res.statusText}.`);
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  start(info);
}

function start(info) {
  store.info = info || {};
  const t = Date.parse(store.info.time);
  if (t) store.offset = t - Date.now();
  const v = String(store.info.version || '');
  $('#version').textContent = /^\d/.test(v) ? `v${v}` : v;
  // Several control-plane instances share one store: which one leads
  // (runs the reconcilers), at which lease term, and which one answers.
  const leader = $('#leader');
  leader.hidden = !store.info.leader;
  leader.textContent = leader.hidden ? '' : `leader ${store.info.leader} · term ${store.info.term}`;
  leader.title = leader.hidden ? '' : `This console is served by instance ${store.info.instance || '?'}.`;
  const role = $('#role');
  role.hidden = store.info.role !== 'viewer';
  role.textContent = role.hidden ? '' : 'viewer · read-only';
  role.title = role.hidden ? '' : `Token ${store.info.tokenName || ''} can read everything and change nothing.`;
  $('#top').hidden = false;
  watcher?.abort();
  watcher = new AbortController();
  watch(watcher);
}

function logout(message) {
  watcher?.abort();
  watcher = null;
  session.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(store, {
    info: {}, fleet: null, jobs: null, services: null, events: [], eventIds: new Set(), cost: null, batches: null,
  });
  $('#top').hidden = true;
  setLive('reconnecting', 'offline');
  showLogin(message);
}

function showLogin(message) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', required: true, autocomplete: 'current-password',
    spellcheck: 'false', 'aria-describedby': 'token-hint login-error',
  });
  const err = h('p', { id: 'login-error', class: 'error', role: 'alert' }, message || '');
  const button = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { id: 'login', class: 'login' },
    h('h1', { tabindex: '-1' }, 'spotml console'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p', { id: 'token-hint', class: 'hint' },
      'The token ', h('code', null, 'spotml up'), ' printed (also in ', h('code', null, 'DATA_DIR/token'),
      '; the CLI reads it from ', h('code', null, 'SPOTML_TOKEN'),
      '). It is kept in this tab\'s session storage only and sent with every API request.'),
    err, button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    err.textContent = '';
    try {
      await login(input.value.trim());
      if (!location.hash.startsWith('#/') || location.hash === '#/login') location.hash = '#/fleet';
      else route();
    } catch (e) {
      err.textContent = e.message;
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  mount({ el: form, update() {}, destroy() {} }, 'login');
  input.focus();
}

// ---------------------------------------------------------------- router

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || '') };
}

let firstRoute = true;

function route() {
  if (!session.token) { showLogin(); return; }
  const { parts, query } = parseHash();
  const [section, name] = parts;
  let p;
  let kind = section;
  switch (section) {
    case 'jobs': p = name ? jobPage(name) : jobsPage(); kind = name ? 'job' : 'jobs'; break;
    case 'services': p = name ? servicePage(name) : servicesPage(); kind = name ? 'service' : 'services'; break;
    case 'events': p = eventsPage(query); break;
    case 'cost': p = costPage(); break;
    case 'try': p = tryPage(); break;
    case 'plan': p = planPage(); break;
    case 'batchinferences': p = name ? batchPage(name) : batchesPage(); kind = name ? 'batchinference' : 'batchinferences'; break;
    default: p = fleetPage(); kind = 'fleet'; break;
  }
  mount(p, kind);
  for (const a of document.querySelectorAll('nav a')) {
    const target = a.getAttribute('href').slice(2);
    if (target === (section || 'fleet')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!firstRoute) $('h1', p.el)?.focus();
  firstRoute = false;
}

function mount(p, kind) {
  page?.destroy();
  page = p;
  const main = $('#main');
  main.dataset.page = kind;
  main.replaceChildren(p.el);
  const h1 = $('h1', p.el);
  if (h1) {
    h1.setAttribute('tabindex', '-1');
    document.title = kind === 'login' ? 'spotml console' : `${h1.textContent} · spotml`;
  }
  p.update();
}

// scope collects a page's timers and observers so destroy() ends them all.
function scope() {
  const timers = [];
  const cleanups = [];
  return {
    every(t, fn) { timers.push(setInterval(fn, t)); },
    onDestroy(fn) { cleanups.push(fn); },
    destroy() { timers.forEach(clearInterval); cleanups.forEach((f) => f()); },
  };
}

function pageShell(title, ...children) {
  return h('section', { class: 'page' }, h('h1', null, title), children);
}

function loading(what) { return h('p', { class: 'muted' }, `Waiting for ${what}…`); }

// ---------------------------------------------------------------- Fleet

function fleetPage() {
  const sc = scope();
  const cards = h('div', { class: 'cards' });
  const pools = table('Pools', ['Pool', 'Priority', 'Instance type', 'Nodes',
    { label: 'Min–max', cls: 'num' }, { label: 'Price /h', cls: 'num' }, { label: 'On-demand /h', cls: 'num' }]);
  const nodes = table('Nodes', ['Node', 'Pool', 'Priority', 'Zone', 'State', 'Work',
    { label: 'Price /h', cls: 'num' }, 'Age', 'Notice or reason', { label: 'Actions', cls: 'sr-only-th' }]);
  const showEnded = h('input', { type: 'checkbox', id: 'show-ended', checked: true });
  showEnded.addEventListener('change', () => render());
  const status = h('div');
  const el = pageShell('Fleet', status, cards,
    h('h2', null, 'Pools'), pools.wrap,
    h('div', { class: 'heading-row' }, h('h2', null, 'Nodes'),
      h('label', { class: 'inline' }, showEnded, ' show nodes that ended in the last 15 minutes')),
    nodes.wrap,
    h('p', { class: 'legend muted' }, badge('spot', 'spot'), ' can be taken back at short notice; ',
      badge('on-demand', 'ondemand'), ' is never evicted. Greyed rows have ended.'));

  // Tick the countdowns without re-rendering rows.
  sc.every(1000, () => {
    for (const n of el.querySelectorAll('.notice[data-deadline]')) {
      n.textContent = noticeText(Number(n.dataset.deadline));
    }
    for (const n of el.querySelectorAll('[data-since]')) n.textContent = fmtDur((serverNow() - Number(n.dataset.since)) / 1000);
  });

  async function evict(node) {
    if (!confirm(`Evict node ${node.name}? It gets a spot eviction notice (the pool's notice period) and then goes away; its work is requeued.`)) return;
    try {
      await api(`/nodes/${enc(node.name)}/evict`, { method: 'POST' });
      announce(`Eviction of ${node.name} requested.`);
    } catch (e) {
      if (e.status !== 401) alert(`Evict ${node.name}: ${e.message}`);
    }
  }

  function render() {
    const f = store.fleet;
    if (!f) { status.replaceChildren(loading('the fleet')); return; }
    status.replaceChildren();
    const live = f.nodes.filter((n) => !ENDED_NODE.has(n.state));
    const spot = live.filter((n) => n.priority === 'spot');
    const od = live.filter((n) => n.priority !== 'spot');
    const burn = live.reduce((s, n) => s + (n.pricePerHour || 0), 0);
    const burnOD = live.reduce((s, n) => s + (n.onDemandPricePerHour || n.pricePerHour || 0), 0);
    const noticed = live.filter((n) => !isZero(n.noticeDeadline)).length;
    cards.replaceChildren(
      card('Spot nodes', String(spot.length), 'spot', `${spot.filter((n) => n.state === 'ready').length} ready`),
      card('On-demand nodes', String(od.length), 'ondemand', `${od.filter((n) => n.state === 'ready').length} ready`),
      card('Running now', `${fmtUSD(burn)}/h`, '', `${fmtUSD(burnOD)}/h on demand`),
      card('Eviction notices', String(noticed), noticed ? 'warn' : '', noticed ? 'nodes draining' : 'none pending'));

    const byPool = new Map();
    for (const n of live) {
      if (!byPool.has(n.pool)) byPool.set(n.pool, []);
      byPool.get(n.pool).push(n);
    }
    const poolRows = [...f.pools].sort((a, b) => a.pool.metadata.name.localeCompare(b.pool.metadata.name));
    syncRows(pools.tbody, poolRows, (p) => p.pool.metadata.name,
      (p) => JSON.stringify([p.generation, byPool.get(p.pool.metadata.name)?.map((n) => [n.state, n.pricePerHour])]),
      (p) => {
        const s = p.pool.spec;
        const ns = byPool.get(p.pool.metadata.name) || [];
        const states = {};
        for (const n of ns) states[n.state] = (states[n.state] || 0) + 1;
        const price = s.pricePerHour ?? ns[0]?.pricePerHour;
        const odPrice = s.onDemandPricePerHour ?? ns[0]?.onDemandPricePerHour ?? (s.priority === 'spot' ? undefined : price);
        return h('tr', { 'data-pool': p.pool.metadata.name, 'data-priority': s.priority, class: `prio-${s.priority}` },
          h('th', { scope: 'row' }, p.pool.metadata.name),
          h('td', null, priorityBadge(s.priority)),
          h('td', { class: 'wrap' }, s.instanceType, s.zones?.length ? h('span', { class: 'muted' }, ` · zones ${s.zones.join(', ')}`) : ''),
          h('td', null, ns.length ? Object.entries(states).map(([k, v]) => `${v} ${k}`).join(', ') : h('span', { class: 'muted' }, 'none')),
          h('td', { class: 'num' }, `${s.min}–${s.max}`),
          h('td', { class: 'num' }, price != null ? fmtUSD(price) : '—'),
          h('td', { class: 'num' }, odPrice != null ? fmtUSD(odPrice) : '—'));
      });

    let list = f.nodes.filter((n) => showEnded.checked || !ENDED_NODE.has(n.state));
    list = list.sort((a, b) => {
      const ea = ENDED_NODE.has(a.state);
      const eb = ENDED_NODE.has(b.state);
      if (ea !== eb) return ea ? 1 : -1;
      if (ea) return ms(b.stateAt) - ms(a.stateAt);
      return a.pool.localeCompare(b.pool) || a.name.localeCompare(b.name);
    });
    // A viewer's token is read-only: it gets no button the API would refuse.
    const canEvict = !!store.info.evict && store.info.role !== 'viewer';
    syncRows(nodes.tbody, list, (n) => n.name,
      (n) => JSON.stringify([n.state, n.noticeDeadline, n.reason, n.tasks, n.replicas, n.zone, n.host, n.pricePerHour, canEvict]),
      (n) => nodeRow(n, canEvict, evict));
    if (!list.length) {
      nodes.tbody.append(h('tr', null, h('td', { colspan: 10, class: 'muted' }, 'No nodes. Apply a pool with min > 0, or submit work.')));
    }
  }

  return {
    el,
    update(kind) { if (!kind || kind === 'fleet') render(); },
    destroy: sc.destroy,
  };
}

function card(label, value, cls, sub) {
  return h('div', { class: `card ${cls}` },
    h('div', { class: 'card-label' }, label), h('div', { class: 'card-value' }, value),
    sub ? h('div', { class: 'card-sub muted' }, sub) : null);
}

function nodeRow(n, canEvict, evict) {
  const ended = ENDED_NODE.has(n.state);
  const hasNotice = !isZero(n.noticeDeadline);
  let noticeCell = h('span', { class: 'muted' }, '—');
  if (ended) noticeCell = h('span', { class: 'reason' }, `${n.state}${n.reason ? `: ${n.reason}` : ''} · ${fmtAgo(n.stateAt)}`);
  else if (hasNotice) {
    const d = ms(n.noticeDeadline);
    noticeCell = h('span', { class: 'notice', 'data-deadline': d }, noticeText(d));
  } else if (n.reason) noticeCell = h('span', { class: 'muted' }, n.reason);
  const work = [];
  if (n.tasks) work.push(`${n.tasks} task${n.tasks > 1 ? 's' : ''}`);
  if (n.replicas) work.push(`${n.replicas} replica${n.replicas > 1 ? 's' : ''}`);
  const created = ms(n.createdAt);
  return h('tr', {
    'data-node': n.name, 'data-priority': n.priority, 'data-state': n.state,
    class: `prio-${n.priority}${ended ? ' ended' : ''}${hasNotice && !ended ? ' noticed' : ''}`,
  },
  h('th', { scope: 'row' }, h('a', { href: `#/events?object=node/${enc(n.name)}`, title: `Events of ${n.name}` }, n.name)),
  h('td', null, n.pool),
  h('td', null, priorityBadge(n.priority)),
  // host: the platform's machine under the node, where that is not the node itself (a Kubernetes node).
  h('td', null, n.zone || '—', n.host ? h('span', { class: 'muted', title: 'runs on this machine of the platform' }, ` · on ${n.host}`) : ''),
  h('td', null, stateBadge(n.state)),
  h('td', null, work.join(', ') || h('span', { class: 'muted' }, 'idle')),
  h('td', { class: 'num' }, fmtUSD(n.pricePerHour)),
  h('td', null, ended ? fmtDur((ms(n.stateAt) - created) / 1000) : h('span', { 'data-since': created }, fmtDur((serverNow() - created) / 1000))),
  h('td', { class: ended ? 'wrap' : null }, noticeCell),
  h('td', { class: 'actions' },
    canEvict && n.priority === 'spot' && !ended && !hasNotice
      ? h('button', { type: 'button', class: 'small danger', 'data-evict': n.name, 'aria-label': `Evict node ${n.name}`, onclick: () => evict(n) }, 'Evict…')
      : ''));
}

// ---------------------------------------------------------------- Jobs

function jobCounts(j) {
  const c = j.counts || {};
  const total = Object.values(c).reduce((a, b) => a + b, 0);
  return { total, done: (c.succeeded || 0) + (c.failed || 0), running: c.running || 0, failed: c.failed || 0, pending: c.pending || 0 };
}

function progressCell(done, total) {
  return h('div', { class: 'progress' },
    h('progress', { max: Math.max(total, 1), value: done, 'aria-label': `${done} of ${total} tasks done` }),
    h('span', null, `${done}/${total}`));
}

// taskProgress shows what a task last reported through
// SPOTML_PROGRESS_FILE: a bar, the percentage and its message.
function taskProgress(t) {
  if (t.progress == null) return t.state === 'succeeded' ? '100 %' : '—';
  const pct = Math.round(t.progress * 100);
  return h('div', { class: 'progress', title: t.progressAt ? `reported ${fmtTime(t.progressAt)}` : null },
    h('progress', { max: 100, value: pct, 'aria-label': `task progress ${pct} %` }),
    h('span', null, `${pct} %`),
    t.progressMessage ? h('span', { class: 'muted progress-msg' }, t.progressMessage) : null);
}

function jobsPage() {
  const t = table('Jobs', ['Job', 'State', 'Progress', { label: 'Running', cls: 'num' }, { label: 'Failed', cls: 'num' },
    { label: 'Evictions', cls: 'num' }, 'Submitted', 'Duration']);
  const status = h('div');
  const el = pageShell('Jobs', status, t.wrap);
  const sc = scope();
  sc.every(10000, () => render()); // durations of running jobs
  function render() {
    if (!store.jobs) { status.replaceChildren(loading('jobs')); return; }
    status.replaceChildren(store.jobs.length ? '' : h('p', { class: 'muted' }, 'No jobs yet. Submit one with spotml apply -f job.yaml.'));
    const jobs = [...store.jobs].sort((a, b) => ms(b.submittedAt) - ms(a.submittedAt));
    syncRows(t.tbody, jobs, (j) => j.job.metadata.name,
      (j) => JSON.stringify([j.uid, j.state, j.counts, j.evictions, j.finishedAt, Math.floor(serverNow() / 10000)]),
      (j) => {
        const name = j.job.metadata.name;
        const c = jobCounts(j);
        return h('tr', { 'data-job': name },
          h('th', { scope: 'row' }, h('a', { href: `#/jobs/${enc(name)}` }, name)),
          h('td', null, stateBadge(j.state)),
          h('td', null, progressCell(c.done, c.total)),
          h('td', { class: 'num' }, c.running),
          h('td', { class: 'num' }, c.failed),
          h('td', { class: 'num' }, j.evictions || 0),
          h('td', null, timeEl(j.submittedAt)),
          h('td', null, span(j.submittedAt, j.finishedAt)));
      });
  }
  return { el, update(kind) { if (!kind || kind === 'jobs') render(); }, destroy: sc.destroy };
}

function jobPage(name) {
  const sc = scope();
  let job = null;
  let lastSig = '';
  let selected = null; // task name whose logs are shown
  let stream = 'stdout';
  const header = h('div', { class: 'job-head' });
  const status = h('div');
  const tasks = table('Tasks', ['Task', 'State', { label: 'Attempt', cls: 'num' }, 'Node', 'Progress',
    { label: 'Evictions', cls: 'num' }, { label: 'Failures', cls: 'num' }, { label: 'Exit', cls: 'num' },
    'Duration', 'Message', { label: 'Logs', cls: 'sr-only-th' }]);

  const logTitle = h('span', { class: 'muted' }, 'No task chosen: use a task\'s Logs button.');
  const streamButtons = ['stdout', 'stderr'].map((s) => h('button', {
    type: 'button', class: 'small toggle', 'data-stream': s, 'aria-pressed': String(s === stream),
    onclick: () => { stream = s; loadLogs(); },
  }, s));
  const attemptSel = h('select', { id: 'logs-attempt', onchange: () => loadLogs() });
  const follow = h('input', { type: 'checkbox', id: 'logs-follow', checked: true });
  const logs = h('pre', { id: 'logs', tabindex: '0', 'aria-label': 'Task log output', class: 'logs' }, '');
  const logsSection = h('section', { 'aria-labelledby': 'logs-h', class: 'panel' },
    h('div', { class: 'heading-row' }, h('h2', { id: 'logs-h' }, 'Logs'), logTitle),
    h('div', { class: 'toolbar' },
      h('div', { role: 'group', 'aria-label': 'Stream', class: 'seg' }, streamButtons),
      h('label', { for: 'logs-attempt' }, 'Attempt'), attemptSel,
      h('button', { type: 'button', class: 'small', onclick: () => loadLogs() }, 'Refresh'),
      h('label', { class: 'inline' }, follow, ' follow while running')),
    logs);
  const outputs = h('div');
  const outputsSection = h('section', { 'aria-labelledby': 'out-h', class: 'panel' },
    h('div', { class: 'heading-row' }, h('h2', { id: 'out-h' }, 'Output files'),
      h('button', { type: 'button', class: 'small', onclick: () => loadOutputs() }, 'Refresh')),
    outputs);
  const el = h('section', { class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / '),
    h('h1', null, `Job ${name}`), status, header,
    h('h2', null, 'Tasks'), tasks.wrap, logsSection, outputsSection);

  async function load() {
    try {
      job = await getJSON(`/jobs/${enc(name)}`);
      lastSig = JSON.stringify([job.uid, job.state, job.counts, job.evictions]);
      status.replaceChildren();
      render();
    } catch (e) {
      if (e.status !== 401) status.replaceChildren(errorBox(e.status === 404 ? `No job named ${name}.` : e));
    }
  }

  function render() {
    if (!job) return;
    const c = jobCounts(job);
    header.replaceChildren(h('div', { class: 'cards' },
      card('State', job.state, `state-${job.state}`, `submitted ${fmtTime(job.submittedAt)}`),
      card('Progress', `${c.done}/${c.total}`, '', `${c.running} running, ${c.pending} pending, ${c.failed} failed`),
      card('Evictions', String(job.evictions || 0), job.evictions ? 'warn' : '', 'tasks requeued after a spot eviction'),
      card('Duration', span(job.submittedAt, job.finishedAt), '', isZero(job.finishedAt) ? 'so far' : `finished ${fmtTime(job.finishedAt)}`)));
    syncRows(tasks.tbody, job.tasks || [], (t) => t.name,
      (t) => JSON.stringify([t.state, t.attempt, t.node, t.progress, t.progressMessage, t.evictions, t.failures, t.exitCode, t.message, t.finishedAt, selected === t.name]),
      (t) => h('tr', { 'data-task': t.name, class: selected === t.name ? 'selected' : null },
        h('th', { scope: 'row' }, t.name),
        h('td', null, stateBadge(t.state)),
        h('td', { class: 'num' }, t.attempt),
        h('td', null, t.node || '—'),
        h('td', { class: 'task-progress' }, taskProgress(t)),
        h('td', { class: 'num' }, t.evictions),
        h('td', { class: 'num' }, t.failures),
        h('td', { class: 'num' }, isZero(t.finishedAt) ? '—' : t.exitCode),
        h('td', null, span(t.startedAt, t.finishedAt)),
        h('td', { class: 'message' }, t.message || ''),
        h('td', null, h('button', {
          type: 'button', class: 'small', 'data-logs': t.name, 'aria-label': `Logs of task ${t.name}`,
          onclick: () => { selected = t.name; stream = 'stdout'; render(); loadLogs(); logsSection.scrollIntoView({ block: 'nearest' }); },
        }, 'Logs'))));
    fillAttempts();
  }

  function fillAttempts() {
    const t = job?.tasks?.find((x) => x.name === selected);
    const want = [h('option', { value: '' }, 'latest')];
    for (const a of t?.attempts || []) {
      want.push(h('option', { value: a.attempt }, `#${a.attempt}${a.node ? ` on ${a.node}` : ''}${a.outcome ? ` (${a.outcome})` : ''}`));
    }
    const sig = want.map((o) => o.textContent).join('|');
    if (attemptSel.dataset.sig === sig) return;
    const keep = attemptSel.value;
    attemptSel.replaceChildren(...want);
    attemptSel.value = [...attemptSel.options].some((o) => o.value === keep) ? keep : '';
    attemptSel.dataset.sig = sig;
  }

  let logSeq = 0;
  async function loadLogs() {
    for (const b of streamButtons) b.setAttribute('aria-pressed', String(b.dataset.stream === stream));
    if (!selected) return;
    logTitle.textContent = `task ${selected}, ${stream}`;
    const seq = ++logSeq;
    const q = new URLSearchParams({ stream });
    if (attemptSel.value) q.set('attempt', attemptSel.value);
    try {
      const res = await api(`/jobs/${enc(name)}/tasks/${enc(selected)}/logs?${q}`);
      let text = await res.text();
      if (seq !== logSeq) return;
      const max = 256 * 1024;
      if (text.length > max) text = `… (${text.length - max} earlier characters not shown)\n${text.slice(-max)}`;
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      text ||= `(no ${stream} output${attemptSel.value ? ` from attempt ${attemptSel.value}` : ' yet'})`;
      if (logs.textContent !== text) {
        logs.textContent = text;
        if (atEnd) logs.scrollTop = logs.scrollHeight;
      }
    } catch (e) {
      if (seq === logSeq && e.status !== 401) logs.textContent = `Could not load the ${stream} log: ${e.message}`;
    }
  }

  async function loadOutputs() {
    if (!job) return;
    const dests = new Map(); // destination → [task: pattern]
    for (const t of job.tasks || []) {
      for (const of of t.spec?.outputFiles || []) {
        if (of.destination.includes('://')) continue;
        if (!dests.has(of.destination)) dests.set(of.destination, []);
        dests.get(of.destination).push(`${t.name}: ${of.pattern}`);
      }
    }
    if (!dests.size) { outputs.replaceChildren(h('p', { class: 'muted' }, 'This job declares no output files in the default store.')); return; }
    const parts = await Promise.all([...dests].map(async ([dest, from]) => {
      let list;
      try {
        list = await getJSON(`/blobs?prefix=${enc(dest)}`);
      } catch (e) {
        return h('div', null, h('h3', null, dest), errorBox(e));
      }
      const objs = list
        .sort((a, b) => a.key.localeCompare(b.key));
      return h('div', { class: 'outputs' },
        h('h3', null, h('code', null, dest), h('span', { class: 'muted' }, ` from ${from.join(', ')}`)),
        objs.length ? h('ul', { class: 'files' }, objs.map((o) => h('li', null,
          h('a', {
            class: 'download', href: `${API}/blobs/${blobURLPath(o.key)}`, 'data-key': o.key, download: o.key.split('/').pop(),
            onclick: (ev) => { ev.preventDefault(); download(o.key).catch((e) => { if (e.status !== 401) alert(`Download ${o.key}: ${e.message}`); }); },
          }, o.key.startsWith(dest) ? o.key.slice(dest.length) || o.key : o.key),
          h('span', { class: 'muted' }, ` ${fmtBytes(o.size)}${o.modTime ? ` · ${fmtTime(o.modTime)}` : ''}`))))
          : h('p', { class: 'muted' }, 'Nothing uploaded yet (outputs are uploaded when a task ends).'));
    }));
    outputs.replaceChildren(...parts);
  }

  sc.every(3000, () => {
    const t = job?.tasks?.find((x) => x.name === selected);
    if (t && follow.checked && (t.state === 'running' || t.state === 'pending')) loadLogs();
  });
  // Task progress is not in the live stream (it changes too often): reload
  // a running job every few seconds.
  sc.every(5000, () => { if (job && job.state === 'running') load(); else if (job) render(); });

  (async () => { await load(); loadOutputs(); })();
  return {
    el,
    update(kind) {
      if (kind !== 'jobs') return;
      const j = store.jobs?.find((x) => x.job.metadata.name === name);
      if (!j) return;
      const sig = JSON.stringify([j.uid, j.state, j.counts, j.evictions]);
      if (sig === lastSig) return;
      const finished = lastSig && j.state !== 'running';
      lastSig = sig;
      load().then(() => { if (finished) loadOutputs(); });
    },
    destroy: sc.destroy,
  };
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

// ---------------------------------------------------------------- Services

function serviceSpec(s) { return s.service?.spec || {}; }

function versionsSummary(s) {
  const by = new Map();
  for (const r of s.replicas || []) {
    const v = by.get(r.version) || { total: 0, ready: 0 };
    v.total++;
    if (r.state === 'ready') v.ready++;
    by.set(r.version, v);
  }
  return [...by].sort((a, b) => b[0] - a[0]).map(([v, c]) => `v${v}: ${c.ready}/${c.total} ready`).join(', ');
}

function servicesPage() {
  const t = table('Services', ['Service', 'Model', 'Tier', { label: 'Ready / desired', cls: 'num' },
    'Ready by priority', 'Versions', { label: 'QPS', cls: 'num' }]);
  const status = h('div');
  const el = pageShell('Services', status, t.wrap);
  function render() {
    if (!store.services) { status.replaceChildren(loading('services')); return; }
    status.replaceChildren(store.services.length ? '' : h('p', { class: 'muted' }, 'No services yet. Deploy one with spotml apply -f service.yaml.'));
    const list = [...store.services].sort((a, b) => a.name.localeCompare(b.name));
    syncRows(t.tbody, list, (s) => s.name,
      (s) => JSON.stringify([s.generation, s.desired, s.readyByPriority, versionsSummary(s), fmtNum(s.qps), s.model]),
      (s) => {
        const ready = (s.readyByPriority?.spot || 0) + (s.readyByPriority?.ondemand || 0);
        return h('tr', { 'data-service': s.name },
          h('th', { scope: 'row' }, h('a', { href: `#/services/${enc(s.name)}` }, s.name)),
          h('td', { class: 'model' }, s.model || '—'),
          h('td', null, serviceSpec(s).placement?.tier || 'prod'),
          h('td', { class: 'num' }, `${ready} / ${s.desired}`),
          h('td', null, badge(`${s.readyByPriority?.spot || 0} spot`, 'spot'), ' ', badge(`${s.readyByPriority?.ondemand || 0} on-demand`, 'ondemand')),
          h('td', null, versionsSummary(s) || '—'),
          h('td', { class: 'num' }, fmtNum(s.qps)));
      });
  }
  return { el, update(kind) { if (!kind || kind === 'services') render(); }, destroy() {} };
}

// chart wraps a uPlot in a figure that resizes with its container and keeps a
// text summary beside it for keyboard and screen-reader users.
// window (seconds), when set, fixes the x axis to that span ending at the
// newest point, so that a few samples do not stretch over the whole width.
function chart(id, title, seriesDefs, { yLabel, fmt = (v) => fmtNum(v), height = 220, integer = false, window: span = 0 } = {}) {
  const box = h('div', { id, class: 'chart', role: 'img', 'aria-label': title });
  const summary = h('p', { class: 'chart-summary muted' }, 'No data yet.');
  const fig = h('figure', { class: 'chart-fig' }, h('figcaption', null, title), box, summary);
  let plot = null;
  let defsSig = '';
  let ro = null;
  const make = (defs, data) => {
    plot?.destroy();
    if (!window.uPlot) { summary.textContent = 'The chart library did not load.'; return; }
    const width = Math.max(box.clientWidth, 300);
    plot = new window.uPlot({
      width, height,
      series: [{ label: 'time' }, ...defs.map((d) => ({
        label: d.label, stroke: d.color, width: d.width || 2, dash: d.dash,
        fill: d.fill, value: (u, v) => (v == null ? '—' : fmt(v)), scale: d.scale || 'y',
      }))],
      scales: {
        // The newest x of the data itself: uPlot hands a range function an
        // already widened span when there is a single point.
        x: span ? { time: true, range: (u) => { const xs = u.data[0] || []; const end = xs.length ? xs[xs.length - 1] : Date.now() / 1000; return [end - span, end + span / 60]; } } : { time: true },
        y: { range: (u, min, max) => [0, Math.max(integer ? 2 : 0, max == null ? 1 : max * 1.1) || 1] },
      },
      axes: [{ stroke: '#4b5563', grid: { stroke: '#e5e7eb' } },
        {
          label: yLabel, stroke: '#4b5563', grid: { stroke: '#e5e7eb' }, size: 64,
          incrs: integer ? [1, 2, 5, 10, 20, 50, 100] : undefined,
          values: (u, vals) => vals.map((v) => fmt(v)),
        }],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    }, data, box);
  };
  return {
    fig,
    set(defs, data, text) {
      const sig = JSON.stringify(defs.map((d) => d.label));
      if (!plot || sig !== defsSig) { defsSig = sig; make(defs, data); } else plot.setData(data);
      summary.textContent = text;
      if (!ro && window.ResizeObserver) {
        ro = new ResizeObserver(() => { if (plot && box.clientWidth) plot.setSize({ width: box.clientWidth, height }); });
        ro.observe(box);
      }
    },
    empty(text) { summary.textContent = text; },
    destroy() { ro?.disconnect(); plot?.destroy(); },
  };
}

function servicePage(name) {
  const sc = scope();
  const status = h('div');
  const cards = h('div', { class: 'cards' });
  const qps = chart('chart-qps', 'Requests per second (last hour)', [], { yLabel: 'req/s', fmt: (v) => fmtNum(v, v < 10 ? 2 : 1), window: 3600 });
  const lat = chart('chart-latency', 'Latency p50 and p99 (ms)', [], { yLabel: 'ms', fmt: (v) => fmtNum(v, v < 10 ? 2 : 0), window: 3600 });
  const reps = chart('chart-replicas', 'Replicas: ready, desired, spot, on-demand', [], { yLabel: 'replicas', fmt: (v) => fmtNum(v, 0), integer: true, window: 3600 });
  sc.onDestroy(() => { qps.destroy(); lat.destroy(); reps.destroy(); });
  const histStatus = h('div');

  let sortKey = 'version';
  let sortDir = -1;
  const cols = [['name', 'Replica'], ['version', 'Version'], ['priority', 'Priority'], ['pool', 'Pool'],
    ['node', 'Node'], ['state', 'State'], ['since', 'Since'], ['notes', 'Notes']];
  const sortable = new Set(['name', 'version', 'priority', 'state']);
  const headRow = h('tr');
  const replicas = table('Replicas (sortable by replica, version, priority and state)', []);
  replicas.thead.replaceChildren(headRow);
  function renderHead() {
    headRow.replaceChildren(...cols.map(([k, label]) => {
      if (!sortable.has(k)) return h('th', { scope: 'col' }, label);
      const active = k === sortKey;
      return h('th', { scope: 'col', 'aria-sort': active ? (sortDir > 0 ? 'ascending' : 'descending') : null },
        h('button', {
          type: 'button', class: 'sort', 'data-sort': k,
          onclick: () => { if (sortKey === k) sortDir = -sortDir; else { sortKey = k; sortDir = k === 'version' ? -1 : 1; } renderHead(); render(); },
        }, label, h('span', { 'aria-hidden': 'true' }, active ? (sortDir > 0 ? ' ▲' : ' ▼') : ' ↕')));
    }));
  }
  renderHead();
  const versions = h('p', { class: 'muted' });
  const decisions = h('ol', { id: 'decisions', class: 'decisions', 'aria-live': 'polite' });
  const older = [];

  const el = h('section', { class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/services' }, 'Services'), ' / '),
    h('h1', null, `Service ${name}`), status, cards,
    h('h2', null, 'Last hour'), histStatus,
    h('div', { class: 'charts' }, qps.fig, lat.fig, reps.fig),
    h('div', { class: 'two-col' },
      h('section', { 'aria-labelledby': 'rep-h' }, h('h2', { id: 'rep-h' }, 'Replicas'), versions, replicas.wrap),
      h('section', { 'aria-labelledby': 'dec-h' }, h('h2', { id: 'dec-h' }, 'Autoscaler decisions'), decisions)));

  function render() {
    if (!store.services) { status.replaceChildren(loading('services')); return; }
    const s = store.services.find((x) => x.name === name);
    if (!s) { status.replaceChildren(errorBox(`No service named ${name}.`)); return; }
    status.replaceChildren();
    const spec = serviceSpec(s);
    const rb = s.readyByPriority || {};
    cards.replaceChildren(
      card('Ready / desired', `${(rb.spot || 0) + (rb.ondemand || 0)} / ${s.desired}`, '', `min ${spec.replicas?.min ?? '—'}, max ${spec.replicas?.max ?? '—'}`),
      card('Spot ready', String(rb.spot || 0), 'spot', `tier ${spec.placement?.tier || 'prod'}`),
      card('On-demand ready', String(rb.ondemand || 0), 'ondemand', `${(s.replicas || []).filter((r) => r.standIn).length} stand-ins`),
      card('QPS', fmtNum(s.qps), '', `generation ${s.generation}`),
      card('Model', s.model ? s.model.split('/').pop() : '—', 'model', s.model || ''));
    versions.textContent = versionsSummary(s) ? `By version: ${versionsSummary(s)}.` : 'No replicas.';
    const prioRank = (p) => (p === 'spot' ? 0 : 1);
    const list = [...(s.replicas || [])].sort((a, b) => {
      let d = 0;
      if (sortKey === 'version') d = a.version - b.version;
      else if (sortKey === 'priority') d = prioRank(a.priority) - prioRank(b.priority);
      else if (sortKey === 'state') d = a.state.localeCompare(b.state);
      d *= sortDir;
      return d || (b.version - a.version) || prioRank(a.priority) - prioRank(b.priority) || a.name.localeCompare(b.name);
    });
    syncRows(replicas.tbody, list, (r) => r.name,
      (r) => JSON.stringify([r.version, r.priority, r.pool, r.node, r.state, r.standIn, r.noticed, r.stateAt]),
      (r) => h('tr', { 'data-replica': r.name, 'data-version': r.version, 'data-priority': r.priority, class: `prio-${r.priority}` },
        h('th', { scope: 'row' }, r.name),
        h('td', null, `v${r.version}`),
        h('td', null, priorityBadge(r.priority)),
        h('td', null, r.pool || '—'),
        h('td', null, r.node || '—'),
        h('td', null, stateBadge(r.state)),
        h('td', null, fmtAgo(r.stateAt)),
        h('td', { class: 'wrap' }, r.standIn ? badge('stand-in', 'standin') : '', r.noticed ? badge('notice', 'warn') : '', r.reason ? h('span', { class: 'muted' }, ` ${r.reason}`) : '')));
    if (!list.length) replicas.tbody.append(h('tr', null, h('td', { colspan: cols.length, class: 'muted' }, 'No live replicas.')));
    renderDecisions();
  }

  function renderDecisions() {
    const obj = `service/${name}`;
    const seen = new Set();
    const all = [...older, ...store.events].filter((e) => e.kind === 'Scaled' && e.object === obj && !seen.has(e.id) && seen.add(e.id));
    all.sort((a, b) => b.id - a.id);
    const shown = all.slice(0, 40);
    const sig = shown.map((e) => e.id).join(',');
    if (decisions.dataset.sig === sig) return;
    decisions.dataset.sig = sig;
    decisions.replaceChildren(...(shown.length ? shown.map((e) => h('li', { 'data-event': e.id },
      timeEl(e.time), ' ', h('strong', null, e.reason), e.message ? ` — ${e.message}` : ''))
      : [h('li', { class: 'muted' }, 'No scaling decisions yet.')]));
  }

  async function loadHistory() {
    let hist;
    try {
      hist = await getJSON(`/services/${enc(name)}/history?window=1h`);
      histStatus.replaceChildren();
    } catch (e) {
      if (e.status !== 401) histStatus.replaceChildren(errorBox(`History: ${e.message}`));
      return;
    }
    const ss = hist.samples || [];
    if (!ss.length) {
      for (const c of [qps, lat, reps]) c.empty('No samples yet: they are taken every 10 s.');
      return;
    }
    const t = ss.map((x) => Date.parse(x.time) / 1000);
    const col = (f) => ss.map((x) => (x[f] == null ? null : x[f]));
    const last = ss[ss.length - 1];
    const peak = Math.max(...ss.map((x) => x.qps || 0));
    qps.set([{ label: 'QPS', color: PALETTE[0], fill: 'rgba(37,99,235,0.08)' }], [t, col('qps')],
      `Latest ${fmtNum(last.qps, 2)} req/s, peak ${fmtNum(peak, 2)} req/s; ${ss.reduce((a, x) => a + (x.requests || 0), 0)} requests and ${ss.reduce((a, x) => a + (x.errors || 0), 0)} errors in the window; ` +
      `${fmtNum(last.inFlight || 0, 2)} in flight on average over the last minute (at most ${last.inFlightMax || 0} at once).`);
    const toMs = (f) => ss.map((x) => (x[f] == null || (!x.requests && !x[f]) ? null : x[f] * 1000));
    lat.set([{ label: 'p50', color: PALETTE[2] }, { label: 'p99', color: PALETTE[7] }], [t, toMs('p50'), toMs('p99')],
      `Latest p50 ${fmtNum(last.p50 * 1000, 1)} ms, p99 ${fmtNum(last.p99 * 1000, 1)} ms.`);
    reps.set([
      { label: 'ready', color: PALETTE[2], width: 2 },
      { label: 'desired', color: '#111827', dash: [6, 4], width: 1.5 },
      { label: 'spot', color: PALETTE[1] },
      { label: 'on-demand', color: PALETTE[0] },
    ], [t, col('ready'), col('desired'), col('spot'), col('onDemand')],
    `Now ${last.ready} ready of ${last.desired} desired: ${last.spot} spot, ${last.onDemand} on-demand.`);
  }

  async function loadOlderDecisions() {
    try {
      const list = await getJSON(`/events?kind=Scaled&object=${enc(`service/${name}`)}&limit=100`);
      older.push(...list);
      renderDecisions();
    } catch { /* the live stream still fills the list */ }
  }

  sc.every(10000, loadHistory);
  requestAnimationFrame(() => { loadHistory(); loadOlderDecisions(); });
  return {
    el,
    update(kind) {
      if (!kind || kind === 'services') render();
      else if (kind === 'events') renderDecisions();
    },
    destroy: sc.destroy,
  };
}

// ---------------------------------------------------------------- Events

const EVENT_CLASS = {
  Notice: 'warn', Evicted: 'bad', Requeued: 'warn', LaunchFailed: 'bad', Failed: 'bad', Retrying: 'warn',
  Launched: 'info', Joined: 'info', Ready: 'good', Succeeded: 'good', Scaled: 'scale', Draining: 'warn',
  ReplicaUnready: 'warn', ReplicaReady: 'good', Restarted: 'warn',
};

function eventsPage(query) {
  const sc = scope();
  const kindSel = h('select', { id: 'events-kind' });
  const objIn = h('input', {
    id: 'events-object', type: 'search', placeholder: 'e.g. node/spot-a- or service/fashion-mnist',
    value: query.get('object') || '', autocomplete: 'off', spellcheck: 'false',
  });
  let wantKind = query.get('kind') || '';
  const t = table('Events, newest first', ['Time', 'Kind', 'Object', 'Reason', 'Message']);
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const extra = [];
  const el = pageShell('Events',
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('label', { for: 'events-kind' }, 'Kind'), kindSel,
      h('label', { for: 'events-object' }, 'Object'), objIn,
      h('button', { type: 'button', class: 'small', onclick: () => { kindSel.value = ''; objIn.value = ''; wantKind = ''; changed(); } }, 'Clear')),
    count, t.wrap);

  function fillKinds() {
    const kinds = [...new Set([...store.events, ...extra].map((e) => e.kind))];
    if (wantKind && !kinds.includes(wantKind)) kinds.push(wantKind);
    kinds.sort();
    const sig = kinds.join(',');
    if (kindSel.dataset.sig === sig) return;
    kindSel.dataset.sig = sig;
    const cur = kindSel.value || wantKind;
    kindSel.replaceChildren(h('option', { value: '' }, 'All kinds'), ...kinds.map((k) => h('option', { value: k }, k)));
    kindSel.value = cur;
  }

  function render() {
    fillKinds();
    const kind = kindSel.value;
    const obj = objIn.value.trim().toLowerCase();
    const seen = new Set();
    const all = [...store.events, ...extra].filter((e) => !seen.has(e.id) && seen.add(e.id));
    const match = all.filter((e) => (!kind || e.kind === kind) && (!obj || e.object.toLowerCase().includes(obj)));
    match.sort((a, b) => b.id - a.id);
    const shown = match.slice(0, 400);
    count.textContent = `${match.length} event${match.length === 1 ? '' : 's'}${match.length > shown.length ? `, newest ${shown.length} shown` : ''}.`;
    syncRows(t.tbody, shown, (e) => e.id, () => '1', (e) => h('tr', { 'data-event-kind': e.kind, 'data-object': e.object },
      h('td', { class: 'nowrap' }, timeEl(e.time)),
      h('td', null, badge(e.kind, `ev ev-${EVENT_CLASS[e.kind] || 'plain'}`)),
      h('td', null, h('button', { type: 'button', class: 'linkish', title: 'Show only this object', onclick: () => { objIn.value = e.object; changed(); } }, e.object)),
      h('td', null, e.reason),
      h('td', { class: 'message' }, e.message || '')));
  }

  // A filter also asks the server, so older matching events than the live
  // window holds are shown too.
  let timer;
  let seq = 0;
  function changed() {
    wantKind = kindSel.value;
    const q = new URLSearchParams();
    if (kindSel.value) q.set('kind', kindSel.value);
    if (objIn.value.trim()) q.set('object', objIn.value.trim());
    history.replaceState(null, '', `#/events${q.toString() ? `?${q}` : ''}`);
    render();
    clearTimeout(timer);
    if (!q.toString()) return;
    timer = setTimeout(async () => {
      const my = ++seq;
      q.set('limit', '500');
      try {
        const list = await getJSON(`/events?${q}`);
        if (my !== seq) return;
        extra.push(...list);
        render();
      } catch { /* the live window is still shown */ }
    }, 300);
  }
  kindSel.addEventListener('change', changed);
  objIn.addEventListener('input', changed);
  sc.onDestroy(() => clearTimeout(timer));
  if (wantKind || objIn.value) setTimeout(changed, 0);
  return { el, update(kind) { if (!kind || kind === 'events') render(); }, destroy: sc.destroy };
}

// ---------------------------------------------------------------- Cost

function costPage() {
  const sc = scope();
  const total = h('div', { id: 'cost-total', class: 'cost-total' }, loading('the cost summary'));
  const t = table('Cost per pool', ['Pool', 'Priority', { label: 'Node-hours', cls: 'num' }, { label: 'Spent', cls: 'num' },
    { label: 'Same on demand', cls: 'num' }, { label: 'Saving', cls: 'num' }]);
  const tfoot = h('tfoot');
  t.table.append(tfoot);
  const c = chart('chart-cost', 'Cumulative cost: spent (solid) and the same node-hours on demand (dashed)', [],
    { yLabel: 'USD', fmt: (v) => fmtUSD(v), height: 300 });
  sc.onDestroy(() => c.destroy());
  const histStatus = h('div');
  const el = pageShell('Cost', total, h('h2', null, 'Over time'), histStatus, h('div', { class: 'charts one' }, c.fig),
    h('h2', null, 'Per pool'), t.wrap,
    h('p', { class: 'muted' }, 'On-demand figures price the same node-seconds at the pool\'s on-demand rate.'));

  function render() {
    const s = store.cost;
    if (!s) return;
    const pct = s.savingPercent || 0;
    total.replaceChildren(
      h('div', { class: 'cards' },
        card('Spent so far', fmtUSD(s.spent), 'spot', `${fmtNum((s.nodeSeconds || 0) / 3600, 2)} node-hours`),
        card('Same on demand', fmtUSD(s.onDemand), 'ondemand', 'what these node-hours cost without spot'),
        card('Saving', `${fmtUSD(s.saving)}`, 'good', `${fmtNum(pct, 1)} % less than on demand`)),
      h('p', { class: 'sr-only' }, `Spent ${fmtUSD(s.spent)} so far versus ${fmtUSD(s.onDemand)} on demand: a saving of ${fmtUSD(s.saving)} (${fmtNum(pct, 1)} %).`));
    const lines = s.lines || [];
    syncRows(t.tbody, lines, (l) => `${l.pool}/${l.priority}`, (l) => JSON.stringify(l), (l) => {
      const saving = l.onDemand - l.spent;
      return h('tr', { 'data-pool': l.pool, 'data-priority': l.priority, class: `prio-${l.priority}` },
        h('th', { scope: 'row' }, l.pool),
        h('td', null, priorityBadge(l.priority)),
        h('td', { class: 'num' }, fmtNum(l.nodeSeconds / 3600, 2)),
        h('td', { class: 'num' }, fmtUSD(l.spent)),
        h('td', { class: 'num' }, fmtUSD(l.onDemand)),
        h('td', { class: 'num' }, `${fmtUSD(saving)}${l.onDemand ? ` (${fmtNum((100 * saving) / l.onDemand, 0)} %)` : ''}`));
    });
    if (!lines.length) t.tbody.replaceChildren(h('tr', null, h('td', { colspan: 6, class: 'muted' }, 'No node has run yet.')));
    tfoot.replaceChildren(h('tr', null, h('th', { scope: 'row' }, 'Total'), h('td'),
      h('td', { class: 'num' }, fmtNum((s.nodeSeconds || 0) / 3600, 2)), h('td', { class: 'num' }, fmtUSD(s.spent)),
      h('td', { class: 'num' }, fmtUSD(s.onDemand)), h('td', { class: 'num' }, `${fmtUSD(s.saving)} (${fmtNum(pct, 0)} %)`)));
  }

  async function loadHistory() {
    let hist;
    try {
      hist = await getJSON('/cost/history?points=120');
      histStatus.replaceChildren();
    } catch (e) {
      if (e.status !== 401) histStatus.replaceChildren(errorBox(`Cost history: ${e.message}`));
      return;
    }
    const times = (hist.times || []).map((x) => Date.parse(x) / 1000);
    if (!times.length) { c.empty('No cost yet: no node has run.'); return; }
    const defs = [{ label: 'total spent', color: '#111827', width: 2.5 }, { label: 'total on demand', color: '#111827', width: 1.5, dash: [6, 4] }];
    const data = [times, hist.total.spent, hist.total.onDemand];
    (hist.pools || []).forEach((p, i) => {
      const color = PALETTE[i % PALETTE.length];
      defs.push({ label: `${p.pool} spent`, color, width: 1.5 });
      data.push(p.spent);
      if (p.priority === 'spot') {
        defs.push({ label: `${p.pool} on demand`, color, width: 1, dash: [4, 4] });
        data.push(p.onDemand);
      }
    });
    const n = times.length - 1;
    c.set(defs, data, `Now: spent ${fmtUSD(hist.total.spent[n])}, on demand ${fmtUSD(hist.total.onDemand[n])}, since ${new Date(times[0] * 1000).toLocaleString()}.`);
  }

  sc.every(30000, loadHistory);
  requestAnimationFrame(loadHistory);
  return { el, update(kind) { if (!kind || kind === 'cost') render(); }, destroy: sc.destroy };
}

// ---------------------------------------------------------------- Try the model

let samplesPromise = null;
function loadSamples() {
  samplesPromise ??= fetch('/assets/samples.json').then((r) => {
    if (!r.ok) throw new Error(`samples: ${r.status}`);
    return r.json();
  }).then((doc) => doc.samples.map((s) => {
    const bytes = Uint8Array.from(atob(s.pixels), (ch) => ch.charCodeAt(0));
    return { ...s, data: Float32Array.from(bytes, (b) => b / 255) };
  }));
  return samplesPromise;
}

function tryPage() {
  const SCALE = 10; // the 28×28 input shown at 280×280
  const pixels = new Float32Array(784);
  let truth = null; // the true class when a test image is loaded unchanged
  let cursor = { x: 14, y: 14 };
  let lastBody = '';

  const svcSel = h('select', { id: 'try-service' });
  const sampleSel = h('select', { id: 'try-sample' }, h('option', { value: '' }, 'Loading test images…'));
  const upload = h('input', { id: 'try-upload', type: 'file', accept: 'image/png,image/*' });
  const canvas = h('canvas', {
    id: 'try-draw', width: 28 * SCALE, height: 28 * SCALE, tabindex: '0', role: 'application',
    'aria-label': 'Drawing area, 28 by 28 pixels', 'aria-describedby': 'try-draw-help',
  });
  const ctx = canvas.getContext('2d');
  const clear = h('button', { type: 'button', id: 'try-clear' }, 'Clear');
  const invertBtn = h('button', { type: 'button', id: 'try-invert' }, 'Invert');
  const apiKey = h('input', { id: 'try-key', type: 'password', autocomplete: 'off', placeholder: 'only if the service requires one' });
  const predict = h('button', { type: 'submit', id: 'try-predict', class: 'primary' }, 'Predict');
  const result = h('div', { id: 'try-result', class: 'try-result', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Choose an image, then Predict.'));
  const scores = h('ol', { id: 'try-scores', class: 'scores', start: '0' });
  const curl = h('pre', { class: 'curl', tabindex: '0', 'aria-label': 'Equivalent curl command' });
  const saveReq = h('button', { type: 'button', class: 'small', disabled: true, onclick: () => saveText('request.json', lastBody) }, 'Save request.json');
  const source = h('p', { class: 'muted', id: 'try-source' }, 'Empty canvas.');
  const uploadErr = h('p', { class: 'error', role: 'alert' });
  const note = h('div');

  const el = pageShell('Try the model', note,
    h('div', { class: 'try' },
      h('section', { class: 'panel', 'aria-labelledby': 'try-in-h' },
        h('h2', { id: 'try-in-h' }, 'Input image'),
        h('div', { class: 'field' }, h('label', { for: 'try-sample' }, 'Fashion-MNIST test image'), sampleSel),
        h('div', { class: 'field' }, h('label', { for: 'try-upload' }, 'Or upload a PNG (scaled to 28×28, grayscale)'), upload, uploadErr),
        h('div', { class: 'field' }, h('span', { class: 'label' }, 'Or draw (white ink on black, as the model was trained)'),
          h('div', { class: 'draw' }, canvas,
            h('div', { class: 'draw-tools' }, clear, invertBtn,
              h('p', { id: 'try-draw-help', class: 'hint' },
                'Mouse, pen or touch: drag to paint, right button or Alt to erase. ',
                'Keyboard: focus the canvas, arrow keys move the cursor, Space paints, ',
                'Shift+arrows paint while moving, Delete erases.')))),
        source),
      h('section', { class: 'panel', 'aria-labelledby': 'try-out-h' },
        h('h2', { id: 'try-out-h' }, 'Prediction'),
        h('form', { id: 'try-form', onsubmit: (ev) => { ev.preventDefault(); run(); } },
          h('div', { class: 'field' }, h('label', { for: 'try-service' }, 'Service'), svcSel),
          h('div', { class: 'field' }, h('label', { for: 'try-key' }, 'API key (X-API-Key)'), apiKey),
          predict),
        result, h('h3', null, 'Scores (softmax)'), scores,
        h('h3', null, 'The same request with curl'), curl, saveReq)));

  function draw() {
    for (let i = 0; i < 784; i++) {
      const v = Math.round(Math.max(0, Math.min(1, pixels[i])) * 255);
      ctx.fillStyle = `rgb(${v},${v},${v})`;
      ctx.fillRect((i % 28) * SCALE, Math.floor(i / 28) * SCALE, SCALE, SCALE);
    }
    if (document.activeElement === canvas) {
      ctx.strokeStyle = '#f59e0b';
      ctx.lineWidth = 2;
      ctx.strokeRect(cursor.x * SCALE + 1, cursor.y * SCALE + 1, SCALE - 2, SCALE - 2);
    }
  }
  function edited(what) { truth = null; source.textContent = what; sampleSel.value = ''; }

  // paint lays a soft round brush of radius ~1.5 px at (x, y) in 28×28 units.
  function paint(x, y, erase) {
    const r = 1.6;
    for (let gy = Math.floor(y - r); gy <= Math.ceil(y + r); gy++) {
      for (let gx = Math.floor(x - r); gx <= Math.ceil(x + r); gx++) {
        if (gx < 0 || gy < 0 || gx > 27 || gy > 27) continue;
        const d = Math.hypot(gx + 0.5 - x, gy + 0.5 - y);
        const v = Math.max(0, Math.min(1, (r - d) / 0.8));
        const i = gy * 28 + gx;
        pixels[i] = erase ? Math.min(pixels[i], 1 - v) : Math.max(pixels[i], v);
      }
    }
  }

  let drawing = false;
  let erasing = false;
  let lastPt = null;
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return { x: ((ev.clientX - r.left) / r.width) * 28, y: ((ev.clientY - r.top) / r.height) * 28 };
  };
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
  canvas.addEventListener('pointerdown', (ev) => {
    drawing = true;
    erasing = ev.button === 2 || ev.altKey;
    canvas.setPointerCapture(ev.pointerId);
    lastPt = at(ev);
    paint(lastPt.x, lastPt.y, erasing);
    edited('Drawn by hand.');
    draw();
    ev.preventDefault();
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (!drawing) return;
    const p = at(ev);
    const steps = Math.max(1, Math.ceil(Math.hypot(p.x - lastPt.x, p.y - lastPt.y) / 0.5));
    for (let s = 1; s <= steps; s++) paint(lastPt.x + ((p.x - lastPt.x) * s) / steps, lastPt.y + ((p.y - lastPt.y) * s) / steps, erasing);
    lastPt = p;
    draw();
  });
  const stop = () => { drawing = false; };
  canvas.addEventListener('pointerup', stop);
  canvas.addEventListener('pointercancel', stop);
  canvas.addEventListener('focus', draw);
  canvas.addEventListener('blur', draw);
  canvas.addEventListener('keydown', (ev) => {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (moves[ev.key]) {
      const [dx, dy] = moves[ev.key];
      cursor = { x: Math.max(0, Math.min(27, cursor.x + dx)), y: Math.max(0, Math.min(27, cursor.y + dy)) };
      if (ev.shiftKey) { paint(cursor.x + 0.5, cursor.y + 0.5, false); edited('Drawn with the keyboard.'); }
    } else if (ev.key === ' ' || ev.key === 'Enter') {
      paint(cursor.x + 0.5, cursor.y + 0.5, false);
      edited('Drawn with the keyboard.');
    } else if (ev.key === 'Delete' || ev.key === 'Backspace') {
      paint(cursor.x + 0.5, cursor.y + 0.5, true);
      edited('Drawn with the keyboard.');
    } else return;
    ev.preventDefault();
    draw();
  });
  clear.addEventListener('click', () => { pixels.fill(0); edited('Empty canvas.'); draw(); });
  invertBtn.addEventListener('click', () => { for (let i = 0; i < 784; i++) pixels[i] = 1 - pixels[i]; edited('Inverted.'); draw(); });

  let samples = [];
  loadSamples().then((list) => {
    samples = list;
    sampleSel.replaceChildren(h('option', { value: '' }, `Choose one of ${list.length} test images…`),
      ...list.map((s, i) => h('option', { value: i }, `${s.class} (test image #${s.index})`)));
  }).catch((e) => {
    sampleSel.replaceChildren(h('option', { value: '' }, 'Test images unavailable'));
    uploadErr.textContent = e.message;
  });
  sampleSel.addEventListener('change', () => {
    const s = samples[Number(sampleSel.value)];
    if (!s || sampleSel.value === '') return;
    pixels.set(s.data);
    truth = s.class;
    source.textContent = `Fashion-MNIST test image #${s.index}, labelled ${s.class}.`;
    draw();
  });

  upload.addEventListener('change', () => {
    uploadErr.textContent = '';
    const file = upload.files?.[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      const c = document.createElement('canvas');
      c.width = 28;
      c.height = 28;
      const g = c.getContext('2d', { willReadFrequently: true });
      // Fit inside 28×28 keeping the aspect ratio, on white so transparent
      // areas count as background once the mean test below inverts them.
      g.fillStyle = '#fff';
      g.fillRect(0, 0, 28, 28);
      const k = Math.min(28 / img.naturalWidth, 28 / img.naturalHeight);
      const w = img.naturalWidth * k;
      const hh = img.naturalHeight * k;
      g.drawImage(img, (28 - w) / 2, (28 - hh) / 2, w, hh);
      const d = g.getImageData(0, 0, 28, 28).data;
      let sum = 0;
      for (let i = 0; i < 784; i++) {
        pixels[i] = (0.299 * d[i * 4] + 0.587 * d[i * 4 + 1] + 0.114 * d[i * 4 + 2]) / 255;
        sum += pixels[i];
      }
      const inverted = sum / 784 > 0.5;
      if (inverted) for (let i = 0; i < 784; i++) pixels[i] = 1 - pixels[i];
      URL.revokeObjectURL(url);
      edited(`Uploaded ${file.name} (${img.naturalWidth}×${img.naturalHeight}${inverted ? ', dark on light so inverted' : ''}).`);
      sampleSel.value = '';
      draw();
    };
    img.onerror = () => { URL.revokeObjectURL(url); uploadErr.textContent = `${file.name} is not an image this browser can read.`; };
    img.src = url;
  });

  function fillServices() {
    const names = (store.services || []).map((s) => s.name).sort();
    const sig = names.join(',');
    if (svcSel.dataset.sig === sig) return;
    svcSel.dataset.sig = sig;
    const cur = svcSel.value;
    svcSel.replaceChildren(...(names.length ? names.map((n) => h('option', { value: n }, n)) : [h('option', { value: '' }, 'No services')]));
    svcSel.value = names.includes(cur) ? cur : (names.find((n) => n.includes('mnist')) || names[0] || '');
    renderCurl();
  }

  function body() {
    return JSON.stringify({
      inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(pixels, (v) => Math.round(v * 10000) / 10000) }],
    });
  }

  function renderCurl() {
    const gw = store.info.gatewayURL || 'http://GATEWAY_ADDRESS';
    const svc = svcSel.value || 'SERVICE';
    curl.textContent = [
      `curl -sS -X POST '${gw.replace(/\/$/, '')}/v2/models/${svc}/infer' \\`,
      "  -H 'Content-Type: application/json' \\",
      apiKey.value ? '  -H "X-API-Key: $SPOTML_API_KEY" \\' : null,
      '  --data @request.json',
    ].filter(Boolean).join('\n');
  }
  svcSel.addEventListener('change', renderCurl);
  apiKey.addEventListener('input', renderCurl);

  function showScores(probs, best) {
    scores.replaceChildren(...probs.map((p, i) => {
      const bar = h('span', { class: 'bar' });
      bar.style.width = `${(p * 100).toFixed(1)}%`; // CSSOM, allowed by the CSP
      return h('li', { class: i === best ? 'best' : null, 'data-class': CLASSES[i] },
        h('span', { class: 'cls' }, CLASSES[i]), h('span', { class: 'track', 'aria-hidden': 'true' }, bar),
        h('span', { class: 'pct' }, `${(p * 100).toFixed(1)} %`));
    }));
  }

  async function run() {
    const svc = svcSel.value;
    if (!svc) { result.replaceChildren(errorBox('There is no service to call: deploy one first (examples/fashion-mnist/service.yaml).')); return; }
    lastBody = body();
    saveReq.disabled = false;
    renderCurl();
    predict.disabled = true;
    result.removeAttribute('data-class');
    result.replaceChildren(h('p', { class: 'muted' }, `Calling ${svc}…`));
    const headers = { 'Content-Type': 'application/json' };
    if (apiKey.value) headers['X-API-Key'] = apiKey.value;
    const t0 = performance.now();
    try {
      const res = await api(`/gateway/v2/models/${enc(svc)}/infer`, { method: 'POST', headers, body: lastBody });
      const out = await res.json();
      const ms = performance.now() - t0;
      const logits = out.outputs?.[0]?.data;
      if (!Array.isArray(logits) || !logits.length) throw new Error('the answer has no outputs[0].data');
      const m = Math.max(...logits);
      const ex = logits.map((v) => Math.exp(v - m));
      const sum = ex.reduce((a, b) => a + b, 0);
      const probs = ex.map((v) => v / sum);
      const best = probs.indexOf(Math.max(...probs));
      const name = CLASSES[best] ?? `class ${best}`;
      result.dataset.class = name;
      result.replaceChildren(
        h('p', { class: 'predicted' }, h('span', { class: 'muted' }, 'Predicted: '), h('strong', null, name),
          ` · ${(probs[best] * 100).toFixed(1)} %`),
        h('p', { class: 'muted' }, `${ms.toFixed(0)} ms round trip through the gateway`,
          out.model_name ? ` · model ${out.model_name}${out.model_version ? ` v${out.model_version}` : ''}` : '',
          truth ? ` · true label ${truth} ${truth === name ? '✓' : '✗'}` : ''));
      showScores(probs, best);
    } catch (e) {
      if (e.status === 401) return;
      const hint = e.status === 501 ? ' This control plane runs no gateway; call the gateway directly with the curl command below.'
        : e.status === 503 ? ' No replica is ready yet; wait for one on the Services page.' : '';
      result.replaceChildren(errorBox(`Predict failed: ${e.message}.${hint}`));
      scores.replaceChildren();
    } finally {
      predict.disabled = false;
    }
  }

  if (store.info.predict === false) {
    note.replaceChildren(h('p', { class: 'warn-box' }, 'This control plane runs no inference gateway, so Predict cannot call it from here; the curl command still shows the request to send to your gateway.'));
  }
  draw();
  renderCurl();
  return { el, update(kind) { if (!kind || kind === 'services') fillServices(); }, destroy() {} };
}

// ---------------------------------------------------------------- boot

function boot() {
  $('#logout').addEventListener('click', () => logout('You are logged out.'));
  $('#skip').addEventListener('click', (ev) => { ev.preventDefault(); $('#main').focus(); });
  window.addEventListener('hashchange', () => { if (location.hash.startsWith('#/') || location.hash === '') route(); });
  if (session.token) {
    // Re-check the token and fetch /info; a stale one goes back to login.
    fetch(`${API}/info`, { headers: { Authorization: `Bearer ${session.token}` } }).then(async (res) => {
      if (res.status === 401) { logout('Your session\'s token is no longer accepted. Log in again.'); return; }
      start(res.ok ? await res.json() : { predict: true });
      route();
    }).catch(() => { start({}); route(); });
  } else {
    showLogin();
  }
}

boot();

// ---------------------------------------------------------------- Plan

// planPage asks POST /plan what a service would cost and how available it
// would be, per tier, on traces the control plane knows (nothing is
// launched), and draws the curves: ready replicas and cumulative cost over
// the run from the start offset, and availability and cost over the start
// offsets.
// (The block runs after boot(); its constants live in the function.)
function planPage() {
  const PLAN_EXAMPLE = ['apiVersion: spotml/v1', 'kind: Service', 'metadata: {name: fmnist}', 'spec:',
    '  model: {uri: models/fmnist.onnx}', '  replicas: {min: 2, targetQPSPerReplica: 50}', '  placement: {tier: prod}', ''].join('\n');
  const TIER_COLORS = { dev: '#d97706', prod: '#2563eb', strict: '#059669' };
  const sc = scope();
  const specBox = h('textarea', { id: 'plan-spec', rows: 12, cols: 70, spellcheck: 'false', 'aria-describedby': 'plan-spec-help' }, PLAN_EXAMPLE);
  const pick = h('select', { id: 'plan-pick' }, h('option', { value: '' }, 'Paste a spec, or pick a running service…'));
  const traces = h('select', { id: 'plan-traces', multiple: true, size: 8 });
  const num = (id, value, attrs = {}) => h('input', { id, value, size: 8, ...attrs });
  const inputs = {
    instanceType: num('plan-instance', 'm5.large'), speedup: num('plan-speedup', '1', { type: 'number', min: '0', step: 'any' }),
    start: num('plan-start', '12h'), duration: num('plan-duration', '24h'), offsets: num('plan-offsets', '20', { type: 'number', min: '0', max: '500' }),
    boot: num('plan-boot', '60s'), load: num('plan-load', '5s'), notice: num('plan-notice', '30s'), qps: num('plan-qps', '', { type: 'number', min: '0', step: 'any' }),
  };
  const field = (label, input, help) => h('div', { class: 'field' }, h('label', { for: input.id }, label), input, help ? h('span', { class: 'muted' }, help) : null);
  const go = h('button', { id: 'plan-go', type: 'submit' }, 'Plan');
  const status = h('div', { id: 'plan-status', 'aria-live': 'polite' });
  const t = table('The service under each tier', ['Tier', { label: 'Replicas', cls: 'num' }, { label: 'Available', cls: 'num' },
    { label: 'Answered', cls: 'num' }, { label: 'None ready', cls: 'num' }, { label: 'p99 headroom', cls: 'num' },
    { label: 'Cost', cls: 'num' }, { label: '÷ all on-demand', cls: 'num' }, { label: 'Offsets: available mean / worst', cls: 'num' },
    { label: 'Met target', cls: 'num' }, { label: 'Offsets: cost mean / worst', cls: 'num' }], { captionVisible: true });
  const ready = planChart('chart-plan-ready', 'Ready replicas over the run (dashed: needed)', 'replicas', 'hours', (v) => fmtNum(v, 0), true);
  const spent = planChart('chart-plan-cost', 'Cumulative cost over the run (dashed: all on-demand)', 'USD', 'hours', (v) => fmtUSD(v));
  const avail = planChart('chart-plan-avail', 'Availability by start offset', '%', 'offset (hours into the traces)', (v) => `${fmtNum(v, 2)} %`);
  const frac = planChart('chart-plan-frac', 'Cost ÷ all on-demand by start offset', '×', 'offset (hours into the traces)', (v) => `${fmtNum(v, 2)}×`);
  for (const c of [ready, spent, avail, frac]) sc.onDestroy(() => c.destroy());
  const results = h('div', { id: 'plan-results', hidden: true }, t.wrap,
    h('div', { class: 'charts' }, ready.fig, spent.fig), h('div', { class: 'charts' }, avail.fig, frac.fig));
  const form = h('form', { id: 'plan-form', onsubmit: (ev) => { ev.preventDefault(); run(); } },
    field('Service spec (YAML; Pools too, else the traces make spot pools of the instance type)', specBox),
    h('p', { id: 'plan-spec-help', class: 'muted' }, 'A Service, and optionally its Pools: their spec.local.market traces are used unless you pick traces here (one per spot pool).'),
    field('Or start from a running service', pick),
    field('Traces, one per spot pool (Ctrl/⌘-click for several)', traces),
    h('div', { class: 'cards' }, Object.entries({
      instanceType: 'Instance type', speedup: 'Speedup', start: 'Start (trace time)', duration: 'Duration (trace time)', offsets: 'Start offsets',
      boot: 'Node boot', load: 'Replica start', notice: 'Notice', qps: 'Requests/s',
    }).map(([k, label]) => field(label, inputs[k]))),
    go, status);
  const el = pageShell('Plan', h('p', { class: 'muted' },
    'Simulate a service on recorded spot markets with the control plane\'s own placement, stand-ins and spare sizing, before deploying it. Nothing is launched.'),
  form, results);

  function fillPick() {
    const svcs = store.services || [];
    const keep = pick.value;
    pick.replaceChildren(h('option', { value: '' }, 'Paste a spec, or pick a running service…'),
      ...svcs.map((s) => h('option', { value: s.name }, s.name)));
    pick.value = keep;
  }
  pick.addEventListener('change', () => {
    const s = (store.services || []).find((x) => x.name === pick.value);
    if (!s) return;
    // JSON is YAML: the stored spec as it was applied.
    specBox.value = JSON.stringify({ apiVersion: 'spotml/v1', kind: 'Service', metadata: { name: s.name }, spec: serviceSpec(s) }, null, 2);
  });

  (async () => {
    try {
      const list = await getJSON('/plan/traces');
      const names = list.traces || [];
      traces.replaceChildren(...names.map((n, i) => h('option', { value: n, selected: i < 2 ? true : null }, n)));
      if (!names.length) status.replaceChildren(h('p', { class: 'muted' }, `No traces under ${list.dir || 'the traces directory'} (spotml up --traces-dir).`));
    } catch (e) {
      if (e.status !== 401) status.replaceChildren(errorBox(`Traces: ${e.message}`));
    }
  })();

  async function run() {
    const body = { spec: specBox.value, traces: [...traces.selectedOptions].map((o) => o.value) };
    for (const [k, input] of Object.entries(inputs)) {
      const v = input.value.trim();
      if (v === '') continue;
      body[k] = ['speedup', 'offsets', 'qps'].includes(k) ? Number(v) : v;
    }
    go.disabled = true;
    status.replaceChildren(h('p', { class: 'muted' }, 'Simulating…'));
    try {
      const res = await api('/plan', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      show(await res.json());
      status.replaceChildren();
      announce('Plan ready.');
    } catch (e) {
      if (e.status !== 401) status.replaceChildren(errorBox(e));
    } finally {
      go.disabled = false;
    }
  }

  function show(rep) {
    results.hidden = false;
    const sec = (ns) => ns / 1e9;
    const pct = (f) => (f < 0 ? '—' : f === 1 ? '100 %' : `${fmtNum(100 * f, 2)} %`);
    t.tbody.replaceChildren(...rep.tiers.map((tp) => {
      const r = tp.run;
      return h('tr', { 'data-tier': tp.tier },
        h('th', { scope: 'row' }, tp.tier, tp.spec ? ' (spec)' : ''),
        h('td', { class: 'num' }, tp.replicas), h('td', { class: 'num' }, pct(r.availability)), h('td', { class: 'num' }, pct(r.answered)),
        h('td', { class: 'num' }, fmtDur(sec(r.noneReady))), h('td', { class: 'num' }, fmtNum(r.headroomP99, 2)),
        h('td', { class: 'num' }, fmtUSD(r.cost)), h('td', { class: 'num' }, `${fmtNum(r.fraction, 2)}×`),
        h('td', { class: 'num' }, `${pct(tp.meanAvailability)} / ${pct(tp.worstAvailability)}`),
        h('td', { class: 'num' }, `${fmtNum(100 * tp.metTarget, 0)} % of ${rep.offsets || 1}`),
        h('td', { class: 'num' }, `${fmtNum(tp.meanFraction, 2)}× / ${fmtNum(tp.worstFraction, 2)}×`));
    }));
    t.table.querySelector('caption').textContent = `${rep.service} (tier ${rep.tier}) over ${fmtDur(sec(rep.span))} of market ` +
      `(${fmtDur(sec(rep.duration))} real) from ${fmtDur(sec(rep.start))}; target ${fmtNum(100 * rep.target, 2)} %`;

    // Over the run: each tier's own timeline, sampled on a common grid.
    const end = sec(rep.duration);
    const grid = Array.from({ length: 241 }, (_, i) => (end * i) / 240);
    // Replicas hold their count from one point to the next; money accrues
    // linearly between them (the nodes do not change in between).
    const at = (tl, x, key) => { let v = tl.length ? tl[0][key] : null; for (const p of tl) { if (sec(p.t) > x) break; v = p[key]; } return v; };
    const lin = (tl, x, key) => {
      for (let i = 1; i < tl.length; i++) {
        const a = tl[i - 1]; const b = tl[i];
        if (sec(b.t) >= x) return sec(b.t) === sec(a.t) ? b[key] : a[key] + ((b[key] - a[key]) * (x - sec(a.t))) / (sec(b.t) - sec(a.t));
      }
      return tl.length ? tl[tl.length - 1][key] : null;
    };
    const hours = grid.map((x) => x / 3600);
    const defsR = []; const dataR = [hours];
    const defsC = []; const dataC = [hours];
    for (const tp of rep.tiers) {
      const tl = tp.run.timeline || [];
      const color = TIER_COLORS[tp.tier] || '#4b5563';
      defsR.push({ label: tp.tier, color }); dataR.push(grid.map((x) => at(tl, x, 'ready')));
      defsR.push({ label: `${tp.tier} needed`, color, dash: [6, 4], width: 1 }); dataR.push(grid.map(() => tp.run.needed));
      defsC.push({ label: tp.tier, color }); dataC.push(grid.map((x) => lin(tl, x, 'cost')));
    }
    const od = rep.tiers[0]?.run.timeline || [];
    defsC.push({ label: 'all on-demand (dev\'s count)', color: '#111827', dash: [6, 4], width: 1.5 }); dataC.push(grid.map((x) => lin(od, x, 'allOnDemand')));
    ready.set(defsR, dataR, rep.tiers.map((tp) => `${tp.tier}: ${pct(tp.run.availability)} of the time with ${tp.run.needed} ready`).join('; '));
    spent.set(defsC, dataC, rep.tiers.map((tp) => `${tp.tier}: ${fmtUSD(tp.run.cost)} (${fmtNum(tp.run.fraction, 2)}× all on-demand)`).join('; '));

    // Over the offsets.
    const sweep = rep.tiers[0]?.sweep || [];
    if (!sweep.length) { avail.empty('No start offsets asked for.'); frac.empty('No start offsets asked for.'); return; }
    const xs = sweep.map((o) => sec(o.offset) / 3600);
    const defsA = []; const dataA = [xs]; const defsF = []; const dataF = [xs];
    for (const tp of rep.tiers) {
      const color = TIER_COLORS[tp.tier] || '#4b5563';
      defsA.push({ label: tp.tier, color }); dataA.push((tp.sweep || []).map((o) => 100 * o.availability));
      defsF.push({ label: tp.tier, color }); dataF.push((tp.sweep || []).map((o) => o.fraction));
    }
    avail.set(defsA, dataA, rep.tiers.map((tp) => `${tp.tier}: mean ${pct(tp.meanAvailability)}, worst ${pct(tp.worstAvailability)}`).join('; '));
    frac.set(defsF, dataF, rep.tiers.map((tp) => `${tp.tier}: mean ${fmtNum(tp.meanFraction, 2)}×, worst ${fmtNum(tp.worstFraction, 2)}×`).join('; '));
  }

  fillPick();
  return { el, update(kind) { if (!kind || kind === 'services') fillPick(); }, destroy: sc.destroy };
}

// planChart is a uPlot over a numeric x axis (hours), with a text summary.
function planChart(id, title, yLabel, xLabel, fmt, integer = false) {
  const box = h('div', { id, class: 'chart', role: 'img', 'aria-label': title });
  const summary = h('p', { class: 'chart-summary muted' }, 'No plan yet.');
  const fig = h('figure', { class: 'chart-fig' }, h('figcaption', null, title), box, summary);
  let plot = null;
  return {
    fig,
    set(defs, data, text) {
      plot?.destroy();
      summary.textContent = text;
      if (!window.uPlot) { summary.textContent = `The chart library did not load. ${text}`; return; }
      plot = new window.uPlot({
        width: Math.max(box.clientWidth, 300), height: 240,
        series: [{ label: xLabel, value: (u, v) => (v == null ? '—' : fmtNum(v, 2)) }, ...defs.map((d) => ({
          label: d.label, stroke: d.color, width: d.width || 2, dash: d.dash, value: (u, v) => (v == null ? '—' : fmt(v)),
        }))],
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, max == null ? 1 : max * 1.1 || 1] } },
        axes: [{ label: xLabel, stroke: '#4b5563', grid: { stroke: '#e5e7eb' } },
          { label: yLabel, stroke: '#4b5563', grid: { stroke: '#e5e7eb' }, size: 64, incrs: integer ? [1, 2, 5, 10, 20, 50, 100] : undefined, values: (u, vals) => vals.map((v) => fmt(v)) }],
        legend: { live: true },
      }, data, box);
    },
    empty(text) { plot?.destroy(); plot = null; summary.textContent = text; },
    destroy() { plot?.destroy(); },
  };
}

// ---------------------------------------------------------------- BatchInference
//
// The list of BatchInferences and one batch's page: items total, done, in
// flight, failed, throughput, ETA, evictions, cost against on demand, and
// the failed items with their reasons. Status comes live from the watch
// stream's "batches" event (store.batches), sent when a batch changes; a
// control plane whose stream lacks it is polled (GET /batchinferences every
// 2 s). Failed items, which can be many, are fetched by the batch's page
// when their count changes. (Function declarations only: this block comes
// after boot() and is hoisted.)

// batchSource calls changed() whenever the batches may have changed and
// returns a getter of the current list: the stream's, else polled.
function batchSource(sc, changed) {
  let polled = null;
  let busy = false;
  sc.every(2000, async () => {
    if (store.batches || busy) return;
    busy = true;
    try {
      polled = await getJSON('/batchinferences');
      changed();
    } catch (e) {
      if (e.status !== 401) console.debug('batchinferences:', e);
    } finally {
      busy = false;
    }
  });
  return () => store.batches || polled;
}

function batchCounts(b) {
  const settled = (b.done || 0) + (b.failed || 0);
  return { settled, left: Math.max(0, (b.total || 0) - settled) };
}

// batchETA is the batch's ETA (nanoseconds in the API) as text.
function batchETA(b) {
  if (b.state !== 'running') return '—';
  if (!batchCounts(b).left) return b.spec?.spec?.trigger === 'watch' ? 'waiting for input' : 'finishing';
  return b.eta ? fmtDur(b.eta / 1e9) : '—';
}

function batchRate(b) { return b.throughput ? `${fmtNum(b.throughput, b.throughput < 10 ? 1 : 0)} items/s` : '—'; }

// batchCost is the workers' node time against the same time on demand.
function batchCost(b) {
  if (!b.onDemandCost) return fmtUSD(b.cost || 0);
  const saved = Math.round(100 * (1 - (b.cost || 0) / b.onDemandCost));
  return `${fmtUSD(b.cost || 0)} vs ${fmtUSD(b.onDemandCost)}${saved > 0 ? ` (−${saved} %)` : ''}`;
}

// batchCard is a card the tests can find by key (data-card).
// title, when given, is the sub-line's longer explanation.
function batchCard(key, label, value, cls, sub, title) {
  const c = card(label, value, cls, sub);
  c.dataset.card = key;
  if (title) c.title = title;
  return c;
}

function batchProgress(b) {
  const { settled } = batchCounts(b);
  return h('div', { class: 'progress' },
    h('progress', { max: Math.max(b.total || 0, 1), value: settled, 'aria-label': `${settled} of ${b.total} items settled` }),
    h('span', null, `${settled}/${b.total}`));
}

function batchesPage() {
  const sc = scope();
  const t = table('Batch inferences', ['Batch', 'State', 'Progress', { label: 'In flight', cls: 'num' },
    { label: 'Failed', cls: 'num' }, { label: 'Throughput', cls: 'num' }, 'ETA', { label: 'Evictions', cls: 'num' },
    { label: 'Workers', cls: 'num' }, 'Cost vs on demand', 'Duration']);
  const status = h('div');
  const el = pageShell('Batch inference', status, t.wrap);
  const list = batchSource(sc, () => render());
  sc.every(10000, () => render()); // durations of running batches
  function render() {
    const bs = list();
    if (!bs) { status.replaceChildren(loading('batch inferences')); return; }
    status.replaceChildren(bs.length ? '' : h('p', { class: 'muted' },
      'No batch inferences yet. Score a prefix of files with spotml apply -f batch.yaml (kind: BatchInference).'));
    const sorted = [...bs].sort((a, b) => ms(b.createdAt) - ms(a.createdAt));
    syncRows(t.tbody, sorted, (b) => b.name,
      (b) => JSON.stringify([b.createdAt, b.state, b.total, b.done, b.failed, b.inFlight, batchRate(b), batchETA(b),
        b.evictions, b.workers, b.workersPending, batchCost(b), b.finishedAt, Math.floor(serverNow() / 10000)]),
      (b) => h('tr', { 'data-batch': b.name },
        h('th', { scope: 'row' }, h('a', { href: `#/batchinferences/${enc(b.name)}` }, b.name)),
        h('td', null, stateBadge(b.state)),
        h('td', null, batchProgress(b)),
        h('td', { class: 'num' }, b.inFlight || 0),
        h('td', { class: 'num' }, b.failed || 0),
        h('td', { class: 'num' }, batchRate(b)),
        h('td', null, batchETA(b)),
        h('td', { class: 'num' }, b.evictions || 0),
        h('td', { class: 'num', title: `${b.workersPending || 0} waiting for a node` }, b.workers || 0),
        h('td', null, batchCost(b)),
        h('td', null, span(b.startedAt || b.createdAt, b.finishedAt))));
  }
  return { el, update(kind) { if (!kind || kind === 'batches') render(); }, destroy: sc.destroy };
}

function batchPage(name) {
  const sc = scope();
  const status = h('div');
  const cards = h('div');
  const about = h('dl', { class: 'batch-spec' });
  const workers = h('p', { class: 'muted' });
  const failedNote = h('p', { class: 'muted' });
  const failed = table('Failed items', ['Input', 'Reason', { label: 'Attempts', cls: 'num' }, 'When']);
  const el = h('section', { class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/batchinferences' }, 'Batch inference'), ' / '),
    h('h1', null, `BatchInference ${name}`), status, cards, about, workers,
    h('section', { 'aria-labelledby': 'failed-h', class: 'panel' },
      h('div', { class: 'heading-row' }, h('h2', { id: 'failed-h' }, 'Failed items'),
        h('button', { type: 'button', class: 'small', onclick: () => loadFailed(true) }, 'Refresh')),
      failedNote, failed.wrap));
  const list = batchSource(sc, () => render());
  let failedFor = -1; // the failed count the table was loaded for
  const maxFailed = 500;

  function current() { return list()?.find((b) => b.name === name); }

  function render() {
    const bs = list();
    if (!bs) { status.replaceChildren(loading(`batch inference ${name}`)); return; }
    const b = current();
    if (!b) {
      status.replaceChildren(errorBox(`No batch inference named ${name}.`));
      cards.replaceChildren();
      return;
    }
    status.replaceChildren();
    const { settled, left } = batchCounts(b);
    cards.replaceChildren(h('div', { class: 'cards' },
      batchCard('state', 'State', b.state, `state-${b.state}`, `created ${fmtTime(b.createdAt)}`),
      batchCard('items', 'Items', `${settled}/${b.total}`, '', `${b.done} done, ${b.failed} failed`),
      batchCard('inflight', 'In flight', String(b.inFlight || 0), '', `${b.pending} pending`),
      batchCard('throughput', 'Throughput', batchRate(b), '',
        left ? `ETA ${batchETA(b)}` : `took ${span(b.startedAt || b.createdAt, b.finishedAt)}`),
      batchCard('evictions', 'Evictions', String(b.evictions || 0), b.evictions ? 'warn' : '',
        `${b.released || 0} released, ${b.expired || 0} expired, ${b.redone || 0} redone`,
        `${b.released || 0} items given back on a notice, ${b.expired || 0} leases ran out (the node vanished), ${b.redone || 0} items scored twice`),
      batchCard('workers', 'Workers', String(b.workers || 0), '', `${b.workersPending || 0} waiting for a node`),
      batchCard('cost', 'Cost', fmtUSD(b.cost || 0), '', `vs ${fmtUSD(b.onDemandCost || 0)} on demand`,
        'the workers\' node time, and the same node time on demand')),
    batchProgress(b));
    const sp = b.spec?.spec || {};
    const row = (k, ...v) => [h('dt', null, k), h('dd', null, ...v)];
    about.replaceChildren(
      ...row('Input', h('code', null, sp.input?.uri || ''), sp.input?.pattern ? ` matching ${sp.input.pattern}` : ''),
      ...row('Output', h('code', null, sp.output?.uri || ''), sp.output?.format ? ` (${sp.output.format})` : ''),
      ...row('Model', h('code', null, sp.model?.uri || '')),
      ...row('Pool', sp.pool || 'any', sp.priority ? ` · ${sp.priority}` : ''),
      ...row('Trigger', sp.trigger || 'once'),
      ...row('Started', timeEl(b.startedAt), isZero(b.finishedAt) ? '' : [' · finished ', timeEl(b.finishedAt)]));
    const jobs = (store.jobs || []).filter((j) => j.job?.metadata?.labels?.['spotml/batchinference'] === name);
    workers.replaceChildren(h('span', null, jobs.length ? 'Worker jobs: ' : '', jobs.map((j, i) => [i ? ', ' : '',
      h('a', { href: `#/jobs/${enc(j.job.metadata.name)}` }, j.job.metadata.name)])));
    if (b.failed !== failedFor) loadFailed(false);
  }

  let seq = 0;
  async function loadFailed(force) {
    const b = current();
    if (!b) return;
    if (!force && b.failed === failedFor) return;
    failedFor = b.failed;
    const mine = ++seq;
    try {
      const items = b.failed ? await getJSON(`/batchinferences/${enc(name)}/items?state=failed&limit=${maxFailed}`) : [];
      if (mine !== seq) return;
      failedNote.textContent = !items.length ? 'No item has failed.'
        : b.failed > items.length ? `The first ${items.length} of ${b.failed} (spotml logs batchinference/${name} lists them all).` : '';
      syncRows(failed.tbody, items, (it) => it.id, (it) => JSON.stringify([it.reason, it.attempts, it.doneAt]),
        (it) => h('tr', { 'data-item': it.input },
          h('th', { scope: 'row' }, h('code', null, it.input)),
          h('td', { class: 'message wrap' }, it.reason || ''),
          h('td', { class: 'num' }, it.attempts),
          h('td', null, timeEl(it.doneAt))));
    } catch (e) {
      if (mine === seq && e.status !== 401) failedNote.replaceChildren(errorBox(e));
      failedFor = -1;
    }
  }

  sc.every(10000, () => render()); // the duration of a running batch
  return {
    el,
    update(kind) { if (!kind || kind === 'batches' || kind === 'jobs') render(); },
    destroy: sc.destroy,
  };
}
