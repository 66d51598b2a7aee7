"""TIFF axes (channels vs pages) and the choice of the channel to count."""

import numpy as np
import pytest
import tifffile
from imageio.v3 import imwrite

from celltally.data.images import pick_channel, read_pages, read_stack
from celltally.errors import InputError

H, W = 24, 32


def planes(count: int, dtype=np.uint16) -> np.ndarray:
    """``count`` distinct (H, W) planes: plane i is i * 100 + its pixel index."""
    return (np.arange(count)[:, None, None] * 100 + np.arange(H * W).reshape(H, W)).astype(dtype)


def blobs(rng: np.random.Generator, count: int = 10, sigma: float = 2.5) -> np.ndarray:
    """A dark (H, W) float image of ``count`` bright Gaussian spots peaking near 1."""
    yy, xx = np.mgrid[:H, :W]
    out = np.zeros((H, W), np.float32)
    for y, x in rng.uniform(3, (H - 3, W - 3), (count, 2)):
        out = np.maximum(out, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
    return out


def stack_of(path, data, **options) -> tuple[list[np.ndarray], str, bool]:
    """Write ``data`` to a TIFF (grey unless ``options`` say otherwise) and read it back."""
    tifffile.imwrite(path, data, **({"photometric": "minisblack"} | options))
    stack = read_stack(path)
    return stack.pages, stack.axes, stack.separate_channels


def test_channel_first_tiff_is_one_image_of_channels(tmp_path):
    data = planes(3)
    (page,), axes, separate = stack_of(tmp_path / "cyx.tif", data, metadata={"axes": "CYX"})
    assert axes == "CYX" and separate and page.dtype == np.float32
    np.testing.assert_array_equal(page, data.transpose(1, 2, 0))


def test_ome_tiff_channels(tmp_path):
    data = planes(3)
    (page,), axes, separate = stack_of(tmp_path / "c.ome.tif", data, ome=True)
    assert axes == "CYX" and separate
    np.testing.assert_array_equal(page, data.transpose(1, 2, 0))


def test_rgb_samples_are_colour(tmp_path):
    data = planes(3, np.uint8).transpose(1, 2, 0)
    (page,), axes, separate = stack_of(tmp_path / "rgb.tif", data, photometric="rgb")
    assert axes == "YXS" and not separate
    np.testing.assert_array_equal(page, data)
    planar = np.ascontiguousarray(data.transpose(2, 0, 1))
    options = {"photometric": "rgb", "planarconfig": "separate"}
    (page,), axes, separate = stack_of(tmp_path / "planar.tif", planar, **options)
    assert axes == "SYX" and not separate
    np.testing.assert_array_equal(page, data)


@pytest.mark.parametrize("axes", ["ZYX", "TYX"])
def test_depth_and_time_are_pages(tmp_path, axes):
    data = planes(4)
    pages, read_axes, _ = stack_of(tmp_path / "pages.tif", data, metadata={"axes": axes})
    assert read_axes == axes and len(pages) == 4
    for page, plane in zip(pages, data, strict=True):
        np.testing.assert_array_equal(page[:, :, 0], plane)


def test_two_channel_tiffs_are_not_hundreds_of_pages(tmp_path):
    data = planes(2).transpose(1, 2, 0)  # (H, W, 2), as numpy users hold it
    (page,), axes, separate = stack_of(tmp_path / "yxc.tif", data)
    assert page.shape == (H, W, 2) and axes == "YXC" and separate
    extra = {"photometric": "minisblack", "planarconfig": "contig"}  # grey + an extra sample
    (page,), axes, separate = stack_of(tmp_path / "extra.tif", data, **extra)
    assert page.shape == (H, W, 2) and axes == "YXC" and separate
    data = planes(2)
    (page,), _, separate = stack_of(tmp_path / "cyx.tif", data, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(page, data.transpose(1, 2, 0))


@pytest.mark.parametrize("imagej", [False, True])
def test_time_and_channels_give_pages_of_channels(tmp_path, imagej):
    data = planes(4 * 2).reshape(4, 2, H, W)
    options = {"imagej": True} if imagej else {}
    pages, axes, separate = stack_of(
        tmp_path / "tcyx.tif", data, metadata={"axes": "TCYX"}, **options
    )
    assert axes == "TCYX" and separate and len(pages) == 4
    for page, channels in zip(pages, data, strict=True):
        np.testing.assert_array_equal(page, channels.transpose(1, 2, 0))


def test_unlabelled_leading_axis_stays_pages(tmp_path):
    data = planes(2)
    pages, axes, separate = stack_of(tmp_path / "q.tif", data, photometric="minisblack")
    assert axes == "QYX" and not separate and [p.shape for p in pages] == [(H, W, 1)] * 2
    tifffile.imwrite(tmp_path / "qq.tif", planes(6).reshape(2, 3, H, W), photometric="minisblack")
    with pytest.raises(InputError, match=r"qq.tif: unsupported image shape \(2, 3, 24, 32\)"):
        read_pages(tmp_path / "qq.tif")


def test_pick_a_channel_by_number(tmp_path):
    image = planes(3).transpose(1, 2, 0).astype(np.float32)
    picked, note = pick_channel(image, 1)
    assert note is None and picked.shape == (H, W, 1)
    np.testing.assert_array_equal(picked[:, :, 0], image[:, :, 1])
    with pytest.raises(InputError, match=r"x.tif: has no channel 3: it has 3 channel\(s\)"):
        pick_channel(image, 3, source="x.tif")
    with pytest.raises(InputError, match=r"it has 3 channel\(s\)"):
        pick_channel(image, -1)


def test_grey_stays_and_alpha_goes(rng):
    grey = blobs(rng)[:, :, None] * 255
    assert pick_channel(grey, None) == (grey, None)
    alpha = np.full((H, W, 1), 255, np.float32)
    picked, note = pick_channel(np.concatenate([grey, alpha], axis=2), None)
    assert note is None and np.array_equal(picked, grey)
    rgba = np.concatenate([grey, grey, grey, alpha], axis=2)
    picked, note = pick_channel(rgba, None)
    assert note is None and np.allclose(picked, grey)


def test_equal_channels_become_grey(rng):
    grey = blobs(rng) * 200
    noise = rng.normal(0, 1.0, (H, W, 3))  # JPEG-like colour noise on a grey picture
    picked, note = pick_channel((grey[:, :, None] + noise).astype(np.float32), None)
    assert note is None and picked.shape == (H, W, 1)
    assert np.abs(picked[:, :, 0] - grey).max() < 5


def test_bright_background_keeps_its_colours(rng):
    nuclei, stroma = blobs(rng), blobs(rng, count=4, sigma=5)
    image = np.stack([240 - 120 * nuclei, 235 - 160 * nuclei - 60 * stroma, 245 - 60 * nuclei], 2)
    picked, note = pick_channel(image.astype(np.float32), None)
    assert note is None and picked.shape == (H, W, 3)


def test_dark_composite_counts_the_blue_nuclei_with_a_note(rng):
    image = (np.stack([blobs(rng), blobs(rng), blobs(rng)], 2) * 255).astype(np.float32)
    picked, note = pick_channel(image, None)
    np.testing.assert_array_equal(picked[:, :, 0], image[:, :, 2])
    assert "channel 2 (blue)" in note and "--channel" in note
    picked, note = pick_channel(image, None, separate_channels=True)
    np.testing.assert_array_equal(picked[:, :, 0], image[:, :, 0])
    assert "3-channel image: counted channel 0" in note
    image[:, :, 2] = 3  # no nuclear stain shown: the first channel that holds something
    picked, note = pick_channel(image, None)
    assert "channel 0 (red)" in note and np.array_equal(picked[:, :, 0], image[:, :, 0])


def test_one_filled_channel_is_counted_without_a_note(rng):
    image = rng.integers(0, 8, (H, W, 3)).astype(np.float32)  # VGG cells: noise in red, green
    image[:, :, 2] += blobs(rng) * 240
    picked, note = pick_channel(image, None)
    assert note is None and np.array_equal(picked[:, :, 0], image[:, :, 2])


def test_16_bit_and_float_files(tmp_path, rng):
    dark = np.stack([blobs(rng), blobs(rng)])  # two stains, channel first
    deep = (dark * 4000 + 100).astype(np.uint16)
    (page,), _, separate = stack_of(tmp_path / "deep.tif", deep, metadata={"axes": "CYX"})
    picked, note = pick_channel(page, None, separate_channels=separate)
    assert picked.shape == (H, W, 1) and picked.max() > 3000 and "channel 0" in note
    bright = np.stack([1 - 0.5 * dark[0], 1 - 0.7 * dark[1], 1 - 0.2 * dark[0]], 2)
    he = (bright * 60000).astype(np.uint16)
    (page,), _, separate = stack_of(tmp_path / "he.tif", he, photometric="rgb")
    assert pick_channel(page, None, separate_channels=separate)[0].shape == (H, W, 3)
    composite = np.stack([*dark, blobs(rng)], 2).astype(np.float32) * 0.01  # float, tiny range
    picked, note = pick_channel(composite, None)
    assert "channel 2 (blue)" in note and np.array_equal(picked[:, :, 0], composite[:, :, 2])


def test_other_formats_are_colour_samples(tmp_path, rng):
    imwrite(tmp_path / "grey_alpha.png", np.zeros((H, W, 2), np.uint8))
    stack = read_stack(tmp_path / "grey_alpha.png")
    assert stack.axes == "YXS" and not stack.separate_channels
    assert stack.pages[0].shape == (H, W, 2)
