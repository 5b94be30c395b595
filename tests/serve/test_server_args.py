"""`angle-ray serve` options checked before Ray starts: each mistake is one UserError."""

import argparse

import pytest

from angle_ray.errors import UserError
from angle_ray.serve.request import key_digest
from angle_ray.serve.server import add_serve_args, api_key_digest, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_to_localhost_and_carry_the_limits(tmp_path):
    args = parse("--model", "all-MiniLM-L6-v2")
    assert (args.host, args.port, args.replicas) == ("127.0.0.1", 8000, 1)
    settings = settings_from_args(parse("--model", "all-MiniLM-L6-v2", "--max-texts", "5", "--max-chars",
                                        "9", "--batch-wait-ms", "20"))
    assert (settings.limits.max_texts, settings.limits.max_chars, settings.batch_wait_s) == (5, 9, 0.02)
    assert settings.name == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("argv, words", [
    (["--model", "/no/such/model"], "/no/such/model: no such model folder"),
    (["--model", "all-MiniLM-L6-v2", "--port", "70000"], "--port 70000 is not a TCP port"),
    (["--model", "all-MiniLM-L6-v2", "--prompt", "query:"], "has no '{text}' slot"),
    (["--model", "all-MiniLM-L6-v2", "--prompt", "q: {text}", "--prompt-name", "q"], "not both"),
])
def test_bad_options_are_user_errors(argv, words):
    with pytest.raises(UserError) as info:
        settings_from_args(parse(*argv))
    assert words in str(info.value)


def test_api_key_comes_from_the_named_variable(monkeypatch):
    assert api_key_digest(None) is None
    monkeypatch.setenv("SERVE_KEY", " k1 ")
    assert api_key_digest("SERVE_KEY") == key_digest("k1")
    monkeypatch.delenv("SERVE_KEY")
    with pytest.raises(UserError, match="--api-key-env SERVE_KEY: the environment variable is not set"):
        api_key_digest("SERVE_KEY")


def test_replicas_must_be_positive():
    with pytest.raises(SystemExit):
        parse("--model", "m", "--replicas", "0")
