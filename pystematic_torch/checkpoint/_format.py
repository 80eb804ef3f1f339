"""What a checkpoint file holds: the state, plus our metadata under one reserved key.

A checkpoint is a plain ``torch.save`` file of a dict. Next to the user's entries it holds
``"_pystematic_torch"``: a small dict of weights-only values (library version, the
experiment's parameters, the world size, the run's sequence number, the kind of state, the
time). :func:`split` takes it out again, so loaders see exactly the dict that was saved.
"""
import collections
import copy
import dataclasses
import datetime
import pathlib
import pickle
import re
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .. import _session
from .._version import __version__
from ..errors import CheckpointError
from . import _integrity

METADATA_KEY = "_pystematic_torch"
#: Raised whenever the metadata changes in a way an older reader would misread.
FORMAT = 1
CONTEXT, STATE = "context", "state"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
FILE_PATTERN = re.compile(r"^checkpoint-(?P<id>[A-Za-z0-9_.-]+)\.pt$")
# torch.save's pre-zip format opens with this pickled magic number.
_LEGACY_PREFIX = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]
# Where a zip file's first local header stores the entry's name.
_ZIP_NAME_OFFSET = 30


class ContextState(dict):
    """The dict :meth:`Context.state_dict` returns: a Context's whole state.

    A checkpoint of a ``ContextState`` is what resuming a run means; any other state (a
    model's weights for deployment) is saved as well, but never chosen to resume from.
    Pickled (``torch.save(ctx.state_dict(), f)`` by hand) it becomes an ``OrderedDict``,
    because ``torch.load(weights_only=True)`` refuses classes it does not know; copies
    (``copy.deepcopy``, to keep the best state in memory) stay ``ContextState``.
    """

    def __reduce_ex__(self, protocol):
        return collections.OrderedDict, (), None, None, iter(self.items())

    def __copy__(self) -> "ContextState":
        return ContextState(self)

    def __deepcopy__(self, memo: dict) -> "ContextState":
        copied = memo[id(self)] = ContextState()
        for key, value in self.items():
            copied[copy.deepcopy(key, memo)] = copy.deepcopy(value, memo)
        return copied


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about itself, from :func:`checkpoint_info`.

    Files written without pystematic-torch metadata (by ``torch.save`` or an older
    version) have ``kind``, ``sequence`` and the other recorded fields set to None.

    Attributes:
        path: The checkpoint file.
        id: The id it was saved under: the part of the name after ``checkpoint-``.
        kind: ``"context"`` for a Context's whole state (``ctx.state_dict()``), which is
            what resuming means; ``"state"`` for anything else.
        sequence: Counts the checkpoints a run directory received: 1, 2, ...; a run
            directory means its Context checkpoint with the highest sequence.
        version: The pystematic-torch version that wrote it.
        world_size: The number of processes of the run that wrote it.
        saved_at: When it was saved, ISO 8601 in UTC.
        params: The experiment's parameters (paths and other objects as strings), or
            None when it was saved outside an experiment.
    """

    path: pathlib.Path
    id: str
    kind: Optional[str] = None
    sequence: Optional[int] = None
    version: Optional[str] = None
    world_size: Optional[int] = None
    saved_at: Optional[str] = None
    params: Optional[Dict[str, Any]] = None

    @property
    def numeric(self) -> bool:
        """Whether the id is a number (such as an epoch), which ``keep_last`` may delete."""
        return self.id.isdigit()


def file_name(checkpoint_id: Union[int, str]) -> str:
    """``checkpoint-<id>.pt``, after checking that ``id`` is safe in a file name."""
    if isinstance(checkpoint_id, bool) or not _ID_PATTERN.match(str(checkpoint_id)):
        raise CheckpointError(
            f"Checkpoint id {checkpoint_id!r} is not allowed; use an int such as the epoch, or "
            "a string of letters, digits, '_', '.' and '-' such as 'best'."
        )
    return f"checkpoint-{checkpoint_id}.pt"


def id_of(path: pathlib.Path) -> Optional[str]:
    match = FILE_PATTERN.match(path.name)
    return match["id"] if match else None


def with_metadata(state: Mapping, metadata: Dict[str, Any]) -> Dict[str, Any]:
    """A shallow copy of ``state`` with the metadata added; the caller's dict is untouched.

    An ``OrderedDict`` stays one and keeps the ``_metadata`` attribute that
    ``nn.Module.state_dict()`` attaches (it records each module's state-dict version).
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"save_checkpoint needs a dict of the state to save, got {type(state).__name__}; "
            "wrap it, e.g. save_checkpoint({'model': model.state_dict()}, id=...)."
        )
    if METADATA_KEY in state:
        raise CheckpointError(
            f"The state has an entry {METADATA_KEY!r}, a name reserved for the metadata "
            "save_checkpoint adds; rename that entry."
        )
    copy = collections.OrderedDict() if type(state) is collections.OrderedDict else {}
    copy.update(state)
    if hasattr(state, "_metadata"):
        copy._metadata = state._metadata
    copy[METADATA_KEY] = metadata
    return copy


def metadata(kind: str, sequence: int, checkpoint_id: str, world_size: int) -> Dict[str, Any]:
    params = _session.current_params()
    return {
        "format": FORMAT,
        "version": __version__,
        "kind": kind,
        "sequence": sequence,
        "id": checkpoint_id,
        "world_size": world_size,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": None if params is None else {str(k): _plain(v) for k, v in params.items()},
    }


def _plain(value: Any) -> Any:
    """``value`` as something weights-only loading reads back: paths and objects as str."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def split(loaded: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """Take our metadata out of a loaded checkpoint: ``(state, metadata or None)``."""
    if not isinstance(loaded, dict) or METADATA_KEY not in loaded:
        return loaded, None
    found = loaded.pop(METADATA_KEY)
    return loaded, found if isinstance(found, dict) else None


def info(path: pathlib.Path, found: Optional[Dict[str, Any]]) -> CheckpointInfo:
    checkpoint_id = id_of(path) or path.stem
    if found is None:
        return CheckpointInfo(path=path, id=checkpoint_id)
    sequence = found.get("sequence")
    return CheckpointInfo(
        path=path,
        id=checkpoint_id,
        kind=found.get("kind"),
        sequence=sequence if type(sequence) is int else None,
        version=found.get("version"),
        world_size=found.get("world_size"),
        saved_at=found.get("saved_at"),
        params=found.get("params"),
    )


def load_file(path: pathlib.Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with errors that say what the file is.

    The file's bytes are first checked against the checksums torch.save wrote. With
    ``mmap`` the tensors' bytes are mapped, not read, and only the pickle (the structure and
    the metadata) is checked, so reading a large checkpoint's metadata costs little; files
    in torch's old format cannot be mapped and are read.

    Raises:
        CheckpointError: the file is not a ``torch.save`` file, needs pickled code to load,
            or is damaged (cut short, or bytes that do not match their checksums).
    """
    if mmap and zipfile.is_zipfile(path):
        # A mapped read reads the pickle, not the tensors' bytes: checking those would read
        # the whole file, while the pickle alone is a fraction of it.
        _integrity.check(path, structure_only=True)
        return _load(path, path, map_location, mmap=True)
    try:
        file = open(path, "rb", buffering=0)
    except OSError:
        return _load(path, path, map_location, mmap=False)  # which explains what is wrong
    with file:
        # Checked and loaded through one open file: a save replacing the file meanwhile
        # cannot make the two see different files.
        _integrity.check(path, file=file)
        file.seek(0)
        return _load(file, path, map_location, mmap=False)


def _load(source: Any, path: pathlib.Path, map_location: Any, mmap: bool) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        raise _explain(path, error) from error


def _explain(path: pathlib.Path, error: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if not _written_by_torch_save(path):
        return CheckpointError(
            f"{path}: not a checkpoint written by torch.save: {_describe_start(path)}. Give a "
            "checkpoint-<id>.pt file written by save_checkpoint, or a run directory."
        )
    if isinstance(error, pickle.UnpicklingError) and "weights only" in first.lower():
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = f"it needs {found[1]}" if found else first
        return CheckpointError(
            f"{path} holds values that torch.load(weights_only=True) refuses ({reason}), so "
            "it was not written by save_checkpoint. If you trust the file, load it with "
            "torch.load(path, weights_only=False) and save the state again with "
            "save_checkpoint."
        )
    return CheckpointError(
        f"Could not read checkpoint {path}; it is damaged or was cut short: {first}."
    )


def _describe_start(path: pathlib.Path) -> str:
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        return f"it cannot be read ({error})"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive without torch's data.pkl"
    return f"it starts with {head!r}"


def _written_by_torch_save(path: pathlib.Path) -> bool:
    """Whether the file starts the way torch.save starts a file (it may be cut short)."""
    try:
        with open(path, "rb") as file:
            head = file.read(_ZIP_NAME_OFFSET + 256)
    except OSError:
        return False
    if head.startswith(_LEGACY_PREFIX):
        return True
    # torch.save's zip archives begin with the pickle's record, "<archive>/data.pkl".
    if not head.startswith(b"PK\x03\x04") or len(head) < _ZIP_NAME_OFFSET:
        return False
    name_length = int.from_bytes(head[26:28], "little")
    return head[_ZIP_NAME_OFFSET:_ZIP_NAME_OFFSET + name_length].endswith(b"data.pkl")
