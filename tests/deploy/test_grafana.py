"""The Grafana dashboard queries only metrics that kb really exports."""

from __future__ import annotations

import json
import re

from app.load import LoadGovernor
from app.metrics import AnswerMetrics
from app.services import Answer
from retrieval.types import Usage
from tests.conftest import REPO


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "kb-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bkb_[a-z_]+", target["expr"])
    }
    exported = {
        s.name for family in AnswerMetrics(lambda: {"up": 0, "down": 0}).registry.collect() for s in family.samples
    }
    # a histogram that has seen nothing still exports its buckets, count and sum; a labelled one exports none yet
    metrics = AnswerMetrics(lambda: {"up": 0, "down": 0})
    metrics.observe_request("/v1/answer", "POST", 200, 0.1)
    metrics.stages.labels("retrieve").observe(0.01)
    usage = Usage(tier="llm", route="default", escalations=["small:abstained"], stages_ms={"cache": 1.0})
    usage.charge("llm", 100, 20, 0.01)
    metrics.observe(Answer("text", [], [], extractive=False, usage=usage))
    metrics.watch_load(LoadGovernor())
    metrics.degradation_changed(0, 1, "inflight=9")
    metrics.count_error("not_found")
    exported = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert queried and queried <= exported, queried - exported
