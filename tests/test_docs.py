"The library notebooks read as documentation: they carry the outputs of their example cells, and only outputs that read the same on any machine."
import json, sys
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
import outputs as O  # noqa: E402

# notebooks whose examples show nothing that is the same on every machine (servers on random ports, run ids,
# clock times, a GPU-only engine) or that only define a page
BARE = {"10_launch.ipynb", "25_chat.ipynb", "31_deploy.ipynb", "34_webchat.ipynb", "36_vllm_engine.ipynb", "52_cleanup.ipynb",
        "54_decision.ipynb", "40_endpoints.ipynb", "41_openai_ft.ipynb"}


def outputs(fn):
    return [(i, o) for i, c in enumerate(json.loads(Path(fn).read_text())["cells"]) for o in c.get("outputs", [])]


def test_library_notebooks_carry_their_example_outputs():
    bare = {p.name for p in O.library_notebooks() if not outputs(p)}
    assert bare <= BARE, f"notebooks without outputs (run `make outputs NB=...`): {sorted(bare - BARE)}"
    assert len(O.library_notebooks()) - len(bare) >= 35


def test_kept_outputs_are_the_same_on_any_machine():
    bad = [(p.name, i, O.why_dropped(o)) for p in O.library_notebooks() for i, o in outputs(p) if O.why_dropped(o)]
    assert not bad, bad


@pytest.mark.parametrize("name", ["13_documents", "20_report"])  # a few seconds each; 20_report: tables whose ids pandas would randomise
def test_outputs_are_current(tmp_path, name):
    "Running a notebook again gives the outputs it carries (a stale example output would mislead)."
    src = ROOT/"nbs"/f"{name}.ipynb"
    dest = tmp_path/f"{name}.ipynb"
    O.run(src, dest)
    text = lambda fn: [(i, O._text(o)) for i, o in outputs(fn)]
    assert text(src) and text(dest) == text(src)


def test_every_notebook_is_valid_nbformat():
    "Every notebook validates against nbformat's schema: GitHub, nbconvert and JupyterLab refuse an invalid one (a cell_type of 'md', say), where nbdev does not."
    import nbformat
    bad = []
    for p in sorted((ROOT/"nbs").rglob("*.ipynb")):
        try: nbformat.validate(nbformat.read(p, as_version=4))
        except nbformat.ValidationError as e: bad.append(f"{p.relative_to(ROOT)}: {e.message[:120]}")
    assert not bad, bad
