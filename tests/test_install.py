"`pip install .` (not editable) into a new venv runs the smoke pipeline from a folder holding only its params file and the data it names."
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import yaml
from conftest import ROOT


def _make_var(name) -> str:
    "A variable of the Makefile (the one place the torch pin and the packaged models are declared)."
    m = re.search(rf"^{name}\s*[?:]?=\s*(.+)$", (ROOT/"Makefile").read_text(), re.M)
    return m.group(1).strip()


def test_wheel_install_runs_smoke_pipeline(tmp_path):
    venv, bin_ = tmp_path/"venv", tmp_path/"venv"/"bin"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(bin_/"python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + _make_var("TORCH").split(), check=True)
    subprocess.run(pip + [str(ROOT)], check=True)  # a wheel built from the checkout, not an editable install
    subprocess.run(pip + ["--no-deps", *_make_var("MODELS").split()], check=True)
    proj = tmp_path/"project"
    proj.mkdir()
    shutil.copy(ROOT/"params"/"smoke.yaml", proj/"smoke.yaml")
    p = yaml.safe_load((proj/"smoke.yaml").read_text())
    for path in (p["prepare"]["data"], p["rag_index"]["docs"], p["rag_eval"]["questions"]):  # the data it names, nothing else
        (proj/path).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT/path).is_dir() else shutil.copy)(ROOT/path, proj/path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LLMOPS_PROJECT_ROOT")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PATH=f"{bin_}:{env['PATH']}")
    where = subprocess.run([str(bin_/"python"), "-c", "import llmops_nb, llmops_nb.stages as s; print(llmops_nb.__file__); print(s.pipeline_dir())"],
                           cwd=proj, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where  # the installed copy, notebooks included
    r = subprocess.run([str(bin_/"llmops"), "run", "smoke.yaml", "--quiet"], cwd=proj, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(next((proj/"runs").glob("*/run.json")).read_text())
    assert rec["status"] == "done" and all(s["status"] == "done" for s in rec["stages"].values()), rec["stages"]
    assert (Path(rec["run_dir"])/"report.html").exists()
