"""The two Python steps of scripts/gpu_check.sh.

torchrun --standalone --nproc_per_node=1 scripts/gpu_check.py probe --device cuda
    One rank's process group as `runtime.init_runtime` makes it for several (NCCL, bound to the
    rank's GPU with device_id; gloo on a CPU), the collectives the trainer uses, and one step of
    DistributedDataParallel with device_ids as `Runtime.wrap` builds it. With one GPU the training
    run under torchrun has no process group at all (one rank needs none), so this is where NCCL and
    DDP on CUDA are seen to work.

python scripts/gpu_check.py summary --stages STAGES.tsv --out OUT_DIR --run RUN_DIR ...
    One line per stage (status, seconds, and what it measured), and OUT_DIR/summary.json. Exit
    status 0 when every stage passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def probe(device_name: str) -> None:
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device_name == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=60), device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    world = dist.get_world_size()
    values = torch.arange(4, dtype=torch.float64, device=device) + rank
    dist.all_reduce(values)
    expected = sum(torch.arange(4, dtype=torch.float64) + r for r in range(world))
    assert torch.equal(values.cpu(), expected), (values, expected)
    box = [{"from": rank}]
    dist.broadcast_object_list(box, src=0)
    assert box[0] == {"from": 0}
    dist.barrier()
    ddp_step(device)
    backend = dist.get_backend()
    version = ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else "-"
    dist.destroy_process_group()
    print(
        f"process group ok: backend {backend} (NCCL {version}), {world} rank(s): all_reduce, broadcast, "
        "barrier, a DDP step"
    )


def ddp_step(device: torch.device) -> None:
    """One backward through DDP (device_ids on CUDA, as Runtime.wrap passes them): its all-reduced
    gradients, averaged over the ranks that all computed the same thing, equal a plain module's."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    copy = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    copy.load_state_dict(plain.state_dict())
    ddp = DistributedDataParallel(copy, device_ids=[device] if device.type == "cuda" else None)
    inputs = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(device)
    plain(inputs).square().mean().backward()
    ddp(inputs).square().mean().backward()
    for a, b in zip(plain.parameters(), copy.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad)


def _line(log: str, prefix: str | None) -> str:
    """The last line of the log that starts with `prefix` (nothing if none does)."""
    lines = [line for line in log.splitlines() if prefix and line.startswith(prefix)]
    return lines[-1] if lines else ""


def _pytest(out: Path) -> str:
    path = out / "pytest.xml"
    if not path.is_file():
        return "no pytest.xml"
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [
        f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    text = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    return text + (f" ({', '.join(failed[:6])}{' ...' if len(failed) > 6 else ''})" if failed else "")


def _torchrun(run: Path) -> str:
    log = run / "train.log"
    if not log.is_file():
        return "no train.log"
    text = log.read_text(errors="replace")
    where = re.findall(r"(\d+ rank\(s\) on \w+, \w+)", text)
    steps = re.findall(r"step (\d+) \| epoch \S+ \| loss (\S+) .*?\| tok/s (\d+)", text)
    valid = re.findall(r"valid \| .*? \| step \d+", text)
    stopped = re.findall(r"stopped: (.*)", text)
    parts = [where[-1] if where else "?"]
    if steps:
        step, loss, rate = steps[-1]
        parts.append(f"step {step} loss {loss} bits, {int(rate):,} target tok/s")
    parts += [v.replace(" | ", " ") for v in valid[-1:]] + [f"stopped: {s}" for s in stopped[-1:]]
    return "; ".join(parts)


def _bench_train(path: Path) -> str:
    if not path.is_file():
        return f"no {path.name}"
    payload = json.loads(path.read_text())
    parts = []
    for row in payload["rows"]:
        name = row["system"] + (" compiled" if row.get("compiled") else "")
        if row["status"] == "ok":
            parts.append(
                f"{name} {row['precision']} {row['tokens_per_second']:,.0f} tgt tok/s MFU {row['mfu']:.1%}"
                + (f" ({row['target']}: {'met' if row['met'] else 'missed'})" if "target" in row else "")
            )
        else:
            parts.append(f"{name} {row['precision']}: {row['status']} ({row.get('reason', '')[:120]})")
    peaks = ", ".join(f"{p} {v / 1e12:.3g} TFLOP/s" for p, v in payload["peak_flops"].items())
    return "; ".join(parts) + f"; measured matmul peak {peaks}"


def _bench_decode(path: Path) -> str:
    if not path.is_file():
        return f"no {path.name}"
    payload = json.loads(path.read_text())
    parts = [
        f"{row['precision']} beam {row['beam']} {row['tokens_per_second']:,.0f} tok/s"
        if row["status"] == "ok"
        else f"{row['system']} {row['precision']} beam {row['beam']}: {row['status']}"
        for row in payload["rows"]
    ]
    return "; ".join(parts)


def summary(args: argparse.Namespace) -> int:
    out, rows = Path(args.out), []
    log = Path(args.log).read_text(errors="replace") if Path(args.log).is_file() else ""
    for line in Path(args.stages).read_text().splitlines():
        name, status, rc, seconds, limit = line.split("\t")
        if status == "not_selected":
            detail = ""
        elif name == "pytest":
            detail = _pytest(out)
        elif name == "torchrun":
            detail = _torchrun(Path(args.run))
        elif name.startswith("bench_train_"):
            detail = _bench_train(out / f"{name}.json")
        elif name == "bench_decode":
            detail = _bench_decode(out / "bench_decode.json")
        else:  # setup and process_group: the line each prints when it succeeds
            detail = _line(log, {"setup": "imports: ", "process_group": "process group ok: "}.get(name))
        rows.append(
            {
                "stage": name,
                "status": status,
                "exit": rc,
                "seconds": int(seconds),
                "timeout_s": int(limit),
                "detail": detail,
            }
        )
    failed = [r["stage"] for r in rows if r["status"] not in ("ok", "not_selected")]
    result = {
        "ok": not failed,
        "failed": failed,
        "seconds": args.seconds,
        "budget_s": args.budget,
        "stages": rows,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(r["stage"]) for r in rows) if rows else 0
    for r in rows:
        print(f"gpu_check: {r['stage']:<{width}}  {r['status']:<12} {r['seconds']:>4} s  {r['detail']}")
    every = "every selected stage" if any(r["status"] == "not_selected" for r in rows) else "every stage"
    verdict = f"{every} passed" if not failed else f"{len(failed)} stage(s) did not pass: {', '.join(failed)}"
    print(f"gpu_check: {args.seconds} s of the {args.budget} s budget; {verdict}; details in {out}")
    return 0 if not failed else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    probe_args = commands.add_parser("probe")
    probe_args.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    summary_args = commands.add_parser("summary")
    summary_args.add_argument("--stages", required=True)
    summary_args.add_argument("--out", required=True)
    summary_args.add_argument("--run", required=True)
    summary_args.add_argument("--log", required=True)
    summary_args.add_argument("--budget", type=int, required=True)
    summary_args.add_argument("--seconds", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "probe":
        probe(args.device)
        return 0
    return summary(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
