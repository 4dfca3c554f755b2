"""sipec_models.runtime: glibc keeps freed memory, so repeated large allocations stop faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sipec_models import runtime

CHILD = """
import json, resource, sys
import torch
if sys.argv[1] == "keep":
    from sipec_models.runtime import keep_freed_memory
    assert keep_freed_memory()
faults = []
for _ in range(40):
    a = torch.ones(100 * 2**20, dtype=torch.uint8)  # 100 MiB, written (every page touched), then freed
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
print(json.dumps(faults[-1] - faults[19]))  # the last 20 allocations, after the heap has grown
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True,
                         env={**os.environ, runtime.ENV: "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(runtime._glibc() is None, reason="the C library is not glibc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    pages = 100 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default, keep = _page_faults("default"), _page_faults("keep")
    assert default > 10 * pages  # every allocation maps fresh pages (20 x 100 MiB)
    assert keep < pages  # the heap's freed pages are reused


def test_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv(runtime.ENV, "0")
    assert runtime.keep_freed_memory() is False
    assert runtime._applied is False  # remembered: later calls change nothing either
    assert runtime.keep_freed_memory() is False
