"""The negatives feed on real published versions (angle_ray.mining.publish), one process."""

import numpy as np
import pytest

from angle_ray.config import MiningConfig, ModelConfig
from angle_ray.data.collate import TokenBatch, pad
from angle_ray.data.roles import ragged
from angle_ray.data.stream import text_hash
from angle_ray.mining.publish import publish_version
from angle_ray.models.backbone import load_tokenizer
from angle_ray.train.negatives_feed import NegativesFeed

QUERY_PROMPT = "query: {text}"
ROWS = [{"query": "what causes rain", "positive": "clouds release water",
         "negative": ["deserts are dry", "the sun is hot", "rivers flow"]},
        {"query": "how do plants grow", "positive": "photosynthesis makes sugar",
         "negative": ["rocks are hard"]}]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelConfig())


def mining(**kw) -> MiningConfig:
    return MiningConfig(beir="unused", k=2, poll_every=1, query_prompt=QUERY_PROMPT, **kw)


def pairs_batch(tok, queries: list[str]) -> TokenBatch:
    """The mined stream's Format B batch: queries carry the prompt, as the pairs file is read."""
    texts = [QUERY_PROMPT.replace("{text}", q) for q in queries]
    cols = {"query_ids": ragged(tok(texts)["input_ids"]),
            "query_hash": np.array([text_hash(t) for t in texts]),
            "positive_ids": ragged([[1, 2]] * len(queries)),
            "positive_hash": np.arange(len(queries), dtype=np.int64)}
    return TokenBatch("B", 0, cols)


def test_attach_adds_k_negatives_per_query_as_a_format_c_batch(tmp_path, tok):
    publish_version(tmp_path, 0, ROWS, {"kind": "warm"})
    feed = NegativesFeed(tmp_path, mining(), tok, max_length=16)
    batch = pairs_batch(tok, ["how do plants grow", "what causes rain"])
    assert feed.attach(batch) is batch  # nothing loaded yet: the batch stays Format B
    feed.prime()
    out = feed.attach(batch)
    assert (out.fmt, out.roles) == ("C", ["query", "positive", "negative_0", "negative_1"])
    # row 0 (plants) has one negative: k = 2 reuses it; row 1 takes its first two
    assert out.hashes("negative_0").tolist() == [text_hash("rocks are hard"), text_hash("deserts are dry")]
    assert out.hashes("negative_1").tolist() == [text_hash("rocks are hard"), text_hash("the sun is hot")]
    assert out.token_ids("negative_1")[1].tolist() == tok("the sun is hot")["input_ids"]
    padded = pad(out, pad_id=tok.pad_token_id, left_pad=False)
    assert padded.input_ids.shape[0] == 4 * 2  # 4 roles x 2 examples
    assert feed.metrics(3)["neg/version"] == 0 and feed.metrics(3)["neg/staleness"] == 3


def test_a_query_the_version_does_not_know_is_an_error_naming_the_folder(tmp_path, tok):
    publish_version(tmp_path, 0, ROWS, {})
    feed = NegativesFeed(tmp_path, mining(), tok, max_length=16)
    feed.prime()
    with pytest.raises(KeyError, match=f"negatives v0 in {tmp_path}"):
        feed.attach(pairs_batch(tok, ["a query nobody mined"]))


def test_a_version_with_a_query_without_negatives_is_not_used(tmp_path, tok):
    publish_version(tmp_path, 0, ROWS, {})
    publish_version(tmp_path, 4, [{**ROWS[0], "negative": []}], {})
    feed = NegativesFeed(tmp_path, mining(), tok, max_length=16)
    feed.prime()  # v4 fails to load: the feed warns and keeps no version (the next poll retries)
    assert feed.current is None
    feed.poll(1)
    assert feed.current is None and feed.used == []


def test_poll_picks_up_a_newer_version(tmp_path, tok):
    publish_version(tmp_path, 0, ROWS, {})
    feed = NegativesFeed(tmp_path, mining(), tok, max_length=16)
    feed.prime()
    newer = [{**r, "negative": ["a newer negative"]} for r in ROWS]
    publish_version(tmp_path, 6, newer, {"seconds": {"total_s": 2.5},
                                         "stats": {"random_fill_fraction": 0.25}})
    feed.poll(7)  # starts loading v6 in the background
    feed.pending[1].result(timeout=60)
    assert feed.metrics(7)["neg/random_fill"] == 0.0  # v0's manifest has no stats
    feed.poll(8)  # every rank has it: switch
    assert feed.current.step == 6 and feed.used == [0, 6]
    out = feed.attach(pairs_batch(tok, ["what causes rain"]))
    assert out.hashes("negative_0").tolist() == [text_hash("a newer negative")]
    assert feed.metrics(8)["neg/refresh_s"] == 2.5 and feed.metrics(8)["neg/staleness"] == 2
    assert feed.metrics(8)["neg/random_fill"] == 0.25


def test_staleness_past_the_bound_times_out_naming_the_folder(tmp_path, tok):
    publish_version(tmp_path, 0, ROWS, {})
    feed = NegativesFeed(tmp_path, mining(max_staleness=3, wait_timeout_s=0.2), tok, max_length=16)
    feed.prime()
    feed.advance(3)  # within the bound: no wait
    with pytest.raises(TimeoutError, match="no negatives version newer than step 2"):
        feed.advance(5)
