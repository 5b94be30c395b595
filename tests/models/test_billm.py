"""BiLLM on a random-init 4-layer Qwen2: later tokens reach earlier ones only from the start layer
on, padding stays masked, the bidirectional layers equal transformers' own bidirectional mask, and
the setting survives save/reload, LoRA adapters and the merged export; build_model / the loader
apply it, and the sentence-transformers export refuses a BiLLM model."""

import json

import pytest
import torch
from transformers import AutoModel

from angle_ray.config import BillmConfig, ConfigError, LoraConfig, ModelConfig, config_from_dict
from angle_ray.models.backbone import build_model, load_embedding_model
from angle_ray.models.billm import (
    BILLM_CONFIG_KEY,
    apply_billm,
    billm_start_layer,
    configure_billm,
    decoder_layers,
)
from angle_ray.models.export import export_hf, export_sentence_transformers
from angle_ray.models.tiny_llm import make_tiny_llm

START = 2  # layers 0, 1 causal; 2, 3 bidirectional
IDS = torch.tensor([[65, 605, 450, 885, 283, 420, 883]])


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory) -> str:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-qwen2-4"), num_layers=4)


def _load(path: str, attn: str = "sdpa"):
    return AutoModel.from_pretrained(path, attn_implementation=attn).eval()


@torch.no_grad()
def _hidden_states(model, ids, mask=None):
    mask = torch.ones_like(ids) if mask is None else mask
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states  # [embeddings, after layer 0, ..., after layer 3 (final norm)]


def _earlier_token_change(model) -> list[float]:
    """Per hidden state: how much positions 0..T-2 move when only the LAST token changes."""
    changed = IDS.clone()
    changed[0, -1] = 100
    before, after = _hidden_states(model, IDS), _hidden_states(model, changed)
    return [(a[0, :-1] - b[0, :-1]).abs().max().item() for a, b in zip(before, after)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_later_token_reaches_earlier_tokens_only_from_the_start_layer(tiny4_dir, attn):
    model = _load(tiny4_dir, attn)
    assert max(_earlier_token_change(model)) == 0.0  # causal: the future is invisible everywhere
    apply_billm(model, START)
    change = _earlier_token_change(model)
    # hidden_states[l] is the output of layer l - 1: layers 0 and 1 are still causal
    assert change[: START + 1] == [0.0] * (START + 1)
    assert all(c > 1e-3 for c in change[START + 1 :]), change


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_stays_masked(tiny4_dir, attn):
    model = apply_billm(_load(tiny4_dir, attn), START)
    alone = _hidden_states(model, IDS)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), IDS], dim=1)  # left padding
    other = torch.arange(1, padded.shape[1] + 1)[None]
    mask = torch.tensor([[0, 0, 0] + [1] * IDS.shape[1], [1] * padded.shape[1]])
    batched = _hidden_states(model, torch.cat([padded, other]), mask)
    for a, b in zip(alone, batched):  # real tokens see the same keys; RoPE is shift-invariant
        torch.testing.assert_close(b[0, 3:], a[0], atol=1e-4, rtol=1e-4)


def test_start_zero_equals_transformers_bidirectional_mask(tiny4_dir):
    ours = apply_billm(_load(tiny4_dir), 0)
    reference = _load(tiny4_dir)
    reference.config.is_causal = False  # transformers' whole-model switch to a bidirectional mask
    ids = torch.tensor([[0, 0, 65, 605, 450, 885, 283], [1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[0, 2:], want[0, 2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)


def test_saved_hf_folder_records_and_reapplies_it(tiny4_dir, tmp_path):
    model = apply_billm(_load(tiny4_dir), START)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[BILLM_CONFIG_KEY] == START
    reloaded = _load(str(tmp_path))
    assert billm_start_layer(reloaded) == START
    plain_cfg = ModelConfig(name_or_path=str(tmp_path), is_llm=True, pooling="last")
    assert configure_billm(reloaded, plain_cfg) == START  # from the HF config's record
    for a, b in zip(_hidden_states(model, IDS), _hidden_states(reloaded, IDS)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert configure_billm(_load(tiny4_dir), plain_cfg.model_copy(update={"name_or_path": tiny4_dir})) is None


def _lora_billm_model(path: str):
    cfg = ModelConfig(name_or_path=path, is_llm=True, pooling="last",
                      lora=LoraConfig(enabled=True, r=4, alpha=8),
                      billm=BillmConfig(enabled=True, start_layer=START))
    model = build_model(cfg)  # _assemble applies model.billm
    gen = torch.Generator().manual_seed(0)
    for name, param in model.backbone.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, not PEFT's zero init
            param.data.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model.eval()


@torch.no_grad()
def _embed(model, texts):
    return model(**model.tokenize(texts))


def test_lora_save_load_and_merged_export_keep_it(tiny4_dir, tmp_path):
    model = _lora_billm_model(tiny4_dir)
    texts = ["A man is playing a flute.", "Rain", "A plane is taking off from the runway."]
    want = _embed(model, texts)

    model.save(tmp_path / "lora")
    loaded = load_embedding_model(tmp_path / "lora")
    assert loaded.cfg.billm == model.cfg.billm  # angle_ray.json carries model.billm
    assert billm_start_layer(loaded.backbone) == START  # and the loader re-applies it
    torch.testing.assert_close(_embed(loaded.eval(), texts), want, atol=1e-5, rtol=1e-5)
    causal = load_embedding_model(tmp_path / "lora")
    for layer in decoder_layers(causal.backbone):  # undo it: the adapter alone differs
        layer._forward_pre_hooks.clear()
        layer.self_attn.is_causal = True
    assert (_embed(causal.eval(), texts) - want).abs().max() > 1e-3

    torch.testing.assert_close(_embed(model.merged().eval(), texts), want, atol=1e-5, rtol=1e-5)
    export_hf(model, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())[BILLM_CONFIG_KEY] == START
    exported = load_embedding_model(tmp_path / "merged")
    assert not exported.cfg.lora.enabled and exported.cfg.billm.enabled
    torch.testing.assert_close(_embed(exported.eval(), texts), want, atol=1e-5, rtol=1e-5)


def test_bad_start_layers_and_encoders_are_refused(tiny4_dir, minilm_small):
    with pytest.raises(ValueError, match="start_layer=4, but the model has 4 layers"):
        apply_billm(_load(tiny4_dir), 4)
    model = apply_billm(_load(tiny4_dir), START)
    apply_billm(model, START)  # same start again: no-op
    assert sum(len(layer._forward_pre_hooks) for layer in decoder_layers(model)) == 4 - START
    with pytest.raises(ValueError, match="already applied from layer 2"):
        apply_billm(model, 1)
    with pytest.raises(ValueError, match="no decoder layer stack"):
        apply_billm(minilm_small.backbone, 0)


def test_config_requires_an_llm():
    with pytest.raises(ConfigError, match="model.billm.enabled needs model.is_llm=true"):
        config_from_dict({"model": {"billm": {"enabled": True, "start_layer": 1}}})
    with pytest.raises(ConfigError, match="start_layer"):
        config_from_dict({"model": {"is_llm": True, "pooling": "last",
                                    "billm": {"enabled": True, "start_layer": -1}}})


def test_build_model_applies_it_and_a_saved_model_reloads_with_it(tiny4_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny4_dir, is_llm=True, pooling="mean",
                      billm=BillmConfig(enabled=True, start_layer=1))
    model = build_model(cfg).eval()
    assert billm_start_layer(model.backbone) == 1
    assert sum(len(layer._forward_pre_hooks) for layer in decoder_layers(model.backbone)) == 3
    texts = ["A man is playing a flute.", "Rain", "A plane is taking off from the runway."]
    want = _embed(model, texts)
    causal = build_model(cfg.model_copy(update={"billm": BillmConfig()})).eval()
    assert (_embed(causal, texts) - want).abs().max() > 1e-3  # same weights, causal: differs
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "angle_ray.json").read_text())["model"]["billm"] == {
        "enabled": True, "start_layer": 1}
    assert json.loads((tmp_path / "saved" / "config.json").read_text())[BILLM_CONFIG_KEY] == 1
    reloaded = load_embedding_model(tmp_path / "saved").eval()
    assert reloaded.cfg.billm == cfg.billm and billm_start_layer(reloaded.backbone) == 1
    torch.testing.assert_close(_embed(reloaded, texts), want, atol=1e-6, rtol=1e-6)
    # a plain HF model config without model.billm: the config.json record re-applies it
    plain = build_model(ModelConfig(name_or_path=str(tmp_path / "saved"), is_llm=True,
                                    pooling="mean")).eval()
    torch.testing.assert_close(_embed(plain, texts), want, atol=1e-6, rtol=1e-6)


def test_sentence_transformers_export_refuses_billm(tiny4_dir, tmp_path):
    model = build_model(ModelConfig(name_or_path=tiny4_dir, is_llm=True, pooling="last",
                                    billm=BillmConfig(enabled=True, start_layer=START)))
    with pytest.raises(ValueError, match="BiLLM .*from layer 2.*sentence-transformers would load it"):
        export_sentence_transformers(model, tmp_path / "st")
    assert not (tmp_path / "st").exists()
