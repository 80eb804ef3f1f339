"""load_checkpoint: the reading side, and the warnings when the run differs from the writer."""
import logging
import os
from typing import Any, Dict, List, Optional, Set, Union

from .. import _session
from ..devices import iter_tensors
from ..distributed import get_num_processes
from . import _format, _retention
from ._runs import find_checkpoint

__all__ = ["load_checkpoint"]

logger = logging.getLogger("pystematic.torch.checkpoint")

PathLike = Union[str, "os.PathLike[str]"]
# pystematic's own parameters and ours describe where and how a run runs, not the model.
_RUN_SETTINGS = frozenset({
    "output_dir", "debug", "params_file", "random_seed", "subprocess", "local_rank",
    "checkpoint", "cuda", "distributed", "nproc_per_node", "nnodes", "node_rank",
    "master_addr", "master_port", "distributed_timeout",
})  # fmt: skip


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Read a checkpoint file, or the checkpoint a run directory means.

    Returns the state exactly as it was saved, without the metadata
    :func:`save_checkpoint` adds (read that with :func:`checkpoint_info`); files written by
    plain ``torch.save`` load too. Inside a running experiment the file is protected from
    ``keep_last`` for the rest of the run, and a warning is logged when the run differs
    from the one that wrote the checkpoint in its number of processes or in a parameter
    that may set shapes (see :doc:`checkpoints`). The file's bytes are checked against the
    checksums ``torch.save`` wrote into it before anything is loaded.

    Args:
        path: A checkpoint file, or a run directory (see :func:`find_checkpoint`).
        map_location: Where tensors are loaded; CPU by default, since
            ``Context.load_state_dict`` copies them onto the context's own device.

    Raises:
        CheckpointError: nothing to load there, the file is not a checkpoint written by
            ``torch.save``, it needs pickled code to load, or it is damaged (cut short,
            or bytes that differ from their checksums).
    """
    file = find_checkpoint(path)
    state, metadata = _format.split(_format.load_file(file, map_location))
    if _session.current_params() is not None:
        _retention.protect(file)
        for warning in differences(file, metadata, state):
            logger.warning("%s", warning)
    logger.info("Loaded checkpoint %s.", file)
    return state


def differences(file: Any, metadata: Optional[Dict[str, Any]], state: Any) -> List[str]:
    """Warnings about how this run differs from the one that wrote the checkpoint."""
    if metadata is None:
        return []
    warnings = []
    if isinstance(metadata.get("format"), int) and metadata["format"] > _format.FORMAT:
        warnings.append(
            f"Checkpoint {file} was written by pystematic-torch {metadata.get('version')}, "
            "which records more than this version reads; upgrade to use all of it."
        )
    saved_world, world = metadata.get("world_size"), get_num_processes()
    if isinstance(saved_world, int) and saved_world != world:
        warnings.append(
            f"Checkpoint {file} was written by a run of {saved_world} processes and this run "
            f"has {world}: training continues from it, but the global batch size and the "
            "samples each rank sees differ from the run that wrote it."
        )
    changed = _shape_parameters_changed(metadata.get("params"), state)
    if changed:
        listed = "; ".join(f"{name} was {old}, now {new}" for name, old, new in changed)
        warnings.append(
            f"Checkpoint {file} was written with other values of parameters that may set "
            f"tensor shapes (their recorded value is a size of a tensor in it): {listed}. "
            "If loading fails with a shape mismatch, run with the recorded values."
        )
    return warnings


def _shape_parameters_changed(saved: Any, state: Any) -> List[tuple]:
    current = _session.current_params()
    if not isinstance(saved, dict) or current is None:
        return []
    sizes: Optional[Set[int]] = None
    changed = []
    for name, old in saved.items():
        if name in _RUN_SETTINGS or name not in current or type(old) is not int or old < 2:
            continue
        new = current[name]
        if new == old:
            continue
        if sizes is None:
            # Top-level names with a leading "_" are reserved entries (what wrote the file,
            # the generators' states), not items a parameter could have shaped.
            items = {key: value for key, value in state.items() if not str(key).startswith("_")}
            sizes = {size for tensor in iter_tensors(items) for size in tensor.shape}
        if old in sizes:
            changed.append((name, old, new))
    return changed
