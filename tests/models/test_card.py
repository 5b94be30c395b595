"""angle_ray/models/card.py: the card states every value it is given, and its usage snippets run
as written on a real exported MiniLM folder (with Embedder and with sentence-transformers)."""

import contextlib
import io
import re

import pytest

from angle_ray.config import ModelConfig
from angle_ray.models import build_model
from angle_ray.models.card import write_model_card
from angle_ray.models.export import export_hf, export_sentence_transformers

PROMPTS = {"query": "query: {text}"}
CARD_ARGS = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "data": [{"path": "stsb/train.jsonl", "format": "A", "rows": 5749},
             {"path": "nli/triples.parquet", "format": "C", "rows": None}],
    "loss": {"cosine_w": 1.0, "ibn_w": 0.5, "angle_w": 0.02},
    "train": {"steps": 360, "seconds": 3723.0, "lr": 5e-5, "batch": 32},
    "eval_table": {"stsb": {"spearman": 83.68}, "sickr": 79.12},
    "pooling": "mean",
    "prompts": PROMPTS,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real MiniLM export: the angle-ray folder and the sentence-transformers folder."""
    model = build_model(ModelConfig(), usage={"prompts": PROMPTS, "default_prompt_name": None,
                                              "normalize": True})
    root = tmp_path_factory.mktemp("export")
    return export_hf(model, root / "model"), export_sentence_transformers(model, root / "model-st")


def _run_snippets(card_text: str) -> list[str]:
    """Execute every ```python block of the card; returns what each one printed."""
    printed = []
    for block in re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "<model card>", "exec"), {})  # noqa: S102 - the card's own snippet
        printed.append(out.getvalue())
    return printed


def test_card_states_every_given_value(exported):
    st_dir = exported[1]
    card = write_model_card(st_dir, **CARD_ARGS,
                            chosen_checkpoint={"step": 300, "metric": "stsb_dev_spearman",
                                               "value": 87.2, "last_step": 360},
                            extra={"seed": 42})
    text = card.read_text()
    assert card == st_dir / "README.md"
    for needle in ("sentence-transformers/all-MiniLM-L6-v2", "`stsb/train.jsonl` | A | 5749",
                   "`nli/triples.parquet` | C | not counted", "| cosine_w | 1 |", "| ibn_w | 0.5 |",
                   "| angle_w | 0.02 |", "- steps: 360", "1 h 02 min 03 s (3723 s)",
                   "- learning rate: 5e-05", "- batch size: 32", "| stsb | spearman | 83.68 |",
                   "| sickr | score | 79.12 |", "step 300", "`stsb_dev_spearman` = 87.2",
                   "Training ran to step 360", "- pooling: `mean`", "`query`: `query: {text}`",
                   "- seed: 42", "384-dimensional", "base_model: sentence-transformers/all-MiniLM-L6-v2"):
        assert needle in text, needle


def test_card_without_a_scored_checkpoint_says_the_last_step_was_exported(exported):
    text = write_model_card(exported[0], **CARD_ARGS, chosen_checkpoint=None).read_text()
    assert "The weights of the last training step" in text
    assert "best one by the dev metric" not in text


def test_usage_snippets_run_as_written_on_the_st_folder(exported):
    text = write_model_card(exported[1], **CARD_ARGS, chosen_checkpoint=None).read_text()
    assert 'prompt_name="query"' in text
    printed = _run_snippets(text)
    assert len(printed) == 2  # Embedder, then sentence-transformers
    for out in printed:
        assert out.startswith("(3, 384)\n"), out


def test_angle_ray_folder_card_points_sentence_transformers_at_its_sibling(exported):
    model_dir, st_dir = exported
    text = write_model_card(model_dir, **CARD_ARGS, chosen_checkpoint=None,
                            sentence_transformers_dir=st_dir).read_text()
    assert f'Embedder.from_pretrained("{model_dir}")' in text
    assert f'SentenceTransformer("{st_dir}")' in text
    assert [out.splitlines()[0] for out in _run_snippets(text)] == ["(3, 384)", "(3, 384)"]


def test_folder_without_sentence_transformers_layout_gets_no_st_snippet(exported):
    text = write_model_card(exported[0], **CARD_ARGS, chosen_checkpoint=None).read_text()
    assert "SentenceTransformer(" not in text
    assert "no sentence-transformers layout" in text
