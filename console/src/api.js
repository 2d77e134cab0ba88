// The console's calls to the server: JSON API with the session cookie and the CSRF token.
export const session = { user: null, csrf: null };

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.param = body?.error?.param;
  }
}

export async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (session.csrf) headers["x-csrf-token"] = session.csrf;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Secrets are shown once by the server; the browser keeps the ones it acquired, to use in the playground,
// until the user signs out.
const KEYS = "chatgate.keys";
export const keys = {
  all: () => JSON.parse(localStorage.getItem(KEYS) || "{}"),
  put(id, secret) {
    const all = keys.all();
    all[id] = secret;
    localStorage.setItem(KEYS, JSON.stringify(all));
  },
  drop(id) {
    const all = keys.all();
    delete all[id];
    localStorage.setItem(KEYS, JSON.stringify(all));
  },
  clear: () => localStorage.removeItem(KEYS),
};
