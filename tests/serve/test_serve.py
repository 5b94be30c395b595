"""`angle-ray serve` end to end: a real Ray Serve app with MiniLM, real HTTP on 127.0.0.1.

The server runs as its own process (`python -m angle_ray.serve.server`, what `angle-ray serve`
calls), with an API key, so the test also covers start-up, the key and SIGTERM shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from tests.ports import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
SENTENCES = ["A plane is taking off.", "A man is playing a flute.", "A woman is slicing an onion.",
             "Two dogs run through a field of tall grass.", "The stock market fell sharply today."]


def call(url: str, body=None, key: str | None = KEY, raw: bytes | None = None, method: str | None = None):
    """(status, JSON answer) of one HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SERVE_TEST_KEY": KEY}
    cmd = [sys.executable, "-m", "angle_ray.serve.server", "--model", "all-MiniLM-L6-v2", "--port", str(port),
           "--max-batch-size", "16", "--batch-wait-ms", "200", "--max-texts", "8", "--max-chars", "300",
           "--cpus-per-replica", "1", "--api-key-env", "SERVE_TEST_KEY", "--served-name", "minilm"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None:
        try:
            if call(f"{url}/healthz", key=None)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"server did not come up:\n{proc.stdout.read()}")
    yield url, proc
    if proc.poll() is None:
        proc.kill()


def test_embeddings_match_in_process_encode(server):
    url, _ = server
    status, body = call(f"{url}/v1/embeddings", {"input": SENTENCES, "model": "minilm"})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == list(range(len(SENTENCES)))
    served = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    local = encode(load_model("all-MiniLM-L6-v2"), SENTENCES, normalize=True, show_progress=False)
    np.testing.assert_allclose(served, local, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    tokens = load_model("all-MiniLM-L6-v2").tokenizer(SENTENCES)["input_ids"]
    assert body["usage"] == {"prompt_tokens": sum(map(len, tokens)), "total_tokens": sum(map(len, tokens))}
    status, one = call(f"{url}/v1/embeddings", {"input": SENTENCES[1]})
    np.testing.assert_allclose(one["data"][0]["embedding"], local[1], atol=1e-5)


def test_concurrent_requests_are_batched(server):
    url, _ = server
    before = call(f"{url}/stats")[1]["batch_sizes"]
    texts = [f"sentence number {i} about batching" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: call(f"{url}/v1/embeddings", {"input": t}), texts))
    assert all(status == 200 for status, _ in answers)
    stats = call(f"{url}/stats")[1]
    new_batches = stats["batch_sizes"][len(before):]
    assert sum(new_batches) == 12
    assert max(new_batches) > 1, f"12 concurrent requests were never grouped: {new_batches}"
    assert len(new_batches) < 12


@pytest.mark.parametrize("raw, status, words", [
    (b'{"input": []}', 400, "empty array"),
    (json.dumps({"input": ["x" * 301]}).encode(), 413, "301 characters; at most 300"),
    (json.dumps({"input": ["a"] * 9}).encode(), 413, "9 texts; at most 8"),
    (b'{"input": [1, 2]}', 400, "must be a string"),
    (b'{"input": "a", "model": "gpt-4"}', 404, "not served here"),
    (b'{"input": ', 400, "not valid JSON"),
    (b'{"input": "\xff\xfe"}', 400, "not valid UTF-8"),
    (b'{"input": "' + b"y" * 2_000_000 + b'"}', 413, "limit"),
])
def test_bad_input_gets_4xx_and_the_server_keeps_answering(server, raw, status, words):
    url, _ = server
    got, body = call(f"{url}/v1/embeddings", raw=raw)
    assert got == status, body
    assert words in body["error"]["message"]
    assert call(f"{url}/v1/embeddings", {"input": "still here"})[0] == 200


def test_api_key_is_enforced(server):
    url, _ = server
    assert call(f"{url}/v1/embeddings", {"input": "hi"}, key=None)[0] == 401
    status, body = call(f"{url}/v1/embeddings", {"input": "hi"}, key="wrong")
    assert status == 401 and body["error"]["message"] == "invalid API key"
    assert call(f"{url}/stats", key=None)[0] == 401
    assert call(f"{url}/healthz", key=None)[0] == 200  # health checks need no key
    assert call(f"{url}/nowhere")[0] == 404
    assert call(f"{url}/v1/embeddings", method="GET")[0] == 405


def test_sigterm_shuts_down_cleanly(server):
    url, proc = server
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "stopped" in out
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(f"{url}/healthz", key=None)
