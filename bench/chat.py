"""`llmops chat`'s answering, one question at a time, on each allocator: what the chat's restart on tcmalloc is worth.

    python bench/chat.py [--questions 13] [--max-new-tokens 64] [--repeat 3] [--allocators system,auto] [--out bench/out/chat.json]

Each round answers the first `--questions` questions of data/rag_questions.jsonl through `chat.Answerer` (the page's
RAG chain: retrieval from an index of data/kb, the packaged SmolLM2-135M-Instruct, greedy) in a fresh process per
allocator (`kernels.malloc_env`: `system` is glibc's, `auto` tcmalloc where it is installed), the first answer untimed.
Rounds alternate the allocators; medians of seconds per answer are reported, and the answers must be the same.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(a):
    from llmops_nb.chat import Answerer
    qs = [json.loads(l)["question"] for l in (ROOT/"data"/"rag_questions.jsonl").read_text().splitlines() if l.strip()][:a.questions]
    bot = Answerer(a.index, model=a.model, max_new_tokens=a.max_new_tokens)
    answers = [bot(qs[0])["answer"]]  # warm-up
    t = time.perf_counter()
    answers += [bot(q)["answer"] for q in qs[1:]]
    print("RESULT " + json.dumps({"s_per_answer": (time.perf_counter() - t) / (len(qs) - 1), "answers": answers,
                                  "preload": os.environ.get("LD_PRELOAD")}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", type=int, default=13, help="questions per round (the first one untimed)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--allocators", default="system,auto", help="comma-separated kernels.malloc_env choices")
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child: return child(a)
    os.environ.pop("LD_PRELOAD", None)  # a preloaded parent (LD_PRELOAD=...) would hand its allocator to every child: each gets exactly its own
    from llmops_nb import vectorstore
    from llmops_nb.kernels import malloc_env
    a.index = str(Path(tempfile.mkdtemp(prefix="bench-chat-"))/"index")
    vectorstore.build_index(ROOT/"data"/"kb", a.index)
    allocs, runs = a.allocators.split(","), {}
    argv = [sys.executable, __file__, "--child", "--index", a.index, "--model", a.model, "--questions", str(a.questions),
            "--max-new-tokens", str(a.max_new_tokens)]
    for k in range(a.repeat):
        for m in allocs:
            p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **malloc_env(m)})
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None: sys.exit(f"{m} failed:\n{p.stderr[-3000:]}")
            r = json.loads(line[7:]); runs.setdefault(m, []).append(r)
            print(f"round {k + 1} {m:8s} {r['s_per_answer']:.3f} s an answer (preload {r['preload']})", flush=True)
    med = {m: statistics.median(r["s_per_answer"] for r in runs[m]) for m in allocs}
    same = all(r["answers"] == runs[allocs[0]][0]["answers"] for m in allocs for r in runs[m])
    base = allocs[0]
    print(", ".join(f"{m} {med[m]:.3f}" for m in allocs) + " s an answer (medians); " +
          ", ".join(f"{m} {med[base] / med[m]:.2f}x {base}" for m in allocs[1:]) + f"; answers identical: {same}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"s_per_answer": med, "answers_identical": same, "setup": vars(a),
                                           "runs": {m: [r["s_per_answer"] for r in runs[m]] for m in allocs}}, indent=1))
    if not same: sys.exit("the answers differ between allocators")


if __name__ == "__main__":
    main()
