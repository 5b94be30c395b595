"""Check one `POST /v1/embeddings` request and shape its answer (OpenAI embeddings format).

    texts = parse_request(body_bytes, limits, served_names=["minilm", "/models/minilm"], dim=384)
    body  = embeddings_body(request, vectors, tokens, "minilm")

Everything a client can get wrong becomes a `RequestError` with the HTTP status to answer and a
message that names the problem and the field (`input[3]`), so the replica answers 4xx and keeps
serving. Nothing here touches Ray or the model: the rules are plain functions, tested directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

import numpy as np

ENCODING_FORMATS = ("float", "base64")
KNOWN_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; a request past them is answered 413."""

    max_texts: int = 256  # texts per request
    max_chars: int = 8192  # characters per text (MiniLM reads 256 tokens; LLMs more)

    @property
    def max_body_bytes(self) -> int:
        # worst case JSON: every character escaped as \uXXXX (6 bytes), plus quotes and commas
        return self.max_texts * (6 * self.max_chars + 4) + 65536


@dataclass
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None


class RequestError(Exception):
    """A request the server refuses: HTTP status, a message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = "authentication_error" if self.status == 401 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def decode_body(body: bytes, limits: Limits) -> dict:
    """Bytes -> the request's JSON object, or a RequestError (size, UTF-8, JSON, not an object)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is "
                                f"{limits.max_body_bytes}", code="body_too_large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {err.start})",
                           code="invalid_encoding") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"request body is not valid JSON: {err.msg} (line {err.lineno}, "
                                f"column {err.colno})", code="invalid_json") from err
    if not isinstance(data, dict):
        raise RequestError(400, f"expected a JSON object with an 'input' field, got {_json_type(data)}")
    return data


def check_texts(value, limits: Limits) -> list[str]:
    """`input`: a string or a non-empty array of non-empty strings within the limits."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(400, f"'input' must be a string or an array of strings, got {_json_type(value)}",
                           "input")
    if not value:
        raise RequestError(400, "'input' is an empty array; send at least one text", "input")
    if len(value) > limits.max_texts:
        raise RequestError(413, f"'input' has {len(value)} texts; at most {limits.max_texts} per request",
                           "input", "too_many_texts")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            hint = " (token-id input is not supported; send text)" if isinstance(text, (int, list)) else ""
            raise RequestError(400, f"'input[{i}]' must be a string, got {_json_type(text)}{hint}",
                               f"input[{i}]")
        if not text.strip():
            raise RequestError(400, f"'input[{i}]' is an empty string", f"input[{i}]")
        if len(text) > limits.max_chars:
            raise RequestError(413, f"'input[{i}]' has {len(text)} characters; at most "
                                    f"{limits.max_chars} per text", f"input[{i}]", "text_too_long")
    return value


def _check_options(data: dict, served_names: list[str], dim: int) -> tuple[str, int | None]:
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; accepted: {sorted(KNOWN_FIELDS)}", unknown[0])
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, got {_json_type(model)}", "model")
    if model is not None and model not in served_names:
        raise RequestError(404, f"model {model!r} is not served here; this endpoint serves "
                                f"{served_names[0]!r}", "model", "model_not_found")
    fmt = data.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:
        raise RequestError(400, f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got {fmt!r}",
                           "encoding_format")
    dims = data.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= dim):
        raise RequestError(400, f"'dimensions' must be an integer in 1..{dim}, got {dims!r}", "dimensions")
    return fmt, dims


def parse_request(body: bytes, limits: Limits, served_names: list[str], dim: int) -> EmbeddingRequest:
    """One request body -> what to embed and how to answer; RequestError when it is not usable.

    `served_names`: the `model` values accepted, the name clients see first."""
    data = decode_body(body, limits)
    if "input" not in data:
        raise RequestError(400, "missing 'input' (a string or an array of strings)", "input")
    fmt, dims = _check_options(data, served_names, dim)
    return EmbeddingRequest(texts=check_texts(data["input"], limits), encoding_format=fmt, dimensions=dims)


def key_digest(key: str) -> str:
    """What the replicas keep of the API key (the key itself stays with the driver)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_api_key(authorization: str | None, digest: str | None) -> None:
    """`Authorization: Bearer <key>` must match when a key is set; 401 otherwise."""
    if digest is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    if not hmac.compare_digest(key_digest(token.strip()), digest):
        raise RequestError(401, "invalid API key", code="invalid_api_key")


def shape_vectors(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Truncate to the first `dimensions` components and L2-normalise again (Matryoshka-style)."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def embeddings_body(request: EmbeddingRequest, vectors: np.ndarray, tokens: int, model_name: str) -> dict:
    """The OpenAI `list` of `embedding` objects, in input order, with token usage."""
    vectors = shape_vectors(np.asarray(vectors, dtype=np.float32), request.dimensions)
    if request.encoding_format == "base64":
        items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        items = [v.tolist() for v in vectors]
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
            "model": model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
