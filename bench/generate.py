"""Generation benchmark: batched generation in the model's `dtype: auto` precision vs the fp32 batched path and vs one
prompt at a time, same prompts, greedy.

    python bench/generate.py [--model smollm2-135m-instruct] [--n 32] [--batch-size 8] [--fp32-batch-size 0] [--max-new-tokens 64]
                             [--device cpu|cuda] [--dtype auto] [--threads 0] [--repeat 3] [--no-single] [--ablate]
                             [--out bench/out/generate.json]

Modes, each `generation.generate` (greedy, stop at EOS) on the first `--n` conversations of the shipped data
(data/instructions.jsonl) rendered with the chat template, as the evaluate stage does:
  batched       the `--dtype` model (auto: bf16 on CPUs with native bf16 and on GPUs), `--batch-size` prompts at a time
                (left padding), weights packed for the batch (`generation.prepacked`: MKL for fp32, oneDNN for bf16);
  fp32-batched  the same in fp32: the batched path before bf16 (left out when --dtype resolves to fp32), at
                `--fp32-batch-size` prompts a batch (default: `--batch-size`);
  single        the `--dtype` model, one prompt at a time (--no-single leaves it out);
  batched-plain with --ablate: batched without packed weights.
Reported: answers/s and generated tokens/s per mode, `speedup_vs_fp32` (fp32-batched time / batched time, target >= 2x
on CPU), `speedup` (single / batched), how many greedy answers differ from fp32's and batched from single. In fp32,
batched and single answers must be identical (asserted); in bf16 a padded batch and a single prompt round differently
and a near tie in greedy decoding can tip, so they are counted, not asserted.
Rounds alternate the order of the modes; `--repeat` rounds, medians reported (best too), per wall second and per CPU
second of this process (`cpu_speedup_vs_fp32`: steadier on a shared machine). On a busy 2-core machine
torch's 2 intra-op threads can be several times slower than one (`--threads 1`).
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmops_nb import generation as G  # noqa: E402
from llmops_nb.data import load_records  # noqa: E402
from llmops_nb.models import load_causal_lm, pick_dtype  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32, help="number of prompts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fp32-batch-size", type=int, default=0, help="fp32-batched's batch size (0: --batch-size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="the dtype setting of the batched and single modes")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeat", "--repeats", dest="repeat", type=int, default=1, help="timed rounds of every mode (medians reported)")
    ap.add_argument("--no-single", action="store_true", help="leave out one-prompt-at-a-time generation")
    ap.add_argument("--ablate", action="store_true", help="also time batched generation without prepacked weights")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"generate.json"))
    a = ap.parse_args(argv)
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    dt = pick_dtype(a.dtype, a.device)
    model, tok = load_causal_lm(a.model, device=a.device, dtype=a.dtype)
    fp32 = load_causal_lm(a.model, device=a.device, dtype="float32")[0] if dt != torch.float32 else None
    ds = load_records(ROOT/"data"/"instructions.jsonl")
    prompts, _, _ = G.chat_prompts(tok, ds.select(range(min(a.n, len(ds))))["messages"])
    for m in (model, fp32):
        if m is not None: G.generate(m, tok, prompts[:2], batch_size=2, max_new_tokens=4, progress=False)  # warm up
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run(mode):
        sync(); t, c = time.perf_counter(), time.process_time()
        kw = dict(max_new_tokens=a.max_new_tokens, progress=False)
        if mode == "single": out = [G.generate(model, tok, [p], batch_size=1, **kw)[0] for p in prompts]
        else:
            bs = (a.fp32_batch_size or a.batch_size) if mode == "fp32-batched" else a.batch_size
            out = G.generate(fp32 if mode == "fp32-batched" else model, tok, prompts, batch_size=bs, prepack=mode != "batched-plain", **kw)
        sync(); return time.perf_counter() - t, time.process_time() - c, out

    modes = ["batched"] + (["fp32-batched"] if fp32 is not None else []) + ([] if a.no_single else ["single"]) + (["batched-plain"] if a.ablate else [])
    times, cpus, outs = {m: [] for m in modes}, {m: [] for m in modes}, {}
    for r in range(a.repeat):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            t, c, outs[mode] = run(mode); times[mode].append(t); cpus[mode].append(c)
            print(f"{mode:13s} round {r}: {t:.2f} s ({c:.2f} CPU s)", flush=True)
    differ = lambda x, y: [i for i, (p, q) in enumerate(zip(outs[x], outs[y])) if p != q] if x in outs and y in outs else None
    ntok = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs["batched"])
    med = {m: statistics.median(v) for m, v in times.items()}
    res = {"model": a.model, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""), "n_prompts": len(prompts),
           "batch_size": a.batch_size, "fp32_batch_size": a.fp32_batch_size or a.batch_size, "max_new_tokens": a.max_new_tokens, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_avg": os.getloadavg(),
           "answer_tokens": ntok, "seconds": med, "cpu_seconds": {m: statistics.median(v) for m, v in cpus.items()}, "best_seconds": {m: min(v) for m, v in times.items()}, "all_seconds": times,
           "answers_per_s": {m: len(prompts)/t for m, t in med.items()},
           "tokens_per_s": {m: ntok/t for m, t in med.items()}}
    if "fp32-batched" in med:
        res["speedup_vs_fp32"] = med["fp32-batched"]/med["batched"]
        res["round_speedups_vs_fp32"] = [f/b for f, b in zip(times["fp32-batched"], times["batched"])]
        res["cpu_speedup_vs_fp32"] = statistics.median(cpus["fp32-batched"])/statistics.median(cpus["batched"])  # steadier on a busy machine
        res["differ_from_fp32"] = differ("batched", "fp32-batched")
    if "single" in med:
        res["speedup"] = med["single"]/med["batched"]
        res["differ_batched_vs_single"] = differ("batched", "single")
    if a.ablate: res["speedup_prepack"] = med["batched-plain"]/med["batched"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("device", "dtype", "n_prompts", "batch_size", "max_new_tokens", "answers_per_s") if k in res}, indent=1))
    if "speedup_vs_fp32" in res:
        print(f"batched {res['dtype']} / batched fp32: {res['speedup_vs_fp32']:.2f}x (medians of {a.repeat}; per round "
              f"{[round(x, 2) for x in res['round_speedups_vs_fp32']]}; per CPU second {res['cpu_speedup_vs_fp32']:.2f}x); {len(res['differ_from_fp32'])} of {len(prompts)} greedy answers differ from fp32's")
    if "speedup" in res:
        print(f"batched / one at a time: {res['speedup']:.2f}x; {len(res['differ_batched_vs_single'])} of {len(prompts)} answers differ")
    if a.ablate: print(f"prepacked / plain: {res['speedup_prepack']:.2f}x")
    for i in (res.get("differ_from_fp32") or [])[:2]: print(f"prompt {i}:\n  {res['dtype']}: {outs['batched'][i]!r}\n  fp32:     {outs['fp32-batched'][i]!r}")
    if dt == torch.float32 and res.get("differ_batched_vs_single"):
        raise SystemExit(f"fp32 batched and one-by-one greedy answers differ for {len(res['differ_batched_vs_single'])} of {len(prompts)} prompts")
    return res


if __name__ == "__main__":
    main()
