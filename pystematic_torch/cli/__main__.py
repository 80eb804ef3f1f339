"""``python -m pystematic_torch.cli``: the same as the ``pystematic-torch`` command."""
from . import main

main(prog_name="pystematic-torch")
