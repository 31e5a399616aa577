"""`transformer-mt serve` (transformer_mt/serve/): the API, its limits, dynamic batching, equality
with `translate`, and a graceful SIGTERM of a real server process.

The application runs in-process under Starlette's test client (its lifespan starts the batcher's
worker thread as the real server does) over a real checkpoint of a small random Transformer; the
shutdown test starts `python -m transformer_mt serve` on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import SAMPLE_SENTENCES, run_cli, write_random_checkpoint

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'transformer-mt[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from starlette.testclient import TestClient  # noqa: E402

from transformer_mt.cli.serve import load_service  # noqa: E402
from transformer_mt.config import compose_config, to_objects  # noqa: E402
from transformer_mt.serve import api, app  # noqa: E402
from transformer_mt.serve.batcher import Batcher  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("serve") / "checkpoint.pt")


def service_for(checkpoint, *overrides: str):
    args = [f"checkpoint={checkpoint}", "device=cpu", *overrides]
    return load_service(to_objects(compose_config("serve", args)), args, app)


@pytest.fixture(scope="module")
def service(checkpoint):
    return service_for(checkpoint, "server.max_lines=8", "server.max_chars=200", "server.batch_window_ms=20")


@pytest.fixture(scope="module")
def client(service):
    with TestClient(app.create_app(service)) as client:
        yield client


def translate(client, **body):
    return client.post("/translate", json=body)


# ---------------------------------------------------------------------------------------------
# The API


def test_translations_come_back_in_order_one_list_per_line(client, service):
    lines = [SAMPLE_SENTENCES[0], "", SAMPLE_SENTENCES[1], SAMPLE_SENTENCES[0]]
    answer = translate(client, text=lines, nbest=2)
    assert answer.status_code == 200, answer.text
    found = answer.json()["translations"]
    expected = service.decode(api.decoding_settings(service.translator.cfg, api.DecodingOptions(nbest=2), service.limits), lines)
    assert [[h["text"] for h in hyps] for hyps in found] == [[t.text for t in hyps] for hyps in expected]
    assert found[1] == [{"text": "", "score": 0.0, "tokens": []}]  # an empty line stays one empty line
    assert len(found[0]) == 2 and found[0][0]["score"] >= found[0][1]["score"]  # n-best, best first
    assert found[0] == found[3]  # the same line, the same answer
    assert answer.json()["decoding"]["nbest"] == 2 and answer.json()["decoding"]["beam"] == 4


def test_info_describes_the_model_and_health_the_queue(client, checkpoint):
    info = client.get("/info").json()
    assert info["family"] == "transformer" and info["step"] == 7
    assert info["languages"] == {"source": "en", "target": "de"}
    assert info["vocab_size"] == 120 and info["parameters"] > 10_000
    assert info["decoding"]["max_len_b"] == 6  # the checkpoint's stored settings are the defaults
    assert info["limits"]["max_lines"] == 8 and info["checkpoint"] == str(checkpoint)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["pending"] == 0


def test_the_page_and_its_files_are_served_without_anything_external(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/page.js", "/static/page.css"):
        assert client.get(asset).status_code == 200
    text = page.text + client.get("/static/page.js").text + client.get("/static/page.css").text
    assert "http://" not in text and "https://" not in text and "//cdn" not in text


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"text": ["a"', "malformed JSON"),
        (b"", "empty body"),
        (b"\xff\xfe\x00", "malformed JSON"),
        (b"[" * 30_000 + b"]" * 30_000, "malformed JSON"),  # nesting deeper than the parser goes
        (b'"just a string"', "Input should be a valid dictionary"),
        (b'{"text": "one line, not a list"}', "text: Input should be a valid list"),
        (b'{"text": ["a", 3]}', "text.1: Input should be a valid string"),
        (b'{"text": ["a"], "beam": "4"}', "beam: Input should be a valid integer"),
        (b'{"text": ["a"], "beam": true}', "beam: Input should be a valid integer"),
        (b'{"text": ["a"], "bem": 4}', "bem: Extra inputs are not permitted"),
        (b'{"text": ["a"], "beam": 0}', "beam=0 must be at least 1"),
        (b'{"text": ["a"], "beam": 2, "nbest": 3}', "nbest=3 must be between 1 and beam=2"),
        (b'{"text": ["a"], "beam": 1000}', "over this server's limit of 16"),
        (b'{"text": ["a"], "lenpen": NaN}', "lenpen=nan must be a finite number"),
        (b'{"text": ["a"], "temperature": 0.5}', "only apply with sampling=true"),
        (b'{"text": ["a"], "sampling": true, "seed": -1}', "seed=-1"),
    ],
)
def test_malformed_or_mistyped_requests_are_400_saying_what_was_wrong(client, body, message):
    answer = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_limits_are_413_with_the_limit_in_the_message(client):
    too_many = translate(client, text=["a"] * 9)
    assert too_many.status_code == 413 and "the limit is 8" in too_many.json()["error"]
    too_long = translate(client, text=["fine", "x" * 201])
    assert too_long.status_code == 413
    assert "line 1 has 201 characters; the limit is 200" in too_long.json()["error"]
    huge = client.post("/translate", content=b'{"text": ["' + b"a" * 3_000_000 + b'"]}')
    assert huge.status_code == 413 and "limit is" in huge.json()["error"]
    assert translate(client, text=["x" * 200]).status_code == 200  # at the limit is fine
    assert client.get("/health").json()["status"] == "ok"  # and nothing of this hurt the server


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/translate").status_code == 405


def test_opennmt_format_answers_as_opennmt_py_does(client, service):
    lines = [SAMPLE_SENTENCES[2], SAMPLE_SENTENCES[3]]
    answer = client.post("/translator/translate", json=[{"src": line, "id": 100} for line in lines])
    assert answer.status_code == 200, answer.text
    expected = service.decode(service.translator.cfg, lines)
    ranks = answer.json()
    assert len(ranks) == 1  # one list per n-best rank (the server's nbest is 1)
    assert [entry["src"] for entry in ranks[0]] == lines
    assert [entry["tgt"] for entry in ranks[0]] == [hyps[0].text for hyps in expected]
    assert all(entry["n_best"] == 1 and isinstance(entry["pred_score"], float) for entry in ranks[0])
    bad = client.post("/translator/translate", json=[{"source": "a", "id": 100}])
    assert bad.status_code == 400 and bad.json()["status"] == "error" and "0.src" in bad.json()["error"]
    assert client.post("/translator/translate", json=[{"src": "a"}] * 9).status_code == 413


def test_opennmt_nbest_lists_are_one_list_per_rank(checkpoint):
    service = service_for(checkpoint, "decoding.nbest=3")
    with TestClient(app.create_app(service)) as client:
        answer = client.post("/translator/translate", json=[{"src": SAMPLE_SENTENCES[0], "id": 1}, {"src": "", "id": 1}])
    ranks = answer.json()
    assert len(ranks) == 3 and all(len(rank) == 2 for rank in ranks)
    scores = [rank[0]["pred_score"] for rank in ranks]
    assert scores == sorted(scores, reverse=True)
    assert [rank[1]["tgt"] for rank in ranks] == ["", "", ""]


def test_attention_maps_have_a_row_per_target_piece_and_a_column_per_source_piece(client, service):
    line = SAMPLE_SENTENCES[4]
    best = translate(client, text=[line]).json()["translations"][0][0]
    maps = client.post("/attention", json={"text": line, "tokens": best["tokens"]}).json()
    assert maps["source"] == service.translator.vocab.pieces(line) + ["</s>"]
    assert len(maps["target"]) == len(best["tokens"]) + 1 and maps["text"] == best["text"]
    assert len(maps["cross"]) == 2 and len(maps["encoder"]) == 2 and len(maps["decoder"]) == 2
    for layer in maps["cross"]:
        assert len(layer) == 4  # heads
        for head in layer:
            assert len(head) == len(maps["target"]) and {len(row) for row in head} == {len(maps["source"])}
            assert all(abs(sum(row) - 1) < 1e-2 for row in head)
    default = client.post("/attention", json={"text": line}).json()  # no tokens: the best translation
    assert default["target"] == maps["target"]
    assert client.post("/attention", json={"text": line, "tokens": [0]}).status_code == 400
    assert client.post("/attention", json={"text": "  "}).status_code == 400


# ---------------------------------------------------------------------------------------------
# Dynamic batching


def test_concurrent_requests_share_searches_and_options_do_not_mix(checkpoint):
    service = service_for(checkpoint, "server.batch_window_ms=300")
    requests = [
        {"text": [SAMPLE_SENTENCES[i % 5], SAMPLE_SENTENCES[(i + 2) % 5]], "beam": 1 + i % 2} for i in range(6)
    ]
    with TestClient(app.create_app(service)) as client, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: client.post("/translate", json=body), requests))
        stats = client.get("/health").json()
    assert [a.status_code for a in answers] == [200] * 6
    assert stats["requests"] == 6 and stats["lines"] == 12
    assert stats["searches"] < 6  # requests of one window were decoded together ...
    assert stats["searches"] >= 2  # ... but beam 1 and beam 2 never in one search
    for body, answer in zip(requests, answers, strict=True):
        cfg = api.decoding_settings(service.translator.cfg, api.DecodingOptions(beam=body["beam"]), service.limits)
        alone = service.decode(cfg, body["text"])
        assert [hyps[0]["text"] for hyps in answer.json()["translations"]] == [h[0].text for h in alone]
        assert answer.json()["decoding"]["beam"] == body["beam"]


def test_a_full_queue_is_503_with_retry_after(checkpoint):
    service = service_for(checkpoint, "server.max_queue=1", "server.batch_window_ms=0", "server.retry_after_s=3")
    gate = threading.Event()

    def held_decode(cfg, lines):  # the real decode, once the test lets it start
        gate.wait(30)
        return service.decode(cfg, lines)

    batcher = Batcher(held_decode, api.settings_key, window_s=0.0, max_queue=1, max_batch_lines=256)
    with TestClient(app.create_app(service, batcher)) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/translate", json={"text": [SAMPLE_SENTENCES[0]]})
        wait_until(lambda: batcher.pending == 1 and batcher.queued == 0)  # the worker holds it
        second = pool.submit(client.post, "/translate", json={"text": [SAMPLE_SENTENCES[1]]})
        wait_until(lambda: batcher.queued == 1)  # queued: the queue is full
        refused = client.post("/translate", json={"text": [SAMPLE_SENTENCES[2]]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert "queue is full" in refused.json()["error"]
        onmt = client.post("/translator/translate", json=[{"src": "a", "id": 1}])
        assert onmt.status_code == 503 and onmt.headers["retry-after"] == "3"
        gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert client.post("/translate", json={"text": ["a"]}).status_code == 200  # room again
        assert client.get("/health").json()["refused"] == 2


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Equality with translate, and a real server process


def test_service_translates_exactly_as_translate_does(client, checkpoint, tmp_path):
    lines = SAMPLE_SENTENCES + ["", "The woman reads."]
    served = translate(client, text=lines, nbest=2).json()["translations"]
    source = tmp_path / "input.en"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli = run_cli("translate", f"checkpoint={checkpoint}", f"input={source}", "device=cpu", "decoding.nbest=2")
    assert cli.returncode == 0, cli.stderr[-2000:]
    rows = [row.split("\t") for row in cli.stdout.splitlines()]
    expected: dict[int, list[tuple[str, float]]] = {}
    for index, _rank, score, text in rows:
        expected.setdefault(int(index), []).append((text, float(score)))
    for index, hyps in enumerate(served):
        assert [h["text"] for h in hyps] == [text for text, _ in expected[index]][: len(hyps)]
        assert [round(h["score"], 4) for h in hyps] == pytest.approx([s for _, s in expected[index]][: len(hyps)], abs=2e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, *overrides: str) -> tuple[subprocess.Popen, str]:
    """`python -m transformer_mt serve` on a free loopback port, once it answers /health."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "transformer_mt", "serve", f"checkpoint={checkpoint}", f"port={port}",
         "device=cpu", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not come up within 120 s")


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(checkpoint):
    process, url = start_server(checkpoint, "server.batch_window_ms=1000")
    try:
        bodies = [{"text": [SAMPLE_SENTENCES[i], SAMPLE_SENTENCES[i + 1]]} for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(httpx.post, f"{url}/translate", json=body, timeout=60) for body in bodies]
            # all three are taken by the worker, which waits out its 1 s window for more
            wait_until(lambda: httpx.get(f"{url}/health", timeout=5).json()["pending"] == 3)
            process.send_signal(signal.SIGTERM)
            results = [answer.result() for answer in answers]
        assert [r.status_code for r in results] == [200, 200, 200]
        assert [len(r.json()["translations"]) for r in results] == [2, 2, 2]
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert "Waiting for connections to close" in log  # they were still in flight at the signal
        assert "decoder drained" in log and "stopped by SIGTERM" in log
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_without_a_checkpoint_is_one_clear_error():
    result = run_cli("serve")
    assert result.returncode == 2 and "checkpoint=PATH is required" in result.stderr


def test_answers_are_json_serialisable_floats(client):
    body = translate(client, text=[SAMPLE_SENTENCES[0]]).json()
    json.dumps(body, allow_nan=False)  # no NaN or Infinity reaches a client
