// A real, certified OAuth 2.0 / OpenID Connect authorization server (panva's oidc-provider)
// configured as the peer for Latchkey's end-to-end tests. Usage and options: README.md.
//
// stdout carries exactly one machine-readable line, `READY {...}`; everything else goes to
// stderr, so that a harness can wait for that line without parsing noise.

import crypto from 'node:crypto';
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';

import Provider, { interactionPolicy } from 'oidc-provider';
// Internal module of the pinned version (a version bump that moves it fails loudly at start).
import { setStorage } from 'oidc-provider/lib/adapters/memory_adapter.js';

// oidc-provider prints its development notices with console.info (stdout); keep stdout clean.
console.log = console.error; // eslint-disable-line no-console
console.info = console.error; // eslint-disable-line no-console

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    clients: { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});

function secondsEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`${name} must be a positive integer (seconds), got ${JSON.stringify(raw)}`);
  }
  return n;
}

const PORT = Number(args.port ?? process.env.OIDC_PORT ?? 0);
const ACCESS_TOKEN_TTL = secondsEnv('OIDC_ACCESS_TOKEN_TTL', 3600);
const REFRESH_TOKEN_TTL = secondsEnv('OIDC_REFRESH_TOKEN_TTL', 30 * 24 * 3600);
const ACCOUNT_ID = 'user-1';
const ADMIN_PREFIX = '/__test/';
const DENY_HINT = 'deny';

// The client used by resource servers (and the harness) to call the introspection endpoint.
const RESOURCE_SERVER = {
  client_id: process.env.OIDC_RS_CLIENT_ID || 'resource-server',
  client_secret: process.env.OIDC_RS_CLIENT_SECRET || 'resource-server-secret',
};

const BASE_SCOPES = ['openid', 'offline_access', 'email', 'profile', 'read', 'write'];
const EXTRA_SCOPES = (process.env.OIDC_EXTRA_SCOPES || '').split(/[\s,]+/).filter(Boolean);

function log(...parts) {
  process.stderr.write(`[oidc-peer] ${parts.join(' ')}\n`);
}

// Clients come as a JSON array of client metadata. `require_pkce` is ours (stripped before
// oidc-provider sees it): public clients always need PKCE, confidential ones only if asked.
const rawClients = JSON.parse(args.clients ?? process.env.OIDC_CLIENTS ?? '[]');
if (!Array.isArray(rawClients)) throw new Error('clients must be a JSON array');
const pkceRequiredFor = new Set();
const clients = rawClients.map((c) => {
  const { require_pkce: requirePkce, ...meta } = c;
  if (!meta.client_id) throw new Error(`client without client_id: ${JSON.stringify(c)}`);
  const method = meta.token_endpoint_auth_method ?? 'client_secret_basic';
  if (!['client_secret_basic', 'client_secret_post', 'none'].includes(method)) {
    throw new Error(`unsupported token_endpoint_auth_method ${method}`);
  }
  if (requirePkce) pkceRequiredFor.add(meta.client_id);
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...meta,
    token_endpoint_auth_method: method,
  };
});
clients.push({
  ...RESOURCE_SERVER,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: [],
  response_types: [],
  redirect_uris: [],
});

// Counters for the test-only stats endpoint.
function freshStats() {
  return {
    authorization_code_grants: 0,
    refresh_grants: 0,
    refresh_token_reuses: 0,
    grant_revocations: 0,
    admin_grant_revocations: 0,
    token_errors: {},
  };
}
let stats = freshStats();

// A fresh signing key per run: nothing should depend on oidc-provider's built-in dev keys.
const signingKey = {
  ...crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: crypto.randomUUID(),
  use: 'sig',
  alg: 'RS256',
};

const accounts = {
  [ACCOUNT_ID]: {
    sub: ACCOUNT_ID,
    email: `${ACCOUNT_ID}@example.test`,
    email_verified: true,
    name: 'Test User One',
  },
};

// `login_hint=deny` must reach our interaction even when the browser already has a session,
// otherwise a second authorization in the same cookie jar would silently succeed.
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'deny_requested',
  'the test asked the End-User to deny the request',
  'login_required',
  (ctx) => (ctx.oidc.params.login_hint === DENY_HINT
    ? interactionPolicy.Check.REQUEST_PROMPT
    : interactionPolicy.Check.NO_NEED_TO_PROMPT),
));

// The built-in in-memory adapter is an LRU (maxSize 1000, so it forgets after 1000-2000
// entries): a long test would evict consumed refresh tokens, and presenting one again would then be "not found" instead of a detected
// reuse that revokes the grant. A plain Map never forgets (the models check expiry).
setStorage(new Map());

const server = http.createServer();
server.listen(PORT, '127.0.0.1');
await new Promise((resolve, reject) => {
  server.once('listening', resolve);
  server.once('error', reject);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  // Only what Latchkey speaks: the code flow and three client authentication methods.
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'none'],
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: [...BASE_SCOPES, ...EXTRA_SCOPES],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, claims: async () => ({ ...claims }) };
  },
  interactions: {
    policy,
    url: (ctx, interaction) => `${ADMIN_PREFIX}interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    introspection: {
      enabled: true,
      // Any authenticated confidential client may introspect any token (test peer).
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none'
        || token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    // Plain OAuth 2.0 access tokens (opaque, no audience) keep every granted scope; see `scopes`.
    resourceIndicators: { enabled: false },
  },
  pkce: {
    methods: ['S256'],
    required: (ctx, client) => client.clientAuthMethod === 'none'
      || pkceRequiredFor.has(client.clientId),
  },
  // Refresh tokens for every client allowed the grant, with or without offline_access.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // The browser session is irrelevant to Latchkey: grants must outlive it.
  expiresWithSession: async () => false,
  // Every use rotates; presenting a consumed refresh token revokes the whole grant.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: REFRESH_TOKEN_TTL,
    Grant: REFRESH_TOKEN_TTL,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'application/json';
    ctx.body = out;
  },
});

provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params.grant_type;
  if (gt === 'refresh_token') stats.refresh_grants += 1;
  if (gt === 'authorization_code') stats.authorization_code_grants += 1;
});
provider.on('grant.error', (ctx, err) => {
  const key = err.error_detail ? `${err.error}: ${err.error_detail}` : err.error;
  stats.token_errors[key] = (stats.token_errors[key] ?? 0) + 1;
  if (err.error_detail === 'refresh token already used') stats.refresh_token_reuses += 1;
  log('token error', ctx.oidc.params?.grant_type, key);
});
provider.on('grant.revoked', (ctx, grantId) => {
  stats.grant_revocations += 1;
  log('grant revoked', grantId);
});
provider.on('server_error', (ctx, err) => log('server_error', err.stack ?? err));

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks).toString('utf8');
  if ((req.headers['content-type'] ?? '').includes('application/json')) {
    return body ? JSON.parse(body) : {};
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

// What "the user revoked access in the provider's security settings" does: every token of the
// grant dies, and the grant itself.
async function revokeGrant(grantId) {
  await Promise.all([
    provider.AccessToken.revokeByGrantId(grantId),
    provider.RefreshToken.revokeByGrantId(grantId),
    provider.AuthorizationCode.revokeByGrantId(grantId),
    provider.Grant.adapter.destroy(grantId),
  ]);
  stats.grant_revocations += 1;
  stats.admin_grant_revocations += 1;
  log('grant revoked by admin', grantId);
}

async function findGrantId(body) {
  if (body.grant_id) return body.grant_id;
  if (body.access_token) {
    return (await provider.AccessToken.find(body.access_token))?.grantId;
  }
  if (body.refresh_token) {
    return (await provider.RefreshToken.find(body.refresh_token, { ignoreExpiration: true }))
      ?.grantId;
  }
  return undefined;
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  log('interaction', details.uid, prompt.name, params.client_id);

  if (params.login_hint === DENY_HINT) {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User denied the authorization request',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, {
      login: { accountId: ACCOUNT_ID },
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, {
      consent: { grantId },
    }, { mergeWithLastSubmission: true });
    return;
  }

  sendJson(res, 500, { error: 'server_error', error_description: `unknown prompt ${prompt.name}` });
}

async function admin(req, res, path) {
  if (await refreshAdmin(req, res, path)) return;
  if (path.startsWith('interaction/') && req.method === 'GET') {
    await interaction(req, res);
    return;
  }
  if (path === 'stats' && req.method === 'GET') {
    sendJson(res, 200, stats);
    return;
  }
  if (path === 'stats/reset' && req.method === 'POST') {
    stats = freshStats();
    sendJson(res, 200, stats);
    return;
  }
  if (path === 'revoke-grant' && req.method === 'POST') {
    const grantId = await findGrantId(await readForm(req));
    if (!grantId) {
      sendJson(res, 404, { error: 'not_found', error_description: 'no grant for that token' });
      return;
    }
    await revokeGrant(grantId);
    sendJson(res, 200, { revoked: true, grant_id: grantId });
    return;
  }
  sendJson(res, 404, { error: 'not_found' });
}

// oidc-provider takes client_secret_basic and client_secret_post as interchangeable; real
// providers often do not (Notion: Basic only), so here a client must use the method it was
// registered with. The body is read here and handed on as `req.body`, which oidc-provider
// accepts in place of the stream.
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);
const registeredMethod = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));

function usedAuth(req, form) {
  const header = req.headers.authorization ?? '';
  if (/^basic /i.test(header)) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const id = decoded.slice(0, Math.max(decoded.indexOf(':'), 0));
    let clientId;
    try {
      clientId = decodeURIComponent(id.replace(/\+/g, ' '));
    } catch {
      clientId = id;
    }
    return { clientId, method: 'client_secret_basic' };
  }
  if (form.get('client_secret') !== null) {
    return { clientId: form.get('client_id'), method: 'client_secret_post' };
  }
  return { clientId: form.get('client_id'), method: 'none' };
}

async function checkClientAuth(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  req.body = Buffer.concat(chunks).toString('utf8');
  if (!(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
    return true;
  }
  const { clientId, method } = usedAuth(req, new URLSearchParams(req.body));
  const registered = registeredMethod.get(clientId);
  if (registered === undefined || registered === method || method === 'none') return true;
  const key = 'invalid_client: authentication method mismatch';
  stats.token_errors[key] = (stats.token_errors[key] ?? 0) + 1;
  log('client', clientId, 'used', method, 'but is registered with', registered);
  res.writeHead(401, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'www-authenticate': 'Basic realm="oidc-peer"',
  });
  res.end(JSON.stringify({
    error: 'invalid_client',
    error_description: `client is registered for ${registered}, not ${method}`,
  }));
  return false;
}

// Refresh requests parked by `POST /__test/refreshes/hold` until `POST /__test/refreshes/release`,
// before oidc-provider sees them. A parked request whose client went away meanwhile (a killed
// process) is dropped unprocessed at release, as a request lost on the wire would be: its
// refresh token is not consumed.
let holdingRefreshes = false;
const parkedRefreshes = [];

function isRefreshGrant(req) {
  if (!(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
    return false;
  }
  return new URLSearchParams(req.body).get('grant_type') === 'refresh_token';
}

function park(req, res) {
  const entry = { req, res, gone: false, remotePort: req.socket.remotePort };
  const onGone = () => { entry.gone = true; };
  req.socket.on('end', onGone);
  req.socket.on('close', onGone);
  entry.cleanup = () => {
    req.socket.off('end', onGone);
    req.socket.off('close', onGone);
  };
  parkedRefreshes.push(entry);
  log('parked refresh from port', entry.remotePort);
}

function releaseParked(dispatch) {
  holdingRefreshes = false;
  const released = { processed: 0, dropped: 0 };
  for (const entry of parkedRefreshes.splice(0)) {
    entry.cleanup();
    if (entry.gone || entry.req.socket.destroyed) {
      released.dropped += 1;
      log('dropped parked refresh from port', entry.remotePort, '(client gone)');
      entry.res.destroy();
    } else {
      released.processed += 1;
      dispatch(entry.req, entry.res);
    }
  }
  return released;
}

async function refreshAdmin(req, res, path) {
  if (path === 'refreshes/hold' && req.method === 'POST') {
    holdingRefreshes = true;
    sendJson(res, 200, { holding: true });
    return true;
  }
  if (path === 'refreshes/release' && req.method === 'POST') {
    sendJson(res, 200, releaseParked(providerCallback));
    return true;
  }
  if (path === 'refreshes/parked' && req.method === 'GET') {
    sendJson(res, 200, {
      holding: holdingRefreshes,
      parked: parkedRefreshes.map((e) => ({ remote_port: e.remotePort, gone: e.gone })),
    });
    return true;
  }
  return false;
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  res.on('finish', () => log(req.method, pathname, res.statusCode));
  if (req.method === 'POST' && CLIENT_AUTH_PATHS.has(pathname)) {
    checkClientAuth(req, res).then((ok) => {
      if (!ok) return;
      if (holdingRefreshes && pathname === '/token' && isRefreshGrant(req)) {
        park(req, res);
        return;
      }
      providerCallback(req, res);
    }).catch((err) => {
      log('client auth check error', err.stack ?? err);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    });
    return;
  }
  if (pathname.startsWith(ADMIN_PREFIX)) {
    admin(req, res, pathname.slice(ADMIN_PREFIX.length)).catch((err) => {
      log('admin error', err.stack ?? err);
      if (!res.headersSent) {
        sendJson(res, 500, { error: 'server_error', error_description: String(err.message ?? err) });
      } else {
        res.end();
      }
    });
    return;
  }
  providerCallback(req, res);
});

// Lets the harness's child die with it even when the harness is killed without cleanup.
if (args['exit-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));

process.stdout.write(`READY ${JSON.stringify({
  issuer,
  port,
  resource_server: RESOURCE_SERVER,
  admin_prefix: ADMIN_PREFIX,
  access_token_ttl: ACCESS_TOKEN_TTL,
  refresh_token_ttl: REFRESH_TOKEN_TTL,
})}\n`);
log('listening on', issuer, 'with clients', clients.map((c) => c.client_id).join(','));
