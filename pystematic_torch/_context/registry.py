"""The Context's items by name, readable as plain attributes.

A training loop reads ``ctx.model``, ``ctx.optimizer``, ``ctx.loader`` several times per
step. Served by ``__getattr__``, each read first fails the normal lookup and then raises and
catches an ``AttributeError`` inside the interpreter, about 0.5 us: a few microseconds per
step of a small model. The registry therefore keeps a copy of each item in the Context's
instance ``__dict__``, where the normal lookup finds it, and every change to an item (a
move, a DDP wrap, a restore from a checkpoint) goes through the registry, so the two
cannot differ.
"""
import weakref
from typing import Any


class ItemRegistry(dict):
    """A dict of items that mirrors each attribute-named item into its owner's ``__dict__``.

    Only ``[]=``, ``del`` and ``pop`` change it; the other mutating dict methods raise, so a
    change can never bypass the mirror.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: Any = None) -> None:
        super().__init__()
        # A weak reference: the owner holds the registry, and a cycle would keep a dropped
        # Context (and the GPU memory of its models) alive until the garbage collector runs.
        self._owner = None if owner is None else weakref.ref(owner)

    def adopt(self, owner: Any) -> None:
        """Belong to ``owner`` from now on: a copied Context takes over its copied registry."""
        self._owner = weakref.ref(owner)
        for name, value in self.items():
            self._mirror(name, value)

    def owned_elsewhere(self, owner: Any) -> bool:
        """Whether another live object than ``owner`` owns this registry."""
        current = self._owner() if self._owner is not None else None
        return current is not None and current is not owner

    def for_copy(self, owner: Any) -> "ItemRegistry":
        """The registry a copy ``owner`` of a Context keeps, already adopted by it."""
        # A deep copy's registry is a copy too, which has to be told whose attributes to keep
        # in step with; a shallow copy's is the original's own, which the original keeps, so
        # the copy gets one of its own with the same items.
        registry = self
        if self.owned_elsewhere(owner):
            registry = ItemRegistry()
            dict.update(registry, self)
        registry.adopt(owner)
        return registry

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # A copy or a pickle carries the items and no owner: one copied along with the
        # Context it belonged to must not write into the original's attributes.
        return (ItemRegistry, (), None, None, iter(self.items()))

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self._mirror(name, value)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._unmirror(name)

    def pop(self, name: str, *default: Any) -> Any:
        present = name in self
        value = super().pop(name, *default)
        if present:
            self._unmirror(name)
        return value

    def _mirror(self, name: str, value: Any) -> None:
        attributes = self._attributes(name)
        if attributes is not None:
            attributes[name] = value

    def _unmirror(self, name: str) -> None:
        attributes = self._attributes(name)
        if attributes is not None:
            attributes.pop(name, None)

    def _attributes(self, name: str):
        owner = self._owner() if self._owner is not None else None
        if owner is None or not name.isidentifier() or name.startswith("_"):
            return None
        return vars(owner)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Change a Context's items by assigning or deleting its attributes.")

    update = setdefault = popitem = clear = __ior__ = _refuse  # type: ignore[assignment]
