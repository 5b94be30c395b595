"""angle_ray/models/loader.py: one loader for angle-ray, sentence-transformers and plain HF models."""

import json
import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from angle_ray.config import ModelConfig
from angle_ray.models import build_model, encode, export_sentence_transformers
from angle_ray.models.backbone import ANGLE_RAY_FILE
from angle_ray.models.default_model import packaged_model_dir
from angle_ray.models.loader import ST_MODULES_FILE, ModelLoadError, load_model

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def st_cls_dir(tmp_path_factory):
    """A folder written by sentence-transformers itself: MiniLM, CLS pooling, Normalize, 64 tokens,
    two prompts with `query` the default."""
    transformer = Transformer(str(packaged_model_dir()), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(384, pooling_mode="cls"), Normalize()], device="cpu",
        prompts=PROMPTS, default_prompt_name="query")
    out = tmp_path_factory.mktemp("st-cls") / "model"
    model.save(str(out))
    return out


@pytest.fixture(scope="module")
def long_and_short(sts_sentences) -> list[str]:
    # a text over 64 tokens checks that the folder's max length is the one applied
    return [*sts_sentences[:6], " ".join(sts_sentences)]


def test_angle_ray_folder_round_trip_gives_identical_embeddings_and_usage(sts_sentences, tmp_path):
    model = build_model(ModelConfig(pooling="cls", max_length=48),
                        usage={"prompts": {"query": "Represent this question: {text}"},
                               "default_prompt_name": "query", "normalize": True})
    model.save(tmp_path / "ckpt")
    reloaded = load_model(tmp_path / "ckpt")
    assert reloaded.cfg == model.cfg
    assert reloaded.prompts == {"query": "Represent this question: {text}"}
    assert reloaded.default_prompt_name == "query" and reloaded.normalize is True
    np.testing.assert_array_equal(encode(reloaded, sts_sentences, show_progress=False),
                                  encode(model, sts_sentences, show_progress=False))
    capped = load_model(str(tmp_path / "ckpt"), max_length=8, pooling="cls")  # same pooling: fine
    assert capped.cfg.max_length == 8 and capped.cfg.pooling == "cls"


def test_sentence_transformers_folder_keeps_its_pooling_normalisation_length_and_prompts(
        st_cls_dir, long_and_short):
    model = load_model(st_cls_dir)
    assert (model.cfg.pooling, model.cfg.max_length, model.normalize) == ("cls", 64, True)
    assert model.prompts["query"] == "query: {text}" and model.prompts["passage"] == "passage: {text}"
    assert model.default_prompt_name == "query"
    st = SentenceTransformer(str(st_cls_dir), device="cpu")
    for name in ("query", "passage"):
        ours = encode(model, long_and_short, prompt=model.prompts[name], normalize=model.normalize,
                      show_progress=False)
        theirs = st.encode(long_and_short, prompt_name=name, convert_to_numpy=True)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # CLS pooling really is in use: mean pooling of the same weights gives other vectors
    mean = load_model(st_cls_dir, pooling="mean")
    assert mean.cfg.pooling == "mean"
    assert np.abs(encode(mean, long_and_short[:2], normalize=True, show_progress=False)
                  - encode(model, long_and_short[:2], normalize=True, show_progress=False)).max() > 0.05


def test_exported_sentence_transformers_folder_loads_through_its_own_files(
        minilm, sts_sentences, tmp_path):
    model = build_model(ModelConfig(max_length=40), usage={"prompts": {"query": "query: {text}"}})
    out = export_sentence_transformers(model, tmp_path / "st", normalize=True)
    (out / ANGLE_RAY_FILE).unlink()  # read it as any sentence-transformers folder
    loaded = load_model(out)
    assert (loaded.cfg.pooling, loaded.cfg.max_length, loaded.normalize) == ("mean", 40, True)
    assert loaded.prompts == {"query": "query: {text}"}
    theirs = SentenceTransformer(str(out), device="cpu").encode(sts_sentences, prompt_name="query")
    ours = encode(loaded, sts_sentences, prompt=loaded.prompts["query"], normalize=True,
                  show_progress=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_default_name_is_the_packaged_sentence_transformers_folder_and_base_wins_over_it():
    own = load_model("all-MiniLM-L6-v2")  # packaged folder: mean pooling, Normalize, 256 tokens
    assert (own.cfg.pooling, own.cfg.max_length, own.normalize) == ("mean", 256, True)
    job = ModelConfig(pooling="cls", max_length=32)
    as_trained = load_model("all-MiniLM-L6-v2", base=job)  # the encoder pool: as the job trains
    assert (as_trained.cfg.pooling, as_trained.cfg.max_length) == ("cls", 32)
    assert load_model("all-MiniLM-L6-v2", base=job, max_length=16).cfg.max_length == 16


def test_a_plain_hf_folder_gets_mean_pooling_or_last_for_an_llm(tmp_path, tiny_llm_dir):
    plain = tmp_path / "plain"
    shutil.copytree(packaged_model_dir(), plain)
    for name in (ST_MODULES_FILE, "sentence_bert_config.json", "config_sentence_transformers.json"):
        (plain / name).unlink()
    model = load_model(plain)
    assert (model.cfg.pooling, model.cfg.max_length, model.normalize, model.prompts) == (
        "mean", 128, False, {})
    llm = load_model(tiny_llm_dir, is_llm=True)
    assert llm.cfg.is_llm and llm.cfg.pooling == "last" and llm.tokenizer.padding_side == "left"


@pytest.mark.parametrize("ref", ["/no/such/model-dir", "./runs/nothing/model"])
def test_a_missing_path_names_the_path_and_what_was_looked_for(ref):
    with pytest.raises(ModelLoadError, match=rf"{ref}: no such model folder.*{ANGLE_RAY_FILE}"):
        load_model(ref)


def test_an_unknown_name_and_an_empty_folder_are_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model-anywhere: not a model folder here"):
        load_model("no-such-model-anywhere")
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*holds no model"):
        load_model(tmp_path)


def test_a_pooling_that_contradicts_the_saved_one_is_a_model_load_error(minilm, tmp_path):
    minilm.save(tmp_path / "ckpt")  # mean pooling
    with pytest.raises(ModelLoadError, match="trained with pooling 'mean', not 'cls'"):
        load_model(tmp_path / "ckpt", pooling="cls")


def test_a_sentence_transformers_module_angle_ray_cannot_run_is_refused(st_cls_dir, tmp_path):
    folder = tmp_path / "dense"
    shutil.copytree(st_cls_dir, folder)
    modules = json.loads((folder / ST_MODULES_FILE).read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense",
                       "type": "sentence_transformers.models.Dense"})
    (folder / ST_MODULES_FILE).write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=rf"{ST_MODULES_FILE}.*Dense"):
        load_model(folder)


def test_settings_that_do_not_go_together_are_a_model_load_error():
    with pytest.raises(ModelLoadError, match="do not go together.*is_llm"):
        load_model("all-MiniLM-L6-v2", is_llm=True, pooling="cls")
