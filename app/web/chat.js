// The kb chat page: sign in with an API key, ask, watch the cited answer stream, reopen conversations.
// Model and document text is only ever put into the page as text nodes, never parsed as HTML.
"use strict";

const KEY_STORAGE = "kb.apiKey";
const CITE_MARKER = /\[(\d{1,3})\]/g;

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  user: null,
  conversationId: null,
  controller: null, // AbortController of the answer being streamed
};

const $ = (selector) => document.querySelector(selector);
const welcome = $("#welcome"); // shown in an empty thread, detached and put back by clearThread

/** Build an element: el("p", {className: "x"}, "text", child). Strings become text nodes. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
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

/** fetch with the key; throws ApiError on a non-2xx answer and signs out when the key stops working. */
async function api(path, { method = "GET", body, signal, key = state.key, headers = {} } = {}) {
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
    if (resp.status === 401 && key === state.key && state.user) signOut(error.message);
    throw error;
  }
  return resp;
}

/** Server-sent events of a response body, parsed by hand: blocks split by a blank line. */
async function* readEvents(body) {
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

// ---------------------------------------------------------------- sign in

function showSignIn(message = "") {
  state.user = null;
  $("#app").hidden = true;
  $("#account").hidden = true;
  $("#sign-in-view").hidden = false;
  const error = $("#sign-in-error");
  error.textContent = message;
  error.hidden = !message;
  $("#api-key").focus();
}

function showApp(user) {
  state.user = user;
  $("#user-name").textContent = user.name;
  $("#user-name").title = user.groups.length ? `groups: ${user.groups.join(", ")}` : "public documents only";
  $("#account").hidden = false;
  $("#sign-in-view").hidden = true;
  $("#app").hidden = false;
  $("#question").focus();
}

async function signIn(key) {
  const resp = await api("/v1/me", { key });
  const user = await resp.json();
  state.key = key;
  localStorage.setItem(KEY_STORAGE, key);
  showApp(user);
  const fromUrl = conversationInUrl();
  if (fromUrl) await openConversation(fromUrl);
  else newChat();
  await refreshConversations();
}

function signOut(message = "") {
  stopStreaming();
  state.key = "";
  localStorage.removeItem(KEY_STORAGE);
  $("#conversations").replaceChildren();
  closePassage();
  newChat();
  $("#api-key").value = "";
  showSignIn(message);
}

$("#sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  if (!key) {
    showSignIn("Enter your API key.");
    return;
  }
  const button = $("#sign-in");
  button.disabled = true;
  try {
    await signIn(key);
  } catch (err) {
    showSignIn(err.message);
  } finally {
    button.disabled = false;
  }
});

$("#sign-out").addEventListener("click", () => signOut());

// ---------------------------------------------------------------- conversations

function conversationInUrl() {
  const match = /^#c=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  return match ? match[1] : null;
}

/** The open conversation, kept in the address so a reload or a bookmark reopens it. */
function setConversation(id) {
  state.conversationId = id;
  history.replaceState(null, "", id ? `#c=${id}` : location.pathname + location.search);
  markCurrent();
}

function markCurrent() {
  for (const item of document.querySelectorAll("#conversations li")) {
    const current = item.dataset.id === state.conversationId;
    item.classList.toggle("current", current);
    const open = item.querySelector(".conv-open");
    if (current) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

async function refreshConversations() {
  const error = $("#conversations-error");
  let list;
  try {
    list = (await (await api("/v1/conversations")).json()).conversations;
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not load conversations: ${err.message}`;
    error.hidden = false;
    return;
  }
  const items = list.map((c) => {
    const open = el(
      "button",
      { type: "button", className: "conv-open", title: c.title },
      el("span", { className: "conv-title" }, c.title || "Untitled"),
      el("time", { className: "conv-time", dateTime: c.updated_at || "" }, when(c.updated_at)),
    );
    open.addEventListener("click", () => openConversation(c.id));
    const remove = el("button", {
      type: "button",
      className: "conv-delete button-quiet",
      title: "Delete this conversation",
      "aria-label": `Delete conversation: ${c.title}`,
    }, "×");
    remove.addEventListener("click", () => deleteConversation(c));
    return el("li", { dataset: { id: c.id } }, open, remove);
  });
  $("#conversations").replaceChildren(...items);
  $("#conversations-empty").hidden = list.length > 0;
  markCurrent();
}

async function openConversation(id) {
  stopStreaming();
  closePassage();
  let conv;
  try {
    conv = await (await api(`/v1/conversations/${encodeURIComponent(id)}`)).json();
  } catch (err) {
    if (err.status === 404) {
      newChat();
      showNotice(`That conversation no longer exists.`);
    } else {
      showNotice(`Could not open the conversation: ${err.message}`);
    }
    return;
  }
  clearThread();
  for (const message of conv.messages) {
    if (message.role === "user") {
      addUserMessage(message.content);
      continue;
    }
    const bubble = addAssistantMessage();
    bubble.messageId = message.id;
    const citations = (message.citations || []).map((c, i) => ({ ...c, number: i + 1 }));
    if (message.status === "ok") {
      bubble.finish({ answer: message.content, ...message.meta }, citations, message.rating);
    } else if (message.status === "pending") {
      bubble.setText(message.content);
      bubble.note("This answer was still being written.");
    } else {
      bubble.setText(message.content);
      bubble.note(message.status === "cancelled" ? "Stopped before the answer was finished." : "This answer failed.");
    }
  }
  setConversation(conv.id);
  scrollToEnd();
}

async function deleteConversation(conv) {
  if (!confirm(`Delete the conversation "${conv.title}"?`)) return;
  try {
    await api(`/v1/conversations/${encodeURIComponent(conv.id)}`, { method: "DELETE" });
  } catch (err) {
    showNotice(`Could not delete the conversation: ${err.message}`);
    return;
  }
  if (state.conversationId === conv.id) newChat();
  await refreshConversations();
}

function newChat() {
  stopStreaming();
  clearThread();
  setConversation(null);
  $("#question").focus();
}

$("#new-chat").addEventListener("click", newChat);

// ---------------------------------------------------------------- the thread

function clearThread() {
  $("#thread").replaceChildren(welcome);
  welcome.hidden = false;
}

function scrollToEnd() {
  const thread = $("#thread");
  thread.scrollTop = thread.scrollHeight;
}

function showNotice(text) {
  welcome.hidden = true;
  $("#thread").append(el("p", { className: "notice", role: "status" }, text));
  scrollToEnd();
}

function addUserMessage(text) {
  welcome.hidden = true;
  const node = el("article", { className: "message user", "aria-label": "Your question" },
    el("p", { className: "bubble" }, text));
  $("#thread").append(node);
  return node;
}

/** Text with its [n] markers turned into buttons that open the passage. */
function citedText(text, citations) {
  const byNumber = new Map(citations.map((c) => [c.number, c]));
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(CITE_MARKER)) {
    const citation = byNumber.get(Number(match[1]));
    if (!citation) continue; // a number without a source stays plain text
    nodes.push(text.slice(last, match.index), citeButton(citation, match[0]));
    last = match.index + match[0].length;
  }
  nodes.push(text.slice(last));
  return nodes.filter((n) => n !== "");
}

function citeButton(citation, label) {
  const button = el("button", {
    type: "button",
    className: "cite",
    dataset: { n: String(citation.number) },
    title: citation.title || citation.path,
    "aria-label": `Source ${citation.number}: ${citation.title || citation.path}`,
  }, label);
  button.addEventListener("click", () => openPassage(citation, button));
  return button;
}

function label(done) {
  if (done.abstained) return { text: "no answer in your documents", kind: "abstained" };
  if (done.extractive) return { text: "quoted from the documents", kind: "extractive" };
  return { text: `generated by ${done.model || "the model"}`, kind: "generated" };
}

/** An assistant message: text that streams in, then citations, label, sources and feedback. */
function addAssistantMessage() {
  welcome.hidden = true;
  const text = el("div", { className: "answer-text" });
  const bubble = el("div", { className: "bubble" }, text);
  const node = el("article", { className: "message assistant streaming", "aria-label": "Answer", "aria-busy": "true" },
    bubble);
  $("#thread").append(node);

  const message = {
    node,
    messageId: null,
    append(piece) {
      text.append(piece);
      scrollToEnd();
    },
    setText(value) {
      text.replaceChildren(value);
    },
    finish(done, citations, rating = null) {
      text.replaceChildren(...citedText(done.answer || "", citations));
      const { text: labelText, kind } = label(done);
      const tag = el("span", { className: `answer-label ${kind}` }, labelText);
      if (done.fallback) tag.title = `The model was not used: ${done.fallback}`;
      const footer = el("div", { className: "answer-footer" }, tag);
      if (this.messageId) footer.append(feedbackButtons(this.messageId, rating));
      bubble.append(footer);
      if (citations.length) bubble.append(sourcesList(citations));
      this.settle();
    },
    error(messageText) {
      node.classList.add("failed");
      bubble.append(el("p", { className: "error", role: "alert" }, messageText));
      this.settle();
    },
    note(noteText) {
      bubble.append(el("p", { className: "note" }, noteText));
      this.settle();
    },
    settle() {
      node.classList.remove("streaming");
      node.removeAttribute("aria-busy");
      scrollToEnd();
    },
  };
  return message;
}

function sourcesList(citations) {
  const items = citations.map((c) => {
    const button = el("button", { type: "button", className: "source", title: c.path },
      el("span", { className: "source-number" }, `[${c.number}]`),
      el("span", { className: "source-name" },
        el("span", { className: "source-title" }, c.title || c.path),
        el("span", { className: "source-path" }, c.path)));
    button.addEventListener("click", () => openPassage(c, button));
    return el("li", {}, button);
  });
  return el("details", { className: "sources", open: true },
    el("summary", {}, citations.length === 1 ? "1 source" : `${citations.length} sources`),
    el("ol", {}, ...items));
}

const SVG_NS = "http://www.w3.org/2000/svg";
const THUMB_PATH = "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3";

/** A thumb icon drawn inline: no icon font or emoji font needs to be installed. */
function thumbIcon() {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", THUMB_PATH);
  svg.append(path);
  return svg;
}

function feedbackButtons(messageId, rating) {
  const up = el("button", { type: "button", className: "thumb thumb-up", title: "Helpful", "aria-label": "Helpful" },
    thumbIcon());
  const down = el("button", {
    type: "button", className: "thumb thumb-down", title: "Not helpful", "aria-label": "Not helpful",
  }, thumbIcon());
  const status = el("span", { className: "feedback-status", role: "status" });
  const show = (value) => {
    for (const [button, own] of [[up, 1], [down, -1]]) {
      button.classList.toggle("selected", value === own);
      button.setAttribute("aria-pressed", String(value === own));
    }
  };
  const rate = async (value) => {
    status.textContent = "";
    try {
      await api("/v1/feedback", { method: "POST", body: { message_id: messageId, rating: value } });
      show(value);
      status.textContent = "Thanks for the feedback.";
    } catch (err) {
      status.textContent = `Feedback not saved: ${err.message}`;
    }
  };
  up.addEventListener("click", () => rate(1));
  down.addEventListener("click", () => rate(-1));
  show(rating);
  return el("span", { className: "feedback" }, up, down, status);
}

// ---------------------------------------------------------------- the passage panel

let passageOpener = null;

function openPassage(citation, opener) {
  passageOpener = opener;
  $("#passage-number").textContent = `[${citation.number}]`;
  $("#passage-title").textContent = citation.title || citation.path;
  const path = $("#passage-path");
  if (/^https?:\/\//i.test(citation.path)) {
    path.replaceChildren(el("a", { href: citation.path, target: "_blank", rel: "noopener noreferrer" }, citation.path));
  } else {
    path.replaceChildren(el("code", {}, citation.path));
  }
  $("#passage-text").textContent = citation.text;
  const panel = $("#passage");
  panel.hidden = false;
  panel.focus();
}

function closePassage() {
  $("#passage").hidden = true;
  if (passageOpener && document.contains(passageOpener)) passageOpener.focus();
  passageOpener = null;
}

$("#passage-close").addEventListener("click", closePassage);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("#passage").hidden) closePassage();
});

// ---------------------------------------------------------------- asking

function setStreaming(on) {
  $("#ask").disabled = on;
  $("#stop").hidden = !on;
}

/** Abort the answer being streamed (Stop, or leaving for another conversation). */
function stopStreaming() {
  if (!state.controller) return;
  state.controller.abort();
  state.controller = null;
  setStreaming(false);
}

async function ask(question) {
  const bubble = (addUserMessage(question), addAssistantMessage());
  scrollToEnd();
  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  const body = { question, stream: true };
  if (state.conversationId) body.conversation_id = state.conversationId;
  let citations = [];
  let finished = false;
  try {
    const resp = await api("/v1/answer", { method: "POST", body, signal: controller.signal,
      headers: { Accept: "text/event-stream" } });
    if (!(resp.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      const done = await resp.json(); // a server that ignored `stream`: one JSON answer
      bubble.messageId = done.message_id;
      if (done.conversation_id) setConversation(done.conversation_id);
      bubble.finish(done, done.citations || []);
      finished = true;
      return;
    }
    for await (const { name, data } of readEvents(resp.body)) {
      if (name === "start") {
        bubble.messageId = data.message_id;
        setConversation(data.conversation_id);
      } else if (name === "token") {
        bubble.append(data.text);
      } else if (name === "restart") {
        bubble.setText("");
      } else if (name === "citations") {
        citations = data.citations || [];
      } else if (name === "done") {
        if (data.message_id) bubble.messageId = data.message_id;
        bubble.finish(data, citations);
        finished = true;
      } else if (name === "error") {
        bubble.error((data.error && data.error.message) || "The answer failed.");
        finished = true;
      }
    }
    if (!finished) bubble.error("The connection closed before the answer was finished. Try again.");
  } catch (err) {
    if (err.name === "AbortError") {
      if (!finished && document.contains(bubble.node)) bubble.note("Stopped.");
    } else {
      bubble.error(err.message || String(err));
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setStreaming(false);
    }
    if (state.user) refreshConversations();
  }
}

$("#ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("#question");
  const question = input.value.trim();
  if (!question || state.controller) return;
  input.value = "";
  ask(question);
});

$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("#ask-form").requestSubmit();
  }
});

$("#stop").addEventListener("click", stopStreaming);

// ---------------------------------------------------------------- start

if (state.key) {
  signIn(state.key).catch((err) => {
    if (err.status === 401) signOut(`Please sign in again: ${err.message}`);
    else showSignIn(err.message);
  });
} else {
  showSignIn();
}
