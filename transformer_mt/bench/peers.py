"""Other frameworks measured beside ours, each in a virtual environment of its own.

JoeyNMT, Eole, fairseq, Hugging Face transformers and CTranslate2 are never dependencies of
transformer-mt. The speed harness creates a virtual environment per peer on demand (by default under
`~/.cache/transformer-mt/peers/<name>`, or `$TRANSFORMER_MT_PEERS_DIR/<name>`), installs the same
torch version as ours and then the peer at a pinned version, and runs a small script from
`peer_scripts/` inside it. The script prints one JSON object on its last line of output; anything
that goes wrong (an install that fails, an import that fails, a crash) becomes a `PeerError` whose
message says why, so the harness reports that peer as not runnable and goes on with the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCRIPTS = Path(__file__).parent / "peer_scripts"


class PeerError(Exception):
    """A peer could not be installed or run; the message says why."""


@dataclass(frozen=True)
class Peer:
    """A framework to compare with: what to pip install next to torch, and what can stop it."""

    name: str
    packages: tuple[str, ...]
    # Python versions the peer cannot run on, with the reason, checked before installing anything.
    max_python: tuple[int, int] | None = None
    unsupported_reason: str = ""
    extra_steps: tuple[tuple[str, ...], ...] = field(default_factory=tuple)  # later pip installs


PEERS: dict[str, Peer] = {
    # JoeyNMT imports importlib_metadata without declaring it.
    "joeynmt": Peer("joeynmt", ("joeynmt==2.3.0", "importlib_metadata")),
    "eole": Peer("eole", ("eole==0.6.4",)),
    "fairseq": Peer(
        "fairseq",
        ("fairseq==0.12.2",),
        max_python=(3, 10),
        unsupported_reason=(
            "fairseq 0.12.2 (its last release) cannot be imported on Python 3.11 or later: "
            "'ValueError: mutable default <class fairseq.dataclass.configs.CommonConfig> for field "
            "common is not allowed: use default_factory' (Python 3.11's dataclasses reject its "
            "dataclass-instance defaults; facebookresearch/fairseq issue 5012, open)"
        ),
    ),
    "transformers": Peer("transformers", ("transformers==5.23.0",)),
    # The converter reads the Hugging Face model, so CTranslate2's environment has transformers too.
    "ctranslate2": Peer("ctranslate2", ("transformers==5.23.0", "ctranslate2==4.8.5")),
}


def peers_dir() -> Path:
    return Path(
        os.environ.get("TRANSFORMER_MT_PEERS_DIR", Path.home() / ".cache" / "transformer-mt" / "peers")
    )


def torch_requirement() -> str:
    """The torch our process runs, pinned for the peers (`2.13.0+cpu` -> `torch==2.13.0`)."""
    return f"torch=={torch.__version__.split('+')[0]}"


def _fingerprint(peer: Peer) -> str:
    text = json.dumps([sys.version_info[:2], torch_requirement(), peer.packages, peer.extra_steps])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unsupported(peer: Peer) -> str | None:
    """Why this peer cannot run under our Python at all, or None."""
    if peer.max_python is not None and sys.version_info[:2] > peer.max_python:
        return f"{peer.unsupported_reason} (this is Python {sys.version_info.major}.{sys.version_info.minor})"
    return None


def ensure_venv(name: str, log=print) -> Path:
    """The Python of the peer's virtual environment, created and installed the first time.

    An environment is reused while its recorded fingerprint (Python, torch and package versions)
    matches; a failed or interrupted install is started again from scratch the next time.
    """
    if name not in PEERS:
        raise PeerError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")
    peer = PEERS[name]
    reason = unsupported(peer)
    if reason:
        raise PeerError(reason)
    root = peers_dir() / name
    python = root / "bin" / "python"
    ready = root / "READY"
    fingerprint = _fingerprint(peer)
    if ready.exists() and ready.read_text().strip() == fingerprint and python.exists():
        return python
    log(f"peer {name}: creating a virtual environment in {root} (pip install; this takes a few minutes)")
    if root.exists():
        import shutil

        shutil.rmtree(root)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    install_log = root / "install.log"
    steps = [(torch_requirement(),), peer.packages, *peer.extra_steps]
    for packages in steps:
        command = [str(python), "-m", "pip", "install", "--quiet", *packages]
        with install_log.open("a") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = install_log.read_text(errors="replace").strip().splitlines()[-6:]
            raise PeerError(
                f"pip install {' '.join(packages)} failed (see {install_log}): " + " | ".join(tail)
            )
    ready.write_text(fingerprint + "\n")
    return python


def run_peer(
    name: str, script: str, args: dict, *, timeout_s: float, log=print, python: str | Path | None = None
) -> dict:
    """Run `peer_scripts/<script>` in the peer's environment with `args` (JSON); its JSON result.

    The script gets the arguments as one JSON command-line argument and prints a JSON object as the
    last line of its standard output. `python`: run it with this interpreter instead of the peer's
    own environment (one that has the peer installed already).
    """
    reason = unsupported(PEERS[name]) if name in PEERS else None
    if reason:
        raise PeerError(reason)
    if not (SCRIPTS / script).exists():
        raise PeerError(f"there is no measurement script {script} for {name} yet")
    python = python or ensure_venv(name, log=log)
    command = [str(python), str(SCRIPTS / script), json.dumps(args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the peer must not see our packages
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise PeerError(f"{script} in the {name} environment ran past {timeout_s:.0f} s") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-4:]
        raise PeerError(f"{script} failed in the {name} environment: " + " | ".join(tail))
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as err:
        raise PeerError(f"{script} in the {name} environment printed no JSON result") from err


__all__ = ["PEERS", "Peer", "PeerError", "ensure_venv", "run_peer", "peers_dir", "unsupported"]
