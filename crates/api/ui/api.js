// The public JSON API. The bearer (admin token or access key) lives in sessionStorage
// only: never in a URL, a cookie or localStorage, and it is gone when the tab closes.

const TOKEN_KEY = 'latchkey.token';
const PROJECT_KEY = 'latchkey.project';

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field ?? null;
  }
}

let unauthorized = () => {};

/** Called with the ApiError of any 401, so the page can return to sign-in. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  setToken: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  project: () => sessionStorage.getItem(PROJECT_KEY),
  setProject: (p) => sessionStorage.setItem(PROJECT_KEY, p),
  clear: () => {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(PROJECT_KEY);
  },
};

/** `options.signIn`: a 401 is the caller's to report (the key being tried is wrong). */
export async function request(method, path, body, options = {}) {
  const headers = { Accept: 'application/json' };
  const token = session.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'Latchkey could not be reached. Check the network and try again.');
  }
  if (res.status === 204) return null;
  let json = null;
  try {
    json = await res.json();
  } catch {
    // Not JSON: described below from the status.
  }
  if (!res.ok) {
    const e = (json && json.error) || {};
    const err = new ApiError(
      res.status,
      e.code || `http_${res.status}`,
      e.message || `The server answered ${res.status}.`,
      e.field,
    );
    if (res.status === 401 && !options.signIn) unauthorized(err);
    throw err;
  }
  return json;
}

export const api = {
  get: (path) => request('GET', path),
  post: (path, body) => request('POST', path, body),
  patch: (path, body) => request('PATCH', path, body),
  del: (path) => request('DELETE', path),
};

/** `?a=1&b=2` from the non-empty entries of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;
