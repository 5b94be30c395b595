"""Inference on a cut model (ESE): Embedder's `layer=` equals the model cut to that layer, and
`set_output_dim` keeps a prefix of the embedding for code that takes a model, and is not saved."""

import numpy as np
import pytest
import torch

from angle_ray.models.embedder import Embedder, encode
from angle_ray.models.truncate import cut_to_layer

TEXTS = ["A man is playing a flute.", "Rain", "A plane is taking off from the runway."]


def test_embedder_layer_equals_the_cut_model_and_truncate_dim_its_prefix(minilm):
    embedder = Embedder(minilm)
    cut = cut_to_layer(minilm, 3)
    want = encode(cut, TEXTS, show_progress=False)
    got = embedder.encode(TEXTS, layer=3, normalize=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    short = embedder.encode(TEXTS, layer=3, truncate_dim=64)
    np.testing.assert_allclose(short, want[:, :64] / np.linalg.norm(want[:, :64], axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(TEXTS, layer=6, normalize=False),
                               embedder.encode(TEXTS, normalize=False), rtol=0, atol=0)
    assert np.abs(got - embedder.encode(TEXTS, normalize=False)).max() > 1e-2  # layer 3 is not 6
    with pytest.raises(ValueError, match="layer=7 must be between 1 and the model's 6 layers"):
        embedder.encode(TEXTS, layer=7)


def test_output_dim_keeps_a_prefix_and_a_model_cut_so_is_not_saved(minilm, tmp_path):
    cut = cut_to_layer(minilm, 2)  # a copy: the session's model stays whole
    full = encode(cut, TEXTS, show_progress=False)
    cut.set_output_dim(64)
    assert cut.embedding_dim == 64 and cut.full_dim == 384
    batch = cut.tokenize(TEXTS)
    with torch.no_grad():
        assert cut(**batch).shape == (3, 64)
    np.testing.assert_allclose(encode(cut, TEXTS, show_progress=False), full[:, :64], rtol=0, atol=0)
    with pytest.raises(ValueError, match="first 64 dimensions .* cannot record"):
        cut.save(tmp_path / "m")
    with pytest.raises(ValueError, match="dim=385 must be between 1 and the embedding size 384"):
        cut.set_output_dim(385)
    assert cut.set_output_dim(None).embedding_dim == 384
