"""Serve a checkpoint over HTTP: `transformer-mt serve checkpoint=PATH host=127.0.0.1 port=8080`.

POST /translate takes {"text": [lines], "beam": 4, "nbest": 1, ...} and answers the translations
in order with their scores; POST /translator/translate speaks OpenNMT-py's REST format; GET /info
describes the model, GET /health the queue; GET / is a page to translate and look at the model's
attention. Requests arriving within server.batch_window_ms are decoded together; server.max_queue,
server.max_lines and server.max_chars bound the work a client can ask for. Decodes as the
checkpoint's run validated unless decoding.KEY=VALUE says otherwise (requests may choose their own
beam, nbest, lenpen and sampling settings). SIGTERM stops accepting, finishes the requests in
flight and exits 0. Needs the `serve` extra: pip install 'transformer-mt[serve]'."""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from transformer_mt.checkpoint import load_for_inference
from transformer_mt.cli.common import decoding_overrides, load_config
from transformer_mt.decoding.search import DecodingConfig
from transformer_mt.decoding.translator import Translator
from transformer_mt.models import count_parameters
from transformer_mt.runtime import local_runtime

EXTRA = ("starlette", "uvicorn", "pydantic")


def main(overrides: list[str], show_help: bool) -> None:
    cfg = load_config("serve", overrides, show_help, __doc__)
    if cfg is None:
        return
    if not isinstance(cfg.checkpoint, str):
        raise ValueError("checkpoint=PATH is required (one checkpoint: the service holds one model)")
    app_module = _serve_extra()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    service = load_service(cfg, overrides, app_module)
    app = app_module.create_app(service)
    app_module.serve(app, host=cfg.host, port=cfg.port, limits=cfg.server)


def load_service(cfg: Any, overrides: list[str], app_module: Any) -> Any:
    """The model loaded once, a Translator over it, and what /info says about it."""
    runtime = local_runtime(device=cfg.device, precision=cfg.precision)
    loaded = load_for_inference(cfg.checkpoint, runtime.device)
    decoding = DecodingConfig.from_stored(loaded.decoding, **decoding_overrides(cfg, overrides))
    log = logging.getLogger("transformer_mt.serve")
    translator = Translator(
        [loaded.model], loaded.vocab, decoding, device=runtime.device, precision=cfg.precision, warn=log.warning
    )
    info = app_module.model_info(
        translator,
        family=loaded.model_config.get("arch", type(loaded.model).__name__),
        parameters=count_parameters(loaded.model),
        languages=loaded.languages,
        step=loaded.step,
        checkpoint=str(loaded.path),
        model_config=loaded.model_config,
        limits=cfg.server,
    )
    return app_module.Service(translator=translator, info=info, limits=cfg.server)


def _serve_extra() -> Any:
    """transformer_mt.serve.app, or a clear error naming the extra to install."""
    try:
        return import_module("transformer_mt.serve.app")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in EXTRA:
            raise ValueError(
                f"transformer-mt serve needs the serve extra ({err.name} is missing): "
                "pip install 'transformer-mt[serve]'"
            ) from None
        raise
