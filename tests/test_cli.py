"""The command line end to end on real files, and every kind of bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from imageio.v3 import imread, imwrite
from tests.conftest import data_set
from typer.testing import CliRunner

from celltally.cli import app
from celltally.data import load_dataset
from celltally.models import DEFAULT_MODEL, read_config

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def leftovers(folder):
    """Temporary files a crashed or interrupted writer would leave behind."""
    return [p for p in folder.rglob(".*") if p.is_file()]


def test_count_the_bundled_samples_end_to_end(samples_dir, tmp_path):
    result = run("count", samples_dir, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "counts.csv", keep_default_na=False)
    assert list(table.columns) == [
        "image", "count", "n_points", "diameter", "scale", "warning", "model"
    ]  # fmt: skip
    assert len(table) == 5 and (table["model"] == DEFAULT_MODEL).all()
    assert (table["diameter"] > 5).all() and (table["diameter"] < 30).all()
    for row in table.itertuples():
        stem = row.image.split("/")[-1].removesuffix(".png")
        density = tifffile.imread(tmp_path / "density" / f"{stem}.tif")
        assert density.shape == (256, 256)
        assert density.sum() == pytest.approx(row.count, abs=1e-3)
        points = pd.read_csv(tmp_path / "points" / f"{stem}.csv")
        assert list(points.columns) == ["y", "x"] and len(points) == row.n_points
        assert imread(tmp_path / "overlays" / f"{stem}.png").shape[:2] == (512, 512)  # drawn 2x
        # centres fall short of the count on crowded images (160 for 209 counted, 208 true, on
        # 137cell.png): merged peaks, the open part of issue 41's item 7
        assert 40 < row.count < 400 and abs(row.n_points - row.count) < 0.3 * row.count
    record = json.loads((tmp_path / "run.json").read_text())
    assert len(record["model_hash"]) == 64 and record["versions"]["torch"]
    assert "cell counts" in result.output and not leftovers(tmp_path)


def test_count_reads_16_bit_and_multi_page_tiffs_and_globs(samples_dir, tmp_path):
    image = imread(samples_dir / "101cell.png")[:, :, 2].astype(np.uint16) * 250
    tifffile.imwrite(tmp_path / "deep.tif", image)
    tifffile.imwrite(
        tmp_path / "stack.tif", np.stack([image, image[::-1]]), photometric="minisblack"
    )
    result = run("count", tmp_path / "*.tif", "--out", tmp_path / "out", "--no-overlays")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert len(table) == 3
    counts = table.set_index("image")["count"]
    assert counts.iloc[0] == pytest.approx(counts.iloc[1], rel=1e-4)  # deep.tif == page 0
    assert counts.iloc[1] == pytest.approx(counts.iloc[2], rel=0.05)  # a flipped page


def test_count_with_tta_gives_a_turned_image_the_same_count(samples_dir, tmp_path):
    image = imread(samples_dir / "101cell.png")
    imwrite(tmp_path / "a.png", image)
    imwrite(tmp_path / "b.png", np.ascontiguousarray(np.rot90(image)[::-1]))
    at = ("--diameter", 11)  # one scale for both: the estimate of a turned image differs a little
    plain = run("count", tmp_path / "*.png", "--out", tmp_path / "plain", "--no-overlays", *at)
    result = run(
        "count", tmp_path / "*.png", "--out", tmp_path / "tta", "--no-overlays", "--tta", *at
    )
    assert plain.exit_code == result.exit_code == 0, result.output
    counts = pd.read_csv(tmp_path / "tta" / "counts.csv")["count"]
    assert counts[0] == pytest.approx(counts[1], abs=2e-3)  # the same 8 views, averaged
    plain_counts = pd.read_csv(tmp_path / "plain" / "counts.csv")["count"]
    assert abs(plain_counts[0] - plain_counts[1]) > 0.01
    record = json.loads((tmp_path / "tta" / "run.json").read_text())
    assert record["options"]["tta"] and not record["model_config"]["tta"]  # per call


def test_bad_files_are_reported_and_the_rest_still_counted(samples_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(samples_dir / "101cell.png", folder / "good.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    tifffile.imwrite(folder / "nan.tif", np.full((64, 64), np.nan, dtype=np.float32))
    tifffile.imwrite(folder / "complex.tif", np.ones((32, 32), dtype=np.complex64))
    tifffile.imwrite(
        folder / "shape.tif", np.ones((2, 3, 32, 32), dtype=np.uint8), photometric="minisblack"
    )
    imwrite(folder / "tiny.png", np.ones((8, 8), dtype=np.uint8))
    result = run("count", folder, "--out", tmp_path / "out")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = {
        "complex.tif": "unsupported pixel type complex64",
        "corrupt.png": "cannot be read as an image",
        "nan.tif": "contains NaN",
        "shape.tif": "unsupported image shape (2, 3, 32, 32)",
        "tiny.png": "image of 8x8 pixels is smaller than the 16x16 minimum of fcrn_a",
    }
    assert len(lines) == len(expected) + 1  # one per bad file, then the summary
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in lines), (name, lines)
    table = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert table["image"].str.endswith("good.png").tolist() == [True]
    assert sorted(p.name for p in (tmp_path / "out" / "points").iterdir()) == ["good.csv"]
    assert not leftovers(tmp_path / "out")


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("count", tmp_path / "empty", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no images found" in result.stderr
    result = run("count", tmp_path / "nothing*.png", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no such file, folder or glob match" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_model_is_a_one_line_error(samples_dir, tmp_path):
    result = run("count", samples_dir, "--model", tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not a model" in result.stderr


def points_folder(tmp_path, n=4):
    """VGG cells images with their dots as y,x CSVs: the generic layout for users' data."""
    from celltally.data import write_points_csv

    folder = tmp_path / "mine"
    folder.mkdir()
    for sample in load_dataset(data_set("vgg_cells"), "vgg_cells")[:n]:
        shutil.copy(sample.image_path, folder / f"{sample.name}.png")
        write_points_csv(folder / f"{sample.name}.csv", sample.read_points())
    return folder


@pytest.mark.slow
def test_train_then_evaluate_on_a_points_folder(tmp_path):
    folder = points_folder(tmp_path, n=5)
    result = run(
        "train",
        "--data",
        folder,
        "--format",
        "points",
        "--out",
        tmp_path / "run",
        "--n-train",
        2,
        "--n-val",
        2,
        "--set",
        "epochs=1",
        "--set",
        "steps_per_epoch=2",
        "--set",
        "finetune_epochs=1",
        "--set",
        "patch_size=64",
        "--set",
        "optimizer=adam",
    )
    assert result.exit_code == 0, result.output
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == len(split["val"]) == 2
    result = run(
        "evaluate", "--model", tmp_path / "run", "--data", folder, "--out", tmp_path / "eval.json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n_images"] == 1  # the one image neither trained nor validated on
    assert set(report["count"]) == {"mae", "rmse", "mre"}
    assert set(report["detection"]) == {"precision", "recall", "f1", "radius"}


def test_a_point_outside_its_image_stops_training_with_the_file_named(tmp_path):
    folder = points_folder(tmp_path, n=2)
    pd.DataFrame({"y": [10.0], "x": [300.0]}).to_csv(folder / "002.csv", index=False)
    result = run("train", "--data", folder, "--out", tmp_path / "run", "--n-train", 1, "--n-val", 1)
    assert result.exit_code == 2
    assert "002.png: 1 point(s) outside the 256x256 image" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_evaluate_the_bundled_model_on_vgg_test_images():
    result = run("evaluate", "--data", data_set("vgg_cells"), "--format", "vgg_cells")
    assert result.exit_code == 0, result.output
    assert "100 images" in result.output and "MAE" in result.output


def test_models_lists_registry_and_bundled():
    result = run("models")
    assert result.exit_code == 0
    assert "fcrn_a" in result.output and "fcrn_b" in result.output and "1,365,825" in result.output
    assert f"{DEFAULT_MODEL} *" in result.output and "fcrn_a_vgg_cells" in result.output
    assert "for " in result.output and "research use" in result.output  # card: use, licences


def test_bad_training_settings_are_one_line_errors(tmp_path):
    folder = points_folder(tmp_path, n=2)
    for setting, problem in [
        ("epochs=x", "setting epochs must be of type int, got 'x'"),
        ("epoch=3", "--set 'epoch=3': expected NAME=VALUE with NAME one of"),
        ("optimizer=rmsprop", "optimizer must be 'sgd' or 'adam', got 'rmsprop'"),
    ]:
        result = run("train", "--data", folder, "--out", tmp_path / "run", "--set", setting)
        assert result.exit_code == 2 and problem in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_synth_writes_a_set_that_train_reads(tmp_path):
    out = tmp_path / "set"
    result = run("synth", "--out", out, "--n", 3, "--seed", 4, "--set", "radius=5")
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest["image"]) == [f"synth_0000{i}.png" for i in range(3)]
    samples = load_dataset(out, "points")
    assert [s.name for s in samples] == [f"synth_0000{i}" for i in range(3)]
    for sample, row in zip(samples, manifest.itertuples(), strict=True):
        image, points = sample.load()
        labels, mask = tifffile.imread(out / row.labels), imread(out / row.mask)
        assert image.shape == (256, 256, 3)
        assert len(points) == row.count == labels.max() == len(np.unique(labels)) - 1
        assert ((mask > 0) == (labels > 0)).all()
    assert json.loads((out / "synth.json").read_text())["config"]["radius"] == 5


def test_synth_rejects_bad_settings(tmp_path):
    result = run("synth", "--out", tmp_path / "set", "--set", "overlap=1.5")
    assert result.exit_code == 2 and "overlap must be in [0, 1)" in result.stderr
    result = run("synth", "--out", tmp_path / "set", "--preset", "bbbc006")
    assert result.exit_code == 2 and "unknown synthetic preset 'bbbc006'" in result.stderr
    assert not (tmp_path / "set").exists()


@pytest.mark.slow
def test_train_on_synthetic_images_then_fine_tune(tmp_path):
    quick = ["--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "finetune_epochs=0"]
    result = run(
        "train",
        "--data",
        "vgg_cells",
        "--format",
        "synth",
        "--out",
        tmp_path / "synth_run",
        "--n-train",
        2,
        "--n-val",
        1,
        *quick,
        "--set",
        "patch_size=64",
    )
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "synth_run" / "model").to_dict()
    assert config["training"]["data"] == "synth:vgg_cells"
    assert config["training"]["split"] == {
        "train": ["synth_00000", "synth_00001"],
        "val": ["synth_00002"],
    }
    folder = points_folder(tmp_path, n=2)
    result = run(
        "train",
        "--data",
        folder,
        "--out",
        tmp_path / "tuned",
        "--n-train",
        1,
        "--n-val",
        1,
        "--init",
        tmp_path / "synth_run",
        *quick,
    )
    assert result.exit_code == 0, result.output
    tuned = read_config(tmp_path / "tuned" / "model").to_dict()
    assert tuned["training"]["settings"]["init"] == str(tmp_path / "synth_run")
    result = run(
        "train",
        "--data",
        folder,
        "--out",
        tmp_path / "wrong",
        "--n-train",
        1,
        "--n-val",
        1,
        "--model",
        "fcrn_b",
        "--init",
        tmp_path / "synth_run",
        *quick,
    )
    assert (
        result.exit_code == 2 and "has arch=fcrn_a; train with the same settings" in result.stderr
    )


def test_count_picks_the_channel_and_reports_diameter_and_warnings(samples_dir, tmp_path):
    nuclei = imread(samples_dir / "101cell.png")[:, :, 2]
    stain = np.random.default_rng(0).integers(0, 255, nuclei.shape).astype(np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([stain, nuclei]), metadata={"axes": "CYX"})
    imwrite(tmp_path / "nuclei.png", nuclei)
    imwrite(tmp_path / "flat.png", np.full((128, 128), 9, np.uint8))
    out = tmp_path / "out"
    result = run("count", tmp_path / "two.tif", "--out", out / "two", "--channel", 1)
    assert result.exit_code == 0, result.output
    two = pd.read_csv(out / "two" / "counts.csv")
    assert len(two) == 1  # one image of two channels, not two pages
    result = run("count", tmp_path, "--out", out, "--no-overlays")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "counts.csv", keep_default_na=False).set_index("image")
    assert {"diameter", "scale", "warning"} <= set(table.columns)
    alone = table.loc[str(tmp_path / "nuclei.png")]
    assert two["count"][0] == pytest.approx(alone["count"], rel=1e-4)  # channel 1 = the nuclei
    assert "channel 0" in table.loc[str(tmp_path / "two.tif"), "warning"]  # chosen for the user
    assert "contrast" in table.loc[str(tmp_path / "flat.png"), "warning"]
    assert "2 of 3 image(s) flagged" in result.output  # the flat image and the chosen channel
    assert json.loads((out / "run.json").read_text())["flagged"] == 2
    result = run("count", tmp_path / "two.tif", "--out", out, "--channel", 5)
    assert result.exit_code == 1 and "two.tif" in result.output and "channel" in result.output


def test_count_rescales_to_a_given_diameter(samples_dir, tmp_path):
    out = tmp_path / "out"
    image = samples_dir / "164cell.png"
    plain = run("count", image, "--out", out / "plain", "--no-overlays", "--diameter", 11)
    doubled = run("count", image, "--out", out / "big", "--no-overlays", "--diameter", 22)
    assert plain.exit_code == doubled.exit_code == 0, doubled.output
    small = pd.read_csv(out / "plain" / "counts.csv").iloc[0]
    big = pd.read_csv(out / "big" / "counts.csv").iloc[0]
    assert small["diameter"] == 11 and big["diameter"] == 22
    assert big["scale"] < small["scale"]
    assert tifffile.imread(out / "big" / "density" / "164cell.tif").shape == (256, 256)
    result = run("count", image, "--out", out, "--diameter", -3)
    assert result.exit_code == 2


def test_count_with_intervals_on_the_default_model(samples_dir, tmp_path):
    image = samples_dir / "dsb2018_07fb37aafa66_crop.png"
    result = run("count", image, "--out", tmp_path, "--ci", "--level", 0.9, "--no-overlays")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "counts.csv").iloc[0]
    assert 0 <= row["ci_low"] <= row["count"] <= row["ci_high"] and row["std"] > 0
    assert 40 < row["count"] < 90  # 61 annotated centres in the crop, some cut by its edge
