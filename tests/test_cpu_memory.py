"""The CLI's CPU allocator setting: a batch-sized block freed and allocated again is not page-faulted in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Batches as the augment makes them at 224 px: a uint8 loader batch, resized in float32 (154 MB), normalized into
# a fresh tensor; each round frees what the last one made. Page faults per round tell whether the freed blocks
# served the next batch (a few) or went back to the OS and fault in anew (one per 4 KB page without huge pages:
# ~75,000 per round). Allocators place blocks as they see fit, so a round may still grow the heap: the test
# compares totals over the rounds after warm-up.
PROBE = """
import json, resource, sys
if sys.argv[1] == "cli":
    import fastcifar.cli  # what `fastcifar ...` runs first
import torch
from fastcifar import cpu_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

per_round = []
for _ in range(12):
    before = faults()
    x = torch.empty(256, 3, 32, 32, dtype=torch.uint8).fill_(3)
    y = torch.nn.functional.interpolate(x.float(), size=224, mode="bilinear")
    z = y.sub(0.5).div_(0.2)
    del x, y, z
    per_round.append(faults() - before)
print(json.dumps({"faults": sum(per_round[4:]), "in_effect": cpu_memory.in_effect}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt: Linux only")
def test_the_cli_keeps_a_freed_batch_in_the_heap():
    assert probe("cli")["in_effect"] == {"thp": True, "heap_reuse": True}
    # huge pages off on both sides (they alone cut the faults 512-fold), so the count shows the heap reuse
    configured = probe("cli", THP_MEM_ALLOC_ENABLE="0")
    assert configured["in_effect"] == {"thp": False, "heap_reuse": True}
    plain = probe("library", THP_MEM_ALLOC_ENABLE="0")  # fastcifar imported as a library: nothing changed
    assert plain["in_effect"] is None
    assert plain["faults"] > 8 * 50_000, plain  # mmap per block: every page of every batch faults in again
    assert configured["faults"] < plain["faults"] / 3, (configured, plain)  # freed blocks served new batches


def test_a_users_own_glibc_tuning_is_left_alone():
    assert probe("cli", MALLOC_MMAP_MAX_="65536")["in_effect"] == {"thp": True, "heap_reuse": False}
    assert probe("cli", THP_MEM_ALLOC_ENABLE="0")["in_effect"]["thp"] is False


def transparent_huge_pages() -> str:
    """The kernel's THP mode (always | madvise | never), "" where the file is missing."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = path.read_text() if path.exists() else ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


@pytest.mark.skipif(transparent_huge_pages() not in ("always", "madvise"),
                    reason="the kernel gives no huge pages to madvise(MADV_HUGEPAGE), which torch uses")
def test_torchs_huge_pages_cut_the_faults():
    # what the CLI also asks for (THP_MEM_ALLOC_ENABLE): 2 MB per fault instead of 4 KB, heap reuse or not
    assert probe("library", THP_MEM_ALLOC_ENABLE="1")["faults"] < 8 * 50_000 / 10
