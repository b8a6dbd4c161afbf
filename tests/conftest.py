import json, os, sys, subprocess
from pathlib import Path
import pytest, yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)  # params files use project-relative paths


@pytest.fixture(scope="session")
def preference_run(tmp_path_factory):
    "One run on the tiny model with dpo and kto stages after finetune, then evaluate and report (shared by test_pipeline and test_report)."
    from llmops_nb import pipeline as P
    d = tmp_path_factory.mktemp("preference")
    p = {"run_root": str(d/"runs"), "wandb": {"mode": "offline"}, "model": "tiny-random",
         "stages": ["prepare", "finetune", "dpo", "kto", "evaluate", "report"],
         "prepare": {"max_examples": 40}, "finetune": {"max_steps": 2, "eval_steps": 0, "save_steps": 2},
         "dpo": {"max_pairs": 2}, "kto": {"max_examples": 4}, "evaluate": {"max_examples": 3, "max_new_tokens": 4, "n_boot": 50}}
    (d/"p.yaml").write_text(yaml.safe_dump(p))
    return P.run(d/"p.yaml", progress=False)


@pytest.fixture(scope="session")
def smoke_cli(tmp_path_factory):
    "params/smoke.yaml run once through the CLI into a temp runs folder, with a second quality gate (shared by test_pipeline and test_report): (the finished process, run.json)."
    root = tmp_path_factory.mktemp("smoke")/"runs"
    r = llmops("--run-root", root, "run", ROOT/"params"/"smoke.yaml", "--set", 'evaluate.gates={"rougeL": 0.0}', "--quiet")  # --run-root over the file's run_root
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads(next(root.glob("2*/run.json")).read_text())


@pytest.fixture
def params(tmp_path):
    "Write a params file under tmp_path (runs go to tmp_path/runs); returns its path."
    def make(d=None, name="p.yaml", **kw):
        p = {"run_root": str(tmp_path/"runs"), "wandb": {"mode": "offline"}, **(d or {}), **kw}
        f = tmp_path/name
        f.write_text(yaml.safe_dump(p))
        return f
    return make


def llmops(*args, cwd=ROOT, timeout=900):
    "Run the installed `llmops` command; returns CompletedProcess."
    exe = Path(sys.executable).parent/"llmops"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


SHARED_RUNS = {"smoke_cli", "preference_run"}  # session fixtures: the tests that use them share one xdist worker

def pytest_collection_modifyitems(config, items):
    # `make test` runs pytest on two workers (`-n 2 --dist loadgroup`): a module's tests stay on one worker, so each
    # module-scoped fixture (a server, a run) is built once; the tests that read one shared run go with each other
    for it in items:
        group = "shared-runs" if SHARED_RUNS & set(it.fixturenames) else it.path.stem
        it.add_marker(pytest.mark.xdist_group(group))


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's chromium, driven by Playwright

@pytest.fixture
def browser():
    "Debian's chromium and Playwright for Python, or a skip that says what is missing."
    reason = None
    if not Path(CHROMIUM).exists(): reason = f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: reason = reason or "playwright is not installed (pip install playwright; no `playwright install` needed)"
    if reason: missing(reason)
    return CHROMIUM


def missing(reason):
    "A test's system requirement is missing: skipped here, failed in CI (`CI` set), where .ci/run installs it and a skip would hide the test."
    if os.environ.get("CI"): pytest.fail(f"{reason}; .ci/run installs it in CI")
    print(f"test skipped: {reason}"); pytest.skip(reason)
