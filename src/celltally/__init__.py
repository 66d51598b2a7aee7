"""celltally: count and locate cells in microscopy images."""

__version__ = "0.1.0"

from celltally.models import create_model, list_models, load_model, save_model

__all__ = ["__version__", "create_model", "list_models", "load_model", "save_model"]
