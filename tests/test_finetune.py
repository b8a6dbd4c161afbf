"Fine-tuning on the tiny random model: PEFT methods, labels, packing, resume, two processes, bad input."
import json
import datasets, pytest, torch
from llmops_nb import labels as L, launch, packing as PK, trainer as T
from llmops_nb.core import ConfigError
from llmops_nb.settings import FinetuneConfig
from llmops_nb.data import prepare
from llmops_nb.models import load_causal_lm, load_tokenizer

CONV = [{"role": "system", "content": "You are the Kestrel Home support assistant."},
        {"role": "user", "content": "Which inverter suits a three-phase supply?"},
        {"role": "assistant", "content": "The KH-8-3P, the three-phase KH-8."},
        {"role": "user", "content": "Any extra hardware?"},
        {"role": "assistant", "content": "No, only the standard meter."}]
FAST = dict(max_steps=6, learning_rate=2e-2, logging_steps=1, save_steps=100, warmup_steps=0.0, lr_scheduler_type="constant")


@pytest.fixture(scope="module")
def tok(): return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def overfit():
    "A tiny set to overfit: a few conversations repeated; validation = the same conversations."
    convs = [CONV, CONV[:3], [CONV[0], {"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "Ten years."}]]
    return datasets.DatasetDict(train=datasets.Dataset.from_dict({"messages": convs * 4}),
                                validation=datasets.Dataset.from_dict({"messages": convs}))


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory):
    "The prepare stage's output on the first 40 shipped records."
    d = tmp_path_factory.mktemp("prepare")
    prepare("data/instructions.jsonl", str(d), max_examples=40)
    return d


# lora at 5e-3: at 2e-2 the tiny model's loss oscillates (10.56, 11.05, 10.44, ...), so where six steps end depends on rounding
@pytest.mark.parametrize("method,lr", [("lora", 5e-3), ("ia3", 3e-1)])
def test_peft_methods_learn(tmp_path, overfit, method, lr):
    m = T.train(FinetuneConfig(peft_method=method, **{**FAST, "learning_rate": lr}), out_dir=str(tmp_path), dataset=overfit)
    s = m["training_summary"]
    assert s["peft_method"] == method and s["steps"] == 6
    assert s["val_loss_last"] < s["val_loss_first"] - 0.05, s
    assert s["train_loss_last"] < s["train_loss_first"], s
    assert s["tokens_seen"] > 0 and s["tokens_per_second"] > 0 and s["peak_memory_mb"] > 0
    assert (tmp_path/"adapter"/"adapter_model.safetensors").exists() and (tmp_path/"adapter"/"tokenizer_config.json").exists()
    saved = json.loads((tmp_path/"metrics.json").read_text())
    assert saved["history"][0] == {"eval_loss": s["val_loss_first"], "epoch": 0.0, "step": 0}
    assert [h["step"] for h in saved["history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_bf16_autocast_learns_like_fp32(tmp_path, overfit):
    "bf16 mixed precision (a bf16 frozen base, fp32 adapter weights and AdamW state, bf16 autocast) lowers the loss as fp32 does."
    from safetensors import safe_open
    runs = {}
    for dt in ("float32", "bfloat16"):
        runs[dt] = T.train(FinetuneConfig(dtype=dt, device="cpu", **{**FAST, "learning_rate": 5e-3}),  # a steady descent (see above)
                           out_dir=str(tmp_path/dt), dataset=overfit)["training_summary"]
        with safe_open(str(tmp_path/dt/"adapter"/"adapter_model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # the trained weights stay fp32
    f32, b16 = runs["float32"], runs["bfloat16"]
    assert (f32["mixed_precision"], b16["mixed_precision"]) == ("no", "bf16")
    assert (f32["weights_dtype"], b16["weights_dtype"]) == ("float32", "bfloat16")
    assert b16["val_loss_first"] == pytest.approx(f32["val_loss_first"], rel=0.01)  # the same model before training
    for s in (f32, b16): assert s["val_loss_last"] < s["val_loss_first"] - 0.05, s
    drop = lambda s: s["val_loss_first"] - s["val_loss_last"]
    assert drop(b16) == pytest.approx(drop(f32), rel=0.1), (f32, b16)
    assert b16["val_loss_last"] == pytest.approx(f32["val_loss_last"], rel=0.02), (f32, b16)


def test_completion_only_labels_are_exactly_the_assistant_turns(tok):
    text, spans = L.assistant_spans(tok, CONV)
    ex = L.tokenize_example(tok, CONV)
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    sup = [i for i, l in enumerate(labels) if l != -100]
    assert all(labels[i] == ids[i] for i in sup)
    # the supervised tokens spell the two answers (with their end-of-turn marker), the others everything else
    answers = [text[s:e] for s, e in spans]
    assert answers == ["The KH-8-3P, the three-phase KH-8.<|im_end|>\n", "No, only the standard meter.<|im_end|>\n"]
    assert tok.decode([ids[i] for i in sup]) == "".join(answers)
    rest = text
    for a in answers: rest = rest.replace(a, "", 1)
    assert tok.decode([t for t, l in zip(ids, labels) if l == -100]) == rest
    # two contiguous runs, one per answer
    runs = sum(1 for i in sup if i - 1 not in sup)
    assert runs == 2


def test_packed_logits_equal_unpacked(tok):
    model, _ = load_causal_lm("tiny-random", device="cpu", dtype="float32")
    exs = [L.tokenize_example(tok, c) for c in (CONV, CONV[:3], CONV[1:3])]
    assert PK.packed_logits_match(model, exs)
    # control: the same concatenation without restarting positions does mix the examples
    flat = torch.tensor([sum((e["input_ids"] for e in exs), [])])
    with torch.no_grad():
        mixed = model(input_ids=flat, use_cache=False).logits[0]
        n0 = len(exs[0]["input_ids"])
        alone = model(input_ids=torch.tensor([exs[1]["input_ids"]]), use_cache=False).logits[0]
    assert not torch.allclose(mixed[n0:n0 + len(exs[1]["input_ids"])], alone, atol=1e-4)


def test_truncation_is_counted(tok, overfit):
    full = [len(L.tokenize_example(tok, r["messages"], 10**6)["input_ids"]) for r in overfit["train"]]
    exs, st = L.tokenize_split(tok, overfit["train"], max_length=40)
    assert st["truncated"] == sum(n > 40 for n in full) > 0 and all(len(e["input_ids"]) <= 40 for e in exs)


def test_resume_continues_from_last_checkpoint(tmp_path, overfit):
    cfg = {**FAST, "max_steps": 4, "save_steps": 2}
    first = T.train(FinetuneConfig(**cfg), out_dir=str(tmp_path), dataset=overfit)["training_summary"]
    assert first["steps"] == 4 and first["resumed_from"] is None
    again = T.train(FinetuneConfig(**{**cfg, "max_steps": 7}), out_dir=str(tmp_path), dataset=overfit)
    s = again["training_summary"]
    assert s["resumed_from"] == "checkpoint-4" and s["steps"] == 7
    assert s["tokens_seen"] > first["tokens_seen"]
    steps = [h["step"] for h in again["history"] if "loss" in h]
    assert steps == list(range(1, 8))  # the history of the first run is kept
    assert again["history"][0]["step"] == 0 and "eval_loss" in again["history"][0]


def test_resume_refuses_other_base_model(tmp_path, overfit):
    T.train(FinetuneConfig(**{**FAST, "max_steps": 2, "save_steps": 2}), out_dir=str(tmp_path/"ft"), dataset=overfit)
    other, tok = load_causal_lm("tiny-random", device="cpu")
    with torch.no_grad(): other.get_input_embeddings().weight.mul_(1.5)
    other.save_pretrained(tmp_path/"other"); tok.save_pretrained(tmp_path/"other")
    with pytest.raises(ConfigError, match="trained from base model 'tiny-random', not '.*other'"):
        T.train(FinetuneConfig(model=str(tmp_path/"other"), **FAST), out_dir=str(tmp_path/"ft"), dataset=overfit)


def test_two_processes(tmp_path, prep_dir):
    m = launch.finetune(FinetuneConfig(num_processes=2, max_steps=3, logging_steps=1, save_steps=3, pack_length=256, max_length=256),
                        str(prep_dir), str(tmp_path), echo=None)
    s = m["training_summary"]
    assert s["num_processes"] == 2 and s["steps"] == 3 and s["distributed"] == ("multi_gpu" if torch.cuda.is_available() else "multi_cpu")
    assert (tmp_path/"adapter"/"adapter_model.safetensors").exists()
    # each step saw one packed row per process: more tokens than one row can hold
    assert s["tokens_seen"] > 3 * 256


@pytest.mark.parametrize("change,message", [
    (dict(target_modules=["q_proj", "attn_qkv"]), r"target_modules \['attn_qkv'\] not in model; available linear modules: down_proj, gate_proj"),
    (dict(max_length=100_000), "max_length=100000 is above the limit"),
    (dict(peft_method="prompt_tuning"), "expected one of: lora, ia3"),
    (dict(load_in_4bit=True), "needs a CUDA GPU" if not torch.cuda.is_available() else "bitsandbytes"),
])
def test_bad_input(tmp_path, overfit, change, message):
    if change.get("load_in_4bit") and torch.cuda.is_available(): pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match=message) as e:
        T.train(FinetuneConfig(**FAST, **change), out_dir=str(tmp_path), dataset=overfit)
    assert "\n" not in str(e.value)


def test_dataset_without_assistant_turns(tmp_path):
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({"messages": [CONV[:2]] * 3}),
                              validation=datasets.Dataset.from_dict({"messages": [CONV[:2]]}))
    with pytest.raises(ConfigError, match="train split: none of its 3 conversations has an assistant turn"):
        T.train(FinetuneConfig(**FAST), out_dir=str(tmp_path), dataset=dd)


def test_fsdp_config_reaches_accelerate(tmp_path):
    "params/accelerate/fsdp.yaml is read by `accelerate launch` as FSDP2 with one shard unit per decoder layer."
    import subprocess, sys
    probe = tmp_path/"probe.py"
    probe.write_text('import os, json; print("ENV", json.dumps({k: v for k, v in os.environ.items() if k.startswith(("ACCELERATE_", "FSDP_"))}))')
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", "params/accelerate/fsdp.yaml",
                        "--num_processes", "1", "--main_process_port", str(launch._free_port()), str(probe)], capture_output=True, text=True)
    env = json.loads(next(l for l in p.stdout.splitlines() if l.startswith("ENV "))[4:])
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
