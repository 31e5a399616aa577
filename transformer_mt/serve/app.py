"""The HTTP service: a Starlette application over one Translator, served by uvicorn.

    GET  /                      the page: translate, the n-best list, attention heat maps
    GET  /health                {"status": "ok", "pending": N, ...}
    GET  /info                  model family, size, languages, vocabulary, decoding defaults, step
    POST /translate             {"text": [...], "beam": 4, "nbest": 1, ...} (see api.py)
    POST /translator/translate  OpenNMT-py's REST format
    POST /attention             {"text": "...", "tokens": [...]}: the page's heat maps

Every model call goes through the `Batcher` (one worker thread; see batcher.py). Bodies are read up
to `server.max_body_bytes` and no further (413); malformed JSON and wrong types are 400s naming
the problem; a full queue is 503 with Retry-After. On SIGTERM (or Ctrl-C) uvicorn stops accepting
connections and waits for the requests in flight, the batcher drains its queue, and the process
exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translation, Translator
from transformer_mt.serve import api
from transformer_mt.serve.batcher import Batcher, QueueFull, ShuttingDown
from transformer_mt.serve.maps import attention_maps
from transformer_mt.serve.settings import ServerConfig

log = logging.getLogger("transformer_mt.serve")
STATIC = resources.files("transformer_mt.serve") / "static"


@dataclass
class Service:
    """What the application serves: a translator (its models in memory once), facts about the model
    for /info, and the server's limits."""

    translator: Translator
    info: dict[str, Any]
    limits: ServerConfig

    def decode(self, cfg: DecodingConfig, lines: list[str]) -> list[list[Translation]]:
        """Translate on the worker thread with `cfg`; the models are shared, not copied."""
        t = self.translator
        return Translator(t.models, t.vocab, cfg, device=t.device, precision=t.precision, warn=t.warn).translate(
            lines
        )


def create_app(service: Service, batcher: Batcher | None = None) -> Starlette:
    """The application; `batcher` defaults to one over `service.decode` with the service's limits."""
    limits = service.limits
    batcher = batcher or Batcher(
        service.decode,
        api.settings_key,
        window_s=limits.batch_window_ms / 1000.0,
        max_queue=limits.max_queue,
        max_batch_lines=limits.max_batch_lines,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (%s)", service.info.get("checkpoint"), service.info.get("family"))
        yield
        finished = await asyncio.to_thread(batcher.close, limits.shutdown_timeout_s)
        log.info("decoder %s; %s", "drained" if finished else "still busy at shutdown", batcher.stats)

    async def page(request: Request) -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def health(request: Request) -> Response:
        status = "ok" if batcher.accepting else "draining"
        return JSONResponse(
            {"status": status, "pending": batcher.pending, "max_queue": limits.max_queue, **batcher.stats}
        )

    async def info(request: Request) -> Response:
        return JSONResponse(service.info)

    async def translate(request: Request) -> Response:
        body = api.parse(api.TranslateRequest, await read_json(request, limits))
        api.check_lines(body.text, limits)
        cfg = api.decoding_settings(service.translator.cfg, body, limits)
        results = await queued(batcher.translate(cfg, body.text), limits)
        return JSONResponse(api.translate_answer(results, cfg))

    async def opennmt(request: Request) -> Response:
        try:
            items = api.parse_opennmt(await read_json(request, limits))
            lines = [item.src for item in items]
            api.check_lines(lines, limits)
            cfg = service.translator.cfg
            results = await queued(batcher.translate(cfg, lines), limits)
        except api.Problem as problem:  # OpenNMT-py's error shape, with a real status code
            return JSONResponse({"error": problem.message, "status": "error"}, problem.status, problem.headers)
        return JSONResponse(api.opennmt_answer(items, results, cfg.nbest))

    async def attention(request: Request) -> Response:
        body = api.parse(api.AttentionRequest, await read_json(request, limits))
        if not body.text.strip():
            raise api.Problem(400, "text is empty: nothing to show")
        api.check_lines([body.text], limits)
        tokens = body.tokens
        if tokens is None:  # the best translation with the server's settings
            best = (await queued(batcher.translate(service.translator.cfg, [body.text]), limits))[0][0]
            tokens = best.tokens
        vocab_size = len(service.translator.vocab)
        bad = [t for t in tokens if not service.translator.vocab.eos_id < t < vocab_size]
        if bad:
            first = service.translator.vocab.eos_id + 1
            raise api.Problem(400, f"tokens: {bad[0]} is not a word piece id ({first}..{vocab_size - 1})")
        if len(tokens) > limits.max_chars:
            raise api.Problem(413, f"{len(tokens)} target tokens; the limit is {limits.max_chars}")
        translator = service.translator
        maps = await queued(batcher.run(lambda: attention_maps(translator, body.text, tokens)), limits)
        return JSONResponse({"family": service.info["family"], **maps})

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, api.Problem)
        return JSONResponse({"error": exc.message}, exc.status, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/info", info),
        Route("/translate", translate, methods=["POST"]),
        Route("/translator/translate", opennmt, methods=["POST"]),
        Route("/attention", attention, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {api.Problem: problem, HTTPException: http_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


async def read_json(request: Request, limits: ServerConfig) -> Any:
    """The body as JSON, read no further than `limits.max_body_bytes` (413 beyond), or a 400."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise api.Problem(413, f"request body of {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise api.Problem(413, f"request body over {limit} bytes")
    if not body:
        raise api.Problem(400, "empty body: send JSON")
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise api.Problem(400, f"malformed JSON: {err}") from None


async def queued(work: Any, limits: ServerConfig) -> Any:
    """Await the batcher; a full queue is 503 with Retry-After, a failed decode 500."""
    try:
        return await work
    except QueueFull as err:
        raise api.Problem(503, f"{err}; retry later", {"Retry-After": str(limits.retry_after_s)}) from None
    except ShuttingDown as err:
        raise api.Problem(503, str(err), {"Retry-After": str(limits.retry_after_s)}) from None
    except Exception as err:  # noqa: BLE001 - logged by the worker; the client gets one line
        raise api.Problem(500, f"decoding failed: {type(err).__name__}: {err}") from None


def model_info(
    translator: Translator, *, family: str, parameters: int, languages: tuple[str, str] | None,
    step: int | None, checkpoint: str, model_config: dict[str, Any], limits: ServerConfig,
) -> dict[str, Any]:
    """What GET /info tells about the model and the service."""
    return {
        "family": family,
        "parameters": parameters,
        "languages": {"source": languages[0], "target": languages[1]} if languages else None,
        "vocab_size": len(translator.vocab),
        "decoding": asdict(translator.cfg),
        "step": step,
        "checkpoint": checkpoint,
        "model": model_config,
        "device": str(translator.device),
        "precision": translator.precision,
        "limits": {
            "max_lines": limits.max_lines,
            "max_chars": limits.max_chars,
            "max_beam": limits.max_beam,
            "max_queue": limits.max_queue,
            "batch_window_ms": limits.batch_window_ms,
            "max_body_bytes": limits.max_body_bytes,
        },
    }


def serve(app: Starlette, *, host: str, port: int, limits: ServerConfig) -> None:
    """Run `app` until SIGTERM or SIGINT, then shut down gracefully and return (exit status 0).

    uvicorn handles both signals itself (stop accepting, wait for the requests in flight up to
    `shutdown_timeout_s`, run the lifespan's drain) and re-raises the signal once done; the
    handlers installed here receive that and let the process end normally instead of dying of it.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=limits.access_log,
        timeout_graceful_shutdown=limits.shutdown_timeout_s,  # type: ignore[arg-type]  (a float works)
        log_level="info",
    )
    server = uvicorn.Server(config)
    stopped_by: list[int] = []

    def on_signal(number: int, frame: Any) -> None:  # before uvicorn takes the signals over, or after
        stopped_by.append(number)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.run()
    if stopped_by:
        log.info("stopped by %s", signal.Signals(stopped_by[0]).name)


__all__ = ["Service", "create_app", "model_info", "serve"]
