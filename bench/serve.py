"""Serving benchmark: `llmops serve`'s batching engine vs the way tutorials serve a model, same model, same prompts.

    python bench/serve.py [--model smollm2-135m-instruct] [--n 16] [--max-tokens 64] [--clients 1,4,16] [--repeat 1]
                          [--engines tutorial,hf] [--device cpu] [--max-batch 16] [--out bench/out/serve.json]

Two servers run as separate processes on loopback ports, both OpenAI-compatible, both holding the same packaged
model (SmolLM2-135M-Instruct, no adapter):

- `tutorial`: one FastAPI endpoint that calls `model.generate` for each request, one request at a time (a lock:
  what a tutorial's endpoint amounts to), greedy, no streaming;
- `hf`: our server (`server.create_app` over `serving.HFBackend` and `engine.Engine`: dynamic batching), streamed;
- `hf-packed` (an ablation): our server with weights packed for `--max-batch` rows (`engine.Model(prepack=True)`:
  MKL for fp32, oneDNN for bf16), as it served before 2026-12-04;
- `hf-system-malloc` (an ablation): `hf` on the system allocator; ours run on the allocator `llmops serve` preloads
  (`kernels.malloc_env`: tcmalloc where it is installed), the tutorial, as tutorials run, on the system's;
- `hf-fp32` (an ablation): our server with fp32 weights, as it was before `dtype: auto` picked bf16 on CPUs with
  native bf16 (`hf` loads the model in the auto dtype: bf16 there);
- `vllm` (GPU only, `pip install "llmops-nb[vllm]"`): our server in front of vLLM (`vllm_engine.VLLMBackend`).

Clients are threads using the official `openai` SDK, each sending the shipped test prompts (the test split of
data/instructions.jsonl as `prepare` splits it, system message included: the evaluate stage's prompts) one after
the other, `--clients` of them at once. Reported per server and client count: aggregate completion tokens/s,
latency p50/p95 and time to first token p50/p95 (the first streamed content; the whole answer for the tutorial
server, which does not stream). Greedy answers of every run are compared with the tutorial server's answers at one
client: in fp32 they must be identical; in bf16 a batch rounds differently from one prompt and a near tie can tip,
so the differing answers are counted. `--repeat` alternates the order of the servers and keeps medians (a shared machine
moves single runs a lot); on a busy 2-core machine torch's two OpenMP threads per process can make every product
many times slower than one thread (a 576x1536 product: 8.7 ms vs 0.25 ms), so `--threads 1` gives steadier figures.

On a GPU machine, the ready command (unverified here, there is no GPU):

    python bench/serve.py --device cuda --engines tutorial,hf,vllm --clients 1,16,64 --n 40 --max-tokens 128
"""
import argparse, concurrent.futures as cf, json, os, platform, socket, statistics, subprocess, sys, threading, time, urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_prompts(n: int) -> list:
    "The first `n` conversations of the test split `prepare` makes of the shipped data (its defaults), without the answer."
    from llmops_nb.data import load_records, split_dataset
    from llmops_nb.generation import split_conversation
    from llmops_nb.settings import PrepareConfig
    c = PrepareConfig()
    test = split_dataset(load_records(ROOT/"data"/"instructions.jsonl", system=c.system_prompt), c.val_size, c.test_size, c.seed)["test"]
    return [split_conversation(m)[0] for m in test["messages"][:n]]


# ---- the servers (each runs in its own process: python bench/serve.py --serve KIND --port P) ----

def tutorial_app(model: str, device: str):
    "The tutorial way: one endpoint, `model.generate` per request, one at a time."
    import torch
    from fastapi import FastAPI
    from llmops_nb.models import load_causal_lm
    lm, tok = load_causal_lm(model, device=device, dtype="float32" if device == "cpu" else "auto")  # as tutorials do: fp32 on CPU
    lock, app = threading.Lock(), FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        with lock:
            enc = tok.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True).to(lm.device)
            with torch.inference_mode():
                out = lm.generate(**enc, max_new_tokens=body.get("max_tokens", 64), do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True).strip()
        n = int((new != tok.pad_token_id).sum()) if tok.pad_token_id not in (None, tok.eos_token_id) else len(new) - int((new == tok.eos_token_id).sum())
        return {"id": "chatcmpl-tutorial", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": n, "total_tokens": enc["input_ids"].shape[1] + n}}
    return app


def ours_app(model: str, device: str, kind: str, max_batch: int):
    "Our server over the model alone (no run needed): the batching engine (hf, hf-packed, hf-system-malloc, hf-fp32) or vLLM behind our layer (vllm)."
    from types import SimpleNamespace
    from llmops_nb import deploy, engine as EN, serving
    from llmops_nb.models import load_causal_lm, load_tokenizer
    from llmops_nb.servelog import RequestLog
    from llmops_nb.server import create_app
    import tempfile
    name = deploy.base_name(model)
    lineage = {"base": model, "adapter": None, "run_id": "bench"}
    if kind in ("hf", "hf-packed", "hf-system-malloc", "hf-fp32"):
        lm, tok = load_causal_lm(model, device=device, dtype="float32" if kind == "hf-fp32" else "auto")
        m = EN.Model(lm, tok, name, max_batch=max_batch, prepack=kind == "hf-packed")
        dep = deploy.Deployment("bench", "bench", {name: deploy.Served(name, "base", m, tok, m.context, lineage)})
        backend = serving.HFBackend(EN.Engine(max_batch=max_batch, max_queue=4096))
    else:
        from transformers import AutoConfig
        from llmops_nb import vllm_engine
        from llmops_nb.models import resolve_model
        tok = load_tokenizer(model)
        ctx = AutoConfig.from_pretrained(resolve_model(model)).max_position_embeddings
        dep = deploy.Deployment("bench", "bench", {name: deploy.Served(name, "base", name, tok, ctx, lineage)})
        backend = vllm_engine.VLLMBackend.launch(SimpleNamespace(current=dep), max_num_seqs=max_batch)
    return create_app(dep, backend, RequestLog(Path(tempfile.mkdtemp())/"bench.db"), serving.Caps(max_input_tokens=0))


def run_server(kind: str, port: int, a):
    import torch, uvicorn
    if a.threads: torch.set_num_threads(a.threads)
    app = tutorial_app(a.model, a.device) if kind == "tutorial" else ours_app(a.model, a.device, kind, a.max_batch)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- the clients ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_up(url: str, proc, timeout=1800):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None: raise SystemExit(f"the server at {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5); return
        except urllib.error.HTTPError: return  # up (404/405 on a GET is fine)
        except OSError: time.sleep(1)
    raise SystemExit(f"the server at {url} did not start")


def load(url: str, model: str, prompts: list, clients: int, max_tokens: int, stream: bool) -> dict:
    "`clients` threads send `prompts` (shared queue, each prompt once); per request: latency, time to first token, tokens, text."
    from openai import OpenAI
    c = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=3600)
    todo, lock, res = list(enumerate(prompts)), threading.Lock(), {}
    def worker():
        while True:
            with lock:
                if not todo: return
                i, msgs = todo.pop(0)
            t0, first, parts, n = time.perf_counter(), None, [], 0
            if stream:
                for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}):
                    if ch.choices and ch.choices[0].delta.content:
                        first = first or time.perf_counter(); parts.append(ch.choices[0].delta.content)
                    if ch.usage: n = ch.usage.completion_tokens
            else:
                r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0)
                parts, n = [r.choices[0].message.content], r.usage.completion_tokens
            t1 = time.perf_counter()
            res[i] = dict(latency=t1 - t0, ttft=(first or t1) - t0, tokens=n, text="".join(parts))
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(worker) for _ in range(clients)]: f.result()
    wall = time.perf_counter() - t
    rows = [res[i] for i in range(len(prompts))]
    q = lambda xs, p: statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]
    lat, ttft = [r["latency"] for r in rows], [r["ttft"] for r in rows]
    return dict(wall_s=wall, tokens=sum(r["tokens"] for r in rows), tokens_per_s=sum(r["tokens"] for r in rows) / wall,
                latency_p50=q(lat, 50), latency_p95=q(lat, 95), ttft_p50=q(ttft, 50), ttft_p95=q(ttft, 95), texts=[r["text"] for r in rows])


ALLOCATOR = {"tutorial": "system", "hf-system-malloc": "system"}  # the others: what `llmops serve` preloads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16, help="test prompts (the test split has 40)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--engines", default="tutorial,hf", help="tutorial, hf, hf-packed, hf-system-malloc, hf-fp32, vllm (the first is the reference)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads in every server (0: torch's default); on a busy shared machine 1 is steadier")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"serve.json"))
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve: return run_server(a.serve, a.port, a)
    os.environ.pop("LD_PRELOAD", None)  # a preloaded parent (LD_PRELOAD=...) would hand its allocator to every child: each gets exactly its own
    import torch
    from llmops_nb.deploy import base_name
    from llmops_nb.kernels import malloc_env
    prompts, levels, engines = test_prompts(a.n), [int(x) for x in a.clients.split(",")], a.engines.split(",")
    procs, urls = {}, {}
    try:
        for e in engines:
            port = free_port()
            procs[e] = subprocess.Popen([sys.executable, __file__, "--serve", e, "--port", str(port), "--model", a.model, "--device", a.device,
                                         "--max-batch", str(a.max_batch), "--threads", str(a.threads)],
                                        env={**os.environ, **malloc_env(ALLOCATOR.get(e))})
            urls[e] = f"http://127.0.0.1:{port}"
        for e in engines: wait_up(urls[e] + "/v1/models", procs[e])
        name = base_name(a.model)
        for e in engines: load(urls[e], name, prompts[:2], 1, 4, e != "tutorial")  # warm up
        runs = {(e, c): [] for e in engines for c in levels}
        for r in range(a.repeat):
            for c in levels:
                for e in (engines if r % 2 == 0 else engines[::-1]):
                    res = load(urls[e], name, prompts, c, a.max_tokens, e != "tutorial")
                    runs[e, c].append(res)
                    print(f"round {r} {e:8s} clients {c:3d}: {res['tokens_per_s']:7.1f} tok/s  latency p50 {res['latency_p50']:6.2f} s  "
                          f"ttft p50 {res['ttft_p50']:6.2f} s", flush=True)
    finally:
        for p in procs.values(): p.terminate()
        for p in procs.values():
            try: p.wait(60)
            except subprocess.TimeoutExpired: p.kill()
    ref = runs[engines[0], levels[0]][0]["texts"]
    med = lambda xs: statistics.median(xs)
    table = []
    for c in levels:
        for e in engines:
            rs = runs[e, c]
            row = {"clients": c, "server": e, **{k: med([x[k] for x in rs]) for k in ("tokens_per_s", "latency_p50", "latency_p95", "ttft_p50", "ttft_p95")},
                   "identical": sum(x == y for r in rs for x, y in zip(r["texts"], ref)), "answers": sum(len(r["texts"]) for r in rs)}
            row["speedup"] = row["tokens_per_s"] / med([x["tokens_per_s"] for x in runs[engines[0], c]])  # vs the reference (the first server)
            table.append(row)
    out = {"model": a.model, "device": a.device, "n_prompts": len(prompts), "max_tokens": a.max_tokens, "max_batch": a.max_batch, "repeat": a.repeat,
           "threads": a.threads or torch.get_num_threads(), "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "load_average": os.getloadavg(), "table": table}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\n| clients | server | completion tok/s | latency p50 (s) | latency p95 (s) | TTFT p50 (s) | TTFT p95 (s) | vs {engines[0]} | identical greedy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['clients']} | {t['server']} | {t['tokens_per_s']:.1f} | {t['latency_p50']:.2f} | {t['latency_p95']:.2f} | {t['ttft_p50']:.2f} | "
              f"{t['ttft_p95']:.2f} | {t['speedup']:.2f}x | {t['identical']}/{t['answers']} |")
    bad = [t for t in table if t["identical"] != t["answers"]]
    if bad: print(f"\nNOT IDENTICAL: {[(t['server'], t['clients'], t['answers'] - t['identical']) for t in bad]}")
    return out


if __name__ == "__main__":
    main()
