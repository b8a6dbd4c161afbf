"End to end through real papermill kernels: caching, failure and resume, the smoke pipeline."
import json, shutil
from pathlib import Path
import pytest
from conftest import llmops, ROOT
from llmops_nb import pipeline as P


def test_cache_skips_unchanged_stages(params, tmp_path):
    f = params({"stages": ["prepare"], "prepare": {"max_examples": 30}})
    r1 = P.run(f, progress=False)
    assert r1["stages"]["prepare"]["status"] == "done"
    r2 = P.run(f, progress=False)
    assert [s["status"] for s in r2["stages"].values()] == ["cached"]
    assert r2["stages"]["prepare"]["out_dir"] == r1["stages"]["prepare"]["out_dir"]
    assert not (Path(r2["run_dir"])/"wandb").exists()  # no kernel ran, so no stage opened a W&B run
    r3 = P.run(f, force=True, progress=False)
    assert r3["stages"]["prepare"]["status"] == "done"


def test_reports_describe_their_own_run(params, tmp_path):
    "A second run renders its own report (not a link to the first's); `llmops report` of a run leaves its report stage's manifest true."
    from llmops_nb.stages import verify
    f = params({"model": "tiny-random", "stages": ["prepare", "report"], "prepare": {"max_examples": 30}})
    r1, r2 = (P.run(f, progress=False, echo=lambda *a: None) for _ in range(2))
    assert (r2["stages"]["prepare"]["status"], r2["stages"]["report"]["status"]) == ("cached", "done")
    page = Path(r2["run_dir"], "report.html")
    assert not page.is_symlink() and r2["id"] in page.read_text()
    assert llmops("--run-root", tmp_path/"runs", "report", r2["id"]).returncode == 0
    assert verify(r2["stages"]["report"]["out_dir"]) == "" and verify(r1["stages"]["report"]["out_dir"]) == ""
    assert r2["id"] not in Path(r1["run_dir"], "report.html").read_text()


def test_failure_then_resume(params, tmp_path):
    "A failure only the stage can meet (a Parquet row with no output: the pre-check reads the schema, only `datasets` reads the rows), then a resume once it is fixed."
    import pandas as pd
    good = [json.loads(l) for l in (ROOT/"data"/"instructions.jsonl").read_text().splitlines()[:30]]
    data = tmp_path/"data.parquet"
    pd.DataFrame([{**good[0], "output": None}] + good[1:]).to_parquet(data)
    f = params({"stages": ["prepare"], "prepare": {"data": str(data)}})
    r = llmops("run", f, "--quiet")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and "stage 'prepare' failed" in line and "llmops resume " in line, line
    run_id = line.split("llmops resume ")[1].split("`")[0]
    rec = json.loads((tmp_path/"runs"/run_id/"run.json").read_text())
    assert rec["status"] == "failed" and rec["stages"]["prepare"]["status"] == "failed"
    nb = json.loads((tmp_path/"runs"/run_id/"prepare.ipynb").read_text())  # the failing cell is kept
    assert any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    pd.DataFrame(good).to_parquet(data)
    r = llmops("--run-root", tmp_path/"runs", "resume", run_id, "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path/"runs"/run_id/"run.json").read_text())
    assert rec["status"] == "done" and rec["stages"]["prepare"]["metrics"]["sizes"]["train"] == 24


def test_smoke_pipeline(smoke_cli):
    "params/smoke.yaml through the CLI: every stage executed, run.json, notebooks, offline W&B runs."
    r, rec = smoke_cli
    run_dir = Path(rec["run_dir"])
    assert rec["status"] == "done" and rec["git"]["commit"] and rec["versions"]["torch"]
    assert run_dir.parent.name == "runs" and run_dir.parent.parent.name.startswith("smoke")  # where --run-root said, not the file's run_root
    for s, st in rec["stages"].items():
        assert st["status"] == "done", (s, st)
        assert (run_dir/f"{s}.ipynb").exists() and (Path(st["out_dir"])/"metrics.json").exists()
    offline = list((run_dir/"wandb").glob("offline-run-*"))
    assert len(offline) == len(rec["stages"])
    assert f"llmops sync {rec['id']}" in r.stdout


def test_dpo_and_kto_adapters_compared_with_sft(preference_run):
    "With dpo and kto stages in the run (KTO on the tiny model from the SFT adapter), evaluate scores both adapters against the SFT one."
    rec = preference_run
    kto = rec["stages"]["kto"]["metrics"]
    assert (kto["n_examples"], kto["n_desirable"], kto["steps"]) == (4, 2, 2) and kto["started_from"].endswith("adapter")
    assert all("kl" in h for h in kto["history"])
    m = rec["stages"]["evaluate"]["metrics"]
    for pref in ("dpo", "kto"):
        assert m[f"{pref}_adapter"].startswith(rec["stages"][pref]["out_dir"])
        assert m[f"{pref}_vs_sft"]["against"] == "sft" and set(m[f"{pref}_vs_sft"]["delta"]) == set(m["delta"])
    preds = [json.loads(l) for l in (Path(rec["stages"]["evaluate"]["out_dir"])/"predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all("dpo" in p and "kto" in p and "tuned" in p for p in preds)


def test_stage_subset(params):
    "--stages runs the subset, takes upstream outputs from the cache, leaves downstream stages out."
    f = params({"model": "tiny-random", "stages": ["prepare", "finetune"], "prepare": {"max_examples": 30},
                "finetune": {"max_steps": 1, "eval_steps": 0, "save_steps": 1}})
    r1 = P.run(f, stages=["prepare"], progress=False, echo=lambda *a: None)
    assert [r1["stages"][s]["status"] for s in ("prepare", "finetune")] == ["done", "skipped"]
    r2 = P.run(f, stages=["finetune"], progress=False, echo=lambda *a: None)
    assert [r2["stages"][s]["status"] for s in ("prepare", "finetune")] == ["cached", "done"]
    with pytest.raises(P.StageError, match="stage 'prepare' is needed by finetune but has no cached result"):
        P.run(f, sets=["prepare.max_examples=20"], stages=["finetune"], progress=False, echo=lambda *a: None)


def test_cache_keys_follow_the_code_each_stage_runs(tmp_path):
    "In a copy of the package: a report-only edit reruns only report; a fine-tuning edit reruns finetune, and what reads its adapter only when the adapter changed."
    import os, subprocess, sys, yaml
    proj = tmp_path/"proj"
    shutil.copytree(ROOT/"llmops_nb", proj/"llmops_nb", ignore=shutil.ignore_patterns("__pycache__", "pipeline"))
    shutil.copytree(ROOT/"nbs"/"pipeline", proj/"nbs"/"pipeline")
    shutil.copy(ROOT/"settings.ini", proj)
    f = proj/"p.yaml"
    f.write_text(yaml.safe_dump({"model": "tiny-random", "run_root": str(proj/"runs"), "wandb": {"mode": "offline"},
        "stages": ["prepare", "finetune", "evaluate", "rag_index", "report"],
        "prepare": {"data": str(ROOT/"data"/"instructions.jsonl"), "max_examples": 30},
        "finetune": {"max_steps": 2, "eval_steps": 0, "save_steps": 2},
        "evaluate": {"max_examples": 2, "max_new_tokens": 4, "n_boot": 20}, "rag_index": {"docs": str(ROOT/"data"/"kb")}}))
    env = {**os.environ, "PYTHONPATH": str(proj)}  # the copy, in this process and in every stage kernel

    def run():
        r = subprocess.run([sys.executable, "-m", "llmops_nb.cli", "run", str(f), "--quiet"], cwd=proj, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        rec = json.loads(sorted((proj/"runs").glob("2*/run.json"))[-1].read_text())
        return {s: st["status"] for s, st in rec["stages"].items()}, rec

    def edit(module, old, new):
        p = proj/"llmops_nb"/f"{module}.py"; src = p.read_text()
        assert old in src; p.write_text(src.replace(old, new, 1))

    first, r1 = run()
    assert set(first.values()) == {"done"}
    edit("report", "def _rows(p) -> list:", "# a report-only edit\ndef _rows(p) -> list:")
    assert run()[0] == {"prepare": "cached", "finetune": "cached", "evaluate": "cached", "rag_index": "cached", "report": "done"}
    edit("trainer", "def _history(log_history) -> list:", "# a comment: fine-tuning code changed, its result did not\ndef _history(log_history) -> list:")
    st, r3 = run()
    assert st == {"prepare": "cached", "finetune": "done", "evaluate": "cached", "rag_index": "cached", "report": "done"}
    adapter = lambda rec: json.loads((Path(rec["stages"]["finetune"]["out_dir"])/"manifest.json").read_text())["files"]["adapter"]
    assert adapter(r3) == adapter(r1)  # byte for byte the same adapter, so evaluate kept its result
    edit("trainer", "    seed_everything(cfg.seed)\n", "    seed_everything(cfg.seed + 1)\n")  # another initialisation: another adapter
    st, r4 = run()
    assert st == {"prepare": "cached", "finetune": "done", "evaluate": "done", "rag_index": "cached", "report": "done"}
    assert adapter(r4) != adapter(r1)


def _gc_root(root: Path, n: int = 60) -> list:
    "A run root of `n` small runs that take stages from older ones (stars, chains, any earlier run), with a cycle of reuse, young runs, an alias, a candidate and a running one; their ids."
    import random
    from datetime import datetime, timedelta, timezone
    rng, now, ids = random.Random(0), datetime.now(timezone.utc), []
    (root/".cache").mkdir(parents=True)
    for i in range(n):
        rid, stages = f"2026{i:04d}-000000-{i:04x}", {}
        d = root/rid
        for s in ("prepare", "finetune", "evaluate", "rag_index"):
            (d/s).mkdir(parents=True); (d/s/"metrics.json").write_text("{}")
            k = rng.random()
            j = (rng.randrange(min(i, 3)) if k < 0.3 else i - 1 if k < 0.6 else rng.randrange(i) if k < 0.7 else None) if i else None
            if j is None:
                (root/".cache"/f"{s}-{rid}.json").write_text(json.dumps({"run_id": rid, "out_dir": str(d/s), "notebook": str(d/f"{s}.ipynb")}))
                stages[s] = {"status": "done", "key": rid, "out_dir": str(d/s), "cached_from": None}
            else: stages[s] = {"status": "cached", "key": ids[j], "out_dir": str(root/ids[j]/s), "cached_from": ids[j]}
        created = now - timedelta(days=2 if i >= n - 8 else 90 - i)
        (d/"run.json").write_text(json.dumps({"id": rid, "run_dir": str(d), "created": created.isoformat(), "status": "done", "stages": stages,
                                              **({"aliases": ["staging"]} if i == 25 else {})}))
        ids.append(rid)
    for a, b in ((12, 13), (13, 12)):  # a cycle: each took a stage from the other
        rec = json.loads((root/ids[a]/"run.json").read_text()); rec["stages"]["report"] = {"status": "cached", "cached_from": ids[b]}
        (root/ids[a]/"run.json").write_text(json.dumps(rec))
    (root/"registry.json").write_text(json.dumps({"production": {"run_id": ids[20]}}))
    (root/ids[40]/"evaluate"/"metrics.json").write_text(json.dumps({"gates": {"rougeL": {"passed": True}}}))  # `candidate`
    return ids


def test_gc_decides_as_the_pass_by_pass_loop_did(tmp_path):
    "`runs gc` decides in one pass (`used_by`, `_removable`) what the loop it replaced decided pass after pass, and drops the same cache entries."
    from llmops_nb import cleanup as C
    from llmops_nb.runs import gates_passed, list_runs, registry, run_lock
    root = tmp_path/"runs"; ids = _gc_root(root)
    lock = run_lock({"run_dir": str(root/ids[30])}); assert lock.acquire(run=ids[30])  # a run a live process holds

    def before(days):  # collect's decision before: a run goes once no kept run reuses it, pass after pass until nothing changes
        runs, reg = list_runs(root), registry(root)
        cand = [r["id"] for r in runs if r.get("status") == "done" and gates_passed(r)][-1:]
        users = lambda rec, rs: [r["id"] for r in rs if r["id"] != rec["id"] and any(s.get("cached_from") == rec["id"] for s in r.get("stages", {}).values())]
        gone, changed = set(), True
        while changed:
            changed = False
            for r in runs:
                keep = [x for x in runs if x["id"] not in gone]
                if r["id"] not in gone and r["id"] not in cand and C._age_days(r) > days and not C._why_not(r, users(r, keep), reg, False, root):
                    gone.add(r["id"]); changed = True
        return [r["id"] for r in runs if r["id"] in gone]

    try:
        for days in (0, 30, 60, 100):
            assert C.collect(root, days, dry_run=True, echo=lambda *a: None) == before(days), days
        want = before(30)
        assert 10 < len(want) < 50 and {ids[12], ids[13], ids[20], ids[25], ids[30], ids[40]}.isdisjoint(want)
        assert any(C.users({"id": i}, list_runs(root)) for i in want)  # some went only because their users went too
        entries = {c.name: json.loads(c.read_text()) for c in (root/".cache").glob("*.json")}
        assert C.collect(root, 30, echo=lambda *a: None) == want
        assert sorted(r["id"] for r in list_runs(root)) == sorted(set(ids) - set(want))
        assert sorted(c.name for c in (root/".cache").glob("*.json")) == sorted(n for n, e in entries.items() if e["run_id"] not in want)
    finally: lock.release()
