"""The embedded default data set: H&E-like tiles rendered from a seed, written in the course layout.

The course data is not public, so the workbook ships a generator instead of images. Tiles are
rendered in optical-density space (Beer-Lambert, Ruifrok's haematoxylin and eosin vectors), so
colours mix the way stains do. Class 1 (tumour-like) differs from class 0 by what a pathologist
would name: more and larger nuclei of varied size and shape, darker nuclear stain, and loss of the
regular gland (crypt) arrangement. Stain, brightness, lymphocyte density and orientation vary per
tile in both classes, so colour statistics alone separate the classes poorly.

Each class draws a latent "atypia" from overlapping ranges, so a few tiles of each class look like
the other: the task has a small irreducible error, as real borderline tissue does.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from lib.workers import die_with_parent

GENERATOR_VERSION = 2  # bump when rendering changes, so stale generated sets are regenerated
SPEC_FILE = "DATASET.json"

# Optical-density vectors of haematoxylin (nuclei, blue-purple) and eosin (cytoplasm, stroma, pink).
HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
EOSIN_OD = np.array([0.072, 0.990, 0.105])

# A lymphocyte nucleus: a soft disc of radius about 2.2 pixels.
_r = np.hypot(*np.mgrid[-4:5, -4:5])
LYMPHOCYTE_DISC = (1.0 / (1.0 + np.exp((_r - 2.2) / 0.6))).astype(np.float32)
del _r


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The defaults match the original course data's sizes."""

    n_train: int = 4096
    n_test: int = 512
    tile_size: int = 256  # pixels per side, as the course tiles
    seed: int = 2020
    # Atypia ranges per class; their overlap sets the irreducible error.
    normal_atypia: tuple[float, float] = (0.0, 0.48)
    tumour_atypia: tuple[float, float] = (0.40, 1.0)
    jpeg_quality: int = 90
    version: int = GENERATOR_VERSION


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance noise smoothed at scale `sigma` pixels."""
    if sigma >= 4:
        # Coarse fields are smoothed at a quarter of the resolution and scaled up: same look, 16x less work.
        small = ndimage.gaussian_filter(rng.standard_normal((size // 4, size // 4)), sigma / 4, mode="wrap")
        field = np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    else:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _fibre_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Streaky collagen texture along one random direction (drawn at half resolution: 4x less work)."""
    half = size // 2
    pad = int(np.ceil(half * (np.sqrt(2) - 1) / 2)) + 2  # enough margin for any rotation
    big = half + 2 * pad
    streaks = ndimage.gaussian_filter(rng.standard_normal((big, big), dtype=np.float32), (0.5, 3.5), mode="wrap")
    streaks = Image.fromarray(streaks, mode="F").rotate(rng.uniform(0, 180), Image.BILINEAR)
    streaks = np.asarray(streaks.crop((pad, pad, pad + half, pad + half)).resize((size, size), Image.BILINEAR))
    return streaks / (streaks.std() + 1e-8)


def _stamp_ellipse(
    field: np.ndarray,
    cy: float,
    cx: float,
    a: float,
    b: float,
    theta: float,
    value: float,
    edge: float = 0.8,
) -> None:
    """Draw a soft-edged filled ellipse into `field`, keeping the larger value where shapes overlap."""
    size = field.shape[0]
    r = int(np.ceil(max(a, b) + 2 * edge + 1))
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, size)
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, size)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1)[:, None] - cy
    dx = np.arange(x0, x1)[None, :] - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    # Signed distance to the boundary, approximately in pixels.
    dist = (np.sqrt(u * u + v * v) - 1.0) * min(a, b)
    alpha = 1.0 / (1.0 + np.exp(np.clip(dist / edge, -30, 30)))
    patch = field[y0:y1, x0:x1]
    np.maximum(patch, value * alpha, out=patch)


def _place_glands(rng: np.random.Generator, size: int, count: int, atypia: float) -> list[dict]:
    """Crypt-like glands: round lumens, kept apart as in normal mucosa."""
    glands: list[dict] = []
    for _ in range(count * 20):
        if len(glands) == count:
            break
        a = rng.uniform(16, 30) * (1 - 0.35 * atypia * rng.uniform())
        b = a * rng.uniform(0.6, 1.0)
        cy, cx = rng.uniform(-10, size + 10, 2)
        if all(np.hypot(cy - g["cy"], cx - g["cx"]) > (a + g["a"]) + 26 for g in glands):
            glands.append({"cy": cy, "cx": cx, "a": a, "b": b, "theta": rng.uniform(0, np.pi)})
    return glands


def render_tile(rng: np.random.Generator, label: int, spec: SyntheticSpec = SyntheticSpec()) -> np.ndarray:
    """One H&E-like tile as an (H, W, 3) uint8 array."""
    size = spec.tile_size
    lo, hi = spec.tumour_atypia if label == 1 else spec.normal_atypia
    atypia = rng.uniform(lo, hi)

    haem = np.zeros((size, size), dtype=np.float32)
    eosin = 0.30 + 0.07 * _smooth_noise(rng, size, 10) + 0.035 * _fibre_texture(rng, size)
    lumen = np.zeros((size, size), dtype=np.float32)  # 1 where the tissue is empty (gland lumen, tear)

    # Glands: regular crypts ringed by evenly spaced, uniform basal nuclei. Atypia distorts the
    # rings, scatters and enlarges their nuclei and erases glands altogether.
    n_glands = int(round(rng.uniform(2, 5) * (1 - 0.75 * atypia)))
    for gland in _place_glands(rng, size, n_glands, atypia):
        cy, cx, a, b, theta = gland["cy"], gland["cx"], gland["a"], gland["b"], gland["theta"]
        _stamp_ellipse(lumen, cy, cx, a, b, theta, 1.0, edge=1.5)
        ring = 11.0
        _stamp_ellipse(eosin, cy, cx, a + ring, b + ring, theta, 0.42, edge=1.5)
        perimeter = np.pi * (a + b + 2 * ring)
        n_nuclei = int(perimeter / rng.uniform(7.5, 9.0))
        for t in np.linspace(0, 2 * np.pi, n_nuclei, endpoint=False):
            t = t + rng.normal(0, 0.02 + 0.25 * atypia)
            reach = ring - 3 + rng.normal(0, 0.5 + 6 * atypia)
            ey = (a + reach) * np.cos(t)
            ex = (b + reach) * np.sin(t)
            py = cy + ey * np.cos(theta) - ex * np.sin(theta)
            px = cx + ey * np.sin(theta) + ex * np.cos(theta)
            radius = max(1.8, rng.normal(2.8 + 3.5 * atypia, 0.2 + 1.2 * atypia))
            elong = rng.uniform(1.3, 1.7) * (1 - 0.3 * atypia) + rng.uniform(0, 0.6 * atypia)
            radial_angle = np.arctan2(py - cy, px - cx)
            angle = radial_angle + rng.normal(0, 0.1 + 1.2 * atypia)
            dark = rng.normal(0.85 + 0.55 * atypia, 0.05 + 0.15 * atypia)
            _stamp_ellipse(haem, py, px, radius * elong, radius / elong, angle, dark)

    # Tumour epithelium: crowded sheets of pleomorphic, hyperchromatic nuclei, irregular small
    # lumens (cribriform spaces). Their amount grows with atypia.
    n_clusters = int(round(rng.uniform(0, 4) * atypia**1.5 + (atypia > 0.5)))
    for _ in range(n_clusters):
        ccy, ccx = rng.uniform(0, size, 2)
        spread = rng.uniform(20, 45)
        _stamp_ellipse(eosin, ccy, ccx, spread * 1.6, spread * 1.2, rng.uniform(0, np.pi), 0.40, edge=4)
        for _ in range(rng.integers(0, 3)):
            ly, lx = ccy + rng.normal(0, spread * 0.6, 2)
            lr = rng.uniform(4, 11)
            _stamp_ellipse(lumen, ly, lx, lr, lr * rng.uniform(0.5, 1), rng.uniform(0, np.pi), 1.0, edge=1.2)
        n_nuclei = int(rng.uniform(25, 60) * atypia)
        for _ in range(n_nuclei):
            py, px = ccy + rng.normal(0, spread, 2)
            radius = max(2.0, rng.normal(3.2 + 3.2 * atypia, 0.4 + 1.3 * atypia))
            elong = 1 + rng.uniform(0, 0.8 * atypia)
            dark = rng.normal(0.9 + 0.5 * atypia, 0.08 + 0.15 * atypia)
            _stamp_ellipse(haem, py, px, radius * elong, radius / elong, rng.uniform(0, np.pi), dark)

    # Empty space in both classes (tears, fat, cut vessels, mucus), of any amount: the white of
    # gland lumens must not be what tells the classes apart.
    for _ in range(int(rng.integers(0, 4))):
        wy, wx = rng.uniform(0, size, 2)
        wr = rng.uniform(8, 30)
        _stamp_ellipse(lumen, wy, wx, wr, wr * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), 1.0, edge=1.5)

    # Lamina propria in both classes: lymphocytes (small, round, dark, uniform) at a density that
    # varies a lot between tiles, so nuclear stain area is not a giveaway of the class.
    # They are many and alike, so one precomputed disc is stamped at each place.
    n_lymph = int(rng.uniform(40, 800) * (1.15 - 0.6 * atypia))
    half = LYMPHOCYTE_DISC.shape[0] // 2
    canvas = np.zeros((size + 2 * half, size + 2 * half), dtype=np.float32)
    width = LYMPHOCYTE_DISC.shape[0]
    for y, x, dark in zip(*rng.integers(0, size, (2, n_lymph)), rng.normal(1.2, 0.1, n_lymph)):
        window = canvas[y : y + width, x : x + width]
        np.maximum(window, LYMPHOCYTE_DISC * dark, out=window)
    np.maximum(haem, canvas[half:-half, half:-half], out=haem)

    # Stromal fibroblasts: thin, elongated nuclei.
    for _ in range(int(rng.uniform(10, 35))):
        y, x = rng.uniform(0, size, 2)
        _stamp_ellipse(haem, y, x, rng.uniform(4, 7), rng.uniform(1.0, 1.5), rng.uniform(0, np.pi), 0.75)

    # Chromatin texture inside nuclei, then clear the empty lumens.
    haem *= 1 + 0.18 * _smooth_noise(rng, size, 1.0)
    haem = ndimage.gaussian_filter(haem, 0.6)
    tissue = 1 - ndimage.gaussian_filter(lumen, 1.0)
    haem *= tissue
    eosin = np.clip(eosin, 0.05, None) * tissue + 0.03

    # Per-tile staining: stain vectors, concentrations and brightness vary like batches of slides.
    h_vec = HAEMATOXYLIN_OD + rng.normal(0, 0.05, 3)
    e_vec = EOSIN_OD + rng.normal(0, 0.05, 3)
    h_vec /= np.linalg.norm(h_vec)
    e_vec /= np.linalg.norm(e_vec)
    h_scale = rng.uniform(0.45, 1.55)
    e_scale = rng.uniform(0.55, 1.45)
    h_vec = (h_vec * h_scale * rng.uniform(0.8, 1.2)).astype(np.float32)
    e_vec = (e_vec * e_scale * rng.uniform(0.8, 1.2)).astype(np.float32)
    od = haem[..., None] * h_vec + eosin[..., None] * e_vec
    rgb = np.exp(-od) * np.float32(255.0 * rng.uniform(0.88, 1.0))
    rgb += 2.5 * rng.standard_normal(rgb.shape, dtype=np.float32)
    tile = np.clip(rgb, 0, 255).astype(np.uint8)

    # Orientation carries no information: any quarter turn, mirrored or not.
    tile = np.rot90(tile, k=int(rng.integers(4)))
    if rng.uniform() < 0.5:
        tile = tile[:, ::-1]
    return np.ascontiguousarray(tile)


def tile_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one tile: independent of which process renders it or in what order."""
    return np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])


def tile_label(seed: int, split: str, index: int) -> int:
    """Balanced labels drawn from their own stream, so rendering changes never move them."""
    return int(np.random.default_rng([seed, {"train": 0, "test": 1}[split], index, 7]).integers(2))


def render_split(spec: SyntheticSpec, split: str, indices: range) -> tuple[np.ndarray, np.ndarray]:
    """Render tiles into memory (for tests and checks): images (N, H, W, 3) uint8 and labels (N,)."""
    labels = np.array([tile_label(spec.seed, split, i) for i in indices])
    tiles = np.stack([render_tile(tile_rng(spec.seed, split, i), lab, spec) for i, lab in zip(indices, labels)])
    return tiles, labels


def _write_chunk(args: tuple[SyntheticSpec, str, list[int], str]) -> list[tuple[int, int]]:
    spec, split, ids, folder = args
    rows = []
    for tile_id in ids:
        label = tile_label(spec.seed, split, tile_id)
        tile = render_tile(tile_rng(spec.seed, split, tile_id), label, spec)
        Image.fromarray(tile).save(Path(folder) / f"{tile_id}.jpg", quality=spec.jpeg_quality)
        rows.append((tile_id, label))
    return rows


def _write_labels(path: Path, rows: list[tuple[int, int]]) -> None:
    with open(path, "w") as f:
        f.write("id,label\n")
        f.writelines(f"{tile_id},{label}\n" for tile_id, label in sorted(rows))


def generate(data_dir: str | Path, spec: SyntheticSpec = SyntheticSpec(), workers: int | None = None) -> Path:
    """Write the tile set into `data_dir` in the course layout, unless the same spec is already there.

    Layout: train/1.jpg..., train_label.csv, test/1.jpg..., and test_label.csv (the test labels,
    which training never reads; evaluation uses them to score the test predictions). The set is
    built in a temporary folder and moved into place at the end, so an interrupted generation
    never leaves a half-written data set behind.
    """
    from lib.progress import progress

    data_dir = Path(data_dir)
    if existing_spec(data_dir) == asdict(spec):
        return data_dir
    if data_dir.exists() and any(data_dir.iterdir()) and existing_spec(data_dir) is None:
        raise FileExistsError(
            f"{data_dir} exists and holds files that this generator did not write; "
            "refusing to overwrite them. Point DATA at that folder to use it, or choose another folder."
        )
    staging = data_dir.with_name(data_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    workers = workers or max(1, os.cpu_count() or 1)
    chunk = 64
    jobs = []
    for split, count in (("train", spec.n_train), ("test", spec.n_test)):
        (staging / split).mkdir(parents=True)
        ids = list(range(1, count + 1))
        jobs += [(spec, split, ids[i : i + chunk], str(staging / split)) for i in range(0, count, chunk)]
    rows: dict[str, list] = {"train": [], "test": []}
    total = spec.n_train + spec.n_test
    # The workers end with this process, whatever kills it (lib/workers.py).
    with (ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool,
          progress(total=total, desc="generating tiles", unit="tile") as bar):  # fmt: skip
        for job, done in zip(jobs, pool.map(_write_chunk, jobs)):
            rows[job[1]] += done
            bar.update(len(done))
    _write_labels(staging / "train_label.csv", rows["train"])
    _write_labels(staging / "test_label.csv", rows["test"])
    record = asdict(spec) | {"origin": "generated by lib/data/synthetic.py (H&E-like tiles rendered from a seed)"}
    (staging / SPEC_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(data_dir, ignore_errors=True)
    staging.rename(data_dir)
    return data_dir


def existing_spec(data_dir: Path) -> dict | None:
    """The spec a generated set was made with, or None when `data_dir` holds no generated set."""
    path = Path(data_dir) / SPEC_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    record.pop("origin", None)
    # JSON turns tuples into lists; compare like with like.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def ensure_default(data_dir: str | Path) -> Path:
    """Generate the embedded default set when `data_dir` is its folder; leave any other folder alone."""
    from lib.paths import DEFAULT_DATA_DIR, resolve

    data_dir = resolve(data_dir)
    if data_dir == DEFAULT_DATA_DIR:
        generate(data_dir)
    return data_dir
