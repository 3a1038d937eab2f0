// Form building blocks and the create/replace forms of every connection type. API
// validation errors name a field (`error.field`, such as `config.api_key`); each input
// carries that name in data-field so the message lands next to it.

import { h, uid } from './dom.js';

/**
 * A labelled control with a hint and an error slot, wired with aria-describedby.
 * `secret` makes it a write-only password input that browsers do not fill or remember.
 */
export function field(opts) {
  const id = uid('f');
  const hintId = opts.hint ? `${id}-hint` : null;
  const errId = `${id}-err`;
  const attrs = {
    id,
    name: opts.name || id,
    'data-field': opts.field || null,
    required: opts.required || null,
    placeholder: opts.placeholder || null,
    inputmode: opts.inputmode || null,
    'aria-describedby': [hintId, errId].filter(Boolean).join(' '),
    spellcheck: opts.secret || opts.code ? 'false' : null,
    autocapitalize: opts.secret || opts.code ? 'off' : null,
  };
  let control;
  if (opts.kind === 'textarea') {
    control = h('textarea', { ...attrs, rows: opts.rows || 3, autocomplete: 'off' });
    control.value = opts.value || '';
  } else if (opts.kind === 'select') {
    control = h(
      'select',
      attrs,
      opts.options.map(([value, label]) => h('option', { value, selected: value === opts.value || null }, label)),
    );
  } else {
    control = h('input', {
      ...attrs,
      type: opts.secret ? 'password' : opts.type || 'text',
      // Secrets: never offered for saving or filled in by the browser.
      autocomplete: 'off',
      'data-secret': opts.secret ? 'true' : null,
    });
    if (opts.value !== undefined && !opts.secret) control.value = opts.value;
  }
  const wrap = h(
    'div',
    { class: 'field' },
    h('label', { for: id }, opts.label, opts.required || opts.filter ? null : h('span', { class: 'optional' }, ' (optional)')),
    opts.hint ? h('p', { class: 'hint', id: hintId }, opts.hint) : null,
    control,
    h('p', { class: 'field-error', id: errId, hidden: true }),
  );
  wrap.control = control;
  return wrap;
}

export function checkbox(opts) {
  const id = uid('c');
  const box = h('input', { type: 'checkbox', id, name: opts.name || id, checked: opts.checked, 'data-field': opts.field || null });
  const wrap = h('div', { class: 'check' }, box, h('label', { for: id }, opts.label));
  wrap.control = box;
  return wrap;
}

/** Radio choices as a fieldset with a legend; `onchange(value)`. */
export function choice(opts) {
  const name = uid('r');
  const set = h('fieldset', { class: 'choice' }, h('legend', {}, opts.legend));
  for (const [value, label, hint] of opts.options) {
    const id = uid('o');
    const input = h('input', {
      type: 'radio',
      id,
      name,
      value,
      checked: value === opts.value || null,
      onchange: () => opts.onchange(value),
    });
    set.append(
      h(
        'div',
        { class: 'check' },
        input,
        h('label', { for: id }, label, hint ? h('span', { class: 'hint-inline' }, ` ${hint}`) : null),
      ),
    );
  }
  return set;
}

export function clearErrors(form) {
  for (const p of form.querySelectorAll('.field-error')) {
    p.hidden = true;
    p.textContent = '';
  }
  for (const c of form.querySelectorAll('[aria-invalid]')) c.removeAttribute('aria-invalid');
  const summary = form.querySelector('.form-error');
  if (summary) {
    summary.hidden = true;
    summary.textContent = '';
  }
}

/**
 * Shows an API error next to the field it names (the longest data-field prefix of
 * `err.field`), or at the top of the form. Focuses the field so the user is taken there.
 */
export function showError(form, err) {
  clearErrors(form);
  let target = null;
  if (err.field) {
    let path = err.field;
    while (path && !target) {
      target = form.querySelector(`[data-field="${cssEscape(path)}"]`);
      const cut = path.lastIndexOf('.');
      path = cut > 0 ? path.slice(0, cut) : '';
    }
  }
  const message = plainApiMessage(err);
  if (target) {
    const slot = document.getElementById(`${target.id}-err`) || target.closest('.field')?.querySelector('.field-error');
    if (slot) {
      slot.textContent = message;
      slot.hidden = false;
      target.setAttribute('aria-invalid', 'true');
      target.focus();
      return;
    }
  }
  const summary = form.querySelector('.form-error');
  summary.textContent = message;
  summary.hidden = false;
  summary.focus();
}

function cssEscape(s) {
  return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, '\\$&');
}

/** An API error message said for people: the field prefix dropped, a first capital. */
export function plainApiMessage(err) {
  let m = err.message || 'Something went wrong.';
  if (err.field && m.startsWith(`${err.field}: `)) m = m.slice(err.field.length + 2);
  if (err.code === 'forbidden') m = `Not allowed: ${m}.`;
  if (err.code === 'network') return m;
  m = m.charAt(0).toUpperCase() + m.slice(1);
  return /[.!?]$/.test(m) ? m : `${m}.`;
}

export function formError() {
  return h('p', { class: 'form-error', role: 'alert', tabindex: '-1', hidden: true });
}

/** Scopes typed one per line or separated by spaces or commas. */
export function parseScopes(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** `key=value` lines into an object; blank lines ignored. */
export function parsePairs(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t) continue;
    const eq = t.indexOf('=');
    if (eq <= 0) throw new Error(`"${t}" is not key=value`);
    out[t.slice(0, eq).trim()] = t.slice(eq + 1).trim();
  }
  return out;
}

/**
 * The custom-fields editor: rows of name, value and a "secret" box (checked by
 * default, so a forgotten box never exposes a value). A secret value is a password input.
 * `initial`: [{name, value, secret}] (secret values are never known, so they come empty).
 */
export function customFieldsEditor(initial) {
  const rows = h('div', { class: 'rows' });
  const wrap = h(
    'fieldset',
    { class: 'custom-fields', 'data-field': 'config.fields', id: uid('cf'), tabindex: '-1' },
    h('legend', {}, 'Fields'),
    h('p', { class: 'hint' }, 'Each field has a name (letters, digits, _ and -) and a value. Secret values are stored sealed and never shown again.'),
    rows,
  );
  const err = h('p', { class: 'field-error', id: `${wrap.id}-err`, hidden: true });
  function addRow(spec = { name: '', value: '', secret: true }) {
    const name = field({ label: 'Field name', value: spec.name, required: true, code: true });
    const value = field({ label: 'Value', secret: spec.secret, value: spec.secret ? undefined : spec.value, required: true });
    const secret = checkbox({ label: 'Secret', checked: spec.secret });
    const syncName = () => {
      const n = name.control.value.trim();
      name.control.dataset.field = `config.fields.${n}`;
      value.control.dataset.field = `config.fields.${n}.value`;
      secret.control.dataset.field = `config.fields.${n}.secret`;
    };
    name.control.addEventListener('input', syncName);
    syncName();
    secret.control.addEventListener('change', () => {
      const isSecret = secret.control.checked;
      value.control.type = isSecret ? 'password' : 'text';
      value.control.dataset.secret = isSecret ? 'true' : 'false';
    });
    const remove = h('button', { type: 'button', class: 'button quiet' }, 'Remove field');
    const row = h('div', { class: 'field-row' }, name, value, secret, remove);
    remove.setAttribute('aria-label', 'Remove this field');
    remove.addEventListener('click', () => {
      row.remove();
      const first = rows.querySelector('input');
      (first || add).focus();
    });
    row.read = () => ({ name: name.control.value.trim(), value: value.control.value, secret: secret.control.checked });
    row.clear = () => {
      if (secret.control.checked) value.control.value = '';
    };
    rows.append(row);
    return row;
  }
  const add = h('button', { type: 'button', class: 'button' }, 'Add a field');
  add.addEventListener('click', () => addRow().querySelector('input').focus());
  wrap.append(err, add);
  for (const spec of initial && initial.length ? initial : [{ name: '', value: '', secret: true }]) addRow(spec);
  wrap.read = () => {
    const fields = {};
    for (const row of rows.children) {
      const r = row.read();
      if (!r.name && !r.value) continue;
      fields[r.name] = { value: r.value, secret: r.secret };
    }
    return { fields };
  };
  wrap.clearSecrets = () => {
    for (const row of rows.children) row.clear();
  };
  return wrap;
}

/** Empties every password input of `form`: a saved secret must not linger in the page. */
export function clearSecrets(form) {
  for (const input of form.querySelectorAll('input[type=password]')) input.value = '';
}

/**
 * The config part of a non-OAuth connection: API key, basic or custom. `existing` is the
 * connection being given new secrets (non-secret values are prefilled).
 */
export function secretConfigForm(type, existing) {
  const box = h('div', { class: 'stack' });
  if (type === 'api_key') {
    const key = field({ label: existing ? 'New API key' : 'API key', secret: true, required: true, field: 'config.api_key' });
    box.append(key);
    box.read = () => ({ api_key: key.control.value });
  } else if (type === 'basic') {
    const user = field({
      label: 'Username',
      required: true,
      field: 'config.username',
      value: existing?.config?.username,
      autocomplete: 'off',
    });
    const pass = field({ label: existing ? 'New password' : 'Password', secret: true, required: true, field: 'config.password' });
    box.append(user, pass);
    box.read = () => ({ username: user.control.value.trim(), password: pass.control.value });
  } else if (type === 'custom') {
    const initial = existing
      ? Object.entries(existing.config?.fields || {}).map(([name, f]) => ({
          name,
          value: f.secret ? '' : f.value ?? '',
          secret: Boolean(f.secret),
        }))
      : null;
    const editor = customFieldsEditor(initial);
    box.append(editor);
    box.read = () => editor.read();
  }
  return box;
}

/** The config of a catalog provider or a generic OAuth 2.0 connection. */
export function oauthConfigForm(typeInfo, registeredClients) {
  const generic = typeInfo.type === 'oauth2';
  const box = h('div', { class: 'stack' });
  const defaults = typeInfo.default_scopes || [];
  const required = typeInfo.required_scopes || [];
  const scopes = field({
    label: 'Scopes',
    kind: 'textarea',
    rows: Math.min(6, Math.max(2, defaults.length)),
    field: 'config.scopes',
    code: true,
    required: generic,
    value: defaults.join('\n'),
    hint: generic
      ? 'One per line, as the provider names them.'
      : `One per line. The defaults for ${typeInfo.label} are filled in${
          required.length ? `; ${required.join(', ')} is always added` : ''
        }.`,
  });
  box.append(scopes);

  // Where the endpoints come from (generic only).
  const endpoints = h('div', { class: 'stack' });
  const auth = field({ label: 'Authorization endpoint', type: 'url', field: 'config.oauth2_config.authorization_endpoint', required: true, code: true, placeholder: 'https://provider.example/oauth/authorize' });
  const token = field({ label: 'Token endpoint', type: 'url', field: 'config.oauth2_config.token_endpoint', required: true, code: true, placeholder: 'https://provider.example/oauth/token' });
  const userinfo = field({ label: 'User info endpoint', type: 'url', field: 'config.oauth2_config.userinfo_endpoint', code: true, hint: 'Shows which account was connected.' });
  const revocation = field({ label: 'Revocation endpoint', type: 'url', field: 'config.oauth2_config.revocation_endpoint', code: true, hint: 'Lets Latchkey revoke the grant when the connection is deleted.' });
  endpoints.append(auth, token, userinfo, revocation);
  const issuerBox = h('div', { class: 'stack', hidden: true });
  const issuer = field({ label: 'Issuer', type: 'url', field: 'config.oauth2_config.issuer', required: true, code: true, hint: 'The endpoints are read from the issuer’s discovery document.', placeholder: 'https://provider.example' });
  issuerBox.append(issuer);

  // Which app (OAuth client) asks for consent.
  const registered = (registeredClients || []).filter((c) => c.type === typeInfo.type);
  const appOptions = [];
  if (!generic && typeInfo.has_default_app) appOptions.push(['default', `This deployment’s ${typeInfo.label} app`, '']);
  appOptions.push(['own', 'My own app', '(client ID and secret)']);
  if (registered.length) appOptions.push(['registered', 'A registered app', `(${registered.length} available)`]);
  let app = appOptions[0][0];

  const own = h('div', { class: 'stack' });
  const clientId = field({ label: 'Client ID', field: 'config.oauth2_config.client_id', required: true, code: true });
  const clientSecret = field({ label: 'Client secret', secret: true, field: 'config.oauth2_config.client_secret', hint: 'Leave empty for a public client (PKCE only).' });
  own.append(clientId, clientSecret);
  let tenant = null;
  if (typeInfo.type === 'microsoft') {
    tenant = field({ label: 'Tenant', field: 'config.oauth2_config.tenant', code: true, hint: `Default: ${typeInfo.tenant || 'common'}.` });
    own.append(tenant);
  }
  let method = null;
  let pkce = null;
  let extra = null;
  if (generic) {
    method = field({
      label: 'How the app authenticates at the token endpoint',
      kind: 'select',
      field: 'config.oauth2_config.token_endpoint_auth_method',
      value: 'client_secret_basic',
      options: [
        ['client_secret_basic', 'HTTP Basic (client_secret_basic)'],
        ['client_secret_post', 'In the form body (client_secret_post)'],
        ['none', 'None: public client (none)'],
      ],
      required: true,
    });
    pkce = checkbox({ label: 'Use PKCE (recommended)', checked: true, field: 'config.oauth2_config.pkce' });
    own.append(method, pkce);
  }
  const registeredBox = h('div', { class: 'stack', hidden: true });
  const clientPick = field({
    label: 'Registered app',
    kind: 'select',
    field: 'oauth2_client_id',
    required: true,
    options: registered.map((c) => [c.id, `${c.name} (${c.client_id})`]),
  });
  registeredBox.append(clientPick);

  extra = field({
    label: 'Extra authorization parameters',
    kind: 'textarea',
    rows: 2,
    code: true,
    field: 'config.oauth2_config.extra_authorization_params',
    hint: 'One key=value per line, added to the consent URL (for example prompt=consent).',
  });

  let source = 'endpoints';
  const sync = () => {
    own.hidden = app !== 'own';
    registeredBox.hidden = app !== 'registered';
    endpoints.hidden = !generic || app === 'registered' || source !== 'endpoints';
    issuerBox.hidden = !generic || app === 'registered' || source !== 'issuer';
    for (const f of [auth, token]) f.control.required = !endpoints.hidden;
    issuer.control.required = !issuerBox.hidden;
    clientId.control.required = !own.hidden;
    clientPick.control.required = !registeredBox.hidden;
  };
  let sourceChoice = null;
  if (generic) {
    sourceChoice = choice({
      legend: 'Provider endpoints',
      value: source,
      options: [
        ['endpoints', 'Enter the endpoints'],
        ['issuer', 'Discover them from the issuer'],
      ],
      onchange: (v) => {
        source = v;
        sync();
      },
    });
  }
  const appChoice = choice({
    legend: 'App that asks for consent',
    value: app,
    options: appOptions,
    onchange: (v) => {
      app = v;
      sync();
    },
  });
  if (generic) box.append(appChoice, sourceChoice, endpoints, issuerBox, own, registeredBox, extra);
  else box.append(appChoice, own, registeredBox, extra);
  if (!generic && !typeInfo.has_default_app) {
    box.prepend(h('p', { class: 'note' }, `This deployment has no ${typeInfo.label} app configured, so give your own app (or a registered one).`));
  }
  sync();

  box.read = () => {
    const config = {};
    const list = parseScopes(scopes.control.value);
    if (list.length || generic) config.scopes = list;
    const oc = {};
    let extraParams;
    try {
      extraParams = parsePairs(extra.control.value);
    } catch (e) {
      const err = new Error(e.message);
      err.field = 'config.oauth2_config.extra_authorization_params';
      throw err;
    }
    if (Object.keys(extraParams).length) oc.extra_authorization_params = extraParams;
    let oauth2ClientId;
    if (app === 'registered') {
      oauth2ClientId = clientPick.control.value;
    } else {
      if (generic && source === 'endpoints') {
        oc.authorization_endpoint = auth.control.value.trim();
        oc.token_endpoint = token.control.value.trim();
        if (userinfo.control.value.trim()) oc.userinfo_endpoint = userinfo.control.value.trim();
        if (revocation.control.value.trim()) oc.revocation_endpoint = revocation.control.value.trim();
      } else if (generic) {
        oc.issuer = issuer.control.value.trim();
      }
      if (app === 'own') {
        oc.client_id = clientId.control.value.trim();
        if (clientSecret.control.value) oc.client_secret = clientSecret.control.value;
        if (tenant && tenant.control.value.trim()) oc.tenant = tenant.control.value.trim();
        if (method) oc.token_endpoint_auth_method = method.control.value;
        if (pkce) oc.pkce = pkce.control.checked;
      }
    }
    if (Object.keys(oc).length) config.oauth2_config = oc;
    return { config, oauth2ClientId };
  };
  return box;
}
