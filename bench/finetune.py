"""Useful tokens/s and peak memory of llmops_nb's training step vs the tutorial way, same model and data, one run.

Tutorial way: HF Trainer + PEFT LoRA (r=16, all linear layers), fp32 on CPU / bf16 on GPU, the chat template
rendered and tokenized, DataCollatorForLanguageModeling padding batches of 8, loss on every token, no packing.
Ours: llmops_nb.trainer's path with its defaults: completion-only labels, padding-free packing
(DataCollatorWithFlattening), attention per packed example (sdpa_packed), LM head only at supervised positions and
inside a chunked cross-entropy that never holds the whole logits (loss.linear_cross_entropy),
no LoRA dropout, LoRA's update added inside the base GEMM (fuse_lora), `dtype: auto` (bf16 mixed precision on GPUs
and on CPUs with native bf16: fp32 weights and optimizer state, bf16 autocast), optional torch.compile.
Useful tokens = non-padding tokens. Each method runs in its own process (separate peak memory).
--ablate also times ours with each of our choices undone, to show what each is worth:
  ours-fp32: dtype float32 (ours before bf16 autocast);  ours-fp32-base: the frozen base kept in fp32 under bf16 autocast;
  ours-plain-loss: the LM head's whole logits and F.cross_entropy (loss.LOSS_CHUNK = 0) instead of linear_cross_entropy;
  ours-bf16-attention: short examples attend in bf16 too (CPU, see packing.CPU_FP32_ATTENTION);
  ours-dropout: lora_dropout 0.05 as the tutorial;  ours-dense-mask: plain sdpa (a dense block-diagonal mask);
  ours-unfused: PEFT's own LoRA sum (scale and add after the thin products);
  ours-system-malloc: glibc's allocator instead of the tcmalloc every stage kernel preloads where it is installed
  (kernels.malloc_env); tutorial-tcmalloc: the tutorial way with tcmalloc preloaded too (the tutorial itself runs on
  the system allocator, as tutorials do).
--methods picks the methods to time (e.g. tutorial,ours,ours-fp32), among them one that is no ablation:
  ours-liger (GPU, needs liger-kernel): ours with `use_liger_kernel` (Liger's Triton RMSNorm, SwiGLU and RoPE, and
  its fused linear cross-entropy in place of ours), fewer kernels a step where the step is bound by launching them.

  python bench/finetune.py [--ablate] [--repeat 3]                    # CPU, packaged SmolLM2-135M-Instruct, shipped data
  python bench/finetune.py --device cuda --shape 135m --seq-len 2048 [--compile]
  python bench/finetune.py --device cuda --shape 1b --seq-len 2048
  python bench/finetune.py --device cuda --shape 135m --seq-len 2048 --profile 3  # and where each step's time goes
--profile K runs K more steps under torch.profiler after the timed ones. Per step it reports wall seconds, the kernels' own
device seconds, aten calls (nested ones included), kernel launches and host-device syncs. On CPU, fused AdamW reads
each parameter's step count (one aten::_local_scalar_dense each), so syncs there are no GPU figure.
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
METHODS = ["tutorial", "ours", "ours-fp32", "ours-plain-loss", "ours-fp32-base", "ours-bf16-attention", "ours-dropout", "ours-dense-mask", "ours-unfused",
           "ours-system-malloc", "tutorial-tcmalloc"]
EXTRA = ["ours-liger"]  # not ablations: only by --methods
SHAPES = {  # random-init Llama shapes (GPU runs)
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192),
}


def load_model(a, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from llmops_nb.models import resolve_model
    if a.shape:
        torch.manual_seed(0)
        with torch.device(a.device):  # initialised where it trains: a 1B model takes a minute on the CPU
            m = LlamaForCausalLM(LlamaConfig(**SHAPES[a.shape], attn_implementation="sdpa")).to(dtype)
    else:
        m = AutoModelForCausalLM.from_pretrained(resolve_model(a.model), dtype=dtype, attn_implementation="sdpa")
    m.config.use_cache = False
    return m


def conversations(a, tok):
    from llmops_nb.data import load_records, SAMPLE_SYSTEM
    ds = load_records(ROOT/a.data, system=SAMPLE_SYSTEM)
    reps = max(1, -(-a.min_examples // len(ds)))
    return [r["messages"] for r in ds] * reps


class Clock:
    "Trainer callback: useful tokens and seconds between the end of step `warmup` and that of step `last`."
    def __init__(self, warmup, last): self.warmup, self.last, self.t0, self.n0, self.t1, self.n1, self.c0, self.c1 = warmup, last, None, 0, None, 0, 0, 0
    def cb(self):
        from transformers import TrainerCallback
        clock = self
        class C(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                import torch
                if state.global_step > clock.last: return
                if torch.cuda.is_available(): torch.cuda.synchronize()
                now = (time.perf_counter(), state.num_input_tokens_seen, time.process_time())
                if state.global_step == clock.warmup: clock.t0, clock.n0, clock.c0 = now
                clock.t1, clock.n1, clock.c1 = now
        return C()


class Profile:
    "Trainer callback: torch.profiler over `steps` steps after step `start`, to tell per-step host overhead from device work."
    def __init__(self, start, steps): self.start, self.steps, self.prof, self.wall = start, steps, None, 0.0
    def cb(self):
        from transformers import TrainerCallback
        me = self
        class C(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                import torch
                from torch.profiler import ProfilerActivity, profile
                if state.global_step == me.start:
                    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                    me.prof = profile(activities=acts); me.prof.__enter__(); me.t0 = time.perf_counter()
                elif me.prof is not None and state.global_step == me.start + me.steps:
                    if torch.cuda.is_available(): torch.cuda.synchronize()
                    me.wall = time.perf_counter() - me.t0; me.prof.__exit__(None, None, None)
        return C()

    SYNCS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")

    def summary(self, out: Path | None) -> dict:
        "Per step: wall seconds, device-busy seconds (kernels' own time), aten calls, kernel launches, host-device syncs."
        if self.prof is None: return {}
        ev, n = self.prof.key_averages(), self.steps
        count = lambda f: sum(e.count for e in ev if f(e.key)) / n
        busy = sum(e.self_device_time_total for e in ev if e.device_type.name == "CUDA") / 1e6 / n
        r = {"steps": n, "wall_s": round(self.wall / n, 4), "device_busy_s": round(busy, 4),
             "aten_calls": count(lambda k: k.startswith("aten::")), "kernel_launches": count(lambda k: k in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")),
             "syncs": {k: c for k in self.SYNCS if (c := count(lambda x: x == k))}}
        if out:  # the tables, for reading: the top ops by host time, then by device time
            tables = [ev.table(sort_by="self_cpu_time_total", row_limit=25)]
            if busy: tables.append(ev.table(sort_by="self_device_time_total", row_limit=25))
            out.write_text("\n\n".join(tables))
        return r


def peak_mb(device):
    import resource, torch
    if device == "cuda": return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profiled(a) -> list:
    "The profiling callback when --profile is on (`a.profiler` then holds it): K more steps after the timed ones."
    a.profiler = Profile(a.warmup + a.steps, a.profile) if a.profile else None
    return [a.profiler.cb()] if a.profiler else []


def run_tutorial(a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
    from llmops_nb.models import load_tokenizer
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    tok = load_tokenizer(a.model)
    model = get_peft_model(load_model(a, dtype), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                            task_type="CAUSAL_LM"))
    texts = [tok.apply_chat_template(m, tokenize=False) for m in conversations(a, tok)]
    train = [tok(t, truncation=True, max_length=a.seq_len) for t in texts]
    clock = Clock(a.warmup, a.warmup + a.steps)
    args = TrainingArguments(output_dir=str(Path(a.tmp)/"tutorial"), per_device_train_batch_size=8, max_steps=a.warmup + a.steps + a.profile,
                             learning_rate=2e-4, bf16=dtype == torch.bfloat16, use_cpu=a.device == "cpu", save_strategy="no",
                             report_to="none", logging_steps=1000, include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    t = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                callbacks=[clock.cb()] + profiled(a))
    t.train()
    return clock


def run_ours(a):
    import torch
    from peft import get_peft_model
    from llmops_nb import labels, lora, loss, packing, trainer
    from llmops_nb.models import load_tokenizer, train_dtypes
    from llmops_nb.settings import FinetuneConfig
    cfg = FinetuneConfig(model=a.model, max_length=a.seq_len, pack_length=a.pack_length or a.seq_len,
                         per_device_train_batch_size=a.rows, max_steps=a.warmup + a.steps + a.profile, save_steps=10**6, logging_steps=1000,
                         torch_compile=a.compile, device=a.device, warmup_steps=0, dtype="float32" if a.only == "ours-fp32" else a.dtype)
    if a.only == "ours-dropout": cfg.lora_dropout = 0.05
    if a.only == "ours-liger": cfg.use_liger_kernel = True
    weights, mixed = train_dtypes(cfg.dtype, cfg.device)
    if a.only == "ours-fp32-base": weights = torch.float32
    if a.only == "ours-bf16-attention": packing.CPU_FP32_ATTENTION = 0
    if a.only == "ours-plain-loss": loss.LOSS_CHUNK = 0
    tok = load_tokenizer(a.model)
    base = load_model(a, weights)
    if a.only != "ours-dense-mask": packing.use_packed_attention(base)
    model = get_peft_model(base, lora.peft_config(cfg, base))
    if a.only != "ours-unfused": lora.fuse_lora(model)
    import datasets
    exs, _ = labels.tokenize_split(tok, datasets.Dataset.from_dict({"messages": conversations(a, tok)}), cfg.max_length)
    rows = packing.pack(exs, cfg.pack_length)
    clock = Clock(a.warmup, a.warmup + a.steps)
    args = trainer.training_args(cfg, Path(a.tmp)/"ours", "none", has_eval=False)
    args.disable_tqdm = True
    t = trainer.CompletionTrainer(model=model, args=args, train_dataset=rows, data_collator=packing.PackedCollator(), callbacks=[clock.cb()] + profiled(a))
    t.train()
    return clock


def child(a):
    import tempfile
    a.tmp = tempfile.mkdtemp(prefix="bench-ft-")
    clock = (run_tutorial if a.only.startswith("tutorial") else run_ours)(a)
    dt, n = clock.t1 - clock.t0, clock.n1 - clock.n0
    print("RESULT " + json.dumps({"method": a.only, "useful_tokens": n, "seconds": round(dt, 2), "tokens_per_second": round(n / dt, 1),
                                  "cpu_seconds": round(clock.c1 - clock.c0, 2),
                                  "peak_memory_mb": round(peak_mb(a.device), 1),
                                  **({"profile": a.profiler.summary(Path(a.out).with_suffix(f".{a.only}.profile.txt") if a.out else None)}
                                     if a.profiler else {})}), flush=True)


ALLOCATOR = {"tutorial": "system", "ours-system-malloc": "system", "tutorial-tcmalloc": "auto"}  # the others: the stage kernels' choice


def method_env(m: str) -> dict:
    "Ours runs with the allocator stage kernels get (kernels.malloc_env); the tutorial, as tutorials run, with the system's."
    from llmops_nb.kernels import malloc_env
    return {**os.environ, **malloc_env(ALLOCATOR.get(m))}


def results(runs: dict, a) -> dict:
    "Medians of the runs so far ({method: [result, ...]}), and the ratios where both sides ran; written to --out (whole or not at all)."
    med = lambda m, f: statistics.median(f(r) for r in runs[m])
    res = {m: dict(rs[0], tokens_per_second=med(m, lambda r: r["tokens_per_second"]),
                   useful_tokens_per_cpu_second=med(m, lambda r: r["useful_tokens"] / r["cpu_seconds"]), runs=rs) for m, rs in runs.items()}
    if "ours" in res and "tutorial" in res:
        res["ratio"] = round(res["ours"]["tokens_per_second"] / res["tutorial"]["tokens_per_second"], 2)
        res["round_ratios"] = [round(o["tokens_per_second"] / t["tokens_per_second"], 2) for o, t in zip(runs["ours"], runs["tutorial"])]
        res["cpu_ratio"] = round(res["ours"]["useful_tokens_per_cpu_second"] / res["tutorial"]["useful_tokens_per_cpu_second"], 2)
    res["setup"] = {k: v for k, v in vars(a).items() if k not in ("only", "out", "profiler")}
    if a.out:
        tmp = Path(a.out).with_suffix(".json.tmp"); tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, a.out)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model (CPU runs); its tokenizer is used for --shape too")
    ap.add_argument("--shape", choices=list(SHAPES), help="random-init Llama of this shape instead of --model")
    ap.add_argument("--seq-len", type=int, default=1024, help="max tokens per example; also the packed row length")
    ap.add_argument("--pack-length", type=int, default=0, help="packed row length (0: --seq-len, 1024 as params/default.yaml)")
    ap.add_argument("--rows", type=int, default=1, help="packed rows per step (ours)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--compile", action="store_true", help="torch.compile our model")
    ap.add_argument("--dtype", default="auto", help="our dtype setting (auto, float32, bfloat16); the tutorial stays fp32 on CPU, bf16 on GPU")
    ap.add_argument("--methods", default="", help="comma-separated methods to time (default: tutorial,ours; all with --ablate)")
    ap.add_argument("--data", default="data/instructions.jsonl")
    ap.add_argument("--min-examples", type=int, default=0, help="repeat the data to at least this many examples")
    ap.add_argument("--ablate", action="store_true", help="also time ours without each of its choices")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all methods, interleaved; medians are reported")
    ap.add_argument("--only", choices=METHODS + EXTRA, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="torch.profiler over K more steps after the timed ones: per step wall and device-busy seconds, "
                         "aten calls, kernel launches and syncs in the JSON; the top ops by host and device time beside --out")
    a = ap.parse_args()
    if a.only: return child(a)
    os.environ.pop("LD_PRELOAD", None)  # a preloaded parent (LD_PRELOAD=...) would hand its allocator to every child: each gets exactly its own
    if a.device == "cuda" and not a.min_examples: a.min_examples = 8 * (a.warmup + a.steps + a.profile) * max(1, a.rows * a.seq_len // 1300)
    methods, runs = a.methods.split(",") if a.methods else METHODS[:None if a.ablate else 2], {}
    bad = [m for m in methods if m not in METHODS + EXTRA]
    if bad or "tutorial" not in methods or "ours" not in methods:
        sys.exit(f"--methods {a.methods}: expected tutorial, ours and any of {', '.join(METHODS[2:] + EXTRA)}")
    if a.out: Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    argv = [x for x in sys.argv[1:] if x != "--ablate"]
    for opt in ("--repeat", "--methods"):  # --out stays: a child writes its profile tables beside it
        if opt in argv: i = argv.index(opt); argv = argv[:i] + argv[i + 2:]
    for k in range(a.repeat):  # rounds interleave the methods, so a slow spell of the machine hits them alike
        for m in methods:
            p = subprocess.run([sys.executable, __file__, "--only", m] + argv, capture_output=True, text=True, cwd=ROOT, env=method_env(m))
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None: sys.exit(f"{m} failed:\n{p.stderr[-3000:]}")
            r = runs.setdefault(m, []); r.append(json.loads(line[7:])); r = r[-1]
            print(f"{m:15s} {r['tokens_per_second']:9.1f} useful tokens/s   peak {r['peak_memory_mb']:8.1f} MiB  "
                  f"({r['useful_tokens']} tokens in {r['seconds']} s, {r['cpu_seconds']} CPU s)", flush=True)
            if r.get("profile"): print(f"{'':15s} profiled, per step: {r['profile']}", flush=True)
            results(runs, a)  # after every run: a step cut short by a time limit keeps what it measured
    res = results(runs, a)
    tps, per_cpu = (lambda m: res[m]["tokens_per_second"]), (lambda m: res[m]["useful_tokens_per_cpu_second"])
    if a.repeat > 1: print(f"medians of {a.repeat} rounds: " + ", ".join(f"{m} {tps(m):.1f}" for m in methods) + f"; ratio per round {res['round_ratios']}")
    print(f"ratio ours / tutorial: {res['ratio']}x (per CPU second, robust to a busy machine: {res['cpu_ratio']}x)")
    for m in methods[2:]: print(f"  {m} / tutorial: {tps(m) / tps('tutorial'):.2f}x (per CPU second {per_cpu(m) / per_cpu('tutorial'):.2f}x); "
                                f"ours / {m}: {tps('ours') / tps(m):.2f}x (per CPU second {per_cpu('ours') / per_cpu(m):.2f}x)")


if __name__ == "__main__":
    main()
