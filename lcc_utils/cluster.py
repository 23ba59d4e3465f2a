"""Where the study's runs execute: a Dask cluster (local, a batch scheduler, or one already running).

The study is a set of independent notebook runs with a few stage-to-stage dependencies, which
is exactly what Dask's futures express; this module only *chooses the cluster*. Dask does the
scheduling, the retries of lost workers and the bookkeeping (no home-made process pool).

* ``local`` (default): a :class:`distributed.LocalCluster` of ``jobs`` single-threaded worker
  processes. Each run is a Jupyter kernel started by its worker, and CPU training pins itself to
  one thread (``training.CPU_TRAIN_THREADS``), so ``jobs`` = cores fills the machine without
  oversubscription. On a machine with CUDA GPUs the cluster has **one worker per GPU**, each
  seeing only its own device (``CUDA_VISIBLE_DEVICES``), so two runs never share a GPU.
* ``slurm`` / ``pbs``: workers are batch jobs submitted by ``dask-jobqueue`` (one single-threaded
  worker per job, ``jobs`` jobs). Queue, account, memory, walltime and e.g. ``--gres=gpu:1``
  come from Dask's configuration (``~/.config/dask/jobqueue.yaml``, section ``jobqueue.slurm`` or
  ``jobqueue.pbs``; see dask-jobqueue's docs), so this code holds no site settings. The project
  folder and the data root must be on a file system the compute nodes share.
* ``address``: connect to a Dask scheduler someone already started (``tcp://host:8786``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

CLUSTERS = ("local", "slurm", "pbs")


def gpu_count() -> int:
    """CUDA devices on this machine (0 without torch's CUDA build or without a GPU)."""
    try:
        import torch
    except ImportError:  # the driver itself never needs torch
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_cluster(kind: str = "local", jobs: int = 2, gpus: int | None = None):
    """Start a Dask cluster of ``jobs`` single-threaded workers (see the module docstring).

    Args:
        kind: ``local``, ``slurm`` or ``pbs``.
        jobs: workers (local CPU; batch jobs for slurm/pbs). Ignored on a local GPU machine,
            which gets one worker per GPU.
        gpus: GPUs to use on a local machine (default: all CUDA devices found).

    """
    if kind not in CLUSTERS:
        raise ValueError(f"unknown cluster {kind!r}; choose one of: {', '.join(CLUSTERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    if kind == "local":
        from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

        gpus = gpu_count() if gpus is None else gpus
        # No dashboard (it needs bokeh and a port); worker logs at WARNING so the study's own
        # progress lines stay readable. memory_limit=0: the heavy memory lives in the kernels
        # the workers start, which the nanny's limit would not see anyway.
        common = {"silence_logs": logging.WARNING}
        # Dask's scratch space (worker spill files, locks) goes to the project's git-ignored cache,
        # not to dask-scratch-space/ in the system temp dir, where it outlives every cluster
        scratch = {"local_directory": str(scratch_dir())}
        if gpus > 0:
            workers = {f"gpu{i}": {"cls": Nanny, "options": {
                "nthreads": 1, "memory_limit": 0, "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(i)}, **scratch, **common}} for i in range(gpus)}
            return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
                "dashboard_address": None, **scratch}}, **common)
        return LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                            dashboard_address=None, memory_limit=0, scheduler_kwargs=scratch,
                            **scratch, **common)
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ImportError(f"cluster={kind!r} needs dask-jobqueue: pip install dask-jobqueue") from err
    import dask

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    # One single-threaded worker per job: a run is one kernel on one core (or one GPU). The
    # scheduler runs here: its scratch space goes to the cache too, unless the site's Dask
    # configuration names a temporary-directory (the workers' local disk is the site's choice).
    tmp = dask.config.get("temporary-directory", None) or str(scratch_dir())
    with dask.config.set({"temporary-directory": tmp}):
        cluster = cls(cores=1, processes=1)
    cluster.scale(jobs=jobs)
    return cluster


def scratch_dir() -> Path:
    """Dask's local directory for this project's clusters: ``cache/dask-scratch`` (``LCC_CACHE_DIR``)."""
    from .paths import cache_dir

    d = cache_dir() / "dask-scratch"
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_client(kind: str = "local", jobs: int = 2, address: str | None = None):
    """A :class:`distributed.Client` on a new cluster (``kind``) or on the scheduler at ``address``."""
    from distributed import Client

    if address:
        return Client(address)
    return Client(make_cluster(kind, jobs))


def worker_environment() -> dict[str, str]:
    """The settings a worker's kernels must see (batch workers do not inherit ours).

    The ``LCC_*`` variables, and the allocator settings of every lcc kernel
    (:data:`lcc_utils.runs.KERNEL_ENV`; a value set here wins). A Dask nanny sets
    ``MALLOC_TRIM_THRESHOLD_=65536`` in its worker (Dask's ``pre-spawn-environ``), which the
    kernels would inherit: with it glibc hands the freed top of the heap back after every batch,
    and each batch is page-faulted in again, the cost ``KERNEL_ENV`` exists to avoid.
    """
    from .runs import KERNEL_ENV

    return {**{k: os.environ.get(k, v) for k, v in KERNEL_ENV.items()},
            **{k: v for k, v in os.environ.items() if k.startswith("LCC_")}}
