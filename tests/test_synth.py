"""The SIMCEP-style generator: exact ground truth, determinism, parameters that do what they say."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from celltally.data.synth import (
    PRESETS,
    SynthConfig,
    generate,
    preset,
    synth_samples,
    synth_settings,
    write_set,
)

EXPECTED = {  # preset: (image shape, dtype, count range)
    "vgg_cells": ((256, 256, 3), np.uint8, (50, 350)),
    "bbbc005": ((520, 696, 3), np.uint8, (1, 100)),
    "nuclei": ((512, 512, 1), np.uint16, (0, 100_000)),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dots_counts_and_instances_agree(name):
    config = preset(name)
    for index in range(3):
        synth = generate(config, seed=7, index=index)
        ids = np.unique(synth.labels)
        assert synth.count == len(synth.points) == len(ids[ids > 0]) == synth.labels.max()
        rows, cols = np.round(synth.points).astype(int).T
        assert (synth.labels[rows, cols] == np.arange(1, synth.count + 1)).all()
        assert (synth.mask == (synth.labels > 0)).all()


def test_nearly_coincident_cells_keep_their_own_dot_and_label():
    config = preset(
        "vgg_cells", overlap=0.99, cluster_prob=0.8, count_range=(300, 300), count_mean=None
    )
    synth = generate(config, 0, 0)
    distance = np.hypot(*(synth.points[:, None] - synth.points[None]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    assert 1.4 < distance.min() < 2.5  # as close as allowed, no closer
    assert len(np.unique(synth.labels)) == 301


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_dtypes_and_ranges(name):
    shape, dtype, (low, high) = EXPECTED[name]
    for index in range(3):
        synth = generate(preset(name), seed=3, index=index)
        assert synth.image.shape == shape and synth.image.dtype == dtype
        assert synth.labels.shape == shape[:2]
        assert low <= synth.count <= high
        assert synth.image.max() > 0.5 * np.iinfo(dtype).max  # uses the range...
        assert np.percentile(synth.image, 1) < 0.2 * np.iinfo(dtype).max  # ...and has background


def test_vgg_preset_is_blue_like_vgg_cells():
    image = generate(preset("vgg_cells"), seed=0, index=0).image
    assert image[:, :, :2].max() <= 12  # the real set: R, G <= 9
    assert image[:, :, 2].mean() > 10 * image[:, :, :2].mean()


def test_bbbc005_has_body_and_nuclei_stains():
    synth = generate(preset("bbbc005"), seed=0, index=0)
    body, nuclei = synth.image[:, :, 1].astype(float), synth.image[:, :, 2].astype(float)
    assert (body[synth.mask] > 0).mean() > 0.9
    # nuclei are smaller than bodies: a smaller bright area, but inside the cells
    assert (nuclei > nuclei.max() / 2).sum() < (body > body.max() / 2).sum()
    assert nuclei[synth.mask].mean() > 2 * nuclei[~synth.mask].mean()


def test_same_seed_same_image_other_seed_other_image():
    config = preset("vgg_cells")
    first, again = generate(config, 5, 2), generate(config, 5, 2)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.points, again.points)
    assert np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.image, generate(config, 6, 2).image)


def test_written_sets_are_byte_identical_whatever_the_workers(tmp_path):
    config = preset("vgg_cells")
    list(write_set(config, 4, tmp_path / "a", seed=1, workers=1))
    list(write_set(config, 4, tmp_path / "b", seed=1, workers=2))
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 4 * 4 + 2
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _sharpness(image: np.ndarray) -> float:
    """Mean absolute Laplacian of the image (channels summed): high for sharp edges."""
    return float(np.abs(ndimage.laplace(image.sum(axis=2, dtype=float))).mean())


def test_more_blur_gives_smoother_images():
    quiet = {"photons": None, "read_noise": 0.0, "cell_blur": 0.0}
    sharp = generate(preset("nuclei", blur=(0.5, 0.5), **quiet), 0, 0).image
    soft = generate(preset("nuclei", blur=(3.0, 3.0), **quiet), 0, 0).image
    assert _sharpness(soft) < 0.5 * _sharpness(sharp)
    in_focus = generate(preset("bbbc005", focus=(1, 1), **quiet), 0, 0).image
    defocused = generate(preset("bbbc005", focus=(48, 48), **quiet), 0, 0).image
    assert _sharpness(defocused) < 0.3 * _sharpness(in_focus)


def test_dome_sets_how_much_brighter_cell_centres_are():
    plain = dict(photons=None, read_noise=0.0, blur=(0.0, 0.0), cell_blur=0.0, texture=0.0)
    plain |= dict(background=0.0, illumination=0.0, intensity_std=0.0, overlap=0.0)

    def centre_over_mean(dome: float) -> float:
        synth = generate(preset("nuclei", dome=dome, **plain), 0, 0)
        image = synth.image[:, :, 0].astype(float)
        rows, cols = np.round(synth.points).astype(int).T
        return float(image[rows, cols].mean() / image[synth.mask].mean())

    assert centre_over_mean(0.0) == pytest.approx(1.0, abs=0.01)  # flat discs
    assert centre_over_mean(1.0) > 1.3  # a sphere's thickness: the mean is 2/3 of the centre


def test_jitter_varies_the_look_from_image_to_image_but_not_the_cell_size():
    def spread(jitter: float) -> tuple[float, float, list[int]]:
        images = [generate(preset("vgg_cells", jitter=jitter), 0, i) for i in range(8)]
        backgrounds = [np.median(g.image[:, :, 2][~g.mask]) for g in images]
        area = np.mean([g.mask.sum() / g.count for g in images])
        return float(np.std(backgrounds) / np.mean(backgrounds)), area, [g.count for g in images]

    steady, area, counts = spread(0.0)
    varied, varied_area, varied_counts = spread(0.5)
    assert varied > 2 * steady
    assert varied_area == pytest.approx(area, rel=0.1)
    assert len(varied_counts) == len(counts) and min(varied_counts) >= 50  # counts still valid


def test_background_texture_adds_fine_blotches_to_the_background():
    def fine_background(amount: float) -> float:
        config = preset("vgg_cells", background_texture=amount, photons=None, read_noise=0.0)
        synth = generate(config, 0, 0)
        blue = synth.image[:, :, 2].astype(float)
        fine = blue - ndimage.gaussian_filter(blue, 3)
        return float(fine[ndimage.distance_transform_edt(~synth.mask) > 10].std())

    assert fine_background(0.2) > 2 * fine_background(0.0)


def _nearest_neighbour_distance(points: np.ndarray) -> float:
    distance = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return float(distance.min(axis=1).mean())


def test_clustering_brings_cells_together():
    spread, clumped = [], []
    for index in range(4):
        spread.append(generate(preset("bbbc005", cluster_prob=0.0), 0, index).points)
        clumped.append(generate(preset("bbbc005", cluster_prob=1.0), 0, index).points)
    assert [len(p) for p in spread] == [len(p) for p in clumped]  # same counts, other layout
    ratio = np.mean([_nearest_neighbour_distance(p) for p in clumped]) / np.mean(
        [_nearest_neighbour_distance(p) for p in spread]
    )
    assert ratio < 0.5


def test_settings_are_validated():
    with pytest.raises(ValueError, match="radius must be at least 1"):
        preset("vgg_cells", radius=0.5)
    with pytest.raises(ValueError, match="count_range must be a list of 2"):
        SynthConfig.from_dict({"count_range": [5]})
    with pytest.raises(ValueError, match="unknown settings"):
        SynthConfig.from_dict({"radious": 4})
    with pytest.raises(ValueError, match="cannot place"):
        crowded = {"count_range": (2000, 2000), "count_mean": None, "overlap": 0.0}
        generate(preset("vgg_cells", **crowded), 0, 0)


def test_synth_samples_load_like_files():
    config = preset("vgg_cells")
    sample = synth_samples(config, 3, seed=2)[1]
    image, points = sample.load()
    synth = generate(config, 2, 1)
    assert image.dtype == np.float32 and np.array_equal(image, synth.image.astype(np.float32))
    assert np.array_equal(points, synth.points) and np.array_equal(sample.read_points(), points)


def test_nuclei_density_sets_the_count():
    for density in (1.0, 5.0):
        counts = [generate(preset("nuclei", density=density), 0, i).count for i in range(3)]
        expected = density * 512 * 512 / 1e4  # Poisson: within 4 standard deviations
        assert all(abs(c - expected) < 4 * np.sqrt(expected) for c in counts), counts


# Small images keep the generalist's tests fast; everything else is the preset's own.
SMALL = {"size_range": (64, 128)}


@pytest.fixture(scope="module")
def generalist_images():
    return [generate(preset("generalist", **SMALL), 11, i) for i in range(60)]


def test_generalist_spans_modalities_sizes_and_densities(generalist_images):
    drawn = pd.DataFrame([g.drawn | {"count": g.count} for g in generalist_images])
    assert set(drawn["modality"]) == {"fluorescence", "brightfield", "histology"}
    assert set(drawn["objects"]) == {"cells", "nuclei"}
    assert drawn["diameter_px"].min() < 6 and drawn["diameter_px"].max() > 40
    assert (drawn["count"] == 0).sum() >= 2  # some empty images...
    assert drawn["coverage"].max() > 0.6  # ...and some confluent ones
    assert set(drawn["bit_depth"]) == {8, 16} and set(drawn["channels"]) == {1, 3}
    assert drawn["snr"].min() < 4 and drawn["snr"].max() > 30
    assert drawn["artefacts"].any() and not drawn["artefacts"].all()
    assert drawn["height"].between(64, 128).all() and drawn["height"].nunique() > 10


def test_generalist_ground_truth_is_exact(generalist_images):
    for synth in generalist_images:
        d = synth.drawn
        dtype = np.uint8 if d["bit_depth"] == 8 else np.uint16
        assert synth.image.shape == (d["height"], d["width"], d["channels"])
        assert synth.image.dtype == dtype and synth.labels.shape == synth.image.shape[:2]
        ids = np.unique(synth.labels)
        assert synth.count == len(ids[ids > 0]) == synth.labels.max()
        rows, cols = np.round(synth.points).astype(int).T
        assert (synth.labels[rows, cols] == np.arange(1, synth.count + 1)).all()
        assert d["coverage"] == pytest.approx(synth.mask.mean(), abs=1e-4)


def test_generalist_modalities_look_their_part(generalist_images):
    """Histology is 8-bit RGB on near white; fluorescent nuclei are brighter than their
    surroundings, brightfield and histology nuclei darker."""
    for synth in generalist_images:
        modality = synth.drawn["modality"]
        image = synth.image.astype(float) / np.iinfo(synth.image.dtype).max
        if modality == "histology":
            assert synth.image.shape[2] == 3 and synth.image.dtype == np.uint8
            assert np.percentile(image.min(axis=2), 99) > 0.7  # white glass or pale stroma
        if synth.count and synth.drawn["objects"] == "nuclei":
            inside, outside = image.mean(axis=2)[synth.mask], image.mean(axis=2)[~synth.mask]
            brighter = inside.mean() > outside.mean()
            assert brighter == (modality == "fluorescence"), synth.drawn


def test_histology_is_purple_nuclei_on_pink():
    images = [generate(preset("generalist", **SMALL, modalities=(0, 0, 1)), 1, i) for i in range(8)]
    nuclei = np.concatenate([g.image[g.mask].astype(float) for g in images if g.count])
    assert np.median(nuclei[:, 2] - nuclei[:, 1]) > 20  # haematoxylin: blue over green
    tissue = np.concatenate([g.image[~g.mask].astype(float) for g in images])
    pink = tissue[tissue.min(axis=1) < 200]  # stained, not bare glass
    assert np.median(pink[:, 0] - pink[:, 1]) > 20  # eosin: red over green


def test_generalist_sets_are_reproducible_whatever_the_workers(tmp_path):
    config = preset("generalist", **SMALL)
    list(write_set(config, 6, tmp_path / "a", seed=4, workers=1))
    list(write_set(config, 6, tmp_path / "b", seed=4, workers=2))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    for name in (f for f in files if (tmp_path / "a" / f).is_file()):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert {"modality", "diameter_px", "bit_depth", "count", "coverage"} <= set(manifest.columns)
    for row in manifest.itertuples():
        assert row.image.endswith(".png" if row.bit_depth == 8 else ".tif")
        assert (tmp_path / "a" / row.image).is_file()
    assert synth_settings(str(tmp_path / "a")) == (str(tmp_path / "a" / "synth.json"), config)


def test_randomise_is_off_by_default_and_its_settings_are_validated():
    assert not any(preset(name).randomise for name in ("vgg_cells", "bbbc005", "nuclei"))
    config = preset("generalist")
    assert SynthConfig.from_dict(dataclasses.asdict(config)) == config  # as synth.json holds it
    with pytest.raises(ValueError, match="diameter_range"):
        preset("generalist", diameter_range=(1.0, 10.0))
    with pytest.raises(ValueError, match="modalities"):
        preset("generalist", modalities=(0.0, 0.0, 0.0))
