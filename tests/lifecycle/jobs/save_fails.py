"""A run whose torch.save fails half-way, as on a full disk: torch's frames then hold the
storages already written, whose repr lists every element."""
import io

import pystematic
import torch


class Unsaveable:
    def __reduce__(self):
        raise OSError("No space left on device (simulated)")


@pystematic.parameter(name="elements", type=int, default=20_000_000)
@pystematic.experiment
def save_fails(params):
    state = {"big": torch.zeros(params["elements"]), "last": Unsaveable()}
    torch.save(state, io.BytesIO())


if __name__ == "__main__":
    save_fails.cli()
