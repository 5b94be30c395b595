"""angle_ray/models/export.py: HF and sentence-transformers folders give angle-ray's embeddings."""

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from angle_ray.config import ModelConfig
from angle_ray.models import (
    build_model,
    encode,
    export_hf,
    export_sentence_transformers,
    load_embedding_model,
)


def test_hf_export_merges_lora_and_loads_with_automodel_and_angle_ray(
    trained_lora_llm, sts_sentences, tmp_path
):
    out = export_hf(trained_lora_llm, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    plain = AutoModel.from_pretrained(out)
    assert type(plain).__name__ == "Qwen2Model"
    assert not any("lora" in n for n, _ in plain.named_parameters())
    reloaded = load_embedding_model(out)
    assert not reloaded.is_lora and reloaded.tokenizer.padding_side == "left"
    a = encode(trained_lora_llm, sts_sentences, show_progress=False)
    assert np.abs(encode(reloaded, sts_sentences, show_progress=False) - a).max() < 1e-5


def test_st_export_of_minilm_mean_pooling_matches_encode(minilm, sts_sentences, tmp_path):
    out = export_sentence_transformers(minilm, tmp_path / "st")
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert (
        json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"]
        == minilm.cfg.max_length
    )
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == minilm.cfg.max_length
    got = st.encode(sts_sentences, convert_to_numpy=True)
    assert np.abs(got - encode(minilm, sts_sentences, show_progress=False)).max() < 1e-5


def test_st_export_with_normalize_matches_normalized_encode(minilm, sts_sentences, tmp_path):
    st = SentenceTransformer(
        str(export_sentence_transformers(minilm, tmp_path / "st", normalize=True)), device="cpu"
    )
    expected = encode(minilm, sts_sentences[:5], normalize=True, show_progress=False)
    assert np.abs(st.encode(sts_sentences[:5]) - expected).max() < 1e-5


def test_st_export_of_lora_llm_last_token_matches_encode(trained_lora_llm, sts_sentences, tmp_path):
    out = export_sentence_transformers(trained_lora_llm, tmp_path / "st-llm")
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    st = SentenceTransformer(str(out), device="cpu")
    assert st[0].tokenizer.padding_side == "left"
    got = st.encode(sts_sentences, convert_to_numpy=True)
    assert np.abs(got - encode(trained_lora_llm, sts_sentences, show_progress=False)).max() < 1e-5


@pytest.mark.parametrize("pooling", ["cls_avg", "first_last_avg"])
def test_st_export_of_unsupported_pooling_names_it_and_suggests_hf_export(pooling, tmp_path):
    model = build_model(ModelConfig(pooling=pooling))
    with pytest.raises(ValueError, match=f"{pooling}.*export_hf"):
        export_sentence_transformers(model, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_st_export_carries_the_models_prompts_and_normalisation(sts_sentences, tmp_path):
    usage = {"prompts": {"query": "query: {text}", "framed": "<{text}>"}, "default_prompt_name": "query",
             "normalize": True}
    model = build_model(ModelConfig(), usage=usage)
    out = export_sentence_transformers(model, tmp_path / "st")  # normalize: the model's (True)
    st_cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    # "<{text}>" is no prefix: sentence-transformers cannot apply it, so it is left out
    assert st_cfg["prompts"] == {"query": "query: "} and st_cfg["default_prompt_name"] == "query"
    assert (out / "2_Normalize").is_dir()
    st = SentenceTransformer(str(out), device="cpu")
    expected = encode(model, sts_sentences[:5], prompt="query: {text}", normalize=True,
                      show_progress=False)
    assert np.abs(st.encode(sts_sentences[:5]) - expected).max() < 1e-5  # the default prompt
