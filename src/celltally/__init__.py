"""celltally: count and locate cells in microscopy images."""

from importlib.metadata import version

from celltally.models import create_model, list_models, load_model, save_model

__version__ = version("celltally")  # pyproject.toml's

__all__ = ["__version__", "create_model", "list_models", "load_model", "save_model"]
