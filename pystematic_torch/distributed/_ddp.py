"""A DistributedDataParallel wrapper that the user's code cannot tell from the module."""
from typing import Any, Mapping

from torch.nn.parallel import DistributedDataParallel


class TransparentDDP(DistributedDataParallel):
    """DDP whose attributes and state dict are those of the wrapped module.

    Plain DDP hides the module's own methods behind ``.module`` and prefixes every state
    dict key with ``module.``, so checkpoints from distributed and single-process runs do
    not load into each other. Here attribute reads fall through to the module and the state
    dict is the module's own; calling the wrapper still runs DDP's forward, so gradients are
    synchronised. Attribute writes land on the wrapper: set attributes on ``.module``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)
