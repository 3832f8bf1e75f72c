"""Stain colour: HED augmentation of training batches on the device, and stain normalisation of tiles
once, when they are decoded (the cache keeps normalised rows apart from raw ones: lib/data/cache.py).

HED augmentation (Tellez et al. 2018, IEEE TMI; Tellez et al. 2019, MedIA): each image's RGB goes to
optical density and onto the haematoxylin, eosin and residual (DAB) stain vectors of Ruifrok and
Johnston 2001, with scikit-image's matrices and conventions exactly (rgb2hed: RGB floored at 1e-6,
log(RGB) / log(1e-6) projected, negative stain values clipped to 0; hed2rgb: back, clipped to
[0, 1]); each stain channel is scaled by alpha ~ U[1 - scale, 1 + scale] and shifted by
beta ~ U[-shift, shift], a draw per image and channel, made on the CPU so that a seeded run augments
alike on the CPU and the GPU. One tensor operation for the batch, no loop over tiles. Because
rgb2hed clips negative stain values (colours outside the three stains' cone: on LC25000's real tiles
the DAB channel is often negative), alpha 1 and beta 0 return such pixels changed (there: 2.7 of 255
on average, at most 128), as scikit-image's round trip does; scale and shift 0 (off) return the input.

Stain normalisation: Macenko et al. 2009 (the stain matrix from the extreme angles of the tissue
pixels' optical densities in the plane of their two main directions, concentrations scaled to the
target's 99th percentiles) and Reinhard et al. 2001 (per-channel mean and spread matched, here in
CIELAB as torchstain, staintools and HistomicsTK do, not Reinhard's lαβ). Written here, batched in
torch, rather than taken from a package. What was compared (this machine, 2 CPU cores, torch 2.14, the
same 64 real LC25000 colon tiles of 224x224, one reference tile; per tile on the CPU):
- torchstain 1.4.1 (MIT, numpy only, last release 2025-01): 51 ms, one image per call (a Python loop
  over tiles); a tile without tissue fails inside it (IndexError: no pixel left for its percentile).
  It is the reference tests/test_stain.py checks this module against (same defaults: Io 240,
  beta 0.15, alpha 1): the outputs differ by at most 1 of 255 (it truncates, this module rounds).
- stainx 0.1.6 (GPL-3.0): 62 ms, a Python loop over images inside; a tile without tissue falls back
  to all its pixels and comes out recoloured (a mean change of 82 of 255 on a blank tile).
- torch-staintools 1.0.7 (a non-commercial academic licence; pulls kornia): 93 ms ('ls' solver);
  keeps a blank tile as it is.
- staintools 2.1.2: last released 2019, needs spams and OpenCV; not tried.
- This module: 20 ms, the whole batch at once (masked covariance, batched eigh, masked percentiles)
  on whatever device the tiles are on; a tile with too little tissue (MIN_TISSUE_FRACTION) is kept as
  it is and counted. LC25000's pale tiles hold only 2 to 25 % pixels dense enough to count as
  tissue, hence a threshold of 1 %.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Ruifrok & Johnston's stain vectors as scikit-image holds them (skimage.color.rgb_from_hed): rows
# haematoxylin, eosin, DAB; hed_from_rgb is its inverse, in float64 as there.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
LOG_FLOOR = 1e-6  # skimage's floor before the log, and its unit of stain: log(RGB) / log(1e-6)

STAIN_METHODS = ("none", "macenko", "reinhard")
# Macenko's defaults, as the original code and torchstain: transmitted light, the optical density
# below which a pixel counts as background (in every channel), the angle percentile.
MACENKO_IO = 240.0
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0  # percent
# Below this share of tissue pixels (optical density above MACENKO_BETA in every channel) a tile's
# stain cannot be estimated: its eigen-decomposition would rest on a few pixels of dust or none.
# Such tiles are kept as they are, and counted.
MIN_TISSUE_FRACTION = 0.01
MIN_TISSUE_PIXELS = 16
FIT_TILES = 256  # training tiles pooled (a seeded sample) for a target fitted on the run's own tiles
_CHUNK = 64  # tiles normalised at once: 64 tiles of 256x256 hold about 0.2 GiB of float32 intermediates


# HED augmentation


@dataclass
class HedParams:
    """One draw per image and stain channel (haematoxylin, eosin, DAB)."""

    scale: torch.Tensor  # (B, 3) alpha
    shift: torch.Tensor  # (B, 3) beta


def draw_hed_params(batch: int, scale: float, shift: float, generator: torch.Generator | None = None) -> HedParams:
    """Independent draws per image and channel, on the CPU (as augment.draw_params: the same stream on
    any device, saved and restored on resume with torch's global state when `generator` is None)."""
    u = torch.rand(2, batch, 3, generator=generator, dtype=torch.float64)
    return HedParams((1 + scale * (2 * u[0] - 1)).float(), (shift * (2 * u[1] - 1)).float())


def rgb_to_hed(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] to stain channels, as skimage.color.rgb2hed (channels first)."""
    log_rgb = images.clamp(min=LOG_FLOOR).log() / np.log(LOG_FLOOR)
    matrix = HED_FROM_RGB.to(images.device, images.dtype)
    return torch.einsum("bchw,cs->bshw", log_rgb, matrix).clamp_(min=0)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) stain channels to RGB in [0, 1], as skimage.color.hed2rgb (channels first)."""
    matrix = RGB_FROM_HED.to(stains.device, stains.dtype) * np.log(LOG_FLOOR)  # -(s * -log(1e-6)) @ M
    return torch.einsum("bshw,sc->bchw", stains, matrix).exp_().clamp_(0, 1)


def hed_augment(images: torch.Tensor, scale: float, shift: float, generator: torch.Generator | None = None,
                params: HedParams | None = None) -> torch.Tensor:  # fmt: skip
    """Float (B, 3, H, W) in [0, 1], on any device, with each image's stains scaled and shifted by its
    own draw (Tellez et al.): alpha ~ U[1 - scale, 1 + scale], beta ~ U[-shift, shift] per image and
    channel, in skimage's stain units. scale and shift 0, without `params`: the input itself."""
    if params is None:
        if not scale and not shift:
            return images
        params = draw_hed_params(len(images), scale, shift, generator)
    # Draws travel to the device in one copy.
    packed = torch.stack([params.scale, params.shift]).to(images.device, images.dtype, non_blocking=True)
    alpha, beta = packed[0, :, :, None, None], packed[1, :, :, None, None]
    return hed_to_rgb(rgb_to_hed(images) * alpha + beta)


# Stain normalisation


@dataclass(frozen=True)
class StainTarget:
    """What tiles are normalised to: Macenko's stain matrix (3x2: haematoxylin, eosin columns of unit
    optical-density vectors) and 99th-percentile concentrations, or Reinhard's CIELAB means and
    standard deviations; and where it came from, in words. Stored in runs/<run>/stain_target.json."""

    method: str
    stain_matrix: tuple[tuple[float, float], ...] = ()  # macenko: 3 rows (R, G, B) of (H, E)
    max_concentrations: tuple[float, ...] = ()  # macenko: haematoxylin, eosin
    means: tuple[float, ...] = ()  # reinhard: L*, a*, b*
    stds: tuple[float, ...] = ()  # reinhard
    source: str = ""  # a reference image, or the training tiles it was fitted on

    def digest(self) -> str:
        """Identifies the target's values (rounded, so that a refit that differs in the last float
        bit is the same target): the tile cache's key of the tiles normalised to it."""
        values = [self.method, *(round(float(v), 6) for v in np.ravel(self.stain_matrix)),
                  *(round(float(v), 6) for v in [*self.max_concentrations, *self.means, *self.stds])]  # fmt: skip
        return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"digest": self.digest()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StainTarget:
        record = json.loads(text)
        record.pop("digest", None)
        return cls(method=record["method"], stain_matrix=tuple(tuple(row) for row in record.get("stain_matrix", ())),
                   max_concentrations=tuple(record.get("max_concentrations", ())), means=tuple(record.get("means", ())),
                   stds=tuple(record.get("stds", ())), source=record.get("source", ""))  # fmt: skip

    def describe(self) -> str:
        if self.method == "macenko":
            (hr, er), (hg, eg), (hb, eb) = self.stain_matrix
            return (f"macenko target (haematoxylin OD {hr:.3f} {hg:.3f} {hb:.3f}, eosin OD {er:.3f} {eg:.3f} {eb:.3f}, "
                    f"99th-percentile concentrations {self.max_concentrations[0]:.3f} {self.max_concentrations[1]:.3f}) "
                    f"from {self.source}")  # fmt: skip
        return (f"reinhard target (CIELAB means {' '.join(f'{v:.2f}' for v in self.means)}, standard deviations "
                f"{' '.join(f'{v:.2f}' for v in self.stds)}) from {self.source}")  # fmt: skip


def optical_density(tiles: torch.Tensor) -> torch.Tensor:
    """(B, 3, N) optical density of uint8 (B, 3, H, W) tiles (or (B, 3, N) pixels), as Macenko's code: -log((I + 1) / Io)."""
    return -torch.log((tiles.flatten(2).float() + 1) / MACENKO_IO)


def tissue_mask(od: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: pixels dense enough in every channel to be stained tissue, not glass."""
    return (od >= MACENKO_BETA).all(dim=1)


def _enough_tissue(mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum(dim=1)
    return (n >= MIN_TISSUE_PIXELS) & (n >= MIN_TISSUE_FRACTION * mask.shape[1])


def _masked_percentiles(values: torch.Tensor, mask: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """(B, len(qs)) the qs-th percentiles of each row's masked values, nearest rank as torchstain's
    percentile; one sort per row, the values left out sorted last."""
    n = mask.sum(dim=1)
    ordered = torch.where(mask, values, torch.full_like(values, torch.inf)).sort(dim=1).values
    ranks = torch.stack([torch.round(0.01 * q * (n - 1).clamp(min=0).to(values.dtype)).long() for q in qs], dim=1)
    return ordered.gather(1, ranks)


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """(..., ) the q-th percentile along the last axis, nearest rank."""
    k = 1 + round(0.01 * q * (values.shape[-1] - 1))
    return values.kthvalue(k, dim=-1).values


def macenko_stains(od: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image of (B, 3, N) optical densities with (B, N) tissue masks: the (B, 3, 2) stain matrix
    (haematoxylin first), the (B, 2, N) concentrations of every pixel, and (B,) bool whether the
    estimate is defined (enough tissue, two distinct stain directions, positive concentrations)."""
    batch = od.shape[0]
    defined = _enough_tissue(mask)
    weights = mask.to(od.dtype)
    n = weights.sum(dim=1).clamp(min=2)
    mean = (od * weights[:, None]).sum(dim=2) / n[:, None]
    centred = (od - mean[:, :, None]) * weights[:, None]
    cov = centred @ centred.transpose(1, 2) / (n - 1)[:, None, None]
    eye = torch.eye(3, dtype=od.dtype, device=od.device).expand(batch, 3, 3)
    cov = torch.where(defined[:, None, None], cov, eye)  # undefined tiles: any matrix eigh accepts
    _, vectors = torch.linalg.eigh(cov)
    plane = vectors[:, :, 1:3]  # the two largest directions
    projected = plane.transpose(1, 2) @ od  # (B, 2, N)
    phi = torch.atan2(projected[:, 1], projected[:, 0])
    angles = _masked_percentiles(phi, mask, (MACENKO_ALPHA, 100 - MACENKO_ALPHA))
    angles = torch.where(defined[:, None], angles, torch.zeros_like(angles))
    v_min, v_max = (plane @ torch.stack([angles.cos(), angles.sin()], dim=1)).unbind(dim=2)  # (B, 3) each
    # Haematoxylin is the vector with the larger red optical density, as in Macenko's code.
    first = (v_min[:, 0] > v_max[:, 0])[:, None]
    stains = torch.stack([torch.where(first, v_min, v_max), torch.where(first, v_max, v_min)], dim=2)
    concentrations = torch.linalg.pinv(stains) @ od  # least squares, on any device
    spread = torch.linalg.svdvals(stains)[:, 1]
    defined &= (spread > 1e-3) & torch.isfinite(concentrations).all(dim=2).all(dim=1)
    return stains, concentrations, defined


def fit_macenko(tiles: torch.Tensor, source: str) -> StainTarget:
    """A Macenko target from uint8 (N, 3, H, W) tiles pooled as one image. Raises ValueError when
    they hold too little tissue for it."""
    od = optical_density(tiles).transpose(0, 1).reshape(1, 3, -1)
    mask = tissue_mask(od)
    stains, concentrations, defined = macenko_stains(od, mask)
    max_c = _percentile(concentrations[0], 99)
    if not bool(defined[0]) or not bool((max_c > 0).all()):
        raise ValueError(f"no Macenko stain target can be fitted on {source}: too little tissue ({int(mask.sum())} of "
                         f"{mask.shape[1]} pixels dense enough, at least {MIN_TISSUE_FRACTION:.0%} needed)")  # fmt: skip
    return StainTarget("macenko", stain_matrix=tuple(tuple(map(float, row)) for row in stains[0].double()),
                       max_concentrations=tuple(map(float, max_c.double())), source=source)  # fmt: skip


def macenko_normalize(tiles: torch.Tensor, target: StainTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, H, W) tiles, on any device, re-stained with `target`'s stain matrix and
    concentrations, and (B,) bool: those normalised (the others, with too little tissue, as they were)."""
    od = optical_density(tiles)
    stains, concentrations, defined = macenko_stains(od, tissue_mask(od))
    max_c = _percentile(concentrations, 99)  # (B, 2) over every pixel, as Macenko's code
    defined &= (max_c > 0).all(dim=1)
    reference = torch.tensor(target.stain_matrix, dtype=od.dtype, device=od.device)
    reference_max = torch.tensor(target.max_concentrations, dtype=od.dtype, device=od.device)
    scaled = concentrations * (reference_max / max_c.clamp(min=1e-6))[:, :, None]
    restained = (MACENKO_IO * torch.exp(-reference @ scaled)).clamp_(0, 255).round_().to(torch.uint8).view_as(tiles)
    return torch.where(defined[:, None, None, None], restained, tiles), defined


# Reinhard: CIELAB (D65), as skimage.color.rgb2lab, on the whole tile.
_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, N) RGB in [0, 1] to CIELAB (L* 0..100)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _XYZ_FROM_RGB.to(rgb.device, rgb.dtype) @ linear / _WHITE.to(rgb.device, rgb.dtype)[:, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(B, 3, N) CIELAB to RGB in [0, 1] (clipped)."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787) * _WHITE.to(lab.device, lab.dtype)[:, None]
    linear = torch.linalg.inv(_XYZ_FROM_RGB).to(lab.device, lab.dtype) @ xyz
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def fit_reinhard(tiles: torch.Tensor, source: str) -> StainTarget:
    """A Reinhard target: the CIELAB means and standard deviations of uint8 (N, 3, H, W) tiles pooled.
    Raises ValueError when they hold too little tissue (all glass has no stain to copy)."""
    pixels = tiles.flatten(2).transpose(0, 1).reshape(1, 3, -1)
    if not bool(_enough_tissue(tissue_mask(optical_density(pixels)))[0]):
        raise ValueError(f"no Reinhard stain target can be fitted on {source}: too little tissue")
    lab = rgb_to_lab(pixels.float() / 255)[0]
    return StainTarget("reinhard", means=tuple(map(float, lab.mean(dim=1))), stds=tuple(map(float, lab.std(dim=1))), source=source)


def reinhard_normalize(tiles: torch.Tensor, target: StainTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, H, W) tiles with each CIELAB channel's mean and spread moved to `target`'s, and (B,)
    bool: those normalised (tiles with too little tissue, or one flat colour, are kept as they were)."""
    lab = rgb_to_lab(tiles.flatten(2).float() / 255)
    mean, std = lab.mean(dim=2, keepdim=True), lab.std(dim=2, keepdim=True)
    defined = _enough_tissue(tissue_mask(optical_density(tiles))) & (std > 1e-3).all(dim=1)[:, 0]
    wanted_mean = torch.tensor(target.means, dtype=lab.dtype, device=lab.device)[None, :, None]
    wanted_std = torch.tensor(target.stds, dtype=lab.dtype, device=lab.device)[None, :, None]
    moved = (lab - mean) / std.clamp(min=1e-3) * wanted_std + wanted_mean
    restained = (lab_to_rgb(moved) * 255).round_().to(torch.uint8).view_as(tiles)
    return torch.where(defined[:, None, None, None], restained, tiles), defined


def normalize_stain(tiles: torch.Tensor, target: StainTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, H, W) tiles normalised to `target` by its method, in chunks of _CHUNK tiles, and (B,)
    bool: those normalised (the rest, whose stain is undefined, kept as they were)."""
    normalize = {"macenko": macenko_normalize, "reinhard": reinhard_normalize}[target.method]
    if not len(tiles):
        return tiles.clone(), torch.zeros(0, dtype=torch.bool)
    parts = [normalize(tiles[start : start + _CHUNK], target) for start in range(0, len(tiles), _CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fit_stain_target(method: str, tiles: torch.Tensor, source: str) -> StainTarget:
    """`method`'s target from uint8 (N, 3, H, W) tiles pooled (a reference image is one tile)."""
    return {"macenko": fit_macenko, "reinhard": fit_reinhard}[method](tiles, source)


def read_stain_reference(path: str | Path) -> torch.Tensor:
    """The image file stain_reference names, as uint8 (1, 3, H, W) at its own size. Raises
    FileNotFoundError or ValueError naming the file and the parameter."""
    from lib.data.decode import read_tile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter stain_reference={str(path)!r}: no such file; give an image of the stain to normalise to, "
                                "or leave stain_reference empty to fit the target on the run's training tiles")  # fmt: skip
    try:
        image, _, _ = read_tile(path)
        pixels = np.array(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # Pillow and tifffile raise several types; each means "not an image we can read"
        raise ValueError(f"parameter stain_reference={str(path)!r} cannot be read as an image ({type(error).__name__}: {error}); "
                         "give a readable image file (PNG, JPEG, TIFF), or leave stain_reference empty") from None  # fmt: skip
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def sample_rows(rows: np.ndarray, seed: int, n: int = FIT_TILES) -> np.ndarray:
    """Up to `n` of `rows` (positions of training tiles), drawn with `seed`, sorted (cache order)."""
    rows = np.asarray(rows)
    if len(rows) <= n:
        return np.sort(rows)
    return np.sort(np.random.default_rng([seed, 77]).choice(rows, n, replace=False))


def run_stain_target(method: str, reference: str, tiles: torch.Tensor | None = None, train_rows: np.ndarray | None = None,
                     seed: int = 0) -> StainTarget:  # fmt: skip
    """A run's target: fitted on its `reference` image when given, else on a seeded sample of up to
    FIT_TILES of its training tiles (`tiles` (N, 3, H, W) uint8, `train_rows` positions in it), never
    on validation or test tiles. Raises FileNotFoundError/ValueError naming the reference, or
    ValueError when the tiles hold too little tissue."""
    if reference:
        return fit_stain_target(method, read_stain_reference(reference), f"the reference image {reference}")
    rows = sample_rows(train_rows, seed)
    sample = tiles[torch.from_numpy(rows)]
    try:
        return fit_stain_target(method, sample, f"{len(rows)} of the run's training tiles (seed {seed})")
    except ValueError as error:
        raise ValueError(f"{error}; give parameter stain_reference an image of the stain to normalise to") from None


def stain_draws(config, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """What a run's HED augmentation does to one tile: the run's first labelled tile (3, S, S)
    uint8 at its tile size S (the data's own, 256, when tile_size is 0), `n` draws of its stain at
    the run's hed_scale and hed_shift (n, 3, S, S) float in [0, 1] from a generator seeded with
    `seed` (the run's own draws are not touched), and a caption per draw giving its haematoxylin and
    eosin factors and shifts. For the run notebook's figure (figures.plot_stain_draws).
    Raises what lib.data.read_run_layout and decode_tiles raise for an unreadable data set."""
    from lib.data.decode import TILE_SIZE
    from lib.data.cache import decode_tiles
    from lib.data.tiles import read_run_layout

    index = read_run_layout(config)
    size = config.tile_size or TILE_SIZE
    tiles, _, _ = decode_tiles(index.train_paths[:1], size, desc="decoding the tile shown", cache_dir=None, multi_page=config.multi_page,
                               non_square=config.non_square)  # fmt: skip
    params = draw_hed_params(n, config.hed_scale, config.hed_shift, torch.Generator().manual_seed(seed))
    draws = hed_augment(tiles.float().div(255).expand(n, -1, -1, -1), config.hed_scale, config.hed_shift, params=params)

    def signed(value: float) -> str:
        return f"{value:+.3f}".replace("-", "\u2212")

    captions = [f"H \u00d7{a[0]:.2f} {signed(b[0])}\nE \u00d7{a[1]:.2f} {signed(b[1])}" for a, b in zip(params.scale.tolist(), params.shift.tolist())]
    return tiles[0], draws, captions
