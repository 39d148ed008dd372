"""No host syncs in the training step or the eval pass, proven on the CPU (and on CUDA when there is one).

(a) The detector (`fastcifar.engine.host_sync`) fires on every kind of sync it knows, so it cannot pass
    silently, and stays quiet on the device-side replacements.
(b) Every packaged config, shrunk for the CPU (timm's test models, 32/40 px, batch 16, compile off, amp
    none), builds the trainer's pieces, takes a warm-up step, then runs one whole training step (loader
    batch, augment, forward, loss incl. margins and KD, backward, clip, optimizer, EMA, schedule, metric
    sums) and one eval batch (with the config's TTA) under the detector: nothing may fire.
(c) On CUDA the same steps run under `torch.cuda.set_sync_debug_mode("error")`.

`build_pieces` assembles a run with the trainer's own builders (`fastcifar.engine.build`), and every step runs
through the trainer's `Stepper`, so what is watched here is what the trainer builds and runs.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastcifar.augment import GpuAugment
from fastcifar.config import Config, from_dict, load_config, packaged_configs, to_dict
from fastcifar.engine import build
from fastcifar.engine.checkpoint import save_checkpoint
from fastcifar.engine.host_sync import HostSyncDetector, cuda_sync_errors
from fastcifar.engine.inputs import data_info, eval_loader
from fastcifar.engine.metrics import confusion_matrix
from fastcifar.engine.precision import autocast
from fastcifar.engine.step import Stepper, eval_pass, make_objective, summarize_eval, train_step
from fastcifar.engine.teacher import load_teacher
from fastcifar.losses import build_criterion, one_hot

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).name

# ============================================================================ (a) the detector itself


def _x():
    return torch.arange(6.0)


def _labels():
    return torch.tensor([1, 2, 0])


# name -> (code with one host sync, the op the detector must report)
SYNCS = {
    "item": (lambda x, y: x[0].item(), "aten._local_scalar_dense.default"),
    "float": (lambda x, y: float(x[0]), "aten._local_scalar_dense.default"),
    "int": (lambda x, y: int(x[0]), "aten._local_scalar_dense.default"),
    "bool": (lambda x, y: bool(x[1]), "aten._local_scalar_dense.default"),
    "if_tensor": (lambda x, y: 1 if (x > 2).any() else 0, "aten._local_scalar_dense.default"),
    "is_nonzero": (lambda x, y: x[1].is_nonzero(), "aten._local_scalar_dense.default"),
    "one_hot": (lambda x, y: F.one_hot(y, 3), "aten._local_scalar_dense.default"),  # range check, on CPU
    "nonzero": (lambda x, y: x.nonzero(), "aten.nonzero.default"),
    "where_one_arg": (lambda x, y: torch.where(x > 1), "aten.nonzero.default"),
    "mask_index": (lambda x, y: x[x > 2], "aten.index.Tensor"),
    "mask_assign": (lambda x, y: x.clone().__setitem__(x > 2, 0.0), "aten.index_put_.default"),
    "masked_select": (lambda x, y: x.masked_select(x > 2), "aten.masked_select.default"),
    "unique": (lambda x, y: torch.unique(y), "aten._unique2.default"),
    "unique_consecutive": (lambda x, y: torch.unique_consecutive(y), "aten.unique_consecutive.default"),
    "bincount": (lambda x, y: torch.bincount(y, minlength=3), "aten.bincount.default"),
    "repeat_interleave": (
        lambda x, y: x.repeat_interleave(torch.ones(6, dtype=torch.long)),
        "aten.repeat_interleave.Tensor",
    ),
    "multinomial_no_replacement": (lambda x, y: torch.multinomial(x + 1, 3), "aten.multinomial.default"),
    "multinomial_one_sample": (lambda x, y: torch.multinomial(x + 1, 1, replacement=True), "aten.multinomial.default"),
    "histc_no_range": (lambda x, y: x.histc(4), "aten.histc.default"),
    "equal": (lambda x, y: torch.equal(x, x), "aten.equal.default"),
    "allclose": (lambda x, y: torch.allclose(x, x), "aten.allclose.default"),
    "tensor_from_list": (lambda x, y: torch.tensor([1.0, 2.0], device=x.device), "torch.tensor"),
    "tensor_from_scalar": (lambda x, y: torch.tensor(0.5, device=x.device), "torch.tensor"),
    "as_tensor_from_list": (lambda x, y: torch.as_tensor([1, 2], device=x.device), "torch.as_tensor"),
    "new_tensor": (lambda x, y: x.new_tensor([1.0]), "Tensor.new_tensor"),
    "tolist": (lambda x, y: x.tolist(), "Tensor.tolist"),
    "numpy": (lambda x, y: x.numpy(), "Tensor.numpy"),
    "cpu": (lambda x, y: x.cpu(), "Tensor.cpu"),
}


@pytest.mark.parametrize("name", sorted(SYNCS))
def test_detector_flags_each_kind_of_sync(name):
    code, op = SYNCS[name]
    x, y = _x(), _labels()
    with HostSyncDetector() as detector:
        code(x, y)
    assert detector.events, f"{name}: nothing flagged"
    assert {e.op for e in detector.events} == {op}, detector.report()
    assert all(HERE in e.site for e in detector.events), detector.report()  # the caller's line, not torch's


def test_detector_is_quiet_on_the_device_side_replacements():
    x, y = _x(), _labels()
    draw = torch.Generator().manual_seed(0)
    before = torch.full((3,), 2.0)  # made outside the region: a cached constant
    with HostSyncDetector() as detector:
        torch.where(x > 2, x, 0.0)
        x.masked_fill(x > 2, 0.0)
        x.clone().index_put_((y,), torch.ones(3), accumulate=True)  # integer indices, static shape
        x.clone()[y] = 0.0
        torch.zeros(3, 3).scatter_(1, y[:, None], 1.0)  # one-hot
        torch.zeros(9, dtype=torch.long).index_put_((y * 3 + y,), torch.ones_like(y), accumulate=True)  # confusion
        x.repeat_interleave(torch.ones(6, dtype=torch.long), output_size=6)
        x.repeat_interleave(2)
        torch.multinomial(x + 1, 8, replacement=True)
        x.histc(4, 0, 10)
        torch._assert_async((x >= 0).all())
        torch.full((), 0.5) * before
        int(torch.randint(3, (), generator=draw))  # a host draw by construction (the trainer's multi-scale side)
        torch.distributions.Beta(torch.full((), 1.0), torch.full((), 1.0), validate_args=False).sample()
        (x.sum() > 0) & (x.amax() < 10)
    assert not detector.events, detector.report()


def test_detector_reports_the_project_line_to_fix():
    """A sync inside fastcifar is reported at fastcifar's line (summarize_eval reads the epoch sums, once an epoch)."""
    sums = {
        "loss_sum": torch.tensor(1.0),
        "correct1": torch.tensor(1),
        "correct5": torch.tensor(2),
        "count": torch.tensor(4),
    }
    with HostSyncDetector() as detector:
        summarize_eval(sums, "test")
    assert detector.events and all(e.site.startswith("fastcifar/engine/step.py:") for e in detector.events), (
        detector.report()
    )
    assert "summarize_eval" in detector.events[0].site


def test_detector_allowlist_is_by_op_and_site():
    x = _x()
    with HostSyncDetector(allow=(("aten._local_scalar_dense.default", HERE),)) as detector:
        x[0].item()
        x.nonzero()
    assert [e.op for e in detector.events] == ["aten.nonzero.default"]


def test_detector_on_another_device_flags_copies_and_ignores_host_tensors():
    """device='meta' stands in for CUDA: a pageable host-to-device copy is a finding, host scalars are not."""
    with HostSyncDetector(device="meta") as detector:
        torch.ones(3).to("meta")  # host -> device, blocking
        torch.ones(()).item()  # a host tensor: no device involved
        torch.ones(3, device="meta") + 1
    assert [e.op for e in detector.events] == ["aten._to_copy.default"], detector.report()


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _scaled_steps(optimizer_class, optimizer_kwargs: dict, clip: bool) -> HostSyncDetector:
    """Two fp16-style GradScaler steps (the second watched), as train_step runs them with train.amp=fp16."""
    net = _tiny_net()
    optimizer = optimizer_class(net.parameters(), lr=1e-3, **optimizer_kwargs)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    objective = make_objective(build_criterion(_config_for_criterion()))
    nullcontext = torch.autocast("cpu", enabled=False)
    train_step(net, x, y, objective, optimizer, scaler, nullcontext, grad_clip=1.0 if clip else 0.0)
    with HostSyncDetector() as detector:
        train_step(net, x, y, objective, optimizer, scaler, nullcontext, grad_clip=1.0 if clip else 0.0)
    return detector


def _config_for_criterion() -> Config:
    return load_config("resnet18_baseline", ["train.device=cpu"])


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("clip", [False, True])
def test_fp16_grad_scaler_with_fused_optimizer_and_clip_does_not_sync(optimizer_class, clip):
    """The trainer builds fused optimizers on CUDA: GradScaler hands them grad_scale / found_inf on the
    device instead of reading found_inf with .item(); clip_grad_norm_ scales on the device too."""
    detector = _scaled_steps(optimizer_class, {"fused": True}, clip)
    assert not detector.events, detector.report()


def test_fp16_grad_scaler_with_a_foreach_optimizer_syncs():
    """The counter-example the fused choice avoids: GradScaler._maybe_opt_step reads found_inf with .item()
    (SGD keeps no step counter, so this is the only sync), reported at train_step's scaler.step line."""
    detector = _scaled_steps(torch.optim.SGD, {"foreach": True, "momentum": 0.9}, clip=False)
    assert [e.op for e in detector.events] == ["aten._local_scalar_dense.default"], detector.report()
    assert detector.events[0].site.startswith("fastcifar/engine/step.py:") and "train_step" in detector.events[0].site


def test_one_hot_by_scatter_matches_f_one_hot_without_a_sync():
    labels = torch.tensor([3, 0, 2, 2, 1])
    with HostSyncDetector() as detector:
        out = one_hot(labels, 5)
    assert not detector.events, detector.report()
    assert out.dtype == torch.float32 and torch.equal(out, F.one_hot(labels, 5).float())


def test_confusion_matrix_counts_pairs_without_a_sync():
    preds, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    with HostSyncDetector() as detector:
        cm = confusion_matrix(preds, labels, 4)
    assert not detector.events, detector.report()
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for p, t in zip(preds.tolist(), labels.tolist()):
        expected[t, p] += 1
    assert torch.equal(cm, expected) and cm.dtype == torch.int64


# ============================================================================ (b) every packaged config

BATCH = 16  # images per step
SMALL, LARGE = 32, 40  # px: configs at 32 px stay there, bigger ones shrink to 40 (still a resize on the device)


def _side(px: int) -> int:
    return SMALL if px <= 32 else LARGE


def shrink(cfg: Config, device: str = "cpu", teacher: str | None = None, model_name: str | None = None) -> Config:
    """The config as shipped, made CPU-sized: a timm test model of the same family, small sides, batch 16,
    compile off, amp none, no download; every augmentation, head, loss, EMA, TTA and schedule setting stays."""
    d = to_dict(cfg)
    family = "test_efficientnet" if "efficientnet" in d["model"]["name"] else "test_resnet"
    d["model"].update(name=model_name or family, pretrained=False, embedding_dim=32)
    d["augment"]["image_size"] = _side(d["augment"]["image_size"])
    d["augment"]["scales"] = sorted(
        {_side(s) for s in d["augment"]["scales"]} | ({SMALL, LARGE} if d["augment"]["scales"] else set())
    )
    val_split = BATCH if d["data"]["val_split"] else 0  # a config selecting on val_* keeps a (tiny) val split
    d["data"].update(batch_size=BATCH, eval_batch_size=BATCH, workers=0, val_split=val_split, loader="gpu")
    d["train"].update(device=device, compile=False, amp="none" if device == "cpu" else d["train"]["amp"])
    if d["distill"]["teacher"]:
        d["distill"].update(teacher=teacher, teacher_image_size=_side(d["distill"]["teacher_image_size"]))
    return from_dict(d)


@dataclasses.dataclass
class Pieces:
    """What `Trainer` holds for one run, from the same builders (see build_pieces)."""

    cfg: Config
    device: torch.device
    train_loader: object
    test_loader: object
    eval_augment: GpuAugment
    stepper: Stepper  # the trainer's per-batch step: augment, train_step, EMA, schedule
    num_classes: int
    step: int = 0

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, sums: dict) -> None:
        """Trainer._step plus the metric sums of Trainer._train_epoch."""
        loss, hits = self.stepper(images, labels, self.step)
        self.step += 1
        sums["loss"] += loss.double() * labels.shape[0]
        sums["correct"] += hits

    def eval_batch(self) -> dict:
        """eval_pass over the first batch of the real test loader, with the config's TTA, padded as a compiled
        model's last partial batch is (`pad_to`): the padding path must not sync either."""
        first = _FirstBatch(self.test_loader)
        ema = self.stepper.ema
        eval_model = ema.module if ema is not None else self.stepper.model
        return eval_pass(
            eval_model,
            first,
            self.eval_augment.eval_batch,
            autocast(self.device, self.cfg.train.amp),
            self.num_classes,
            tta=self.cfg.train.tta,
            pad_to=BATCH + 3,  # every eval batch here is "partial"
        )


class _FirstBatch:
    """The first batch of a loader, read through its real __iter__."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return itertools.islice(iter(self.loader), 1)


def build_pieces(cfg: Config, device: str = "cpu") -> Pieces:
    """Trainer._build_data / _build_model / _build_optimization for `cfg`, through the same builders.

    One deliberate difference on the CPU: the optimizer is built as on CUDA (fused kernels: `kernels_for="cuda"`),
    because that is the step this test stands in for. CPU runs use the foreach kernels, whose Adam keeps its
    step counter on the host and reads it with .item() (harmless there: no device).
    """
    dev = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    info = data_info(cfg)
    train_loader, augment = build.train_input(cfg, info, dev)
    test_loader = eval_loader(cfg, "test", dev)
    model = build.build_model_on(cfg, info.num_classes, dev)
    ema = build.ema_of(model, cfg)
    teacher = load_teacher(cfg, info.num_classes, dev) if cfg.distill.teacher else None
    stepper = build.stepper(cfg, augment, model, ema, teacher, len(train_loader), dev, kernels_for="cuda")
    return Pieces(cfg, dev, train_loader, test_loader, build.eval_augment(cfg, info), stepper, info.num_classes)


def run_watched(pieces: Pieces) -> tuple[HostSyncDetector, dict, dict]:
    """Warm-up step + eval batch, then one training step and one eval batch under the detector."""
    device = pieces.device
    sums = {
        "loss": torch.zeros((), dtype=torch.float64, device=device),
        "correct": torch.zeros((), dtype=torch.int64, device=device),
    }
    batches = iter(pieces.train_loader)  # once per epoch in the trainer
    pieces.train_step(*next(batches), sums)  # warm-up: optimizer state, cached constants, lazy inits
    pieces.eval_batch()
    with HostSyncDetector(device=device) as detector:
        images, labels = next(batches)
        pieces.train_step(images, labels, sums)
        scores = pieces.eval_batch()
    return detector, sums, scores


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, prepared_root):
    """A tiny finished 'resnet50_arcface_224' teacher (the KD config's), as a best.pt of the shrunk config."""
    root = prepared_root("cifar100", ("npy",))
    cfg = shrink(load_config("resnet50_arcface_224", [f"data.root={root}"]))
    torch.manual_seed(0)
    model = build.build_model_on(cfg, data_info(cfg).num_classes, torch.device("cpu"))
    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "ema": None,
            "config": to_dict(cfg),
            "num_classes": data_info(cfg).num_classes,
            "epoch": 0,
        },
        path,
    )
    return str(path)


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_packaged_config_step_and_eval_have_no_host_sync(name, prepared_root, teacher_run):
    shipped = load_config(name, ["train.device=cpu"])
    root = prepared_root(shipped.data.dataset, ("npy",))
    cfg = shrink(load_config(name, [f"data.root={root}"]), teacher=teacher_run)
    pieces = build_pieces(cfg)
    assert pieces.stepper.optimizer.defaults["fused"]  # the CUDA kernels, as build_pieces says
    detector, sums, scores = run_watched(pieces)
    assert not detector.events, f"{name}: host syncs in the step or eval pass:\n{detector.report()}"
    # the watched code really ran: two steps of 16 images, one eval batch of 16
    assert pieces.step == 2 and torch.isfinite(sums["loss"]) and 0 <= int(sums["correct"]) <= 2 * BATCH
    assert int(scores["count"]) == BATCH and int(scores["confusion"].sum()) == BATCH


# Settings no packaged config ships, on top of one that is close: (config, section changes after shrink).
VARIANTS = {
    "grad_clip_cosface": ("resnet18_arcface_224", {"optim": {"grad_clip": 1.0}, "model": {"head": "cosface"}}),
    "arcface_easy_margin_mixup_ema_tta": (
        "seed003_resnet34_cifar10_cutmix_mixup",
        {
            "model": {"head": "arcface", "easy_margin": True},
            "train": {"ema_decay": 0.99, "label_smoothing": 0.1, "tta": True},
        },
    ),
    "fp16_grad_scaler_clip": ("resnet18_baseline", {"train": {"amp": "fp16"}, "optim": {"grad_clip": 2.0}}),
    "kd_mixup": ("resnet18_pretrained_arcface_kd", {"augment": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_step_variants_have_no_host_sync(variant, prepared_root, teacher_run):
    name, changes = VARIANTS[variant]
    root = prepared_root(load_config(name).data.dataset, ("npy",))
    d = to_dict(shrink(load_config(name, [f"data.root={root}"]), teacher=teacher_run))
    for section, values in changes.items():
        d[section].update(values)
    pieces = build_pieces(from_dict(d))
    assert pieces.stepper.scaler.is_enabled() == (d["train"]["amp"] == "fp16")
    detector, sums, scores = run_watched(pieces)
    assert not detector.events, f"{variant}: host syncs in the step or eval pass:\n{detector.report()}"
    assert pieces.step == 2 and torch.isfinite(sums["loss"]) and int(scores["count"]) == BATCH


# ============================================================================ (c) CUDA: the device's own check

HEADLINE = [
    "resnet18_arcface_224",
    "resnet18_arcface_multiscale",
    "resnet18_augment",
    "seed003_resnet34_cifar10_cutmix_mixup",
    "fast_cifar100_resnet50_224",
    "seed002_effb0_128_scratch",
    "resnet18_pretrained_arcface_kd",
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sync_errors_raises_on_a_sync_and_restores_the_mode():
    x = torch.ones(4, device="cuda")
    before = torch.cuda.get_sync_debug_mode()
    with pytest.raises(RuntimeError):
        with cuda_sync_errors():
            x.sum().item()
    with cuda_sync_errors():
        (x * 2).sum()  # queued work only: no error
    assert torch.cuda.get_sync_debug_mode() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", HEADLINE)
def test_cuda_step_and_eval_run_under_sync_debug_mode_error(name, prepared_root, teacher_run):
    """The real model family (resnet18 etc., not pretrained) at the config's AMP on CUDA, small sides:
    CUDA itself raises on any synchronizing call in the step or the eval batch."""
    root = prepared_root(load_config(name).data.dataset, ("npy",))
    shipped = load_config(name, [f"data.root={root}"])
    cfg = shrink(shipped, device="cuda", teacher=teacher_run, model_name=shipped.model.name)
    pieces = build_pieces(cfg, "cuda")
    sums = {
        "loss": torch.zeros((), dtype=torch.float64, device="cuda"),
        "correct": torch.zeros((), dtype=torch.int64, device="cuda"),
    }
    batches = iter(pieces.train_loader)
    pieces.train_step(*next(batches), sums)
    pieces.eval_batch()
    torch.cuda.synchronize()
    with cuda_sync_errors(), HostSyncDetector(device="cuda") as detector:
        images, labels = next(batches)
        pieces.train_step(images, labels, sums)
        scores = pieces.eval_batch()
    assert not detector.events, detector.report()
    assert torch.isfinite(sums["loss"]) and int(scores["count"]) == BATCH
