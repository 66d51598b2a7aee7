"""Readers, data sets, splits and training patches."""

from celltally.data.datasets import FORMATS, Sample, default_data_root, load_dataset
from celltally.data.images import as_image, find_images, read_image, read_pages, to_channels
from celltally.data.points import read_dot_image, read_points_csv, write_points_csv
from celltally.data.splits import Split, protocol_split

__all__ = [
    "FORMATS",
    "Sample",
    "Split",
    "as_image",
    "default_data_root",
    "find_images",
    "load_dataset",
    "protocol_split",
    "read_dot_image",
    "read_image",
    "read_pages",
    "read_points_csv",
    "to_channels",
    "write_points_csv",
]
