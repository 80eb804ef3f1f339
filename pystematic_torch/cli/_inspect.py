"""``pystematic-torch inspect``: what a checkpoint holds, read without running any code."""
import pathlib
import re
from typing import Any, Dict, List, Tuple

import click

METADATA_KEY = "_pystematic_torch"
_MAX_VALUE_CHARS = 60


@click.command("inspect", short_help="Show what a checkpoint holds.")
@click.argument("checkpoint", type=click.Path(path_type=pathlib.Path))
@click.option("--depth", default=4, show_default=True, type=click.IntRange(min=1),
              help="Levels of nesting to list; deeper containers are summarised.")
def inspect_command(checkpoint: pathlib.Path, depth: int) -> None:
    """Show what CHECKPOINT holds: items, tensors (dtype, shape, size), plain values, and
    the parameters and library version it was written with, when recorded.

    CHECKPOINT is a checkpoint file or a run directory (its newest checkpoint). It is read
    with torch.load(weights_only=True): nothing in it is executed. Its bytes are checked
    against the checksums torch.save wrote; a damaged file is listed as far as it can be
    read, and the command then fails, naming the damaged record.
    """
    path = _checkpoint_file(checkpoint)
    from ..checkpoint import _integrity

    damage = _integrity.damage(path)
    try:
        state = _load(path)
    except click.ClickException:
        if damage is None:
            raise
        raise click.ClickException(_damaged(path, damage)) from None
    metadata = state.pop(METADATA_KEY, None) if isinstance(state, dict) else None
    click.echo(f"{path}  ({_size(path.stat().st_size)} on disk)")
    if isinstance(metadata, dict):
        _show_metadata(metadata)
    click.echo("items:")
    rows: List[Tuple[str, str, str]] = []
    if isinstance(state, dict):
        for key, value in state.items():
            _describe(str(key), value, 1, depth, rows)
    else:
        _describe("(the whole file)", state, 1, depth, rows)
    name_width = max((len(name) for name, _, _ in rows), default=0)
    kind_width = max((len(kind) for _, kind, _ in rows), default=0)
    for name, kind, detail in rows:
        click.echo(f"{name.ljust(name_width)}  {kind.ljust(kind_width)}  {detail}".rstrip())
    count, total = _tensor_totals(state)
    click.echo(f"total: {count} tensor(s), {_size(total)}")
    if damage is not None:
        raise click.ClickException(_damaged(path, damage))
    if _integrity.carries_checksums(path):
        click.echo("checksums: every record matches")
    else:
        click.echo("checksums: none in this file (torch's older format, or saved with "
                   "torch.serialization.set_crc32_options(False))")  # fmt: skip


def _damaged(path: pathlib.Path, damage: str) -> str:
    return (f"{path} is damaged: {damage}; its bytes changed after it was saved, and "
            "load_checkpoint refuses it.")


def _checkpoint_file(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        raise click.ClickException(f"{path} does not exist; give a checkpoint file or a run "
                                   "directory.")  # fmt: skip
    if path.is_file():
        return path
    from ..checkpoint import find_checkpoint
    from ..errors import Error

    try:
        return find_checkpoint(path)
    except Error as error:
        raise click.ClickException(str(error)) from None


def _load(path: pathlib.Path) -> Any:
    import pickle
    import zipfile

    import torch

    try:
        with open(path, "rb") as file:
            first_byte = file.read(1)
        if not zipfile.is_zipfile(path) and first_byte != b"\x80":  # neither format torch writes
            raise click.ClickException(
                f"{path} is not a checkpoint written by torch.save (neither a zip archive nor "
                "a pickle)."
            )
        try:
            # Memory-mapped: a checkpoint larger than memory can still be looked at.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise click.ClickException(f"Cannot read {path}: {error.strerror}.") from None
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise click.ClickException(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to "
                f"create ({_refusal(error)}); inspect opens only checkpoints that need no code "
                "to load, as pystematic-torch writes them."
            ) from None
        raise click.ClickException(
            f"Cannot read {path} as a torch checkpoint: {_first_line(error)}"
        ) from None
    except click.ClickException:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file: one clear line
        raise click.ClickException(
            f"Cannot read {path} as a torch checkpoint: {_first_line(error)}"
        ) from None


def _show_metadata(metadata: Dict[str, Any]) -> None:
    params = metadata.get("params")
    version = metadata.get("version")
    click.echo("written by pystematic-torch" + (f" {version}" if version else ""))
    for key, value in metadata.items():
        if key not in ("params", "version"):
            click.echo(f"  {key}: {value}")
    if isinstance(params, dict):
        click.echo("parameters:")
        width = max((len(str(name)) for name in params), default=0)
        for name, value in params.items():
            click.echo(f"  {str(name).ljust(width)}  {value}")


def _describe(name: str, value: Any, level: int, depth: int, rows: list) -> None:
    import torch

    indent = "  " * level
    if isinstance(value, torch.Tensor):
        shape = "[" + ", ".join(map(str, value.shape)) + "]"
        dtype = str(value.dtype).replace("torch.", "")
        rows.append((indent + name, "tensor", f"{dtype} {shape}  {_size(_nbytes(value))}"))
    elif isinstance(value, (dict, list, tuple)):
        count, total = _tensor_totals(value)
        tensors = f"; {count} tensor(s), {_size(total)}" if count else ""
        kind = "dict" if isinstance(value, dict) else type(value).__name__  # OrderedDict too
        entries = "1 entry" if len(value) == 1 else f"{len(value)} entries"
        rows.append((indent + name, kind, entries + tensors))
        if level < depth:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                _describe(str(key), item, level + 1, depth, rows)
    else:
        text = repr(value)
        if len(text) > _MAX_VALUE_CHARS:
            text = text[: _MAX_VALUE_CHARS - 3] + "..."
        rows.append((indent + name, type(value).__name__, text))


def _tensor_totals(value: Any) -> Tuple[int, int]:
    """Tensors below ``value`` and their bytes, each storage counted once (tied weights)."""
    import torch

    count, storages = 0, {}
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            count += 1
            storage = item.untyped_storage()
            storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count, sum(storages.values())


def _nbytes(tensor: Any) -> int:
    return tensor.numel() * tensor.element_size()


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _refusal(error: BaseException) -> str:
    """The part of torch's long refusal that names what was refused."""
    match = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed|$)", str(error),
                      re.MULTILINE)  # fmt: skip
    return match.group(1).strip() if match else _first_line(error)
