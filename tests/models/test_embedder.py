"""angle_ray/models/embedder.py: batched encode matches sentence-transformers and keeps order."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from angle_ray.models import encode, resolve_model_path


def test_minilm_encode_matches_sentence_transformers(minilm, sts_sentences):
    # the package's own sentence-transformers folder: Transformer + mean Pooling + Normalize
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    expected = st.encode(sts_sentences, convert_to_numpy=True)
    got = encode(minilm, sts_sentences, batch_size=8, normalize=True, show_progress=False)
    assert got.dtype == np.float32 and got.shape == (len(sts_sentences), 384)
    assert np.abs(got - expected).max() < 1e-5


def test_encode_restores_input_order_after_length_sorting(minilm, sts_sentences):
    texts = sts_sentences[:9]
    assert sorted(texts, key=len) != texts  # the sort really reorders
    batched = encode(minilm, texts, batch_size=4, show_progress=False)
    one_by_one = np.stack([encode(minilm, [t], show_progress=False)[0] for t in texts])
    assert np.abs(batched - one_by_one).max() < 1e-5
    reversed_ = encode(minilm, texts[::-1], batch_size=4, show_progress=False)[::-1]
    assert np.abs(batched - reversed_).max() < 1e-5


def test_prompt_is_applied_to_every_text(minilm, sts_sentences):
    texts = sts_sentences[:3]
    with_prompt = encode(minilm, texts, prompt="query: {text}", show_progress=False)
    by_hand = encode(minilm, [f"query: {t}" for t in texts], show_progress=False)
    np.testing.assert_array_equal(with_prompt, by_hand)


def test_prompt_without_slot_is_rejected(minilm):
    with pytest.raises(ValueError, match="text"):
        encode(minilm, ["a"], prompt="query: ", show_progress=False)


def test_empty_list_gives_an_empty_matrix(minilm):
    out = encode(minilm, [], show_progress=False)
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_normalize_gives_unit_vectors(minilm, sts_sentences):
    out = encode(minilm, sts_sentences[:5], normalize=True, show_progress=False)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_bf16_autocast_is_close_to_fp32_and_returns_float32(minilm, sts_sentences):
    fp32 = encode(minilm, sts_sentences[:6], normalize=True, show_progress=False)
    bf16 = encode(minilm, sts_sentences[:6], normalize=True, dtype="bf16", show_progress=False)
    assert bf16.dtype == np.float32
    assert (fp32 * bf16).sum(axis=1).min() > 0.99


def test_encode_leaves_training_mode_as_it_found_it(minilm):
    minilm.train()
    encode(minilm, ["a dog"], show_progress=False)
    assert minilm.training
    minilm.eval()
