"""How a stage's kernel is stopped once its notebook ran: nbclient's graceful shutdown against `kernels.SHUTDOWN`.

    python bench/shutdown.py --repeat 3     # the smoke pipeline, alternating, medians

Each round runs `llmops run params/smoke.yaml --force` twice side by side in fresh processes, once with the
kernels stopped gracefully (a shutdown request, then waiting for torch and W&B to tear down) and once as the
pipeline stops them. Reported: wall time of the whole run, and the sum over stages of the gap between the
last cell's end and the notebook's end (papermill's timestamps), which is the shutdown.
"""
import argparse, json, statistics, subprocess, sys, tempfile, time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ("import sys, llmops_nb.pipeline as P, llmops_nb.page as G, llmops_nb.kernels as K; K.SHUTDOWN = P.SHUTDOWN = sys.argv[1]; "
       "from llmops_nb.cli import main; main(sys.argv[2:])")


def gaps(run_dir: Path) -> float:
    "Seconds between each stage notebook's last cell end and its end, summed."
    total = 0.0
    for nb in run_dir.glob("*.ipynb"):
        meta = json.loads(nb.read_text())
        ends = [c["metadata"].get("papermill", {}).get("end_time") for c in meta["cells"]]
        last, end = max(e for e in ends if e), meta["metadata"]["papermill"]["end_time"]
        total += (datetime.fromisoformat(end) - datetime.fromisoformat(last)).total_seconds()
    return total


def once(mode: str, root: Path) -> tuple:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, mode, "--run-root", str(root), "run", "params/smoke.yaml", "--force", "--quiet"],
                   cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t
    return wall, gaps(sorted(root.glob("2*/"))[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    got = {"graceful": [], "immediate": []}
    with tempfile.TemporaryDirectory() as d:
        once("immediate", Path(d)/"warm")  # the sample index and model conversions cached, off the clock
        for i in range(a.repeat):
            for mode in (("graceful", "immediate") if i % 2 == 0 else ("immediate", "graceful")):
                got[mode].append(once(mode, Path(d)/mode))
                print(f"round {i + 1} {mode:9s} wall {got[mode][-1][0]:6.1f} s, shutdown {got[mode][-1][1]:5.1f} s", flush=True)
    med = {m: (statistics.median(w for w, _ in v), statistics.median(g for _, g in v)) for m, v in got.items()}
    for m, (w, g) in med.items(): print(f"{m:9s} median wall {w:6.1f} s, shutdown summed over stages {g:5.1f} s")
    print(f"ratio graceful / immediate: wall {med['graceful'][0] / med['immediate'][0]:.2f}x")


if __name__ == "__main__":
    main()
