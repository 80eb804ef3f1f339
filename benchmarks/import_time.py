"""How much `import pystematic` (with this plugin installed) costs over `import torch`.

Each statement runs in a fresh interpreter, interleaved, and the median of several runs is
reported. Two comparisons:

* ``import pystematic`` against ``import torch``: the figure the import budget names. The
  plugin registers itself without importing torch; ``pystematic.torch.*`` imports it on
  first use.
* ``import torch, pystematic`` against ``import torch``: what a training script, which
  imports torch anyway, pays for pystematic and the plugin on top.

    python benchmarks/import_time.py [runs]
"""
import statistics
import subprocess
import sys
import time
from typing import Dict

STATEMENTS = {
    "torch": "import torch",
    "pystematic": "import pystematic",
    "torch+pystematic": "import torch, pystematic; pystematic.torch.Context",
}


def time_import(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def measure(runs: int = 5) -> Dict[str, float]:
    """Median seconds for each statement in STATEMENTS."""
    time_import(STATEMENTS["torch+pystematic"])  # warm the file cache
    samples = {name: [] for name in STATEMENTS}
    for _ in range(runs):
        for name, statement in STATEMENTS.items():
            samples[name].append(time_import(statement))
    return {name: statistics.median(times) for name, times in samples.items()}


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    medians = measure(runs)
    for name, seconds in medians.items():
        print(f"{STATEMENTS[name]:<52} {seconds:.3f} s (median of {runs})")
    plugin_only = medians["pystematic"] - medians["torch"]
    on_top = medians["torch+pystematic"] - medians["torch"]
    print(f"import pystematic - import torch:        {plugin_only:+.3f} s (budget +0.150 s)")
    print(f"import torch, pystematic - import torch: {on_top:+.3f} s (budget +0.150 s)")
