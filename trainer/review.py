"""`trainer review`: a capture day folder (inspector/capture/) -> overlays for a person, then train.csv.

Input, as the worker wrote it: images/, predicted.csv (the model's RLE), meta.jsonl (one line per frame, the
frame's index: a frame without its line is not reviewed, a last line without its newline was cut by a crash).
The person's answer is plain files: `--accept` (ids to keep; default all), `--drop` (ids to leave out), and
`--corrections` (rows in train.csv's form that replace every predicted row of the images they name; a row with an
empty EncodedPixels makes that image defect-free). An id is the ImageId (`cam-3-17.png`) or its stem.

Output: <out>/overlays/<stem>.png (captured frame above, pre-labels below), <out>/ids.txt (every id, for
editing into an accept or drop list), and in the day folder train.csv plus reviewed.txt (the accepted images:
`trainer.data.load_dataset` trains on these only, so frames captured after the review wait for the next one).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from inspector.rle import decode
from trainer.data import NUM_CLASSES, DataError, read_holdout, read_image, read_labels
from trainer.evaluate import write_overlay

REVIEWED = "reviewed.txt"


def complete_lines(path: Path) -> list[str]:
    """The lines of an appended file, without a last line a crash cut short."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]  # the piece after the last newline is incomplete or ""


def read_meta(day: Path) -> dict[str, dict[str, Any]]:
    """ImageId -> its meta line (the last one wins: a redelivered frame was written again)."""
    path = day / "meta.jsonl"
    if not path.exists():
        raise DataError(f"{day} has no meta.jsonl: not a capture folder (inspector capture writes "
                        "<capture.folder>/<yyyy-mm-dd>/)")
    meta: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(complete_lines(path), start=1):
        try:
            row = json.loads(line)
            meta[row["image"]] = row
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path} line {n} is not a capture record ({type(exc).__name__}: {exc})") from None
    return meta


def read_predicted(day: Path) -> dict[str, dict[int, str]]:
    """predicted.csv without a cut last line, validated as train.csv is."""
    path = day / "predicted.csv"
    if not path.exists():
        return {}
    with tempfile.TemporaryDirectory(prefix="review-") as tmp:  # the worker may be appending: read a copy
        whole = Path(tmp) / "predicted.csv"
        whole.write_text("\n".join(complete_lines(path)) + "\n")
        return dict(read_labels(whole))


def _ids(path: str | Path | None, known: dict[str, str]) -> set[str] | None:
    """An id list as ImageIds; DataError names an id that is not in the folder."""
    if path is None:
        return None
    out = set()
    for token in sorted(read_holdout(path)):
        image = known.get(token)
        if image is None:
            raise DataError(f"{path}: '{token[:80]}' is not an image of this capture folder (see ids.txt)")
        out.add(image)
    return out


def review(data: str | Path, out: str | Path, accept: str | Path | None = None, drop: str | Path | None = None,
           corrections: str | Path | None = None, overlays: bool = True) -> dict[str, Any]:
    """Write overlays and ids.txt into `out`, train.csv and reviewed.txt into `data`; returns the counts."""
    day, out = Path(data), Path(out)
    meta = read_meta(day)
    images = {name: day / "images" / name for name in meta if (day / "images" / name).is_file()}
    known = {**{Path(n).stem: n for n in images}, **{n: n for n in images}}
    predicted = read_predicted(day)
    accepted = _ids(accept, known)
    dropped = _ids(drop, known) or set()
    chosen = sorted((set(images) if accepted is None else accepted) - dropped)
    labels: dict[str, dict[int, str]] = defaultdict(dict, {n: dict(predicted.get(n, {})) for n in chosen})
    corrected = 0
    if corrections is not None:
        fixes = read_labels(Path(corrections))
        with open(corrections, newline="") as fh:  # images named with only empty rows: defect-free now
            named = {row.get("ImageId") or row.get("ImageId_ClassId", "").rpartition("_")[0]
                     for row in csv.DictReader(fh)}
        for token in named:
            image = known.get(token)
            if image is None:
                raise DataError(f"{corrections}: '{token[:80]}' is not an image of this capture folder")
            if image in labels:
                labels[image] = dict(fixes.get(token, {}))
                corrected += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "ids.txt").write_text("".join(f"{n}\n" for n in sorted(images)))
    if overlays:
        for name, path in sorted(images.items()):
            image = read_image(path)
            pred = np.stack([decode(predicted.get(name, {}).get(k, ""), image.shape)
                             for k in range(1, NUM_CLASSES + 1)])
            write_overlay(out / "overlays" / f"{Path(name).stem}.png", image, np.zeros_like(pred), pred,
                          ("captured", "pre-labels (predicted.csv)"))
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
    for name in chosen:
        for cls, rle in sorted(labels[name].items()):
            writer.writerow([name, cls, rle])
    _atomic(day / "train.csv", rows.getvalue())
    _atomic(day / REVIEWED, "".join(f"{n}\n" for n in chosen))
    return {"frames": len(images), "accepted": len(chosen), "dropped": len(images) - len(chosen),
            "corrected": corrected, "defect_rows": sum(len(v) for k, v in labels.items() if k in set(chosen)),
            "train_csv": str(day / "train.csv"), "overlays": str(out / "overlays") if overlays else None}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
