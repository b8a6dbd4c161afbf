import os, sys, subprocess
from pathlib import Path
import pytest, yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)  # params files use project-relative paths


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


def pytest_configure(config):
    # LangChain's standard store suite (tests/test_stores.py) has async tests without markers: let pytest-asyncio run them
    if hasattr(config.option, "asyncio_mode"): config.option.asyncio_mode = "auto"


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's chromium, driven by Playwright

@pytest.fixture
def browser():
    "Debian's chromium and Playwright for Python, or a skip that says what is missing."
    reason = None
    if not Path(CHROMIUM).exists(): reason = f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: reason = reason or "playwright is not installed (pip install playwright; no `playwright install` needed)"
    if reason:
        print(f"browser test skipped: {reason}"); pytest.skip(reason)
    return CHROMIUM
