"""Model tiers: what each answer generator is, what it costs and how much it reads.

The extractive answer is the zero-token tier; every other tier is an OpenAI-compatible endpoint and model
(vLLM in deployment). Tiers are ordered cheapest first by their price per 1k tokens; the router and the
cascade climb that order. `KB_TIERS` is a JSON list of `TierSettings`; without it the tiers are the extractive
one plus, when `KB_LLM_BASE_URL` is set, the one model it names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.llm import LLMClient, LLMSettings, TokenCounter

EXTRACTIVE = "extractive"


class TierSettings(BaseModel):
    """One tier as configured. Prices are per 1,000 tokens, in whatever currency the operator bills in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal["extractive", "openai"] = "openai"
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    tokenizer: str = ""  # the served model's tokenizer for budgets; default: model
    price_in_per_1k: float = Field(default=0.0, ge=0)
    price_out_per_1k: float = Field(default=0.0, ge=0)
    context_window: int = Field(default=2048, ge=256)
    max_tokens: int = Field(default=256, ge=1)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=1, ge=0)
    frequency_penalty: float = 0.0

    @model_validator(mode="after")
    def _endpoint(self) -> TierSettings:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError(f"tier {self.name!r}: an openai tier needs base_url and model")
        return self


def tier_from_llm(llm: LLMSettings, context_window: int = 2048, max_tokens: int = 256) -> TierSettings:
    """The one model KB_LLM_* (or an eval's --llm flags) names, as a tier called "llm"."""
    return TierSettings(
        name="llm",
        base_url=llm.base_url,
        model=llm.model,
        api_key=llm.api_key,
        tokenizer=llm.tokenizer,
        context_window=context_window,
        max_tokens=max_tokens,
        timeout_seconds=llm.timeout_s,
        max_retries=llm.max_retries,
        frequency_penalty=llm.frequency_penalty,
    )


def parse_tiers(raw: str) -> list[TierSettings]:
    """KB_TIERS: a JSON list of tiers. Raises ValueError saying which tier and field is wrong."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"KB_TIERS is not valid JSON: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise ValueError("KB_TIERS must be a non-empty JSON list of tiers")
    try:
        tiers = [TierSettings.model_validate(item) for item in items]
    except ValidationError as exc:
        raise ValueError(f"KB_TIERS: {exc}") from exc
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"KB_TIERS: tier names must be unique, got {names}")
    if not any(t.kind == EXTRACTIVE for t in tiers):
        tiers.insert(0, TierSettings(name=EXTRACTIVE, kind="extractive"))
    return tiers


@dataclass
class Tier:
    """A configured tier with its client and token counter (None for the extractive tier)."""

    settings: TierSettings
    llm: LLMClient | None = None
    tokens: TokenCounter | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def generates(self) -> bool:
        return self.llm is not None and self.llm.enabled

    @property
    def price_rank(self) -> float:
        """Ordering key: what a typical answer (about 4 tokens read per token written) costs here."""
        return 4 * self.settings.price_in_per_1k + self.settings.price_out_per_1k

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        s = self.settings
        return prompt_tokens / 1000 * s.price_in_per_1k + completion_tokens / 1000 * s.price_out_per_1k


def build_tiers(configured: list[TierSettings], fallback_count: Callable[[str], int]) -> list[Tier]:
    """Clients for every tier, cheapest first (the extractive tier is always the first)."""
    tiers: list[Tier] = []
    for s in configured:
        if s.kind == EXTRACTIVE:
            tiers.append(Tier(s))
            continue
        llm = LLMClient(
            LLMSettings(
                base_url=s.base_url,
                model=s.model,
                api_key=s.api_key,
                timeout_s=s.timeout_seconds,
                max_retries=s.max_retries,
                tokenizer=s.tokenizer or s.model,
                frequency_penalty=s.frequency_penalty,
            )
        )
        tiers.append(Tier(s, llm, TokenCounter(s.tokenizer or s.model, fallback_count)))
    extractive = [t for t in tiers if not t.generates]
    models = sorted((t for t in tiers if t.generates), key=lambda t: t.price_rank)
    return extractive[:1] + models
