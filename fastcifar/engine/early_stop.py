"""Early stopping: stop when a metric has not improved by `min_delta` for `patience` evaluations."""

from __future__ import annotations

import math

from fastcifar.errors import FastcifarError


class EarlyStopper:
    """Track the best value of one metric and count evaluations without improvement.

    Args:
        metric: record key to watch (e.g. "val_acc").
        mode: "max" (higher is better), "min", or "auto" (min for metrics ending in "_loss", else max).
        patience: evaluations without improvement before `should_stop` turns true; 0 = never stop.
        min_delta: an improvement must beat the best by more than this (same unit as the metric).
    """

    def __init__(self, metric: str, mode: str = "auto", patience: int = 0, min_delta: float = 0.0):
        if mode == "auto":
            mode = "min" if metric.endswith("_loss") else "max"
        if mode not in ("max", "min"):
            raise FastcifarError(f"early_stop.mode must be auto, max or min, got {mode!r}.")
        if patience < 0 or min_delta < 0:
            raise FastcifarError(f"early_stop.patience and min_delta must be >= 0, got {patience} and {min_delta}.")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.bad = 0  # evaluations since the last improvement
        self.stopped_epoch: int | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, record: dict) -> bool:
        """Feed one epoch record; returns True when training should stop after this epoch.

        Records without the metric (no evaluation that epoch) change nothing; the trainer checks up front
        that the metric is one the run records.
        """
        if record.get(self.metric) is None:
            return False
        value = float(record[self.metric])
        if self.improved(value):
            self.best, self.best_epoch, self.bad = value, int(record["epoch"]), 0
        else:
            self.bad += 1
        if self.enabled and self.bad >= self.patience:
            self.stopped_epoch = int(record["epoch"])
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad, self.stopped_epoch = state["bad"], state["stopped_epoch"]
