"""Clean a parallel corpus, train the joint sentencepiece model and binarize train/valid/test.

Writes <output_dir>/data/ and reuses it while the inputs, the vocabulary and the cleaning settings
are unchanged (its manifest holds their hashes). `train` runs this step itself when needed."""

from __future__ import annotations

from transformer_mt.cli.common import load_config
from transformer_mt.data.prepare import prepare_data
from transformer_mt.run_folder import own_run_folder


def main(overrides: list[str], show_help: bool) -> None:
    run = load_config("prepare", overrides, show_help, __doc__)
    if run is None:
        return
    with own_run_folder(run.output_dir, "prepare"):  # not while a train or prepare writes it
        prepare_data(run.data, run.output_dir)
