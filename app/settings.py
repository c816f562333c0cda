"""The one place the service reads its environment (KB_*)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.limits import RunLimits
from app.agent_proposals import ProposalSettings
from app.llm import LLMSettings
from app.load import LoadSettings
from app.routing import Policy, RouteSettings
from app.services import AnswerSettings
from app.tiers import EXTRACTIVE, TierSettings, parse_tiers, tier_from_llm
from ingestion.celery_app import BrokerSettings
from retrieval.adapt import AdaptSettings
from retrieval.cache import CacheSettings
from retrieval.settings import EmbedderSettings, FusionSettings, IndexSettings

MAX_ADAPT_MINUTES = 240.0  # the longest training budget one adaptation may ask for


class Settings(BaseSettings):
    """Every knob, with defaults that run on a bare machine (embedded Qdrant, SQLite, filesystem broker)."""

    model_config = SettingsConfigDict(env_prefix="KB_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    url: str = ""  # where the CLI finds a running server; default http://host:port
    api_key: str = ""  # the CLI's key for a running server; default: the bootstrap admin key file
    database_url: str = ""  # default sqlite:///<data_dir>/kb.sqlite
    broker_url: str = ""  # default: embedded filesystem broker (no server)
    broker_visibility_timeout: int = 3600
    worker_concurrency: int = 2
    job_stale_seconds: int = 120  # an unfinished job with no progress this long is re-queued
    job_watchdog_seconds: float = 10.0
    reindex_grace_seconds: float = 30.0  # a replaced index version is dropped this long after the switch
    run_worker: bool | None = None  # default: yes when the index is embedded
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    qdrant_path: str = ""
    collection: str = "kb"
    embedding_model: str = ""
    embedding_backend: str = "torch"  # torch | onnx (ONNX Runtime, exported once from the same model)
    embedding_onnx_int8: bool = False
    embed_batch_size: int = 32
    chunk_tokens: int = 200
    chunk_overlap: int = 30
    max_file_bytes: int = 50_000_000
    max_upload_bytes: int = 200_000_000  # one upload request, checked from Content-Length before reading
    max_query_chars: int = 2000
    max_top_k: int = 100
    answer_sentences: int = 4  # at most this many quoted sentences in an extractive answer
    answer_budget_tokens: int = 120  # extractive answers: the best sentences within this many tokens
    llm_base_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://vllm:8000/v1; empty: extractive answers
    llm_model: str = ""  # the served model name (vLLM --served-model-name)
    llm_api_key: str = ""
    llm_tokenizer: str = ""  # the served model's tokenizer (HF name or folder) for token budgets; default llm_model
    llm_timeout_seconds: float = 30.0  # wait for the first token, and between tokens, before falling back
    llm_max_retries: int = 1
    llm_max_tokens: int = 256  # output tokens per answer at most
    llm_context_tokens: int = 1000  # passage text in a prompt, in the served model's tokens
    llm_context_window: int = 2048  # the served model's context length (vLLM --max-model-len)
    llm_temperature: float = 0.0
    llm_frequency_penalty: float = 0.0
    daily_token_quota: int = 0  # LLM tokens (in + out) one API key may spend per UTC day; 0: unlimited
    redis_url: str = ""  # quota counters; default: the broker's Redis when KB_BROKER_URL is redis://, else SQL
    tiers: str = ""  # JSON list of model tiers (app/tiers.py); empty: extractive, plus KB_LLM_* when set
    routing: str = "fixed"  # fixed (the top tier) | route (the cheapest tier the request needs) | cascade
    route_min_grounded: float = RouteSettings.min_grounded
    route_quote_confidence: float = RouteSettings.quote_confidence  # route: quote a short lookup this sure...
    route_quote_similarity: float = RouteSettings.quote_similarity  # ...(cosine, when no reranker runs)
    route_hard_confidence: float = RouteSettings.hard_confidence  # route: the top tier under this confidence...
    route_hard_similarity: float = RouteSettings.hard_similarity  # ...(cosine, when no reranker runs)
    cache_enabled: bool = True  # semantic cache of answers (a Qdrant collection beside the index)
    cache_threshold: float = CacheSettings.threshold
    cache_ttl_seconds: float = CacheSettings.ttl_seconds
    cache_max_entries: int = CacheSettings.max_entries
    degrade_enabled: bool = True  # adaptive degradation under load (app/load.py)
    degrade_inflight: str = ",".join(str(n) for n in LoadSettings.inflight_steps)  # in-flight answers, levels 1..4
    degrade_p95_ms: str = ""  # recent p95 answer latency (ms) at which levels 1..4 begin; empty: not used
    degrade_window_seconds: float = LoadSettings.window_seconds
    degrade_recover_seconds: float = LoadSettings.recover_seconds
    chat_model_name: str = "kb"  # the model name /v1/chat/completions and /v1/models answer to
    answer_min_confidence: float = AnswerSettings.min_confidence
    answer_min_similarity: float = AnswerSettings.min_similarity
    rerank_model: str = ""  # a CrossEncoder name or path; empty: the one `kb adapt` promoted, if any
    rerank_depth: int = 20
    rerank_backend: str = "torch"  # torch | onnx (ONNX Runtime, exported once into the data dir)
    rerank_onnx_int8: bool = False
    rerank_budget_ms: float = 1500.0  # rerank depth shrinks to what fits this budget at measured pairs/s
    adapt_budget_seconds: float = 600.0  # `kb adapt`: training time budget (the whole job takes a little longer)
    adapt_base_model: str = ""  # the weights a reranker is trained from; empty: the packaged all-MiniLM-L6-v2
    adapt_layers: int = AdaptSettings.num_layers  # lower layers of the base kept in the trained reranker
    adapt_max_pairs: int = AdaptSettings.max_pairs
    rrf_k: int = FusionSettings.rrf_k
    bm25_weight: float = FusionSettings.bm25_weight
    fusion_adaptive: bool = FusionSettings.adaptive
    prefetch: int = FusionSettings.dense_prefetch
    agent_webhook_hosts: str = ""  # comma-separated hosts the webhook tool may call; empty: none
    agent_limits: str = ""  # JSON RunLimits: the most any run may do; a request's limits can only be tighter
    agent_tier: str = ""  # the tier whose model proposes runs; empty: the most capable generating tier
    agent_tool_choice: Literal["required", "auto"] = "required"  # auto needs vLLM's --enable-auto-tool-choice
    agent_max_tokens: int = Field(default=ProposalSettings.max_tokens, ge=16)  # the model's output per proposal
    agent_context_passages: int = Field(default=ProposalSettings.context_passages, ge=0, le=20)
    agent_strict_tools: bool = ProposalSettings.strict_tools
    log_level: str = "INFO"
    otel_exporter: str = ""  # OpenTelemetry traces: otlp (OTEL_EXPORTER_OTLP_ENDPOINT) | console | "" (off)
    sample_dir: Path = Field(default_factory=lambda: Path(__file__).resolve().parent.parent / "docs" / "sample-corpus")

    @cached_property
    def index(self) -> IndexSettings:
        return IndexSettings(
            data_dir=self.data_dir,
            collection=self.collection,
            qdrant_url=self.qdrant_url,
            qdrant_api_key=self.qdrant_api_key,
            qdrant_path=self.qdrant_path,
            chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
            embedder=EmbedderSettings(
                model=self.embedding_model,
                batch_size=self.embed_batch_size,
                backend=self.embedding_backend,
                onnx_int8=self.embedding_onnx_int8,
                cache_dir=str(self.data_dir / "onnx"),
            ),
            fusion=FusionSettings(
                rrf_k=self.rrf_k,
                bm25_weight=self.bm25_weight,
                adaptive=self.fusion_adaptive,
                dense_prefetch=self.prefetch,
                bm25_prefetch=self.prefetch,
            ),
        )

    @property
    def llm(self) -> LLMSettings:
        return LLMSettings(
            base_url=self.llm_base_url,
            model=self.llm_model,
            api_key=self.llm_api_key,
            timeout_s=self.llm_timeout_seconds,
            max_retries=self.llm_max_retries,
            tokenizer=self.llm_tokenizer or self.llm_model,
            frequency_penalty=self.llm_frequency_penalty,
        )

    @property
    def quota_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    @property
    def answer(self) -> AnswerSettings:
        return AnswerSettings(
            quote_budget_tokens=self.answer_budget_tokens,
            quote_sentences=self.answer_sentences,
            context_tokens=self.llm_context_tokens,
            temperature=self.llm_temperature,
            min_confidence=self.answer_min_confidence,
            min_similarity=self.answer_min_similarity,
        )

    @cached_property
    def tier_settings(self) -> list[TierSettings]:
        """KB_TIERS when set; else the extractive tier, plus the one model KB_LLM_* names."""
        if self.tiers.strip():
            return parse_tiers(self.tiers)
        tiers = [TierSettings(name=EXTRACTIVE, kind="extractive")]
        if self.llm.enabled:
            tiers.append(tier_from_llm(self.llm, self.llm_context_window, self.llm_max_tokens))
        return tiers

    @property
    def run_limits(self) -> RunLimits:
        if not self.agent_limits.strip():
            return RunLimits()
        try:
            return RunLimits.model_validate_json(self.agent_limits)
        except ValueError as exc:
            raise ValueError(f"KB_AGENT_LIMITS is not a valid RunLimits JSON object: {exc}") from exc

    @property
    def proposals(self) -> ProposalSettings:
        return ProposalSettings(
            tier=self.agent_tier,
            tool_choice=self.agent_tool_choice,
            max_tokens=self.agent_max_tokens,
            context_passages=self.agent_context_passages,
            strict_tools=self.agent_strict_tools,
        )

    @property
    def route(self) -> RouteSettings:
        try:
            policy = Policy(self.routing)
        except ValueError:
            raise ValueError(f"KB_ROUTING must be one of {[p.value for p in Policy]}, not {self.routing!r}") from None
        return RouteSettings(
            policy=policy,
            min_grounded=self.route_min_grounded,
            quote_confidence=self.route_quote_confidence,
            quote_similarity=self.route_quote_similarity,
            hard_confidence=self.route_hard_confidence,
            hard_similarity=self.route_hard_similarity,
        )

    @property
    def cache(self) -> CacheSettings:
        return CacheSettings(
            enabled=self.cache_enabled,
            threshold=self.cache_threshold,
            ttl_seconds=self.cache_ttl_seconds,
            max_entries=self.cache_max_entries,
        )

    @property
    def load(self) -> LoadSettings:
        def steps(raw: str, name: str) -> tuple[float, ...]:
            try:
                return tuple(float(x) for x in raw.split(",") if x.strip())
            except ValueError:
                raise ValueError(f"{name} must be comma-separated numbers, not {raw!r}") from None

        return LoadSettings(
            enabled=self.degrade_enabled,
            inflight_steps=tuple(int(x) for x in steps(self.degrade_inflight, "KB_DEGRADE_INFLIGHT")),
            p95_ms_steps=steps(self.degrade_p95_ms, "KB_DEGRADE_P95_MS"),
            window_seconds=self.degrade_window_seconds,
            recover_seconds=self.degrade_recover_seconds,
        )

    @property
    def models_dir(self) -> Path:
        """Where `kb adapt` keeps trained rerankers and the pointer to the active one."""
        return self.data_dir / "models"

    def adapt_budget(self, minutes: float | None) -> float:
        """An adaptation's training budget in seconds: the request's minutes, else KB_ADAPT_BUDGET_SECONDS."""
        return minutes * 60.0 if minutes else self.adapt_budget_seconds

    @property
    def adapt(self) -> AdaptSettings:
        return AdaptSettings(
            time_budget_s=self.adapt_budget_seconds, num_layers=self.adapt_layers, max_pairs=self.adapt_max_pairs
        )

    @property
    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            url=self.broker_url,
            data_dir=self.data_dir,
            visibility_timeout=self.broker_visibility_timeout,
            concurrency=self.worker_concurrency,
        )

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kb.sqlite').resolve()}"

    @property
    def server_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def worker_enabled(self) -> bool:
        return self.run_worker if self.run_worker is not None else self.index.backend == "embedded"
