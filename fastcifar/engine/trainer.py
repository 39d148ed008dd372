"""`train(cfg, resume=None, progress=True) -> run dir`: setup, the epoch loop, checkpoints, the final report.

Reading order: `train` -> `Trainer.__init__` (data, model, optimization, tracking) -> `fit` -> `_epoch`
-> `_train_epoch` / `_evaluate` -> `_save` -> `_finish`. Step and eval math live in `step.py`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from rich.console import Console

from fastcifar.augment import GpuAugment
from fastcifar.config import Config, apply_overrides, from_dict, to_dict
from fastcifar.engine import report
from fastcifar.engine.checkpoint import (
    BEST,
    LAST,
    eval_weights,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from fastcifar.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    gather_object,
    init_distributed,
    wrap_model,
)
from fastcifar.engine.early_stop import EarlyStopper
from fastcifar.engine.ema import ModelEma
from fastcifar.engine.inputs import data_info, eval_loader, split_indices
from fastcifar.engine.metrics import MetricsLog, TensorBoard
from fastcifar.engine.optim import build_optimizer, build_scheduler
from fastcifar.engine.precision import autocast, input_dtype, synchronize
from fastcifar.engine.progress import EpochProgress
from fastcifar.engine.run_dir import make_run_dir
from fastcifar.engine.step import eval_pass, make_objective, summarize_eval, train_step
from fastcifar.engine.teacher import load_teacher
from fastcifar.errors import FastcifarError
from fastcifar.loaders import build_loader
from fastcifar.loaders.base import remaining_augment
from fastcifar.losses import build_criterion
from fastcifar.models import build_model, load_weights

# Record keys that measure time: they differ between an interrupted-and-resumed run and an uninterrupted one.
TIMING_KEYS = ("img_per_s", "data_wait", "train_s", "eval_s", "warmup_s", "loader_warmup_s", "wall_s")
FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "test_loss", "test_acc", "test_top5", *TIMING_KEYS]


# What may change when a run is resumed: where it runs and reads, not what it computes.
RESUME_OVERRIDES = ("train.device", "data.root", "data.workers", "data.prefetch")


def train(cfg: Config | None, resume: str | None = None, progress: bool = True, overrides: list[str] | None = None) -> Path:
    """Train `cfg` into a new run folder, or continue the run in `resume` (a run dir or its last.pt).

    A resumed run uses the config saved in its checkpoint and continues after the last completed epoch;
    it ends with exactly the weights and (non-timing) metrics the uninterrupted run would have.

    Args:
        cfg: the run config; None when resuming (a given one must equal the saved one).
        resume: run directory (or its last.pt) to continue.
        progress: show the live progress bar (epoch lines are printed either way).
        overrides: `key=value` changes to a resumed run's saved config, limited to RESUME_OVERRIDES
            (e.g. train.device=cpu to continue a GPU run elsewhere, data.root=... after moving the data).

    Returns:
        The run directory (on every rank).
    """
    run_dir, checkpoint = None, None
    if resume is not None:
        run_dir, cfg, checkpoint = _resume_target(resume, cfg, overrides or [])
    if cfg is None:
        raise FastcifarError("Nothing to train: give a config, or resume=RUN_DIR to continue a run.")
    info, device = init_distributed(cfg.train.device)
    ok = False
    try:
        trainer = Trainer(cfg, info, device, progress=progress, run_dir=run_dir, checkpoint=checkpoint)
        trainer.fit()
        ok = True
        return trainer.run_dir
    finally:
        cleanup(barrier=ok)


def _resume_target(resume: str, cfg: Config | None, overrides: list[str]) -> tuple[Path, Config, dict]:
    path = Path(resume).expanduser()
    if path.is_file() and path.name != LAST:
        raise FastcifarError(f"Resume from the run's {LAST} (or its folder), not '{path.name}': resuming from another checkpoint would roll the run back and overwrite {LAST}.")
    run_dir = path if path.is_dir() else path.parent
    checkpoint = load_checkpoint(path, LAST)
    for key in ("config", "optimizer", "scheduler", "epoch", "step", "rng"):
        if key not in checkpoint:
            raise FastcifarError(f"'{path}' is not a fastcifar training checkpoint (no '{key}'); resume from a run folder made by `fastcifar train`.")
    for item in overrides:
        if item.split("=", 1)[0].strip() not in RESUME_OVERRIDES:
            raise FastcifarError(f"A resumed run keeps its saved config; only {', '.join(RESUME_OVERRIDES)} may change (got '{item}'); start a new run to change the rest.")
    saved = from_dict(apply_overrides(checkpoint["config"], overrides))
    if cfg is not None and to_dict(cfg) != to_dict(from_dict(checkpoint["config"])):
        raise FastcifarError(f"Resuming '{run_dir}' continues with the config saved in its checkpoint; drop the config argument, or start a new run.")
    return run_dir, saved, checkpoint


class Trainer:
    """Everything one run holds. Built on every rank; only rank 0 writes files and prints."""

    def __init__(self, cfg: Config, dist: DistInfo, device: torch.device, progress: bool = True, run_dir: Path | None = None, checkpoint: dict | None = None):
        self.cfg, self.dist, self.device, self.progress = cfg, dist, device, progress
        self.console = Console(quiet=not dist.main, highlight=False)
        seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights (DDP checks)
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): let cuDNN pick its fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA; no effect on CPU
        self.autocast = autocast(device, cfg.train.amp)
        self.data = data_info(cfg)
        self._build_data()
        self._build_model(weights_follow=checkpoint is not None or bool(cfg.train.init_from))
        self._build_optimization()
        self._build_tracking()
        seed_everything(cfg.train.seed + dist.rank)  # weights are built alike; from here each rank draws its own augmentation
        self.resumed = checkpoint is not None
        if checkpoint is not None:
            self._restore(checkpoint)
        self.run_dir = run_dir if run_dir is not None else broadcast_object(make_run_dir(cfg) if dist.main else None)
        self.log = MetricsLog(self.run_dir, FIELDS)

    # ------------------------------------------------------------------------ setup

    def _build_data(self) -> None:
        cfg, dist, device = self.cfg, self.dist, self.device
        train_idx, val_idx = split_indices(cfg, self.data.train_count)
        self.train_loader = build_loader(cfg, "train", train=True, device=device, rank=dist.rank, world_size=dist.world_size, indices=train_idx)
        # Evaluation always reads through the `gpu` loader (see inputs.eval_loader): a fixed, exact pass.
        self.eval_loaders = {}
        if val_idx is not None:
            self.eval_loaders["val"] = eval_loader(cfg, "train", device, val_idx, dist.rank, dist.world_size)
        self.eval_loaders["test"] = eval_loader(cfg, "test", device, None, dist.rank, dist.world_size)
        self.eval_counts = {"val": len(val_idx)} if val_idx is not None else {}
        self.eval_counts["test"] = self.data.test_count
        d, out_dtype = self.data, input_dtype(cfg.train.amp)
        aug = remaining_augment(cfg.augment, self.train_loader)  # minus what a native ffcv/dali pipeline already did
        self.augment = GpuAugment(aug, d.mean, d.std, d.num_classes, per_image_ops=not self.train_loader.per_image_ops_done, out_dtype=out_dtype, seed=cfg.train.seed)
        self.eval_augment = GpuAugment(cfg.augment, d.mean, d.std, d.num_classes, out_dtype=out_dtype)  # eval_batch: resize + normalize only

    def _build_model(self, weights_follow: bool) -> None:
        """weights_follow: a checkpoint (resume / init_from) overwrites every weight, so hub or file weights
        are not fetched first (a resume must work offline and after the weights file has moved)."""
        cfg, device = self.cfg, self.device
        model_cfg = dataclasses.replace(cfg.model, pretrained=False) if weights_follow else cfg.model
        model = build_model(model_cfg, self.data.num_classes)
        if cfg.train.init_from:  # weights only; optimizer, schedule and epoch start fresh
            load_weights(model, eval_weights(load_checkpoint(cfg.train.init_from)), cfg.train.init_from)
        memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=memory_format)  # the plain module: checkpoints, EMA, eval
        self.ema = ModelEma(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None  # before compile: a plain deep copy
        if cfg.train.compile:
            # In place (Module.compile), so state-dict keys stay plain; compile, then DDP-wrap (PyTorch's
            # "Where to apply torch.compile?": compile the inner module passed to DDP).
            self.model.compile(mode=cfg.train.compile_mode)
        self.train_model = wrap_model(self.model, self.dist, device)
        self.teacher = load_teacher(cfg, self.data.num_classes, device) if cfg.distill.teacher else None
        self.eval_model = self.ema.module if self.ema else self.model

    def _build_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.train_loader))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")  # loss scaling only for fp16
        self.criterion = build_criterion(cfg)
        self.objective = make_objective(self.criterion, self.teacher, cfg.distill)

    def _build_tracking(self) -> None:
        cfg = self.cfg
        recorded = {"train_loss", "train_acc"} | {f"{s}_{m}" for s in self.eval_loaders for m in ("loss", "acc", "top5")}
        metric = cfg.train.select_metric
        if metric == "auto":
            metric = "val_acc" if "val" in self.eval_loaders else "test_acc"
        if metric not in recorded:
            raise FastcifarError(f"train.select_metric '{metric}' is not recorded by this run; use one of {', '.join(sorted(recorded))} (val_* needs data.val_split > 0).")
        es = cfg.early_stop
        if es.patience > 0 and es.metric not in recorded:
            raise FastcifarError(f"early_stop.metric '{es.metric}' is not recorded by this run; use one of {', '.join(sorted(recorded))} (val_* needs data.val_split > 0).")
        self.selector = EarlyStopper(metric, "min" if metric.endswith("_loss") else "max")  # patience 0: tracks the best only
        self.stopper = EarlyStopper(es.metric, es.mode, es.patience, es.min_delta)
        self.start_epoch, self.step, self.wall_s = 0, 0, 0.0
        self.warmup_s: float | None = None  # first step of this process (compile, cuDNN autotune), measured alone
        self.first_warmup_s: float | None = None  # the run's very first warm-up, kept across resumes
        self.resumes = 0

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"], updates=state.get("ema_updates"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.selector.load_state_dict(state["best"])
        self.stopper.load_state_dict(state["early_stop"])
        self.start_epoch, self.step, self.wall_s = state["epoch"] + 1, state["step"], state["wall_s"]
        self.first_warmup_s, self.resumes = state.get("warmup_s"), state.get("resumes", 0) + 1
        rngs = state["rng"]  # one per rank of the saving run
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])

    # ------------------------------------------------------------------------ loop

    def fit(self) -> None:
        cfg = self.cfg
        if self.dist.main:
            report.announce(self)
            if self.resumed:
                self.log.truncate(self.start_epoch)  # rows of an epoch logged but not checkpointed before the crash
            else:
                report.write_start(self)
        self.tensorboard = TensorBoard(self.run_dir, purge_step=self.start_epoch) if self.dist.main else None
        for epoch in range(self.start_epoch, cfg.train.epochs):
            if self.stopper.stopped_epoch is not None:  # resumed a run that had already stopped early
                break
            if self._epoch(epoch):
                self.console.print(f"[yellow]early stop[/]: {self.stopper.metric} has not improved for {self.stopper.patience} evaluations (best {self.stopper.best:.4g} at epoch {self.stopper.best_epoch + 1}).")
                break
        if self.tensorboard:
            self.tensorboard.close()
        self._finish()

    def _epoch(self, epoch: int) -> bool:
        """Train, evaluate, record, checkpoint one epoch; returns True when early stopping says stop."""
        start = time.perf_counter()
        record = {"epoch": epoch, **self._train_epoch(epoch)}
        due = (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == self.cfg.train.epochs
        if due:
            record.update(self._evaluate(self.eval_model))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["step"] = self.step
        self.wall_s += time.perf_counter() - start
        record["wall_s"] = self.wall_s
        self.selector.update(record)
        improved = self.selector.best_epoch == epoch
        stop = self.stopper.update(record)
        if self.dist.main:
            self.log.append(record)  # before the checkpoint: a crash in between reruns (and re-logs) this epoch
            self.tensorboard.log(record)
            report.print_epoch(self, record, improved)
        self._save(epoch, improved)
        return stop

    def _train_epoch(self, epoch: int) -> dict:
        """One pass over the training loader. The process's first batch is warm-up, timed apart and kept out
        of img/s and the data-wait share: fetching it pays the loader's start (ffcv's numba JIT, worker
        spawn), and its step pays torch.compile and cuDNN autotuning."""
        loader, device = self.train_loader, self.device
        loader.set_epoch(epoch)  # same order on a resumed run
        self.augment.set_epoch(epoch)  # alternating flips: the other half of the images is mirrored in odd epochs
        self.train_model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * B, stays on the device
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = warm_images = 0
        wait = warm_wait = warm_step = 0.0  # seconds
        with EpochProgress(epoch, self.cfg.train.epochs, len(loader), enabled=self.progress and self.dist.main, world_size=self.dist.world_size, console=self.console) as bar:
            start = time.perf_counter()
            batches = iter(loader)  # ffcv / dali / DataLoader workers start here: loader time too
            started = time.perf_counter() - start
            while True:
                t = time.perf_counter()
                try:
                    images, labels = next(batches)  # uint8 [B, 3, H, W] channels_last, int64 [B], on device
                except StopIteration:
                    break
                waited, started = time.perf_counter() - t + started, 0.0
                wait += waited
                if self.warmup_s is None:  # the process's first step: synchronize around it, time it alone
                    synchronize(device)
                    t = time.perf_counter()
                    loss, hits = self._step(images, labels)
                    synchronize(device)
                    warm_wait, warm_step, warm_images = waited, time.perf_counter() - t, labels.shape[0]
                    self.warmup_s = warm_step
                    if self.first_warmup_s is None:
                        self.first_warmup_s = warm_step
                else:
                    loss, hits = self._step(images, labels)
                loss_sum += loss.double() * labels.shape[0]
                correct += hits
                count += labels.shape[0]
                bar.advance(labels.shape[0], wait, time.perf_counter() - start)
            synchronize(device)  # the only sync of the epoch: queued steps finish before the clock stops
            train_s = time.perf_counter() - start
        sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(count), dtype=torch.float64, device=device)])
        loss_sum, correct, count = all_reduce_sum(sums).tolist()
        images = count - warm_images * self.dist.world_size  # all ranks
        timed = train_s - warm_step - warm_wait
        out = {
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "img_per_s": images / timed if timed > 0 and images > 0 else None,
            "data_wait": (wait - warm_wait) / timed if timed > 0 else None,
            "train_s": train_s,
        }
        if warm_images:
            out.update(warmup_s=warm_step, loader_warmup_s=warm_wait)
        return out

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment on the device, one optimizer step, EMA and schedule; returns (loss, correct) device scalars."""
        x, targets = self.augment.train_batch(images, labels, self._draw_size())  # [B, 3, S, S]; int64 [B] or float [B, C]
        loss, hits = train_step(self.train_model, x, targets, self.objective, self.optimizer, self.scaler, self.autocast, self.cfg.optim.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model)
        self.scheduler.step()  # per iteration
        self.step += 1
        return loss, hits

    def _draw_size(self) -> int | None:
        """Multi-scale training: this batch's side from augment.scales, drawn from (seed, step) so every DDP
        rank picks the same side (no rank waits on a bigger one at the all-reduce) and a resume replays it."""
        scales = self.cfg.augment.scales
        if not scales:
            return None
        draw = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.step)
        return scales[int(torch.randint(len(scales), (), generator=draw))]

    def _evaluate(self, model: torch.nn.Module, splits: tuple[str, ...] | None = None) -> dict:
        """`{split}_loss/_acc/_top5` for each eval split (all-reduced over ranks), plus eval_s; confusion kept."""
        start = time.perf_counter()
        out, self.confusion = {}, {}
        for split, loader in self.eval_loaders.items():
            if splits and split not in splits:
                continue
            sums = eval_pass(model, loader, self.eval_augment.eval_batch, self.autocast, self.data.num_classes, tta=self.cfg.train.tta)
            for tensor in sums.values():
                all_reduce_sum(tensor)
            out.update(summarize_eval(sums, split))
            self.confusion[split] = sums["confusion"]
        synchronize(self.device)
        out["eval_s"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------ files

    def _save(self, epoch: int, improved: bool) -> None:
        """best.pt (when improved) then last.pt, atomically; last.pt is the commit point of the epoch."""
        rngs = gather_object(rng_state())  # every rank's RNG, so a resumed DDP run draws what each rank would
        if not self.dist.main:
            return
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": self.step,
            "rng": rngs,
            "early_stop": self.stopper.state_dict(),
            "best": self.selector.state_dict(),
            "config": to_dict(self.cfg),
            "num_classes": self.data.num_classes,
            "wall_s": self.wall_s,
            "warmup_s": self.first_warmup_s,
            "resumes": self.resumes,
        }
        if improved:
            save_checkpoint(state, self.run_dir / BEST)
        save_checkpoint(state, self.run_dir / LAST)

    def _finish(self) -> None:
        """Reload the best weights, score the selection split, write confusion, curves and summary."""
        barrier()  # rank 0 has written best.pt
        path = self.run_dir / BEST
        if not path.exists():
            raise FastcifarError(f"Run '{self.run_dir}' has no {BEST}: no epoch was evaluated; set train.eval_every <= train.epochs.")
        self.eval_model.load_state_dict(eval_weights(load_checkpoint(path)))
        split = self.selector.metric.split("_")[0]
        split = split if split in self.eval_loaders else "test"
        best = self._evaluate(self.eval_model, splits=(split,))
        if self.dist.main:
            report.write_final(self, split, best)
