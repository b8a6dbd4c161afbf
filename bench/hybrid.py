"""What a hybrid query costs as the knowledge base grows, with BM25 by `bm25s` (sparse matrices, what `retrieval` uses)
and, side by side where it is installed, by `rank_bm25` (a Python loop over every chunk, what it used before).

    python bench/hybrid.py [--sizes 1000,10000,50000] [--queries 20] [--repeat 3] [--stores faiss,chroma] [--out bench/out/hybrid.json]

`--sizes`: synthetic chunks (60 words each from a Zipf vocabulary of 30,000, seeded) in a `FaissStore` with a fast fake
embedding (`DeterministicFakeEmbedding`, 384 dimensions, flat search), so that the figures are the retriever's own
work, not an embedding model's. Per size: the BM25 index's build (seconds, resident memory it keeps), BM25 alone (scores and top
`fetch_k`) and a whole `HybridRetriever` query (the fake query embedding, dense search, BM25, the live-store check,
fusion), each the median over `--repeat` interleaved rounds of the mean over `--queries` questions (8 words each
from the same vocabulary); old/new ratios; and how many of BM25's top 20 the two share (their rankings differ
only where a query word is in more than half the chunks: see nbs/15_retrieval.ipynb).

`--stores` (off unless named): the older measure of the live-store check itself, `HybridRetriever` against the same
retriever without the check, on the 74 Kestrel questions, for FAISS and a real Chroma server.
"""
import argparse, gc, json, os, resource, statistics, sys, tempfile, time, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from llmops_nb import retrieval as R, stores  # noqa: E402
from llmops_nb.documents import embed_text  # noqa: E402

try:
    from rank_bm25 import BM25Okapi
except ImportError:
    BM25Okapi = None


class Before(R.HybridRetriever):
    "The hybrid retriever as it was: `rank_bm25`'s scores, a stable argsort of all of them, the same live-store check."
    def _sparse(self, query):
        docs, _ = R.corpus(self.store)  # the same chunks; the old index beside them on the store
        if getattr(self.store, "_bench_okapi", None) is None: self.store._bench_okapi = BM25Okapi([R._tokens(embed_text(d)) for d in docs])
        n = min(self.fetch_k, len(docs))
        if n == 0: return 0, []
        scores = self.store._bench_okapi.get_scores(R._tokens(query))
        hits = [docs[i] for i in np.argsort(-scores, kind="stable")[:n] if scores[i] > 0]
        live = {d.id: d for d in self.store.get_by_ids([d.id for d in hits])} if hits else {}
        return n, [live[d.id] for d in hits if d.id in live and embed_text(live[d.id]) == embed_text(d)]


class Unchecked(R.HybridRetriever):
    "The hybrid retriever without the live-store check: BM25's top hits as the cache holds them."
    def _sparse(self, query):
        docs, index = R.corpus(self.store)
        n = min(self.fetch_k, len(docs))
        if n == 0: return 0, []
        return n, [docs[i] for i in R._top(R._scores(index, R._tokens(query), len(docs)), n)]


def rss_mb(): return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20  # resident now (Linux): what an index keeps


def synthetic(n, seed=0, vocab=30_000, words=60):
    "`n` chunk texts and 2,000 questions' worth of words, from one Zipf vocabulary (common words in most chunks, rare ones in few)."
    rng = np.random.default_rng(seed)
    w = np.array([f"w{i}" for i in range(vocab)])
    p = 1 / np.arange(1, vocab + 1); p /= p.sum()
    return [" ".join(w[rng.choice(vocab, words, p=p)]) for _ in range(n)], [" ".join(w[rng.choice(vocab, 8, p=p)]) for _ in range(2000)]


def timed(f, qs):
    t = time.perf_counter()
    for q in qs: f(q)
    return (time.perf_counter() - t) / len(qs)


def scaling(size, nq, repeat):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from llmops_nb.vectorstore import FaissStore
    texts, questions = synthetic(size)
    qs = questions[:nq]
    store = FaissStore.from_texts(texts, DeterministicFakeEmbedding(size=384), ids=[f"c{i}" for i in range(size)],
                                  metadatas=[{"source": f"doc{i // 10}.md"} for i in range(size)])
    out = {"chunks": size}
    import bm25s  # noqa: F401  (imported before the clock starts: its import, scipy's, is not the build)
    gc.collect(); m, t = rss_mb(), time.perf_counter()
    docs, index = R.corpus(store)
    out["new_build_s"], out["new_build_MB"] = time.perf_counter() - t, rss_mb() - m
    new = {"bm25": lambda q: R._top(R._scores(index, R._tokens(q), len(docs)), 20), "hybrid": R.HybridRetriever(store=store).invoke}
    methods = {"new": new}
    if BM25Okapi is not None:
        gc.collect(); m, t = rss_mb(), time.perf_counter()
        store._bench_okapi = old = BM25Okapi([R._tokens(embed_text(d)) for d in docs])
        out["old_build_s"], out["old_build_MB"] = time.perf_counter() - t, rss_mb() - m
        methods["old"] = {"bm25": lambda q: np.argsort(-old.get_scores(R._tokens(q)), kind="stable")[:20], "hybrid": Before(store=store).invoke}
        a = [set(new["bm25"](q)) for q in qs]
        b = [{i for i in methods["old"]["bm25"](q) if old.get_scores(R._tokens(q))[i] > 0} for q in qs]
        out["top20_overlap"] = float(np.mean([len(x & y) / max(len(y), 1) for x, y in zip(a, b)]))
    secs = {f"{m}_{part}_ms": [] for m in methods for part in ("bm25", "hybrid")}
    for f in methods.values(): f["hybrid"](qs[0])  # warm
    for _ in range(repeat):
        for m, fs in methods.items():
            for part, f in fs.items(): secs[f"{m}_{part}_ms"].append(timed(f, qs) * 1000)
    out |= {k: statistics.median(v) for k, v in secs.items()}
    if "old" in methods: out |= {f"{p}_speedup": out[f"old_{p}_ms"] / out[f"new_{p}_ms"] for p in ("bm25", "hybrid")}
    return out


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


def check_cost(names, repeat):
    questions = [q["question"] for q in R.load_questions(ROOT/"data"/"rag_questions.jsonl")]
    out = {}
    for name in names:
        d = Path(tempfile.mkdtemp())/"index"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "chroma":
                from llmops_nb.chroma import local_server
                with local_server() as url:
                    store, _ = stores.update_store(ROOT/"data"/"kb", d, "chroma", url, "bench-hybrid")
                    out[name] = rounds(store, questions, repeat)
            else:
                store, _ = stores.update_store(ROOT/"data"/"kb", d, "faiss", previous="")
                out[name] = rounds(store, questions, repeat)
        r = out[name]
        print(f"{name}: checked {r['checked']['s_per_query'] * 1000:.2f} ms a query, unchecked {r['unchecked']['s_per_query'] * 1000:.2f} ms "
              f"({r['checked']['s_per_query'] / r['unchecked']['s_per_query']:.3f}x); same answers: {r['same_answers']}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="chunk counts, comma-separated; '' skips")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stores", default="", help="faiss,chroma: also the live-store check's cost on the Kestrel questions")
    ap.add_argument("--out", default="bench/out/hybrid.json")
    a = ap.parse_args(argv)
    out = {"queries": a.queries, "repeat": a.repeat, "scaling": []}
    if BM25Okapi is None: print("rank_bm25 is not installed: bm25s alone, no old/new ratio (pip install rank_bm25 to compare)")
    for size in [int(s) for s in a.sizes.split(",") if s]:
        r = scaling(size, a.queries, a.repeat); out["scaling"].append(r)
        line = f"{size:>7} chunks: build {r['new_build_s']:.2f} s (+{r['new_build_MB']:.0f} MB), BM25 {r['new_bm25_ms']:.2f} ms, hybrid {r['new_hybrid_ms']:.2f} ms a query"
        if "old_bm25_ms" in r:
            line += (f" | rank_bm25: build {r['old_build_s']:.2f} s (+{r['old_build_MB']:.0f} MB), BM25 {r['old_bm25_ms']:.1f} ms, hybrid {r['old_hybrid_ms']:.1f} ms"
                     f" | old/new: BM25 {r['bm25_speedup']:.0f}x, hybrid {r['hybrid_speedup']:.1f}x; top-20 overlap {r['top20_overlap']:.3f}")
        print(line, flush=True)
    if a.stores: out["check"] = check_cost(a.stores.split(","), a.repeat)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__": main()
