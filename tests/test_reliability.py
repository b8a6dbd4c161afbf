"""Issue 13, case by case: nothing corrupt is trusted, nothing half-written blocks a run, no injected markup runs.

Failures are made for real: files damaged on disk, processes killed with SIGKILL, a full disk as a
process whose files may not grow (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG).
"""
import json, os, resource, signal, subprocess, sys, time
from pathlib import Path
import psutil, pytest, yaml
from conftest import llmops, missing, ROOT
from llmops_nb import kernels as K, pipeline as P, runs, stages as ST
from llmops_nb.core import ConfigError, read_metrics

LLMOPS = Path(sys.executable).parent/"llmops"
DATA = ROOT/"data"/"instructions.jsonl"
QUIET = dict(progress=False, echo=lambda *a: None)


def damage(p: Path, at: int = 200):
    "Overwrite a few bytes in the middle of `p` without changing its size (what a bad disk or a stray write does)."
    b = bytearray(p.read_bytes()); at = min(at, len(b) - 8)
    b[at:at + 8] = bytes(x ^ 0xFF for x in b[at:at + 8]); p.write_bytes(bytes(b))


def limited(nbytes: int):
    "preexec_fn: no file this process (or its children) writes may grow past `nbytes`: a full disk."
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def one_line(r) -> str:
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err[-3000:]
    return err


# -- 2. a half-written checkpoint never blocks a resume -------------------------------------------------

TRAIN = """
import json, resource, sys, datasets
from transformers import TrainerCallback
from llmops_nb import trainer as T
from llmops_nb.settings import FinetuneConfig
out, cut = sys.argv[1], sys.argv[2] == "cut"
conv = [{"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "Ten years, or 6,000 cycles."}]
dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({"messages": [conv] * 8}), validation=datasets.Dataset.from_dict({"messages": [conv]}))

class DiskFills(TrainerCallback):
    "After the checkpoint of step 2, the disk is full: the next checkpoint's first file cannot be written."
    def on_save(self, args, state, control, **kw):
        if state.global_step == 2: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

cfg = FinetuneConfig(max_steps=4, save_steps=2, eval_steps=0, logging_steps=1, learning_rate=1e-2, warmup_steps=0.0)
m = T.train(cfg, out_dir=out, dataset=dd, report_to="none", callbacks=[DiskFills()] if cut else [])
print(json.dumps(m["training_summary"]))
"""


def test_half_written_checkpoint_is_skipped_and_resume_continues(tmp_path):
    "A full disk during the second checkpoint's save; the rerun resumes from the first and ends with the adapter of an uninterrupted run."
    script = tmp_path/"train.py"; script.write_text(TRAIN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, script, tmp_path/"ft", "cut"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr[-2000:]
    ck = tmp_path/"ft"/"checkpoints"
    assert sorted(p.name for p in ck.glob("checkpoint-*")) == ["checkpoint-2"]  # nothing that looks like a checkpoint-4
    r = subprocess.run([sys.executable, script, tmp_path/"ft", "go"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["resumed_from"] == "checkpoint-2" and s["steps"] == 4
    r = subprocess.run([sys.executable, script, tmp_path/"whole", "go"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]      # the same training, never interrupted (same process settings: same floats)
    a, b = (ST.output("finetune", tmp_path/d, "adapter")/"adapter_model.safetensors" for d in ("ft", "whole"))
    assert a.read_bytes() == b.read_bytes()  # resumed = never interrupted, byte for byte


def test_incomplete_checkpoint_of_an_older_save_is_skipped_and_named(tmp_path):
    "A checkpoint folder without trainer_state.json (saved in place by an older version, then killed): resume takes the one before and says so."
    import datasets, shutil
    from llmops_nb import trainer as T
    from llmops_nb.settings import FinetuneConfig
    conv = [{"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "Ten years."}]
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({"messages": [conv] * 8}))
    cfg = dict(max_steps=2, save_steps=2, eval_steps=0, logging_steps=1, warmup_steps=0.0)
    T.train(FinetuneConfig(**cfg), out_dir=str(tmp_path), dataset=dd, report_to="none")
    ck = tmp_path/"checkpoints"
    shutil.copytree(ck/"checkpoint-2", ck/"checkpoint-3"); (ck/"checkpoint-3"/"trainer_state.json").unlink()
    m = T.train(FinetuneConfig(**{**cfg, "max_steps": 4}), out_dir=str(tmp_path), dataset=dd, report_to="none")["training_summary"]
    assert m["resumed_from"] == "checkpoint-2" and m["steps"] == 4
    assert m["skipped_checkpoints"] == {"checkpoint-3": "no trainer_state.json"}


def last_line(r) -> str:
    "The one line `llmops` ends with (libraries may print progress bars to stderr before it); never a traceback."
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stderr.strip().splitlines()[-1]


# -- 1. corrupt outputs are not trusted, not cached, not reused ---------------------------------------------

KB = {"battery.md": "# Battery\n\nThe KB-5 module stores 5.1 kWh, of which 4.8 kWh is usable.\n\n## Warranty\n\nTen years or 6,000 cycles.\n",
      "charger.md": "# Charger\n\nThe KC-11 charges cars at up to 11 kW.\n\n## Modes\n\nSolar-only mode uses surplus PV.\n",
      "island.md": "# Island mode\n\nDuring a power cut the system switches to battery power in under 20 ms.\n"}
QUESTIONS = [{"question": "How much energy does the KB-5 store?", "answer": "5.1 kWh", "sources": ["battery.md"]},
             {"question": "How fast does the KC-11 charge a car?", "answer": "11 kW", "sources": ["charger.md"]},
             {"question": "Is there a fan?", "answer": "No.", "sources": ["fan.md"]}]  # a source the knowledge base lacks


def write_kb(root: Path, docs=KB) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items(): (root/name).write_text(text)
    return root


def rag_params(params, tmp_path, stages=("rag_index", "rag_eval"), **sections):
    kb = write_kb(tmp_path/"kb")
    (tmp_path/"q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return params({"model": "tiny-random", "wandb": {"mode": "disabled"}, "stages": list(stages),
                   "rag_index": {"docs": str(kb), "chunk_size": 200, "chunk_overlap": 20},
                   "rag_eval": {"questions": str(tmp_path/"q.jsonl"), "k": 2, "max_questions": 2, "max_new_tokens": 4}, **sections})


def test_damaged_index_is_not_used_cached_or_reused(params, tmp_path):
    f, root, said = rag_params(params, tmp_path), tmp_path/"runs", []
    r1 = P.run(f, progress=False, echo=said.append)
    assert any(l.startswith("warning:") and "fan.md (line 3)" in l for l in said), said  # sources the knowledge base lacks are named
    idx = runs.output(r1, "rag_index", "index")
    good, hit = (idx/"index.faiss").read_bytes(), r1["stages"]["rag_eval"]["metrics"]["hit_at_1"]
    damage(idx/"index.faiss")
    entries = lambda: sorted(p.name for p in (root/".cache").glob("rag_eval-*.json"))
    before = entries()
    r = llmops("run", f, "--stages", "rag_eval", "--quiet")  # rag_eval would read the damaged index from the cache
    err = one_line(r)
    assert r.returncode == 1 and f"{idx/'index.faiss'} changed since the stage wrote it" in err and "add it to --stages" in err, err
    assert entries() == before                     # nothing computed from it, so nothing cached
    (idx/"index.faiss").write_bytes(good)          # restored: the good result is served again
    r2 = P.run(f, stages=["rag_eval"], **QUIET)
    assert r2["stages"]["rag_eval"]["status"] == "cached" and r2["stages"]["rag_eval"]["metrics"]["hit_at_1"] == hit
    damage(idx/"index.faiss")                      # damaged again: a full run rebuilds the index, and takes over none of its vectors
    r3 = P.run(f, **QUIET)
    m = r3["stages"]["rag_index"]["metrics"]
    assert r3["stages"]["rag_index"]["status"] == "done" and m["kept"] == 0 and m["embedded"] == m["chunks"], m
    assert r3["stages"]["rag_eval"]["metrics"]["hit_at_1"] == hit
    r4 = P.run(f, stages=["rag_index"], force=True, **QUIET)  # --force: a full build although an intact index of the same documents exists
    m = r4["stages"]["rag_index"]["metrics"]
    assert m["kept"] == 0 and m["embedded"] == m["chunks"] and m["full_rebuild_reason"].startswith("--force"), m


def test_input_damaged_while_a_stage_runs_is_not_cached(params, tmp_path):
    "The index is damaged while rag_eval runs: the stage fails naming the file, and its result is not cached."
    import threading
    f, root = rag_params(params, tmp_path), tmp_path/"runs"
    r1 = P.run(f, stages=["rag_index"], **QUIET)
    idx, going, out = runs.output(r1, "rag_index", "index"), threading.Event(), {}
    def echo(line):
        if "rag_eval: running" in line: going.set()
    def work():
        try: P.run(f, progress=False, echo=echo)
        except P.StageError as e: out["error"] = str(e)
    t = threading.Thread(target=work); t.start()
    assert going.wait(300); time.sleep(0.5); damage(idx/"index.faiss")
    t.join(600)
    assert "index.faiss" in out.get("error", ""), out
    rec = runs.list_runs(root)[-1]
    assert rec["status"] == "failed" and rec["stages"]["rag_eval"]["status"] == "failed" and "index.faiss" in rec["stages"]["rag_eval"]["error"]
    assert not list((root/".cache").glob("rag_eval-*.json"))


def test_damaged_adapter_or_index_is_refused_by_every_reader(params, tmp_path):
    "Same-size damage or truncation of an adapter or an index: the stage, a kernel reading it and `llmops chat` each stop in one line naming the file."
    import shutil, papermill as pm
    kb = write_kb(tmp_path/"kb")
    f = params({"model": "tiny-random", "wandb": {"mode": "disabled"}, "stages": ["prepare", "finetune", "evaluate", "rag_index"],
                "prepare": {"max_examples": 30}, "finetune": {"max_steps": 2, "eval_steps": 0, "save_steps": 2},
                "evaluate": {"max_examples": 2, "max_new_tokens": 4, "n_boot": 20}, "rag_index": {"docs": str(kb), "chunk_size": 200, "chunk_overlap": 20}})
    rec = P.run(f, stages=["prepare", "finetune", "rag_index"], **QUIET)
    root, ft = tmp_path/"runs", Path(rec["stages"]["finetune"]["out_dir"])
    weights = ST.output("finetune", ft, "adapter")/"adapter_model.safetensors"
    good = weights.read_bytes(); damage(weights)
    r = llmops("run", f, "--stages", "evaluate", "--quiet")
    assert r.returncode == 1 and f"{weights} changed since the stage wrote it" in one_line(r)
    r = llmops("--run-root", root, "chat", rec["id"])                     # the chat reads the run's adapter
    assert r.returncode == 2 and f"{weights} changed since the stage wrote it" in last_line(r)
    with pytest.raises(pm.PapermillExecutionError) as e:                   # a stage kernel reading it
        pm.execute_notebook(str(ST.notebook("evaluate")), str(tmp_path/"ev.ipynb"), progress_bar=False, kernel_name=K.ensure_kernel(),
                            parameters={"prepare_dir": rec["stages"]["prepare"]["out_dir"], "finetune_dir": str(ft), "out_dir": str(tmp_path/"ev")})
    assert e.value.ename == "ConfigError" and "adapter_model.safetensors changed since the stage wrote it" in e.value.evalue
    weights.write_bytes(good)
    idx = runs.output(rec, "rag_index", "index")
    shutil.copytree(idx, tmp_path/"loose-index")                             # an index folder outside any run: its own checksums
    damage(idx/"index.faiss"); damage(tmp_path/"loose-index"/"index.faiss")
    r = llmops("--run-root", root, "chat", rec["id"])
    assert r.returncode == 2 and f"{idx/'index.faiss'} changed since the stage wrote it" in last_line(r)
    r = llmops("chat", "--index", tmp_path/"loose-index")
    assert r.returncode == 2 and f"{tmp_path/'loose-index'/'index.faiss'} changed since the index was saved" in last_line(r)
    shutil.copytree(ST.output("finetune", ft, "adapter"), tmp_path/"cut")   # a copy cut short, no manifest beside it
    (tmp_path/"cut"/"adapter_model.safetensors").write_bytes(good[:len(good) // 2])
    shutil.rmtree(tmp_path/"loose-index"); shutil.copytree(ST.output("rag_index", Path(rec["stages"]["rag_index"]["out_dir"]), "index", must_exist=False), tmp_path/"loose-index")
    (tmp_path/"loose-index"/"index.faiss").write_bytes((idx/"index.faiss").read_bytes())
    m = json.loads((tmp_path/"loose-index"/"meta.json").read_text()); m.pop("sha256"); (tmp_path/"loose-index"/"meta.json").write_text(json.dumps(m))
    r = llmops("chat", "--index", tmp_path/"loose-index", "--adapter", tmp_path/"cut")
    msg = last_line(r)
    assert r.returncode == 2 and f"adapter '{tmp_path/'cut'}': adapter_model.safetensors cannot be read" in msg, msg


# -- 2b. a full disk mid-stage: one line, the run failed, the notebook whole, what finished kept -----------------

def test_full_disk_mid_stage(params, tmp_path):
    kb = write_kb(tmp_path/"kb")
    f = params({"wandb": {"mode": "disabled"}, "stages": ["prepare", "rag_index"], "prepare": {"max_examples": 20},
                "rag_index": {"docs": str(kb), "chunk_size": 200, "chunk_overlap": 20, "previous_index": ""}})
    ipy = tmp_path/"ipython"/"profile_default"; ipy.mkdir(parents=True)       # the kernels' IPython history must not fill the user's own
    (ipy/"ipython_kernel_config.py").write_text("c.HistoryManager.enabled = False\n")
    env = {**os.environ, "IPYTHONDIR": str(tmp_path/"ipython")}
    # prepare's files stay under 24 KiB; rag_index's executed notebook outgrows it when its histogram is drawn
    r = subprocess.run([LLMOPS, "run", f, "--quiet"], capture_output=True, text=True, env=env, preexec_fn=limited(24 << 10), timeout=600)
    err = one_line(r)
    assert r.returncode == 1 and "stage 'rag_index' failed" in err and "File too large" in err and "rag_index.ipynb" in err, err
    rec = runs.list_runs(tmp_path/"runs")[-1]
    assert rec["status"] == "failed" and rec["stages"]["prepare"]["status"] == "done" and rec["stages"]["rag_index"]["status"] == "failed"
    import nbformat
    nb = nbformat.read(Path(rec["run_dir"])/"rag_index.ipynb", as_version=4)   # the last whole notebook, not half of one
    assert nb.cells and ST.verify(rec["stages"]["prepare"]["out_dir"]) == ""   # what finished is kept, intact
    r = llmops("--run-root", tmp_path/"runs", "resume", rec["id"], "--quiet", cwd=ROOT)  # room again: it goes on from there
    assert r.returncode == 0, r.stderr[-2000:]
    rec = runs.load_record(rec["run_dir"])
    assert rec["status"] == "done" and rec["stages"]["prepare"]["status"] == "done" and rec["stages"]["rag_index"]["status"] == "done"


def test_resume_resolves_paths_where_the_run_started(params, tmp_path, monkeypatch):
    "A run started in one folder with a relative data path, resumed from another, reads the same file (not the package's sample of that name)."
    a, b = tmp_path/"a", tmp_path/"b"; (a/"data").mkdir(parents=True); b.mkdir()
    mine = a/"data"/"instructions.jsonl"; mine.write_text("\n".join(DATA.read_text().splitlines()[:40]) + "\n")
    f = params({"wandb": {"mode": "disabled"}, "stages": ["prepare"], "prepare": {"data": "data/instructions.jsonl"}})
    monkeypatch.chdir(a)
    rec = P.run(f, **QUIET)
    rec["status"], rec["stages"]["prepare"]["status"] = "failed", "failed"; runs.save_record(rec)   # as if prepare had failed
    r = llmops("--run-root", tmp_path/"runs", "resume", rec["id"], "--quiet", cwd=b)
    assert r.returncode == 0, one_line(r)
    got = runs.load_record(rec["id"], tmp_path/"runs")
    assert got["stages"]["prepare"]["key"] == rec["stages"]["prepare"]["key"], got["config"]["params"]["prepare"]   # the same inputs: the same file


def test_resume_set_on_a_cached_stage_before_a_finished_one_is_refused(params, tmp_path):
    "Changing a stage this run took from the cache would rerun it under stages that already finished on its old output: refused up front, the run left as it was."
    f = params({"wandb": {"mode": "disabled"}, "model": "tiny-random", "stages": ["prepare", "finetune"], "prepare": {"max_examples": 40},
                "finetune": {"max_steps": 2, "eval_steps": 0, "save_steps": 2}})
    P.run(f, stages=["prepare"], **QUIET)
    rec = P.run(f, **QUIET)   # prepare from the cache, finetune run
    assert (rec["stages"]["prepare"]["status"], rec["status"]) == ("cached", "done")
    with pytest.raises(ConfigError, match="prepare.max_examples would be 30, but prepare finished in run"):
        P.resume(rec["id"], tmp_path/"runs", sets=["prepare.max_examples=30"], **QUIET)
    assert runs.load_record(rec["id"], tmp_path/"runs")["status"] == "done"


# -- 2c. resume takes --set, validated like run ----------------------------------------------------------------

def test_resume_with_set_fixes_a_parameter(params, tmp_path, capsys):
    bad = tmp_path/"bad.jsonl"; bad.write_text("\n".join(DATA.read_text().splitlines()[:30]) + "\n")
    f = params({"wandb": {"mode": "disabled"}, "stages": ["prepare"], "prepare": {"data": str(bad)}})
    rec = P.run(f, **QUIET)
    r = llmops("--run-root", tmp_path/"runs", "resume", rec["id"], "--set", "prepare.max_examples=20")
    assert r.returncode == 2 and "prepare finished in run" in one_line(r)   # a finished stage is not rewritten: the cache holds it
    rec["status"], rec["stages"]["prepare"]["status"] = "failed", "failed"; runs.save_record(rec)   # as if prepare had failed ...
    bad.write_text('{"instruction": "x"}\n')                 # ... on a data file that went bad after the run started
    r = llmops("--run-root", tmp_path/"runs", "resume", rec["id"], "--set", "prepare.max_examples=2.5")
    assert r.returncode == 2 and "max_examples = 2.5 is float, expected int" in one_line(r)   # checked like `run`
    r = llmops("--run-root", tmp_path/"runs", "resume", rec["id"], "--set", f"prepare.data={DATA}", "--set", "prepare.max_examples=20", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = runs.load_record(rec["run_dir"])
    assert rec["status"] == "done" and rec["stages"]["prepare"]["metrics"]["sizes"]["train"] == 16 and rec["overrides"][-1] == "prepare.max_examples=20"


# -- 4. one process per run, one execution per stage key, atomic cache ---------------------------------------------

def wait_for(cond, timeout=300, every=0.2):
    t = time.time()
    while time.time() - t < timeout:
        if (v := cond()): return v
        time.sleep(every)
    raise AssertionError("timed out")


def test_run_lock_refuses_a_second_resume_and_a_killed_run_is_interrupted_then_taken_over(params, tmp_path):
    from llmops_nb.trainer import last_checkpoint
    f = params({"model": "tiny-random", "wandb": {"mode": "disabled"}, "stages": ["prepare", "finetune"], "prepare": {"max_examples": 30},
                "finetune": {"max_steps": 100000, "save_steps": 4, "eval_steps": 0, "logging_steps": 4, "max_length": 256}})  # far longer than the test waits (400 steps take 6 s here)
    root = tmp_path/"runs"
    p = subprocess.Popen([LLMOPS, "run", f, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kernel = []
    try:
        rec = wait_for(lambda: next((r for r in runs.list_runs(root) if r["stages"]["finetune"].get("status") == "running"
                                     and list(Path(r["stages"]["finetune"]["out_dir"]).glob("checkpoints/checkpoint-*"))), None))
        r = llmops("--run-root", root, "resume", rec["id"])       # two trainers in one folder: refused
        assert r.returncode == 2 and f"run {rec['id']} is being run by process {p.pid}" in one_line(r), r.stderr
        assert p.poll() is None
        kernel[:] = psutil.Process(p.pid).children(recursive=True)  # jupyter_client starts it in a session of its own
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()               # kill -9, the runner ...
    psutil.wait_procs(kernel, timeout=60)                         # ... and its kernel, which follows its parent within a second
    assert runs.load_record(rec["run_dir"])["status"] == "running"  # what the dead process left behind ...
    r = llmops("--run-root", root, "status", rec["id"])             # ... is not shown as running
    assert r.returncode == 0 and f"run {rec['id']}  interrupted" in r.stdout and "finetune   interrupted" in r.stdout, r.stdout
    assert "interrupted" in llmops("--run-root", root, "list").stdout
    last = last_checkpoint(Path(rec["stages"]["finetune"]["out_dir"])/"checkpoints")
    steps = int(last.name.split("-")[1]) + 4                        # resume, and stop 4 steps after where it was cut
    r = llmops("--run-root", root, "resume", rec["id"], "--set", f"finetune.max_steps={steps}", "--quiet")
    assert r.returncode == 0 and "was interrupted" in r.stdout and "taking it over" in r.stdout, r.stderr[-2000:]
    rec = runs.load_record(rec["run_dir"])
    s = rec["stages"]["finetune"]["metrics"]["training_summary"]
    assert rec["status"] == "done" and s["steps"] == steps and s["resumed_from"] == last.name, s
    assert rec["interruptions"][0]["pid"] == p.pid and rec["stages"]["prepare"]["status"] == "done"


def test_ctrl_c_is_one_line_and_leaves_the_run_resumable(params, tmp_path):
    f = params({"model": "tiny-random", "wandb": {"mode": "disabled"}, "stages": ["prepare", "finetune"], "prepare": {"max_examples": 30},
                "finetune": {"max_steps": 100000, "save_steps": 100000, "eval_steps": 0, "logging_steps": 4, "max_length": 256}})  # it cannot end first
    p = subprocess.Popen([LLMOPS, "run", f, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal runs it: a shell's background job (CI's, say) ignores Ctrl-C
    rec = wait_for(lambda: next((r for r in runs.list_runs(tmp_path/"runs") if r["stages"]["finetune"].get("status") == "running"), None))
    steps = Path(rec["run_dir"])/".progress"/"finetune.json"       # what the stage reports: training has begun, the kernel is busy
    wait_for(lambda: steps.exists() and json.loads(steps.read_text() or "{}").get("done", 0) >= 1)
    kernel = psutil.Process(p.pid).children(recursive=True)
    os.killpg(p.pid, signal.SIGINT)                                 # what Ctrl-C in a terminal sends (the kernel is in a session of its own)
    try: out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:                               # not stopped: stop it, and say so
        os.killpg(p.pid, signal.SIGKILL); [k.kill() for k in kernel]; out, err = p.communicate()
        raise AssertionError(f"the run went on after Ctrl-C: {err[-2000:]}") from None
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == f"llmops: run {rec['id']} interrupted; `llmops resume {rec['id']}` continues from where it stopped", err
    assert runs.load_record(rec["run_dir"])["status"] == "interrupted"


def test_two_identical_runs_execute_each_stage_once(params, tmp_path):
    kb = write_kb(tmp_path/"kb")
    f = params({"wandb": {"mode": "disabled"}, "stages": ["prepare", "rag_index"], "prepare": {"max_examples": 20},
                "rag_index": {"docs": str(kb), "chunk_size": 200, "chunk_overlap": 20}})
    ps = [subprocess.Popen([LLMOPS, "run", f, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    recs = runs.list_runs(tmp_path/"runs")
    for s in ("prepare", "rag_index"):
        st = sorted((r["stages"][s]["status"], r["stages"][s].get("cached_from") or r["id"]) for r in recs)
        assert [x[0] for x in st] == ["cached", "done"] and st[0][1] == st[1][1], st   # one executed it, the other took its result
        assert len(list((tmp_path/"runs"/".cache").glob(f"{s}-*.json"))) == 1


READER = """
import json, sys
from llmops_nb import pipeline as P
root, n, bad = sys.argv[1], int(sys.argv[2]), 0
for _ in range(n):
    try: json.loads(P._cache_file(root, "prepare", "k").read_text())
    except FileNotFoundError: pass
    except ValueError: bad += 1
print(bad)
"""


def test_cache_entries_are_written_atomically_and_an_empty_one_is_a_miss(params, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), "1000"], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    i = 0
    while any(p.poll() is None for p in procs):
        P.cache_put(tmp_path, "prepare", "k", {"run_id": f"r{i}", "out_dir": str(tmp_path), "notebook": "x" * 4000}); i += 1
    assert [int(p.stdout.read()) for p in procs] == [0, 0, 0] and i > 10   # 3,000 reads during the writes: none saw half an entry
    f = params({"wandb": {"mode": "disabled"}, "stages": ["prepare"], "prepare": {"max_examples": 20}})
    P.run(f, **QUIET)   # the cache entry a crash then empties
    entry = next((tmp_path/"runs"/".cache").glob("prepare-*.json")); entry.write_text("")   # a crash mid-write, by an older writer
    said = []
    r2 = P.run(f, progress=False, echo=said.append)
    assert r2["stages"]["prepare"]["status"] == "done" and any("is unreadable; running prepare again" in l for l in said), said
    assert json.loads(entry.read_text())["run_id"] == r2["id"]


# -- 5. bad input fails before any kernel starts, in one line that says where ------------------------------------

GOOD_LINES = DATA.read_text().splitlines()[:10]


@pytest.mark.parametrize("line,msg", [
    ('{"instruction": "Which warranty?", "output": null}', "'output' is null; expected a non-empty string"),
    ('{"instruction": "Which warranty?", "output": ""}', "'output' is empty; expected a non-empty string"),
    ('{"instruction": "Caf\xe9 warranty?", "output": "Ten years."}', "not UTF-8 text (byte 0xe9"),
    ('{"question": "Which warranty?"}', "unknown record shape"),
], ids=["null output", "empty output", "not utf-8", "no known shape"])
def test_bad_data_record_fails_before_any_kernel(params, tmp_path, capsys, line, msg):
    from llmops_nb.cli import main
    data = tmp_path/"d.jsonl"; data.write_bytes(("\n".join(GOOD_LINES) + "\n").encode("utf-8") + (line + "\n").encode("latin-1"))
    f = params({"stages": ["prepare", "finetune"], "prepare": {"data": str(data)}})
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{data}:11: {msg}" in err and str(f) in err, err
    assert not (tmp_path/"runs").exists()


def test_bad_questions_file_fails_before_fine_tuning(params, tmp_path, capsys):
    from llmops_nb.cli import main
    f = rag_params(params, tmp_path, stages=("prepare", "finetune", "rag_index", "rag_eval"))
    (tmp_path/"q.jsonl").write_text('{"question": "Warranty?"}\n{"answer": "a question is missing"}\n')
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path/'q.jsonl'}:2: expected an object with a non-empty string 'question'" in err, err
    assert not (tmp_path/"runs").exists()


def test_knowledge_base_without_readable_documents_names_them(params, tmp_path, capsys):
    from llmops_nb.cli import main
    f = rag_params(params, tmp_path)
    for name in KB: (tmp_path/"kb"/name).write_bytes(("R\xe9sum\xe9: " + KB[name]).encode("cp1252"))  # saved by an old Windows editor
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no readable document: battery.md (not UTF-8 text), charger.md (not UTF-8 text), island.md (not UTF-8 text)" in err and err.count("\n") == 0, err
    assert not (tmp_path/"runs").exists()


@pytest.mark.parametrize("content,msg", [(b"", "the params file is empty"), (b"# only a comment\n", "the params file is empty"),
                                          (bytes(range(256)), "p.yaml:2: not UTF-8 text (byte 0x80); expected a UTF-8 YAML params file"), (b"{}", "no stages to run")],
                         ids=["empty", "comment only", "binary", "empty mapping"])
def test_empty_or_binary_params_file(tmp_path, capsys, content, msg):
    from llmops_nb.cli import main
    f = tmp_path/"p.yaml"; f.write_bytes(content)
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and err.count("\n") == 0, err


def test_unknown_hub_model_or_metric_fails_at_once(params, tmp_path, capsys):
    from llmops_nb.cli import main
    from llmops_nb.params import load_params
    f = params({"model": "HuggingFaceTB/SmolLM9-7B-Nowhere", "stages": ["prepare", "finetune"], "prepare": {"max_examples": 20}})
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="is not in the local Hugging Face cache .* and HF_HUB_OFFLINE is set"): load_params(f)
    assert time.perf_counter() - t < 1.0
    assert main(["run", str(f)]) == 2 and not (tmp_path/"runs").exists()
    capsys.readouterr()
    f = params({"stages": ["prepare", "finetune", "evaluate"], "evaluate": {"metrics": ["rougeL", "blue"]}})
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "evaluate: metric 'blue': unknown" in err and err.count("\n") == 0 and not (tmp_path/"runs").exists(), err


def test_list_into_a_closed_pipe(tmp_path):
    "`llmops list | head -1` over more runs than a pipe holds: no BrokenPipeError traceback."
    root = tmp_path/"runs"
    for i in range(1500):
        d = root/f"20260101-{i:06d}-abcd"; d.mkdir(parents=True)
        (d/"run.json").write_text(json.dumps({"id": d.name, "status": "done", "params_file": "params/smoke.yaml", "run_dir": str(d),
                                              "stages": {"prepare": {"status": "done"}}}))
    r = subprocess.run(["bash", "-c", f"set -o pipefail; '{LLMOPS}' --run-root '{root}' list | head -1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("20260101-000000-abcd") and r.stderr == "", r.stderr[-2000:]


# -- 6. secrets anywhere inside strings and lists --------------------------------------------------------------

@pytest.mark.parametrize("sets", [["wandb.tags=[demo, hf_" + "A1b2C3d4" * 5 + "]"],
                                  ["prepare.system_prompt=You call the API with sk-" + "proj" + "x" * 30 + " first."]],
                         ids=["token in a list", "key in a prompt"])
def test_secret_inside_a_value_is_refused(params, tmp_path, capsys, sets):
    from llmops_nb.cli import main
    f = params({"stages": ["prepare"], "prepare": {"max_examples": 20}})
    assert main(["run", str(f), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert "looks like it contains a secret" in err and err.count("\n") == 0, err
    assert not (tmp_path/"runs").exists()  # nothing written anywhere: no run.json, notebook, dataset or W&B file


# -- 3. no data reaches a page as markup; 7. the chat caps what users send ------------------------------------------

X1 = '<img src=x onerror="window.__xss=1">'
X2 = "<script>window.__xss=2</script>"
X3 = "[click me](javascript:window.__xss=3)"
from conftest import CHROMIUM  # noqa: E402
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def xss_pages(tmp_path_factory):
    "A whole run (and a second for the compare page) whose data, names, parameters, documents, questions and feedback all carry markup."
    from llmops_nb import compare, feedback as F, page
    tmp = tmp_path_factory.mktemp("xss")
    data = tmp/"data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Q{i} {X1}", "input": X3, "output": f"A{i} {X2}"}) + "\n" for i in range(24)))
    kb = write_kb(tmp/"kb", {"xss.md": f"# Title {X1}\n\n## Heading {X2}\n\nThe KB-5 module stores 5.1 kWh. {X3}\n", "battery.md": KB["battery.md"]})
    (tmp/"q.jsonl").write_text(json.dumps({"question": f"How much does the KB-5 store? {X1}", "answer": f"5.1 kWh {X2}", "sources": ["xss.md"]}) + "\n")
    f = tmp/"p.yaml"
    f.write_text(yaml.safe_dump({"name": f"run {X2}", "model": "tiny-random", "run_root": str(tmp/"runs"), "wandb": {"mode": "disabled"},
        "stages": ["prepare", "evaluate", "rag_index", "rag_eval", "report"],   # evaluate scores the base model: no adapter needed here
        "prepare": {"data": str(data)},
        "evaluate": {"max_examples": 2, "max_new_tokens": 4, "n_boot": 20},
        "rag_index": {"docs": str(kb), "chunk_size": 200, "chunk_overlap": 20},
        "rag_eval": {"questions": str(tmp/"q.jsonl"), "k": 2, "max_new_tokens": 4}}))
    old = os.environ.get("LLMOPS_FEEDBACK_DB"); os.environ["LLMOPS_FEEDBACK_DB"] = str(tmp/"fb.db")  # the report's kernel reads it
    try:
        rec = P.run(f, sets=[f"prepare.system_prompt=Be brief. {X1}"], **QUIET)
        rid = F.record(f"Why? {X1}", f"Because {X2}", ["xss.md"], run_id=rec["id"], db=tmp/"fb.db")
        F.rate(rid, -1, correction=f"{X2} {X3}", comment=X1, db=tmp/"fb.db")
        page.render(rec["run_dir"])                     # `llmops report`: the feedback section, and every stage notebook as HTML
        other = P.run(f, sets=[f"name=other {X2}", f"prepare.system_prompt=Be brief. {X1}"], stages=["prepare"], **QUIET)  # cached: no kernel
        cmp = compare.compare([rec["id"], other["id"]], tmp/"runs", tmp/"compare.html", echo=lambda *a: None)
    finally:
        if old is None: os.environ.pop("LLMOPS_FEEDBACK_DB", None)
        else: os.environ["LLMOPS_FEEDBACK_DB"] = old
    run_dir = Path(rec["run_dir"])
    pages = [run_dir/"report.html", run_dir/"report"/"report.html", *sorted((run_dir/"report"/"notebooks").glob("*.html")), cmp]
    return rec, pages


def test_every_page_shows_data_as_text(xss_pages):
    from bs4 import BeautifulSoup
    rec, pages = xss_pages
    names = {p.name for p in pages}
    assert {"prepare.html", "evaluate.html", "rag_index.html", "rag_eval.html", "report.html", "compare.html"} <= names, names
    for p in pages:
        soup = BeautifulSoup(p.read_text(), "html.parser")
        for el in soup.find_all(True):
            bad = [a for a in el.attrs if a.lower().startswith("on")]
            assert not bad, (p.name, el.name, bad)
            for a in ("href", "src"): assert not str(el.get(a, "")).strip().lower().startswith("javascript:"), (p.name, el)
        assert not [s for s in soup.find_all("script") if "__xss" in s.get_text()], p.name
        assert "window.__xss" in soup.get_text(), p.name       # the data is there, as text
    report = BeautifulSoup(pages[0].read_text(), "html.parser").get_text()
    for shown in (f"run {X2}", f"Why? {X1}", f"How much does the KB-5 store? {X1}", f"5.1 kWh {X2}"): assert shown in report, shown


def _browser():
    if not Path(CHROMIUM).exists(): missing(f"no chromium at {CHROMIUM}")
    pytest.importorskip("playwright.sync_api")  # a dev requirement
    from playwright.sync_api import sync_playwright
    return sync_playwright()


def test_no_page_runs_injected_markup_in_a_browser(xss_pages, tmp_path):
    rec, pages = xss_pages
    with _browser() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
        for p in pages:
            page, dialogs = ctx.new_page(), []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(p.as_uri()); page.wait_for_load_state("load")
            for a in page.locator("a").all():                    # a javascript: link would be one click away
                assert not (a.get_attribute("href") or "").lower().startswith("javascript:"), p.name
            assert page.evaluate("window.__xss") is None and not dialogs, p.name
            assert page.evaluate("document.querySelectorAll('[onerror],[onload],[onclick],[onmouseover]').length") == 0, p.name
            page.close()
        ctx.close()


def test_chat_page_escapes_and_caps_what_users_send(tmp_path):
    import socket
    from gradio_client import Client
    from llmops_nb import chat as C, feedback as F, vectorstore as V
    kb = write_kb(tmp_path/"kb", {"xss.md": f"# Title {X1}\n\n## Heading {X2}\n\nThe KB-5 module stores 5.1 kWh. {X3}\n", "battery.md": KB["battery.md"]})
    V.build_index(kb, tmp_path/"index", chunk_size=200, chunk_overlap=20)
    db = tmp_path/"fb.db"
    bot = C.Answerer(tmp_path/"index", "tiny-random", max_new_tokens=4, run_id=f"run {X2}")
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    app = C.serve(bot, "127.0.0.1", port, db=db, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        t = time.perf_counter()
        answer, _, status = client.predict("x" * 100_000, api_name="/ask")   # past the browser's cap: the server checks too
        assert time.perf_counter() - t < 10 and answer == ""
        assert status == "Not asked: the question is 100,000 characters long; the limit is 4,000: shorten it.", status
        assert not db.exists() or len(F.load(db)) == 0          # nothing stored
        with _browser() as pw:
            ctx = pw.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
            page, dialogs = ctx.new_page(), []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.locator("#question textarea").get_attribute("maxlength") == "4000"
            page.locator("#question textarea").fill(f"How much does the KB-5 store? {X1} {X2}")
            page.locator("#ask").click()
            page.locator("#status").get_by_text("Answered").wait_for(timeout=120_000)
            shown = page.locator("#sources").inner_text()
            assert "xss.md" in shown and f"Heading {X2}" in shown, shown     # a heading with markup, shown as text
            assert page.evaluate("window.__xss") is None and not dialogs
            assert page.evaluate("document.querySelectorAll('#sources img, #answer img, [onerror]').length") == 0
            ctx.close()
    finally: app.close()
    assert len(F.load(db)) == 1 and F.load(db)["question"][0] == f"How much does the KB-5 store? {X1} {X2}"
