"""What is shipped: the sdist carries the licence and everything the tests need, the metadata
declares the licence as an SPDX expression, and `transformer-mt --version` names the version."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO, run_cli
from transformer_mt import __version__


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    build = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


def test_the_sdist_carries_the_licence_and_what_the_tests_import(sdist):
    root = f"transformer_mt-{__version__}"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
        metadata = archive.extractfile(f"{root}/PKG-INFO").read().decode()
    for path in ("LICENSE", "tests/conftest.py", "tests/helpers.py", "tests/test_cli.py", "pyproject.toml"):
        assert f"{root}/{path}" in names, path
    assert not any("__pycache__" in name for name in names)
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert f"Version: {__version__}" in metadata


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"transformer-mt {__version__}\n"
