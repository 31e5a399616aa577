"""The `transformer-mt` command: a dict from subcommand to function over typed configs.

    transformer-mt CMD [key=value ...] [group=option ...] [--help]

Every command composes its Hydra config from `configs/` and the overrides, validates it, and only
then starts work. Errors meant for people (bad config, bad files, bad checkpoints) are printed as
one line; set TRANSFORMER_MT_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import import_module

from transformer_mt import __version__

COMMANDS: dict[str, str] = {
    "prepare": "clean a parallel corpus, train the joint sentencepiece model, binarize train/valid/test",
    "train": "train a model (prepares the data first when needed); resumes from checkpoint_last.pt",
    "evaluate": "decode a test set with beam search and score it with sacreBLEU (BLEU, chrF, signatures)",
    "translate": "translate raw text from stdin or a file, one output line per input line",
    "average": "average the parameters of the last N checkpoints (or a list) into one checkpoint",
    "serve": "a translation service (HTTP, dynamic batching) and a page that shows attention",
    "bench": "benchmarks: `bench layers` (the paper's Table 1 measured)",
}

USAGE = """usage: transformer-mt COMMAND [key=value ...] [--help]
       transformer-mt --version

Commands:
{commands}

Each command takes Hydra overrides on top of its config tree (key=value, +key=value, group=option);
`transformer-mt COMMAND --help` shows what it does and its full config. Examples:
  transformer-mt train                                 # tiny Transformer on the embedded sample
  transformer-mt train experiment=multi30k_en_de trainer.precision=bf16
  transformer-mt evaluate checkpoint=runs/sample/checkpoints/checkpoint_best.pt
  echo "The old man sees the dog." | transformer-mt translate checkpoint=runs/sample/checkpoints/checkpoint_best.pt
  torchrun --nproc_per_node=8 -m transformer_mt train experiment=wmt14_en_de_base
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
    return USAGE.format(commands=commands)


def _command(name: str) -> Callable[[list[str], bool], int | None]:
    return import_module(f"transformer_mt.cli.{name}").main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"transformer-mt {__version__}")
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"transformer-mt: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    show_help = any(a in ("-h", "--help") for a in rest)
    overrides = [a for a in rest if a not in ("-h", "--help")]
    try:
        status = _command(name)(overrides, show_help)
    except KeyboardInterrupt:
        print(f"transformer-mt {name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - turned into one line for people below
        if os.environ.get("TRANSFORMER_MT_DEBUG") or not _for_people(err):
            raise
        print(f"transformer-mt {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)


def _for_people(err: Exception) -> bool:
    """Errors whose message is the whole story; anything else keeps its traceback (a bug)."""
    from transformer_mt.checkpoint import CheckpointError
    from transformer_mt.config import ConfigError
    from transformer_mt.training.trainer import TrainingError

    return isinstance(err, (ConfigError, CheckpointError, TrainingError, ValueError, OSError))
