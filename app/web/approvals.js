// The "Waiting for your approval" panel: agent runs paused at a destructive step, for a user whose scopes
// include `approve` (or `admin`) to approve or reject. Run text is only ever put into the page as text nodes.
import { api, getJson } from "./api.js";
import { $, el } from "./render.js";

const REFRESH_MS = 10_000;

let timer = null;
let generation = 0; // bumped on stop, so an answer that arrives after sign-out draws nothing

/** Whether GET /v1/me's user may approve runs (the server checks again on every action). */
export function mayApprove(user) {
  const scopes = (user && user.scopes) || [];
  return scopes.includes("approve") || scopes.includes("admin");
}

/** Show the panel and keep it fresh (every 10 s) for an approver; hide it for anyone else. */
export function startApprovals(user) {
  stopApprovals();
  if (!mayApprove(user)) return;
  $("#approvals").hidden = false;
  refreshApprovals();
  timer = setInterval(() => refreshApprovals({ quiet: true }), REFRESH_MS);
}

export function stopApprovals() {
  generation += 1;
  clearInterval(timer);
  timer = null;
  $("#approvals").hidden = true;
  $("#approvals-list").replaceChildren();
  showStatus("");
  showError("");
}

function showError(message) {
  const error = $("#approvals-error");
  error.textContent = message;
  error.hidden = !message;
}

function showStatus(message) {
  $("#approvals-status").textContent = message;
}

/**
 * Load the paused runs and draw them. A timed (`quiet`) refresh leaves the list alone while a reason is
 * being typed, so the text in the reject box is not wiped under the user's fingers.
 */
export async function refreshApprovals({ quiet = false } = {}) {
  const list = $("#approvals-list");
  if (quiet && list.querySelector(".reject-form")) return;
  const mine = generation;
  let runs;
  try {
    runs = (await getJson("/v1/runs?limit=200")).runs;
  } catch (err) {
    if (mine === generation) showError(`Could not load the runs waiting for approval: ${err.message}`);
    return;
  }
  if (mine !== generation) return;
  showError("");
  const waiting = runs.filter((r) => r.status === "awaiting_approval");
  list.replaceChildren(...waiting.map(runItem));
  $("#approvals-empty").hidden = waiting.length > 0;
  $("#approvals-count").textContent = waiting.length ? `(${waiting.length})` : "";
}

function stepItem(step, index, run) {
  const paused = index === run.next_step && step.status === "awaiting_approval";
  const summary = (step.plan && step.plan.summary) || "";
  return el(
    "li",
    { className: paused ? "approval-step paused" : "approval-step", dataset: { status: step.status } },
    el("code", { className: "approval-tool" }, step.tool),
    el("span", { className: "approval-summary" }, summary),
    el("span", { className: "approval-step-status" }, paused ? "needs your approval" : step.status),
  );
}

function runItem(run) {
  const who = (run.principal && run.principal.name) || "someone";
  const count = run.steps.length === 1 ? "1 step" : `${run.steps.length} steps`;
  const error = el("p", { className: "error", role: "alert", hidden: true });
  const fail = (message) => {
    error.textContent = message;
    error.hidden = !message;
  };
  const approve = el("button", { type: "button", className: "button-primary approve" }, "Approve");
  const reject = el("button", { type: "button", className: "button-quiet reject" }, "Reject");
  const actions = el("div", { className: "approval-actions" }, approve, reject);
  const item = el(
    "li",
    { className: "approval-run card", dataset: { id: run.id } },
    el("p", { className: "approval-head" }, el("strong", { className: "approval-who" }, who), ` asks to run ${count}`),
    el("ol", { className: "approval-steps", start: 0 }, ...run.steps.map((s, i) => stepItem(s, i, run))),
    actions,
    error,
  );

  const act = async (buttons, path, body, done) => {
    fail("");
    for (const b of buttons) b.disabled = true;
    try {
      const result = await (await api(path, { method: "POST", body })).json();
      showStatus(done(result));
    } catch (err) {
      fail(err.message);
      return;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
    await refreshApprovals();
  };

  const runPath = `/v1/runs/${encodeURIComponent(run.id)}`;
  approve.addEventListener("click", () =>
    act([approve, reject], `${runPath}/approve`, undefined, (r) => `Approved ${who}'s run; it ${r.status}.`),
  );
  reject.addEventListener("click", () => {
    fail("");
    actions.replaceWith(rejectForm(run, who, actions, act, fail, runPath));
    item.querySelector(".reject-reason").focus();
  });
  return item;
}

/** The small inline form that asks why, in place of the Approve and Reject buttons. */
function rejectForm(run, who, actions, act, fail, runPath) {
  const inputId = `reject-reason-${run.id}`;
  const reason = el("input", {
    id: inputId,
    className: "reject-reason",
    type: "text",
    maxLength: 2000,
    placeholder: "Why? The requester sees this.",
  });
  const send = el("button", { type: "submit", className: "button-primary reject-send" }, "Reject run");
  const cancel = el("button", { type: "button", className: "button-quiet reject-cancel" }, "Cancel");
  const form = el(
    "form",
    { className: "reject-form" },
    el("label", { htmlFor: inputId, className: "visually-hidden" }, "Reason for rejecting"),
    reason,
    send,
    cancel,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const why = reason.value.trim();
    if (!why) {
      fail("Give a reason for the rejection.");
      reason.focus();
      return;
    }
    const said = (r) => `Rejected ${who}'s run; it ${r.status.replace("_", " ")}.`;
    act([send, cancel], `${runPath}/reject`, { reason: why }, said);
  });
  cancel.addEventListener("click", () => {
    fail("");
    form.replaceWith(actions);
  });
  return form;
}
