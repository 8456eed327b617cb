import csv
import shutil

import numpy as np
import pytest

from inspector import synth
from inspector.rle import encode
from trainer.data import DataError, load_dataset, masks_of, read_labels, stratified_split
from trainer.synth import write_dataset


def test_modern_csv_against_real_sample(sample_dir) -> None:
    samples = load_dataset(sample_dir)
    assert len(samples) == 40
    assert sum(1 for s in samples if not s.rles) == 5  # defect-free frames come from the image folder
    rows = list(csv.DictReader((sample_dir / "train.csv").read_text().splitlines()))
    by_id = {s.image_id: s for s in samples}
    for row in rows:
        mask = masks_of(by_id[row["ImageId"]])[int(row["ClassId"]) - 1]
        assert encode(mask) == row["EncodedPixels"]  # decoded masks match the RLE exactly
    per_class = [sum(masks_of(s)[k].sum() for s in samples) for k in range(4)]
    assert per_class == [12806, 16919, 476946, 456237]  # as the sample's README states


def test_old_csv_form_gives_the_same_labels(sample_dir, tmp_path) -> None:
    rows = list(csv.DictReader((sample_dir / "train.csv").read_text().splitlines()))
    ids = sorted({r["ImageId"] for r in rows})
    old = tmp_path / "old.csv"
    with open(old, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageId_ClassId", "EncodedPixels"])
        for image_id in ids:
            for k in range(1, 5):
                rle = next((r["EncodedPixels"] for r in rows if r["ImageId"] == image_id and r["ClassId"] == str(k)),
                           "")
                w.writerow([f"{image_id}_{k}", rle])
    assert read_labels(old) == read_labels(sample_dir / "train.csv")


def copy_sample(sample_dir, tmp_path, n=3):
    (tmp_path / "images").mkdir()
    rows = list(csv.DictReader((sample_dir / "train.csv").read_text().splitlines()))
    keep = sorted({r["ImageId"] for r in rows})[:n]
    for name in keep:
        shutil.copy(sample_dir / "images" / name, tmp_path / "images" / name)
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        w.writerows([r["ImageId"], r["ClassId"], r["EncodedPixels"]] for r in rows if r["ImageId"] in keep)
    return keep


def test_missing_image_is_named(sample_dir, tmp_path) -> None:
    keep = copy_sample(sample_dir, tmp_path)
    (tmp_path / "images" / keep[0]).unlink()
    with pytest.raises(DataError, match=keep[0]):
        load_dataset(tmp_path)


def test_bad_rle_row_names_line_and_problem(sample_dir, tmp_path) -> None:
    copy_sample(sample_dir, tmp_path)
    text = (tmp_path / "train.csv").read_text().splitlines()
    image_id = text[2].split(",")[0]
    text[2] = f"{image_id},3,5 10 8 4"  # overlapping runs on line 3
    (tmp_path / "train.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"line 3 .*overlap"):
        load_dataset(tmp_path)


def test_wrong_image_size_is_named(sample_dir, tmp_path) -> None:
    import cv2

    from trainer.data import read_image

    keep = copy_sample(sample_dir, tmp_path)
    path = tmp_path / "images" / keep[0]
    cv2.imwrite(str(path), np.zeros((128, 800), np.uint8))
    with pytest.raises(DataError, match="128x800"):
        read_image(path)


def test_stratified_split_keeps_combinations(sample_dir) -> None:
    samples = load_dataset(sample_dir)
    train, val = stratified_split(samples, 0.25, 0)
    assert len(train) + len(val) == 40 and not {s.image_id for s in train} & {s.image_id for s in val}
    assert {s.classes for s in val} & {(3,), (4,), ()}  # common combinations on both sides
    assert stratified_split(samples, 0.25, 0) == (train, val)


def test_synth_is_deterministic_and_labelled(tmp_path) -> None:
    a = synth.frame(3, 17)
    b = synth.frame(3, 17)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, synth.frame(4, 17).image)
    assert (a.masks.sum(axis=0) <= 1).all()  # at most one class per pixel
    write_dataset(tmp_path / "d1", 12, seed=5, progress=False)
    write_dataset(tmp_path / "d2", 12, seed=5, progress=False)
    assert (tmp_path / "d1" / "train.csv").read_text() == (tmp_path / "d2" / "train.csv").read_text()
    samples = load_dataset(tmp_path / "d1")
    assert len(samples) == 12


def test_synth_proportions() -> None:
    frames = [synth.frame(0, i) for i in range(300)]
    empty = sum(1 for f in frames if not f.masks.any()) / len(frames)
    assert 0.35 < empty < 0.65  # real set: 47% defect-free
    per_class = np.array([sum(1 for f in frames if f.masks[k].any()) for k in range(4)])
    assert per_class.argmax() == 2  # class 3 dominates, as in the real set
