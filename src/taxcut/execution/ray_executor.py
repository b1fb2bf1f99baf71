"""The Ray executor: one actor per worker, each keeping its work's setup (a resident model on its GPU) between items.

Items are handed out as workers free up (one in flight per worker, so a slow item never holds up the others), and
each output comes back to the caller, which alone records it. A worker that dies while it holds an item (its
process killed, out of memory, its node lost) is replaced by a new actor and the item goes back to the front of
the queue for the next free worker; an item that has killed ``max_retries + 1`` workers fails the run, naming it.
An error raised by the work itself (a bad candidate, a NaN score) is raised in the caller as it was raised.

Every worker reads the models and data at the paths the work names: on a cluster of several machines, keep them
on a shared filesystem (or at the same paths on every node). Ray is imported here only (extra ``taxcut[ray]``).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from taxcut.errors import TaxcutError, first_line
from taxcut.execution.executor import Item, Output, Timings, Work
from taxcut.spec.execution import RaySettings

MISSING = "the Ray executor needs the extra: pip install 'taxcut[ray]'"


def _ray():
    try:
        import ray
    except ImportError:
        raise TaxcutError(MISSING) from None
    return ray


class _Worker:
    """A Ray actor's state: the setup of the last work it ran, kept while the next item brings the same work."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.run = None

    def pid(self) -> int:
        return os.getpid()

    def call(self, key: str, boxed_work: list, item: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        if key != self.key:
            import ray

            self.run = self.key = None
            gc.collect()  # the previous work's models go before the next one's load
            self.run, self.key = ray.get(boxed_work[0]).setup(), key
        output = self.run(item)
        return output, time.perf_counter() - started


class RayExecutor:
    """Runs works on Ray actors (:mod:`taxcut.execution.ray_executor`). Ray is joined (or started) and the actors
    created on first use, so a run with nothing left to do starts nothing."""

    remote = True

    def __init__(self, settings: RaySettings | None = None):
        _ray()  # the extra is missing: say so now, before any work
        self.settings = settings if settings is not None else RaySettings()
        self.timings = Timings()
        self.actors: list | None = None
        self.replaced = 0  # workers that died and were replaced
        self._started_ray = False

    @property
    def workers(self) -> int:
        return len(self._started())

    def _started(self) -> list:
        if self.actors is None:
            self._start()
        return self.actors

    def _start(self) -> None:
        ray = _ray()
        settings = self.settings
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            try:
                ray.init(address=settings.address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise TaxcutError(
                    f"Ray cluster {settings.address or '(auto)'}: cannot connect "
                    f"({first_line(exc)}); start one with 'ray start --head' or drop the address "
                    "for a local one"
                ) from None
        resources = ray.cluster_resources()
        gpus = settings.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        cpus = settings.cpus_per_worker
        fits = int(min(resources.get("GPU", 0) // gpus if gpus else float("inf"), resources.get("CPU", 0) // cpus))
        workers = settings.workers or max(1, fits)
        if workers > fits:
            self.close()
            raise TaxcutError(
                f"executor.ray: {workers} workers of {cpus:g} CPUs and {gpus:g} GPUs do not fit "
                f"the cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); "
                "ask for fewer workers or smaller ones"
            )
        self._actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(_Worker)
        self.actors = [self._actor_class.remote() for _ in range(workers)]
        ray.get([actor.pid.remote() for actor in self.actors])  # every worker's process is up before work starts

    def pids(self) -> list[int]:
        """The process id of every worker (each actor's own process)."""
        ray = _ray()
        return ray.get([actor.pid.remote() for actor in self._started()])

    def map(self, work: Work[Item, Output], items: Iterable[Item]) -> Iterator[tuple[Item, Output]]:
        ray = _ray()
        from ray import cloudpickle
        from ray.exceptions import (
            ActorUnschedulableError,
            NodeDiedError,
            OutOfMemoryError,
            RayActorError,
            RayTaskError,
            WorkerCrashedError,
        )

        items = list(items)
        if not items:
            return
        self._started()
        key = hashlib.sha256(cloudpickle.dumps(work)).hexdigest()
        boxed = [ray.put(work)]  # in a list, so a worker fetches it only when its setup is not this work's
        queue = deque(range(len(items)))
        deaths = [0] * len(items)
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, int, float]] = {}  # object ref -> (worker slot, item index, handed out at)
        try:
            while queue or running:
                while queue and idle:
                    slot, index = idle.pop(0), queue.popleft()
                    ref = self.actors[slot].call.remote(key, boxed, items[index])
                    running[ref] = (slot, index, time.perf_counter())
                (ref,), _ = ray.wait(list(running), num_returns=1)
                slot, index, handed_out = running.pop(ref)
                try:
                    output, busy = ray.get(ref)
                except RayTaskError as exc:  # the work raised: raise it here as it was raised there
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from None
                except (
                    RayActorError,
                    WorkerCrashedError,
                    OutOfMemoryError,
                    NodeDiedError,
                    ActorUnschedulableError,
                ) as exc:
                    deaths[index] += 1
                    if deaths[index] > self.settings.max_retries:
                        raise TaxcutError(
                            f"item {_describe(items[index])} lost {deaths[index]} workers in a row "
                            f"(last: {first_line(exc)}); it may not fit a worker's memory"
                        ) from None
                    self._replace(slot)
                    self.replaced += 1
                    queue.appendleft(index)  # the next free worker takes it
                    idle.append(slot)
                    continue
                idle.append(slot)
                self.timings.busy.append(busy)
                self.timings.round_trip.append(time.perf_counter() - handed_out)
                yield items[index], output
        finally:
            for slot, _, _ in running.values():  # stopped early: no worker goes on with an item nobody will record
                self._replace(slot)

    def _replace(self, slot: int) -> None:
        ray = _ray()
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._actor_class.remote()

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors or []:
            ray.kill(actor, no_restart=True)
        self.actors = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(item: Any) -> str:
    """An item as an error message names it: a candidate by its label and id, anything else by its repr."""
    for candidate in (item, *(item if isinstance(item, tuple) else ())):
        if hasattr(candidate, "label") and hasattr(candidate, "id"):
            return f"{candidate.label} ({candidate.id})"
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."
