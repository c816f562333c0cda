// Talking to the kb API: the stored API key, fetch with the key, JSON error bodies, server-sent events.

const KEY_STORAGE = "kb.apiKey";

let currentKey = localStorage.getItem(KEY_STORAGE) || "";
let onUnauthorized = () => {};

/** The key this browser is signed in with ("" when none). */
export function storedKey() {
  return currentKey;
}

/** Remember a key that /v1/me accepted, across reloads, until sign-out. */
export function saveKey(key) {
  currentKey = key;
  localStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  currentKey = "";
  localStorage.removeItem(KEY_STORAGE);
}

/** Called with the server's message when the stored key stops working (revoked while signed in). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The `{"error": {"message"}}` of a failed response, or a sentence when the body is not ours. */
async function errorOf(resp) {
  let code = "http_error";
  let message = `The server answered ${resp.status} ${resp.statusText}.`.replace(" .", ".");
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code || code;
    }
  } catch (_) {
    // not JSON (a proxy's error page): keep the status line
  }
  return new ApiError(resp.status, code, message);
}

/** fetch with the key; throws ApiError on a non-2xx answer and reports a stored key that stopped working. */
export async function api(path, { method = "GET", body, signal, key = currentKey, headers = {} } = {}) {
  const init = { method, signal, headers: { Authorization: `Bearer ${key}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Cannot reach the server. Check your connection and try again.");
  }
  if (!resp.ok) {
    const error = await errorOf(resp);
    if (resp.status === 401 && key === currentKey) onUnauthorized(error.message);
    throw error;
  }
  return resp;
}

/** The JSON body of a successful GET (or of any request given in `options`). */
export async function getJson(path, options) {
  return (await api(path, options)).json();
}

/** Server-sent events of a response body, parsed by hand: blocks split by a blank line. */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
      }
    }
    const last = parseEvent(buffer + decoder.decode());
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

/** One event block: `{name, data}` with the JSON of its data lines, or null for a comment-only block. */
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // blank, or a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { name, data: JSON.parse(data.join("\n")) };
}
