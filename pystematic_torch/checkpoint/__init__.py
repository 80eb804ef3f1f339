"""Saving, finding and loading checkpoints.

A checkpoint is a plain ``torch.save`` file of a dict that loads with
``torch.load(weights_only=True)``: it never needs pickled code, so it is safe to open and
keeps loading after the code that wrote it has changed. See :doc:`checkpoints`.

The modules, each one concern:

* ``_format``: what a file holds (the state plus metadata under one reserved key) and
  reading it with clear errors;
* ``_weights_only``: the exact types weights-only loading reads back, checked at save;
* ``_atomic``: temporary file, fsync, rename;
* ``_snapshot`` and ``_background``: ``blocking=False`` saves;
* ``_retention``: ``keep_last``;
* ``_integrity``: checking a file's bytes against the checksums torch.save wrote;
* ``_runs``: which checkpoint a run directory means, and an experiment's newest run;
* ``_save`` and ``_load``: the public functions.

Only rank 0 writes today, because under DDP it holds the whole state. Sharded states
(FSDP2, through ``torch.distributed.checkpoint``) will be a directory per checkpoint
written by every rank, found and ordered by the same metadata.
"""
from ._format import CheckpointInfo, ContextState
from ._load import load_checkpoint
from ._runs import checkpoint_info, find_checkpoint, find_latest_run, list_checkpoints
from ._save import save_checkpoint, wait_for_checkpoints

__all__ = [
    "save_checkpoint",
    "wait_for_checkpoints",
    "load_checkpoint",
    "find_checkpoint",
    "find_latest_run",
    "list_checkpoints",
    "checkpoint_info",
    "CheckpointInfo",
    "ContextState",
]
