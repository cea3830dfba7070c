// The Carapace dashboard: a page of plain DOM built from the daemon's JSON API.
//
// Rules this file keeps:
// - Every string from the API reaches the page as a text node or a DOM-set attribute, never
//   parsed as HTML, so a name or a reason cannot become markup.
// - The token lives in this tab's sessionStorage and travels only in the Authorization header:
//   never in a URL, a cookie or the page.
// - Live updates are level-triggered: an event on the stream only says "something changed";
//   the page then re-reads the state it shows, so a lost or merged event cannot leave it wrong.
'use strict';

const TOKEN_KEY = 'carapace.token';
const ROLE_KEY = 'carapace.role';
// Tests compare it before and after a live update: an update must not be a reload.
window.carapaceLoadedAt = Date.now();

// ---------------------------------------------------------------------------------------------
// The DOM, without HTML strings.

function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return fill(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);
}

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key === 'className' ? 'class' : key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Replaces an element's children; like `h`, it skips null and flattens arrays.
function put(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Formats.

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let value = n;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return `${value.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function seconds(ms) {
  if (ms === null || ms === undefined) return '—';
  return ms < 10000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`;
}

// Engine time (ms since the daemon's epoch), with how long ago it was.
function when(atMs, nowMs) {
  const ago = nowMs === undefined ? '' : ` (${seconds(Math.max(0, nowMs - atMs))} ago)`;
  return `t=${seconds(atMs)}${ago}`;
}

function version(v) {
  return v ? `runtime ${v.runtime} · config ${v.config}` : '—';
}

const RUNGS = {
  restart_in_place: [1, 'restart in place'],
  recreate: [2, 'recreate'],
  restore_known_good: [3, 'restore known-good'],
  alert: [4, 'alert'],
};

function rungText(rung) {
  if (typeof rung === 'number') {
    const name = Object.values(RUNGS).find(([n]) => n === rung);
    return name ? `rung ${rung} (${name[1]})` : `rung ${rung}`;
  }
  const known = RUNGS[rung];
  return known ? `rung ${known[0]} (${known[1]})` : String(rung);
}

// What an agent is doing, as a key for filters and colours and as words for people.
function stateOf(agent) {
  if (agent.status === 'parked') return { key: 'parked', text: 'parked · alerted' };
  if (agent.rung) return { key: 'recovering', text: `recovering · ${rungText(agent.rung)}` };
  if (agent.status === 'restarting') return { key: 'recovering', text: 'recovering · restarting' };
  if (agent.status === 'running') return { key: 'running', text: 'running' };
  return { key: 'other', text: agent.status || 'unknown' };
}

const STATES = ['running', 'recovering', 'parked', 'other'];

function badge(state) {
  return h('span', { className: `badge state-${state.key}`, 'data-state': state.key }, state.text);
}

function agentHref(agent) {
  return `#/agent/${encodeURIComponent(agent.tenant)}/${encodeURIComponent(agent.name)}`;
}

// ---------------------------------------------------------------------------------------------
// The API.

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  admin: () => sessionStorage.getItem(ROLE_KEY) === 'admin',
};

async function request(method, path, body, token) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await response.text();
  let value = text;
  try { value = JSON.parse(text); } catch { /* not JSON: keep the text */ }
  if (!response.ok) {
    const message = value && value.error ? value.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return value;
}

async function api(method, path, body) {
  try {
    return await request(method, path, body, session.token());
  } catch (error) {
    if (error.status === 401) logout('The daemon refused this token; log in again.');
    throw error;
  }
}

// A tenant's agent, addressed as the admin addresses it (the tenant's own token ignores it).
function agentPath(tenant, name, rest) {
  return `/v1/agents/${encodeURIComponent(name)}${rest || ''}?tenant=${encodeURIComponent(tenant)}`;
}

// ---------------------------------------------------------------------------------------------
// The live stream: /v1/events/stream read with fetch, because EventSource cannot send a header.

const live = {
  abort: null,
  listeners: new Set(),

  start() {
    if (this.abort) return;
    const controller = new AbortController();
    this.abort = controller;
    this.loop(controller.signal);
  },

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.show('', '');
  },

  show(state, text) {
    const el = $('live');
    el.dataset.state = state;
    el.textContent = text;
  },

  async loop(signal) {
    let backoffMs = 500;
    while (!signal.aborted) {
      try {
        const response = await fetch('/v1/events/stream', {
          headers: { Authorization: `Bearer ${session.token()}` },
          signal,
          cache: 'no-store',
        });
        if (response.status === 401) { logout('The daemon refused this token; log in again.'); return; }
        if (!response.ok || !response.body) throw new Error(`stream: ${response.status}`);
        this.show('live', 'live');
        backoffMs = 500;
        // Whatever happened while the stream was down is read again now.
        this.notify(null);
        await this.read(response.body.getReader(), signal);
      } catch (error) {
        if (signal.aborted) return;
      }
      this.show('reconnecting', 'reconnecting…');
      await new Promise((resolve) => setTimeout(resolve, backoffMs));
      backoffMs = Math.min(backoffMs * 2, 10000);
    }
  },

  // Server-sent events: blocks separated by a blank line, `event:` and `data:` fields.
  async read(reader, signal) {
    const decoder = new TextDecoder();
    let buffer = '';
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data) continue; // a keep-alive comment
        let entry = null;
        try { entry = JSON.parse(data); } catch { /* `lagged`: a count, not an entry */ }
        this.notify(entry);
      }
    }
  },

  notify(entry) {
    for (const listener of this.listeners) listener(entry);
  },
};

// ---------------------------------------------------------------------------------------------
// Pages and the router.

// The page on screen: its refresh re-reads what it shows; timers it set are cleared on leaving.
const current = { refresh: null, timers: [], generation: 0 };
let refreshing = false;
let dirty = false;
let pending = null;

// Runs the page's refresh; an event arriving meanwhile runs it once more after.
async function refreshNow() {
  if (!current.refresh) return;
  if (refreshing) { dirty = true; return; }
  refreshing = true;
  try {
    do {
      dirty = false;
      await current.refresh();
    } while (dirty);
  } catch (error) {
    showError(error);
  } finally {
    refreshing = false;
  }
}

function scheduleRefresh() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refreshNow(); }, 100);
}

live.listeners.add(() => scheduleRefresh());

const ROUTES = [
  [/^#\/fleet(?:\?(.*))?$/, fleetPage, 'fleet'],
  [/^#\/agent\/(\d+)\/([^/?]+)$/, agentPage, 'fleet'],
  [/^#\/incidents$/, incidentsPage, 'incidents'],
  [/^#\/incident\/(\d+)$/, incidentPage, 'incidents'],
  [/^#\/simulations$/, simulationsPage, 'simulations'],
];

async function route() {
  if (!session.token()) { loginPage(); return; }
  const hash = location.hash || '#/fleet';
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!found) { location.hash = '#/fleet'; return; }
  const [pattern, page, nav] = found;
  for (const timer of current.timers) clearInterval(timer);
  current.generation += 1;
  Object.assign(current, { refresh: null, timers: [] });
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.nav === nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  showChrome(true);
  live.start();
  const main = $('main');
  put(main, h('p', { className: 'muted' }, 'Loading…'));
  const args = pattern.exec(hash).slice(1).map((a) => (a === undefined ? '' : decodeURIComponent(a)));
  try {
    current.refresh = await page(main, ...args);
    await refreshNow();
  } catch (error) {
    showError(error);
  }
}

function showChrome(on) {
  $('nav').hidden = !on;
  $('logout').hidden = !on;
  $('who').textContent = on ? (session.admin() ? 'admin' : 'tenant') : '';
}

function showError(error) {
  const main = $('main');
  const old = main.querySelector('.notice.error.page');
  if (old) old.remove();
  main.prepend(h('p', { className: 'notice error page', role: 'alert' }, error.message || String(error)));
}

// A section whose content a refresh replaces, leaving the rest of the page (filters) alone.
function region(main, ...before) {
  const content = h('div', { className: 'content' });
  put(main, ...before, content);
  return content;
}

// ---------------------------------------------------------------------------------------------
// Login.

function loginPage() {
  live.stop();
  showChrome(false);
  const message = sessionStorage.getItem('carapace.message');
  sessionStorage.removeItem('carapace.message');
  const error = h('p', { className: 'error', id: 'login-error', role: 'alert' }, message || '');
  // No `name` on the input: even if this form were ever submitted by the browser, the token
  // would not be part of it (and the page's CSP forbids form submission altogether).
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const form = h('form', { id: 'login', onsubmit: (event) => { event.preventDefault(); login(input.value.trim(), error); } },
    h('label', { for: 'token' }, 'API token', input),
    h('button', { type: 'submit' }, 'Log in'));
  put($('main'), h('section', { className: 'login card' },
    h('h1', {}, 'Log in'),
    h('p', { className: 'muted' }, 'The admin token is the daemon\'s token file (data_dir/token); a tenant\'s token was shown once, when the tenant was created.'),
    form, error));
  input.focus();
}

async function login(token, error) {
  error.textContent = '';
  try {
    await request('GET', '/v1/agents', undefined, token);
  } catch (failure) {
    error.textContent = failure.status === 401 ? 'That token is not valid.' : failure.message;
    return;
  }
  // Fleet-wide routes exist only for the admin: that is how the page knows which it is.
  let role = 'tenant';
  try {
    await request('GET', '/v1/nodes', undefined, token);
    role = 'admin';
  } catch { /* a tenant's token */ }
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(ROLE_KEY, role);
  if (!location.hash || location.hash === '#/login') location.hash = '#/fleet';
  else route();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ROLE_KEY);
  if (message) sessionStorage.setItem('carapace.message', message);
  live.stop();
  loginPage();
}

// ---------------------------------------------------------------------------------------------
// Fleet.

async function fleetPage(main, query) {
  const params = new URLSearchParams(query);
  const filter = { tenant: params.get('tenant') || '', state: params.get('state') || '' };
  const tenantSelect = h('select', { id: 'filter-tenant' }, h('option', { value: '' }, 'every tenant'));
  const stateSelect = h('select', { id: 'filter-state' }, h('option', { value: '' }, 'every state'),
    STATES.map((s) => h('option', { value: s }, s)));
  stateSelect.value = filter.state;
  const onChange = () => {
    filter.tenant = tenantSelect.value;
    filter.state = stateSelect.value;
    const q = new URLSearchParams(Object.entries(filter).filter(([, v]) => v)).toString();
    // The filter is kept in the address (no reload, no hashchange), so a link shares it.
    history.replaceState(null, '', `#/fleet${q ? `?${q}` : ''}`);
    refreshNow();
  };
  tenantSelect.addEventListener('change', onChange);
  stateSelect.addEventListener('change', onChange);
  const filters = h('form', { className: 'filters', onsubmit: (e) => e.preventDefault() },
    h('label', {}, 'Tenant', tenantSelect), h('label', {}, 'State', stateSelect));
  const content = region(main, h('h1', {}, 'Fleet'), filters);

  return async () => {
    const [{ agents }, nodes] = await Promise.all([
      api('GET', '/v1/agents'),
      session.admin() ? api('GET', '/v1/nodes') : Promise.resolve(null),
    ]);
    const tenants = [...new Set(agents.map((a) => a.tenant))].sort((a, b) => a - b);
    const keep = tenantSelect.value || filter.tenant;
    put(tenantSelect, h('option', { value: '' }, 'every tenant'),
      tenants.map((t) => h('option', { value: t }, `tenant ${t}`)));
    tenantSelect.value = keep;
    const shown = agents.filter((a) => (!filter.tenant || String(a.tenant) === filter.tenant)
      && (!filter.state || stateOf(a).key === filter.state));
    put(content, counts(agents), ...nodeCards(nodes, shown),
      shown.length ? null : h('p', { className: 'muted', id: 'no-agents' },
        agents.length ? 'No agent matches the filters.' : 'No agents yet.'));
  };
}

function counts(agents) {
  const by = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const agent of agents) by[stateOf(agent).key] += 1;
  return h('ul', { className: 'counts', id: 'counts' },
    h('li', {}, `${agents.length} agents`),
    STATES.map((s) => h('li', { 'data-count': s }, `${by[s]} ${s}`)));
}

// One card per node: the admin's with its memory bar, a tenant's with its own agents only.
function nodeCards(nodes, agents) {
  const byNode = new Map();
  for (const agent of agents) {
    const key = agent.node === null || agent.node === undefined ? 'unplaced' : agent.node;
    if (!byNode.has(key)) byNode.set(key, []);
    byNode.get(key).push(agent);
  }
  const cards = [];
  for (const node of nodes ? nodes.nodes : []) {
    cards.push(nodeCard(node.id, node, byNode.get(node.id) || []));
    byNode.delete(node.id);
  }
  for (const [key, list] of byNode) cards.push(nodeCard(key, null, list));
  return cards;
}

function nodeCard(id, node, agents) {
  const title = id === 'unplaced' ? 'Not placed' : `Node ${id}`;
  const flags = node ? [node.memory.draining ? 'draining' : null, node.memory.lost ? 'lost' : null].filter(Boolean) : [];
  const reserved = agents.reduce((sum, a) => sum + (a.reservation_bytes || 0), 0);
  return h('section', { className: 'card node', 'data-node': id },
    h('h2', {}, title, flags.length ? ` · ${flags.join(', ')}` : ''),
    node ? memoryBar(node.memory, node.watermarks)
      : h('p', { className: 'legend' }, `${agents.length} agents shown here reserve ${bytes(reserved)}`),
    h('ul', { className: 'agents' }, agents.map((agent) => {
      const state = stateOf(agent);
      return h('li', {},
        h('a', { className: `agent state-${state.key}`, href: agentHref(agent), 'data-agent': agent.name, 'data-tenant': agent.tenant, 'data-state': state.key },
          h('div', { className: 'name' }, agent.name),
          h('div', { className: 'state' }, state.text),
          h('div', { className: 'legend' }, `tenant ${agent.tenant} · reserves ${bytes(agent.reservation_bytes)}`)));
    })));
}

// Used and committed memory against the node's capacity, the overcommit cap dashed, the
// watermarks as red ticks; every number in the text below as well.
function memoryBar(memory, watermarks) {
  const total = Math.max(memory.capacity_bytes, memory.cap_bytes, memory.committed_bytes, 1);
  const x = (n) => Math.min(1000, Math.round((1000 * n) / total));
  const marks = watermarks ? [watermarks.stop_placing, watermarks.migrate, watermarks.evict] : [];
  const text = `used ${bytes(memory.used_bytes)} · reserved ${bytes(memory.reserved_bytes)} · committed (limits) ${bytes(memory.committed_bytes)} of cap ${bytes(memory.cap_bytes)} · capacity ${bytes(memory.capacity_bytes)}`
    + (marks.length ? ` · watermarks ${marks.map((m) => `${Math.round(m * 100)}%`).join(' / ')} of capacity` : '');
  return h('div', { className: 'memory' },
    svg('svg', { className: 'bar', viewBox: '0 0 1000 24', preserveAspectRatio: 'none', role: 'img', 'aria-label': text },
      svg('rect', { className: 'capacity', x: 0, y: 0, width: x(memory.capacity_bytes), height: 24 }),
      svg('rect', { className: 'committed', x: 0, y: 4, width: x(memory.committed_bytes), height: 16 }),
      svg('rect', { className: 'used', x: 0, y: 8, width: x(memory.used_bytes), height: 8 }),
      svg('line', { className: 'cap', x1: x(memory.cap_bytes), x2: x(memory.cap_bytes), y1: 0, y2: 24 }),
      marks.map((m) => svg('line', { className: 'watermark', x1: x(m * memory.capacity_bytes), x2: x(m * memory.capacity_bytes), y1: 0, y2: 6 }))),
    h('p', { className: 'legend' }, text));
}

// ---------------------------------------------------------------------------------------------
// One agent.

async function agentPage(main, tenant, name) {
  const status = h('p', { id: 'action-result', role: 'status' });
  const content = region(main, h('h1', {}, name, h('span', { className: 'muted' }, ` · tenant ${tenant}`)), status);
  const generation = current.generation;
  // Memory samples are not events: the chart is read again every few seconds.
  current.timers.push(setInterval(() => { if (current.generation === generation) scheduleRefresh(); }, 5000));
  const act = (label, text, method, path, body) => async () => {
    if (!(await confirmAction(label, text))) return;
    status.className = 'notice';
    status.textContent = `${label}: sent…`;
    try {
      const answer = await api(method, path, body);
      status.textContent = `${label}: ${describeDone(answer.done)}`;
      scheduleRefresh();
    } catch (error) {
      status.className = 'notice error';
      status.textContent = `${label}: ${error.message}`;
    }
  };

  return async () => {
    let agent;
    try {
      agent = await api('GET', agentPath(tenant, name));
    } catch (error) {
      if (error.status !== 404) throw error;
      put(content, h('p', { className: 'notice error', id: 'not-found' }, error.message));
      return;
    }
    const [versions, memory, events] = await Promise.all([
      api('GET', agentPath(tenant, name, '/versions')),
      api('GET', agentPath(tenant, name, '/memory')),
      api('GET', '/v1/events'),
    ]);
    const mine = events.events.filter((e) => e.agent === name && e.tenant === agent.tenant);
    const state = stateOf(agent);
    const actions = h('div', { className: 'actions' },
      h('button', { type: 'button', id: 'restart', onclick: act('Restart', `Restart ${name} in place? Its process is stopped and its supervisor starts it again; clients see a short outage.`, 'POST', agentPath(tenant, name, '/restart')) }, 'Restart'),
      h('button', { type: 'button', id: 'recreate', onclick: act('Recreate', `Recreate ${name}? A new instance starts from its latest snapshot and the current one is stopped.`, 'POST', agentPath(tenant, name, '/recreate')) }, 'Recreate'),
      session.admin() && agent.node !== null && agent.node !== undefined
        ? h('button', { type: 'button', id: 'drain', onclick: act('Drain node', `Drain node ${agent.node}? No agent is placed on it any more and its agents move to other nodes.`, 'POST', `/v1/nodes/${agent.node}/drain`) }, `Drain node ${agent.node}`)
        : null);
    put(content,
      h('p', {}, badge(state)),
      h('section', { className: 'card' }, h('dl', { className: 'facts' },
        fact('Status', agent.status, 'status'),
        fact('Incident', agent.rung ? rungText(agent.rung) : 'none open', 'rung'),
        fact('Desired version', version(agent.version), 'desired-version'),
        fact('Running version', version(agent.running_version), 'running-version'),
        fact('Known-good version', version(agent.known_good), 'known-good'),
        fact('Instance', agent.instance, 'instance'),
        fact('Node', agent.node ?? '—', 'node'),
        fact('Memory limit', bytes(agent.memory_limit_bytes)),
        fact('Reservation', bytes(agent.reservation_bytes)),
        fact('Process', agent.pod ? `pid ${agent.pod.agent_pid ?? '—'} · port ${agent.pod.port ?? '—'}` : '—'),
        fact('Latest snapshot', agent.latest_snapshot ?? '—'))),
      actions,
      h('h2', {}, 'Memory'),
      memoryChart(memory),
      h('h2', {}, 'Config versions'),
      versionsTable(versions, agent, act, tenant, name),
      h('h2', {}, 'Snapshots'),
      snapshotsTable(versions.snapshots),
      h('h2', {}, 'Timeline'),
      timeline(mine, events.now_ms));
  };
}

function fact(term, value, id) {
  return [h('dt', {}, term), h('dd', { id: id ? `fact-${id}` : null }, value === null || value === undefined ? '—' : String(value))];
}

function describeDone(done) {
  if (!done) return 'done';
  if (done.restarted !== undefined) return `instance ${done.restarted} is restarting in place`;
  if (done.restored !== undefined) return `config version ${done.restored} restored as version ${done.config_version}`;
  if (done.config_version !== undefined) return `recreating at config version ${done.config_version}`;
  if (done.draining !== undefined) return `node ${done.draining} is draining`;
  return 'done';
}

function versionsTable(versions, agent, act, tenant, name) {
  const tags = (v) => [
    agent.version && agent.version.config === v ? 'desired' : null,
    agent.running_version && agent.running_version.config === v ? 'running' : null,
    agent.known_good && agent.known_good.config === v ? 'known-good' : null,
  ].filter(Boolean).join(', ');
  const rows = [...versions.config_versions].reverse().map((v) => h('tr', { 'data-version': v },
    h('td', {}, `config ${v}`),
    h('td', {}, tags(v) || '—'),
    h('td', {}, agent.version && agent.version.config === v ? null
      : h('button', { type: 'button', 'data-restore': v, onclick: act(`Restore config ${v}`, `Restore config version ${v} of ${name}? It becomes a new config version and the agent restarts on it from a snapshot.`, 'POST', agentPath(tenant, name, '/restore'), { config_version: v }) }, 'Restore'))));
  if (!rows.length) return h('p', { className: 'muted' }, 'This agent has no config file, so no config versions.');
  return h('div', { className: 'scroll' }, h('table', { id: 'versions' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', {}, 'Is'), h('th', {}, 'Action'))),
    h('tbody', {}, rows)));
}

function snapshotsTable(snapshots) {
  if (!snapshots.length) return h('p', { className: 'muted' }, 'No snapshots yet.');
  return h('div', { className: 'scroll' }, h('table', { id: 'snapshots' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Snapshot'), h('th', {}, 'Files'), h('th', {}, 'Size'))),
    h('tbody', {}, [...snapshots].reverse().map((s) => h('tr', {}, h('td', {}, s.id), h('td', {}, s.files), h('td', {}, bytes(s.bytes)))))));
}

// Every decision and observation about the agent, newest first; the reason is in its words.
function timeline(entries, nowMs) {
  if (!entries.length) return h('p', { className: 'muted' }, 'Nothing recorded yet.');
  return h('div', { className: 'scroll' }, h('table', { id: 'timeline' },
    h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Kind'), h('th', {}, 'Event'), h('th', {}, 'What, and why'))),
    h('tbody', {}, entries.slice(-300).reverse().map((e) => h('tr', { 'data-event': e.event, 'data-kind': e.kind },
      h('td', {}, when(e.at_ms, nowMs)), h('td', {}, e.kind), h('td', {}, e.event), h('td', { className: 'what' }, e.what))))));
}

function memoryChart(memory) {
  const points = memory.points;
  if (points.length < 2) return h('p', { className: 'muted', id: 'memory' }, 'Not enough memory samples yet.');
  const t0 = points[0].at_ms;
  const t1 = Math.max(points[points.length - 1].at_ms, t0 + 1);
  // Scaled to the samples, not to the limit: an agent far below its limit still shows its
  // shape. The limit line is drawn when it is in range; the caption always says it.
  const top = Math.max(...points.map((p) => p.bytes), 1) * 1.25;
  const x = (t) => ((1000 * (t - t0)) / (t1 - t0)).toFixed(1);
  const y = (b) => (200 - (200 * b) / top).toFixed(1);
  const last = points[points.length - 1];
  const peak = Math.max(...points.map((p) => p.bytes));
  const text = `${points.length} samples over ${seconds(t1 - t0)}: now ${bytes(last.bytes)}, peak ${bytes(peak)}, limit ${bytes(memory.memory_limit_bytes)}${memory.memory_limit_bytes <= top ? ' (dashed)' : ', off the chart'}`;
  return h('figure', { id: 'memory' },
    svg('svg', { className: 'chart', viewBox: '0 0 1000 200', preserveAspectRatio: 'none', role: 'img', 'aria-label': text },
      memory.memory_limit_bytes <= top
        ? svg('line', { className: 'limit', x1: 0, x2: 1000, y1: y(memory.memory_limit_bytes), y2: y(memory.memory_limit_bytes) }) : null,
      svg('polyline', { className: 'series', points: points.map((p) => `${x(p.at_ms)},${y(p.bytes)}`).join(' ') })),
    h('figcaption', { className: 'legend' }, text));
}

// A confirmation for every action, in a dialog the page owns (a test can see and press it).
function confirmAction(title, text) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => {
      dialog.close();
      $('confirm-ok').onclick = null;
      $('confirm-cancel').onclick = null;
      resolve(answer);
    };
    $('confirm-ok').onclick = done(true);
    $('confirm-cancel').onclick = done(false);
    dialog.oncancel = done(false);
    dialog.showModal();
  });
}

// ---------------------------------------------------------------------------------------------
// Incidents and post-mortems.

async function incidentsPage(main) {
  const content = region(main, h('h1', {}, 'Incidents'),
    h('p', { className: 'muted' }, 'From the first observation that an agent is not serving to the next time it is ready. Times are the engine\'s, from the daemon\'s start.'));
  return async () => {
    const { incidents, now_ms: nowMs } = await api('GET', '/v1/incidents');
    if (!incidents.length) {
      put(content, h('p', { className: 'muted', id: 'no-incidents' }, 'No incidents.'));
      return;
    }
    put(content, h('div', { className: 'scroll' }, h('table', { id: 'incidents' },
      h('thead', {}, h('tr', {}, ['Agent', 'Tenant', 'Cause', 'Rung', 'Detected', 'Recovered in', ''].map((c) => h('th', {}, c)))),
      h('tbody', {}, [...incidents].reverse().map((i) => h('tr', { 'data-agent': i.agent, 'data-seq': i.detected_seq },
        h('td', {}, h('a', { href: agentHref({ tenant: i.tenant, name: i.agent }) }, i.agent)),
        h('td', {}, i.tenant ?? '—'),
        h('td', {}, i.cause),
        h('td', {}, rungText(i.rung)),
        h('td', {}, when(i.detected_at_ms, nowMs)),
        h('td', {}, i.alerted ? 'not: alerted, parked' : (i.recovery_ms === null ? 'open' : seconds(i.recovery_ms))),
        h('td', {}, h('a', { href: `#/incident/${i.detected_seq}`, className: 'post-mortem' }, 'post-mortem'))))))));
  };
}

async function incidentPage(main, seq) {
  const content = region(main, h('h1', {}, 'Post-mortem'));
  return async () => {
    const [{ incidents, now_ms: nowMs }, events, alerts] = await Promise.all([
      api('GET', '/v1/incidents'), api('GET', '/v1/events'), api('GET', '/v1/alerts')]);
    const incident = incidents.find((i) => String(i.detected_seq) === seq);
    if (!incident) {
      put(content, h('p', { className: 'notice error', id: 'not-found' }, `No incident ${seq} in the daemon's recent feed.`));
      return;
    }
    const end = incident.recovered_at_ms ?? Infinity;
    const story = events.events.filter((e) => e.agent === incident.agent && e.tenant === incident.tenant
      && e.seq >= incident.detected_seq - 5 && e.at_ms <= end);
    const alert = incident.alerted
      ? alerts.alerts.find((a) => a.tenant === incident.tenant && a.at >= incident.detected_at_ms) : null;
    put(content,
      h('section', { className: 'card' }, h('dl', { className: 'facts' },
        fact('Agent', incident.agent, 'agent'),
        fact('Tenant', incident.tenant),
        fact('Cause', `${incident.cause}: ${incident.what}`, 'cause'),
        fact('Highest rung', rungText(incident.rung), 'incident-rung'),
        fact('Detected', when(incident.detected_at_ms, nowMs)),
        fact('Recovered', incident.alerted ? 'no: alerted and parked' : (incident.recovered_at_ms === null ? 'not yet' : `${when(incident.recovered_at_ms, nowMs)}, ${seconds(incident.recovery_ms)} after detection`), 'recovered'))),
      h('h2', {}, 'Replay'),
      h('p', { className: 'muted' }, 'Re-runs the engine on the journal up to this point and checks every decision is made again (stop the daemon first, or replay a copy of the store):'),
      h('pre', { className: 'command', id: 'replay-command' }, alert ? alert.replay_command : incident.replay_command),
      h('h2', {}, 'What happened'),
      timeline(story, nowMs),
      alert ? engineRecord(alert) : null,
      h('p', {}, h('a', { href: agentHref({ tenant: incident.tenant, name: incident.agent }) }, `Open ${incident.agent}`)));
  };
}

// The engine's own post-mortem of an alert: its rungs, versions and bounded timeline.
function engineRecord(alert) {
  return h('section', {},
    h('h2', {}, 'The engine\'s post-mortem'),
    h('dl', { className: 'facts' },
      fact('Rungs climbed', alert.rungs.map(rungText).join(' → ')),
      fact('Desired version', version(alert.desired_version)),
      fact('Known-good version', version(alert.known_good_version)),
      fact('Memory limit', bytes(alert.memory_bytes_limit))),
    memoryChart({ memory_limit_bytes: alert.memory_bytes_limit, points: alert.memory_history.map((p) => ({ at_ms: p.at, bytes: p.memory_bytes })) }),
    h('div', { className: 'scroll' }, h('table', {},
      h('tbody', {}, alert.timeline.entries.map((e) => h('tr', {}, h('td', { className: 'what' }, JSON.stringify(e))))))));
}

// ---------------------------------------------------------------------------------------------
// Simulations: report directories opened from this computer, read in the browser.

async function simulationsPage(main) {
  const runs = { a: null, b: null };
  const compare = h('section', { id: 'compare' });
  const slot = (key, label) => {
    const out = h('div', { className: 'run', id: `run-${key}` }, h('p', { className: 'muted' }, 'No report opened.'));
    const input = h('input', { type: 'file', id: `report-${key}`, webkitdirectory: true, multiple: true });
    input.addEventListener('change', async () => {
      try {
        runs[key] = await readReport(input.files);
        put(out, ...runView(runs[key]));
      } catch (error) {
        runs[key] = null;
        put(out, h('p', { className: 'notice error' }, `${label}: ${error.message}`));
      }
      put(compare, ...(runs.a && runs.b ? comparison(runs.a, runs.b) : []));
    });
    return h('section', { className: 'card' }, h('h2', {}, label), h('label', { for: `report-${key}` }, 'Report directory (carapace sim --out DIR)', input), out);
  };
  put(main, h('h1', {}, 'Simulations'),
    h('p', { className: 'muted' }, 'Open the directory a run of carapace sim wrote. Its files are read here, in the browser; nothing is uploaded.'),
    h('div', { className: 'runs' }, slot('a', 'Run A'), slot('b', 'Run B')),
    compare);
  return null;
}

async function readReport(files) {
  const list = [...files];
  const metrics = list.find((f) => f.name === 'metrics.json');
  if (!metrics) throw new Error('metrics.json: not in the chosen directory (is it a report directory?)');
  let summary;
  try { summary = JSON.parse(await metrics.text()); } catch (error) { throw new Error(`metrics.json: does not parse: ${error.message}`); }
  if (!Array.isArray(summary.slo)) throw new Error('metrics.json: has no `slo` table');
  const plots = list.filter((f) => f.name.endsWith('.svg')).sort((x, y) => x.name.localeCompare(y.name))
    .map((f) => ({ name: f.name, url: URL.createObjectURL(f) }));
  return { summary, plots };
}

function runView(run) {
  const s = run.summary;
  return [
    h('p', { className: 'legend' }, `${s.scenario} · seed ${s.seed} · ${s.agents} agents on ${s.nodes} nodes · ${s.incidents} incidents`),
    sloTable(s.slo),
  ];
}

function sloTable(slo) {
  return h('div', { className: 'scroll' }, h('table', { className: 'slo' },
    h('thead', {}, h('tr', {}, ['SLO', 'Target', 'Measured', 'Verdict'].map((c) => h('th', {}, c)))),
    h('tbody', {}, slo.map((row) => h('tr', { 'data-slo': row.name },
      h('td', {}, row.name), h('td', {}, `${row.comparison} ${row.target} ${row.unit}`),
      h('td', {}, `${row.measured} ${row.unit}`), h('td', { className: row.pass ? 'pass' : 'fail' }, row.pass ? 'pass' : 'FAIL'))))));
}

// The two runs' SLOs row by row, then their plots side by side.
function comparison(a, b) {
  const names = [...new Set([...a.summary.slo, ...b.summary.slo].map((r) => r.name))];
  const find = (run, name) => run.summary.slo.find((r) => r.name === name);
  const cell = (row) => (row ? `${row.measured} ${row.unit} ${row.pass ? '(pass)' : '(FAIL)'}` : '—');
  const delta = (ra, rb) => (ra && rb ? (rb.measured - ra.measured).toFixed(3) : '—');
  const plotNames = [...new Set([...a.plots, ...b.plots].map((p) => p.name))];
  return [
    h('h2', {}, `Compare: ${a.summary.scenario} (seed ${a.summary.seed}) and ${b.summary.scenario} (seed ${b.summary.seed})`),
    h('div', { className: 'scroll' }, h('table', { id: 'comparison' },
      h('thead', {}, h('tr', {}, ['SLO', 'Run A', 'Run B', 'B − A'].map((c) => h('th', {}, c)))),
      h('tbody', {}, names.map((name) => {
        const [ra, rb] = [find(a, name), find(b, name)];
        return h('tr', { 'data-slo': name }, h('td', {}, name), h('td', {}, cell(ra)), h('td', {}, cell(rb)), h('td', {}, delta(ra, rb)));
      })))),
    plotNames.map((name) => [
      h('h2', {}, name),
      h('div', { className: 'plots' }, [a, b].map((run, i) => {
        const plot = run.plots.find((p) => p.name === name);
        return plot ? h('img', { src: plot.url, alt: `${name}, run ${i ? 'B' : 'A'}` }) : h('p', { className: 'muted' }, 'not in this run');
      })),
    ]),
  ];
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
$('logout').addEventListener('click', () => logout(''));
route();
