"""Freed host memory is kept for reuse on the CPU, so that training steps stop page-faulting.

Each check runs in a fresh interpreter: the setting is process-wide and applied once, and the
fault counts must start from glibc's defaults.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting is glibc's",
)

# A 48 MiB tensor (12,288 pages of 4 KiB) allocated and freed ten times, like an activation
# buffer over ten steps (the CNN's first convolution gives 32 MiB at batch 256). Under glibc's
# defaults a block above 32 MiB always gets a fresh mmap and is unmapped when freed: each
# allocation faults all its pages in again. Kept memory is faulted in once, then reused.
CHILD = """
import json, resource, sys
import torch
from initbench import train
from initbench.train import configure_backends
from omegaconf import OmegaConf
if sys.argv[1] == "keep":
    cfg = OmegaConf.create({"train": {"threads": 1, "deterministic": False}})
    configure_backends(cfg, torch.device("cpu"))
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(12 * 2**20)
    del buffer
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": train._host_memory_kept, "faults": faults}))
"""
PAGES = 48 * 2**20 // 4096


def child(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                            env={**environment, **env}, check=True)  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


def test_defaults_fault_every_allocation_in_again():
    found = child("defaults")
    assert found["kept"] is None  # never asked
    # every allocation after the first faults in (nearly) all of its pages
    assert min(found["faults"][2:]) >= 0.9 * PAGES


def test_a_cpu_run_keeps_freed_memory_and_stops_faulting():
    found = child("keep")
    assert found["kept"] is True
    assert found["faults"][0] >= 0.9 * PAGES  # first touch of new memory
    # the heap may grow once more before the block settles (a second first touch) ...
    assert sum(found["faults"][1:]) <= 1.1 * PAGES
    # ... then it is reused: at most a few pages of glibc's bookkeeping per allocation
    assert max(found["faults"][5:]) <= 0.01 * PAGES


def test_the_users_own_malloc_settings_win():
    found = child("keep", MALLOC_MMAP_MAX_="65536")
    assert found["kept"] is False
    assert min(found["faults"][2:]) >= 0.9 * PAGES
