"""Small image files for layout tests: real encoded files, written where a test asks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tile(path: Path, seed: int, size: int = 32, mode: str = "RGB") -> Path:
    """A random RGB tile saved at `path` (format from the suffix), converted to `mode` first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def class_folders(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """ImageFolder layout: one folder per class name holding `count` tiles."""
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            seed += 1
            write_tile(root / name / f"{name}{i}{suffix}", seed)
    return root


def write_tiff(path: Path, pixels: np.ndarray, **options) -> Path:
    """A TIFF of `pixels` as given (any dtype, pages first when options say so), written by tifffile."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels, **options)
    return path


# The stored image that Pillow's exif_transpose turns back into the upright one, per EXIF orientation.
_STORED_FOR = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}  # fmt: skip


def write_oriented(path: Path, upright: Image.Image, orientation: int) -> Path:
    """`upright` stored turned as a camera stores it, with the EXIF orientation that tells a viewer
    how to turn it back (format from the suffix: JPEG as a phone writes it, PNG for exact pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[274] = orientation
    upright.transpose(_STORED_FOR[orientation]).save(path, exif=exif)
    return path


def halves(width: int, height: int, top=(200, 30, 30), bottom=(30, 30, 200)) -> Image.Image:
    """An RGB image whose top half is one colour and bottom half another: which way up it is shows."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2], pixels[height // 2 :] = top, bottom
    return Image.fromarray(pixels, "RGB")


def breakhis_tree(root: Path, per_folder: int = 2) -> Path:
    """BreakHis as unzipped, in small: BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/
    <subtype>/<patient>/<40X|100X>/<patient-magnification-n>.png, tiles 35x23 (700x460 / 20).
    Two subtypes per class (benign's phyllodes_tumor holds a tumour word), two patients each."""
    subtypes = {"benign": {"adenosis": "A", "phyllodes_tumor": "PT"}, "malignant": {"ductal_carcinoma": "DC", "lobular_carcinoma": "LC"}}
    seed = 0
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for kind, by_subtype in subtypes.items():
        for subtype, code in by_subtype.items():
            for number in (101, 202):
                patient = f"SOB_{kind[0].upper()}_{code}_14-{number}{code}"
                for magnification in ("40X", "100X"):
                    for i in range(1, per_folder + 1):
                        seed += 1
                        path = breast / kind / "SOB" / subtype / patient / magnification / f"{patient.replace('_14', '-14')}-{magnification[:-1]}-{i:03d}.png"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        pixels = np.random.default_rng(seed).integers(0, 256, (23, 35, 3), dtype=np.uint8)
                        Image.fromarray(pixels, "RGB").save(path)
    return breast


LC25000_CLASSES = {"colon_image_sets": ("colon_aca", "colon_n"), "lung_image_sets": ("lung_aca", "lung_n", "lung_scc")}


def lc25000_tree(root: Path, per_class: int = 3) -> Path:
    """LC25000 as unzipped, in small: lung_colon_image_set/{colon_image_sets/{colon_aca,colon_n},
    lung_image_sets/{lung_aca,lung_n,lung_scc}}/<name><n>.jpeg."""
    top = root / "lung_colon_image_set"
    seed = 100
    for organ, classes in LC25000_CLASSES.items():
        for name in classes:
            for i in range(1, per_class + 1):
                seed += 1
                write_tile(top / organ / name / f"{name.replace('_', '')}{i}.jpeg", seed, size=24)
    return top


def idc_tree(root: Path, patients=("10253", "10254", "12868"), classes=("0", "1"), middle: tuple[str, ...] = (),
             per_folder: int = 2) -> Path:
    """Kaggle's IDC (Breast Histopathology Images) in small: <patient>/<class>/<patient>_idx5_x<x>_y<y>_class<c>.png,
    16x16 tiles; `middle` puts folders between patient and class (a magnification: <patient>/40X/<class>/)."""
    seed = 200
    for patient in patients:
        for name in classes:
            for i in range(per_folder):
                seed += 1
                write_tile(root.joinpath(patient, *middle, name, f"{patient}_idx5_x{50 * i + 1}_y51_class{name}.png"), seed, size=16)
    return root


def write_finished_run(run_dir: Path, epochs: int = 1) -> Path:
    """A run folder whose files agree that they hold one whole finished run (RunFolder.check_whole), as
    fit leaves it, for tests whose fake notebooks stand in for training: config.json, history.json,
    result.json and a best.pt of the best epoch (the last)."""
    import json

    import torch

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"run": run_dir.name, "epochs": epochs, "runs_dir": str(run_dir.parent)}))
    (run_dir / "history.json").write_text(json.dumps([{"epoch": e, "valid_accuracy": 0.5} for e in range(epochs)]))
    (run_dir / "result.json").write_text(json.dumps({"run": run_dir.name, "epochs": epochs, "best_epoch": epochs - 1}))
    torch.save({"model": {}, "epoch": epochs - 1}, run_dir / "best.pt")
    return run_dir
