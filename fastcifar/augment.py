"""GpuAugment: the shared, batched augmentation every loader feeds (uint8 in, model input out).

    images uint8 [B, 3, 32, 32] (any device)
      -> crop/translate + flips (one gather)        uint8, 32 px (flips random, or alternating per epoch)
      -> auto-augment policy (policy.py)            uint8, 32 px, its own ops and magnitudes per image
      -> shift-scale-rotate, colour jitter          float32 at 32 px, rounded back to uint8
      -> cutout                                     uint8, 32 px
      -> resize to image_size + normalize           out_dtype, channels_last
         (or RandomResizedCrop: a box per image cut and resized in one op, resized_crop.py)
      -> mixup / cutmix (per batch or per image)    in place, soft labels [B, C]

Randomness comes from the global torch RNG of the input's device, and every decision is a tensor
(masks [B], a Beta draw), so `train_batch` has no data-dependent Python branches and no host sync.
`sample` / `apply` and `sample_mix` / `mix` are public so a test can replay exact parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from fastcifar import augment_ops as ops
from fastcifar import losses
from fastcifar.alternate_flip import alternate_flips
from fastcifar.config import AugmentConfig
from fastcifar.errors import FastcifarError
from fastcifar.policy import Policy
from fastcifar.resized_crop import resized_crop, sample_boxes

OPS = ("ssr", "cutout", "jitter", "hflip", "vflip")  # the per-image ops `one_of` chooses from
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STORED_SIDE = 32  # px of the images every loader yields when per_image_ops=True


@dataclass
class AugmentParams:
    """Per-image parameters for one batch; None = op off in the config.

    All tensors are [B, ...] on the batch's device (the policy's [S, ...]).
    """

    dy: Tensor | None = None  # [B] int64 crop offset, px
    dx: Tensor | None = None
    hflip: Tensor | None = None  # [B] bool
    vflip: Tensor | None = None
    ssr: Tensor | None = None  # [B] bool
    theta: Tensor | None = None  # [B, 2, 3] float32 affine_grid matrices
    jitter: Tensor | None = None  # [B] bool
    factors: Tensor | None = None  # [B, 4] float32 brightness, contrast, saturation, hue shift
    cutout: Tensor | None = None  # [B] bool
    cut_y0: Tensor | None = None  # [B] int64 top-left corner of the hole, px
    cut_x0: Tensor | None = None
    policy_ops: Tensor | None = None  # [S, B] int64 indices into policy_ops.OPS, S = ops per image
    policy_magnitudes: Tensor | None = None  # [S, B] float64 signed magnitudes, torchvision's units
    policy_order: Tensor | None = None  # [S, K*G] int64 image per stratified position (policy.Policy.sample)
    rrc_box: Tensor | None = None  # [B, 4] int64 RandomResizedCrop box (top, left, height, width), px


@dataclass
class MixParams:
    """One batch's mixup / cutmix draw (scalar tensors or a map on the batch's device)."""

    other_weight: Tensor  # weight of the partner image: scalar (mixup only) or [1, 1, S, S] map;
    # mix_mode elem: [B, 1, 1, 1] or [B, 1, S, S], one per image
    lam: Tensor  # float32 weight of the image's own label: scalar, or [B] with mix_mode elem
    mixed: Tensor  # bool, scalar or [B]: the mix_prob coin came up (lam < 1 up to a zero-area box)
    cutmix: Tensor  # bool, scalar or [B]: cutmix was chosen over mixup (meaningful when mixed)


class GpuAugment:
    """Batched augmentation + resize + normalize + mixup/cutmix on the input's device.

    Args:
        cfg: the `augment` section of the config.
        mean, std: per-channel train-split statistics on the 0-255 scale (manifest "mean"/"std").
            With cfg.normalize false the output is x / 255 instead.
        num_classes: width of the soft labels when mixup/cutmix is on.
        per_image_ops: False when the loader already cropped/flipped/resized each image on the CPU;
            then only resize-if-needed, normalize and mixup/cutmix run here.
        out_dtype: dtype of the returned images (float32, or bfloat16/float16 to feed AMP directly).
        seed: train.seed; with hflip_mode alternate it decides which half of the images is mirrored in
            even epochs (see alternate_flip.py). `set_epoch` gives the epoch.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        per_image_ops: bool = True,
        out_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ):
        _validate(cfg, mean, std, num_classes, out_dtype)
        self.cfg = cfg
        self.num_classes = num_classes
        self.per_image_ops = per_image_ops
        self.out_dtype = out_dtype
        self.mixing = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
        mean_t = torch.tensor(mean if cfg.normalize else [0.0] * 3, dtype=torch.float64)
        std_t = torch.tensor(std if cfg.normalize else [255.0] * 3, dtype=torch.float64)
        self._scale = (1.0 / std_t).float()  # [3] per channel, applied to 0-255 pixels
        self._shift = (-mean_t / std_t).float()
        self._consts: dict[tuple, Tensor | tuple[Tensor, ...]] = {}  # (what, device) -> constants on that device
        self.policy = None if cfg.policy == "none" else Policy(cfg.policy, cfg.policy_ops, cfg.policy_magnitude,
                                                                 cfg.policy_magnitude_std)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The training epoch about to run: alternating flips mirror the other half in odd epochs."""
        self.epoch = epoch

    # ------------------------------------------------------------------ entry points

    def train_batch(self, images: Tensor, labels: Tensor, size: int | None = None) -> tuple[Tensor, Tensor]:
        """Augment one training batch.

        Args:
            images: uint8 [B, 3, H, W] on any device (32 px when per_image_ops).
            labels: int64 [B] on the same device.
            size: output side in px for this batch (multi-scale training); None = cfg.image_size.

        Returns:
            x: [B, 3, S, S] out_dtype, channels_last, normalized (S = size or cfg.image_size).
            targets: labels unchanged (int64 [B]), or float32 soft labels [B, C] summing to one
                whenever mixup or cutmix is enabled (also in batches the draw left unmixed).
        """
        _check_images(images)
        x, box = images, None
        if self.per_image_ops:
            p = self.sample(x.shape[0], x.shape[-2], x.shape[-1], x.device)
            if self.cfg.hflip_mode == "alternate":  # decided by the stored pixels, before any crop
                p.hflip = alternate_flips(images, self.seed, self.epoch)
            x, box = self.apply(x, p), p.rrc_box
        x = self.to_model_input(x, size, box)
        if not self.mixing:
            return x, labels
        return self.mix(x, labels, self.sample_mix(x.shape[-1], x.device, x.shape[0]))

    def eval_batch(self, images: Tensor) -> Tensor:
        """Resize + normalize only, no randomness. uint8 [B, 3, H, W] -> [B, 3, S, S] out_dtype, channels_last."""
        _check_images(images)
        return self.to_model_input(images)

    def to_model_input(self, x: Tensor, size: int | None = None, box: Tensor | None = None) -> Tensor:
        """uint8 [B, 3, H, W] -> [B, 3, S, S] out_dtype channels_last: resize and normalize, cheap order per device.

        With `box` (int64 [B, 4], RandomResizedCrop), each image's box is cut and resized instead, after
        normalizing the small image (the crop and resize are one pair of matmuls in out_dtype).
        """
        scale, shift = self._device_consts(x.device)
        side = size or self.cfg.image_size
        if box is not None:
            return resized_crop(ops.normalize(x, scale, shift, self.out_dtype), box, side)
        if x.device.type == "cpu":  # vectorised uint8 resize, then one convert + affine pass
            return ops.normalize(ops.resize(x, side), scale, shift, self.out_dtype)
        # CUDA has no uint8 bilinear kernel: normalize the small image, resize in out_dtype
        y = ops.resize(ops.normalize(x, scale, shift, self.out_dtype), side)
        return y.contiguous(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ per-image ops

    def sample(self, batch: int, height: int, width: int, device: torch.device) -> AugmentParams:
        """Draw every per-image decision and parameter for a batch of `batch` images of height x width px."""
        cfg, p = self.cfg, AugmentParams()
        masks = self._op_masks(batch, device)
        if cfg.crop_padding:
            p.dy, p.dx = torch.randint(-cfg.crop_padding, cfg.crop_padding + 1, (2, batch), device=device)
        p.hflip, p.vflip = masks.get("hflip"), masks.get("vflip")
        if "ssr" in masks:
            angle = _uniform(batch, -cfg.rotate_limit, cfg.rotate_limit, device)
            scale = _uniform(batch, 1 - cfg.scale_limit, 1 + cfg.scale_limit, device)
            shift = _uniform((batch, 2), -cfg.shift_limit, cfg.shift_limit, device)
            p.ssr, p.theta = masks["ssr"], ops.ssr_matrices(angle, scale, shift, height, width)
        if "jitter" in masks:
            lo_hi = [(max(0.0, 1 - v), 1 + v) for v in (cfg.brightness, cfg.contrast, cfg.saturation)]
            lo_hi.append((-cfg.hue, cfg.hue))
            cols = [_uniform(batch, lo, hi, device) for lo, hi in lo_hi]
            p.jitter, p.factors = masks["jitter"], torch.stack(cols, dim=1)
        if "cutout" in masks:
            centre = torch.stack([torch.randint(0, n, (batch,), device=device) for n in (height, width)])
            p.cutout = masks["cutout"]
            p.cut_y0, p.cut_x0 = centre - cfg.cutout_size // 2  # hole centred on a uniform pixel
        if self.policy is not None:
            p.policy_ops, p.policy_magnitudes, p.policy_order = self.policy.sample(batch, height, width, device)
        if cfg.rrc_scale:
            p.rrc_box = sample_boxes(batch, height, width, cfg.rrc_scale, cfg.rrc_ratio, device)
        return p

    def apply(self, images: Tensor, p: AugmentParams) -> Tensor:
        """Run the per-image ops of `p` on uint8 [B, 3, H, W]; returns uint8 [B, 3, H, W] channels_last."""
        cfg, x = self.cfg, images
        if p.dy is not None or p.hflip is not None or p.vflip is not None:
            B = x.shape[0]
            off = torch.zeros(B, dtype=torch.long, device=x.device)
            no = torch.zeros(B, dtype=torch.bool, device=x.device)
            x = ops.crop_flip(
                x, _or(p.dy, off), _or(p.dx, off), _or(p.hflip, no), _or(p.vflip, no), cfg.crop_padding, cfg.pad_mode
            )
        if p.policy_ops is not None:  # after crop/flip, before the other ops, as torchvision recipes order them
            x = self.policy.apply(x, p.policy_ops, p.policy_magnitudes, p.policy_order)
        if p.ssr is not None:
            x = ops.shift_scale_rotate(x, p.theta, p.ssr, "reflection" if cfg.pad_mode == "reflect" else "zeros")
        if p.jitter is not None:
            x = ops.color_jitter(x, p.factors, p.jitter, hue=cfg.hue > 0)
        if p.cutout is not None:
            x = ops.cutout(x, p.cut_y0, p.cut_x0, cfg.cutout_size, p.cutout)
        return x

    def _op_masks(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """[B] bool per active op: independent coins, or with one_of exactly one op per image."""
        active = [name for name in OPS if getattr(self.cfg, name) > 0]
        if not active:
            return {}
        if self.cfg.one_of:  # albumentations OneOf(p=1): pick with weights proportional to the probabilities
            weights = self._cached(("one_of", tuple(active)), device,
                                   lambda: torch.tensor([getattr(self.cfg, n) for n in active]))  # [len(active)]
            pick = torch.multinomial(weights, batch, replacement=True)  # [B] index into `active`
            return {name: pick == k for k, name in enumerate(active)}
        return {name: torch.rand(batch, device=device) < getattr(self.cfg, name) for name in active}

    # ------------------------------------------------------------------ mixup / cutmix

    def sample_mix(self, size: int, device: torch.device, batch: int | None = None) -> MixParams:
        """Draw one batch's mix: whether to mix (mix_prob), mixup or cutmix (mix_switch_prob), lambda ~ Beta.

        With mix_mode elem (and `batch` given) every image draws its own coin, lambda and mixup/cutmix
        choice (timm's elem mode), see `_sample_mix_elem`.
        """
        cfg = self.cfg
        if cfg.mix_mode == "elem" and batch is not None:
            return self._sample_mix_elem(batch, size, device)
        lam = other = None
        use_cut = torch.full((), cfg.mixup_alpha == 0, device=device)
        if cfg.mixup_alpha > 0:
            other = (1 - _beta(cfg.mixup_alpha, device)).to(self.out_dtype).float()  # as the pixels will see it
            lam = 1 - other
        if cfg.cutmix_alpha > 0:
            lam_cut = _beta(cfg.cutmix_alpha, device)
            side = (size * torch.sqrt(1 - lam_cut)).long()
            cy, cx = torch.randint(0, size, (2,), device=device)
            box, area = ops.box_map(size, cy, cx, side, device)
            if other is None:
                other, lam = box, 1 - area
            else:
                use_cut = torch.rand((), device=device) < cfg.mix_switch_prob
                other, lam = torch.where(use_cut, box, other), torch.where(use_cut, 1 - area, lam)
        on = torch.rand((), device=device) < cfg.mix_prob
        return MixParams(torch.where(on, other, 0.0), torch.where(on, lam, 1.0), mixed=on, cutmix=use_cut)

    def _sample_mix_elem(self, batch: int, size: int, device: torch.device) -> MixParams:
        """Per-image mix draws: other_weight [B, 1, 1, 1] (mixup only) or [B, 1, S, S], lam / mixed / cutmix [B].

        Image i's own-label weight lam[i] pairs with its partner's image (`augment_ops.partner_index`);
        both images of a pair draw independently.
        """
        cfg = self.cfg
        lam = torch.ones(batch, device=device)
        other = torch.zeros(batch, 1, 1, 1, device=device)
        use_cut = torch.full((batch,), cfg.mixup_alpha == 0, device=device)
        if cfg.mixup_alpha > 0:
            other = (1 - _beta(cfg.mixup_alpha, device, (batch,))).to(self.out_dtype).float()[:, None, None, None]
            lam = 1 - other.view(batch)
        if cfg.cutmix_alpha > 0:
            side = (size * torch.sqrt(1 - _beta(cfg.cutmix_alpha, device, (batch,)))).long()
            cy, cx = torch.randint(0, size, (2, batch), device=device)
            box, area = _box_maps(size, cy, cx, side)  # [B, 1, S, S], [B]
            if cfg.mixup_alpha > 0:
                use_cut = torch.rand(batch, device=device) < cfg.mix_switch_prob
            other = torch.where(use_cut[:, None, None, None], box, other)
            lam = torch.where(use_cut, 1 - area, lam)
        on = torch.rand(batch, device=device) < cfg.mix_prob
        return MixParams(torch.where(on[:, None, None, None], other, 0.0), torch.where(on, lam, 1.0), on, use_cut)

    def mix(self, x: Tensor, labels: Tensor, p: MixParams) -> tuple[Tensor, Tensor]:
        """Mix x in place with its partner (see `augment_ops.partner_index`); soft labels float32 [B, C]."""
        partner = ops.partner_index(x.shape[0], x.device)
        one_hot = losses.one_hot(labels, self.num_classes)  # [B, C] float32, by scatter_ (see losses.one_hot)
        lam = p.lam[:, None] if p.lam.dim() else p.lam  # [B, 1] per image (mix_mode elem) or a scalar
        targets = lam * one_hot + (1 - lam) * one_hot[partner]
        return ops.mix_(x, p.other_weight), targets

    # ------------------------------------------------------------------ helpers

    def _device_consts(self, device: torch.device) -> tuple[Tensor, Tensor]:
        return self._cached("normalize", device, lambda: (self._scale, self._shift))

    def _cached(self, key, device: torch.device, make):
        """`make()` (host tensors) copied to `device` once: a host-to-device copy inside the step would sync."""
        if (key, device) not in self._consts:
            value = make()
            moved = tuple(t.to(device) for t in value) if isinstance(value, tuple) else value.to(device)
            self._consts[(key, device)] = moved
        return self._consts[(key, device)]


TTA_MODES = ("none", "flip", "flip_translate")


def tta_batches(images: Tensor, prepare, mode: str | bool) -> list[tuple[Tensor, int, float]]:
    """The evaluation views of one batch, grouped for `eval_pass`: [(x, views, weight), ...].

    Each x is [views * B, 3, S, S] (the views stacked along the batch: one forward scores them all); the
    prediction is the weighted mean over entries of the mean softmax over each entry's views. Modes:
        none: [(x, 1, 1.0)]
        flip: [(x + mirror, 2, 1.0)]
        flip_translate: airbench's: [(x + mirror, 2, 0.5), (1 px up-left + mirror, 2, 0.25),
            (1 px down-right + mirror, 2, 0.25)]; translates shift the stored image by 1 px with
            reflect padding (uint8, before resize), so they cost two more forwards of 2B images.

    Args:
        images: uint8 [B, 3, H, W] as loaders yield them (any dtype works for none / flip).
        prepare: images -> model input [B, 3, S, S] (`GpuAugment.eval_batch`).
        mode: one of TTA_MODES; True / False mean flip / none.
    """
    mode = {True: "flip", False: "none"}.get(mode, mode)
    if mode not in TTA_MODES:
        raise FastcifarError(f"train.tta must be one of {', '.join(TTA_MODES)}, got {mode!r}.")

    def with_mirror(x: Tensor) -> Tensor:
        return torch.cat([x, torch.flip(x, dims=[3])])  # [2B, 3, S, S], the mirror flipped along W

    x = prepare(images)
    if mode == "none":
        return [(x, 1, 1.0)]
    if mode == "flip":
        return [(with_mirror(x), 2, 1.0)]
    B = images.shape[0]
    out = [(with_mirror(x), 2, 0.5)]
    for shift in (-1, 1):  # airbench: the 1 px reflect-padded crops at (0, 0) and (2, 2)
        off = torch.full((B,), shift, dtype=torch.long, device=images.device)
        no = torch.zeros(B, dtype=torch.bool, device=images.device)
        moved = ops.crop_flip(images, off, off, no, no, 1, "reflect")
        out.append((with_mirror(prepare(moved)), 2, 0.25))
    return out


def _uniform(shape, lo: float, hi: float, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, device=device)


def _box_maps(size: int, cy: Tensor, cx: Tensor, cut: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image cutmix boxes like `augment_ops.box_map`: [B, 1, S, S] float32 ones inside, area fractions [B]."""
    y0, x0 = cy - cut // 2, cx - cut // 2
    y0, y1 = y0.clamp(0, size), (y0 + cut).clamp(0, size)
    x0, x1 = x0.clamp(0, size), (x0 + cut).clamp(0, size)
    i = torch.arange(size, device=cy.device)
    rows = (i >= y0[:, None]) & (i < y1[:, None])  # [B, S]
    cols = (i >= x0[:, None]) & (i < x1[:, None])
    area = ((y1 - y0) * (x1 - x0)).float() / float(size * size)
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None], area


def _beta(alpha: float, device: torch.device, shape: tuple[int, ...] = ()) -> Tensor:
    a = torch.full(shape, float(alpha), device=device)
    return torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would sync with the host


def _or(value: Tensor | None, default: Tensor) -> Tensor:
    return default if value is None else value


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"GpuAugment expects uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}.")


def _validate(cfg: AugmentConfig, mean, std, num_classes: int, out_dtype: torch.dtype) -> None:
    """Raise FastcifarError with the fix for the runtime values GpuAugment is given (the config's own
    ranges are checked by fastcifar.config when the config is built)."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise FastcifarError(message)

    prepare = "re-run `fastcifar data prepare` to recompute them"
    need(len(mean) == 3 and len(std) == 3,
         f"Normalization needs 3 channel means and stds, got {mean} and {std}; {prepare}.")
    need(all(math.isfinite(s) and s > 0 for s in std), f"Channel stds {std} must be positive; {prepare}.")
    need(num_classes >= 1, f"num_classes must be at least 1, got {num_classes}.")
    need(out_dtype in OUT_DTYPES, f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}.")
