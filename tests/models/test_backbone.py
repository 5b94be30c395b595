"""angle_ray/models/backbone.py: encoders, causal LLMs (+LoRA), save/load, merge."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from angle_ray.config import LoraConfig, ModelConfig
from angle_ray.models import (
    ANGLE_RAY_FILE,
    build_model,
    encode,
    load_embedding_model,
    load_tokenizer,
)
from angle_ray.models.pooling import pool
from angle_ray.models.tiny_llm import make_tiny_llm


def _lora_b_weights(model):
    return {n: p for n, p in model.backbone.named_parameters() if "lora_B" in n}


def test_minilm_loads_offline_without_pooler_and_pads_right(minilm):
    assert minilm.embedding_dim == 384
    assert not any("pooler" in name for name, _ in minilm.backbone.named_parameters())
    assert minilm.tokenizer.padding_side == "right"
    batch = minilm.tokenize(["A man is playing a flute.", "Hi"])
    assert batch["attention_mask"][1].tolist()[0] == 1 and batch["attention_mask"][1].tolist()[-1] == 0


def test_tokenize_truncates_to_max_length(minilm):
    long_text = "word " * 500
    assert minilm.tokenize([long_text])["input_ids"].shape[1] == minilm.cfg.max_length
    assert minilm.tokenize([long_text], max_length=16)["input_ids"].shape[1] == 16


def test_first_last_avg_forward_pools_embedding_and_last_layer(sts_sentences):
    model = build_model(ModelConfig(pooling="first_last_avg"))
    batch = model.tokenize(sts_sentences[:4])
    with torch.inference_mode():
        got = model(**batch)
        out = model.backbone(**batch, output_hidden_states=True)
    expected = (
        (out.hidden_states[0] + out.hidden_states[-1]) / 2 * batch["attention_mask"][..., None]
    ).sum(1)
    expected = expected / batch["attention_mask"].sum(1, keepdim=True)
    assert torch.allclose(got, expected, atol=1e-5)


def test_decoders_pad_left_and_get_no_token_type_ids(tiny_llm_dir):
    model = build_model(ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last"))
    assert model.tokenizer.padding_side == "left"
    batch = model.tokenize(["A man is playing a large flute.", "Hi"])
    assert "token_type_ids" not in batch
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert type(model.backbone).__name__ == "Qwen2Model"  # the base model, no LM head
    emb = model(**batch)
    assert emb.shape == (2, 64) and torch.isfinite(emb).all()


def test_load_tokenizer_matches_the_models_tokenizer(tiny_llm_dir, minilm):
    cfg = ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last")
    tok = load_tokenizer(cfg)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert "token_type_ids" not in tok(["a b", "c"], padding=True)
    assert load_tokenizer(minilm.cfg)("a dog")["input_ids"] == minilm.tokenizer("a dog")["input_ids"]


def test_decoder_without_pad_token_pads_with_eos(tmp_path):
    path = make_tiny_llm(tmp_path / "tiny-llama", arch="llama")
    assert AutoTokenizer.from_pretrained(path).pad_token is None  # as shipped: no pad token
    model = build_model(ModelConfig(name_or_path=path, is_llm=True, pooling="last"))
    assert model.tokenizer.pad_token == model.tokenizer.eos_token
    batch = model.tokenize(["A dog runs.", "Hi"])
    assert batch["input_ids"][1, 0] == model.tokenizer.eos_token_id


def test_bf16_backbone_still_returns_fp32_embeddings(tiny_llm_dir):
    model = build_model(
        ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last", dtype="bf16")
    )
    # the weights load in fp32 (master weights; autocast runs bf16), see load_dtype
    assert next(model.backbone.parameters()).dtype == torch.float32
    model.backbone.to(torch.bfloat16)  # a backbone that holds bf16 weights (as a LoRA base does)
    assert model(**model.tokenize(["A plane is taking off."])).dtype == torch.float32


def test_gradient_checkpointing_with_lora_still_gives_gradients(tiny_llm_dir, positive_pairs):
    cfg = ModelConfig(
        name_or_path=tiny_llm_dir,
        is_llm=True,
        pooling="last",
        gradient_checkpointing=True,
        lora=LoraConfig(enabled=True, dropout=0.0),
    )
    model = build_model(cfg)
    assert model.backbone.get_base_model().is_activation_checkpointing
    model.train()
    u = model(**model.tokenize([a for a, _ in positive_pairs[:4]]))
    v = model(**model.tokenize([b for _, b in positive_pairs[:4]]))
    (1 - torch.nn.functional.cosine_similarity(u, v)).mean().backward()
    lora_b = _lora_b_weights(model)
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b.values())
    frozen = [p for n, p in model.backbone.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)


def test_lora_targets_peft_default_modules_when_none_given(trained_lora_llm):
    names = {n.split(".lora_B")[0].rsplit(".", 1)[-1] for n in _lora_b_weights(trained_lora_llm)}
    assert names == {"q_proj", "v_proj"}


def test_lora_round_trip_gives_identical_embeddings(trained_lora_llm, sts_sentences, tmp_path):
    lora_b = _lora_b_weights(trained_lora_llm)
    assert all(p.abs().sum() > 0 for p in lora_b.values())  # training moved the adapter
    before = encode(trained_lora_llm, sts_sentences, show_progress=False)
    trained_lora_llm.save(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        ANGLE_RAY_FILE,
        "tokenizer.json",
    } <= files
    assert "model.safetensors" not in files  # only the adapter, the base comes from the recorded path
    meta = json.loads((tmp_path / "ckpt" / ANGLE_RAY_FILE).read_text())
    assert (
        meta["model"]["lora"]["enabled"] and meta["base_model_path"] == trained_lora_llm.base_model_path
    )
    reloaded = load_embedding_model(tmp_path / "ckpt")
    assert reloaded.tokenizer.padding_side == "left"
    np.testing.assert_array_equal(encode(reloaded, sts_sentences, show_progress=False), before)


def test_merged_gives_same_embeddings_and_has_no_lora_modules(trained_lora_llm, sts_sentences):
    merged = trained_lora_llm.merged()
    assert merged is not trained_lora_llm and not merged.is_lora
    assert not any("lora" in n for n, _ in merged.backbone.named_modules())
    # the original keeps its adapter
    assert any("lora" in n for n, _ in trained_lora_llm.backbone.named_modules())
    a = encode(trained_lora_llm, sts_sentences, show_progress=False)
    b = encode(merged, sts_sentences, show_progress=False)
    assert np.abs(a - b).max() < 1e-5


def test_merged_without_lora_is_the_model_itself(minilm):
    assert minilm.merged() is minilm


def test_encoder_save_and_load_round_trip(minilm, sts_sentences, tmp_path):
    minilm.save(tmp_path / "enc")
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    assert not list((tmp_path / "enc").glob("*.bin"))
    reloaded = load_embedding_model(tmp_path / "enc")
    assert reloaded.cfg == minilm.cfg
    np.testing.assert_array_equal(
        encode(reloaded, sts_sentences, show_progress=False),
        encode(minilm, sts_sentences, show_progress=False),
    )


def test_load_with_dtype_override(minilm, tmp_path):
    minilm.save(tmp_path / "enc")
    reloaded = load_embedding_model(tmp_path / "enc", dtype="bf16")
    # the precision it runs in changes; the saved fp32 (master) weights load as they are
    assert reloaded.cfg.dtype == "bf16" and next(reloaded.parameters()).dtype == torch.float32


def test_a_bf16_trained_folder_loads_and_exports_its_fp32_weights(minilm, sts_sentences, tmp_path):
    """A bf16 run saves fp32 master weights: every way back to them keeps fp32 (the
    sentence-transformers export, the Embedder's fp32 default)."""
    from angle_ray.models.embedder import Embedder
    from angle_ray.models.export import export_sentence_transformers

    trained = copy.deepcopy(minilm)
    trained.cfg = trained.cfg.model_copy(update={"dtype": "bf16"})
    trained.save(tmp_path / "run")
    reloaded = load_embedding_model(tmp_path / "run")
    assert reloaded.cfg.dtype == "bf16"
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    st_dir = export_sentence_transformers(reloaded, tmp_path / "st")
    assert {t.dtype for t in load_file(st_dir / "model.safetensors").values()} == {torch.float32}
    embedder = Embedder.from_pretrained(str(tmp_path / "run"), device="cpu")
    assert embedder.dtype == "fp32"
    np.testing.assert_allclose(embedder.encode(sts_sentences),
                               encode(minilm, sts_sentences, normalize=True, show_progress=False), atol=1e-6)


def test_loading_a_folder_without_angle_ray_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=ANGLE_RAY_FILE):
        load_embedding_model(tmp_path)


def test_pool_is_what_forward_uses_for_mean(minilm, sts_sentences):
    batch = minilm.tokenize(sts_sentences[:3])
    with torch.inference_mode():
        hidden = minilm.backbone(**batch).last_hidden_state
        assert torch.equal(minilm(**batch), pool(hidden, batch["attention_mask"], "mean"))
