#!/usr/bin/env bash
# `make e2e`: set up and start a real OpenAI-compatible model server on loopback, run the LLM tests and the
# answer eval against it, and always stop the server again (also on failure or Ctrl-C).
#   KB_E2E_BACKEND=vllm|llamacpp (default vllm), KB_E2E_LLM_PORT (default 8011), BIN (default .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${BIN:-.venv/bin}"
SERVER="bash deploy/local/llm_server.sh"
EVAL_DATASET="${KB_E2E_EVAL_DATASET:-../shared/eval/django_faq}"
EVAL_OFF_TOPIC="${KB_E2E_EVAL_UNANSWERABLE:-../shared/eval/sqlalchemy_faq}"  # questions this corpus cannot answer
EVAL_LIMIT="${KB_E2E_EVAL_LIMIT:-20}"
EVAL_OUT="${KB_E2E_EVAL_OUT:-results/answers-$(basename "$EVAL_DATASET")-smollm2.json}"

$SERVER setup
trap '$SERVER stop' EXIT
trap 'exit 130' INT TERM
$SERVER start

server_env="$($SERVER env)"   # an assignment, so set -e catches a failing `env`
eval "$server_env"
export HF_HUB_OFFLINE=1

# Both run even if the first fails (more to read per run); the first failure is the exit status.
rc=0
"$BIN/pytest" -q -p no:cacheprovider -m llm || rc=$?
if [ "$rc" != 0 ]; then
  echo "e2e: LLM tests failed (pytest exit $rc)" >&2
fi

mkdir -p "$(dirname "$EVAL_OUT")"
erc=0
"$BIN/python" -m evals answers --dataset "$EVAL_DATASET" --unanswerable "$EVAL_OFF_TOPIC" --llm \
  --limit "$EVAL_LIMIT" --out "$EVAL_OUT" || erc=$?
if [ "$erc" != 0 ]; then
  echo "e2e: answer eval failed (exit $erc)" >&2
  [ "$rc" != 0 ] || rc=$erc
else
  echo "e2e: answer eval written to $EVAL_OUT"
fi
exit "$rc"
