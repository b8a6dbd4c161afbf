"""Retrieval quality on both shipped question sets: mode x set x hit@1, hit@4, MRR@4, per backend, before/after.

    python bench/retrieval.py [--stores faiss,chroma] [--out bench/out/retrieval.json]

Sets: `kestrel` (data/kb + data/rag_questions.jsonl, written with the knowledge base) and `ruff`
(data/ruff/kb + data/ruff/questions.jsonl: ruff's rule docs, questions written before any retrieval ran).
`before` is hybrid's BM25 with the word-only tokenizer it had; `after` the current one (words and
operator runs). Each text is embedded once (the packaged MiniLM) and shared by every row. Chroma runs as a
real `chroma run` server on 127.0.0.1. Scores are deterministic: they do not depend on machine load.
"""
import argparse, json, os, re, sys, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmops_nb import retrieval as R, vectorstore as V  # noqa: E402

SETS = {"kestrel": ("data/kb", "data/rag_questions.jsonl"), "ruff": ("data/ruff/kb", "data/ruff/questions.jsonl")}
BM25_MODES = ("hybrid", "diverse")  # the modes the tokenizer changes; dense and MMR do not use it
TOKENIZERS = {"before": lambda t: re.findall(r"\w+", t.lower()), "after": R._tokens}


class Memo(V.Embeddings):
    def __init__(self): self.inner, self.seen = V.get_embeddings(), {}
    def embed_documents(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self.seen]
        for t, v in zip(todo, self.inner.embed_documents(todo) if todo else []): self.seen[t] = v
        return [self.seen[t] for t in texts]
    def embed_query(self, text): return self.inner.embed_query(text)


def score(store, qs, tok):
    R._tokens = tok
    if hasattr(store, "_llmops_bm25"): del store._llmops_bm25  # the BM25 index is built with the tokenizer
    try: return R.score_retrieval(store, qs, k=4)
    finally: R._tokens = TOKENIZERS["after"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default="faiss,chroma")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"retrieval.json"))
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    emb, rows, backends = Memo(), [], a.stores.split(",")
    srv = None
    if "chroma" in backends:
        from llmops_nb import chroma
        srv = chroma.local_server(); url = srv.__enter__()
    try:
        for name, (docs, qf) in SETS.items():
            qs = R.load_questions(ROOT/qf)
            for b in backends:
                if b == "faiss": store, _ = V.build_index(ROOT/docs, None, embeddings=emb)
                else: store, _ = chroma.build_index(ROOT/docs, url, f"bench-{name}", embeddings=emb)
                for when, tok in TOKENIZERS.items():
                    for mode, r in score(store, qs, tok).items():
                        rows.append(dict(store=b, set=name, when=when, mode=mode, hit_at_1=r["hit_at_1"], hit_at_4=r["hit_at_k"], mrr=r["mrr_at_k"], n=r["n"]))
    finally:
        if srv: srv.__exit__(None, None, None)
    print(f"{'store':7} {'set':8} {'mode':7} {'when':7} {'hit@1':>6} {'hit@4':>6} {'MRR':>6}")
    for r in rows:
        if r["when"] == "after" and r["mode"] not in BM25_MODES: continue
        print(f"{r['store']:7} {r['set']:8} {r['mode']:7} {r['when'] if r['mode'] in BM25_MODES else '':7} {r['hit_at_1']:6.3f} {r['hit_at_4']:6.3f} {r['mrr']:6.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    print(f"written {a.out}; targets: hit@1 >= 0.85 and hit@4 >= 0.97 on both sets")


if __name__ == "__main__": main()
