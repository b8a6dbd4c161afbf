"CUDA-only paths on the tiny random model: flash varlen attention for packed rows, bf16 mixed precision, QLoRA, Liger, torch.compile. Skipped without a GPU (bench/gpu.sh runs them)."
import datasets, pytest, torch
from llmops_nb import labels as L, packing as PK, trainer as T
from llmops_nb.models import load_causal_lm, load_tokenizer
from llmops_nb.settings import FinetuneConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONV = [{"role": "system", "content": "You are the Kestrel Home support assistant."},
        {"role": "user", "content": "Which inverter suits a three-phase supply?"},
        {"role": "assistant", "content": "The KH-8-3P, the three-phase KH-8."},
        {"role": "user", "content": "Any extra hardware?"},
        {"role": "assistant", "content": "No, only the standard meter."}]
FAST = dict(max_steps=6, learning_rate=2e-2, logging_steps=1, save_steps=100, warmup_steps=0.0, lr_scheduler_type="constant", device="cuda")


@pytest.fixture(scope="module")
def overfit():
    convs = [CONV, CONV[:3], [CONV[0], {"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "Ten years."}]]
    return datasets.DatasetDict(train=datasets.Dataset.from_dict({"messages": convs * 4}),
                                validation=datasets.Dataset.from_dict({"messages": convs}))


def learns(s):
    assert s["val_loss_last"] < s["val_loss_first"] - 0.05, s
    assert s["device"].startswith("cuda"), s


def test_varlen_attention_equals_each_example_alone():
    "On CUDA in bf16, a packed row goes through one flash varlen call; each example's logits and the gradients match running it alone."
    from llmops_nb.packing import _varlen_attn
    if _varlen_attn() is None: pytest.skip("this torch has no torch.nn.attention.varlen")
    tok = load_tokenizer("tiny-random")
    model, _ = load_causal_lm("tiny-random", device="cuda", dtype="bfloat16")
    PK.use_packed_attention(model)
    exs = [L.tokenize_example(tok, c) for c in (CONV, CONV[:3], CONV[1:3])]
    b = {k: v.cuda() if torch.is_tensor(v) else v for k, v in PK.PackedCollator()(PK.pack(exs, 10**4)).items()}
    with torch.no_grad():
        packed = model(**{k: v for k, v in b.items() if k != "labels"}, use_cache=False).logits[0].float()
        o = 0
        for e in exs:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]], device="cuda"), use_cache=False).logits[0].float()
            torch.testing.assert_close(packed[o:o + n], alone, atol=3e-2, rtol=3e-2)
            o += n
    model.train()
    model(**b, use_cache=False).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_mixed_precision_on_cuda(tmp_path, overfit):
    s = T.train(FinetuneConfig(**FAST), out_dir=str(tmp_path), dataset=overfit, report_to="none")["training_summary"]
    learns(s)
    assert (s["mixed_precision"], s["weights_dtype"]) == ("bf16", "bfloat16")


def test_qlora_learns(tmp_path, overfit):
    pytest.importorskip("bitsandbytes")
    s = T.train(FinetuneConfig(load_in_4bit=True, **FAST), out_dir=str(tmp_path), dataset=overfit, report_to="none")["training_summary"]
    learns(s)


def test_torch_compile_learns_like_eager(tmp_path, overfit):
    eager = T.train(FinetuneConfig(**FAST), out_dir=str(tmp_path/"eager"), dataset=overfit, report_to="none")["training_summary"]
    comp = T.train(FinetuneConfig(torch_compile=True, **FAST), out_dir=str(tmp_path/"compiled"), dataset=overfit, report_to="none")["training_summary"]
    learns(comp)
    assert comp["val_loss_last"] == pytest.approx(eager["val_loss_last"], rel=0.05), (eager, comp)


def test_liger_kernel_learns(tmp_path, overfit):
    "Last in this file: Liger patches transformers' Llama modules for the rest of the process."
    pytest.importorskip("liger_kernel")
    s = T.train(FinetuneConfig(use_liger_kernel=True, **FAST), out_dir=str(tmp_path), dataset=overfit, report_to="none")["training_summary"]
    learns(s)
