"""ONNX Runtime backend for cross-encoders: the model's classification logits, exported once and cached.

Same numbers as sentence-transformers' `CrossEncoder.predict` with an identity activation (tested), computed
without torch at query time; pairs are sorted by length into batches so little compute goes to padding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.embedder_onnx import quantize_int8, resolve_model_dir, trace_to_onnx

if TYPE_CHECKING:
    import onnxruntime as ort
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_EXPORT_FORMAT = 1  # bump when the exported graph changes
_OUTPUT = "logits"


class OnnxCrossEncoder:
    """Raw relevance logits of (query, passage) pairs from an ONNX export of a cross-encoder folder."""

    def __init__(self, model: str, cache_dir: Path, max_length: int = 512, int8: bool = False) -> None:
        self.model_dir = resolve_model_dir(model)
        self.cache_dir = Path(cache_dir)
        self.max_length = max_length
        self.int8 = int8
        self._session: ort.InferenceSession | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._lock = threading.Lock()

    @property
    def export_path(self) -> Path:
        weights = sorted(self.model_dir.glob("*.safetensors")) or sorted(self.model_dir.glob("*.bin"))
        stamp = "|".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        key = f"{_EXPORT_FORMAT}|{self.model_dir.resolve()}|{stamp}|int8={self.int8}"
        return self.cache_dir / f"rerank-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"

    def warm_up(self) -> None:
        """Export (first use only) and open the ONNX session."""
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            path = self.export_path
            if not path.is_file():
                self._export(path)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            log.info("reranker.onnx.ready model=%s path=%s", self.model_dir, path)

    def _export(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        assert self._tokenizer is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(self.model_dir), dtype=torch.float32, attn_implementation="eager"
        )
        sample = self._tokenizer(
            ["a question", "another, longer question"], ["a passage of a few words", "p"], padding=True,
            return_tensors="pt",
        )  # fmt: skip
        # Write beside the target and rename: a concurrent or interrupted export never leaves half a file.
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fp32 = Path(tmp) / "model.onnx"
            trace_to_onnx(model, self._tokenizer, fp32, _OUTPUT, _OUTPUT, sample, per_token=False)
            final = fp32
            if self.int8:
                final = Path(tmp) / "model-int8.onnx"
                quantize_int8(fp32, final)
            os.replace(final, path)
        log.info("reranker.onnx.exported model=%s int8=%s path=%s", self.model_dir, self.int8, path)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 16) -> np.ndarray:
        """One raw logit per pair, in input order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        self.warm_up()
        assert self._session is not None and self._tokenizer is not None
        tokenizer, session = self._tokenizer, self._session
        encoded = tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=self.max_length
        )
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        wanted = {i.name for i in session.get_inputs()}
        order = sorted(range(len(pairs)), key=lambda i: -len(ids[i]))
        pad_id = int(tokenizer.pad_token_id or 0)
        out = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            feed = {
                "input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
                "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
                "token_type_ids": np.zeros((len(rows), width), dtype=np.int64),
            }
            for r, i in enumerate(rows):
                n = len(ids[i])
                feed["input_ids"][r, :n], feed["attention_mask"][r, :n] = ids[i], 1
                if types is not None:
                    feed["token_type_ids"][r, :n] = types[i]
            (logits,) = session.run([_OUTPUT], {k: v for k, v in feed.items() if k in wanted})
            out[rows] = np.asarray(logits, dtype=np.float32).reshape(len(rows), -1)[:, 0]
        return out
