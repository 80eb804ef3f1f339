"""The names of the precisions a Context trains in, without importing torch or pystematic.

Shared by ``params`` (the ``--precision`` parameter, read when pystematic loads the plugin)
and the Context (``Context(precision=...)``).
"""
from .errors import ParameterError

#: The precisions a Context trains in (``--precision``, ``Context(precision=...)``).
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
# Spellings other libraries use, answered with ours.
_SPELLINGS = {
    "32-true": "32", "fp32": "32", "float32": "32", "bf16": "bf16-mixed",
    "bfloat16": "bf16-mixed", "bf16-true": "bf16-mixed", "16": "16-mixed", "fp16": "16-mixed",
    "float16": "16-mixed", "half": "16-mixed", "16-true": "16-mixed",
}  # fmt: skip


def parse_precision(value) -> str:
    """``value`` as one of :data:`PRECISIONS` (the int 32 is ``"32"``).

    Raises:
        ParameterError: ``value`` names no precision we train in.
    """
    plain = isinstance(value, (str, int)) and not isinstance(value, bool)
    text = str(value).strip() if plain else ""
    if text in PRECISIONS:
        return text
    ours = _SPELLINGS.get(text.lower())
    hint = f"; for {value!r} write {ours!r}" if ours else ""
    raise ParameterError(
        f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {value!r}{hint}."
    )
