"""Per-layer embeddings equal what the model cut to that layer embeds (MiniLM; tiny Qwen2 with its
final norm, LoRA and BiLLM), and a cut model saves and reloads as such."""

import json

import pytest
import torch

from angle_ray.config import BillmConfig, LoraConfig, ModelConfig
from angle_ray.models.backbone import build_model, load_embedding_model
from angle_ray.models.billm import BILLM_CONFIG_KEY, decoder_layers
from angle_ray.models.tiny_llm import make_tiny_llm
from angle_ray.models.truncate import cut_to_layer, embed_at, pooled_layers, truncate_dims

TEXTS = ["A man is playing a flute.", "Rain", "A plane is taking off from the runway."]


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory) -> str:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-qwen2-4"), num_layers=4)


def _reload(folder):
    return load_embedding_model(folder).eval()  # the loader re-applies a recorded BiLLM


def _check_layers_equal_cuts(model, layers_to_cut, tmp_path):
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        layers = pooled_layers(model, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(layers[-1], model(**batch), atol=0, rtol=0)
        for layer in layers_to_cut:
            cut = cut_to_layer(model, layer).eval()
            torch.testing.assert_close(cut(**batch), layers[layer - 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                embed_at(model, batch["input_ids"], batch["attention_mask"], layer, dim=16),
                layers[layer - 1][:, :16], atol=0, rtol=0)
    cut.save(tmp_path / "cut")
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["num_hidden_layers"] == layers_to_cut[-1]
    with torch.no_grad():
        reloaded = _reload(tmp_path / "cut")
        torch.testing.assert_close(reloaded(**batch), layers[layers_to_cut[-1] - 1], atol=1e-5, rtol=1e-5)
    return layers


def test_minilm_layers_equal_the_cut_models(minilm_small, tmp_path):
    minilm_small.eval()
    layers = _check_layers_equal_cuts(minilm_small, [2], tmp_path)
    assert len(layers) == 6 and all(h.shape == (3, 384) for h in layers)
    assert sum(p.numel() for p in minilm_small.parameters()) > 0  # the original keeps its 6 layers
    assert minilm_small.backbone.config.num_hidden_layers == 6


def test_tiny_qwen_layers_pass_through_the_final_norm_like_the_cut_model(tiny4_dir, tmp_path):
    model = build_model(ModelConfig(name_or_path=tiny4_dir, is_llm=True, pooling="last")).eval()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        raw = model.backbone(**batch, output_hidden_states=True, use_cache=False).hidden_states
    layers = _check_layers_equal_cuts(model, [1, 3], tmp_path)
    raw_last_token = raw[3][:, -1]  # left padding: the last position is each text's last token
    assert (raw_last_token - layers[2]).abs().max() > 1e-2  # without the norm it would differ


def test_lora_billm_model_cut_merges_and_drops_billm_below_its_start(tiny4_dir, tmp_path):
    # mean pooling: every position counts, so the bidirectional layer 2 shows in a 3-layer cut
    cfg = ModelConfig(name_or_path=tiny4_dir, is_llm=True, pooling="mean",
                      lora=LoraConfig(enabled=True, r=4), billm=BillmConfig(enabled=True, start_layer=2))
    model = build_model(cfg)
    for name, param in model.backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    layers = _check_layers_equal_cuts(model, [3], tmp_path)  # merged; layer 2 stays bidirectional
    causal = load_embedding_model(tmp_path / "cut").eval()
    for layer in decoder_layers(causal.backbone):  # BiLLM undone: layer 2 made causal again
        layer._forward_pre_hooks.clear()
        layer.self_attn.is_causal = True
    with torch.no_grad():
        assert (causal(**causal.tokenize(TEXTS)) - layers[2]).abs().max() > 1e-3
    low = cut_to_layer(model, 2)
    assert not low.cfg.billm.enabled and not low.cfg.lora.enabled
    assert not hasattr(low.backbone.config, BILLM_CONFIG_KEY)
    assert model.cfg.billm.enabled and model.backbone.config.num_hidden_layers == 4


def test_bad_layer_and_dim_are_errors(minilm_small):
    batch = minilm_small.tokenize(TEXTS[:1])
    with pytest.raises(ValueError, match="layer=7 must be between 1 and the model's 6 layers"):
        embed_at(minilm_small, batch["input_ids"], batch["attention_mask"], layer=7)
    with pytest.raises(ValueError, match="layer=0"):
        cut_to_layer(minilm_small, 0)
    with pytest.raises(ValueError, match="dim=500 must be between 1 and the embedding size 384"):
        truncate_dims(torch.zeros(1, 384), 500)
