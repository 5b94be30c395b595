"""Batched inference: texts -> float32 numpy embeddings, in input order; and ``Embedder``, the
Python API for a trained model.

    vecs = encode(model, ["A plane is taking off.", "A man plays a flute."], normalize=True)
    docs = encode(model, corpus, batch_size=256, prompt="passage: {text}", dtype="bf16")

    embedder = Embedder.from_pretrained("runs/quickstart/model")   # or any folder / HF name
    vecs = embedder.encode(["A plane is taking off.", "A man plays a flute."])
    embedder.similarity(vecs, embedder.encode(["An air plane is taking off."]))

``encode`` sorts texts longest first so each batch pads to similar lengths, then puts them back in
the caller's order. The model runs in eval mode (restored afterwards) under
``torch.no_grad`` on the device its parameters are on. ``Embedder`` adds loading (one
loader for angle-ray, sentence-transformers and plain HF folders), named prompts, Matryoshka
truncation and a cosine similarity matrix on top of ``encode``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.loader import load_model
from angle_ray.models.precision import autocast, notify_once, resolve_dtype
from angle_ray.models.truncate import embed_at

logger = logging.getLogger(__name__)

CONVERT_TO = ("numpy", "torch")


def apply_prompt(texts: list[str], prompt: str | None) -> list[str]:
    """Put every text into ``prompt``'s ``{text}`` slot (other braces are left alone)."""
    if prompt is None:
        return list(texts)
    if "{text}" not in prompt:
        raise ValueError(f"prompt {prompt!r} has no '{{text}}' slot")
    return [prompt.replace("{text}", t) for t in texts]


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches, longest texts first (similar lengths pad little).

    The sort is stable: texts of equal length keep their input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encode(
    model: EmbeddingModel,
    texts: list[str],
    batch_size: int = 64,
    prompt: str | None = None,
    normalize: bool = False,
    dtype: str = "fp32",
    show_progress: bool = True,
    desc: str = "encode",
    layer: int | None = None,
) -> np.ndarray:
    """Embed ``texts`` with ``model``; returns a float32 array of shape (len(texts), H).

    ``layer``: the embedding at that transformer layer (1..N; ESE), as the model cut there.
    ``dtype``: fp32, bf16 or fp16, run as autocast on the model's device; a precision the device
    has no native support for runs in fp32 (``precision.resolve_dtype``; one notice per process)."""
    run_dtype, notice = resolve_dtype(dtype, model.device)
    notify_once(notice)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = apply_prompt(list(texts), prompt)
    out = np.empty((len(texts), model.embedding_dim), dtype=np.float32)
    if not texts:
        return out
    device = model.device
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: the dev evaluation encodes mid-training, where ZeRO-3
        # gathers the parameters inside this forward; inference tensors made there could not be
        # used by the next backward pass
        with torch.no_grad():
            batches = tqdm(
                length_sorted_batches(texts, batch_size),
                total=-(-len(texts) // batch_size),
                desc=desc,
                disable=not show_progress,
                unit="batch",
            )
            for idx in batches:
                batch = model.tokenize([texts[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, run_dtype):
                    emb = (model(**batch) if layer is None else
                           embed_at(model, batch["input_ids"], batch["attention_mask"], layer=layer))
                emb = emb.float()
                if normalize:
                    emb = F.normalize(emb, p=2, dim=-1)
                out[idx] = emb.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)  # a zero vector stays zero (as F.normalize)


def _as_template(prompt: str) -> str:
    """A ``{text}`` template as is; a plain prefix (sentence-transformers style) -> prefix{text}."""
    return prompt if "{text}" in prompt else prompt + "{text}"


class Embedder:
    """A trained embedding model, ready to embed texts and compare them.

        from angle_ray import Embedder
        embedder = Embedder.from_pretrained("all-MiniLM-L6-v2")  # or a trained model's folder
        vecs = embedder.encode(["A man is playing a flute.", "A man plays the flute."])
        print(vecs.shape)                                          # (2, 384), unit length
        print(embedder.similarity(vecs, vecs))                     # 2 x 2 cosine matrix

    Wraps an ``EmbeddingModel``; use ``from_pretrained`` to load one from a folder or name.
    """

    def __init__(self, model: EmbeddingModel, dtype: str = "fp32") -> None:
        self.model = model.eval()
        self.dtype, notice = resolve_dtype(dtype, model.device)
        notify_once(notice)

    @classmethod
    def from_pretrained(
        cls, path_or_name: str, device: str | torch.device | None = None, dtype: str | None = None
    ) -> Embedder:
        """Load an angle-ray folder, a sentence-transformers folder (its pooling, normalisation
        and prompts) or a Hugging Face folder / name (mean pooling).

            embedder = Embedder.from_pretrained("runs/quickstart/model")
            embedder = Embedder.from_pretrained("runs/quickstart/model-sentence-transformers")
            embedder = Embedder.from_pretrained("all-MiniLM-L6-v2", device="cuda", dtype="bf16")
            embedder.prompts                 # {"query": "query: {text}", ...}
            embedder.embedding_dim           # 384

        ``device``: default ``cuda`` when available, else ``cpu``. ``dtype``: ``fp32`` or
        ``bf16`` (``fp16`` on CUDA), run as autocast over the saved weights; a precision the
        device cannot run natively falls back to fp32 with a warning. Default: fp32.
        A missing or unloadable model raises ``ModelLoadError`` naming the path.
        """
        model = load_model(path_or_name)
        target = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        return cls(model.to(target), dtype=dtype or "fp32")

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def prompts(self) -> dict[str, str]:
        """The model's saved prompts: name -> template with a ``{text}`` slot."""
        return dict(self.model.prompts)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        return (f"Embedder({self.model.base_model_path!r}, pooling={self.model.cfg.pooling!r}, "
                f"dim={self.embedding_dim}, device={self.device}, dtype={self.dtype!r})")

    def _template(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt to apply: given text, a saved prompt by name, else the model's default."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("give either prompt or prompt_name, not both")
        if prompt is not None:
            return _as_template(prompt)
        name = prompt_name if prompt_name is not None else self.model.default_prompt_name
        if name is None:
            return None
        if name not in self.model.prompts:
            known = ", ".join(sorted(self.model.prompts)) or "none"
            raise ValueError(f"unknown prompt_name {name!r}; this model's prompts: {known}")
        return _as_template(self.model.prompts[name])

    def encode(
        self,
        texts: str | Sequence[str],
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        truncate_dim: int | None = None,
        progress: bool = False,
        convert_to: str = "numpy",
        layer: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed ``texts``: a list gives a float32 [N, D] array, a single string a [D] vector.

            vecs = embedder.encode(["how do planes fly?"], prompt_name="query")
            vecs = embedder.encode(docs, prompt="passage: ")      # a prefix or a {text} template
            vecs = embedder.encode(docs, truncate_dim=128)        # Matryoshka prefix, unit length
            vecs = embedder.encode(docs, layer=4, truncate_dim=128)   # ESE: layer 4, 128 dims
            one = embedder.encode("A man plays a flute.")         # shape (D,)
            t = embedder.encode(docs, convert_to="torch")         # a CPU torch.Tensor

        ``prompt_name`` picks one of ``self.prompts``; with neither prompt nor prompt_name the
        model's default prompt (if it has one) is applied. ``truncate_dim`` keeps the first D
        dimensions, re-normalised when ``normalize``. ``layer`` embeds with the first ``layer``
        transformer layers only (what ``cut_to_layer`` keeps; for ESE-trained models).
        """
        if convert_to not in CONVERT_TO:
            raise ValueError(f"convert_to={convert_to!r} is not one of {', '.join(CONVERT_TO)}")
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if truncate_dim is not None and not 1 <= truncate_dim <= self.embedding_dim:
            raise ValueError(f"truncate_dim={truncate_dim} is outside 1..{self.embedding_dim}")
        vectors = encode(self.model, batch, batch_size=batch_size,
                         prompt=self._template(prompt, prompt_name), normalize=False,
                         dtype=self.dtype, show_progress=progress, desc="embed", layer=layer)
        if truncate_dim is not None:
            vectors = np.ascontiguousarray(vectors[:, :truncate_dim])
        if normalize:
            vectors = _unit_rows(vectors)  # after truncation, so a prefix is unit length too
        if single:
            vectors = vectors[0]
        return torch.from_numpy(vectors) if convert_to == "torch" else vectors

    def similarity(self, a, b) -> np.ndarray:
        """Cosine similarity matrix [len(a), len(b)] of two sets of embeddings or texts.

            embedder.similarity(["A plane takes off."], ["An air plane is taking off.", "A cat."])
            embedder.similarity(query_vecs, doc_vecs)    # numpy or torch, [N, D] or one [D] vector

        Texts are embedded with ``encode`` (default prompt, full dimension); a single string or
        vector counts as one row.
        """
        return _unit_rows(self._rows(a)) @ _unit_rows(self._rows(b)).T

    def _rows(self, items) -> np.ndarray:
        if isinstance(items, str) or (
            isinstance(items, (list, tuple)) and items and all(isinstance(t, str) for t in items)
        ):
            items = self.encode([items] if isinstance(items, str) else list(items))
        if isinstance(items, torch.Tensor):
            items = items.detach().float().cpu().numpy()
        rows = np.asarray(items, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2:
            raise ValueError(f"similarity takes texts or [N, D] / [D] embeddings, got shape {rows.shape}")
        return rows
