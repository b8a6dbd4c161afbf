"""`llmops runs gc` on a synthetic run root: how long deciding and removing take as runs pile up.

    python bench/gc.py --runs 200,400,800            # mixed: stars of 20 runs, chains of 5, one alias
    python bench/gc.py --runs 400 --shape chain      # each run of the older half takes stages from the one before

Each run is a small folder (run.json and one file per stage) created over the last 90 days, with one stage
cache entry per stage it executed; the others are `cached` from an older run (`cached_from`), as the
pipeline records them. `gc --days 30` then removes about two thirds of them. Reported per size: seconds of
`collect(dry_run=True)` (the decision) and of `collect()` (the decision and the deletes), and what went.
"""
import argparse, json, os, sys, tempfile, time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmops_nb.cleanup import collect

STAGES = ["prepare", "finetune", "evaluate", "rag_index", "rag_eval", "report"]


def source(i: int, s: str, shape: str, n: int):
    "The index of the run stage `s` of run `i` (of `n`) is taken from, or None when run `i` executes it."
    if shape == "star": return 0 if i and s in ("prepare", "rag_index", "evaluate") else None
    if shape == "chain": return i - 1 if 0 < i < n // 2 and s in ("prepare", "rag_index", "evaluate") else None  # the older half: one chain, all of it old
    if s == "prepare" and i % 20: return i - i % 20  # stars: a group of 20 runs reuses its first run's data
    if s == "rag_index" and i % 5: return i - 1  # chains of 5: each run reuses the index of the run before
    if s == "evaluate" and i % 7 == 3: return i - 2
    return None


def synth(root: Path, n: int, shape: str) -> Path:
    "A run root of `n` runs under `root`."
    (root/".cache").mkdir(parents=True)
    t0, ids = datetime.now(timezone.utc) - timedelta(days=90), []
    for i in range(n):
        at = t0 + timedelta(seconds=i * 90 * 86400 / n)
        rid = at.strftime("%Y%m%d-%H%M%S-") + f"{i:04x}"
        d, stages = root/rid, {}
        for s in STAGES:
            (d/s).mkdir(parents=True); (d/s/"metrics.json").write_text("{}")
            if (j := source(i, s, shape, n)) is not None:
                stages[s] = {"status": "cached", "cached_from": ids[j], "out_dir": str(root/ids[j]/s), "key": f"{s}{j}"}
            else:
                key = f"{s}{i}"
                (root/".cache"/f"{s}-{key}.json").write_text(json.dumps({"run_id": rid, "out_dir": str(d/s), "notebook": str(d/f"{s}.ipynb")}))
                stages[s] = {"status": "done", "key": key, "out_dir": str(d/s), "cached_from": None}
        (d/"run.json").write_text(json.dumps({"id": rid, "run_dir": str(d), "created": at.isoformat(timespec="seconds"), "status": "done", "stages": stages}))
        ids.append(rid)
    (root/"registry.json").write_text(json.dumps({"production": {"run_id": ids[n // 4]}}))  # an old run an alias serves
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="200,400,800", help="sizes, comma-separated")
    ap.add_argument("--shape", default="mix", choices=["mix", "star", "chain"])
    ap.add_argument("--days", type=float, default=30)
    a = ap.parse_args()
    for n in map(int, a.runs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = synth(Path(tmp)/"runs", n, a.shape)
            t = time.perf_counter(); would = collect(root, a.days, dry_run=True, echo=lambda *x: None); t_dry = time.perf_counter() - t
            t = time.perf_counter(); gone = collect(root, a.days, echo=lambda *x: None); t_gc = time.perf_counter() - t
            assert gone == would, "gc removed other runs than its dry run listed"
            print(json.dumps({"runs": n, "shape": a.shape, "removed": len(gone), "left": len(os.listdir(root)) - 2,
                              "cache_entries_left": len(list((root/".cache").glob("*.json"))),
                              "dry_run_s": round(t_dry, 2), "gc_s": round(t_gc, 2)}), flush=True)


if __name__ == "__main__":
    main()
