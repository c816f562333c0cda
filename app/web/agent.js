// "Do it": the model turns the typed request into a plan of tool calls (POST /v1/runs/propose, a dry run),
// the page shows each step and what it would do, and the user runs it (POST /v1/runs/{id}/execute) or
// discards it. Destructive steps then wait for an approver. All text from the server goes in as text nodes.
import { api } from "./api.js";
import { $, el, scrollToEnd } from "./render.js";

const WRITE_SCOPES = ["notes", "admin", "webhook"];

/** Whether GET /v1/me's user holds a scope any changing tool needs (the server checks again on every run). */
export function mayAct(user) {
  const scopes = (user && user.scopes) || [];
  return scopes.some((s) => WRITE_SCOPES.includes(s));
}

const EFFECT_LABEL = {
  read: "reads",
  write: "changes",
  destructive: "deletes · needs approval",
};

const STATUS_TEXT = {
  dry_run: "Nothing has run yet.",
  succeeded: "Done: every step ran.",
  awaiting_approval: "Waiting for an approver: the run pauses before its destructive step.",
  rolled_back: "Rolled back: every completed step was undone.",
  rollback_failed: "Rolled back, but some undo failed: see the reason.",
  refused: "Refused before anything ran.",
};

function stepItem(step) {
  const plan = step.plan || {};
  const effect = plan.effect || "";
  return el(
    "li",
    { className: `agent-step effect-${effect}`, dataset: { tool: step.tool, status: step.status } },
    el("code", { className: "agent-tool" }, step.tool),
    el("span", { className: "agent-summary" }, plan.summary || JSON.stringify(step.input)),
    effect ? el("span", { className: "agent-effect" }, EFFECT_LABEL[effect] || effect) : null,
    step.status && step.status !== "planned" ? el("span", { className: "agent-step-status" }, step.status) : null,
  );
}

/** One run's steps and status, redrawn in place as the run moves on. */
function renderRun(card, run) {
  const reason = run.reason ? ` ${run.reason}` : "";
  const status = `${STATUS_TEXT[run.status] || run.status}${run.status === "dry_run" ? "" : reason}`;
  card.querySelector(".agent-steps").replaceChildren(...run.steps.map(stepItem));
  card.querySelector(".agent-status").textContent = status;
  card.dataset.status = run.status;
  card.dataset.runId = run.id;
}

function planCard(request) {
  const card = el(
    "article",
    { className: "message assistant agent-card", "aria-label": "Proposed actions" },
    el("div", { className: "bubble" },
      el("p", { className: "agent-head" }, "Planning the steps for: ", el("q", {}, request)),
      el("ol", { className: "agent-steps", start: 0 }),
      el("p", { className: "agent-status", role: "status" }),
      el("p", { className: "error", role: "alert", hidden: true }),
      el("div", { className: "agent-actions" })),
  );
  return card;
}

function fail(card, message) {
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = !message;
}

/** Ask for a plan for `request`, show it in the thread and offer to run it. */
export async function proposeRun(request) {
  const card = planCard(request);
  const welcome = $("#welcome");
  if (welcome) welcome.hidden = true;
  $("#thread").append(card);
  scrollToEnd();
  let proposal;
  try {
    proposal = await (await api("/v1/runs/propose", { method: "POST", body: { request, dry_run: true } })).json();
  } catch (err) {
    card.querySelector(".agent-head").textContent = "Could not plan that.";
    fail(card, err.message);
    return card;
  }
  const head = card.querySelector(".agent-head");
  if (proposal.outcome !== "run") {
    head.textContent = proposal.outcome === "invalid"
      ? "The model's plan could not be read, so nothing will run."
      : "The model proposed no action.";
    fail(card, proposal.error || proposal.text || "");
    return card;
  }
  const run = proposal.run;
  const count = run.steps.length === 1 ? "1 step" : `${run.steps.length} steps`;
  head.textContent = run.status === "refused" ? `The proposed ${count} cannot run:` : `Proposed ${count}:`;
  renderRun(card, run);
  if (run.status !== "dry_run") return card;
  const go = el("button", { type: "button", className: "button-primary agent-run" }, "Run these steps");
  const discard = el("button", { type: "button", className: "button-quiet agent-discard" }, "Discard");
  const actions = card.querySelector(".agent-actions");
  actions.replaceChildren(go, discard);
  discard.addEventListener("click", () => {
    actions.replaceChildren();
    card.querySelector(".agent-status").textContent = "Discarded: nothing ran.";
    card.dataset.status = "discarded";
  });
  go.addEventListener("click", async () => {
    fail(card, "");
    go.disabled = discard.disabled = true;
    go.textContent = "Running…";
    try {
      const done = await (await api(`/v1/runs/${encodeURIComponent(run.id)}/execute`, { method: "POST" })).json();
      actions.replaceChildren();
      renderRun(card, done);
    } catch (err) {
      fail(card, err.message);
      go.disabled = discard.disabled = false;
      go.textContent = "Run these steps";
    }
    scrollToEnd();
  });
  return card;
}
