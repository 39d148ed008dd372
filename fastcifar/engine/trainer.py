"""`train(cfg, resume=None, progress=True) -> run dir`: setup, the epoch loop, checkpoints, the final report.

Reading order: `train` -> `Trainer.__init__` (data, model, optimization, tracking) -> `fit` -> `_epoch`
-> `_train_epoch` / `_evaluate` -> `_snapshot` (written by a background thread) -> `_finish`.
Step and eval math live in `step.py`; the parts are assembled by `build.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch._dynamo.exc
from rich.console import Console

from fastcifar.atomic import TEMP_PREFIX
from fastcifar.config import Config, apply_overrides, from_dict, to_dict
from fastcifar.engine import report
from fastcifar.engine.build import (
    build_model_on,
    compile_model,
    ema_of,
    eval_augment,
    graph_count,
    graph_note,
    load_run_weights,
    recompile_error,
    set_backend_flags,
    stepper,
    train_input,
)
from fastcifar.engine.checkpoint import (
    BEST,
    BEST_KEYS,
    LAST,
    CheckpointWriter,
    eval_weights,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    snapshot,
)
from fastcifar.engine.device_wait import DeviceWaitRecorder
from fastcifar.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    gather_object,
    init_distributed,
    sync_buffers,
    wrap_model,
)
from fastcifar.engine.early_stop import EarlyStopper
from fastcifar.engine.inputs import data_info, eval_loader, split_indices
from fastcifar.engine.metrics import MetricsLog, TensorBoard
from fastcifar.engine.precision import autocast, synchronize
from fastcifar.engine.progress import EpochProgress
from fastcifar.engine.run_dir import make_run_dir
from fastcifar.engine.step import eval_pass, summarize_eval
from fastcifar.engine.teacher import load_teacher
from fastcifar.errors import FastcifarError

# Record keys that measure time: they differ between an interrupted-and-resumed run and an uninterrupted one.
TIMING_KEYS = ("img_per_s", "data_wait", "device_wait", "device_wait_s", "train_s", "eval_s", "ckpt_s", "warmup_s",
               "loader_warmup_s", "wall_s")
FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "test_loss", "test_acc",
          "test_top5", *TIMING_KEYS]


# What may change when a run is resumed: where it runs and reads, not what it computes.
RESUME_OVERRIDES = ("train.device", "data.root", "data.workers", "data.prefetch")


def train(cfg: Config | None, resume: str | None = None, progress: bool = True,
          overrides: list[str] | None = None) -> Path:
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
        raise FastcifarError(f"Resume from the run's {LAST} (or its folder), not '{path.name}': "
                             f"resuming from another checkpoint would roll the run back and overwrite {LAST}.")
    run_dir = path if path.is_dir() else path.parent
    checkpoint = load_checkpoint(path, LAST)
    for key in ("config", "optimizer", "scheduler", "epoch", "step", "rng"):
        if key not in checkpoint:
            raise FastcifarError(f"'{path}' is not a fastcifar training checkpoint (no '{key}'); "
                                 "resume from a run folder made by `fastcifar train`.")
    for item in overrides:
        if item.split("=", 1)[0].strip() not in RESUME_OVERRIDES:
            raise FastcifarError(f"A resumed run keeps its saved config; only {', '.join(RESUME_OVERRIDES)} may change "
                                 f"(got '{item}'); start a new run to change the rest.")
    saved = from_dict(apply_overrides(checkpoint["config"], overrides))
    if cfg is not None and to_dict(cfg) != to_dict(from_dict(checkpoint["config"])):
        raise FastcifarError(f"Resuming '{run_dir}' continues with the config saved in its checkpoint; "
                             "drop the config argument, or start a new run.")
    return run_dir, saved, checkpoint


class Trainer:
    """Everything one run holds. Built on every rank; only rank 0 writes files and prints."""

    def __init__(self, cfg: Config, dist: DistInfo, device: torch.device, progress: bool = True,
                 run_dir: Path | None = None, checkpoint: dict | None = None):
        self.cfg, self.dist, self.device, self.progress = cfg, dist, device, progress
        self.console = Console(quiet=not dist.main, highlight=False)
        seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights (DDP checks)
        set_backend_flags()
        self.autocast = autocast(device, cfg.train.amp)
        self.data = data_info(cfg)
        self._build_data()
        self._build_model(weights_follow=checkpoint is not None or bool(cfg.train.init_from))
        self._build_optimization()
        self._build_tracking()
        # weights are built alike; from here each rank draws its own augmentation
        seed_everything(cfg.train.seed + dist.rank)
        self.resumed = checkpoint is not None
        if checkpoint is not None:
            self._restore(checkpoint)
        self.run_dir = run_dir if run_dir is not None else broadcast_object(make_run_dir(cfg) if dist.main else None)
        self.log = MetricsLog(self.run_dir, FIELDS)
        self.writer = CheckpointWriter()  # rank 0 writes best.pt / last.pt on a background thread
        self.facts = report.RunFacts(
            cfg=cfg, num_classes=self.data.num_classes, class_names=self.data.class_names,
            source=self.data.source, synthetic=self.data.synthetic, device=str(device), world_size=dist.world_size,
            steps_per_epoch=len(self.train_loader),
            eval_counts=self.eval_counts, select_metric=self.selector.metric, distill=self.teacher is not None,
        )

    # ------------------------------------------------------------------------ setup

    def _build_data(self) -> None:
        cfg, dist, device = self.cfg, self.dist, self.device
        train_idx, val_idx = split_indices(cfg, self.data.train_count)
        self.train_loader, self.augment = train_input(cfg, self.data, device, dist.rank, dist.world_size, train_idx)
        # Evaluation always reads through the `gpu` loader (see inputs.eval_loader): a fixed, exact pass.
        self.eval_loaders = {}
        if val_idx is not None:
            self.eval_loaders["val"] = eval_loader(cfg, "train", device, val_idx, dist.rank, dist.world_size)
        self.eval_loaders["test"] = eval_loader(cfg, "test", device, None, dist.rank, dist.world_size)
        self.eval_counts = {"val": len(val_idx)} if val_idx is not None else {}
        self.eval_counts["test"] = self.data.test_count
        self.eval_augment = eval_augment(cfg, self.data)  # eval_batch: resize + normalize only

    def _build_model(self, weights_follow: bool) -> None:
        """weights_follow: a checkpoint (resume / init_from) overwrites every weight, so hub or file weights
        are not fetched first (a resume must work offline and after the weights file has moved)."""
        cfg, device = self.cfg, self.device
        self.model = build_model_on(cfg, self.data.num_classes, device, pretrained=not weights_follow)  # plain module
        if cfg.train.init_from:  # weights only (best.pt holds them); optimizer, schedule and epoch start fresh
            load_run_weights(self.model, load_checkpoint(cfg.train.init_from), cfg.train.init_from)
        self.ema = ema_of(self.model, cfg)  # before compile: a plain deep copy
        self.eval_model = self.ema.module if self.ema else self.model
        # Partial eval batches are padded only when evaluation runs the compiled graph (no EMA); eager needs none.
        self.eval_pad = cfg.data.eval_batch_size if cfg.train.compile and self.ema is None else None
        if cfg.train.compile:  # in place: checkpoints, EMA and eval keep using self.model
            graphs = graph_count(cfg, eval_compiled=self.eval_pad is not None)
            compile_model(self.model, cfg, graphs)
            if note := graph_note(graphs):
                self.console.print(note, soft_wrap=True)
        self.train_model = wrap_model(self.model, self.dist, device)
        self.teacher = load_teacher(cfg, self.data.num_classes, device) if cfg.distill.teacher else None

    def _build_optimization(self) -> None:
        self.stepper = stepper(self.cfg, self.augment, self.model, self.ema, self.teacher, len(self.train_loader),
                               self.device, train_model=self.train_model)
        step = self.stepper  # its optimizer, scaler and schedule are what checkpoints save and resumes restore
        self.optimizer, self.scaler, self.scheduler = step.optimizer, step.scaler, step.scheduler

    def _build_tracking(self) -> None:
        cfg = self.cfg
        metric = cfg.train.select_metric  # validated against data.val_split by the config schema
        if metric == "auto":
            metric = "val_acc" if "val" in self.eval_loaders else "test_acc"
        es = cfg.early_stop
        # patience 0: tracks the best only
        self.selector = EarlyStopper(metric, "min" if metric.endswith("_loss") else "max")
        self.stopper = EarlyStopper(es.metric, es.mode, es.patience, es.min_delta)
        self.start_epoch, self.step, self.wall_s = 0, 0, 0.0
        self.ckpt_s = 0.0  # seconds the loop was blocked by checkpoints (part of wall_s), across resumes
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
        self.ckpt_s = state.get("ckpt_s", 0.0)
        self.first_warmup_s, self.resumes = state.get("warmup_s"), state.get("resumes", 0) + 1
        rngs = state["rng"]  # one per rank of the saving run
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])

    # ------------------------------------------------------------------------ loop

    def fit(self) -> None:
        cfg = self.cfg
        if self.dist.main:
            report.announce(self.console, self.facts, self.run_dir, self.start_epoch, self.resumed)
            if self.resumed:
                self.log.truncate(self.start_epoch)  # rows of an epoch logged but not checkpointed before the crash
                for stale in self.run_dir.glob(f"{TEMP_PREFIX}*"):  # a checkpoint write that a kill interrupted
                    stale.unlink(missing_ok=True)
            else:
                report.write_start(self.run_dir, self.facts)
        self.tensorboard = TensorBoard(self.run_dir, purge_step=self.start_epoch) if self.dist.main else None
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                if self.stopper.stopped_epoch is not None:  # resumed a run that had already stopped early
                    break
                if self._epoch(epoch):
                    self.console.print(f"[yellow]early stop[/]: {self.stopper.metric} has not improved for "
                                       f"{self.stopper.patience} evaluations (best {self.stopper.best:.4g} "
                                       f"at epoch {self.stopper.best_epoch + 1}).")
                    break
            waited = self.writer.join()  # the last write lands before best.pt is read back; raises if it failed
            self.ckpt_s, self.wall_s = self.ckpt_s + waited, self.wall_s + waited
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            raise recompile_error() from None
        finally:
            self.writer.close()  # at exit also on errors: no half-finished write is abandoned by the process
            if self.tensorboard:
                self.tensorboard.close()
        self._finish()

    def _epoch(self, epoch: int) -> bool:
        """Train, evaluate, record, checkpoint one epoch; returns True when early stopping says stop."""
        cfg = self.cfg
        start = time.perf_counter()
        record = {"epoch": epoch, **self._train_epoch(epoch)}
        sync_buffers(self.model, self.ema.module if self.ema else None)  # DDP: every rank holds what rank 0 saves
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            record.update(self._evaluate(self.eval_model))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["step"] = self.step
        self.selector.update(record)
        improved = self.selector.best_epoch == epoch
        stop = self.stopper.update(record)
        save_last = (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == cfg.train.epochs or stop
        files, record["ckpt_s"] = self._snapshot(epoch, improved, save_last)
        self.ckpt_s += record["ckpt_s"]
        self.wall_s += time.perf_counter() - start
        record["wall_s"] = self.wall_s
        if self.dist.main:
            self.log.append(record)  # before last.pt: a crash in between reruns (and re-logs) this epoch
            self.tensorboard.log(record)
            report.print_epoch(self.console, self.facts, record, improved)
            for state, path in files:
                if path.name == LAST:  # time so far, for a resumed run to continue from
                    state.update(wall_s=self.wall_s, ckpt_s=self.ckpt_s)
            if files:
                self.writer.submit(files)  # never blocks: _snapshot already waited for the previous write
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
        device_wait = DeviceWaitRecorder(device, len(loader))  # CUDA events per step; no-op on CPU
        with EpochProgress(epoch, self.cfg.train.epochs, len(loader), enabled=self.progress and self.dist.main,
                           world_size=self.dist.world_size, console=self.console) as bar:
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
                    device_wait.start()
                    loss, hits = self._step(images, labels)
                    device_wait.end()
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
        idle = device_wait.idle()  # read once, after the epoch's sync; None on CPU
        if idle is not None:  # share of the device timeline idle between steps, and its seconds
            out.update(device_wait=idle.share, device_wait_s=idle.idle_s)
        return out

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment on the device, one optimizer step, EMA and schedule (`Stepper`); (loss, correct) device scalars."""
        loss, hits = self.stepper(images, labels, self.step)
        self.step += 1
        return loss, hits

    def _evaluate(self, model: torch.nn.Module, splits: tuple[str, ...] | None = None) -> dict:
        """`{split}_loss/_acc/_top5` for each eval split (all-reduced over ranks), plus eval_s; confusion kept."""
        start = time.perf_counter()
        out, self.confusion = {}, {}
        for split, loader in self.eval_loaders.items():
            if splits and split not in splits:
                continue
            sums = eval_pass(model, loader, self.eval_augment.eval_batch, self.autocast, self.data.num_classes,
                             tta=self.cfg.train.tta, pad_to=self.eval_pad)
            for tensor in sums.values():
                all_reduce_sum(tensor)
            out.update(summarize_eval(sums, split))
            self.confusion[split] = sums["confusion"]
        synchronize(self.device)
        out["eval_s"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------ files

    def _snapshot(self, epoch: int, improved: bool, save_last: bool) -> tuple[list[tuple[dict, Path]], float]:
        """The files this epoch commits, as host-memory copies, and the seconds the loop blocked for them.

        best.pt (when improved) gets the weights only; last.pt (every `train.save_every` epochs and after the
        last one) the full state and is the commit point of the epoch. The blocked time is the wait for the
        previous write plus the copy to host memory; the write itself runs on `self.writer`'s thread.
        """
        if not (improved or save_last):
            return [], 0.0
        start = time.perf_counter()
        # every rank's: a resumed DDP run draws what each would
        rngs = gather_object(rng_state()) if save_last else None
        if not self.dist.main:
            return [], time.perf_counter() - start
        self.writer.join()  # one write in flight at most, and its failure stops training here
        ema = self.ema.state_dict() if self.ema is not None else None
        weights = snapshot({"model": self.model.state_dict(), "ema": ema})  # live tensors keep changing: copy them
        common = {**weights, "epoch": epoch, "step": self.step, "best": snapshot(self.selector.state_dict()),
                  "config": to_dict(self.cfg), "num_classes": self.data.num_classes}
        files = []
        if improved:
            files.append(({k: common[k] for k in BEST_KEYS}, self.run_dir / BEST))
        if save_last:
            rest = snapshot({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "early_stop": self.stopper.state_dict(),
            })
            progress = {"ema_updates": self.ema.updates if self.ema is not None else 0, "rng": rngs,
                        "warmup_s": self.first_warmup_s, "resumes": self.resumes}
            files.append(({**common, **rest, **progress}, self.run_dir / LAST))
        return files, time.perf_counter() - start

    def _finish(self) -> None:
        """Reload the best weights, score the selection split, write confusion, curves and summary."""
        barrier()  # rank 0 has written best.pt
        path = self.run_dir / BEST
        if not path.exists():
            raise FastcifarError(f"Run '{self.run_dir}' has no {BEST}: no epoch was evaluated; "
                                 "set train.eval_every <= train.epochs.")
        self.eval_model.load_state_dict(eval_weights(load_checkpoint(path)))
        split = self.selector.metric.split("_")[0]
        split = split if split in self.eval_loaders else "test"
        try:
            best = self._evaluate(self.eval_model, splits=(split,))
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            raise recompile_error() from None
        if self.dist.main:
            outcome = report.Outcome(
                best_epoch=self.selector.best_epoch, best_value=self.selector.best,
                stopped_epoch=self.stopper.stopped_epoch, wall_s=self.wall_s, ckpt_s=self.ckpt_s,
                first_warmup_s=self.first_warmup_s, resumes=self.resumes,
            )
            report.write_final(self.console, self.run_dir, self.facts, outcome, self.log.records(), split,
                               self.confusion[split], best)
