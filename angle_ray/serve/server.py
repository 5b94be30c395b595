"""`angle-ray serve`: start the embedding endpoint on Ray Serve, stop it cleanly on Ctrl-C / SIGTERM.

    angle-ray serve --model runs/quickstart/model --port 8000 --replicas 2 --api-key-env ANGLE_RAY_KEY
    python -m angle_ray.serve.server --model all-MiniLM-L6-v2          # the same, without the CLI

Binds to 127.0.0.1 unless `--host` says otherwise. With `--api-key-env VAR` every request but
`GET /healthz` must carry `Authorization: Bearer $VAR`; only a SHA-256 digest of the key is sent
to the replicas. On a cluster (`RAY_ADDRESS` set) the replicas spread over its nodes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import ray
from ray import serve

from angle_ray.errors import UserError
from angle_ray.models.loader import locate
from angle_ray.serve.deployment import ServeSettings, build_app
from angle_ray.serve.request import key_digest
from angle_ray.train.driver import init_ray

APP_NAME = "angle-ray"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="angle-ray / sentence-transformers / HF model folder or id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=_positive_int, default=1, help="model replicas (default 1)")
    p.add_argument("--max-batch-size", type=_positive_int, default=32,
                   help="requests grouped into one encode call (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a replica waits to fill a batch (default 5 ms)")
    p.add_argument("--max-texts", type=_positive_int, default=256, help="texts per request (default 256)")
    p.add_argument("--max-chars", type=_positive_int, default=8192, help="characters per text (default 8192)")
    p.add_argument("--served-name", default=None,
                   help="model name clients send and see (default: the model folder's name)")
    p.add_argument("--prompt", default=None, help="prompt applied to every text, with a {text} slot")
    p.add_argument("--prompt-name", default=None,
                   help="one of the model's saved prompts, applied to every text (default: the "
                        "model's default prompt, if it names one)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="tokens per text (default: model's)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <key>' with the key read from this env variable")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port (1..65535)")
    if args.prompt is not None and "{text}" not in args.prompt:
        raise UserError(f"--prompt {args.prompt!r} has no '{{text}}' slot")
    if args.prompt is not None and args.prompt_name is not None:
        raise UserError("give --prompt or --prompt-name, not both")
    locate(args.model)  # a missing model folder stops here, before Ray starts any replica
    model = args.model
    if Path(model).expanduser().exists():  # replicas may run in another directory (or node)
        model = str(Path(model).expanduser().resolve())
    return ServeSettings(
        model=model, served_name=args.served_name, replicas=args.replicas,
        max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
        max_texts=args.max_texts, max_chars=args.max_chars, prompt=args.prompt,
        prompt_name=args.prompt_name,
        max_length=args.max_length, cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica)


def api_key_digest(env_var: str | None) -> str | None:
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key.strip():
        raise UserError(f"--api-key-env {env_var}: the environment variable is not set or empty")
    return key_digest(key.strip())


def start_server(settings: ServeSettings, host: str, port: int, digest: str | None) -> str:
    """Deploy the app and return its URL once every replica has loaded the model."""
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(settings, digest), name=APP_NAME, route_prefix="/",
                  logging_config={"enable_access_log": False})
    except RuntimeError as err:  # a replica that cannot load the model fails the deployment
        serve.shutdown()
        raise UserError(f"serving {settings.model} failed: {str(err).strip().splitlines()[-1]}") from err
    return f"http://{host}:{port}"


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    digest = api_key_digest(args.api_key_env)
    url = start_server(settings, args.host, args.port, digest)
    try:
        print(f"serving {settings.name} ({settings.replicas} replica(s)) at {url}: POST {url}/v1/embeddings, "
              f"GET {url}/healthz{'; API key required' if digest else ''}. Ctrl-C to stop.", flush=True)
        wait_for_stop()
    finally:
        print("shutting down ...", flush=True)
        serve.shutdown()
        ray.shutdown()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="angle-ray serve", description=__doc__.splitlines()[0])
    add_serve_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
