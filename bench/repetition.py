"""Repetition control: what `repetition_penalty` and `no_repeat_ngram_size` do to the evaluation metrics.

    python bench/repetition.py [--run latest] [--run-root runs] [--grid 1.0:0,1.1:0,1.2:0,1.0:3,1.0:4,1.1:4]
                               [--max-new-tokens 64] [--out bench/out/repetition.json]

The test split of a finished run (its prepared dataset and its fine-tuned adapter, nothing retrained), prompted as
the evaluate stage prompts it (`generation.chat_prompts`), answered greedily once per point of the grid
(`penalty:ngram`) by the base model and the tuned one, and scored by `evaluation.score_examples`. `--via generate`
answers through `generation.generate` (the evaluate stage's path, batch 8); the default `--via engine` through the
serving engine, whose greedy answers are the same (`nbs/28_engine.ipynb`, `bench/serve.py`) and which is several
times faster on a busy machine: the 1.0:0 row reproduces the evaluate stage's figures either way. Reports ROUGE-L and token F1 (means over the
examples) and how repetitive the answers are: the share of answers in which a sentence occurs twice or more, and
the share of repeated word 3-grams. The default of the shared `Generation` settings is chosen from this table.
"""
import argparse, json, os, re, sys, time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmops_nb import evaluation as E, generation as G, runs  # noqa: E402
from llmops_nb.data import load_prepared  # noqa: E402


def repeats(text: str) -> tuple:
    "(a sentence occurs twice or more, share of word 3-grams that are repeats)"
    sents = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) > 3]
    words = re.findall(r"\w+", text.lower())
    grams = Counter(zip(words, words[1:], words[2:]))
    total = sum(grams.values())
    return (len(sents) != len(set(sents)), (total - len(grams)) / total if total else 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="latest", help="a finished run with prepare and finetune stages")
    ap.add_argument("--run-root", default=str(ROOT/"runs"))
    ap.add_argument("--grid", default="1.0:0,1.1:0,1.2:0,1.3:0,1.0:3,1.0:4,1.1:4", help="repetition_penalty:no_repeat_ngram_size,...")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-examples", type=int, default=0, help="0: the whole test split")
    ap.add_argument("--via", choices=["engine", "generate"], default="engine", help="answer through the serving engine or generation.generate")
    ap.add_argument("--task", choices=["evaluate", "rag"], default="evaluate",
                    help="evaluate: the test split; rag: rag_eval's questions (max_questions of them) with the run's index, retriever and k")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"repetition.json"))
    a = ap.parse_args(argv)
    rec = runs.load_record(a.run, a.run_root)
    prep, adapter = runs.output(rec, "prepare", "dataset"), runs.output(rec, "finetune", "adapter")
    assert prep and adapter, f"run {rec['id']} has no prepared dataset or no adapter"
    model = rec["config"]["params"]["evaluate"]["model"]
    ds = load_prepared(prep.parent)["test"]
    if a.max_examples: ds = ds.select(range(min(a.max_examples, len(ds))))
    lm, tok = G.with_adapters(model, {"tuned": adapter}, device="cpu")
    prompts, refs, _ = G.chat_prompts(tok, ds["messages"])
    if a.task == "rag":  # the rag_eval stage's prompts: retrieved passages, numbered
        from llmops_nb import rag
        from llmops_nb.retrieval import load_questions, make_retriever
        from llmops_nb.vectorstore import load_index
        re = rec["config"]["params"]["rag_eval"]
        qs = [q for q in load_questions(re["questions"], re.get("max_questions") or 0) if q["answer"]]
        retriever = make_retriever(load_index(runs.output(rec, "rag_index", "index")), re["retrieval"], re["k"])
        prompts = [rag.render_prompt(tok, q["question"], retriever.invoke(q["question"])) for q in qs]
        refs = [q["answer"] for q in qs]
    grid = [(float(p), int(n)) for p, n in (g.split(":") for g in a.grid.split(","))]
    if a.via == "engine":
        from llmops_nb.engine import Engine, Model, Sampling
        from llmops_nb.models import load_causal_lm
        eng = Engine(max_batch=a.batch_size)
        served = {"base": Model(load_causal_lm(model, device="cpu")[0], tok, "base"),
                  "tuned": Model(load_causal_lm(model, device="cpu", adapter=str(adapter))[0].merge_and_unload(), tok, "tuned")}
        del lm
    rows = []
    for penalty, ngram in grid:
        for name in ("base", "tuned"):
            t = time.perf_counter()
            if a.via == "engine":
                answers = eng.generate(served[name], prompts, Sampling(max_tokens=a.max_new_tokens, repetition_penalty=penalty, no_repeat_ngram_size=ngram))
                scores = {**E.score_examples("rougeL", answers, refs), **E.score_examples("token_f1", answers, refs)}
            else:
                with G.use_adapter(lm, name):
                    answers, scores = E.answer_and_score(lm, tok, prompts, refs, ["rougeL", "token_f1"], desc=f"{name} {penalty}:{ngram}",
                                                         batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                                         repetition_penalty=penalty, no_repeat_ngram_size=ngram, progress=False)
            rep = [repeats(x) for x in answers]
            row = dict(model=name, repetition_penalty=penalty, no_repeat_ngram_size=ngram, n=len(answers),
                       rougeL=sum(scores["rougeL"]) / len(answers), token_f1=sum(scores["token_f1"]) / len(answers),
                       repeated_sentence=sum(r[0] for r in rep) / len(rep), repeated_3grams=sum(r[1] for r in rep) / len(rep),
                       seconds=round(time.perf_counter() - t, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"run": rec["id"], "model": model, "adapter": str(adapter), "via": a.via, "task": a.task, "rows": rows}, indent=1))
    print(f"\n{'model':6} {'penalty':>7} {'ngram':>5} {'rougeL':>7} {'tokenF1':>7} {'rep.sent':>8} {'rep.3g':>7}")
    for r in rows:
        print(f"{r['model']:6} {r['repetition_penalty']:7.2f} {r['no_repeat_ngram_size']:5d} {r['rougeL']:7.4f} {r['token_f1']:7.4f} "
              f"{r['repeated_sentence']:8.3f} {r['repeated_3grams']:7.3f}")
    return rows


if __name__ == "__main__":
    main()
