"""The judge (issue 15, part 3): the project's own server (tiny-random behind `llmops serve`, the endpoint tests' fixture) judges
rag_eval's and evaluate's answers; what it sends back is mostly not a verdict, and every one of those is counted, none dropped.
Also: evaluate and the run's openai_finetune job (offline: submitted false), and malformed endpoint specs refused before a kernel."""
import json
from pathlib import Path
import pytest

pytest.importorskip("openai")
from conftest import llmops  # noqa: E402
from test_endpoints import served  # noqa: E402,F401  (the fixture: llmops serve for a tiny-random run, on a loopback port)
from llmops_nb import judge as J, report as R, stages as ST  # noqa: E402
from llmops_nb.core import read_jsonl, read_metrics  # noqa: E402


def _execute(stage, path, **parameters):
    import papermill as pm
    from llmops_nb.kernels import ensure_kernel
    return pm.execute_notebook(str(ST.notebook(stage)), str(path), kernel_name=ensure_kernel(), progress_bar=False, parameters=parameters)


def _counted(rows, col, entry):
    "The stage's counts against the raw verdicts in its table, recounted here; each score is the parse of its raw verdict, in 1-5."
    raws = [r[f"{col}_raw"] for r in rows if r.get(f"{col}_raw") is not None]
    scores = [r[col] for r in rows if r.get(f"{col}_raw") is not None]
    assert raws and all(isinstance(x, str) for x in raws)
    assert scores == [J.parse(x) for x in raws]
    assert all(1 <= s <= 5 for s in scores if s is not None)
    unread = sum(s is None for s in scores)
    assert (entry["unparsed"], entry["n"]) == (unread, len(raws) - unread)
    if entry["n"]: assert 1 <= entry["ci"][0] <= entry["mean"] <= entry["ci"][1] <= 5
    else: assert entry["mean"] is None
    return unread


def test_rag_eval_judged_by_the_server_counts_every_unreadable_verdict(served, tmp_path):
    judge = {"base_url": served["url"], "model": "test-aaaa"}
    _execute("rag_eval", tmp_path/"rag.ipynb", out_dir=str(tmp_path/"rag"), max_questions=4, max_new_tokens=8, k=2,
             request_cache=str(tmp_path/"cache"), judge=judge)
    m = read_metrics(tmp_path/"rag")
    j, rows = m["judge"], [r for _, r in read_jsonl(ST.output("rag_eval", tmp_path/"rag", "answers"))]
    assert j["model"] == f"test-aaaa at {served['url']}" and len(rows) == 4
    n_ref = sum(bool(r["reference"]) for r in rows)
    unread = _counted(rows, "judge_correctness", j["correctness"]) + _counted(rows, "judge_faithfulness", j["faithfulness"])
    assert j["unparsed"] == unread and j["verdicts"] == n_ref + len(rows) == j["usage"]["requests"]
    assert j["unparsed"] > 0 and len(j["correctness"]["unparsed_examples"]) == min(3, j["correctness"]["unparsed"])
    a = j["agreement"]["faithfulness_vs_groundedness"]
    assert a["n"] == j["faithfulness"]["n"] and a["metric_good_at"] == 0.5
    executed = (tmp_path/"rag.ipynb").read_text()
    assert f"{unread} of {j['verdicts']} verdicts unreadable" in executed
    assert b"judge/faithfulness/unparsed" in _wandb_run(tmp_path/"rag")  # metrics.json flows into the stage's W&B summary
    tables = _report_judge({"stages": {"rag_eval": {"status": "done", "out_dir": str(tmp_path/"rag")}}})
    assert tables[0] == [[k, _graded(e), str(e["n"]), str(e["unparsed"])] for k, e in (("correctness", j["correctness"]), ("faithfulness", j["faithfulness"]))]
    assert [r[0] for r in tables[1]] == list(j["agreement"]) and tables[1][-1][:2] == ["faithfulness_vs_groundedness", str(a["n"])]
    assert [r[0] for r in tables[2]] == (j["correctness"]["unparsed_examples"] + j["faithfulness"]["unparsed_examples"])[:3]  # verbatim, as text


def _graded(e) -> str:
    "What the section must show for a judge summary, spelled out here rather than taken from the report."
    return f"{e['mean']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e["n"] else ""


def _report_judge(rec) -> list:
    "The report's Judge section for `rec`, as the rows of each table it displays (rendered to HTML as in the report notebook)."
    from bs4 import BeautifulSoup
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    InteractiveShell.instance()
    with capture_output() as cap: R.show_judge(rec)
    pages = [o.data["text/html"] for o in cap.outputs if "text/html" in o.data]
    return [[[td.get_text() for td in tr.find_all("td")] for tr in BeautifulSoup(h, "html.parser").find("tbody").find_all("tr")] for h in pages]


def test_evaluate_judged_beside_an_offline_openai_finetune_job(served, tmp_path, monkeypatch):
    "openai_finetune offline (submitted false): evaluate says so in one line and goes on, judged; asked for explicitly, it fails in one line."
    import papermill as pm
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    oft = tmp_path/"oft"
    _execute("openai_finetune", tmp_path/"oft.ipynb", out_dir=str(oft), max_tokens_per_example=4096)
    ST.write_manifest("openai_finetune", oft)  # as the runner leaves it: evaluate verifies job.json
    assert json.loads(ST.output("openai_finetune", oft, "job").read_text())["submitted"] is False
    ev = tmp_path/"ev"
    common = dict(openai_finetune_dir=str(oft), metrics=["rougeL", "token_f1"], max_examples=3, max_new_tokens=8, n_boot=50,
                  request_cache=str(tmp_path/"cache"))
    _execute("evaluate", tmp_path/"ev.ipynb", out_dir=str(ev), judge={"base_url": served["url"], "model": "test-aaaa"}, **common)
    m = read_metrics(ev)
    assert "endpoint_vs" not in m and "usage" not in m  # no fine-tuned model: nothing scored in its place
    executed = (tmp_path/"ev.ipynb").read_text()
    assert "openai_finetune: no fine-tuned model to evaluate, submitted: false (submit is false" in executed
    rows = [r for _, r in read_jsonl(ST.output("evaluate", ev, "predictions"))]
    j = m["judge"]
    assert set(j["correctness"]) == {"base"} and j["verdicts"] == 3
    assert j["unparsed"] == _counted(rows, "judge_base", j["correctness"]["base"])
    assert set(j["agreement"]) == {"rougeL", "token_f1"} and b"judge/unparsed" in _wandb_run(ev)
    tables = _report_judge({"stages": {"evaluate": {"status": "done", "out_dir": str(ev)}}})
    b = j["correctness"]["base"]
    assert tables[0] == [["correctness of base", _graded(b), str(b["n"]), str(b["unparsed"])]]
    assert [r[0] for r in tables[1]] == ["rougeL", "token_f1"]
    with pytest.raises(pm.PapermillExecutionError) as e:
        _execute("evaluate", tmp_path/"ev2.ipynb", out_dir=str(tmp_path/"ev2"), endpoint="openai_finetune", **common)
    assert e.value.ename == "ConfigError" and e.value.evalue.startswith(
        "evaluate: endpoint: openai_finetune, but the openai_finetune stage has no fine-tuned model: submitted: false (submit is false")
    assert "\n" not in e.value.evalue


def _wandb_run(out: Path) -> bytes:
    "The stage's offline W&B run file (this wandb writes no wandb-summary.json offline): its summary keys are in it as strings."
    rec = json.loads((out/"wandb_run.json").read_text())
    return next(Path(rec["dir"]).glob("*.wandb")).read_bytes()


@pytest.mark.parametrize("section, msg", [
    ({"rag_eval": {"judge": "gpt-4.1-mini"}}, "rag_eval.judge: 'gpt-4.1-mini' is not an endpoint model; expected openai:NAME or {base_url: ..., model: ...}"),
    ({"rag_eval": {"endpoint": {"base_url": "localhost:8000/v1", "model": "m"}}}, "rag_eval.endpoint: base_url 'localhost:8000/v1' is not an http(s) URL"),
    ({"evaluate": {"judge": {"base_url": "http://127.0.0.1:8000/v1"}}}, "evaluate.judge: 'model' is required"),
    ({"evaluate": {"endpoint": {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "timeout": 5}}}, "evaluate.endpoint: unknown key(s) timeout"),
    ({"evaluate": {"endpoint": "openai_finetune"}}, "evaluate.endpoint: openai_finetune scores the openai_finetune stage's fine-tuned model; add openai_finetune to stages"),
    ({"stages": ["prepare", "openai_finetune", "evaluate"], "evaluate": {"endpoint": "openai_finetune"}},
     "evaluate.endpoint: openai_finetune asks for the openai_finetune stage's fine-tuned model, but it will have none: submit is false"),
])
def test_malformed_endpoint_specs_fail_in_one_line_before_a_kernel(params, tmp_path, section, msg):
    stage = next(k for k in section if k != "stages")
    p = params({"stages": ["rag_index", "rag_eval"] if stage == "rag_eval" else ["prepare", "evaluate"], **section})
    r = llmops("run", p, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and msg in err[0] and err[0].startswith(f"llmops: {p}: "), r.stderr
    assert not (tmp_path/"runs").exists()  # refused before any run folder or kernel
