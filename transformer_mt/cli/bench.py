"""Benchmarks: `transformer-mt bench NAME [key=value ...]`.

    layers   the paper's Table 1 measured: time, FLOPs, memory, sequential operations and path length
             of self-attention, restricted self-attention, LSTM and convolutions, over n and d
    train    training speed (tokens/s, MFU) of the presets against reference implementations
    decode   decoding speed (sentences/s, tokens/s) of greedy and beam search against references
    serve    a loopback load test of `transformer-mt serve`: concurrent clients against one at a time
    prepare  what `prepare` costs as the corpus grows: time per stage, pairs/s, peak memory (synthetic corpora)
    checkpoint save and load time of a large checkpoint with and without its digest

`transformer-mt bench NAME --help` shows each benchmark's options and defaults."""

from __future__ import annotations

from importlib import import_module

BENCHMARKS: dict[str, str] = {
    "layers": "transformer_mt.bench.layers",
    "train": "transformer_mt.bench.train",
    "decode": "transformer_mt.bench.decode",
    "serve": "transformer_mt.bench.serve",
    "prepare": "transformer_mt.bench.prepare",
    "checkpoint": "transformer_mt.bench.checkpoint_io",
}


def main(overrides: list[str], show_help: bool) -> int | None:
    if not overrides:
        if show_help:
            print(f"transformer-mt bench: {__doc__.strip()}")
            return 0
        raise ValueError(f"name a benchmark: transformer-mt bench {{{'|'.join(BENCHMARKS)}}} [key=value ...]")
    name, rest = overrides[0], overrides[1:]
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)}")
    try:
        module = import_module(BENCHMARKS[name])
    except ModuleNotFoundError as err:
        if err.name != BENCHMARKS[name]:
            raise  # a missing dependency inside the benchmark: keep its own message and traceback
        raise ValueError(
            f"benchmark {name!r} is not available in this installation ({err.name} is missing)"
        ) from None
    return module.main(rest, show_help)
