"The newcomer's path (issue 19): progress and a verdict in the terminal, runs named and listed, removed safely."
import json, re
from conftest import llmops, ROOT


def _params(tmp_path, **extra):
    import yaml
    p = {"name": "tiny", "seed": 0, "model": "tiny-random", "run_root": str(tmp_path/"runs"), "wandb": {"mode": "offline"},
         "stages": ["prepare", "finetune", "evaluate"], "prepare": {"data": str(ROOT/"data"/"instructions.jsonl"), "max_examples": 30},
         "finetune": {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1},
         "evaluate": {"max_examples": 3, "max_new_tokens": 4, "n_boot": 50, "batch_size": 2, "gates": {"delta_rougeL": -1.0}}, **extra}
    f = tmp_path/"p.yaml"; f.write_text(yaml.safe_dump(p))
    return f


def runs_list(tmp_path):
    from llmops_nb.runs import list_runs
    return list_runs(tmp_path/"runs")


def test_progress_verdict_list_rm(tmp_path):
    "A real run through `llmops run` (stdout not a terminal): each stage's last progress line, stage lines in words, the gates' verdict; then list, status by suffix, rm."
    r = llmops("run", _params(tmp_path), "--set", "finetune.r=4")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert re.search(r"finetune: cell (\d+)/\1, train 4/4 steps, loss ", out), out  # from the stage kernel, through its progress file (all cells run)
    assert re.search(r"evaluate: cell (\d+)/\1, tuned 3/3 answers", out), out
    assert "val loss " in out and "ROUGE-L " in out and " on 3 examples" in out, out
    assert "gates: all 1 passed (evaluate.delta_rougeL " in out, out
    assert "n_gates" not in out and "cells/s" not in r.stderr
    rid = out.split()[1].rstrip(":")
    lst = llmops("--run-root", tmp_path/"runs", "list")
    assert lst.returncode == 0 and rid in lst.stdout and "tiny" in lst.stdout and "--set finetune.r=4" in lst.stdout and "ROUGE-L " in lst.stdout, lst.stdout
    st = llmops("--run-root", tmp_path/"runs", "status", rid[-4:])
    assert st.returncode == 0 and st.stdout.startswith(f"run {rid}  done"), st.stdout + st.stderr
    # a second run on the same test examples: the comparison page pairs the differences and names the best run on the metric asked for
    r2 = llmops("run", _params(tmp_path), "--set", "finetune.r=8", "--quiet")
    assert r2.returncode == 0, r2.stderr[-2000:]
    rid2 = [x["id"] for x in runs_list(tmp_path)][-1]
    from llmops_nb.compare import compare
    said = []
    page = compare([rid, rid2], tmp_path/"runs", tmp_path/"c.html", said.append, {"name": "evaluate/tuned/semantic_similarity", "goal": "maximize"}).read_text()
    assert "] paired" in page and "Best point on the sweep" in page and "finetune.r" in page.split("Parameters that changed")[1].split("<details>")[0], page[:3000]
    assert any(l.startswith("best on evaluate/tuned/semantic_similarity (maximize): run ") for l in said), said
    assert llmops("--run-root", tmp_path/"runs", "runs", "rm", rid2).returncode == 0
    # sharing: the adapter names its base portably, its README is a card with Hub front matter; push offline is one line at once
    ad = tmp_path/"runs"/rid/"finetune"/"adapter"
    assert json.loads((ad/"adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random"
    assert (ad/"README.md").read_text().startswith("---\nbase_model: tiny-random\n") and "library_name: peft" in (ad/"README.md").read_text()
    push = llmops("--run-root", tmp_path/"runs", "push", rid, "--repo", "me/kestrel")
    assert push.returncode == 2 and push.stderr.count("\n") == 1 and "Hugging Face Hub is not reachable" in push.stderr, push.stderr
    push = llmops("--run-root", tmp_path/"runs", "push", rid, "--repo", "me/kestrel", "--out", tmp_path/"up")
    card = (tmp_path/"up"/"README.md").read_text()
    assert push.returncode == 0 and card.startswith("---\nbase_model: tiny-random\n") and "- rouge" in card and "## Evaluation" in card, push.stderr + card[:500]
    rm = llmops("--run-root", tmp_path/"runs", "runs", "rm", rid[-4:])
    assert rm.returncode == 0 and f"removed 1 run(s): {rid}" in rm.stdout, rm.stdout + rm.stderr
    assert not (tmp_path/"runs"/rid).exists() and not list((tmp_path/"runs"/".cache").glob("*.json"))
    gone = llmops("--run-root", tmp_path/"runs", "status", rid)
    assert gone.returncode == 2 and "\n" not in gone.stderr.strip(), gone.stderr


def test_own_data_columns_no_system_prompt_one_row(params, tmp_path):
    "Your own CSV with question/answer columns: refused in one line naming prepare.columns, then read with the mapping, with no system prompt from the code; one row: one line before any kernel."
    import pandas as pd
    from llmops_nb import pipeline as P
    from llmops_nb.data import load_prepared
    csv = tmp_path/"faq.csv"
    pd.DataFrame({"question": [f"Question {i}?" for i in range(12)], "answer": [f"Answer {i}." for i in range(12)]}).to_csv(csv, index=False)
    f = params({"stages": ["prepare"], "prepare": {"data": str(csv)}})
    r = llmops("run", f, "--quiet")
    assert r.returncode == 2 and "\n" not in r.stderr.strip() and "prepare.columns, e.g. {prompt: question, completion: answer}" in r.stderr, r.stderr
    rec = P.run(f, ["prepare.columns={prompt: question, completion: answer}"], progress=False)
    dd = load_prepared(rec["stages"]["prepare"]["out_dir"])
    assert [m["role"] for m in dd["train"][0]["messages"]] == ["user", "assistant"]  # no system message unless asked
    assert dd["train"][0]["messages"][0]["content"].startswith("Question ")
    one = tmp_path/"one.jsonl"; one.write_text('{"prompt": "Hi?", "completion": "Hello."}\n')
    r = llmops("run", params({"stages": ["prepare"], "prepare": {"data": str(one)}}, name="one.yaml"), "--quiet")
    assert r.returncode == 2 and "\n" not in r.stderr.strip() and "1 record(s) leave no training examples" in r.stderr, r.stderr
    assert len(list((tmp_path/"runs").glob("*/run.json"))) == 1  # refused before any run was made


def test_stage_notebook_from_another_folder(tmp_path):
    "papermill on a stage notebook from outside the project: its relative defaults (data/instructions.jsonl) are the project's."
    import os, papermill as pm
    from llmops_nb.kernels import ensure_kernel
    env = os.environ.pop("LLMOPS_PROJECT_ROOT", None)
    here = os.getcwd(); os.chdir(tmp_path)
    try:
        pm.execute_notebook(str(ROOT/"nbs"/"pipeline"/"prepare.ipynb"), str(tmp_path/"out.ipynb"), cwd=str(tmp_path),
                            parameters={"out_dir": str(tmp_path/"prep"), "max_examples": 20}, kernel_name=ensure_kernel(), progress_bar=False)
    finally:
        os.chdir(here)
        if env: os.environ["LLMOPS_PROJECT_ROOT"] = env
    assert json.loads((tmp_path/"prep"/"metrics.json").read_text())["sizes"]["train"] == 16


def test_workflows_call_the_ci_entry_point():
    "The GitHub Actions workflows parse, and the test workflow checks nbdev clean/export before `.ci/run` (they cannot run here: unverified)."
    import yaml
    wf = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT/".github"/"workflows").glob("*.yaml")}
    assert set(wf) == {"test", "pipeline"}
    steps = [s.get("run", "") for s in wf["test"]["jobs"]["test"]["steps"]]
    assert set(wf["test"][True]) >= {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    order = [next(i for i, s in enumerate(steps) if x in s) for x in ("nbdev_clean", "nbdev_export", ".ci/run")]
    assert order == sorted(order), steps
    pipe = [s.get("run", "") for s in wf["pipeline"]["jobs"]["pipeline"]["steps"]]
    assert any("llmops run" in s for s in pipe) and any("llmops promote" in s for s in pipe)
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in wf["pipeline"]["jobs"]["pipeline"]["steps"])
