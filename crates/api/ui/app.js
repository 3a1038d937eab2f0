// The Connections screen: sign-in, project choice, list, create, details and actions,
// all through the public JSON API. Routes live in the URL fragment (#/, #/new, #/c/<id>),
// which never reaches the server.

import { api, ApiError, enc, onUnauthorized, query, request, session } from './api.js';
import { announce, h, statusBadge, statusLabel, time } from './dom.js';
import {
  clearErrors,
  clearSecrets,
  field,
  formError,
  oauthConfigForm,
  plainApiMessage,
  secretConfigForm,
  showError,
} from './forms.js';

const PAGE_SIZE = 25;
const POLL_MS = 1500;
/** The consent link is valid for ten minutes; waiting longer is pointless. */
const POLL_GIVE_UP_MS = 10 * 60 * 1000;

const main = document.getElementById('main');
const state = {
  me: null,
  types: null,
  /** Message shown on the sign-in form (after a 401 or a sign-out). */
  signInNotice: null,
  /** Cleanup of the current view (timers, listeners). */
  leave: null,
  /** Filters and paging of the list, kept while moving between views. */
  list: { status: '', type: '', q: '', cursors: [null] },
};

onUnauthorized((err) => {
  session.clear();
  state.me = null;
  state.signInNotice = `You were signed out: ${plainApiMessage(err)} Sign in again with a valid admin token or access key.`;
  renderSignIn();
});

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  state.me = null;
  state.types = null;
  state.list = { status: '', type: '', q: '', cursors: [null] };
  state.signInNotice = 'You are signed out. The key was removed from this browser tab.';
  if (location.hash && location.hash !== '#/') window.history.replaceState(null, '', '#/');
  renderSignIn();
});

window.addEventListener('hashchange', () => route());
route();

// ---------------------------------------------------------------------------------------
// Routing and chrome
// ---------------------------------------------------------------------------------------

async function route() {
  if (state.leave) {
    state.leave();
    state.leave = null;
  }
  if (!session.token()) {
    renderSignIn();
    return;
  }
  try {
    if (!state.me) state.me = (await api.get('/v1/me')).data;
    if (state.me.kind === 'access_key') session.setProject(state.me.project_id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    show(h('h1', { tabindex: '-1' }, 'Latchkey is not reachable'), h('p', { role: 'alert' }, plainApiMessage(e)));
    return;
  }
  updateSession();
  const hash = location.hash.replace(/^#/, '') || '/';
  const project = session.project();
  if (hash === '/projects' || !project) {
    await renderProjects();
  } else if (hash === '/new') {
    await renderNew(null);
  } else if (hash.startsWith('/new/')) {
    await renderNew(decodeURIComponent(hash.slice(5)));
  } else if (hash.startsWith('/c/')) {
    await renderDetails(decodeURIComponent(hash.slice(3)));
  } else {
    await renderList();
  }
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function updateSession() {
  const box = document.getElementById('session');
  const who = document.getElementById('session-who');
  const me = state.me;
  box.hidden = !me;
  if (!me) return;
  who.textContent = me.kind === 'admin' ? 'Admin' : `Access key · ${me.project_id}`;
}

/** Replaces the page content and moves focus to its heading, as a page load would. */
function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: false });
    document.title = `${heading.textContent} · Latchkey`;
  }
}

function projectBar() {
  const project = session.project();
  return h(
    'p',
    { class: 'project-bar' },
    'Project ',
    h('strong', { class: 'mono' }, project),
    state.me && state.me.kind === 'admin' ? h('a', { href: '#/projects', class: 'inline-link' }, 'Change project') : null,
  );
}

function canWrite() {
  return state.me && (state.me.kind === 'admin' || state.me.scopes.includes('connections:write'));
}

async function connectionTypes() {
  if (!state.types) state.types = (await api.get('/v1/connection-types')).data;
  return state.types;
}

function typeLabel(type) {
  const t = (state.types || []).find((x) => x.type === type);
  return t ? t.label : type;
}

function loading(text = 'Loading…') {
  return h('p', { class: 'muted', role: 'status' }, text);
}

function failure(e) {
  return h('p', { class: 'alert alert-error', role: 'alert' }, plainApiMessage(e));
}

// ---------------------------------------------------------------------------------------
// Sign-in and project choice
// ---------------------------------------------------------------------------------------

function renderSignIn() {
  if (state.leave) {
    state.leave();
    state.leave = null;
  }
  updateSession();
  const key = field({
    label: 'Admin token or access key',
    secret: true,
    required: true,
    hint: 'Kept only in this browser tab (sessionStorage) until you sign out or close the tab.',
  });
  const err = formError();
  const form = h(
    'form',
    { class: 'card narrow', novalidate: true },
    err,
    key,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button primary' }, 'Sign in')),
  );
  const notice = state.signInNotice
    ? h('p', { class: 'alert alert-warn', role: 'alert' }, state.signInNotice)
    : null;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const value = key.control.value.trim();
    if (!value) {
      showError(form, { message: 'Paste an admin token or an access key.', field: null });
      return;
    }
    session.setToken(value);
    key.control.value = '';
    try {
      state.me = (await request('GET', '/v1/me', undefined, { signIn: true })).data;
    } catch (e) {
      session.clear();
      showError(form, e.status === 401 ? { message: 'That key was not accepted: it is unknown or was revoked.' } : e);
      return;
    }
    state.signInNotice = null;
    if (state.me.kind === 'access_key') session.setProject(state.me.project_id);
    go('#/');
  });
  show(
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Manage the connections (API keys, passwords and OAuth accounts) your flows use.'),
    notice,
    form,
  );
}

async function renderProjects() {
  if (state.me.kind !== 'admin') {
    go('#/');
    return;
  }
  const input = field({
    label: 'Project ID',
    required: true,
    code: true,
    value: session.project() || '',
    hint: 'The project whose connections you want to manage.',
  });
  const err = formError();
  const form = h(
    'form',
    { class: 'card narrow', novalidate: true },
    err,
    input,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button primary' }, 'Open project')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = input.control.value.trim();
    if (!/^[A-Za-z0-9._:-]{1,128}$/.test(p)) {
      showError(form, { message: 'A project ID is 1 to 128 letters, digits, dots, colons, dashes or underscores.', field: null });
      return;
    }
    openProject(p);
  });
  const known = h('div', {}, loading('Looking for projects that have connections…'));
  show(h('h1', {}, 'Choose a project'), form, h('h2', {}, 'Projects with connections'), known);
  try {
    const projects = await knownProjects();
    known.replaceChildren(
      projects.length
        ? h(
            'ul',
            { class: 'project-list' },
            projects.map((p) =>
              h('li', {}, h('button', { type: 'button', class: 'button', onclick: () => openProject(p) }, p)),
            ),
          )
        : h('p', { class: 'muted' }, 'No project has connections yet. Type a project ID above to create its first one.'),
    );
  } catch (e) {
    known.replaceChildren(failure(e));
  }
}

function openProject(p) {
  session.setProject(p);
  state.list = { status: '', type: '', q: '', cursors: [null] };
  go('#/');
}

/** The admin may list across projects: the distinct projects of the first few pages. */
async function knownProjects() {
  const seen = new Set();
  let after = null;
  for (let i = 0; i < 5; i += 1) {
    const page = await api.get(`/v1/connections${query({ limit: 200, after })}`);
    for (const c of page.data) seen.add(c.project_id);
    after = page.page && page.page.next_cursor;
    if (!after) break;
  }
  return [...seen].sort();
}

// ---------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------

async function renderList() {
  const ls = state.list;
  let types = [];
  try {
    types = await connectionTypes();
  } catch (e) {
    show(h('h1', {}, 'Connections'), projectBar(), failure(e));
    return;
  }
  const statusSel = field({
    label: 'Status',
    filter: true,
    kind: 'select',
    value: ls.status,
    options: [
      ['', 'All statuses'],
      ['active', 'Active'],
      ['inactive', 'Inactive (expired)'],
      ['incomplete', 'Incomplete'],
    ],
  });
  const typeSel = field({
    label: 'Type',
    filter: true,
    kind: 'select',
    value: ls.type,
    options: [['', 'All types'], ...types.map((t) => [t.type, t.label])],
  });
  const search = field({ label: 'Search by name', type: 'search', value: ls.q, filter: true });
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter connections' }, statusSel, typeSel, search);
  const results = h('div', { class: 'results' }, loading());
  const newButton = canWrite() ? h('a', { class: 'button primary', href: '#/new' }, 'New connection') : null;
  show(
    h('div', { class: 'title-row' }, h('h1', {}, 'Connections'), newButton),
    projectBar(),
    filters,
    results,
  );

  let timer = null;
  let generation = 0;
  const refilter = () => {
    ls.status = statusSel.control.value;
    ls.type = typeSel.control.value;
    ls.q = search.control.value.trim();
    ls.cursors = [null];
    load();
  };
  statusSel.control.addEventListener('change', refilter);
  typeSel.control.addEventListener('change', refilter);
  search.control.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(refilter, 250);
  });
  filters.addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    refilter();
  });
  state.leave = () => clearTimeout(timer);

  async function load() {
    generation += 1;
    const mine = generation;
    results.setAttribute('aria-busy', 'true');
    const after = ls.cursors[ls.cursors.length - 1];
    let page;
    try {
      page = await api.get(
        `/v1/connections${query({
          project_id: session.project(),
          status: ls.status,
          type: ls.type,
          q: ls.q,
          limit: PAGE_SIZE,
          after,
        })}`,
      );
    } catch (e) {
      if (mine === generation) results.replaceChildren(failure(e));
      return;
    }
    if (mine !== generation) return;
    results.removeAttribute('aria-busy');
    const filtered = Boolean(ls.status || ls.type || ls.q);
    const items = page.data;
    if (!items.length && ls.cursors.length === 1) {
      results.replaceChildren(emptyState(filtered));
      announce(filtered ? 'No connections match the filters.' : 'This project has no connections yet.');
      return;
    }
    const table = connectionTable(items);
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
    const pageNo = ls.cursors.length;
    if (pageNo > 1) {
      pager.append(
        h('button', { type: 'button', class: 'button', onclick: () => { ls.cursors.pop(); load(); } }, 'Previous page'),
      );
    }
    pager.append(h('span', { class: 'muted' }, `Page ${pageNo}`));
    const next = page.page && page.page.next_cursor;
    if (next) {
      pager.append(
        h('button', { type: 'button', class: 'button', onclick: () => { ls.cursors.push(next); load(); } }, 'Next page'),
      );
    }
    results.replaceChildren(table, pager);
    announce(`${items.length} connection${items.length === 1 ? '' : 's'} shown, page ${pageNo}.`);
    fillFlowCounts(table, items, () => mine === generation);
  }
  load();
}

function emptyState(filtered) {
  if (filtered) {
    return h(
      'div',
      { class: 'empty' },
      h('p', {}, 'No connection matches these filters.'),
      h('button', {
        type: 'button',
        class: 'button',
        onclick: () => {
          state.list = { status: '', type: '', q: '', cursors: [null] };
          route();
        },
      }, 'Clear the filters'),
    );
  }
  return h(
    'div',
    { class: 'empty' },
    h('h2', {}, 'No connections yet'),
    h(
      'p',
      {},
      'A connection holds what a flow needs to call an outside service: an API key, a username and password, custom fields, or an OAuth account (Google, Microsoft, GitHub and others). Flows of this project can use every connection in it.',
    ),
    canWrite()
      ? h('p', {}, h('a', { class: 'button primary', href: '#/new' }, 'Create the first connection'))
      : h('p', { class: 'muted' }, 'This key may only read connections; ask an admin to create one.'),
  );
}

function connectionTable(items) {
  const head = h(
    'thead',
    {},
    h('tr', {}, ['Name', 'Type', 'Status', 'Last used', 'Flows', 'Next refresh'].map((t) => h('th', { scope: 'col' }, t))),
  );
  const body = h('tbody', {});
  for (const c of items) {
    const row = h(
      'tr',
      { 'data-id': c.id },
      h('th', { scope: 'row', 'data-label': 'Name' }, h('a', { href: `#/c/${enc(c.id)}` }, c.name)),
      h('td', { 'data-label': 'Type' }, typeLabel(c.type)),
      h('td', { 'data-label': 'Status' }, statusBadge(c.status)),
      h('td', { 'data-label': 'Last used' }, time(c.last_used_at)),
      h('td', { 'data-label': 'Flows', class: 'flows' }, h('span', { class: 'muted' }, '…')),
      h(
        'td',
        { 'data-label': 'Next refresh' },
        c.oauth2 ? time(c.oauth2.next_refresh_at, c.status === 'active' ? 'Not needed' : '—') : h('span', { class: 'muted' }, 'Not OAuth'),
      ),
    );
    body.append(row);
  }
  return h(
    'div',
    { class: 'table-wrap' },
    h('table', { class: 'connections' }, h('caption', { class: 'visually-hidden' }, 'Connections of this project'), head, body),
  );
}

/** The list answer has no usage counts: each row's count comes from its details. */
async function fillFlowCounts(table, items, current) {
  const queue = [...items];
  const worker = async () => {
    while (queue.length && current()) {
      const c = queue.shift();
      const cell = table.querySelector(`tr[data-id="${c.id}"] .flows`);
      try {
        const d = (await api.get(`/v1/connections/${enc(c.id)}`)).data;
        if (cell && current()) cell.replaceChildren(String(flowCount(d)));
      } catch {
        if (cell && current()) cell.replaceChildren(h('span', { class: 'muted' }, 'unknown'));
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

function flowCount(d) {
  if (typeof d.used_by_total === 'number') return d.used_by_total;
  return (d.used_by || []).length;
}

// ---------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------

async function renderNew(type) {
  let types;
  try {
    types = await connectionTypes();
  } catch (e) {
    show(h('h1', {}, 'New connection'), failure(e));
    return;
  }
  const back = h('p', {}, h('a', { href: '#/', class: 'back-link' }, '← All connections'));
  if (!type) {
    const group = (title, list) =>
      h(
        'section',
        { class: 'type-group' },
        h('h2', {}, title),
        h('ul', { class: 'type-grid' }, list.map((t) => h('li', {}, h('a', { class: 'type-card', href: `#/new/${enc(t.type)}` }, h('strong', {}, t.label), h('span', { class: 'muted' }, typeHint(t)))))),
      );
    show(
      back,
      h('h1', {}, 'New connection'),
      projectBar(),
      h('p', {}, 'What does the service ask for?'),
      group('A secret', types.filter((t) => !t.oauth)),
      group('An OAuth account', types.filter((t) => t.oauth)),
    );
    return;
  }
  const info = types.find((t) => t.type === type);
  if (!info) {
    show(back, h('h1', {}, 'Unknown connection type'), h('p', {}, `“${type}” is not a connection type.`));
    return;
  }
  let clients = [];
  if (info.oauth) {
    try {
      clients = (await api.get('/v1/oauth2-clients')).data;
    } catch {
      clients = [];
    }
  }
  const name = field({ label: 'Name', required: true, field: 'name', hint: 'How flows and people will recognise it, such as “Stripe production”.' });
  const config = info.oauth ? oauthConfigForm(info, clients) : secretConfigForm(type);
  const err = formError();
  const submit = h('button', { type: 'submit', class: 'button primary' }, info.oauth ? 'Create, then connect' : 'Create connection');
  const form = h(
    'form',
    { class: 'card', novalidate: true, 'aria-labelledby': 'new-title' },
    err,
    name,
    config,
    h('div', { class: 'actions' }, submit, h('a', { href: '#/new', class: 'button quiet' }, 'Cancel')),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const body = { name: name.control.value.trim(), project_id: session.project(), type };
    try {
      if (info.oauth) {
        const r = config.read();
        body.config = r.config;
        if (r.oauth2ClientId) body.oauth2_client_id = r.oauth2ClientId;
      } else {
        body.config = config.read();
      }
    } catch (e) {
      showError(form, e);
      return;
    }
    submit.disabled = true;
    try {
      const created = (await api.post('/v1/connections', body)).data;
      clearSecrets(form);
      announce(`Connection ${created.name} created.`);
      state.flash = info.oauth
        ? { kind: 'ok', text: `“${created.name}” was created. Connect the account to make it active.` }
        : { kind: 'ok', text: `“${created.name}” was created and is active.` };
      go(`#/c/${enc(created.id)}`);
    } catch (e) {
      submit.disabled = false;
      showError(form, e);
    }
  });
  show(back, h('h1', { id: 'new-title' }, `New ${info.label} connection`), projectBar(), form);
  name.control.focus();
}

function typeHint(t) {
  switch (t.type) {
    case 'api_key':
      return 'One secret key or token';
    case 'basic':
      return 'A username and a password';
    case 'custom':
      return 'Named fields, secret or not';
    case 'oauth2':
      return 'Any OAuth 2.0 provider';
    default:
      return t.has_default_app ? 'Sign in with the account' : 'Sign in with the account (needs your app)';
  }
}

// ---------------------------------------------------------------------------------------
// Details and actions
// ---------------------------------------------------------------------------------------

async function renderDetails(id) {
  const back = h('p', {}, h('a', { href: '#/', class: 'back-link' }, '← All connections'));
  let c;
  try {
    await connectionTypes();
    c = (await api.get(`/v1/connections/${enc(id)}`)).data;
  } catch (e) {
    if (e.status === 401) return;
    show(back, h('h1', {}, e.status === 404 ? 'Connection not found' : 'Could not load the connection'), failure(e));
    return;
  }
  const flash = state.flash;
  state.flash = null;
  const view = { c, id, disposers: [] };
  state.leave = () => view.disposers.forEach((d) => d());

  const heading = h('h1', { class: 'conn-name' }, c.name);
  const titleRow = h('div', { class: 'title-row' }, heading);
  const renameButton = canWrite() ? h('button', { type: 'button', class: 'button' }, 'Rename') : null;
  if (renameButton) titleRow.append(renameButton);
  const connectPanel = h('div', { class: 'connect-panel', 'aria-live': 'polite' });
  const sections = [
    back,
    titleRow,
    h('p', { class: 'subtitle' }, statusBadge(c.status), ' ', h('span', {}, typeLabel(c.type)), ' · ', h('span', { class: 'mono' }, c.project_id)),
    flash ? h('p', { class: `alert alert-${flash.kind}`, role: 'status' }, flash.text) : null,
    problem(c),
    connectPanel,
    overview(c),
    c.oauth2 ? oauthFacts(c) : null,
    usedBy(c),
    historySection(c),
    canWrite() && !c.oauth2 ? replaceSecret(c, view) : null,
    canWrite() ? dangerZone(c) : null,
  ];
  view.connectPanel = connectPanel;
  show(sections);
  if (renameButton) renameButton.addEventListener('click', () => startRename(c, titleRow, heading, renameButton));
  if (c.oauth2 && canWrite()) {
    connectPanel.append(connectControls(c, view));
  }
}

function problem(c) {
  if (c.status === 'expired') {
    const e = explainError(c.last_error);
    return h(
      'div',
      { class: 'alert alert-error', role: 'alert' },
      h('p', {}, h('strong', {}, 'This connection has expired. '), 'Flows that use it fail until it is reconnected.'),
      e ? h('p', {}, e.text) : null,
      h('p', {}, e && e.action ? e.action : 'Reconnect the account to make it active again.'),
    );
  }
  if (c.status === 'incomplete') {
    const e = explainError(c.last_error);
    return h(
      'div',
      { class: 'alert alert-warn' },
      h('p', {}, h('strong', {}, 'Not connected yet. '), 'Connect the account so flows can use it.'),
      e ? h('p', {}, `Last attempt: ${e.text}`) : null,
    );
  }
  if (c.last_error) {
    const e = explainError(c.last_error);
    return h('div', { class: 'alert alert-warn' }, h('p', {}, h('strong', {}, 'Last problem: '), e.text), e.action ? h('p', {}, e.action) : null);
  }
  return null;
}

/** A provider error in plain words, with what fixes it. */
function explainError(raw) {
  if (!raw) return null;
  const text = String(raw);
  if (/invalid_grant/.test(text)) {
    return {
      text: 'The provider no longer accepts this connection’s authorization: it was revoked (for example in the account’s security settings) or it ran out.',
      action: 'Reconnect to sign in to the account again.',
    };
  }
  if (/invalid_client|unauthorized_client/.test(text)) {
    return {
      text: 'The provider rejected the app’s credentials (its client ID or client secret).',
      action: 'Check the client secret of the app: for the deployment’s app, the LATCHKEY_OAUTH_…_CLIENT_SECRET setting; for your own app, create a connection with the current secret. Then reconnect.',
    };
  }
  if (/access_denied/.test(text)) {
    return { text: 'Access was declined on the provider’s consent page, so nothing was connected.', action: 'Connect again and allow access.' };
  }
  if (/expired|lapsed/i.test(text)) {
    return { text: `The access ran out and could not be renewed (${text}).`, action: 'Reconnect the account.' };
  }
  return { text: `The provider reported: ${text}`, action: null };
}

function startRename(c, row, heading, button) {
  const input = field({ label: 'New name', required: true, field: 'name', value: c.name });
  const err = formError();
  const save = h('button', { type: 'submit', class: 'button primary' }, 'Save name');
  const cancel = h('button', { type: 'button', class: 'button quiet' }, 'Cancel');
  const form = h('form', { class: 'rename', novalidate: true }, err, input, h('div', { class: 'actions' }, save, cancel));
  const restore = () => {
    form.replaceWith(row);
    button.focus();
  };
  cancel.addEventListener('click', restore);
  form.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') restore();
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    save.disabled = true;
    try {
      const updated = (await api.patch(`/v1/connections/${enc(c.id)}`, { name: input.control.value.trim() })).data;
      c.name = updated.name;
      c.version = updated.version;
      heading.textContent = updated.name;
      document.title = `${updated.name} · Latchkey`;
      restore();
      announce(`Renamed to ${updated.name}.`);
    } catch (e) {
      save.disabled = false;
      showError(form, e);
    }
  });
  row.replaceWith(form);
  input.control.focus();
  input.control.select();
}

function overview(c) {
  const rows = [
    ['Type', typeLabel(c.type)],
    ['Status', statusLabel(c.status)],
    ['Created', time(c.created_at)],
    ['Last changed', time(c.updated_at)],
    ['Last used by a flow', time(c.last_used_at)],
    ['Connection ID', h('span', { class: 'mono' }, c.id)],
  ];
  for (const [k, v] of configRows(c)) rows.push([k, v]);
  return h('section', { 'aria-labelledby': 'sec-overview' }, h('h2', { id: 'sec-overview' }, 'Settings'), dl(rows));
}

/** The non-secret configuration; secret parts are named, never shown (the API has none). */
function configRows(c) {
  const cfg = c.config || {};
  const out = [];
  if (c.type === 'api_key') out.push(['API key', hidden()]);
  if (c.type === 'basic') {
    out.push(['Username', h('span', { class: 'mono' }, cfg.username || '')]);
    out.push(['Password', hidden()]);
  }
  if (c.type === 'custom') {
    for (const [name, f] of Object.entries(cfg.fields || {})) {
      out.push([h('span', { class: 'mono' }, name), f.secret ? hidden() : h('span', { class: 'mono' }, String(f.value ?? ''))]);
    }
  }
  if (c.oauth2) {
    if (cfg.scopes) out.push(['Requested scopes', scopeList(cfg.scopes)]);
    const oc = cfg.oauth2_config || {};
    const labels = {
      client_id: 'Client ID',
      issuer: 'Issuer',
      authorization_endpoint: 'Authorization endpoint',
      token_endpoint: 'Token endpoint',
      userinfo_endpoint: 'User info endpoint',
      revocation_endpoint: 'Revocation endpoint',
      redirect_uri: 'Redirect URI',
      token_endpoint_auth_method: 'Client authentication',
      tenant: 'Tenant',
      pkce: 'PKCE',
    };
    for (const [k, label] of Object.entries(labels)) {
      if (oc[k] === undefined || oc[k] === null) continue;
      const value = typeof oc[k] === 'boolean' ? (oc[k] ? 'On' : 'Off') : String(oc[k]);
      out.push([label, h('span', { class: 'mono' }, value)]);
    }
    if (oc.extra_authorization_params) {
      out.push(['Extra authorization parameters', h('span', { class: 'mono' }, Object.entries(oc.extra_authorization_params).map(([k, v]) => `${k}=${v}`).join(' '))]);
    }
    if (c.oauth2_client_id) out.push(['Registered app', h('span', { class: 'mono' }, c.oauth2_client_id)]);
    if (!oc.client_id && !c.oauth2_client_id) out.push(['App', 'The deployment’s app']);
  }
  return out;
}

function hidden() {
  return h('span', { class: 'muted' }, 'Stored sealed; never shown');
}

function scopeList(scopes) {
  if (!scopes || !scopes.length) return h('span', { class: 'muted' }, 'None');
  return h('ul', { class: 'scopes' }, scopes.map((s) => h('li', { class: 'mono' }, s)));
}

function dl(rows) {
  return h('dl', { class: 'facts' }, rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
}

function oauthFacts(c) {
  const o = c.oauth2;
  const user = o.authorized_user;
  let who = h('span', { class: 'muted' }, c.status === 'incomplete' ? 'Not connected yet' : 'Unknown (the provider has no user info)');
  if (user && typeof user === 'object') {
    const main = user.email || user.name || user.login || user.preferred_username || user.sub;
    const extra = user.name && user.name !== main ? ` (${user.name})` : '';
    who = h('span', {}, `${main ?? 'Signed in'}${extra}`);
  } else if (user) {
    who = h('span', {}, String(user));
  }
  const rows = [
    ['Connected account', who],
    ['Granted scopes', o.scopes ? scopeList(o.scopes) : h('span', { class: 'muted' }, '—')],
    ['Access expires', o.expires_at ? time(o.expires_at) : h('span', { class: 'muted' }, o.obtained_at ? 'Does not expire' : '—')],
    ['Next refresh', o.next_refresh_at ? time(o.next_refresh_at) : h('span', { class: 'muted' }, '—')],
    ['Can refresh', o.has_refresh_token === null || o.has_refresh_token === undefined ? '—' : o.has_refresh_token ? 'Yes' : 'No (reconnect when it expires)'],
    ['Connected', time(o.obtained_at, '—')],
  ];
  if (o.refresh_failures) rows.push(['Failed refreshes in a row', String(o.refresh_failures)]);
  return h('section', { 'aria-labelledby': 'sec-oauth' }, h('h2', { id: 'sec-oauth' }, 'OAuth account'), dl(rows));
}

function usedBy(c) {
  const list = c.used_by || [];
  const total = typeof c.used_by_total === 'number' ? c.used_by_total : list.length;
  const body = list.length
    ? h(
        'ul',
        { class: 'flows-list' },
        list.map((u) =>
          h('li', {}, h('span', { class: 'mono' }, u.flow_id), h('span', { class: 'muted' }, ` · ${u.uses} use${u.uses === 1 ? '' : 's'} · last `, time(u.last_used_at))),
        ),
      )
    : h('p', { class: 'muted' }, 'No flow has used this connection yet.');
  const more = total > list.length ? h('p', { class: 'muted' }, `Showing ${list.length} of ${total} flows.`) : null;
  return h(
    'section',
    { 'aria-labelledby': 'sec-flows' },
    h('h2', { id: 'sec-flows' }, `Used by flows (${total})`),
    body,
    more,
  );
}

const EVENT_WORDS = {
  created: 'Created',
  authorized: 'Connected to the account',
  refreshed: 'Access renewed',
  refresh_rejected: 'The provider refused to renew access',
  lapsed: 'Access ran out',
  secret_replaced: 'Secret replaced',
};

function historySection(c) {
  const list = h('ol', { class: 'timeline' });
  const more = h('button', { type: 'button', class: 'button', hidden: true }, 'Show older events');
  const status = h('p', { class: 'muted' }, 'Loading…');
  let cursor = null;
  const load = async () => {
    more.disabled = true;
    try {
      const r = await api.get(`/v1/connections/${enc(c.id)}/events${query({ limit: 20, cursor })}`);
      status.remove();
      const events = r.data || [];
      for (const e of events) {
        list.append(
          h(
            'li',
            {},
            time(e.at),
            ' ',
            h('strong', {}, EVENT_WORDS[e.kind] || e.kind),
            e.from && e.to && e.from !== e.to ? ` (${statusLabel(e.from)} → ${statusLabel(e.to)})` : null,
            e.reason ? h('span', { class: 'muted' }, ` · ${explainError(e.reason).text}`) : null,
          ),
        );
      }
      if (!list.children.length) list.append(h('li', { class: 'muted' }, 'No events.'));
      // Paged when the API pages (`page.next_cursor`); otherwise the answer is the whole history.
      cursor = r.page && r.page.next_cursor;
      more.hidden = !cursor;
      more.disabled = false;
    } catch (e) {
      status.replaceWith(failure(e));
    }
  };
  more.addEventListener('click', load);
  load();
  return h('section', { 'aria-labelledby': 'sec-history' }, h('h2', { id: 'sec-history' }, 'History'), status, list, more);
}

function replaceSecret(c, view) {
  const config = secretConfigForm(c.type, c);
  const err = formError();
  const save = h('button', { type: 'submit', class: 'button primary' }, 'Save the new secret');
  const form = h(
    'form',
    { class: 'card', novalidate: true, 'aria-labelledby': 'sec-secret' },
    h('h2', { id: 'sec-secret' }, 'Replace the secret'),
    h(
      'p',
      { class: 'hint' },
      c.type === 'custom'
        ? 'Give every field again: secret values are never shown, so they must be typed anew. Fields left out are removed.'
        : 'The old value is replaced for every flow at once.',
    ),
    err,
    config,
    h('div', { class: 'actions' }, save),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const body = { config: config.read(), version: view.c.version };
    save.disabled = true;
    try {
      const updated = (await api.patch(`/v1/connections/${enc(c.id)}`, body)).data;
      clearSecrets(form);
      view.c.version = updated.version;
      state.flash = { kind: 'ok', text: 'The new secret is saved.' };
      announce('The new secret is saved.');
      route();
    } catch (e) {
      save.disabled = false;
      if (e.code === 'version_conflict') {
        clearSecrets(form);
        showError(form, { message: 'Someone changed this connection meanwhile. Reload the page and try again.' });
      } else {
        showError(form, e);
      }
    }
  });
  return form;
}

function dangerZone(c) {
  const button = h('button', { type: 'button', class: 'button danger' }, 'Delete connection');
  button.addEventListener('click', () => confirmDelete(c, button));
  return h(
    'section',
    { 'aria-labelledby': 'sec-delete', class: 'danger-zone' },
    h('h2', { id: 'sec-delete' }, 'Delete'),
    h('p', {}, c.oauth2 ? 'Deleting also revokes the grant at the provider when it allows that.' : 'The stored secret is destroyed.'),
    button,
  );
}

function confirmDelete(c, opener) {
  const flows = (c.used_by || []).map((u) => u.flow_id);
  const total = typeof c.used_by_total === 'number' ? c.used_by_total : flows.length;
  const yes = h('button', { type: 'button', class: 'button danger' }, 'Delete');
  const no = h('button', { type: 'button', class: 'button' }, 'Keep it');
  const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const dialog = h(
    'dialog',
    { class: 'dialog', 'aria-labelledby': 'dlg-title', 'aria-describedby': 'dlg-body' },
    h('h2', { id: 'dlg-title' }, `Delete “${c.name}”?`),
    h(
      'div',
      { id: 'dlg-body' },
      flows.length
        ? [
            h('p', {}, `${total} flow${total === 1 ? '' : 's'} use${total === 1 ? 's' : ''} it and will fail:`),
            h('ul', { class: 'flows-list' }, flows.map((f) => h('li', { class: 'mono' }, f))),
            total > flows.length ? h('p', {}, `…and ${total - flows.length} more.`) : null,
          ]
        : h('p', {}, 'No flow has used it.'),
      h('p', {}, 'This cannot be undone.'),
    ),
    err,
    h('div', { class: 'actions' }, no, yes),
  );
  const close = () => {
    dialog.close();
    dialog.remove();
    opener.focus();
  };
  no.addEventListener('click', close);
  dialog.addEventListener('cancel', (ev) => {
    ev.preventDefault();
    close();
  });
  yes.addEventListener('click', async () => {
    yes.disabled = true;
    try {
      await api.del(`/v1/connections/${enc(c.id)}`);
      dialog.close();
      dialog.remove();
      announce(`Deleted ${c.name}.`);
      go('#/');
    } catch (e) {
      yes.disabled = false;
      err.textContent = plainApiMessage(e);
      err.hidden = false;
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  no.focus();
}

// ---------------------------------------------------------------------------------------
// Connecting an OAuth account in a popup
// ---------------------------------------------------------------------------------------

function connectControls(c, view) {
  const label = c.status === 'incomplete' ? 'Connect account' : 'Reconnect';
  const button = h('button', { type: 'button', class: `button ${c.status === 'active' ? '' : 'primary'}` }, label);
  const out = h('div', { class: 'connect-status' });
  button.addEventListener('click', () => connect(c, view, button, out));
  return h('div', {}, h('div', { class: 'actions' }, button), out);
}

/**
 * Opens the provider's consent page in a popup. The outcome arrives two ways: the callback
 * page's `latchkey:oauth2` message (from this origin only), and polling the connection
 * (popups often lose `window.opener`, or the user closes them). Whichever comes first wins.
 */
async function connect(c, view, button, out) {
  // Opened now, inside the click, so that popup blockers let it through; pointed at the
  // consent URL once the API has made one. A fresh name each time: reusing the previous
  // popup by name raced its own close (the callback page closes itself 1.5 s after a
  // success), which could shut the new sign-in before it loaded.
  const popup = window.open('', `latchkey-oauth-${Date.now()}`, 'popup,width=560,height=720');
  if (!popup) {
    out.replaceChildren(h('p', { class: 'alert alert-error', role: 'alert' }, 'The browser blocked the sign-in window. Allow popups for this page, then press the button again.'));
    return;
  }
  button.disabled = true;
  let url;
  try {
    url = (await api.post(`/v1/connections/${enc(c.id)}/oauth2/authorize`)).data.url;
  } catch (e) {
    popup.close();
    button.disabled = false;
    out.replaceChildren(failure(e));
    return;
  }
  popup.location.href = url;

  const before = { status: c.status, obtained: c.oauth2 && c.oauth2.obtained_at, error: c.last_error };
  const started = Date.now();
  let done = false;
  let timer = null;
  const stop = h('button', { type: 'button', class: 'button quiet' }, 'Stop waiting');
  const waiting = h('p', { role: 'status' }, 'Waiting for you to finish in the sign-in window…');
  out.replaceChildren(h('div', { class: 'alert alert-info' }, waiting, stop));

  const finish = (kind, text) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    window.removeEventListener('message', onMessage);
    button.disabled = false;
    if (kind === 'ok') {
      state.flash = { kind: 'ok', text };
      announce(text);
      route();
      return;
    }
    out.replaceChildren(h('p', { class: `alert alert-${kind}`, role: 'alert' }, text));
  };
  const onMessage = (ev) => {
    if (ev.origin !== location.origin || !ev.data || ev.data.type !== 'latchkey:oauth2') return;
    if (ev.data.status === 'success') {
      finish('ok', 'The account is connected and the connection is active.');
    } else {
      finish('error', callbackFailure(ev.data.message));
    }
  };
  window.addEventListener('message', onMessage);
  stop.addEventListener('click', () => {
    finish('warn', 'Stopped waiting. If you finish signing in later, reload this page to see the new status.');
    button.focus();
  });
  view.disposers.push(() => {
    done = true;
    clearTimeout(timer);
    window.removeEventListener('message', onMessage);
  });

  const poll = async () => {
    if (done) return;
    try {
      const now = (await api.get(`/v1/connections/${enc(c.id)}`)).data;
      const obtained = now.oauth2 && now.oauth2.obtained_at;
      if (now.status === 'active' && obtained && obtained !== before.obtained) {
        finish('ok', 'The account is connected and the connection is active.');
        return;
      }
      if (now.last_error && now.last_error !== before.error && now.status !== 'active') {
        finish('error', callbackFailure(now.last_error));
        return;
      }
    } catch (e) {
      if (e.status === 401) return;
    }
    if (Date.now() - started > POLL_GIVE_UP_MS) {
      finish('warn', 'The sign-in link has expired. Press the button to try again.');
      return;
    }
    if (popup.closed) {
      waiting.textContent = 'The sign-in window was closed. Checking whether the account got connected…';
    }
    timer = setTimeout(poll, POLL_MS);
  };
  timer = setTimeout(poll, POLL_MS);
}

function callbackFailure(message) {
  const m = String(message || '');
  if (/access_denied/.test(m)) {
    return 'Access was declined on the provider’s page, so the account was not connected. Press the button to try again and allow access.';
  }
  if (/already used|unknown/.test(m) && /link/.test(m)) {
    return 'That sign-in link was already used or is unknown. Press the button to start again.';
  }
  if (/expired/.test(m)) return 'The sign-in link expired. Press the button to start again.';
  const e = explainError(m);
  return `The account could not be connected. ${e ? e.text : ''}${e && e.action ? ` ${e.action}` : ''}`;
}
