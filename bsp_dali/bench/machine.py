"""The machine a benchmark ran on: CPU model and cores, GPU, driver and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """CPU model and cores, GPU, driver and library versions."""
    import numpy

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
                            "numpy": numpy.__version__, "gpu": None}
    for mod, key in (("torch", "torch"), ("av", "pyav"), ("nvidia.dali", "dali"), ("cupy", "cupy"),
                     ("pynvml", "nvidia_ml_py")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[key] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[key] = None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                info["nvidia_driver"] = smi.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                pass
    except Exception:  # noqa: BLE001 - no GPU stack: a CPU-only record
        pass
    return info
