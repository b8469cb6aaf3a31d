"""GPU memory for the heartbeat: NVML when pynvml is importable, else `nvidia-smi`,
else None (a CPU node, or a driver we cannot read)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

NVIDIA_SMI_QUERY = ["--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class GpuMemory:
    index: int
    used_mib: int
    total_mib: int


def gpu_memory() -> list[GpuMemory] | None:
    return _from_nvml() or _from_nvidia_smi()


def _from_nvml() -> list[GpuMemory] | None:
    try:
        import pynvml  # only on GPU hosts; pyproject tells mypy it may be missing
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            result = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
                result.append(GpuMemory(index, info.used // 2**20, info.total // 2**20))
            return result
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _from_nvidia_smi() -> list[GpuMemory] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out.stdout)


def parse_nvidia_smi(text: str) -> list[GpuMemory] | None:
    gpus = []
    for index, line in enumerate(line for line in text.splitlines() if line.strip()):
        used, total = (int(float(part)) for part in line.split(",")[:2])
        gpus.append(GpuMemory(index, used, total))
    return gpus or None
