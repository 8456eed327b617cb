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
    with pytest.raises(DataError, match=r"train.csv:3: .*overlap"):
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


def test_check_reports_every_planted_problem_at_once(sample_dir, tmp_path) -> None:
    """`trainer check`: one run names each problem with its file and line, before any training step."""
    import cv2
    from click.testing import CliRunner

    from trainer.cli import main

    keep = copy_sample(sample_dir, tmp_path, n=4)
    cv2.imwrite(str(tmp_path / "images" / keep[1]), np.zeros((256, 1024), np.uint8))  # wrong size, same name
    (tmp_path / "images" / keep[2]).unlink()  # labelled, missing
    lines = (tmp_path / "train.csv").read_text().splitlines()
    first = lines[1]
    free = next(k for k in "1234" if f"{keep[3]},{k}," not in "\n".join(lines))  # a class keep[3] has no row for
    lines += [
        f"{keep[0]},5,1 10",  # class out of range
        f"{keep[3]},{free},7 3 5 2",  # bad RLE: runs not increasing
        first,  # duplicate row
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    n = len(lines)
    missing_line = next(i for i, line in enumerate(lines, start=1) if line.startswith(keep[2]))
    result = CliRunner().invoke(main, ["check", "--data", str(tmp_path)])
    assert result.exit_code == 1, result.output
    csv_path = tmp_path / "train.csv"
    wanted = [f"{csv_path}:{n - 2}: {keep[0]}: class '5' is not 1..4",
              f"{csv_path}:{n - 1}: {keep[3]}, class {free}: bad RLE",
              f"{csv_path}:{n}: {first.split(',')[0]}, class {first.split(',')[1]}: duplicate row (first on line 2)",
              f"{csv_path}:{missing_line}: {keep[2]}: labelled image missing",
              f"{tmp_path / 'images' / keep[1]}: is 256x1024, expected 256x1600"]
    for text in wanted:
        assert text in result.output, f"{text!r} not in\n{result.output}"
    assert "5 problem(s)" in result.output
    good = CliRunner().invoke(main, ["check", "--data", str(sample_dir)])
    assert good.exit_code == 0 and "40 frames" in good.output, good.output


def test_train_checks_the_data_before_any_step_and_leaves_no_run_folder(sample_dir, tmp_path) -> None:
    from trainer.train import TrainConfig, train

    (tmp_path / "d").mkdir()
    copy_sample(sample_dir, tmp_path / "d", n=3)
    csv_path = tmp_path / "d" / "train.csv"
    csv_path.write_text(csv_path.read_text() + "x.jpg,9,1 1\n")
    out = tmp_path / "run"
    with pytest.raises(DataError, match="class '9'"):
        train(TrainConfig.from_sources(None, data=[str(tmp_path / "d")], out=str(out), max_steps=1,
                                       encoder="tu-mobilenetv3_small_100"), progress=False)
    assert not out.exists()
