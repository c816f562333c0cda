// The kb chat page: sign in with an API key, ask, watch the cited answer stream, reopen conversations.
// This module holds the page's state and wires its events; api.js talks to the server, render.js builds the DOM.
import { api, forgetKey, getJson, readEvents, saveKey, storedKey, whenUnauthorized } from "./api.js";
import { mayAct, proposeRun } from "./agent.js";
import { startApprovals, stopApprovals } from "./approvals.js";
import {
  $,
  addAssistantMessage,
  addUserMessage,
  clearThread,
  closePassage,
  markCurrent,
  passageIsOpen,
  renderConversations,
  scrollToEnd,
  showNotice,
} from "./render.js";

const state = {
  user: null,
  conversationId: null,
  controller: null, // AbortController of the answer being streamed
};

whenUnauthorized((message) => {
  if (state.user) signOut(message);
});

function sendFeedback(messageId, rating) {
  return api("/v1/feedback", { method: "POST", body: { message_id: messageId, rating } });
}

function newAnswer() {
  return addAssistantMessage({ onRate: sendFeedback });
}

// ---------------------------------------------------------------- sign in

function showSignIn(message = "") {
  state.user = null;
  stopApprovals();
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
  startApprovals(user);
  $("#act").hidden = !mayAct(user);
  $("#question").focus();
}

async function signIn(key) {
  const user = await getJson("/v1/me", { key });
  saveKey(key);
  showApp(user);
  const fromUrl = conversationInUrl();
  if (fromUrl) await openConversation(fromUrl);
  else newChat();
  await refreshConversations();
}

function signOut(message = "") {
  stopStreaming();
  forgetKey();
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
  markCurrent(id);
}

async function refreshConversations() {
  const error = $("#conversations-error");
  let list;
  try {
    list = (await getJson("/v1/conversations")).conversations;
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not load conversations: ${err.message}`;
    error.hidden = false;
    return;
  }
  renderConversations(list, { onOpen: (c) => openConversation(c.id), onDelete: deleteConversation });
  markCurrent(state.conversationId);
}

async function openConversation(id) {
  stopStreaming();
  closePassage();
  let conv;
  try {
    conv = await getJson(`/v1/conversations/${encodeURIComponent(id)}`);
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
    const bubble = newAnswer();
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

// ---------------------------------------------------------------- the passage panel

$("#passage-close").addEventListener("click", closePassage);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && passageIsOpen()) closePassage();
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
  addUserMessage(question);
  const bubble = newAnswer();
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

$("#act").addEventListener("click", async () => {
  const input = $("#question");
  const request = input.value.trim();
  if (!request) {
    input.focus();
    return;
  }
  input.value = "";
  addUserMessage(request);
  $("#act").disabled = true;
  try {
    await proposeRun(request);
  } finally {
    $("#act").disabled = false;
  }
});

// ---------------------------------------------------------------- start

if (storedKey()) {
  signIn(storedKey()).catch((err) => {
    if (err.status === 401) signOut(`Please sign in again: ${err.message}`);
    else showSignIn(err.message);
  });
} else {
  showSignIn();
}
