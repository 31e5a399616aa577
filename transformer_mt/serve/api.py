"""What a request may say, and what the answers look like.

Requests are validated strictly (pydantic, strict mode, unknown fields refused): a wrong type or a
misspelt option is a 400 that names the field, never a guess. Limits that bound a request's work
(lines, characters per line, beam) are checked here too; lines and characters give 413 with the
limit in the message.

Our format, `POST /translate`:

    {"text": ["A man rides a bike.", ...], "beam": 4, "nbest": 2, "lenpen": 0.6}
 -> {"translations": [[{"text": "...", "score": -0.21, "tokens": [...]}, ...], ...], "decoding": {...}}

one list of up to `nbest` hypotheses (best first) per input line, in input order. `score` is the
length-normalised log-probability the hypotheses are ranked by; `tokens` are the target piece ids.

OpenNMT-py's REST format, `POST /translator/translate` (its server's request and answer shapes):

    [{"src": "A man rides a bike.", "id": 100}, ...]
 -> [[{"src": "...", "tgt": "...", "n_best": 1, "pred_score": -0.21}, ...]]

one list per n-best rank, each with one entry per input in input order. `id` names a model in
OpenNMT-py's multi-model server; this service holds one model and accepts any integer id.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translation
from transformer_mt.serve.settings import ServerConfig


class Problem(Exception):
    """An answer other than 200: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


_STRICT = ConfigDict(extra="forbid", strict=True)


class DecodingOptions(BaseModel):
    """The decoding settings a request may choose; the rest (maximum length, batch size) are the server's."""

    model_config = _STRICT

    beam: int | None = None
    nbest: int | None = None
    lenpen: float | None = None
    sampling: bool | None = None
    sampling_topk: int | None = None
    sampling_topp: float | None = None
    temperature: float | None = None
    seed: int | None = None


class TranslateRequest(DecodingOptions):
    text: list[str]


class AttentionRequest(BaseModel):
    """The page's request: one sentence, and the target ids whose attention to show (default: the
    best translation with the server's settings)."""

    model_config = _STRICT

    text: str
    tokens: list[int] | None = None


class OpenNMTItem(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenNMT-py clients may send more keys

    src: str
    id: int | None = None


_OPENNMT = TypeAdapter(list[OpenNMTItem])


def parse(schema: Any, data: Any) -> Any:
    """`data` (decoded JSON) as `schema` (a model class or a TypeAdapter), or a 400 naming what was wrong."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(data)
        return schema.model_validate(data)
    except ValidationError as err:
        raise Problem(400, f"invalid request: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """pydantic's errors as one line: `text.2: Input should be a valid string; beam: ...`."""
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_opennmt(data: Any) -> list[OpenNMTItem]:
    return parse(_OPENNMT, data)


def check_lines(lines: Sequence[str], limits: ServerConfig) -> None:
    """413 for too many lines or too long a line (the limit in the message)."""
    if len(lines) > limits.max_lines:
        raise Problem(
            413, f"{len(lines)} lines in one request; the limit is {limits.max_lines} (server.max_lines)"
        )
    for index, line in enumerate(lines):
        if len(line) > limits.max_chars:
            raise Problem(
                413,
                f"line {index} has {len(line)} characters; the limit is {limits.max_chars} "
                "characters per line (server.max_chars)",
            )


def decoding_settings(base: DecodingConfig, options: DecodingOptions, limits: ServerConfig) -> DecodingConfig:
    """The server's settings with a request's options on top, or a 400 saying what cannot work."""
    given = options.model_dump(include=set(DecodingOptions.model_fields), exclude_none=True)
    for name in ("beam", "nbest"):
        if name in given and given[name] > limits.max_beam:
            raise Problem(400, f"{name}={given[name]} is over this server's limit of {limits.max_beam} (server.max_beam)")
    if not 0 <= given.get("seed", 0) < 2**63:
        raise Problem(400, f"seed={given['seed']} must be in [0, 2^63)")
    for name in ("lenpen", "sampling_topp", "temperature"):
        if name in given and not math.isfinite(given[name]):
            raise Problem(400, f"{name}={given[name]} must be a finite number")
    try:
        return dataclasses.replace(base, **given)
    except ValueError as err:
        raise Problem(400, str(err)) from None


def settings_key(cfg: DecodingConfig) -> tuple:
    """Settings that may share one search have equal keys."""
    return tuple(sorted(dataclasses.asdict(cfg).items()))


def hypothesis(translation: Translation) -> dict[str, Any]:
    return {"text": translation.text, "score": translation.score, "tokens": list(translation.tokens)}


def translate_answer(results: Sequence[Sequence[Translation]], cfg: DecodingConfig) -> dict[str, Any]:
    shown = ("beam", "nbest", "lenpen", "max_len_a", "max_len_b", "sampling")
    return {
        "translations": [[hypothesis(t) for t in hyps] for hyps in results],
        "decoding": {name: getattr(cfg, name) for name in shown},
    }


def opennmt_answer(
    items: Sequence[OpenNMTItem], results: Sequence[Sequence[Translation]], nbest: int
) -> list[list[dict[str, Any]]]:
    """OpenNMT-py's shape: one list per n-best rank, each with an entry per input, in input order.
    A line with fewer hypotheses than `nbest` (an empty line has one) repeats its last."""
    ranks: list[list[dict[str, Any]]] = [[] for _ in range(nbest)]
    for item, hyps in zip(items, results, strict=True):
        for rank in range(nbest):
            best = hyps[min(rank, len(hyps) - 1)] if hyps else None
            ranks[rank].append(
                {
                    "src": item.src,
                    "tgt": best.text if best else "",
                    "n_best": nbest,
                    "pred_score": best.score if best else 0.0,
                }
            )
    return ranks


__all__ = [
    "AttentionRequest",
    "DecodingOptions",
    "OpenNMTItem",
    "Problem",
    "TranslateRequest",
    "check_lines",
    "decoding_settings",
    "opennmt_answer",
    "parse",
    "parse_opennmt",
    "settings_key",
    "translate_answer",
]
