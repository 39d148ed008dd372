"""Every threshold the benchmark judges by, in one place, and the verdict that uses them.

The project's goal is a loader the model cannot see: end-to-end at >= 97 % of the model-only ceiling. Below that,
the verdict says where the missing time went: to waiting for data (loader-bound) or not (compute-bound: the step
itself ran slower than the ceiling, e.g. because the loader's CPU work competed with it).
"""

from __future__ import annotations

INVISIBLE_RATIO = 0.97  # e2e >= 97 % of the ceiling: the loader costs the run nothing that matters
WAIT_SHARE_OF_GAP = 0.5  # below it: loader-bound when waiting for data explains >= half the shortfall (1 - ratio)
ABOVE_CEILING_NOTE = 1.05  # a ratio above this is machine noise; the report says so
BUSY_OTHERS_SHARE = 0.10  # other processes used > 10 % of all cores during a run: numbers may be low
MIN_ITERS_FOR_MEDIAN = 10  # fewer timed windows per cell: the report calls its medians rough
REPEAT_SPREAD_NOTE = 0.20  # repeats whose range exceeds 20 % of their median are flagged as noisy

VERDICTS = ("invisible", "loader-bound", "compute-bound")


def verdict(ratio: float, wait_share: float) -> str:
    """The verdict of one end-to-end (or real-run) measurement.

    Args:
        ratio: end-to-end img/s / model-only ceiling img/s (overall figures).
        wait_share: share of the time spent waiting for data: on CUDA the device idle between steps, on a CPU
            the host blocked fetching the next batch.
    """
    if ratio >= INVISIBLE_RATIO:
        return "invisible"
    return "loader-bound" if wait_share >= WAIT_SHARE_OF_GAP * (1.0 - ratio) else "compute-bound"


RULE = (
    f"verdict: invisible at >= {INVISIBLE_RATIO:.0%} of the model-only ceiling (ratio = overall e2e img/s / overall "
    f"ceiling img/s); below that loader-bound when the data wait explains >= {WAIT_SHARE_OF_GAP:.0%} of the "
    "shortfall (wait share >= half of 1 - ratio), else compute-bound. Data wait: on CUDA the device idle between "
    "train steps (CUDA events around each step), on a CPU the host blocked getting the next augmented batch."
)
