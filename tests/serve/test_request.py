"""The request rules of the embedding endpoint, called directly (no Ray, no model)."""

import base64
import json

import numpy as np
import pytest

from angle_ray.serve.request import (
    EmbeddingRequest,
    Limits,
    RequestError,
    check_api_key,
    embeddings_body,
    key_digest,
    parse_request,
)

LIMITS = Limits(max_texts=3, max_chars=10)
NAMES = ["minilm", "/models/minilm"]


def parse(body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, LIMITS, NAMES, dim=4)


def refused(body) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(body)
    return info.value


def test_a_string_or_a_list_of_strings_is_accepted():
    assert parse({"input": "hello"}).texts == ["hello"]
    req = parse({"input": ["a", "b c"], "model": "minilm", "encoding_format": "base64", "dimensions": 2})
    assert (req.texts, req.encoding_format, req.dimensions) == (["a", "b c"], "base64", 2)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"input": "caf\xe9"}', 400, "not valid UTF-8 (byte 14)"),
    ([1, 2], 400, "got an array"),
    ({"text": "x"}, 400, "missing 'input'"),
    ({"input": []}, 400, "empty array"),
    ({"input": ["ok", "  "]}, 400, "'input[1]' is an empty string"),
    ({"input": ["ok", 7]}, 400, "'input[1]' must be a string, got a number (token-id"),
    ({"input": {"a": 1}}, 400, "got an object"),
    ({"input": ["a", "b", "c", "d"]}, 413, "4 texts; at most 3"),
    ({"input": ["ok", "x" * 11]}, 413, "'input[1]' has 11 characters; at most 10"),
    ({"input": "a", "model": 3}, 400, "'model' must be a string"),
    ({"input": "a", "model": "gpt"}, 404, "this endpoint serves 'minilm'"),
    ({"input": "a", "encoding_format": "int8"}, 400, "'encoding_format' must be one of"),
    ({"input": "a", "dimensions": 5}, 400, "1..4, got 5"),
    ({"input": "a", "dimensions": True}, 400, "got True"),
    ({"input": "a", "temperature": 1}, 400, "unknown field(s) ['temperature']"),
])
def test_each_bad_request_gets_its_status_and_says_what_is_wrong(body, status, words):
    err = refused(body)
    assert err.status == status
    assert words in err.message
    assert err.body()["error"]["message"] == err.message


def test_a_body_past_the_byte_limit_is_refused_before_parsing():
    err = refused(b" " * (LIMITS.max_body_bytes + 1))
    assert err.status == 413 and "limit" in err.message


def test_api_key_check():
    digest = key_digest("s3cret")
    check_api_key(None, None)  # no key configured: anything goes
    check_api_key("Bearer s3cret", digest)
    check_api_key("bearer  s3cret ", digest)
    for header, words in [(None, "missing API key"), ("Basic s3cret", "missing API key"),
                          ("Bearer", "missing API key"), ("Bearer wrong", "invalid API key")]:
        with pytest.raises(RequestError) as info:
            check_api_key(header, digest)
        assert info.value.status == 401 and words in info.value.message


def test_answer_has_the_openai_shape_in_input_order():
    vecs = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    body = embeddings_body(EmbeddingRequest(texts=["a", "b"]), vecs, 7, "minilm")
    assert body["object"] == "list" and body["model"] == "minilm"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0] == {"object": "embedding", "index": 0, "embedding": [3.0, 4.0, 0.0, 0.0]}


def test_dimensions_truncate_and_renormalise_and_base64_round_trips():
    vecs = np.array([[3.0, 4.0, 12.0, 0.0]], dtype=np.float32)
    body = embeddings_body(EmbeddingRequest(texts=["a"], encoding_format="base64", dimensions=2),
                           vecs, 1, "m")
    back = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(back, [0.6, 0.8], atol=1e-7)
