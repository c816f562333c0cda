# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
PKGS  := app ingestion retrieval agents evals

.PHONY: run test lint typecheck services eval clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch first, from the CPU build on local disk, so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## serve on the embedded defaults and ingest the sample corpus
	$(BIN)/kb serve --sample

services:  ## make sure Redis (broker) and PostgreSQL (SQL tests) answer on loopback
	bash .ci/services.sh

lint: $(STAMP)
	$(BIN)/ruff check $(PKGS) tests
	$(BIN)/ruff format --check $(PKGS) tests

typecheck: $(STAMP)
	$(BIN)/mypy app ingestion retrieval agents evals

test: $(STAMP) services lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

EVAL_SETS := ../shared/eval/django_faq ../shared/eval/sqlalchemy_faq
EVAL_MODES := bm25,dense,hybrid,hybrid_rerank

eval: $(STAMP)  ## quality benchmarks on the dev sets: four retrieval modes (adapting a reranker once), compression
	for set in $(EVAL_SETS); do \
	  HF_HUB_OFFLINE=1 $(BIN)/python -m evals retrieval --dataset $$set --modes $(EVAL_MODES) \
	    --out results/$$(basename $$set).json || exit 1; \
	  HF_HUB_OFFLINE=1 $(BIN)/python -m evals compress --dataset $$set --out results/$$(basename $$set)-compress.json || exit 1; \
	done

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache

# Real model server on loopback (deploy/local/llm_server.sh): LLM tests + answer eval, server always stopped after.
E2E_BACKEND  ?= $(or $(KB_E2E_BACKEND),vllm)
E2E_LLM_PORT ?= $(or $(KB_E2E_LLM_PORT),8011)

.PHONY: e2e
e2e: $(STAMP) services  ## LLM tests and answer eval against a real local model server (KB_E2E_BACKEND=vllm|llamacpp)
	BIN=$(BIN) KB_E2E_BACKEND=$(E2E_BACKEND) KB_E2E_LLM_PORT=$(E2E_LLM_PORT) bash deploy/local/e2e.sh
