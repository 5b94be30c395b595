"""angle_ray/models/embedder.py: batched encode matches sentence-transformers and keeps order;
the Embedder API (loading, prompts, truncation, similarity)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from angle_ray import Embedder
from angle_ray.config import ModelConfig
from angle_ray.models import build_model, encode, resolve_model_path
from angle_ray.models.loader import ModelLoadError
from angle_ray.models.precision import cpu_supports_bf16


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


# --- Embedder: the Python API -------------------------------------------------------------

PROMPTS = {"query": "query: {text}", "passage": "passage: {text}"}


@pytest.fixture(scope="module")
def embedder():
    return Embedder.from_pretrained("all-MiniLM-L6-v2", device="cpu")


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory) -> str:
    """An angle-ray folder of MiniLM saved with two prompts, the first one the default."""
    model = build_model(ModelConfig(), usage={"prompts": PROMPTS, "default_prompt_name": "query",
                                              "normalize": True})
    return str(model.save(tmp_path_factory.mktemp("prompted")))


def test_package_exports_embedder_without_importing_torch_up_front():
    code = ("import sys, angle_ray; assert 'torch' not in sys.modules; "
            "from angle_ray import Embedder; assert 'torch' in sys.modules; print(Embedder.__name__)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Embedder"


def test_embedder_matches_sentence_transformers_on_its_own_folder(embedder, sts_sentences):
    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    expected = st.encode(sts_sentences, convert_to_numpy=True)
    got = embedder.encode(sts_sentences, batch_size=8)
    assert got.dtype == np.float32 and got.shape == (len(sts_sentences), 384)
    assert np.abs(got - expected).max() < 1e-5


def test_single_string_gives_one_vector_equal_to_its_row(embedder, sts_sentences):
    one = embedder.encode(sts_sentences[3])
    assert one.shape == (384,)
    np.testing.assert_allclose(one, embedder.encode(sts_sentences[:5])[3], atol=1e-6)


def test_normalize_false_gives_the_raw_pooled_vectors(embedder, minilm, sts_sentences):
    raw = embedder.encode(sts_sentences[:4], normalize=False)
    np.testing.assert_allclose(raw, encode(minilm, sts_sentences[:4], show_progress=False), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_truncate_dim_renormalises_the_prefix(embedder, sts_sentences):
    raw = embedder.encode(sts_sentences[:5], normalize=False)
    cut = embedder.encode(sts_sentences[:5], truncate_dim=64)
    by_hand = raw[:, :64] / np.linalg.norm(raw[:, :64], axis=1, keepdims=True)
    assert cut.shape == (5, 64)
    np.testing.assert_allclose(cut, by_hand, atol=1e-6)
    np.testing.assert_allclose(embedder.encode(sts_sentences[:5], normalize=False, truncate_dim=64),
                               raw[:, :64], atol=1e-6)


@pytest.mark.parametrize("dim", [0, 385])
def test_truncate_dim_outside_the_embedding_is_rejected(embedder, dim):
    with pytest.raises(ValueError, match=f"truncate_dim={dim} is outside 1..384"):
        embedder.encode(["a"], truncate_dim=dim)


def test_convert_to_torch_gives_the_same_values(embedder, sts_sentences):
    as_torch = embedder.encode(sts_sentences[:3], convert_to="torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    np.testing.assert_array_equal(as_torch.numpy(), embedder.encode(sts_sentences[:3]))
    with pytest.raises(ValueError, match="convert_to='list'"):
        embedder.encode(["a"], convert_to="list")


def test_prompt_accepts_a_template_or_a_sentence_transformers_prefix(embedder, sts_sentences):
    texts = sts_sentences[:3]
    by_hand = embedder.encode([f"query: {t}" for t in texts])
    np.testing.assert_allclose(embedder.encode(texts, prompt="query: {text}"), by_hand, atol=1e-6)
    np.testing.assert_allclose(embedder.encode(texts, prompt="query: "), by_hand, atol=1e-6)


def test_prompt_name_uses_the_saved_prompt_and_the_default_applies_unnamed(prompted_dir, sts_sentences):
    prompted = Embedder.from_pretrained(prompted_dir, device="cpu")
    assert prompted.prompts == PROMPTS
    texts = sts_sentences[:3]
    passage = prompted.encode(texts, prompt_name="passage")
    np.testing.assert_allclose(passage, prompted.encode([f"passage: {t}" for t in texts], prompt=""),
                               atol=1e-6)
    # no prompt given: the default ("query") is applied, as sentence-transformers does
    np.testing.assert_allclose(prompted.encode(texts), prompted.encode(texts, prompt_name="query"),
                               atol=1e-6)
    assert np.abs(prompted.encode(texts) - passage).max() > 1e-3


def test_unknown_prompt_name_lists_the_known_ones(prompted_dir, embedder):
    prompted = Embedder.from_pretrained(prompted_dir, device="cpu")
    with pytest.raises(ValueError, match=r"unknown prompt_name 'doc'; this model's prompts: passage, query"):
        prompted.encode(["a"], prompt_name="doc")
    with pytest.raises(ValueError, match="prompts: none"):
        embedder.encode(["a"], prompt_name="query")
    with pytest.raises(ValueError, match="either prompt or prompt_name"):
        prompted.encode(["a"], prompt="q: ", prompt_name="query")


def test_similarity_is_the_cosine_matrix_of_texts_or_vectors(embedder, sts_sentences):
    a, b = sts_sentences[:2], sts_sentences[2:5]
    va, vb = embedder.encode(a, normalize=False), embedder.encode(b, normalize=False)
    by_hand = np.array([[x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for y in vb] for x in va])
    assert embedder.similarity(va, vb).shape == (2, 3)
    np.testing.assert_allclose(embedder.similarity(va, vb), by_hand, atol=1e-5)
    np.testing.assert_allclose(embedder.similarity(a, b), by_hand, atol=1e-5)
    np.testing.assert_allclose(embedder.similarity(torch.from_numpy(va), vb), by_hand, atol=1e-5)
    np.testing.assert_allclose(embedder.similarity(a[0], vb[1]), by_hand[:1, 1:2], atol=1e-5)


def test_bf16_runs_only_where_the_cpu_supports_it(sts_sentences):
    bf16 = Embedder.from_pretrained("all-MiniLM-L6-v2", device="cpu", dtype="bf16")
    assert bf16.dtype == ("bf16" if cpu_supports_bf16() else "fp32")
    fp32 = Embedder.from_pretrained("all-MiniLM-L6-v2", device="cpu")
    cos = (bf16.encode(sts_sentences[:4]) * fp32.encode(sts_sentences[:4])).sum(axis=1)
    assert cos.min() > 0.99


def test_missing_model_folder_is_a_model_load_error_naming_it(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")):
        Embedder.from_pretrained(str(tmp_path / "nope"))
