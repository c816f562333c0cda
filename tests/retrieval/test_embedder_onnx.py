"""The ONNX Runtime backend gives the torch model's vectors, exports once, and counts tokens the same way."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from retrieval.embedder import Embedder, make_embedder
from retrieval.embedder_onnx import OnnxEmbedder, pool
from retrieval.settings import EmbedderSettings
from tests.conftest import SAMPLE

QUESTIONS = [
    "How many vacation days do I get?",
    "meal allowance abroad",
    "report a lost laptop",
    "Wie viele Urlaubstage habe ich? Éléments naïfs, 日本語のテキスト",
]


def _texts(edge_cases: bool = True) -> list[str]:
    """Real passages of the sample corpus, short questions, one text longer than the model's window and (edge
    cases) a one-character text."""
    files = sorted(SAMPLE.iterdir())
    paragraphs = [p.strip() for f in files for p in re.split(r"\n\s*\n", f.read_text()) if len(p.strip()) > 30]
    whole = "\n\n".join(f.read_text() for f in files)
    return [*paragraphs, *QUESTIONS, *(["x"] if edge_cases else []), whole]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_fp32(cache_dir: Path) -> OnnxEmbedder:
    embedder = OnnxEmbedder(EmbedderSettings(backend="onnx", cache_dir=str(cache_dir)))
    embedder.warm_up()
    return embedder


def test_fp32_vectors_match_the_torch_model(embedder: Embedder, onnx_fp32: OnnxEmbedder) -> None:
    texts = _texts()
    assert len(texts) >= 20
    assert embedder.count_tokens(texts[-1]) > embedder.max_tokens  # truncation is exercised
    expected = embedder.embed_documents(texts)
    got = onnx_fp32.embed_documents(texts)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (expected * got).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(texts, cosines.round(4), strict=True))
    query = onnx_fp32.embed_query(QUESTIONS[0])
    assert float(np.dot(query, embedder.embed_query(QUESTIONS[0]))) >= 0.999
    assert onnx_fp32.texts_embedded == len(texts)  # queries are not counted as embedded chunks


def test_int8_vectors_stay_close(embedder: Embedder, cache_dir: Path) -> None:
    int8 = OnnxEmbedder(EmbedderSettings(backend="onnx", onnx_int8=True, cache_dir=str(cache_dir)))
    # Real text only: a one-token input such as "x" measured 0.979, dynamic int8 is least exact there.
    texts = _texts(edge_cases=False)
    cosines = (embedder.embed_documents(texts) * int8.embed_documents(texts)).sum(axis=1)
    assert cosines.min() >= 0.98, dict(zip(texts, cosines.round(4), strict=True))
    assert int8.model_path is not None and int8.model_path.parent.parent == cache_dir


def test_the_export_is_cached(onnx_fp32: OnnxEmbedder) -> None:
    assert onnx_fp32.exported and onnx_fp32.model_path is not None
    mtime = onnx_fp32.model_path.stat().st_mtime_ns
    again = OnnxEmbedder(onnx_fp32.settings)
    again.warm_up()
    assert not again.exported
    assert again.model_path == onnx_fp32.model_path
    assert again.model_path.stat().st_mtime_ns == mtime
    assert again.embed_query("salary bands") == onnx_fp32.embed_query("salary bands")


def test_token_counts_and_shape_match(embedder: Embedder, onnx_fp32: OnnxEmbedder) -> None:
    for text in _texts():
        assert onnx_fp32.count_tokens(text) == embedder.count_tokens(text)
    assert (onnx_fp32.dim, onnx_fp32.max_tokens) == (embedder.dim, embedder.max_tokens)
    assert onnx_fp32.embed_documents([]).shape == (0, embedder.dim)


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_pooling_follows_sentence_transformers(mode: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.int64)
    features = {"token_embeddings": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(mask)}
    expected = Pooling(4, pooling_mode=mode)(features)["sentence_embedding"].numpy()
    np.testing.assert_allclose(pool(tokens, mask, (mode,)), expected, rtol=1e-5, atol=1e-6)


def test_factory_picks_the_backend(onnx_fp32: OnnxEmbedder) -> None:
    assert isinstance(make_embedder(EmbedderSettings()), Embedder)
    assert isinstance(make_embedder(replace(onnx_fp32.settings)), OnnxEmbedder)
    with pytest.raises(ValueError, match="unknown embedder backend"):
        make_embedder(EmbedderSettings(backend="tensorflow"))
