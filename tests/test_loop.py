"The feedback-loop scenario (nbs/46_loop.ipynb) end to end on the smoke params: serve, simulated ratings, review, export, KTO, evaluate."
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loop_scenario_on_smoke_params(tmp_path):
    import papermill as pm
    from llmops_nb.kernels import ensure_kernel
    pm.execute_notebook(str(ROOT/"nbs"/"46_loop.ipynb"), str(tmp_path/"loop.ipynb"), kernel_name=ensure_kernel(), progress_bar=False,
                        cwd=str(ROOT), parameters=dict(params_file=str(ROOT/"params"/"loop-smoke.yaml"), run_root=str(tmp_path/"loop"),
                                                       max_questions=12))
    res = json.loads((tmp_path/"loop"/"loop.json").read_text())
    assert res["simulated_users"] and res["questions"] == {"feedback": 8, "held_out": 4}
    r, e = res["ratings"], res["export"]
    assert r["up"] + r["down"] == 8 and r["up"] >= 1 and r["down"] >= 1
    assert e["approved"] == 8 and e["left_out"] == {"pending": 0, "rejected": 0}
    assert e["kto"] + sum(e["refused"].get("kto", {}).values()) == 8  # every thumb is an example or a counted refusal
    assert res["kto"]["n_examples"] == e["kto"] and res["kto"]["steps"] >= 1
    ho = res["held_out"]
    assert set(ho["delta"]) == {"rougeL", "token_f1", "semantic_similarity"}
    assert all(lo <= ho["delta"][k] <= hi for k, (lo, hi) in ho["delta_ci"].items())
    assert res["evaluate_kto_vs_sft"]["against"] == "sft" and len(res["verdict"]) >= 3
    from llmops_nb import deploy, runs as R
    kto_run = R.load_record(res["kto_run"], tmp_path/"loop"/"runs")  # `llmops serve` / `llmops chat` of the loop's run: the KTO adapter
    assert deploy.run_parts(kto_run)["adapter"] == R.output(kto_run, "kto", "adapter") != R.output(kto_run, "finetune", "adapter")
    lineage = json.loads((tmp_path/"loop"/"export"/"metrics.json").read_text())["lineage"]  # the export's W&B run: derived from the SFT run
    assert {i.split(":")[0] for i in lineage["inputs"]} >= {"adapter", "rag-index"} and lineage["snapshot"]
