"""Scale-out overhead (target: bench/README.md), measured side by side in one run.

The quick lab's sweep (the demo's: MA grid of 11, three block profiles, one RAFT checkpoint; 15 candidates) runs
three times into fresh folders: in this process, then on a local Ray cluster with 1 and with 2 workers. For each
it prints the wall time and, from the executor's own timings, the median seconds a worker spent evaluating one
candidate and the mean per-candidate overhead (handing the candidate out, getting its result back: round trip
minus the worker's busy time). Target: overhead < 10% of a candidate's evaluation. It also checks that the three
results files agree record for record (timings aside).

``--swap`` adds the cost of one candidate swap with the sources on the device against sources in host memory
(``executor: {sources: host}``), on a ~60M-parameter random Llama, and scales the host link's throughput to 7B and
70B bfloat16 models (2 copies x 2 bytes x parameters per swap). It is meaningful on a GPU only.

    python bench/sweep_scaling.py [--lab DIR] [--device auto] [--gpus-per-worker G] [--swap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from taxcut.execution import LocalExecutor
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import demo_sweep_spec
from taxcut.spec.execution import RaySettings
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

CACHE = Path(__file__).parent / ".cache"
TIMING_KEYS = ("seconds", "finished")


def comparable(results: Path) -> list[dict]:
    """The records of a results file, in candidate order, without what depends on timing."""
    records = []
    for line in results.read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        if isinstance(record.get("cost"), dict):
            record["cost"] = {k: v for k, v in record["cost"].items() if k != "seconds"}
        records.append(record)
    return sorted(records, key=lambda r: r["candidate_id"])


def one_sweep(lab, out: Path, device: str, executor) -> dict:
    spec = demo_sweep_spec(lab, out).model_copy(update={"device": device})
    started = time.perf_counter()
    report = run_sweep(spec, progress=False, executor=executor)
    wall = time.perf_counter() - started
    timings = executor.timings
    return {
        "wall": wall,
        "candidates": len(report.rows),
        "evaluation": statistics.median(timings.busy),
        "overhead": timings.overhead(),
        "results": out / RESULTS_FILE,
    }


def swap_costs(device: str, repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_speed import build_pair  # the ~60M random Llama pair, cached

    from taxcut.spec.candidates import ma_candidate
    from taxcut.sweep.resident import ResidentModel

    sft, aligned = build_pair()
    for sources in ("device", "host"):
        resident = ResidentModel(sft, aligned, device=device, sources=sources)
        times = []
        for index in range(repeats + 1):
            if resident.model.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            resident.apply(ma_candidate(0.1 + 0.05 * index))
            if resident.model.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times[1:])
        moved = sum(t.numel() * t.element_size() for t in [*resident.sft.values(), *resident.aligned.values()])
        print(
            f"swap, sources on {sources:6}: {seconds * 1000:8.1f} ms for {moved / 1e9:.2f} GB of sources "
            f"({moved / seconds / 1e9:.1f} GB/s)"
        )
        if sources == "host":
            for name, parameters in (("7B", 7e9), ("70B", 70e9)):
                print(
                    f"  estimate {name} bfloat16, sources in host memory: {2 * 2 * parameters / (moved / seconds):.1f} "
                    "s per candidate swap"
                )
        del resident


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", type=Path, default=CACHE / "quick-lab", help="the quick lab (built once)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per Ray worker (default: 1 with a GPU; 0.5 to put two workers on one GPU)",
    )
    parser.add_argument("--swap", action="store_true", help="also time a candidate swap with sources on the host")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import ray

    lab = build_lab(LabConfig.quick(0), args.lab, log=lambda *_: None)
    gpus = torch.cuda.device_count()
    threads = torch.get_num_threads()
    print(
        f"machine: {os.cpu_count()} CPU cores, {gpus} GPUs ({torch.cuda.get_device_name(0) if gpus else 'none'}); "
        f"torch threads: {threads} by default, 1 in-process and per worker here"
    )
    torch.set_num_threads(1)  # like a Ray worker of 1 CPU: the in-process run is the 1-worker reference
    scratch = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    runs = {}
    try:
        with LocalExecutor() as executor:
            runs["in-process"] = one_sweep(lab, scratch / "local", args.device, executor)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, address="local", logging_level="WARNING")
        from taxcut.execution.ray_executor import RayExecutor

        per_worker = args.gpus_per_worker
        for workers in (1, 2):
            if per_worker is None and gpus:
                per_worker = 1.0 if gpus >= 2 else 0.5
            settings = RaySettings(workers=workers, cpus_per_worker=1, gpus_per_worker=per_worker or 0.0)
            with RayExecutor(settings) as executor:
                runs[f"Ray, {workers} worker{'s' if workers > 1 else ''}"] = one_sweep(
                    lab, scratch / f"ray-{workers}", args.device, executor
                )
        ray.shutdown()
        print(
            f"\nquick-lab sweep, {runs['in-process']['candidates']} candidates, device {args.device}"
            f" (Ray workers: 1 CPU each{f', {per_worker:g} GPU each' if per_worker else ''}):"
        )
        print(f"{'executor':<16}{'wall s':>9}{'eval s/cand':>13}{'overhead ms/cand':>18}{'overhead %':>12}")
        for name, run in runs.items():
            share = 100 * run["overhead"] / run["evaluation"]
            print(
                f"{name:<16}{run['wall']:>9.1f}{run['evaluation']:>13.3f}{run['overhead'] * 1000:>18.1f}{share:>11.1f}%"
            )
        one, two = runs["Ray, 1 worker"]["wall"], runs["Ray, 2 workers"]["wall"]
        print(f"speed-up 2 workers vs 1: {one / two:.2f}x")
        reference = comparable(runs["in-process"]["results"])
        same = all(comparable(run["results"]) == reference for run in runs.values())
        print(f"results equal record for record (timings aside): {'yes' if same else 'NO'}")
        if args.swap:
            print()
            swap_costs("cuda" if gpus else "cpu", args.repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
