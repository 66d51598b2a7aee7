"""Protocols, baselines and the resumable benchmark runner."""

import json

import numpy as np
import pytest
from imageio.v3 import imwrite
from tests.conftest import data_set
from typer.testing import CliRunner

from celltally.baselines import MeanCount, SegmentationCounter, SegmentationSettings
from celltally.benchmark import (
    BenchmarkConfig,
    _uncalibrated_count_metrics,
    load_records,
    markdown_table,
    run_benchmark,
    summarise,
)
from celltally.cli import app
from celltally.data import load_dataset
from celltally.data.datasets import Sample
from celltally.data.splits import protocol_split, split_from_file
from celltally.data.synth import preset, synth_samples, write_set
from celltally.errors import InputError
from celltally.models import create_model
from celltally.predict import evaluate

SEPARATED = {"height": 96, "width": 96, "density": 15.0, "overlap": 0.0, "cluster_prob": 0.0}


def _parts(split) -> list[set[str]]:
    return [set(names) for names in split.names().values()]


def test_lempitsky_split_draws_from_001_100_and_tests_on_101_200():
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    first = protocol_split(samples, "vgg_cells", 32, 32, 2)
    assert first.protocol == "lempitsky"  # the default for VGG cells
    assert first.names() == protocol_split(samples, "vgg_cells", 32, 32, 2).names()
    assert first.names() != protocol_split(samples, "vgg_cells", 32, 32, 3).names()
    train, val, test = _parts(first)
    assert (len(train), len(val)) == (32, 32) and not train & val
    assert max(train | val) <= "100"
    assert test == {f"{i:03d}" for i in range(101, 201)}
    with pytest.raises(InputError, match=r"needs 102 images \(train \+ validation, from the pool"):
        protocol_split(samples, "vgg_cells", 51, 51, 0)


def test_countception_split_is_reproducible_disjoint_with_a_fixed_test_set():
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    first = protocol_split(samples, "vgg_cells", 8, 8, 3, "countception")
    assert first.names() == protocol_split(samples, "vgg_cells", 8, 8, 3, "countception").names()
    assert first.names() != protocol_split(samples, "vgg_cells", 8, 8, 4, "countception").names()
    train, val, test = _parts(first)
    assert (len(train), len(val), len(test)) == (8, 8, 100)
    assert not (train & val) and not (train | val) & test
    assert max(test) > "100" and min(test) <= "100"  # shuffled over all 200, not 101-200
    larger = protocol_split(samples, "vgg_cells", 50, 50, 3, "countception")
    assert _parts(larger)[2] == test  # the test set does not move with N


def test_mbm_quadrants_of_one_source_stay_together():
    samples = load_dataset(data_set("mbm"), "mbm")
    for seed in range(5):
        split = protocol_split(samples, "mbm", 15, 15, seed)
        parts = _parts(split)
        assert sum(len(p) for p in parts) == 44 and not set.intersection(*parts)
        groups = {s.group for s in samples}
        part_of = {s.name: i for i, p in enumerate(parts) for s in samples if s.name in p}
        cut = [g for g in groups if len({part_of[s.name] for s in samples if s.group == g}) > 1]
        assert len(cut) <= 2  # at most where train ends and where validation ends


def test_lempitsky_is_for_vgg_cells_only():
    samples = load_dataset(data_set("mbm"), "mbm")
    with pytest.raises(ValueError, match="lempitsky protocol is defined for vgg_cells"):
        protocol_split(samples, "mbm", 5, 5, 0, "lempitsky")
    with pytest.raises(InputError, match="needs 130 images"):
        protocol_split(samples, "mbm", 15, 15, 0, "countception", test_size=100)


def test_split_files_are_read_and_checked(tmp_path):
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["001", "002"], "val": ["003"], "test": ["150"]}))
    split = split_from_file(samples, path)
    assert split.names() == {"train": ["001", "002"], "val": ["003"], "test": ["150"]}
    assert split.protocol == "file"
    path.write_text(json.dumps({"train": ["001"], "val": ["001"], "test": []}))
    with pytest.raises(InputError, match=r"split\.json.*listed twice"):
        split_from_file(samples, path)
    path.write_text(json.dumps({"train": ["001", "999"]}))
    with pytest.raises(InputError, match="not in the data set: 999"):
        split_from_file(samples, path)


def test_mean_baseline_predicts_the_training_mean():
    samples = synth_samples(preset("nuclei", **SEPARATED), 4, seed=0)
    baseline = MeanCount().fit(samples)
    assert baseline.count(np.zeros((8, 8, 1))) == np.mean([len(s.read_points()) for s in samples])


@pytest.mark.parametrize("inverted", [False, True])
def test_segmentation_baseline_counts_separated_cells(inverted):
    samples = synth_samples(preset("nuclei", **SEPARATED, bit_depth=8), 6, seed=1)
    if inverted:  # dark cells on a bright slide: the fit must find the other polarity
        samples = [_Inverted(s) for s in samples]
    baseline = SegmentationCounter().fit(samples[:3])
    assert baseline.fitted.stain == ("dark" if inverted else "bright")
    metrics = evaluate(baseline, samples[3:], radius=3.0)
    assert metrics["count"]["mae"] <= 1.0
    assert metrics["detection"]["f1"] > 0.95


def test_intensity_declumping_splits_bright_centred_cells_the_shape_cannot():
    yy, xx = np.mgrid[:48, :64]
    centres = np.array([[24.0, 28.0], [24.0, 36.0]])  # 8 px apart, sigma 3: one oval blob
    blobs = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2)) for y, x in centres)
    image = (200 * blobs)[:, :, None]

    def segmenter(declump):
        return SegmentationCounter(SegmentationSettings(min_distance=3, declump=declump))

    assert segmenter("shape").count(image) != 2
    found = segmenter("intensity").points(image)
    assert len(found) == 2
    assert np.abs(found[np.argsort(found[:, 1])] - centres).max() < 1.0


def test_segmentation_fit_ignores_settings_whose_foreground_misses_the_dots(tmp_path):
    """Bright blobs that count exactly right but hold none of the dots are not the cells."""
    yy, xx = np.mgrid[:64, :64]
    blobs = [(16.0, 16.0), (16.0, 48.0), (48.0, 16.0)]
    image = 200 * sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18.0) for y, x in blobs)
    imwrite(tmp_path / "offset.png", image.astype(np.uint8))
    dots = np.array([[48.0, 48.0], [32.0, 32.0], [4.0, 32.0]])  # on the dark slide, 3 of them
    sample = Sample("offset", tmp_path / "offset.png", lambda: dots)

    assert SegmentationCounter(SegmentationSettings(stain="bright")).count(image[:, :, None]) == 3
    assert SegmentationCounter().fit([sample]).fitted.stain == "dark"


class _Inverted:
    def __init__(self, sample):
        self.sample, self.image_path = sample, sample.image_path
        self.name, self.read_points = sample.name, sample.read_points

    def load(self):
        image, points = self.sample.load()
        return 255 - image, points


def test_summary_by_hand():
    def record(method, n, seed, mae, epochs):
        count = {"mae": mae, "rmse": mae, "mre": 0.1}
        return {
            "method": method, "n": n, "seed": seed, "count": count, "detection": None,
            "train_time_s": 1.0, "inference_images_per_s": 10.0, "epochs_run": epochs,
        }  # fmt: skip

    unrecorded = record("c", 8, 0, 1.0, None)
    del unrecorded["epochs_run"]  # records written before the field existed
    records = [record("a", 8, 0, 2.0, 5), record("a", 8, 1, 4.0, 7), record("b", 8, 0, 5.0, None)]
    summary = summarise([*records, unrecorded])
    a = summary[summary["method"] == "a"].iloc[0]
    assert (a["mae"], a["draws"]) == (3.0, 2) and a["mae_std"] == pytest.approx(np.sqrt(2))
    assert np.isnan(a["f1"])
    rows = {line.split(" | ")[0]: line for line in markdown_table(summary, "x", "y").splitlines()}
    assert " | 5-7 | " in rows["| a"]  # a time budget that stopped one draw early shows
    assert " | — | " in rows["| b"] and " | — | " in rows["| c"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    list(write_set(preset("nuclei", **SEPARATED, bit_depth=8), 10, folder, seed=2, workers=1))
    return folder


def test_benchmark_resumes_without_recomputing_finished_draws(small_set, tmp_path):
    config = BenchmarkConfig(
        data=str(small_set), fmt="points", n=(2, 3), draws=2, test_size=4,
        methods=("mean", "segmentation"),
    )  # fmt: skip
    done = []
    summary = run_benchmark(config, tmp_path, on_record=done.append)
    assert len(done) == 2 * 2 * 2 and len(summary) == 4
    records = load_records(tmp_path)
    assert all(len(r["images"]) == 4 and r["protocol"] == "countception" for r in records)
    again = []
    run_benchmark(config, tmp_path, on_record=again.append)
    assert again == []
    (tmp_path / "records" / "segmentation_n3_seed1.json").unlink()
    run_benchmark(config, tmp_path, on_record=again.append)
    assert [(r["method"], r["n"], r["seed"]) for r in again] == [("segmentation", 3, 1)]
    table = (tmp_path / "table.md").read_text()
    assert "N = 2 (ours)" in table and "| segmentation |" in table
    assert (tmp_path / "mae_vs_n.png").stat().st_size > 1000


def test_benchmark_runs_only_the_chosen_draw(small_set, tmp_path):
    config = BenchmarkConfig(data=str(small_set), fmt="points", n=(2,), draws=3, draw=1,
                             test_size=4, methods=("mean",))  # fmt: skip
    done = []
    run_benchmark(config, tmp_path, on_record=done.append)
    assert [r["seed"] for r in done] == [1]
    with pytest.raises(ValueError, match=r"draw 3 is not one of 0 \.\. 2"):
        BenchmarkConfig(data=str(small_set), draws=3, draw=3)


def test_cli_benchmark_trains_a_network_and_reports(small_set, tmp_path):
    tiny = ["patch_size=32", "batch_size=4", "steps_per_epoch=3", "epochs=1", "finetune_epochs=0"]
    args = ["benchmark", "--data", str(small_set), "--format", "points", "--n", "2"]
    args += ["--draws", "1", "--test-size", "4", "--methods", "mean,fcrn_a", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in tiny])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "records" / "fcrn_a_n2_seed0.json").read_text())
    assert record["detection"]["f1"] >= 0 and record["settings"]["epochs"] == 1
    assert record["count_uncalibrated"] is None  # trained without calibrate_counts
    assert [row["epoch"] for row in record["history"]] == [0] and record["epochs_run"] == 1
    assert (tmp_path / "runs" / "fcrn_a_n2_seed0" / "model" / "config.json").exists()
    assert "fcrn_a" in result.output and "table.md" in result.output


def test_cli_benchmark_rejects_bad_requests_in_one_line(small_set, tmp_path):
    base = ["benchmark", "--data", str(small_set), "--format", "points", "--out", str(tmp_path)]
    for extra, message in [
        (["--methods", "fcrn_z"], "unknown method fcrn_z"),
        (["--protocol", "lempitsky"], "defined for vgg_cells"),
        (["--set", "epochz=3"], "expected NAME=VALUE"),
        (["--n", "9"], "needs"),
    ]:
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_segmentation_counts_a_clump_it_cannot_split_by_its_size():
    yy, xx = np.mgrid[:64, :96]
    disks = [(16, 16), (16, 48), (48, 16)]
    cells = sum(((yy - y) ** 2 + (xx - x) ** 2 <= 25) for y, x in disks)
    clump = ((yy - 48) / 5) ** 2 + ((xx - 64) / 10) ** 2 <= 1  # two cells' area, one segment
    image = (200.0 * ((cells + clump) > 0))[:, :, None]
    area = int(((yy - 16) ** 2 + (xx - 16) ** 2 <= 25).sum())

    def counter(cell_area):
        return SegmentationCounter(SegmentationSettings(min_distance=30, cell_area=cell_area))

    assert counter(0).count(image) == 4
    assert counter(area).count(image) == 5
    assert len(counter(area).points(image)) == 4


def test_a_record_keeps_the_count_error_without_the_count_calibration(small_set):
    samples = load_dataset(small_set, "points")[:3]
    model = create_model("fcrn_a")
    plain = evaluate(model, samples, 5.0)["count"]
    model.config.count_gain, model.config.count_offset = 3.0, 0.01
    assert evaluate(model, samples, 5.0)["count"] != plain
    assert _uncalibrated_count_metrics(model, samples) == plain
    assert model.config.count_gain == 3.0  # measured on a copy
