"""What every benchmark shares: the environment record and the JSON writer.

Each result file under ``benchmarks/results/`` carries the device, library versions, thread
count and the exact command that produced it, so figures can be traced and re-run.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def environment(device: str | torch.device = "cpu") -> dict:
    import sklearn
    import skorch

    return {
        "device": str(device),
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(
    name: str,
    results,
    *,
    device: str | torch.device = "cpu",
    notes: str = "",
    directory: Path | None = None,
    quiet: bool = False,
) -> Path:
    """Write ``{"environment": ..., "notes": ..., "results": ...}`` to ``results/<name>.json``.

    ``directory`` replaces ``results/`` (dry runs write elsewhere, never over measured figures).
    """
    directory = RESULTS if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"environment": environment(device), "notes": notes, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    if not quiet:
        print(f"wrote {path}")
    return path


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call, synchronising CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start
