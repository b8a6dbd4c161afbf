"""What hybrid retrieval's live-store check costs a query: `HybridRetriever` (BM25's hits checked against the store with one
`get_by_ids`, so a chunk deleted or changed since the BM25 cache was built is never returned) against the same retriever
without the check (BM25's cached hits as they were), on the 74 Kestrel questions, for FAISS and a real Chroma server.

    python bench/hybrid.py [--repeat 3] [--stores faiss,chroma] [--out bench/out/hybrid.json]

Rounds interleave the two methods; each figure is the median over rounds of the mean seconds a query takes (the query's
embedding included, as in use). The answers of both are compared: on an unchanged store they must be the same chunks.
"""
import argparse, json, os, statistics, sys, tempfile, time, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from llmops_nb import retrieval as R, stores  # noqa: E402


class Unchecked(R.HybridRetriever):
    "The hybrid retriever before the check: BM25's top hits as the cache holds them."
    def _sparse(self, query):
        docs, index = R.corpus(self.store)
        n = min(self.fetch_k, len(docs))
        if n == 0: return 0, []
        scores = index.get_scores(R._tokens(query))
        return n, [docs[i] for i in np.argsort(-scores, kind="stable")[:n] if scores[i] > 0]


def rounds(store, questions, repeat):
    methods = {"checked": R.HybridRetriever(store=store), "unchecked": Unchecked(store=store)}
    for r in methods.values(): r.invoke(questions[0])  # warm: BM25 built, embeddings loaded
    secs, ids = {m: [] for m in methods}, {}
    for _ in range(repeat):
        for m, r in methods.items():
            t = time.perf_counter()
            ids[m] = [[d.id for d in r.invoke(q)] for q in questions]
            secs[m].append((time.perf_counter() - t) / len(questions))
    return {m: {"s_per_query": statistics.median(v), "rounds": v} for m, v in secs.items()} | {"same_answers": ids["checked"] == ids["unchecked"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stores", default="faiss,chroma")
    ap.add_argument("--out", default="bench/out/hybrid.json")
    a = ap.parse_args(argv)
    questions = [q["question"] for q in R.load_questions(ROOT/"data"/"rag_questions.jsonl")]
    out = {}
    for name in a.stores.split(","):
        d = Path(tempfile.mkdtemp())/"index"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "chroma":
                from llmops_nb.chroma import local_server
                with local_server() as url:
                    store, _ = stores.update_store(ROOT/"data"/"kb", d, "chroma", url, "bench-hybrid")
                    out[name] = rounds(store, questions, a.repeat)
            else:
                store, _ = stores.update_store(ROOT/"data"/"kb", d, "faiss", previous="")
                out[name] = rounds(store, questions, a.repeat)
        r = out[name]
        print(f"{name}: checked {r['checked']['s_per_query'] * 1000:.2f} ms a query, unchecked {r['unchecked']['s_per_query'] * 1000:.2f} ms "
              f"({r['checked']['s_per_query'] / r['unchecked']['s_per_query']:.3f}x); same answers: {r['same_answers']}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"questions": len(questions), "repeat": a.repeat, **out}, indent=1))


if __name__ == "__main__": main()
