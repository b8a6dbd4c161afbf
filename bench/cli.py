"""Start-up costs a user feels: `llmops --help`, a cached rerun, and loading the packaged model.

    python bench/cli.py            # prints medians of 5 runs each

Each figure is a whole process, timed from outside, so imports count.
"""
import statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd, n=5, **kw):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); subprocess.run(cmd, check=True, capture_output=True, **kw); ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)


def main():
    print("llmops --help        median %.3fs (min %.3f, max %.3f)" % timed([str(BIN/"llmops"), "--help"]))
    load = ("from llmops_nb.models import load_causal_lm; import time; load_causal_lm('tiny-random'); "
            "t = time.perf_counter(); load_causal_lm('smollm2-135m-instruct'); print(time.perf_counter() - t)")
    subprocess.run([sys.executable, "-c", load], check=True, capture_output=True)  # converts once if needed
    inner = [float(subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, text=True).stdout.split()[-1]) for _ in range(5)]
    print("packaged model load  median %.3fs (min %.3f, max %.3f), python imports excluded" % (statistics.median(inner), min(inner), max(inner)))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)/"p.yaml"
        p.write_text(f"run_root: {d}/runs\nwandb: {{mode: offline}}\nstages: [prepare]\nprepare: {{max_examples: 40}}\n")
        subprocess.run([str(BIN/"llmops"), "run", str(p), "--quiet"], check=True, capture_output=True, cwd=ROOT)
        print("cached rerun         median %.3fs (min %.3f, max %.3f)" % timed([str(BIN/"llmops"), "run", str(p), "--quiet"], cwd=ROOT))


if __name__ == "__main__":
    main()
