"""DINO multi-crop augmentation for any band count, as batched tensor ops on the batch's device.

Why plain torch (``F.grid_sample`` with per-sample affine grids) and not kornia:
  * one ``grid_sample`` call per crop size cuts every crop of every sample at once and folds in the
    horizontal/vertical flips and 90-degree rotations for free (they are signs/permutations of the
    affine matrix), so geometry costs one resampling pass whatever the augmentation;
  * all randomness is drawn in ONE ``torch.rand`` call from the caller's ``torch.Generator``, so a
    resumed run replays the same augmentations; kornia's random generators draw from the global RNG
    and take no generator;
  * measured on a shared 2-core CPU (B=64, 3 bands, 2x64 + 6x32 px crops, geometry only, same
    process and load): one bicubic ``grid_sample`` per crop size 22 ms (bilinear 14 ms) vs kornia 0.9
    ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``RandomVerticalFlip`` 84 ms, without rotations
    (a one-off comparison; ``bench/gpu_step.py --augment-only`` times this module on any device);
  * the GPU host has no kornia, and the training hot path must not depend on it.

Photometric ops (DINO order: brightness/contrast -> grayscale -> blur -> solarise -> normalise) work
on values scaled to [0, 1] when ``value_range`` is given (clipped like torchvision); otherwise on
standardised values without clipping, and solarisation is disabled. "Grayscale" averages the
STANDARDISED bands (then maps back), so a dim band (e.g. Sentinel-2 B10) is not flooded with the
brightness of the others. No per-sample Python loops, no host syncs: safe to run every step on a GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from geossl.config import AugmentConfig

log = logging.getLogger(__name__)
_WARNED: set[str] = set()

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of random resized crops (torchvision default)
CROP_TRIES = 10  # like torchvision: up to 10 draws that fit, else the whole image
SIGMA = (0.1, 2.0)  # Gaussian blur sigma range in output pixels (DINO)
# Uniform numbers per (crop, sample): 2 per crop try, then position x/y, hflip, vflip, rot90,
# jitter apply/brightness/contrast, grayscale, blur apply/sigma, solarise.
_U_POS, _U_FLIP, _U_ROT, _U_JIT, _U_GRAY, _U_BLUR, _U_SOL = (2 * CROP_TRIES + i for i in (0, 2, 4, 5, 8, 9, 11))
N_UNIFORM = 2 * CROP_TRIES + 12


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


class MultiCropAugment(torch.nn.Module):
    """DINO multi-crop for any band count, batched tensor ops on whatever device the batch is on (GPU in training).

    ``forward(images)`` takes RAW pixel values (B, C, H, W) of any dtype and returns
    ``[global_1, global_2, local_1 .. local_n]``, float32, normalised per band with ``mean``/``std``
    (raw units). ``value_range`` is the valid raw range (e.g. (0, 255) for uint8, (0, 10000) for
    reflectance): values outside it are clipped, photometric ops act on [0, 1]. Runs with autocast
    disabled, so outputs are float32 even inside a bf16-mixed training step.
    """

    # Buffers registered in __init__ (declared so type checkers see Tensors, not Tensor | Module).
    mean: Tensor
    std: Tensor
    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        cfg: AugmentConfig,
        mean: Sequence[float],
        std: Sequence[float],
        value_range: tuple[float, float] | None = None,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"augment: {len(mean)} means but {len(std)} stds")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"augment: interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if value_range is not None and not value_range[1] > value_range[0]:
            raise ValueError(f"augment: value_range {value_range} must be (low, high) with high > low")
        if len(cfg.blur_p) != 3:
            raise ValueError("augment.blur_p: expected [global-1, global-2, locals]")
        self.cfg = cfg
        self.value_range = value_range
        self.interpolation = interpolation
        m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.tensor([float(v) for v in std], dtype=torch.float32).clamp_min(1e-6)
        if value_range is None:  # working space = standardised values: z = x
            a, b = torch.ones_like(m), torch.zeros_like(m)
            if cfg.solarize_p > 0:
                _warn_once("solarize", "augment: solarisation disabled (no value_range: values are not in [0, 1])")
        else:  # working space = [0, 1]: z = a * x + b
            lo, hi = float(value_range[0]), float(value_range[1])
            a, b = (hi - lo) / s, (lo - m) / s
        shape = (1, -1, 1, 1)
        # Non-persistent: they follow .to(device) but never enter checkpoints.
        self.register_buffer("mean", m.view(shape), persistent=False)
        self.register_buffer("std", s.view(shape), persistent=False)
        self.register_buffer("scale", a.view(shape), persistent=False)
        self.register_buffer("shift", b.view(shape), persistent=False)

    @property
    def n_crops(self) -> int:
        return 2 + self.cfg.n_local

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                images_other: Tensor | None = None) -> list[Tensor]:
        """``images_other`` (temporal views): the same ground on another date, same shape; global-2 (and, with
        ``temporal_locals``, every other local crop) is cut from it, with the crop and photometric draws it
        would have had from ``images``, so ``images_other = images`` gives exactly the plain crops."""
        if images.ndim != 4 or images.shape[1] != self.mean.shape[1]:
            raise ValueError(f"augment: expected (B, {self.mean.shape[1]}, H, W) images, got {tuple(images.shape)}")
        if images_other is not None and images_other.shape != images.shape:
            raise ValueError(f"augment: other-date images {tuple(images_other.shape)} differ from {tuple(images.shape)}")
        dev = images.device
        n_loc = self.cfg.n_local
        # One draw for everything: (crop, sample, uniform). From the generator's device, then moved.
        gdev = generator.device if generator is not None else dev
        u = torch.rand((2 + n_loc, images.shape[0], N_UNIFORM), generator=generator, device=gdev)
        u = u.to(dev, non_blocking=True)
        with torch.autocast(device_type=dev.type, enabled=False):
            # Into the working space BEFORE cropping: resampling is linear, and the input is the smaller tensor.
            x = self._working_space(images)
            x_other = self._working_space(images_other) if images_other is not None else None
            out = self._group(x, u[:2], self.cfg.global_size, self.cfg.global_scale, global_group=True,
                              x_other=x_other, other_crops=[1])
            crops = list(out.chunk(2))
            if n_loc > 0:
                odd = list(range(1, n_loc, 2)) if self.cfg.temporal_locals else []
                out = self._group(x, u[2:], self.cfg.local_size, self.cfg.local_scale, global_group=False,
                                  x_other=x_other, other_crops=odd)
                crops += list(out.chunk(n_loc))
        return crops

    def _working_space(self, images: Tensor) -> Tensor:
        """Raw values -> [0, 1] (with a value range) or standardised values, before any resampling."""
        if self.value_range is not None:
            lo, hi = self.value_range
            return ((images.float() - lo) * (1.0 / (hi - lo))).clamp_(0.0, 1.0)
        return (images.float() - self.mean) / self.std

    # ---- geometry -------------------------------------------------------------------------------

    def _grid(self, u: Tensor, H: int, W: int, size: int, scale: Sequence[float]) -> Tensor:
        """Sampling grid (B, n*size, size, 2) for n crops per sample: crop, flips and rot90 in one affine map."""
        n, B = u.shape[:2]
        area = H * W * (scale[0] + (scale[1] - scale[0]) * u[..., 0:2 * CROP_TRIES:2])  # (n, B, tries)
        log_r = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[..., 1:2 * CROP_TRIES:2]
        ratio = torch.exp(log_r)
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        fits = (w <= W) & (h <= H)
        pick = fits.float().argmax(dim=-1, keepdim=True)  # first try that fits
        any_fit = fits.any(dim=-1)
        # torchvision's fallback: the whole image, clamped to the aspect-ratio range.
        w = torch.where(any_fit, w.gather(-1, pick).squeeze(-1), min(W, H * RATIO[1]))
        h = torch.where(any_fit, h.gather(-1, pick).squeeze(-1), min(H, W / RATIO[0]))
        # Centre in pixels, uniform over positions that keep the crop inside the image.
        cx = w / 2 + (W - w) * u[..., _U_POS]
        cy = h / 2 + (H - h) * u[..., _U_POS + 1]
        # Half-extent and centre in grid_sample's normalised coordinates (align_corners=False).
        sx, sy = w / W, h / H
        tx, ty = 2 * cx / W - 1, 2 * cy / H - 1
        fx = torch.where(u[..., _U_FLIP] < 0.5, -1.0, 1.0)
        fy = torch.where(u[..., _U_FLIP + 1] < 0.5, -1.0, 1.0) if self.cfg.vflip else torch.ones_like(fx)
        if self.cfg.rotate90:
            k = torch.floor(u[..., _U_ROT] * 4).clamp_max(3)
            cos, sin = torch.cos(k * (math.pi / 2)).round(), torch.sin(k * (math.pi / 2)).round()
        else:
            cos, sin = torch.ones_like(fx), torch.zeros_like(fx)
        # in = diag(sx*fx, sy*fy) @ R(k) @ out + t, written elementwise (a K=3 matmul is slow on CPU,
        # and TF32 matmuls on GPU would round the coordinates).
        ax, ay = (sx * fx)[..., None, None], (sy * fy)[..., None, None]
        cos, sin = cos[..., None, None], sin[..., None, None]
        lin = (torch.arange(size, device=u.device, dtype=torch.float32) * 2 + 1) / size - 1
        gx, gy = lin.view(1, 1, 1, size), lin.view(1, 1, size, 1)
        grid = torch.stack(
            [ax * (cos * gx - sin * gy) + tx[..., None, None], ay * (sin * gx + cos * gy) + ty[..., None, None]], -1
        )  # (n, B, size, size, 2)
        # Crops stacked along H: (B, n*size, size, 2), so one grid_sample serves all n crops.
        return grid.transpose(0, 1).reshape(B, n * size, size, 2)

    def _group(self, x: Tensor, u: Tensor, size: int, scale: Sequence[float], global_group: bool,
               x_other: Tensor | None = None, other_crops: Sequence[int] = ()) -> Tensor:
        """All crops of one size: (n*B, C, size, size), crop-major (row = crop * B + sample); the crops
        numbered in ``other_crops`` are cut from ``x_other`` (another date) on the same sampling grid."""
        n, B = u.shape[:2]
        C, H, W = x.shape[1:]
        grid = self._grid(u, H, W, size, scale)
        # "border" padding: bicubic taps beyond the edge repeat it, so constants stay exact.
        y = F.grid_sample(x, grid, mode=self.interpolation, padding_mode="border", align_corners=False)
        y = y.view(B, C, n, size, size)
        if x_other is not None and other_crops:
            y_other = F.grid_sample(x_other, grid, mode=self.interpolation, padding_mode="border",
                                    align_corners=False).view(B, C, n, size, size)
            y[:, :, list(other_crops)] = y_other[:, :, list(other_crops)]
        y = y.permute(2, 0, 1, 3, 4).reshape(n * B, C, size, size)
        uf = u.reshape(n * B, N_UNIFORM)
        return self._photometric(y, uf, n, global_group)

    # ---- photometric ----------------------------------------------------------------------------

    def _photometric(self, y: Tensor, u: Tensor, n: int, global_group: bool) -> Tensor:
        """Photometric ops in place on the working-space crops ``y`` (we own them), then per-band normalisation."""
        cfg, ranged = self.cfg, self.value_range is not None
        N = y.shape[0]
        if ranged and self.interpolation == "bicubic":
            y.clamp_(0.0, 1.0)  # bicubic overshoots near edges

        def col(i: int) -> Tensor:
            return u[:, i].view(N, 1, 1, 1)

        if cfg.jitter_p > 0 and (cfg.brightness > 0 or cfg.contrast > 0):
            on = col(_U_JIT) < cfg.jitter_p
            fb = torch.where(on, 1 + cfg.brightness * (2 * col(_U_JIT + 1) - 1), 1.0)
            fc = torch.where(on, 1 + cfg.contrast * (2 * col(_U_JIT + 2) - 1), 1.0)
            # Brightness: multiplicative in [0, 1] (torchvision); additive in standardised units.
            if ranged:
                y.mul_(fb).clamp_(0.0, 1.0)
            else:
                y.add_(fb - 1)
            m = y.mean(dim=(2, 3), keepdim=True)  # contrast around each band's own mean
            y.mul_(fc).add_(m * (1 - fc))
            if ranged:
                y.clamp_(0.0, 1.0)
        if cfg.grayscale_p > 0:
            # Mean of the standardised bands (z = scale * y + shift), mapped back into each band's units.
            z = torch.einsum("nchw,c->nhw", y, self.scale.view(-1) / y.shape[1]).unsqueeze(1) + self.shift.mean()
            y = torch.where(col(_U_GRAY) < cfg.grayscale_p, (z - self.shift) / self.scale, y)
        blur_p = [cfg.blur_p[0], cfg.blur_p[1]] if global_group else [cfg.blur_p[2]] * n
        if max(blur_p) > 0:
            thresh = torch.cat([torch.full_like(u[: N // n, 0], p) for p in blur_p])
            y = self._blur(y, u[:, _U_BLUR] < thresh, u[:, _U_BLUR + 1])
        if global_group and ranged and cfg.solarize_p > 0:
            # Global-2 only (rows B..2B): invert values >= 0.5, as PIL's solarize(threshold=128).
            g2, on = y[N // 2 :], col(_U_SOL)[N // 2 :] < cfg.solarize_p
            g2.copy_(torch.where(on & (g2 >= 0.5), 1.0 - g2, g2))
        return torch.addcmul(self.shift, y, self.scale) if ranged else y

    def _blur(self, y: Tensor, on: Tensor, u_sigma: Tensor) -> Tensor:
        """Separable Gaussian blur with a per-row sigma; rows with ``on`` False get a delta kernel (exact copy)."""
        N, C, h, w = y.shape
        radius = min(math.ceil(3 * SIGMA[1]), h - 1, w - 1)
        sigma = SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u_sigma  # (N,)
        taps = torch.arange(-radius, radius + 1, device=y.device, dtype=torch.float32)
        k = torch.exp(-(taps**2) / (2 * sigma[:, None] ** 2))
        k = k / k.sum(dim=1, keepdim=True)
        k = torch.where(on[:, None], k, (taps == 0).float())  # (N, K)
        k = k.repeat_interleave(C, dim=0)  # one kernel per (row, band) for the grouped conv
        y = F.pad(y.reshape(1, N * C, h, w), (radius,) * 4, mode="reflect")
        y = F.conv2d(y, k.view(N * C, 1, -1, 1), groups=N * C)
        y = F.conv2d(y, k.view(N * C, 1, 1, -1), groups=N * C)
        return y.view(N, C, h, w)
