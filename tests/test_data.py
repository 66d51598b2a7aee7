import numpy as np
import pandas as pd
import pytest
import tifffile
from imageio.v3 import imwrite
from tests.conftest import data_set

from celltally.data import load_dataset, protocol_split, read_pages, read_points_csv, to_channels
from celltally.data.points import check_points_inside
from celltally.errors import InputError


def published_counts(root) -> dict[str, int]:
    table = pd.read_csv(root / "counts.csv")
    return dict(zip(table["image"], table["count"], strict=True))


def test_vgg_cells_reader_matches_published_counts():
    root = data_set("vgg_cells")
    samples = load_dataset(root, "vgg_cells")
    counts = published_counts(root)
    assert [s.name for s in samples[:3]] == ["001", "002", "003"] and len(samples) == 200
    for sample in samples[::20]:
        image, points = sample.load()
        assert image.shape == (256, 256, 3)
        assert len(points) == counts[sample.image_path.name]


def test_mbm_reader_matches_published_counts_and_groups_quadrants():
    root = data_set("mbm")
    samples = load_dataset(root, "mbm")
    counts = published_counts(root)
    assert len(samples) == 44 and len({s.group for s in samples}) == 11
    for sample in samples[::7]:
        image, points = sample.load()
        assert image.shape[:2] == (600, 600)
        assert len(points) == counts[sample.image_path.name]


def test_adipocyte_reader_counts_jpeg_blobs():
    root = data_set("adipocyte")
    samples = load_dataset(root, "adipocyte")
    counts = published_counts(root)
    assert len(samples) == 200
    for sample in samples[::25]:
        _, points = sample.load()
        assert len(points) == counts[f"images/{sample.image_path.name}"]


def test_points_folder_with_every_csv_flavour(tmp_path):
    image = np.zeros((30, 40), dtype=np.uint8)
    for stem in ("a", "b", "c"):
        imwrite(tmp_path / f"{stem}.png", image)
    pd.DataFrame({"y": [1.0, 2.0], "x": [30.0, 3.0]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({" ": [1, 2], "X": [30.0, 3.0], "Y": [1.0, 2.0]}).to_csv(
        tmp_path / "b.csv", index=False
    )
    napari = pd.DataFrame({"index": [0, 1], "axis-0": [1.0, 2.0], "axis-1": [30.0, 3.0]})
    napari.to_csv(tmp_path / "c.csv", index=False)
    samples = load_dataset(tmp_path, "points")
    assert [s.name for s in samples] == ["a", "b", "c"]
    for sample in samples:
        np.testing.assert_array_equal(sample.load()[1], [[1.0, 30.0], [2.0, 3.0]])


def test_points_folder_groups_stay_on_one_side_of_a_split(tmp_path):
    for index in range(12):
        imwrite(tmp_path / f"im{index:02d}.png", np.zeros((8, 8), dtype=np.uint8))
        (tmp_path / f"im{index:02d}.csv").write_text("y,x\n1,1\n")
    groups = {f"im{i:02d}.png": f"slide{i // 3}" for i in range(12)}
    pd.DataFrame({"image": list(groups), "group": list(groups.values())}).to_csv(
        tmp_path / "groups.csv", index=False
    )
    samples = load_dataset(tmp_path, "points")
    assert [s.group for s in samples] == list(groups.values())
    for seed in range(4):
        split = protocol_split(samples, "points", 3, 3, seed, "countception")
        sides = [{s.group for s in part} for part in (split.train, split.val, split.test)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    (tmp_path / "groups.csv").write_text("name,slide\nim00.png,a\n")
    with pytest.raises(InputError, match=r"groups.csv: needs columns image,group"):
        load_dataset(tmp_path, "points")


def test_csv_without_point_columns_names_the_file(tmp_path):
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"p.csv: no point columns"):
        read_points_csv(tmp_path / "p.csv")


def test_point_outside_the_image_is_refused(tmp_path):
    imwrite(tmp_path / "img.png", np.zeros((20, 10), dtype=np.uint8))
    pd.DataFrame({"y": [5.0], "x": [12.0]}).to_csv(tmp_path / "img.csv", index=False)
    (sample,) = load_dataset(tmp_path, "points")
    with pytest.raises(InputError, match=r"img.png: 1 point\(s\) outside the 20x10 image"):
        sample.load()
    check_points_inside(np.array([[-0.5, 9.49]]), (20, 10), "ok")  # pixel edges are inside


def test_tiff_pages_16_bit_and_rgb(tmp_path):
    stack = np.arange(3 * 20 * 24, dtype=np.uint16).reshape(3, 20, 24) * 20
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    pages = read_pages(tmp_path / "stack.tif")
    assert len(pages) == 3 and pages[0].shape == (20, 24, 1) and pages[0].dtype == np.float32
    assert pages[2].max() == stack[2].max()
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 24, 3), dtype=np.uint8), photometric="rgb")
    (rgb,) = read_pages(tmp_path / "rgb.tif")
    assert rgb.shape == (20, 24, 3)
    assert to_channels(rgb, 1).shape == (20, 24, 1) and to_channels(pages[0], 3).shape == (
        20,
        24,
        3,
    )


def test_split_is_reproducible_and_disjoint():
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    first = protocol_split(samples, "vgg_cells", 8, 8, seed=3)
    again = protocol_split(samples, "vgg_cells", 8, 8, seed=3)
    other = protocol_split(samples, "vgg_cells", 8, 8, seed=4)
    assert first.names() == again.names() != other.names()
    train, val, test = (set(names) for names in first.names().values())
    assert len(train) == len(val) == 8 and not (train & val) and not (train | val) & test
    assert max(train | val) <= "100" and sorted(test) == [f"{i:03d}" for i in range(101, 201)]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    from pathlib import Path

    from celltally.io import atomic_write

    atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
