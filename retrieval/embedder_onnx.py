"""ONNX Runtime embedder: the configured sentence-transformers model exported once, then run without torch.

Same public interface as `retrieval.embedder.Embedder`. The transformer is exported with `torch.onnx.export`
on first use (optionally quantized to int8) and cached; tokenization, pooling and normalisation follow the
model folder's own sentence-transformers configuration (modules.json, sentence_bert_config.json, 1_Pooling).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.embedder import TokenCounter
from retrieval.settings import EmbedderSettings

if TYPE_CHECKING:
    import onnxruntime as ort
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_EXPORT_FORMAT = 1  # bump when the exported graph changes (inputs, outputs, opset)
_OPSET = 17
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class OnnxEmbedderError(RuntimeError):
    """The model cannot be run by the ONNX backend; the message says what to change."""


@dataclass(frozen=True)
class ModelLayout:
    """What a sentence-transformers folder asks for: where the transformer is, how to pool and normalise."""

    transformer_dir: Path
    max_seq_length: int | None
    do_lower_case: bool
    pooling_modes: tuple[str, ...]
    normalize: bool


def resolve_model_dir(name: str) -> Path:
    """The local folder of a model given as a path or a Hugging Face name already in the local cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # the hub raises several unrelated types for "not cached"
        raise OnnxEmbedderError(
            f"cannot find embedding model {name!r} locally: {exc}. Set KB_EMBEDDING_MODEL to a local "
            "sentence-transformers folder or a model present in the Hugging Face cache."
        ) from exc


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if mode is None:
        found = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
        return found or ("mean",)
    return (mode,) if isinstance(mode, str) else tuple(mode)


def read_layout(model_dir: Path) -> ModelLayout:
    """Read modules.json and its module configs; a plain HF folder gets mean pooling, as sentence-transformers does."""
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    transformer_dir, normalize = model_dir, False
    modes: tuple[str, ...] = ("mean",)
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = model_dir / str(module.get("path", ""))
        if kind == "Transformer":
            transformer_dir = folder
        elif kind == "Pooling":
            modes = _pooling_modes(json.loads((folder / "config.json").read_text()))
        elif kind == "Normalize":
            normalize = True
        else:
            raise OnnxEmbedderError(
                f"module {module.get('type')!r} of {model_dir} is not supported by the ONNX backend; "
                "use backend='torch' for this model"
            )
    st_config_file = transformer_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_file.read_text()) if st_config_file.is_file() else {}
    max_len = st_config.get("max_seq_length")
    return ModelLayout(
        transformer_dir=transformer_dir,
        max_seq_length=int(max_len) if max_len else None,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pooling_modes=modes,
        normalize=normalize,
    )


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def export_path(settings: EmbedderSettings, model_dir: Path, local: bool) -> Path:
    """Where the export lives: cache_dir if set, else beside a local model folder (a hub model: ~/.cache), under
    kb-onnx/<hash of model path and int8 flag>/; the first of these that is not writable falls back to
    ~/.cache/kb/onnx."""
    key = hashlib.sha256(f"{_EXPORT_FORMAT}|{model_dir}|int8={settings.onnx_int8}".encode()).hexdigest()[:16]
    home_cache = Path.home() / ".cache"
    if settings.cache_dir:
        preferred = Path(settings.cache_dir).expanduser()
    else:
        preferred = (model_dir if local else home_cache) / "kb-onnx"
    candidates = [preferred, home_cache / "kb" / "onnx"]
    for base in candidates:
        if (base / key / "model.onnx").is_file() or _writable(base):
            if base != preferred:
                log.warning("embedder.onnx_cache_fallback wanted=%s using=%s", preferred, base)
            return base / key / "model.onnx"
    raise OnnxEmbedderError(f"no writable folder for the ONNX export among {candidates}; set cache_dir")


def trace_to_onnx(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    output: str,
    name: str,
    sample: dict[str, Any],
    per_token: bool = True,
) -> None:
    """Trace a transformers model to ONNX (opset 17, dynamic batch and sequence axes) at `target`.

    `output` is the attribute of the model's output that becomes the graph's one output, called `name`
    (`last_hidden_state` for an embedder, `logits` for a cross-encoder, with `per_token=False`); `sample` is
    a tokenizer batch to trace with.
    """
    import torch

    model.eval()
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class _KeywordCall(torch.nn.Module):
        # transformers 5 models take use_cache etc. positionally: pass the inputs by name.
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(**dict(zip(input_names, tensors, strict=True))), output)

    dummy = tuple(sample[name].to(torch.int64) for name in input_names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    # The tracer warns about shape-dependent branches that are constant for an encoder (mask length == sequence).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _KeywordCall(),
            dummy,
            str(target),
            input_names=input_names,
            output_names=[name],
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )


def export_onnx(layout: ModelLayout, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """The embedder's transformer as ONNX with per-token outputs (`last_hidden_state`) at `target`."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(layout.transformer_dir), dtype=torch.float32, attn_implementation="eager")
    # Two rows of different lengths so the traced graph keeps the padding mask.
    sample = tokenizer(["a sentence of several words to embed", "short"], padding=True, return_tensors="pt")
    trace_to_onnx(model, tokenizer, target, "last_hidden_state", "token_embeddings", sample)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights keep cosine to fp32 >= 0.99 on real passages (per-tensor: ~0.92).
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs every tensor to the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def pool(token_embeddings: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """Sentence vectors from token vectors, as sentence-transformers' Pooling module computes them."""
    weights = mask[..., None].astype(np.float32)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    outputs: list[np.ndarray] = []
    for mode in modes:
        if mode in ("mean", "mean_sqrt_len_tokens"):
            summed = (token_embeddings * weights).sum(axis=1)
            outputs.append(summed / (counts if mode == "mean" else np.sqrt(counts)))
        elif mode == "max":
            outputs.append(np.where(weights > 0, token_embeddings, -np.inf).max(axis=1))
        elif mode == "cls":
            outputs.append(token_embeddings[np.arange(len(mask)), mask.argmax(axis=1)])
        elif mode == "lasttoken":
            last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
            outputs.append(token_embeddings[np.arange(len(mask)), last])
        elif mode == "weightedmean":
            positions = np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :] - mask.argmax(axis=1)[:, None]
            weighted = weights * positions[..., None]
            outputs.append((token_embeddings * weighted).sum(axis=1) / np.clip(weighted.sum(axis=1), 1e-9, None))
        else:
            raise OnnxEmbedderError(f"pooling mode {mode!r} is not supported by the ONNX backend; use backend='torch'")
    return np.concatenate(outputs, axis=-1).astype(np.float32)


class OnnxEmbedder:
    """Dense vectors from the configured sentence-transformers model, run by ONNX Runtime (fp32 or int8)."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self._session: ort.InferenceSession | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._counter: TokenCounter | None = None
        self._layout: ModelLayout | None = None
        self._max_tokens = 512
        self._dim = 0
        self._lock = threading.Lock()
        self.texts_embedded = 0  # chunks embedded since start; tests use it to prove skips
        self.exported = False  # True when this instance had to export (no cached model was found)
        self.model_path: Path | None = None

    def warm_up(self) -> None:
        """Load the tokenizer and the ONNX session, exporting the model first when no cached export exists."""
        with self._lock:
            if self._session is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import onnxruntime as ort
            from transformers import AutoTokenizer

            name = self.settings.resolved_model()
            model_dir = resolve_model_dir(name)
            layout = read_layout(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(str(layout.transformer_dir))
            path = export_path(self.settings, model_dir, local=Path(name).expanduser().is_dir())
            if not path.is_file():
                self._export(layout, tokenizer, path)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle workers would spin on the cores that chunking and upserts need between batches (2-core hosts).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            providers = ["CPUExecutionProvider"]
            if self.settings.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            session = ort.InferenceSession(str(path), options, providers=providers)
            limits = [layout.max_seq_length, tokenizer.model_max_length, _position_limit(layout.transformer_dir)]
            self._max_tokens = min(int(n) for n in limits if n and n < 1_000_000)
            tokenizer.model_max_length = self._max_tokens  # as sentence-transformers sets it
            self._tokenizer, self._layout, self._session, self.model_path = tokenizer, layout, session, path
            self._dim = int(self._run(["dimension probe"]).shape[1])
            log.info("embedder.load backend=onnx model=%s int8=%s path=%s", model_dir, self.settings.onnx_int8, path)

    def _export(self, layout: ModelLayout, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
        """Export (and quantize) into a scratch folder, then move it into place: readers never see half a file."""
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent.parent))
        try:
            log.info("embedder.onnx_export model=%s int8=%s", layout.transformer_dir, self.settings.onnx_int8)
            export_onnx(layout, tokenizer, scratch / "fp32.onnx")
            if self.settings.onnx_int8:
                quantize_int8(scratch / "fp32.onnx", scratch / "model.onnx")
                (scratch / "fp32.onnx").unlink()
            else:
                (scratch / "fp32.onnx").rename(scratch / "model.onnx")
            try:
                scratch.rename(path.parent)
                self.exported = True
            except OSError:
                if not path.is_file():  # another process did not win the race: a real failure
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _parts(self) -> tuple[ort.InferenceSession, PreTrainedTokenizerBase, ModelLayout]:
        if self._session is None:
            self.warm_up()
        assert self._session is not None and self._tokenizer is not None and self._layout is not None
        return self._session, self._tokenizer, self._layout

    @property
    def dim(self) -> int:
        self._parts()
        return self._dim

    @property
    def max_tokens(self) -> int:
        """Word pieces the model reads before truncating (chunks must fit)."""
        self._parts()
        return self._max_tokens

    def count_tokens(self, text: str) -> int:
        """Word pieces of `text` in the model's own tokenizer (no special tokens)."""
        if self._counter is None:
            self._counter = TokenCounter(self._parts()[1])
        return self._counter.count(text)

    def _run(self, texts: list[str]) -> np.ndarray:
        """Vectors in input order; texts are sorted by length into batches so little compute goes to padding."""
        session, tokenizer, layout = self._parts()
        if layout.do_lower_case:
            texts = [t.lower() for t in texts]
        encoded = tokenizer(texts, truncation=True, max_length=self._max_tokens, padding=False)
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        wanted = {i.name for i in session.get_inputs()}
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        pad_id = int(tokenizer.pad_token_id or 0)
        left = tokenizer.padding_side == "left"
        out: np.ndarray | None = None
        for start in range(0, len(order), max(1, self.settings.batch_size)):
            rows = order[start : start + self.settings.batch_size]
            width = max(len(ids[i]) for i in rows)
            batch_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
            batch_mask = np.zeros((len(rows), width), dtype=np.int64)
            batch_types = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(ids[i])
                cols = slice(width - n, width) if left else slice(0, n)
                batch_ids[r, cols], batch_mask[r, cols] = ids[i], 1
                if types is not None:
                    batch_types[r, cols] = types[i]
            feed = {"input_ids": batch_ids, "attention_mask": batch_mask, "token_type_ids": batch_types}
            (tokens,) = session.run(["token_embeddings"], {k: v for k, v in feed.items() if k in wanted})
            vectors = pool(np.asarray(tokens, dtype=np.float32), batch_mask, layout.pooling_modes)
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        if layout.normalize or self.settings.normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Normalised vectors for chunks, batched by the configured batch size."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._run(list(texts))
        self.texts_embedded += len(texts)
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """One normalised query vector."""
        return [float(x) for x in self._run([text])[0]]


def _position_limit(transformer_dir: Path) -> int | None:
    config_file = transformer_dir / "config.json"
    if not config_file.is_file():
        return None
    value = json.loads(config_file.read_text()).get("max_position_embeddings")
    return int(value) if value else None
