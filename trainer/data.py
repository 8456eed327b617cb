"""Severstal (Kaggle) layout: a folder of images plus train.csv, in the modern or the old form.

modern: ImageId,ClassId,EncodedPixels  (defect rows only; images without rows are defect-free)
old:    ImageId_ClassId,EncodedPixels  (one row per image and class, empty EncodedPixels for no defect)

A capture day folder (inspector/capture/) holds predicted.csv, not train.csv, until `trainer review` writes
train.csv and reviewed.txt; from then on only the reviewed images count (later captures wait for a review).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from inspector.rle import decode

NUM_CLASSES = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_RLE_CHARS = 1 << 23  # a model's RLE of a speckled frame (predicted.csv) runs far past csv's 128 KB default


class DataError(ValueError):
    """The dataset is malformed; the message names the file, row and problem."""


@dataclass
class Sample:
    image_id: str
    path: Path
    rles: dict[int, str]  # class id (1..4) -> RLE, only classes with a defect
    domain: int = 0  # which dataset folder it came from (synthetic, real, ...), for mixing and weighting

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted(self.rles))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, where it is (a CSV line, or an image file)."""

    file: Path
    line: int | None
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}" if self.line else f"{self.file}: {self.text}"


def problems_error(problems: list[Problem]) -> DataError:
    """Every problem in one error: a person fixes them in one pass, not one run each."""
    lines = "\n  ".join(str(p) for p in problems)
    return DataError(f"{len(problems)} problem(s) in the dataset, nothing was trained:\n  {lines}")


def scan_labels(csv_path: Path, shape: tuple[int, int] = (256, 1600)
                ) -> tuple[dict[str, dict[int, str]], dict[str, int], list[Problem]]:
    """(image id -> {class id: rle}, image id -> its first CSV line, problems) from either CSV form; every row is
    checked (header, class 1..4, image id, RLE inside a `shape` frame, one row per image and class)."""
    labels: dict[str, dict[int, str]] = defaultdict(dict)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RLE_CHARS))
    first_line: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    problems: list[Problem] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        modern = {"ImageId", "ClassId", "EncodedPixels"} <= set(fields)
        old = {"ImageId_ClassId", "EncodedPixels"} <= set(fields)
        if not (modern or old):
            return {}, {}, [Problem(csv_path, 1, f"header {fields} is neither ImageId,ClassId,EncodedPixels nor "
                                                 "ImageId_ClassId,EncodedPixels")]
        for line, row in enumerate(reader, start=2):
            if None in row or None in row.values():  # DictReader's marks of extra and of missing fields
                more = "more" if None in row else "fewer"
                problems.append(Problem(csv_path, line, f"{more} fields than the header's {len(fields)}"))
                continue
            if modern:
                image_id, cls = row["ImageId"].strip(), row["ClassId"].strip()
            else:
                image_id, _, cls = row["ImageId_ClassId"].strip().rpartition("_")
            if not image_id:
                problems.append(Problem(csv_path, line, "no image id"))
                continue
            first_line.setdefault(image_id, line)
            if not cls.isdigit() or not 1 <= int(cls) <= NUM_CLASSES:
                problems.append(Problem(csv_path, line, f"{image_id}: class '{cls}' is not 1..{NUM_CLASSES}"))
                continue
            if (image_id, int(cls)) in seen:
                problems.append(Problem(csv_path, line, f"{image_id}, class {cls}: duplicate row (first on line "
                                                        f"{seen[image_id, int(cls)]})"))
                continue
            seen[image_id, int(cls)] = line
            rle = (row["EncodedPixels"] or "").strip()
            if not rle:
                continue
            try:
                decode(rle, shape)  # validate once here, so training never meets a bad row
            except ValueError as exc:
                problems.append(Problem(csv_path, line, f"{image_id}, class {cls}: bad RLE: {exc}"))
                continue
            labels[image_id][int(cls)] = rle
    return labels, first_line, problems


def read_labels(csv_path: Path) -> dict[str, dict[int, str]]:
    """image id -> {class id: rle}, from either CSV form; DataError lists every bad row with its line."""
    labels, _, problems = scan_labels(csv_path)
    if problems:
        raise problems_error(problems)
    return labels


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header (nothing decoded), or None when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError):
        return None


def scan_dataset(folder: str | Path, csv_name: str = "train.csv", images: str = "images",
                 shape: tuple[int, int] = (256, 1600)) -> tuple[list[Sample], list[Problem]]:
    """The frames of one Kaggle-layout folder and every problem found in it: bad rows, labelled images that are
    missing (with the row's line), images of another size or not images at all."""
    root = Path(folder)
    image_dir = next((root / d for d in (images, "train_images") if (root / d).is_dir()), None)
    if image_dir is None:
        return [], [Problem(root, None, f"no '{images}/' or 'train_images/' folder of frames")]
    csv_path = root / csv_name
    if not csv_path.exists():
        if (root / "predicted.csv").exists():
            raise DataError(f"{root} is a capture folder not reviewed yet: run `trainer review --data {root} --out "
                            f"DIR` first (it writes {csv_name} from predicted.csv for the frames you accept)")
        return [], [Problem(root, None, f"no {csv_name} (Kaggle labels; `trainer synth` writes one)")]
    labels, first_line, problems = scan_labels(csv_path, shape)
    files = {p.name: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    reviewed = root / "reviewed.txt"  # a capture folder: only what `trainer review` accepted (trainer/review.py)
    if reviewed.exists():
        keep = read_holdout(reviewed)
        files = {name: p for name, p in files.items() if name in keep}
    for name in sorted(set(first_line) - set(files), key=first_line.__getitem__):
        problems.append(Problem(csv_path, first_line[name], f"{name}: labelled image missing from {image_dir}"))
    for _, path in sorted(files.items()):
        size = image_size(path)
        if size is None:
            problems.append(Problem(path, None, "cannot be read as an image"))
        elif size != shape:
            problems.append(Problem(path, None, f"is {size[0]}x{size[1]}, expected {shape[0]}x{shape[1]}"))
    return [Sample(name, path, labels.get(name, {})) for name, path in sorted(files.items())], problems


def scan_datasets(folders: str | Path | list[str] | tuple[str, ...]) -> tuple[list[Sample], list[Problem]]:
    """Several folders, each tagged with its index as its domain; an image name in two folders is a problem
    (names key the splits, hold-out lists and weights)."""
    folders = [folders] if isinstance(folders, str | Path) else list(folders)
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for domain, folder in enumerate(folders):
        found, wrong = scan_dataset(folder)
        problems += wrong
        for s in found:
            if s.image_id in seen:
                problems.append(Problem(s.path, None, f"image {s.image_id} is also in {seen[s.image_id]}: rename "
                                                      "one, image names key the splits"))
                continue
            seen[s.image_id] = str(folder)
            s.domain = domain
            samples.append(s)
    return samples, problems


def load_dataset(folder: str | Path, csv_name: str = "train.csv", images: str = "images") -> list[Sample]:
    """Every image in folder/images (or folder/train_images), with its labels from folder/train.csv; DataError
    lists every problem at once."""
    samples, problems = scan_dataset(folder, csv_name, images)
    if problems:
        raise problems_error(problems)
    return samples


def load_datasets(folders: str | Path | list[str] | tuple[str, ...]) -> list[Sample]:
    """The frames of several Kaggle-layout folders (see scan_datasets); DataError lists every problem at once."""
    samples, problems = scan_datasets(folders)
    if problems:
        raise problems_error(problems)
    return samples


def read_holdout(path: str | Path) -> set[str]:
    """Image ids, one per line (blank lines and # comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"hold-out list {path} cannot be read: {exc.strerror}") from None
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def read_image(path: Path, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DataError(f"{path} cannot be read as an image")
    if image.shape != shape:
        raise DataError(f"{path} is {image.shape[0]}x{image.shape[1]}, expected {shape[0]}x{shape[1]}")
    return image


def masks_of(sample: Sample, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    out = np.zeros((NUM_CLASSES, *shape), dtype=np.uint8)
    for cls, rle in sample.rles.items():
        out[cls - 1] = decode(rle, shape)
    return out


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class combination, so rare combinations appear on both sides when they can."""
    groups: dict[tuple[int, ...], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.classes].append(s)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        n_val = round(len(group) * val_fraction) if len(group) > 1 else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def stratified_folds(samples: list[Sample], k: int, seed: int) -> list[list[Sample]]:
    """`k` folds for cross-validation, dealt per class combination (rarest first, shuffled within, continuing
    round the folds from group to group): a combination with n frames lands in min(n, k) folds, and fold sizes
    differ by at most one. A class spread over several combinations may share a fold (class 2 of the 40 real
    frames: 4 frames in 3 folds)."""
    if k < 2 or k > len(samples):
        raise ValueError(f"{k} folds need 2 <= k <= {len(samples)} (the number of frames)")
    groups: dict[tuple[int, ...], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.classes].append(s)
    rng = np.random.default_rng(seed)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    turn = 0
    for key in sorted(groups, key=lambda c: (len(groups[c]), c)):  # rarest first: they get distinct folds
        group = groups[key]
        for i in rng.permutation(len(group)):
            folds[turn % k].append(group[i])
            turn += 1
    return folds


class SteelDataset(Dataset):
    """(uint8 image [1, H, W], float masks [4, H, W]) pairs; random crops, and augmentation when training.

    Augmentation that keeps what a defect looks like on a strip: left-right and top-bottom flips (a vertical mark
    stays vertical under both; a 90-degree turn or a transpose would make it horizontal, which no class is),
    brightness and contrast (lighting and strip temper vary along a mill), and shifts of a few rows (the strip
    wanders under the camera). No scaling or rotation: the camera's pixel size and the rolling direction are
    fixed, and class 2's thin vertical marks would change class if tilted.
    """

    def __init__(self, samples: list[Sample], train: bool, crop_width: int | None = None, seed: int = 0,
                 augment: bool = True) -> None:
        self.samples, self.train, self.crop_width, self.augment = samples, train, crop_width, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[i]
        image = read_image(sample.path)
        masks = masks_of(sample)
        if self.train:
            if self.augment:
                image, masks = self._augment(image, masks)
            if self.crop_width and self.crop_width < image.shape[1]:
                x = self._crop_x(masks)
                image, masks = image[:, x:x + self.crop_width], masks[:, :, x:x + self.crop_width]
        return (torch.from_numpy(np.ascontiguousarray(image))[None],
                torch.from_numpy(np.ascontiguousarray(masks)).float())

    def _augment(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if rng.random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if rng.random() < 0.5:
            image, masks = image[::-1], masks[:, ::-1]
        if rng.random() < 0.5:
            gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
            image = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            dy = int(rng.integers(-16, 17))
            if dy:
                image = np.roll(image, dy, axis=0)
                masks = np.roll(masks, dy, axis=1)
                rows = slice(0, dy) if dy > 0 else slice(dy, None)  # rows wrapped round: mirror, no defect there
                image[rows] = image[rows][::-1]
                masks[:, rows] = 0
        return image, masks

    def _crop_x(self, masks: np.ndarray) -> int:
        """Random crop, centred on a defect pixel two times in three when there is one."""
        width = masks.shape[2]
        assert self.crop_width is not None
        cols = np.flatnonzero(masks.any(axis=(0, 1)))
        if cols.size and self.rng.random() < 2 / 3:
            centre = int(self.rng.choice(cols))
            return int(np.clip(centre - self.crop_width // 2, 0, width - self.crop_width))
        return int(self.rng.integers(0, width - self.crop_width + 1))
