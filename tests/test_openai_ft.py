"""OpenAI's hosted fine-tuning path offline (issue 15): the stage on the shipped data writes files that pass every check of
OpenAI's data-preparation guide, estimates the cost and ends `submitted: false`; each malformed case of the guide is named."""
import json
import pytest
from llmops_nb import openai_ft as OF, stages as ST
from llmops_nb.core import read_jsonl, read_metrics

OK = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
MALFORMED = {  # the guide's format errors, one line each
    "data_type": ["not a dict"],
    "missing_messages_list": {"prompt": "Hi", "completion": "Hello"},
    "message_missing_key": {"messages": [{"role": "user"}, {"role": "assistant", "content": "Hello"}]},
    "message_unrecognized_key": {"messages": [{"role": "user", "content": "Hi", "mood": "happy"}, {"role": "assistant", "content": "Hello"}]},
    "unrecognized_role": {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    "missing_content": {"messages": [{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "Hello"}]},
    "example_missing_assistant_message": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
}


def _count(t): return len(t.split())


def test_each_malformed_case_is_named_with_its_line():
    lines = [OK] + list(MALFORMED.values()) + [{"messages": [{"role": "assistant", "content": "unprompted"}]}]
    r = OF.validate(lines, _count, max_tokens=12)
    assert r["errors"] == {e: 1 for e in MALFORMED} and not r["ok"]
    assert r["error_lines"] == {e: [i] for i, e in enumerate(MALFORMED, 2)}
    # the warnings count the well-formed lines only: the unprompted one has neither system nor user message
    assert (r["missing_system"], r["missing_user"]) == (1, 1) and r["n_examples"] == len(lines)
    assert r["tokens"]["max"] == 3 + (3 + 1 + 2) + (3 + 1 + 1) + (3 + 1 + 1) and r["over_limit"] == [1]  # each message: 3, its role, its content
    assert any("over the 12-token limit" in w and "lines 1" in w for w in r["warnings"])


def test_stage_offline_exports_valid_files_prices_them_and_submits_nothing(tmp_path, monkeypatch):
    import papermill as pm
    from llmops_nb.kernels import ensure_kernel
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pairs = tmp_path/"pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}) + "\n" for i in range(3)))
    out = tmp_path/"oft"
    pm.execute_notebook(str(ST.notebook("openai_finetune")), str(tmp_path/"oft.ipynb"), kernel_name=ensure_kernel(), progress_bar=False,
                        parameters=dict(out_dir=str(out), pairs=str(pairs), price_per_1m_training_tokens=25.0, submit=True))
    m = read_metrics(out)
    assert (m["submitted"], m["reason"].split(":")[0]) == (False, "no API key")
    train = [r for _, r in read_jsonl(ST.output("openai_finetune", out, "train"))]
    assert len(train) == m["files"]["train"] > 10 and all(OF.format_errors(r) == [] for r in train)
    assert all(v["ok"] and v["errors"] == {} for v in m["validation"].values()) and set(m["validation"]) == {"train", "validation", "dpo"}
    dpo = [r for _, r in read_jsonl(ST.output("openai_finetune", out, "dpo"))]
    assert dpo[0]["preferred_output"] == [{"role": "assistant", "content": "Good answer 0."}] and dpo[0]["input"]["messages"][-1]["content"] == "Question 0?"
    est, tok = m["estimate"], m["validation"]["train"]["tokens"]
    assert est["epochs"] == OF.default_epochs(len(train)) and est["billed_tokens"] == tok["total"] * est["epochs"] > 0
    assert est["cost_usd"] == pytest.approx(est["billed_tokens"] * 25.0 / 1e6)
    assert json.loads(ST.output("openai_finetune", out, "job").read_text())["submitted"] is False
    executed = (tmp_path/"oft.ipynb").read_text()
    assert "submitted: false (no API key" in executed and "no format errors" in executed
