"""Saving, finding and loading checkpoints."""
from ._save import find_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint"]
