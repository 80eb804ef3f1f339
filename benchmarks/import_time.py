"""What pystematic-torch adds to a training script's start-up time.

A training script imports torch anyway, so the cost that matters is what comes on top of
``import torch, pystematic``: touching the names a script uses, which imports our modules.
Each run is a fresh interpreter that first imports torch and pystematic, then times the
touch of ``Context``, ``SmartDataLoader``, ``Recorder`` and ``save_checkpoint`` with
``time.perf_counter`` inside the process, so the noise of starting an interpreter and
importing torch (seconds, varying by tenths) does not hide a cost of hundredths.

A second figure, for reference: ``import pystematic`` alone, with the plugin installed,
against ``import torch`` alone (the plugin registers itself without importing torch).

    python benchmarks/import_time.py [runs]
"""
import statistics
import subprocess
import sys
import time
from typing import Dict, List

BUDGET_SECONDS = 0.15
USER_NAMES = ("Context", "SmartDataLoader", "Recorder", "save_checkpoint")

_TOUCH = (
    "import time, torch, pystematic\n"
    "start = time.perf_counter()\n"
    + "".join(f"pystematic.torch.{name}\n" for name in USER_NAMES)
    + "print(time.perf_counter() - start)\n"
)


def touch_cost(runs: int = 5) -> List[float]:
    """Seconds spent touching the user-facing names after ``import torch, pystematic``."""
    samples = []
    for _ in range(runs):
        output = subprocess.run(
            [sys.executable, "-c", _TOUCH], check=True, capture_output=True, text=True
        )
        samples.append(float(output.stdout.strip().splitlines()[-1]))
    return samples


def time_statement(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def whole_imports(runs: int = 5) -> Dict[str, float]:
    """Median wall seconds of fresh interpreters running each import, interleaved."""
    statements = {"torch": "import torch", "pystematic": "import pystematic"}
    time_statement("import torch, pystematic")  # warm the file cache
    samples: Dict[str, List[float]] = {name: [] for name in statements}
    for _ in range(runs):
        for name, statement in statements.items():
            samples[name].append(time_statement(statement))
    return {name: statistics.median(times) for name, times in samples.items()}


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    touches = touch_cost(runs)
    median = statistics.median(touches)
    print(f"touching {', '.join(USER_NAMES)} after `import torch, pystematic`:")
    print(f"  median {median:.3f} s, min {min(touches):.3f} s, max {max(touches):.3f} s "
          f"over {runs} runs (budget {BUDGET_SECONDS:.3f} s)")  # fmt: skip
    imports = whole_imports(runs)
    print(f"`import torch` alone:      {imports['torch']:.3f} s (median of {runs})")
    print(f"`import pystematic` alone: {imports['pystematic']:.3f} s (median of {runs})")
