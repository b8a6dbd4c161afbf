"Report stage, compare, sweep, promote and sync, end to end through real papermill kernels (W&B offline)."
import json, re
from pathlib import Path
import pytest, yaml
from bs4 import BeautifulSoup
from conftest import llmops, ROOT
from llmops_nb import report as R, runs, stages


@pytest.fixture
def smoke_run(smoke_cli):
    "The smoke pipeline's run record (conftest.smoke_cli: every stage, one quality gate)."
    return smoke_cli[1]


def test_report_preference_section(preference_run, smoke_run, browser, tmp_path):
    "A run with dpo and kto: the report's Preference section and summary line show each against SFT per metric, from evaluate's *_vs_sft; compare lists them."
    from playwright.sync_api import sync_playwright
    from conftest import CHROMIUM
    from llmops_nb import decision, summary as SU
    rec = preference_run
    m = runs.stage_metrics(rec, "evaluate")
    page = Path(rec["run_dir"])/"report.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    sec = soup.find("h2", id="Preference")
    tables = [t for t in sec.find_all_next("table") if t.find_previous("h2") is sec]  # the section's tables
    assert len(tables) == 2
    for table, s in zip(tables, ("dpo", "kto")):  # pipeline order
        vs, P_ = m[f"{s}_vs_sft"], s.upper()
        head = [th.get_text(strip=True) for th in table.find("thead").find_all("th")]
        assert head == ["metric", "SFT", P_, f"{P_} - SFT [95% interval]", "verdict"], head
        body = [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
        assert [r[0] for r in body] == [SU.name(k) for k in vs["delta"]]
        for row, k in zip(body, vs["delta"]):
            lo, hi = vs["delta_ci"][k]
            assert row[3] == f"{vs['delta'][k]:+.4f} [{lo:+.4f}, {hi:+.4f}]" and row[4] == SU.verdict(k, lo, hi), (row, k)
            assert row[4] in ("better", "worse", "no clear difference")
    lis = [li.get_text(" ", strip=True) for li in soup.find("h2", id="Summary").find_all_next("li")]
    assert any(li.startswith("preference") and "DPO vs SFT: ROUGE-L " in li and "KTO vs SFT: ROUGE-L " in li for li in lis), lis  # the summary's headline
    with sync_playwright() as p:  # what a reader sees: the section rendered in a real browser
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        pg = b.new_page(); pg.goto(page.as_uri())
        assert pg.locator("h2#Preference").is_visible() and pg.get_by_text("KTO vs SFT", exact=True).first.is_visible()
        pg.screenshot(path=str(tmp_path/"preference.png"), full_page=True); b.close()
    html = decision.page([smoke_run, rec], tmp_path/"compare.html")
    assert "evaluate/kto_vs_sft/kto/rougeL" in html and "evaluate/kto_vs_sft/delta/rougeL" in html


def test_stages_get_only_the_parameters_they_declare(smoke_run):
    "papermill warns of (and injects) any undeclared parameter: the report reads the whole run, but declares no upstream dirs."
    for s in smoke_run["stages"]:
        nb = json.loads((Path(smoke_run["run_dir"])/f"{s}.ipynb").read_text())
        injected = {l.split(" = ")[0] for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
                    for l in "".join(c["source"]).splitlines() if " = " in l}
        declared = set(stages.parameters(s))
        assert injected and injected <= declared, (s, injected - declared)


def test_report_sections(smoke_run):
    run_dir = Path(smoke_run["run_dir"])
    page = run_dir/"report.html"
    assert page.exists() and (run_dir/"report"/"report.html").exists()
    soup = BeautifulSoup(page.read_text(), "html.parser")
    heads = [h.get_text(strip=True).rstrip("¶") for h in soup.find_all("h2")]
    assert heads == list(R.SECTIONS), heads
    text = soup.get_text(" ")
    assert not soup.select(".jp-CodeCell .jp-InputArea") and "R.show_" not in text   # code hidden
    assert not soup.find_all("script", src=re.compile(r"^https?://"))          # readable offline
    assert smoke_run["id"] in text and "2/2 quality gates passed" in text
    first = soup.find("h2").find_next("p").get_text(" ", strip=True)   # the summary leads with the answer (issue 19)
    assert first.startswith("Verdict: 2/2 quality gates passed") and "evaluate.rougeL" in first and "rag_eval.hit_at_k" in first, first
    assert "ROUGE-L " in text and " -> " in text and "(as this report was rendered)" in text   # headline numbers in words; finished filled in
    fold = soup.find("details")                                                # the parameter appendix, folded
    assert fold is not None and not fold.has_attr("open") and "finetune.max_steps" in fold.get_text(), fold
    pngs = [i for i in soup.find_all("img") if i.get("src", "").startswith("data:image/png;base64,")]
    assert pngs, "no embedded figures"                                          # evaluation bars at least
    assert len(pngs) >= 2                                                      # loss curves + evaluation bars
    # every stage notebook linked, relative, and the link works from the run folder and from the copy in report/
    links = [a["href"] for a in soup.select("a.stage-link")]
    for s in smoke_run["stages"]: assert f"{s}.ipynb" in links, (s, links)
    assert all(not h.startswith(("/", "file:")) and (run_dir/h).exists() for h in links), links
    copy = BeautifulSoup((run_dir/"report"/"report.html").read_text(), "html.parser")
    assert all((run_dir/"report"/a["href"]).exists() for a in copy.select("a.stage-link"))
    card = (run_dir/"MODEL_CARD.md").read_text()
    for h in ("## Model", "## Data", "## Training", "## Evaluation", "## Quality gates", "## Intended use", "## Limits"): assert h in card
    assert runs.stage_metrics(smoke_run, "prepare")["fingerprint"] in card and "rougeL" in card
    m = runs.stage_metrics(runs.load_record(run_dir), "report")
    assert m["gates_passed"] is True and m["aliases"] == ["candidate"]


def test_sweep_compare_promote_sync(tmp_path):
    root = tmp_path/"runs"
    f, key = ROOT/"params"/"sweep.yaml", "finetune.r"
    extra = ["stages=[prepare, finetune]", "finetune.max_steps=2", "finetune.eval_steps=0"]   # the r sweep, short
    sets = [a for s in [f"run_root={root}", *extra] for a in ("--set", s)]
    r = llmops("sweep", f, *sets, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = runs.list_runs(root)
    assert len(recs) == 3
    assert sorted(rec["stages"]["prepare"]["status"] for rec in recs) == ["cached", "cached", "done"]
    assert len({rec["stages"]["prepare"]["out_dir"] for rec in recs}) == 1
    sw = json.loads(next((root/"sweeps").glob("*/sweep.json")).read_text())
    assert sw["runs"] == [rec["id"] for rec in recs] and Path(sw["compare"]).exists()
    diff = r.stdout.split("parameters that differ:")[1].split("metrics:")[0]
    assert key in diff and "prepare." not in diff
    ids = [rec["id"] for rec in recs]
    r = llmops("--run-root", root, "compare", ids[0], ids[2], "--out", tmp_path/"c.html")
    assert r.returncode == 0 and key in r.stdout and (tmp_path/"c.html").exists()
    assert key in BeautifulSoup((tmp_path/"c.html").read_text(), "html.parser").get_text()
    # production moves from run to run; the registry follows
    for i in ids[:2]: assert llmops("--run-root", root, "promote", i).returncode == 0
    assert [runs.load_record(i, root).get("aliases", []) for i in ids] == [[], ["production"], []]
    assert json.loads((root/"registry.json").read_text())["production"]["run_id"] == ids[1]
    # offline: sync and the W&B report say what they would do, in one line for the report
    r = llmops("--run-root", root, "sync", ids[1])
    assert r.returncode == 0 and "offline" in r.stdout and "prepare" in r.stdout and "dataset:" in r.stdout
    r = llmops("--run-root", root, "report", "--wandb", ids[1])
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and f"llmops report --wandb {ids[1]}" in r.stdout
    w = tmp_path/"w.yaml"
    assert llmops("sweep", f, "--wandb", "--out", w).returncode == 0
    cfg = yaml.safe_load(w.read_text())
    assert cfg["method"] == "grid" and key in cfg["parameters"] and cfg["command"][:2] == ["llmops", "sweep-run"]


def test_sweep_file_mistakes_are_one_line(tmp_path):
    "A malformed, non-UTF-8 or ill-formed sweep file (a metric that is a bare string, a bad goal): one line naming the file, exit 2, before any point runs."
    base, root = ROOT/"params"/"smoke.yaml", tmp_path/"runs"
    cases = {"yaml.yaml": (f"base: {base}\ngrid:\n  prepare.max_examples: [20, 30\nmetric: {{name: prepare/sizes/train, goal: maximize}}\n".encode(),
                           ":4: not valid YAML (expected ',' or ']', but got ':', while parsing a flow sequence from line 3)"),
             "latin1.yaml": (f"name: caf\xe9\nbase: {base}\n".encode("latin-1"), ":1: not UTF-8 text (byte 0xe9)"),
             "metric.yaml": (f"base: {base}\ngrid: {{prepare.max_examples: [20, 30]}}\nmetric: evaluate/tuned/rougeL\n".encode(), ": metric is 'evaluate/tuned/rougeL', not a mapping"),
             "goal.yaml": (f"base: {base}\ngrid: {{prepare.max_examples: [20, 30]}}\nmetric: {{name: evaluate/tuned/rougeL, goal: up}}\n".encode(), ": metric.goal is 'up'; expected maximize or minimize")}
    for name, (text, msg) in cases.items():
        (tmp_path/name).write_bytes(text)
        r = llmops("--run-root", root, "sweep", tmp_path/name, "--set", "stages=[prepare]", "--quiet")
        assert (r.returncode, r.stderr.count("\n")) == (2, 1) and r.stderr.startswith(f"llmops: {tmp_path/name}{msg}"), (name, r.returncode, r.stderr[-3000:])
    assert not root.exists()   # nothing ran


def test_sweep_run_root(tmp_path):
    "`llmops --run-root DIR sweep FILE` puts every point's run and the sweep under DIR (as `run` does); the comparison names the metric's best point."
    f, root = tmp_path/"s.yaml", tmp_path/"runs"
    f.write_text(f"base: {ROOT/'params'/'smoke.yaml'}\ngrid: {{prepare.max_examples: [20, 30]}}\nmetric: {{name: prepare/sizes/train, goal: maximize}}\n")
    r = llmops("--run-root", root, "sweep", f, "--set", "stages=[prepare]", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = runs.list_runs(root)
    assert len(recs) == 2 and all(f"run_root={root}" in rec["overrides"] for rec in recs)
    sw = json.loads(next((root/"sweeps").glob("*/sweep.json")).read_text())
    assert sw["runs"] == [rec["id"] for rec in recs] and Path(sw["compare"]).exists()
    assert f"best on prepare/sizes/train (maximize): run {recs[1]['id']}" in r.stdout, r.stdout[-2000:]


def test_intervals_are_readable():
    "No interval where a bound is not finite (one example); a 1-5 grade's interval stays on the 1-5 scale."
    import math
    from llmops_nb import evaluation as E, judge as J, summary as SU
    two, one = J.summarize([{"score": 4, "raw": "4"}, {"score": 5, "raw": "5"}]), J.summarize([{"score": 2, "raw": "2"}])
    assert two["ci"][0] < 1 and two["ci"][1] > 5  # Student's t on two verdicts: wider than the scale
    assert R._graded(two) == "4.50 [1.00, 5.00]" and R._graded(one) == "2.00"
    assert SU.change("rougeL", 0.1, 0.2, 0.1, [-math.inf, math.inf]) == "ROUGE-L 0.100 -> 0.200 (+0.100)"
    s = E.compare({"rougeL": [0.5]}, {"rougeL": [0.7]})
    assert "inf" not in E.summary_table(s, ["rougeL"]).to_string()


def test_tables_render_the_same_twice(monkeypatch):
    "A report table's HTML ids come from its content, not a random uuid: rerunning a notebook leaves its stored outputs as they were."
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    rows = [{"metric": "rougeL", "value": 0.25, "passed": "FAIL"}]
    R._table(rows); R._table([dict(r) for r in rows]); R._table([{**rows[0], "value": 0.5}])
    html = [s.to_html() for s in shown]
    assert html[0] == html[1] and "T_" in html[0]
    assert re.search(r'id="(T_\w+?)_', html[0])[1] != re.search(r'id="(T_\w+?)_', html[2])[1]  # another table, other ids
    rec = {"config": {"stages": ["prepare"], "params": {"prepare": {"seed": 1}}}}
    R.show_parameters(rec); R.show_parameters(rec)
    assert shown[-1].data == shown[-2].data
