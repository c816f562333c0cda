"""Tiers from settings, the router's choices, and the load governor's steps."""

from __future__ import annotations

import json

import pytest

from app.load import LoadGovernor, LoadSettings
from app.routing import Policy, Router, RouteSettings, question_kind, signals
from app.settings import Settings
from app.tiers import Tier, TierSettings, build_tiers, parse_tiers

CHEAP = {
    "name": "small",
    "base_url": "http://127.0.0.1:1/v1",
    "model": "s",
    "price_in_per_1k": 0.1,
    "price_out_per_1k": 0.2,
}
BIG = {
    "name": "big",
    "base_url": "http://127.0.0.1:2/v1",
    "model": "b",
    "price_in_per_1k": 1.0,
    "price_out_per_1k": 3.0,
}


def tiers(*configured: dict[str, object]) -> list[Tier]:
    return build_tiers(parse_tiers(json.dumps(list(configured))), lambda text: len(text.split()))


def test_tiers_are_ordered_cheapest_first_with_the_extractive_tier_at_zero_cost() -> None:
    built = tiers(BIG, CHEAP)
    assert [t.name for t in built] == ["extractive", "small", "big"]
    assert built[0].cost(1000, 1000) == 0.0 and not built[0].generates
    assert built[2].cost(2000, 500) == pytest.approx(2.0 + 1.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        (json.dumps([{"name": "x", "kind": "openai"}]), "needs base_url and model"),
        (json.dumps([CHEAP, CHEAP]), "unique"),
        (json.dumps([{**CHEAP, "price_in_per_1k": -1}]), "price_in_per_1k"),
        (json.dumps([{**CHEAP, "colour": "red"}]), "colour"),
    ],
)
def test_bad_tier_settings_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tiers(raw)


def test_settings_without_kb_tiers_give_the_extractive_tier_plus_kb_llm() -> None:
    assert [t.name for t in Settings(_env_file=None).tier_settings] == ["extractive"]  # type: ignore[call-arg]
    configured = Settings(_env_file=None, llm_base_url="http://x/v1", llm_model="m", llm_max_tokens=64)  # type: ignore[call-arg]
    assert [(t.name, t.model, t.max_tokens) for t in configured.tier_settings] == [
        ("extractive", "", 256),
        ("llm", "m", 64),
    ]
    with pytest.raises(ValueError, match="KB_ROUTING"):
        _ = Settings(_env_file=None, routing="cheapest").route  # type: ignore[call-arg]


def test_question_kinds() -> None:
    assert question_kind("How many vacation days do I get?") == "lookup"
    assert question_kind("Why does Django include Python's license file?") == "explain"
    assert question_kind("What is the difference between null and blank?") == "explain"
    assert question_kind("vacation days") == "other"


def route(
    policy: Policy, question: str, confidence: float, agreement: float | None = 0.9, turns: int = 0, level: int = 0
) -> tuple[str, str]:
    router = Router(tiers(CHEAP, BIG), RouteSettings(policy=policy))
    r = router.route(signals(question, confidence, True, agreement, turns), level)
    return router.tiers[r.tier].name, r.reason


def test_the_router_quotes_a_confident_short_lookup_and_sends_hard_questions_to_the_top_tier() -> None:
    assert route(Policy.ROUTE, "How many vacation days do I get?", 0.95) == ("extractive", "confident_lookup")
    assert route(Policy.ROUTE, "How many vacation days do I get?", 0.95, agreement=0.3) == ("small", "default")
    assert route(Policy.ROUTE, "How many vacation days do I get?", 0.6) == ("small", "default")
    assert route(Policy.ROUTE, "How many vacation days do I get?", 0.3) == ("big", "low_confidence")
    assert route(Policy.ROUTE, "Why do we get vacation days?", 0.95) == ("big", "explanation")
    assert route(Policy.ROUTE, "How many vacation days do I get?", 0.95, turns=1) == ("small", "default")
    assert route(Policy.ROUTE, "And then?", 0.6, turns=3) == ("big", "deep_conversation")
    assert route(Policy.ROUTE, " ".join(["word"] * 30), 0.6) == ("big", "long_question")


def test_fixed_policy_and_degradation_levels() -> None:
    assert route(Policy.FIXED, "How many vacation days do I get?", 0.95) == ("big", "fixed")
    assert route(Policy.FIXED, "Why?", 0.3, level=3) == ("small", "degraded:cheaper_tier")
    assert route(Policy.CASCADE, "Why?", 0.3, level=4) == ("extractive", "degraded:extractive_only")
    router = Router(tiers(CHEAP, BIG))
    assert router.next_tier(1) == 2 and router.next_tier(2) is None
    no_llm = Router([Tier(TierSettings(name="extractive", kind="extractive"))])
    assert no_llm.route(signals("Why?", 0.1, True, None, 0)).reason == "no_llm"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_governor_steps_up_with_load_and_back_down_when_calm() -> None:
    clock = Clock()
    changes: list[tuple[int, int]] = []
    gov = LoadGovernor(
        LoadSettings(inflight_steps=(2, 3, 4, 5), recover_seconds=5.0),
        on_change=lambda old, new, why: changes.append((old, new)),
        clock=clock,
    )
    levels = [gov.enter() for _ in range(5)]
    assert levels == [0, 1, 2, 3, 4]
    for _ in range(5):
        gov.exit(100.0)
    assert gov.level == 4  # it does not drop the moment load falls
    clock.now += 5.1
    assert gov.tick() == 3  # one step per calm period
    clock.now += 60
    assert gov.tick() == 0  # after an idle spell, straight back to normal
    assert changes[:4] == [(0, 1), (1, 2), (2, 3), (3, 4)] and changes[-1][1] == 0


def test_the_governor_degrades_on_recent_p95_latency() -> None:
    clock = Clock()
    gov = LoadGovernor(LoadSettings(inflight_steps=(), p95_ms_steps=(500, 1000), min_samples=4), clock=clock)
    for _ in range(4):
        gov.enter()
        gov.exit(1200.0)
    assert gov.enter() == 2
    gov.exit(None)  # a failed answer does not count
    clock.now += 31  # the slow answers leave the window
    clock.now += 60
    assert gov.tick() == 0


def test_off_means_level_zero_and_bad_thresholds_are_refused() -> None:
    gov = LoadGovernor(LoadSettings(enabled=False, inflight_steps=(1, 1, 1, 1)))
    assert [gov.enter() for _ in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="rise"):
        LoadSettings(inflight_steps=(8, 4))
    with pytest.raises(ValueError, match="at most 4"):
        LoadSettings(inflight_steps=(1, 2, 3, 4, 5))
