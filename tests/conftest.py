"""Shared test set-up: one torch thread per test process (pytest-xdist runs one process per core),
the small corpus and its prepared run folder that the training tests share (a module may define its
own), and no background process left running after a test."""

from pathlib import Path

import pytest
import torch

from tests.helpers import Background, files_overrides, run_cli, write_small_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    """A run folder whose data/ is prepared once; tests copy it to skip the sentencepiece step."""
    run = tmp_path_factory.mktemp("prepared")
    result = run_cli("prepare", *files_overrides(corpus), f"output_dir={run}")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    while Background.running:
        Background.running.pop().kill()
