"""The embedded default data set: H&E-like tiles rendered from a seed, written in the course layout.

The course data is not public, so the workbook ships a generator instead of images. Tiles are
rendered in optical-density space (Beer-Lambert, Ruifrok's haematoxylin and eosin vectors), so
colours mix the way stains do. Class 1 (tumour-like) differs from class 0 by what a pathologist
would name: more and larger nuclei of varied size and shape, darker nuclear stain, and loss of the
regular gland (crypt) arrangement. Stain, brightness, lymphocyte density and orientation vary per
tile in both classes, so colour statistics alone separate the classes poorly.

Each class draws a latent "atypia" from overlapping ranges, so a few tiles of each class look like
the other: the task has a small irreducible error, as real borderline tissue does.

Beside it, a second test set: new tissue stained as another laboratory stains (OTHER_LAB: other
stain vectors, concentrations and lamp, by a rule stated there), the first way a tile classifier
fails in the field; only the staining step differs from the home laboratory's (stain_tile).
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

# Optical-density vectors of haematoxylin (nuclei, blue-purple) and eosin (cytoplasm, stroma, pink):
# Ruifrok & Johnston 2001 (Anal Quant Cytol Histol 23:291), the home laboratory's stains.
HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
EOSIN_OD = np.array([0.072, 0.990, 0.105])

# The home laboratory's per-tile variation, like batches of slides: concentration scales of each
# stain and the lamp's brightness (fraction of full scale), drawn uniformly in these ranges.
HAEMATOXYLIN_SCALE = (0.45, 1.55)
EOSIN_SCALE = (0.55, 1.45)
LAMP_BRIGHTNESS = (0.88, 1.0)

# The reference H&E stain matrix of Macenko normalisation (Macenko et al. 2009, ISBI), columns
# haematoxylin and eosin, rows R, G, B: estimated from another laboratory's slide and shipped as the
# default target by the common implementations (torchstain 1.4.1 `HERef`, ported from
# schaugf/HEnorm_python; read from torchstain's numpy MacenkoNormalizer source). Both columns are
# unit vectors to four decimals.
MACENKO_REFERENCE_HE = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))


@dataclass(frozen=True)
class Staining:
    """A laboratory's H&E staining: the centre its per-tile stain variation is drawn around.
    Each shift is added to the home laboratory's per-tile draw (HAEMATOXYLIN_SCALE, EOSIN_SCALE,
    LAMP_BRIGHTNESS), so the variation keeps its width around the laboratory's own centre."""

    name: str
    haematoxylin_od: tuple[float, float, float]  # optical density per unit concentration, R, G, B
    eosin_od: tuple[float, float, float]
    haematoxylin_shift: float = 0.0  # added to the haematoxylin concentration scale (home centre 1.0)
    eosin_shift: float = 0.0  # added to the eosin concentration scale (home centre 1.0)
    brightness_shift: float = 0.0  # added to the lamp brightness (home centre 0.94 of full scale)
    rule: str = ""  # how the numbers were fixed, and their sources, in words


HOME_LAB = Staining(
    "home laboratory", tuple(HAEMATOXYLIN_OD.tolist()), tuple(EOSIN_OD.tolist()),
    rule="Ruifrok & Johnston 2001 haematoxylin and eosin optical-density vectors; concentration scales "
         f"U{HAEMATOXYLIN_SCALE} and U{EOSIN_SCALE}, lamp U{LAMP_BRIGHTNESS} of full scale, per tile",
)  # fmt: skip

OTHER_LAB = Staining(
    "other laboratory",
    haematoxylin_od=tuple(row[0] for row in MACENKO_REFERENCE_HE),
    eosin_od=tuple(row[1] for row in MACENKO_REFERENCE_HE),
    haematoxylin_shift=0.275,
    eosin_shift=-0.225,
    brightness_shift=-0.03,
    rule="Fixed before any model saw it, never tuned to a result. Stain vectors: the reference H&E matrix of "
         "Macenko normalisation (Macenko et al. 2009; torchstain 1.4.1 HERef, from schaugf/HEnorm_python), estimated "
         "from another laboratory's slide: haematoxylin (0.5626, 0.7201, 0.4062), eosin (0.2159, 0.8012, 0.5581), "
         "in place of the home laboratory's Ruifrok & Johnston 2001 vectors (0.650, 0.704, 0.286) and (0.072, 0.990, 0.105). "
         "Concentrations and brightness: a haematoxylin-heavier, eosin-lighter laboratory with a dimmer scanner lamp, "
         "each centre moved by half the home laboratory's per-tile half-range, so that the new centre lies inside "
         "the home range (still H&E a pathologist accepts) while the whole distribution is shifted: haematoxylin scale "
         "+0.275 (U(0.725, 1.825), centre 1.275), eosin scale -0.225 (U(0.325, 1.225), centre 0.775), lamp -0.03 "
         "(U(0.85, 0.97) of full scale, centre 0.91); the per-tile variation (vector jitter, scales, lamp, noise) is "
         "the home laboratory's, around these centres",
)  # fmt: skip

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


def render_tile(rng: np.random.Generator, label: int, spec: SyntheticSpec = SyntheticSpec(), staining: Staining = HOME_LAB) -> np.ndarray:
    """One H&E-like tile as an (H, W, 3) uint8 array: its tissue (stain densities), stained as
    `staining`'s laboratory stains, then turned. The random stream is drawn in the same order for
    every laboratory, so one stream gives the same tissue and orientation whoever stains it."""
    haem, eosin = tissue_densities(rng, label, spec)
    tile = stain_tile(rng, haem, eosin, staining)

    # Orientation carries no information: any quarter turn, mirrored or not.
    tile = np.rot90(tile, k=int(rng.integers(4)))
    if rng.uniform() < 0.5:
        tile = tile[:, ::-1]
    return np.ascontiguousarray(tile)


def tissue_densities(rng: np.random.Generator, label: int, spec: SyntheticSpec = SyntheticSpec()) -> tuple[np.ndarray, np.ndarray]:
    """A tile's tissue before staining: haematoxylin and eosin densities, (H, W) float32 each
    (nuclei, glands, lumens, stroma), drawn from the start of the tile's stream."""
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
    return haem, eosin


def stain_tile(rng: np.random.Generator, haem: np.ndarray, eosin: np.ndarray, staining: Staining = HOME_LAB) -> np.ndarray:
    """Stain densities (H, W) as a laboratory's slide scanned: (H, W, 3) uint8 (Beer-Lambert).
    Per tile, stain vectors, concentrations and brightness vary like batches of slides around the
    laboratory's centre; every laboratory draws the same numbers from `rng`, in the same order."""
    h_vec = np.array(staining.haematoxylin_od) + rng.normal(0, 0.05, 3)
    e_vec = np.array(staining.eosin_od) + rng.normal(0, 0.05, 3)
    h_vec /= np.linalg.norm(h_vec)
    e_vec /= np.linalg.norm(e_vec)
    h_scale = rng.uniform(*HAEMATOXYLIN_SCALE) + staining.haematoxylin_shift
    e_scale = rng.uniform(*EOSIN_SCALE) + staining.eosin_shift
    h_vec = (h_vec * h_scale * rng.uniform(0.8, 1.2)).astype(np.float32)
    e_vec = (e_vec * e_scale * rng.uniform(0.8, 1.2)).astype(np.float32)
    od = haem[..., None] * h_vec + eosin[..., None] * e_vec
    rgb = np.exp(-od) * np.float32(255.0 * (rng.uniform(*LAMP_BRIGHTNESS) + staining.brightness_shift))
    rgb += 2.5 * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# Each split draws its tiles from its own streams: the other laboratory's test tissue (2) is new,
# never the home set's training (0) or test (1) tissue.
SPLIT_STREAMS = {"train": 0, "test": 1, "other_lab": 2}


def tile_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one tile: independent of which process renders it or in what order."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


def tile_label(seed: int, split: str, index: int) -> int:
    """Balanced labels drawn from their own stream, so rendering changes never move them."""
    return int(np.random.default_rng([seed, SPLIT_STREAMS[split], index, 7]).integers(2))


def render_split(spec: SyntheticSpec, split: str, indices: range, staining: Staining = HOME_LAB) -> tuple[np.ndarray, np.ndarray]:
    """Render tiles into memory (for tests and checks): images (N, H, W, 3) uint8 and labels (N,)."""
    labels = np.array([tile_label(spec.seed, split, i) for i in indices])
    tiles = np.stack([render_tile(tile_rng(spec.seed, split, i), lab, spec, staining) for i, lab in zip(indices, labels)])
    return tiles, labels


def _write_chunk(args: tuple[SyntheticSpec, str, list[int], str, Staining]) -> list[tuple[int, int]]:
    spec, split, ids, folder, staining = args
    rows = []
    for tile_id in ids:
        label = tile_label(spec.seed, split, tile_id)
        tile = render_tile(tile_rng(spec.seed, split, tile_id), label, spec, staining)
        Image.fromarray(tile).save(Path(folder) / f"{tile_id}.jpg", quality=spec.jpeg_quality)
        rows.append((tile_id, label))
    return rows


def _write_labels(path: Path, rows: list[tuple[int, int]]) -> None:
    with open(path, "w") as f:
        f.write("id,label\n")
        f.writelines(f"{tile_id},{label}\n" for tile_id, label in sorted(rows))


def _refuse_foreign(data_dir: Path) -> None:
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / SPEC_FILE).exists():
        raise FileExistsError(
            f"{data_dir} exists and holds files that this generator did not write; "
            "refusing to overwrite them. Point DATA at that folder to use it, or choose another folder."
        )


def _write_set(data_dir: Path, spec: SyntheticSpec, parts: tuple[tuple[str, str, int], ...], staining: Staining, record: dict,
               workers: int | None, desc: str) -> Path:  # fmt: skip
    """Render `parts` ((folder, split stream, count) each, labels into <folder>_label.csv) and the
    DATASET.json `record` into a staging folder, then move it to `data_dir` in one rename: an
    interrupted generation leaves no half-written set (and takes its staging folder with it)."""
    from lib.progress import progress

    staging = data_dir.with_name(data_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    workers = workers or max(1, os.cpu_count() or 1)
    chunk = 64
    try:
        folders, jobs = [], []  # the folder of each job, and the job
        for folder, split, count in parts:
            (staging / folder).mkdir(parents=True)
            ids = list(range(1, count + 1))
            for i in range(0, count, chunk):
                folders.append(folder)
                jobs.append((spec, split, ids[i : i + chunk], str(staging / folder), staining))
        rows: dict[str, list] = {folder: [] for folder, _, _ in parts}
        total = sum(count for _, _, count in parts)
        # The workers end with this process, whatever kills it (lib/workers.py).
        with (ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool,
              progress(total=total, desc=desc, unit="tile") as bar):  # fmt: skip
            for folder, done in zip(folders, pool.map(_write_chunk, jobs)):
                rows[folder] += done
                bar.update(len(done))
        for folder, _, _ in parts:
            _write_labels(staging / f"{folder}_label.csv", rows[folder])
        (staging / SPEC_FILE).write_text(json.dumps(record, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(data_dir, ignore_errors=True)
    staging.rename(data_dir)
    return data_dir


def generate(data_dir: str | Path, spec: SyntheticSpec = SyntheticSpec(), workers: int | None = None) -> Path:
    """Write the tile set into `data_dir` in the course layout, unless the same spec is already there.

    Layout: train/1.jpg..., train_label.csv, test/1.jpg..., and test_label.csv (the test labels,
    which training never reads; evaluation uses them to score the test predictions). The set is
    built in a temporary folder and moved into place at the end, so an interrupted generation
    never leaves a half-written data set behind.
    """
    data_dir = Path(data_dir)
    if existing_spec(data_dir) == asdict(spec):
        return data_dir
    _refuse_foreign(data_dir)
    record = asdict(spec) | {"origin": "generated by lib/data/synthetic.py (H&E-like tiles rendered from a seed)"}
    parts = (("train", "train", spec.n_train), ("test", "test", spec.n_test))
    return _write_set(data_dir, spec, parts, HOME_LAB, record, workers, "generating tiles")


def existing_spec(data_dir: Path) -> dict | None:
    """The spec a generated set was made with, or None when `data_dir` holds no generated set."""
    path = Path(data_dir) / SPEC_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    record.pop("origin", None)
    # JSON turns tuples into lists; compare like with like.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


@dataclass(frozen=True)
class OtherLabSpec:
    """The second test set: new tissue, drawn as the home set draws it (the same tile size, atypia
    ranges and seed, from its own "other_lab" streams), stained by another laboratory (OTHER_LAB).
    The defaults match the home set's test set: 512 tiles."""

    n_test: int = 512
    tile_size: int = 256
    seed: int = 2020
    normal_atypia: tuple[float, float] = (0.0, 0.48)
    tumour_atypia: tuple[float, float] = (0.40, 1.0)
    jpeg_quality: int = 90
    staining: Staining = OTHER_LAB
    version: int = GENERATOR_VERSION

    def tissue(self) -> SyntheticSpec:
        """The tissue as render_tile reads it (only its tile size, seed, atypia ranges and JPEG quality count)."""
        return SyntheticSpec(n_train=0, n_test=self.n_test, tile_size=self.tile_size, seed=self.seed, normal_atypia=self.normal_atypia,
                             tumour_atypia=self.tumour_atypia, jpeg_quality=self.jpeg_quality)  # fmt: skip


def _other_lab_record(spec: OtherLabSpec) -> dict:
    """The DATASET.json record of an other-lab set, as JSON reads it back (tuples as lists): the
    spec, the staining's numbers, and its rule in words as "stain_rule"."""
    record = json.loads(json.dumps(asdict(spec)))
    record["stain_rule"] = record["staining"].pop("rule")
    return record


def generate_other_lab(data_dir: str | Path, spec: OtherLabSpec = OtherLabSpec(), workers: int | None = None) -> Path:
    """Write the other laboratory's test set into `data_dir`, unless the same spec is already there.

    Layout: the course layout's test part alone, test/1.jpg... and test_label.csv, with no train/:
    read_layout reads it as a labelled test set (nothing to train on), so predict_test_tiles(run_dir,
    data_dir=...) scores a run trained on the home set on it as on the home test set. DATASET.json
    records the spec, the staining's numbers and its rule in words ("stain_rule"). Written like
    generate(): in a staging folder moved into place at the end."""
    data_dir = Path(data_dir)
    record = _other_lab_record(spec)
    path = data_dir / SPEC_FILE
    if path.exists() and {k: v for k, v in json.loads(path.read_text()).items() if k != "origin"} == record:
        return data_dir
    _refuse_foreign(data_dir)
    record["origin"] = ("generated by lib/data/synthetic.py (H&E-like tiles rendered from a seed): new tissue stained "
                        "as another laboratory stains, a second test set")  # fmt: skip
    parts = (("test", "other_lab", spec.n_test),)
    return _write_set(data_dir, spec.tissue(), parts, spec.staining, record, workers, "generating other-lab test tiles")


def ensure_default(data_dir: str | Path) -> Path:
    """Generate the embedded default set, and its other-laboratory test set beside it, when
    `data_dir` is the default set's folder; leave any other folder alone."""
    from lib.paths import DEFAULT_DATA_DIR, DEFAULT_OTHER_LAB_DIR, resolve

    data_dir = resolve(data_dir)
    if data_dir == DEFAULT_DATA_DIR:
        generate(data_dir)
        generate_other_lab(DEFAULT_OTHER_LAB_DIR)
    return data_dir


def default_other_lab(data_dir: str | Path) -> Path | None:
    """The second test set (the other laboratory's staining, OTHER_LAB) of `data_dir`: its folder
    when `data_dir` is the default set's (made by ensure_default), else None: user data has none."""
    from lib.paths import DEFAULT_DATA_DIR, DEFAULT_OTHER_LAB_DIR, resolve

    return DEFAULT_OTHER_LAB_DIR if resolve(data_dir) == DEFAULT_DATA_DIR else None
