"""Issue 13, case by case: nothing corrupt is trusted, nothing half-written blocks a run, no injected markup runs.

Failures are made for real: files damaged on disk, processes killed with SIGKILL, a full disk as a
process whose files may not grow (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG).
"""
import json, os, resource, signal, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from conftest import llmops, ROOT
from llmops_nb import pipeline as P, runs, stages as ST
from llmops_nb.core import ConfigError

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
    assert r.returncode == 0, r.stderr[-2000:]
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
