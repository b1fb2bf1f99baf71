"""The executor protocol, the in-process executor, and the choice between it and Ray."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from taxcut.spec.execution import ExecutorSpec

Item = TypeVar("Item")
Output = TypeVar("Output")


class Work(Protocol[Item, Output]):
    """What a worker does: picklable (it travels to every worker), compared with ``==`` (a worker keeps its setup
    while the work is equal)."""

    def setup(self) -> Callable[[Item], Output]:
        """Load what every item needs (a model on this worker's device); return the function of one item."""


@dataclass
class Timings:
    """Per finished item: the seconds its worker was busy with it (including a setup it triggered) and the
    seconds from handing it out to having its output back (the difference is the executor's overhead)."""

    busy: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)

    def overhead(self) -> float:
        """Mean seconds per item spent outside the work itself (dispatch, transfer of item and output)."""
        if not self.busy:
            return 0.0
        return sum(r - b for r, b in zip(self.round_trip, self.busy)) / len(self.busy)


class Executor(Protocol):
    """Runs a work on items and yields ``(item, output)`` as each finishes, in any order.

    Attributes:
        workers: how many items run at once (a search proposes this many per round).
        remote: whether items run in other processes (the caller's own models are then not shared).
        timings: the seconds each finished item took, busy and round trip.
    """

    workers: int
    remote: bool
    timings: Timings

    def map(self, work: Work[Item, Output], items: Iterable[Item]) -> Iterator[tuple[Item, Output]]:
        """Run ``work`` on every item.

        Args:
            work: what each worker sets up once (kept while the next call's work is equal) and runs per item.
            items: the items, each handed to one worker.

        Returns:
            An iterator of ``(item, output)`` as each item finishes, in any order; an error of the work is raised
            here, as it was raised there.
        """

    def close(self) -> None:
        """Release the workers (and a Ray instance the executor started)."""


class LocalExecutor:
    """One worker: this process, the items in order; the setup is kept while the next ``map`` has equal work."""

    workers = 1
    remote = False

    def __init__(self) -> None:
        self.timings = Timings()
        self._work: Any = None
        self._run: Callable | None = None

    def map(self, work: Work[Item, Output], items: Iterable[Item]) -> Iterator[tuple[Item, Output]]:
        for item in items:
            started = time.perf_counter()
            output = self._runner(work)(item)
            seconds = time.perf_counter() - started
            self.timings.busy.append(seconds)
            self.timings.round_trip.append(seconds)
            yield item, output

    def _runner(self, work: Work) -> Callable:
        if self._run is None or self._work != work:
            self._run = self._work = None
            gc.collect()  # the previous work's models go before the next one's load
            self._run, self._work = work.setup(), work
        return self._run

    def close(self) -> None:
        self._run = self._work = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_executor(spec: ExecutorSpec | None = None) -> Executor:
    """The executor ``spec`` asks for: in this process unless it has a ``ray`` section."""
    if spec is None or spec.ray is None:
        return LocalExecutor()
    from taxcut.execution.ray_executor import RayExecutor  # Ray is an optional extra

    return RayExecutor(spec.ray)
