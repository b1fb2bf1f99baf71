"""Run one kind of work on many items -- candidates to evaluate, HMA fits, shards of prompts to sample -- in this
process or on Ray workers, with the results coming back to the one process that records them.

A :class:`Work` is a small picklable description (a spec, paths, settings) whose :meth:`Work.setup` loads what
every item needs -- a resident model on the worker's device -- and returns the function of one item. An
:class:`Executor` sets a work up once per worker, keeps it while the next batch asks for equal work, and yields
``(item, output)`` as each item finishes. The caller stays the only writer of results: it records each output as
it arrives, so a killed run resumes from what it recorded.

- :class:`LocalExecutor` (the default): one worker, this process, items in order.
- :class:`~taxcut.execution.ray_executor.RayExecutor` (extra ``taxcut[ray]``): one Ray actor per worker, items
  handed out as workers free up; an item whose worker dies is retried on a new worker.
"""

from taxcut.execution.executor import Executor, LocalExecutor, Work, open_executor

__all__ = ["Executor", "LocalExecutor", "Work", "open_executor"]
