"""Load on the `angle-ray serve` endpoint: bounded concurrent rounds, then a bad-input round.

    python bench/serve_load.py                              # starts a local MiniLM server itself
    python bench/serve_load.py --requests 20 --clients 1 8  # a quick check
    python bench/serve_load.py --url http://127.0.0.1:8000 --api-key-env KEY   # a running server

Rounds: for each client count (default 1, 8, 32), --requests requests of --texts STS-B test
sentences each, sent by that many threads with keep-alive connections, stopped at
--round-timeout-s. Per round: requests/s, p50 / p99 latency, texts/s, texts/s against a plain
in-process `encode` of the same sentences (measured first, before the server takes the CPUs),
the mean number of requests the server grouped per batch (its /stats), and failed requests,
which must be zero. Then the bad-input round: an empty list, an oversized text, too many texts,
wrong types, invalid JSON, a non-UTF-8 body and a missing API key, each followed by a good
request; every bad one must get its 4xx and every good one 200. Exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from ray import serve

from angle_ray.data.location import default_data_dir
from angle_ray.data.readers import iter_rows
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.serve.deployment import ServeSettings
from angle_ray.serve.request import key_digest
from angle_ray.serve.server import start_server

MODEL = "all-MiniLM-L6-v2"
LOCAL_KEY = "bench-key"


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, url: str, key: str | None):
        self.parsed, self.key, self.local = urlparse(url), key, threading.local()

    def post(self, path: str, body: bytes, key: str | None = "default") -> tuple[int, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.parsed.hostname, self.parsed.port,
                                                                timeout=120)
        headers = {"Content-Type": "application/json"}
        key = self.key if key == "default" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            self.local.conn = None
            conn.close()
            raise


def sentences(n: int) -> list[str]:
    rows = iter_rows(Path(default_data_dir()) / "stsb" / "test.jsonl")
    out = [t for _, row in rows for t in (row["text1"], row["text2"])]
    return (out * (n // len(out) + 1))[:n]


def plain_texts_per_s(texts: list[str], batch: int) -> float:
    model = load_model(MODEL)
    encode(model, texts[:batch], batch_size=batch, show_progress=False)  # warm-up
    t0 = time.perf_counter()
    encode(model, texts, batch_size=batch, normalize=True, show_progress=False)
    return len(texts) / (time.perf_counter() - t0)


def one_round(client: Client, clients: int, bodies: list[bytes], timeout_s: float) -> dict:
    latencies, failures, deadline = [], [], time.perf_counter() + timeout_s

    def send(body: bytes) -> None:
        if time.perf_counter() > deadline:
            failures.append("not sent: round time limit")
            return
        t0 = time.perf_counter()
        try:
            status, answer = client.post("/v1/embeddings", body)
        except Exception as err:  # noqa: BLE001 - any client-side failure counts as a failed request
            failures.append(repr(err))
            return
        if status != 200 or len(answer.get("data", [])) != len(json.loads(body)["input"]):
            failures.append(f"{status}: {answer}")
        else:
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return {"seconds": time.perf_counter() - start, "latencies": sorted(latencies), "failures": failures}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def load_rounds(client: Client, args, plain_tps: float) -> int:
    texts = sentences(args.requests * args.texts)
    bodies = [json.dumps({"input": texts[i * args.texts:(i + 1) * args.texts]}).encode()
              for i in range(args.requests)]
    print(f"\n## load: {args.requests} requests x {args.texts} texts per round, limit "
          f"{args.round_timeout_s:g} s; plain in-process encode {plain_tps:.1f} texts/s\n")
    print("| clients | req/s | p50 ms | p99 ms | texts/s | vs plain | requests/batch | failed |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for clients in args.clients:
        before = client.post("/stats", None)[1].get("batch_sizes", [])
        r = one_round(client, clients, bodies, args.round_timeout_s)
        sizes = client.post("/stats", None)[1].get("batch_sizes", [])[len(before):]
        done = len(r["latencies"])
        tps = done * args.texts / r["seconds"]
        print(f"| {clients} | {done / r['seconds']:.1f} | {1000 * percentile(r['latencies'], .5):.0f} | "
              f"{1000 * percentile(r['latencies'], .99):.0f} | {tps:.1f} | {tps / plain_tps:.2f}x | "
              f"{statistics.mean(sizes) if sizes else float('nan'):.1f} | {len(r['failures'])} |")
        failed += len(r["failures"])
        for failure in r["failures"][:3]:
            print(f"  failed: {failure[:200]}")
    print(f"\nfailed requests in all rounds: {failed}")
    return failed


def bad_round(client: Client, max_texts: int, max_chars: int, with_key: bool) -> int:
    cases = [("empty list", b'{"input": []}', 400, "default"),
             ("oversized text", json.dumps({"input": ["x" * (max_chars + 1)]}).encode(), 413, "default"),
             ("too many texts", json.dumps({"input": ["a"] * (max_texts + 1)}).encode(), 413, "default"),
             ("wrong types", b'{"input": [1, {"a": 2}]}', 400, "default"),
             ("invalid JSON", b'{"input": ["unclosed"', 400, "default"),
             ("non-UTF-8 body", b'{"input": "\xff\xfe\xfa"}', 400, "default")]
    if with_key:
        cases.append(("no API key", b'{"input": "hi"}', 401, None))
    print("\n## bad input (each followed by a good request)\n")
    print("| case | status | expected | message | next good request |")
    print("|---|---|---|---|---|")
    wrong = 0
    for name, body, expected, key in cases:
        status, answer = client.post("/v1/embeddings", body, key=key)
        good, _ = client.post("/v1/embeddings", b'{"input": "the server still answers"}')
        message = answer.get("error", {}).get("message", "")[:70]
        print(f"| {name} | {status} | {expected} | {message} | {good} |")
        wrong += (status != expected) + (good != 200)
    print(f"\nbad-input cases answered wrongly or followed by a failed good request: {wrong}")
    return wrong


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start a local one)")
    p.add_argument("--api-key-env", default=None, help="env variable holding the running server's key")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=200, help="requests per round")
    p.add_argument("--texts", type=int, default=4, help="texts per request")
    p.add_argument("--round-timeout-s", type=float, default=300)
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-texts", type=int, default=64, help="the server's limit (with --url: give its value)")
    p.add_argument("--max-chars", type=int, default=2000, help="the server's limit (with --url: give its value)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plain_tps = plain_texts_per_s(sentences(max(256, args.requests * args.texts)), batch=32)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    url = args.url
    if url is None:
        key = LOCAL_KEY
        settings = ServeSettings(model=MODEL, replicas=args.replicas, max_batch_size=args.max_batch_size,
                                 max_texts=args.max_texts, max_chars=args.max_chars)
        url = start_server(settings, "127.0.0.1", args.port, key_digest(key))
    try:
        client = Client(url, key)
        failed = load_rounds(client, args, plain_tps)
        wrong = bad_round(client, args.max_texts, args.max_chars, with_key=key is not None)
    finally:
        if args.url is None:
            serve.shutdown()
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
