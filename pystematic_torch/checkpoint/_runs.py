"""Which checkpoint a run directory means, and which run is an experiment's newest.

Nothing here looks at file times: copying a run directory (``cp -r`` gives every file a new
time) must not change the answer. A run directory means the Context checkpoint with the
highest sequence number, a number each save writes into the file; a folder of runs is
ordered by the start time pystematic writes into each run's name.
"""
import logging
import os
import pathlib
import re
from typing import Dict, List, Optional, Tuple, Union

from ..errors import CheckpointError
from . import _atomic, _format, _integrity
from ._format import CONTEXT, CheckpointInfo

logger = logging.getLogger("pystematic.torch.checkpoint")

PathLike = Union[str, "os.PathLike[str]"]
# pystematic names each run directory <start time>_<6 random characters>.
_RUN_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[0-9a-z]{6}$")
# The last sequence number used per directory by this process (one writer per directory).
_last_sequence: Dict[pathlib.Path, int] = {}


def checkpoint_info(path: PathLike) -> CheckpointInfo:
    """Read what a checkpoint says about itself, without reading its tensors.

    Only the file's pickle is checked against its checksum; for a run directory, choosing
    its checkpoint (:func:`find_checkpoint`) reads and checks the chosen file once.

    Args:
        path: A checkpoint file, or a run directory (its checkpoint as
            :func:`find_checkpoint` chooses it).

    Returns:
        The file's :class:`CheckpointInfo`; for a file written without pystematic-torch
        metadata, one whose recorded fields are None.

    Raises:
        CheckpointError: as :func:`find_checkpoint`, or the file is not a checkpoint.
    """
    file = find_checkpoint(path)
    return _read_info(file)


def list_checkpoints(directory: PathLike) -> List[CheckpointInfo]:
    """Every ``checkpoint-*.pt`` in a run directory, oldest first by sequence number.

    Files written without metadata come first, in the order of their names; files that
    cannot be read as checkpoints are left out with a logged warning.

    Raises:
        CheckpointError: ``directory`` is not a directory.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a directory; give a run directory.")
    infos, unreadable = scan(directory)
    _warn_skipped(directory, unreadable)
    return infos


def find_checkpoint(path: PathLike) -> pathlib.Path:
    """Return the checkpoint file ``path`` means: the file itself, or a run directory's.

    A run directory means the last checkpoint of a Context's whole state the run saved
    (``save_checkpoint(ctx.state_dict(), ...)``), by the sequence number in each file; file
    times play no part, and other saves (a model's weights for deployment) never count. Its
    bytes are checked against the checksums written when it was saved: a damaged one is
    skipped with a warning for the one saved before it.

    Raises:
        CheckpointError: the path does not exist, or the directory holds no undamaged
            Context checkpoint; when it holds runs instead, the error names them, newest
            first.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist; give a checkpoint file or a run directory."
        )
    if not path.is_dir():
        return path
    infos, unreadable = scan(path)
    _warn_skipped(path, unreadable)
    contexts = _contexts(infos)
    if contexts:
        return _newest_undamaged(path, contexts)
    raise _nothing_to_resume(path, infos, unreadable)


def find_latest_run(output_root: PathLike, experiment_name: str) -> Optional[pathlib.Path]:
    """The newest run of an experiment that holds a Context checkpoint, or None.

    Runs are the directories ``<output_root>/<experiment_name>/<start time>_<suffix>`` that
    pystematic creates; the newest is the one that started last, by the time in its name.
    Runs without a Context checkpoint (one that died before its first save) are passed over.

    Args:
        output_root: The experiments' ``--output-dir``.
        experiment_name: The experiment's name, as in its output folder.
    """
    for run in runs_newest_first(pathlib.Path(output_root) / experiment_name):
        infos, _ = scan(run)
        if _last_context(infos) is not None:
            return run
    return None


def runs_newest_first(folder: pathlib.Path) -> List[pathlib.Path]:
    if not folder.is_dir():
        return []
    runs = [child for child in folder.iterdir() if child.is_dir() and _RUN_NAME.match(child.name)]
    return sorted(runs, key=lambda run: run.name, reverse=True)


def next_sequence(directory: pathlib.Path) -> int:
    """The sequence number for the next checkpoint saved into ``directory``.

    The first save into a directory reads the numbers already there (a resumed run
    continues its own count) and removes temporary files of killed writes.
    """
    key = directory.resolve()
    if key not in _last_sequence:
        _atomic.remove_abandoned_temporaries(directory)
        infos, _ = scan(directory)
        _last_sequence[key] = max((info.sequence or 0 for info in infos), default=0)
    _last_sequence[key] += 1
    return _last_sequence[key]


def _read_info(file: pathlib.Path) -> CheckpointInfo:
    loaded = _format.load_file(file, mmap=True)
    return _format.info(file, _format.split(loaded)[1])


def scan(
    directory: pathlib.Path,
) -> Tuple[List[CheckpointInfo], List[Tuple[pathlib.Path, CheckpointError]]]:
    infos, unreadable = [], []
    for file in sorted(directory.iterdir()):
        if _format.id_of(file) is None or not file.is_file():
            continue
        try:
            infos.append(_read_info(file))
        except CheckpointError as error:
            unreadable.append((file, error))
    infos.sort(key=lambda info: (info.sequence or 0, _numeric(info.id), info.id))
    return infos, unreadable


def _warn_skipped(directory: pathlib.Path, unreadable) -> None:
    for file, error in unreadable:
        if isinstance(error, _integrity.DamagedCheckpoint):
            logger.warning("Skipped %s in %s, which is damaged: %s.", file.name, directory,
                           error.damage)  # fmt: skip
        else:
            logger.warning("Skipped %s in %s, which is not a readable checkpoint: %s",
                           file.name, directory, error)  # fmt: skip


def _newest_undamaged(directory: pathlib.Path, contexts: List[CheckpointInfo]) -> pathlib.Path:
    damaged = []
    for info in reversed(contexts):
        found = _integrity.damage(info.path)
        if found is None:
            for name, what in damaged:
                logger.warning("Skipped %s in %s, which is damaged: %s; using %s, saved before "
                               "it.", name, directory, what, info.path.name)  # fmt: skip
            return info.path
        damaged.append((info.path.name, found))
    names = ", ".join(name for name, _ in damaged)
    raise CheckpointError(
        f"Run directory {str(directory)!r} holds no undamaged checkpoint of a Context's whole "
        f"state: the bytes of each ({names}) differ from the checksums written when it was "
        f"saved ({damaged[0][0]}: {damaged[0][1]}). Restore one from a copy, or start a new run."
    )


def _contexts(infos: List[CheckpointInfo]) -> List[CheckpointInfo]:
    return [info for info in infos if info.kind == CONTEXT and info.sequence is not None]


def _last_context(infos: List[CheckpointInfo]) -> Optional[CheckpointInfo]:
    contexts = _contexts(infos)
    return contexts[-1] if contexts else None


def _numeric(checkpoint_id: str) -> int:
    return int(checkpoint_id) if checkpoint_id.isdigit() else -1


def _nothing_to_resume(path, infos, unreadable) -> CheckpointError:
    if infos:
        without = [info.path.name for info in infos if info.sequence is None]
        other = [info.path.name for info in infos if info.sequence is not None]
        details = []
        if other:
            details.append(f"other states than a Context's: {', '.join(other)}")
        if without:
            details.append(
                "written without pystematic-torch metadata (by torch.save or an older "
                f"version): {', '.join(without)}"
            )
        return CheckpointError(
            f"Run directory {str(path)!r} holds no checkpoint of a Context's whole state to "
            f"resume from: {'; '.join(details)}. Name the file to load instead of the "
            "directory, or save ctx.state_dict() to make a run resumable."
        )
    if unreadable:
        names = ", ".join(file.name for file, _ in unreadable)
        return CheckpointError(
            f"Run directory {str(path)!r} holds no readable checkpoint: {names} could not "
            f"be read ({unreadable[0][1]})."
        )
    runs = runs_newest_first(path)
    if runs:
        shown = ", ".join(run.name for run in runs[:5])
        more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
        return CheckpointError(
            f"{str(path)!r} is a folder of runs, not a run: it holds {len(runs)} runs, newest "
            f"first: {shown}{more}. Give one run's directory, e.g. {str(runs[0])!r}."
        )
    experiments = [(child.name, len(runs_newest_first(child))) for child in sorted(path.iterdir())
                   if child.is_dir() and runs_newest_first(child)]  # fmt: skip
    if experiments:
        shown = ", ".join(f"{name} ({count} runs)" for name, count in experiments)
        return CheckpointError(
            f"{str(path)!r} is a folder of experiments, not a run: it holds {shown}. Give one "
            "run's directory, <experiment>/<run>."
        )
    return CheckpointError(
        f"Run directory {str(path)!r} holds no checkpoint-*.pt file; give a checkpoint file or "
        "the directory of a run that saved one."
    )
