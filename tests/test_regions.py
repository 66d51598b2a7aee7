"""Region counts: boxes, polygons and GeoJSON shapes, adding up to the image's count."""

import json

import numpy as np
import pandas as pd
import pytest
from imageio.v3 import imread
from typer.testing import CliRunner

from celltally import load_model
from celltally.cli import app
from celltally.regions import box_region, geojson_regions, polygon_region, region_counts


@pytest.mark.parametrize("diameter", [None, 20.0])  # estimated (about 9.7 px) or given
def test_region_counts_add_up_to_the_image_count_when_the_regions_tile_it(samples_dir, diameter):
    model = load_model("generalist")
    image = imread(samples_dir / "101cell.png")
    found = model.network_pass(image, diameter=diameter)
    prediction = model.read_out(found, ci=0.9)
    assert found.scale != 1.0  # counted on a rescaled image, mapped back
    quarters = [box_region(f"{y},{x},{y + 128},{x + 128}", (256, 256))
                for y in (0, 128) for x in (0, 128)]  # fmt: skip
    rows = region_counts(model, found, prediction.density, quarters, level=0.9)
    assert sum(r["count"] for r in rows) == pytest.approx(prediction.count, rel=1e-4)
    assert [r["area_px"] for r in rows] == [128 * 128] * 4
    assert all(r["ci_low"] <= r["count"] <= r["ci_high"] for r in rows)
    variances = sum(r["std"] ** 2 for r in rows)  # the pixels' variance shares add up
    assert variances == pytest.approx(prediction.interval.std**2, rel=0.05)


def test_a_square_polygon_is_the_box_it_outlines():
    # pixel centres inside the square with corners (9.5, 19.5) and (29.5, 49.5): rows 10-29
    polygon = polygon_region("9.5,19.5;9.5,49.5;29.5,49.5;29.5,19.5", (64, 64))
    assert (polygon.mask == box_region("10,20,30,50", (64, 64)).mask).all()


def test_geojson_polygons_are_x_y_and_holes_are_cut_out(tmp_path):
    square = [[0, 0], [40, 0], [40, 20], [0, 20], [0, 0]]  # x, y: 40 wide, 20 high
    hole = [[10, 5], [20, 5], [20, 15], [10, 15], [10, 5]]
    features = [
        {"type": "Feature", "properties": {"name": "tissue"},
         "geometry": {"type": "Polygon", "coordinates": [square, hole]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
    ]  # fmt: skip
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (region,) = geojson_regions(path, (32, 64))
    assert region.name == "tissue"
    rows, cols = np.nonzero(region.mask)
    assert rows.max() < 21 and cols.max() > 30  # 20 rows high, 40 columns wide
    assert not region.mask[10, 15] and region.mask[2, 15]  # the hole is out


@pytest.mark.parametrize(
    ("maker", "spec", "message"),
    [
        (box_region, "0,0,10", "y0,x0,y1,x1"),
        (box_region, "0,0,100,10", "outside"),
        (polygon_region, "1,1;5,5", "3 vertices"),
        (polygon_region, "1,a;5,5;3,3", "y,x;y,x"),
    ],
)
def test_bad_regions_say_what_is_wrong(maker, spec, message):
    with pytest.raises(ValueError, match=message):
        maker(spec, (32, 32))


def test_explain_view_writes_the_view_and_the_region_counts(samples_dir, tmp_path):
    result = CliRunner().invoke(app, ["explain", "view", str(samples_dir / "101cell.png"),
                                      "--box", "0,0,128,256", "--box", "128,0,256,256",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "101cell_regions.csv")
    assert list(table.columns) == ["region", "area_px", "count"] and len(table) == 2
    assert imread(tmp_path / "101cell_view.png").ndim == 3
    image = str(samples_dir / "101cell.png")
    result = CliRunner().invoke(
        app, ["explain", "view", image, "--box", "0,0,999,5", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "outside the 256x256 image" in result.output
