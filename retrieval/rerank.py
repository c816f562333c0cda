"""Cross-encoder reranking of the top hits, as deep as a latency budget allows, with calibrated confidence.

The depth follows the measured throughput: a MiniLM-L6-sized cross-encoder scores ~21 (query, passage) pairs/s
on two CPU cores (docs in /work/shared/MODELS.md), so a fixed depth of 20 would cost a second per query there
and nothing on a GPU. Confidence is Platt scaling of the raw logit: `sigmoid(scale * logit + bias)`; fit
`scale` and `bias` on labelled (query, passage, relevant?) pairs with `fit_calibration`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from retrieval.types import Hit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankSettings:
    """Which cross-encoder reranks, how deep, and how its logits map to a 0..1 confidence."""

    model: str = ""  # sentence-transformers CrossEncoder name or local folder; empty: reranking disabled
    max_depth: int = 20  # never score more than this many hits per query
    latency_budget_ms: float = 1500.0  # the depth is cut so that scoring should fit in this time
    batch_size: int = 16
    pairs_per_second: float = 21.0  # initial throughput estimate; replaced by measurements as queries run
    throughput_smoothing: float = 0.3  # weight of the newest measurement in the moving average
    # Platt scaling, confidence = sigmoid(a * logit + b). None: the model folder's kb_calibration.json (which
    # `kb adapt` writes from held-back pairs) when it has one, else a = 1, b = 0.
    calibration_scale: float | None = None
    calibration_bias: float | None = None
    max_length: int = 512  # word pieces per (query, passage) pair; longer pairs are truncated
    device: str = "cpu"
    backend: str = "torch"  # "torch" (sentence-transformers) | "onnx" (ONNX Runtime, exported once and cached)
    onnx_int8: bool = False  # onnx backend: dynamic int8 quantization of the weights
    cache_dir: str = ""  # onnx backend: where exports are kept (default data/onnx)

    @property
    def enabled(self) -> bool:
        return bool(self.model)


CALIBRATION_FILE = "kb_calibration.json"


def write_calibration(model_dir: Path, scale: float, bias: float, pairs: int) -> None:
    """Store the Platt parameters fitted for the model in its folder."""
    payload = {"scale": scale, "bias": bias, "fitted_on_pairs": pairs}
    (Path(model_dir) / CALIBRATION_FILE).write_text(json.dumps(payload, indent=1) + "\n")


def read_calibration(model: str) -> tuple[float, float] | None:
    """(scale, bias) from a local model folder's calibration file, or None."""
    path = Path(model) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return float(data["scale"]), float(data["bias"])


class RankedHit(NamedTuple):
    """A hit after reranking: raw cross-encoder logit and calibrated confidence, both None beyond the depth."""

    hit: Hit
    score: float | None
    confidence: float | None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def fit_calibration(
    scores: np.ndarray | list[float], labels: np.ndarray | list[int], iterations: int = 100
) -> tuple[float, float]:
    """Platt scaling: `(a, b)` such that sigmoid(a * score + b) estimates P(relevant | score).

    Logistic regression by Newton's method on Platt's smoothed targets ((N+ + 1)/(N+ + 2) and 1/(N- + 2)),
    which keeps the fit finite on separable data. `labels` are 1 (relevant) or 0.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError("fit_calibration needs as many labels as scores, and at least one of each")
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_calibration needs both relevant (1) and non-relevant (0) examples")
    t = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    x = np.stack([s, np.ones_like(s)], axis=1)
    w = np.array([0.0, math.log((n_pos + 1.0) / (n_neg + 1.0))])
    ridge = 1e-9 * np.eye(2)  # keeps the Hessian invertible when all scores are equal
    for _ in range(iterations):
        p = sigmoid(x @ w)
        grad = x.T @ (p - t)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


Predict = Callable[[list[tuple[str, str]]], np.ndarray]


def _torch_predict(settings: RerankSettings) -> Predict:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = CrossEncoder(str(settings.model), device=settings.device, max_length=settings.max_length)

    def predict(pairs: list[tuple[str, str]]) -> np.ndarray:
        logits = model.predict(
            pairs,
            batch_size=settings.batch_size,
            activation_fn=torch.nn.Identity(),  # raw logits: calibration is ours, not the model config's
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(logits)

    return predict


def _onnx_predict(settings: RerankSettings) -> Predict:
    from retrieval.rerank_onnx import OnnxCrossEncoder

    model = OnnxCrossEncoder(
        settings.model, Path(settings.cache_dir or "data/onnx"), settings.max_length, int8=settings.onnx_int8
    )
    model.warm_up()
    return lambda pairs: model.predict(pairs, settings.batch_size)


class Reranker:
    """Scores (query, passage) pairs with a sentence-transformers CrossEncoder loaded once by `warm_up`."""

    def __init__(self, settings: RerankSettings) -> None:
        self.settings = settings
        self._predict: Predict | None = None
        self._file_calibration: tuple[float, float] | None = None
        self._load_lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._pairs_per_second = settings.pairs_per_second

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def pairs_per_second(self) -> float:
        """Current throughput estimate (moving average of measured pairs per second)."""
        return self._pairs_per_second

    def warm_up(self) -> None:
        """Load the cross-encoder (offline: a local folder or the local Hugging Face cache); no-op if disabled."""
        if not self.enabled:
            return
        with self._load_lock:
            if self._predict is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            s = self.settings
            log.info("reranker.load model=%s backend=%s device=%s", s.model, s.backend, s.device)
            try:
                self._predict = _onnx_predict(s) if s.backend == "onnx" else _torch_predict(s)
                self._file_calibration = read_calibration(s.model)
            except (OSError, RuntimeError) as exc:
                raise RuntimeError(
                    f"cannot load reranking model {s.model!r}: {exc}. Set the reranker model to a local "
                    "CrossEncoder folder, or to an empty string to disable reranking."
                ) from exc

    def use_model(self, model: str) -> None:
        """Switch to another cross-encoder (e.g. one `kb adapt` just promoted); it loads on the next query."""
        with self._load_lock:
            self.settings = replace(self.settings, model=model)
            self._predict = None
            self._file_calibration = None
        log.info("reranker.switched model=%s", model)

    def budget_depth(self) -> int:
        """How many pairs fit in the latency budget at the current throughput estimate (at least 1)."""
        fits = int(self._pairs_per_second * self.settings.latency_budget_ms / 1000.0)
        # At least one pair always runs so that the estimate keeps learning after a slow outlier.
        return max(1, fits)

    def depth_for(self, n_hits: int, depth: int | None = None) -> int:
        """Hits to score: the smallest of the request's depth, `max_depth`, the budget depth and `n_hits`."""
        limit = min(self.settings.max_depth, self.budget_depth(), n_hits)
        if depth is not None:
            limit = min(limit, max(depth, 0))
        return max(limit, 0)

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """Raw logits of (query, text) pairs; updates the throughput estimate from the time taken."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        predict = self._predict
        if predict is None:
            self.warm_up()
            predict = self._predict
        if predict is None:
            raise RuntimeError("reranking is disabled (no model configured)")
        t0 = time.perf_counter()
        logits = predict([(query, text) for text in texts])
        elapsed = time.perf_counter() - t0
        self._observe(len(texts), elapsed)
        return np.asarray(logits, dtype=np.float64).reshape(len(texts))

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability of relevance for raw logits."""
        scale, bias = self.calibration
        return sigmoid(scale * np.asarray(logits, dtype=np.float64) + bias)

    @property
    def calibration(self) -> tuple[float, float]:
        """The Platt (scale, bias) in use: the settings', else the model folder's, else (1, 0)."""
        s = self.settings
        fitted = self._file_calibration or (1.0, 0.0)
        scale = s.calibration_scale if s.calibration_scale is not None else fitted[0]
        bias = s.calibration_bias if s.calibration_bias is not None else fitted[1]
        return scale, bias

    def rerank(self, query: str, hits: list[Hit], depth: int | None = None) -> list[RankedHit]:
        """The top `depth` hits reordered by cross-encoder score, followed by the rest in their original order."""
        if not self.enabled or not hits:
            return [RankedHit(hit, None, None) for hit in hits]
        k = self.depth_for(len(hits), depth)
        head, tail = hits[:k], hits[k:]
        logits = self.score(query, [h.chunk.text for h in head])
        conf = self.confidence(logits)
        order = sorted(range(len(head)), key=lambda i: -logits[i])  # stable: ties keep retrieval order
        ranked = [RankedHit(head[i], float(logits[i]), float(conf[i])) for i in order]
        log.info("rerank.done hits=%d depth=%d pairs_per_second=%.1f", len(hits), k, self._pairs_per_second)
        return ranked + [RankedHit(hit, None, None) for hit in tail]

    def _observe(self, pairs: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = pairs / seconds
        alpha = self.settings.throughput_smoothing
        with self._rate_lock:
            self._pairs_per_second = (1.0 - alpha) * self._pairs_per_second + alpha * rate
