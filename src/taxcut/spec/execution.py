"""Where work that evaluates many candidates runs: in this process (the default) or on Ray workers.

```yaml
executor:
  ray: {address: auto, workers: 8, gpus_per_worker: 1, cpus_per_worker: 4}
  sources: device        # or host: theta_sft and theta_aligned kept in host memory (models past one GPU)
```

The executor itself is :mod:`taxcut.execution`; this is only its typed settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RaySettings(BaseModel):
    """A Ray cluster of workers, each an actor that keeps its model loaded between items.

    ``address``: ``auto`` (a cluster started with ``ray start``, or ``RAY_ADDRESS``), ``ray://HOST:PORT`` or
    ``HOST:PORT``, ``local`` (a new single-machine cluster), or unset: a running cluster if there is one, else a
    new local one. ``workers``: how many actors (default: as many as the cluster's GPUs, or CPUs, allow).
    ``gpus_per_worker``: default 1 where the cluster has GPUs, else 0. ``max_retries``: how often an item whose
    worker died (killed, out of memory) is tried again on a new worker before the run fails.
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    workers: int | None = Field(None, ge=1)
    gpus_per_worker: float | None = Field(None, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    max_retries: int = Field(2, ge=0)


class ExecutorSpec(BaseModel):
    """In-process unless ``ray`` is given; ``sources`` says where each worker keeps the two source models."""

    model_config = ConfigDict(extra="forbid")

    ray: RaySettings | None = None
    sources: Literal["device", "host"] = "device"
