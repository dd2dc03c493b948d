"""Settings that come from the environment: every variable scanpipe reads is here.

Flags win over environment variables; both are validated once, at start-up,
by the CLI. The README's table of variables mirrors :data:`ENVIRONMENT`.
"""

from __future__ import annotations

import os

#: Every environment variable scanpipe reads, with what it sets.
ENVIRONMENT: dict[str, str] = {
    "SCANPIPE_DIR": "run directory of the embedded stack (default ./scanpipe-run)",
    "SCANPIPE_QUEUE": "queue URL of `scanpipe worker` (sqlite:///path or SQS URL)",
    "SCANPIPE_INPUT": "input store URL of `scanpipe worker` (path or s3://b/prefix)",
    "SCANPIPE_OUTPUT": "output store URL of `scanpipe worker`",
    "SCANPIPE_MODEL": "model spec (default: builtin)",
    "SCANPIPE_WORKER_ID": "worker id recorded in the ledger and provenance",
    "SCANPIPE_LEDGER": "ledger file a worker records into (optional)",
    "SCANPIPE_MAX_VOXELS": "largest scan accepted, in voxels (default 134217728)",
    "SCANPIPE_STOP_GRACE_SECONDS": "time the current scan may finish after SIGTERM",
    "SCANPIPE_THREADS": "compute threads per worker (sets OMP/BLAS thread counts)",
    "SCANPIPE_LOG_LEVEL": "DEBUG, INFO (default), WARNING or ERROR",
    "SCANPIPE_INSTANCE_TYPE": "instance type each worker is priced as "
    "(default g5.xlarge)",
    "SCANPIPE_PRICES": "JSON or TOML file overriding the built-in price catalog",
    "SCANPIPE_SPOT": "price worker nodes at their spot price (1 or 0)",
    "SCANPIPE_OPENCOST_URL": "OpenCost API URL `scanpipe report` prices from",
    "SCANPIPE_METRICS_PORT": "port of /metrics, 0 for any free one (`worker`: "
    "off unless set; `up`: 9108; `demo`: any free port)",
    "SCANPIPE_METRICS_ADDRESS": "address /metrics listens on (default 127.0.0.1; "
    "0.0.0.0 in a pod)",
    "SCANPIPE_CPU_REQUEST_CORES": "CPU cores a worker requested, for CPU "
    "efficiency (default: the priced instance's vCPUs)",
    "SCANPIPE_MEMORY_REQUEST_BYTES": "memory a worker requested, in bytes, for "
    "RAM efficiency (default: the priced instance's memory)",
    "PROMETHEUS_MULTIPROC_DIR": "set by the embedded stack for its workers: "
    "where they write the metrics its one endpoint serves",
}

DEFAULT_RUN_DIR = "scanpipe-run"
DEFAULT_MODEL = "builtin"


def env(name: str, default: str | None = None) -> str | None:
    """Read one of the variables listed in :data:`ENVIRONMENT`."""
    if name not in ENVIRONMENT:
        raise KeyError(f"{name} is not a documented scanpipe environment variable")
    return os.environ.get(name, default)


def set_thread_count(threads: int) -> None:
    """Cap the compute threads of numeric libraries loaded after this call.

    Must run before the model loads: BLAS and OpenMP read these once.
    """
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ[name] = str(threads)
