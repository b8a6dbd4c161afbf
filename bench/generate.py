"""Generation benchmark: batched generation vs one prompt at a time, same prompts, same greedy outputs.

    python bench/generate.py [--model smollm2-135m-instruct] [--n 32] [--batch-size 8] [--max-new-tokens 64]
                             [--device cpu|cuda] [--threads 0] [--repeats 1] [--out bench/out/generate.json]

Batched mode packs the weights for its row count (`evaluation.prepacked`, MKL on CPU); `--ablate` also times it
without (`batched-plain`). The prompts are the first `--n` conversations of the shipped data (data/instructions.jsonl) rendered with the chat
template, as the evaluate stage does. Both modes run `evaluation.generate` (greedy, stop at EOS) on the same loaded
model: batched with `--batch-size` (left padding), then each prompt alone. The script asserts identical answers,
and reports answers/s and generated tokens/s for both and the speed-up. Target: >= 4x on CPU at batch size 8.
On a shared machine timings vary; the order is alternated over `--repeats` and the best time of each mode is kept.
On a busy 2-core machine torch's 2 intra-op threads can be several times slower than one (`--threads 1`).
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmops_nb import generation as G  # noqa: E402
from llmops_nb.data import load_records  # noqa: E402
from llmops_nb.models import load_causal_lm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32, help="number of prompts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each mode (best kept)")
    ap.add_argument("--ablate", action="store_true", help="also time batched generation without prepacked weights")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"generate.json"))
    a = ap.parse_args(argv)
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    model, tok = load_causal_lm(a.model, device=a.device, dtype=a.dtype)
    ds = load_records(ROOT/"data"/"instructions.jsonl")
    prompts, _, _ = G.chat_prompts(tok, ds.select(range(min(a.n, len(ds))))["messages"])
    G.generate(model, tok, prompts[:2], batch_size=2, max_new_tokens=4, progress=False)  # warm up
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run(mode):
        sync(); t = time.perf_counter()
        if mode != "single": out = G.generate(model, tok, prompts, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                              progress=False, prepack=mode == "batched")
        else: out = [G.generate(model, tok, [p], batch_size=1, max_new_tokens=a.max_new_tokens, progress=False)[0] for p in prompts]
        sync(); return time.perf_counter() - t, out

    modes = ["batched", "single"] + (["batched-plain"] if a.ablate else [])
    times, outs = {m: [] for m in modes}, {}
    for r in range(a.repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            t, outs[mode] = run(mode); times[mode].append(t)
            print(f"{mode:8s} run {r}: {t:.2f} s", flush=True)
    diff = sorted({i for m in modes if m != "single" for i, (x, y) in enumerate(zip(outs[m], outs["single"])) if x != y})
    ntok = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs["single"])
    best = {m: min(v) for m, v in times.items()}
    res = {"model": a.model, "device": str(model.device), "dtype": str(model.dtype), "n_prompts": len(prompts),
           "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "answer_tokens": ntok, "seconds": best, "all_seconds": times,
           "answers_per_s": {m: len(prompts)/t for m, t in best.items()},
           "tokens_per_s": {m: ntok/t for m, t in best.items()},
           "speedup": best["single"]/best["batched"], "identical": not diff, "differing_prompts": diff}
    if a.ablate: res["speedup_plain"] = best["single"]/best["batched-plain"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("device", "n_prompts", "batch_size", "max_new_tokens", "answers_per_s", "speedup", "speedup_plain", "identical") if k in res}, indent=1))
    for i in diff[:3]: print(f"prompt {i} differs:\n  batched: {outs['batched'][i]!r}\n  single:  {outs['single'][i]!r}")
    assert not diff, f"batched and one-by-one greedy answers differ for {len(diff)} of {len(prompts)} prompts"
    return res


if __name__ == "__main__":
    main()
