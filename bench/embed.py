"""Embedding benchmark: the packaged MiniLM in its `dtype: auto` precision vs fp32, on the knowledge base's chunks, one run.

    python bench/embed.py [--copies 2] [--dtype auto] [--batch-size 32] [--repeat 3] [--threads 0] [--out bench/out/embed.json]

Both models embed the very same chunk texts (`--copies` copies of data/kb, read and chunked as rag_index does) through
`vectorstore.embed_texts` with `vectorstore.get_embeddings(dtype=...)`; rounds alternate the order, `--repeat` rounds,
medians reported, per wall second and per CPU second (the latter is steadier on a shared machine). Agreement: the cosine
between each chunk's two vectors, and how many of the top-4 chunks for each question of data/rag_questions.jsonl are
the same.
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmops_nb import documents, retrieval, vectorstore as V  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=2, help="copies of data/kb's chunks to embed")
    ap.add_argument("--dtype", default="auto", help="the dtype setting compared with float32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT/"bench"/"out"/"embed.json"))
    a = ap.parse_args(argv)
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    kb = ROOT/"data"/"kb"
    files, _ = documents.scan(kb)
    texts = [documents.embed_text(d) for rel in files for d in documents.chunk_file(kb/rel, kb, 800, 100)] * a.copies
    embs = {"float32": V.get_embeddings(dtype="float32", batch_size=a.batch_size), a.dtype: V.get_embeddings(dtype=a.dtype, batch_size=a.batch_size)}
    names = {k: V.embedding_dtype(e) for k, e in embs.items()}
    for e in embs.values(): V.embed_texts(e, texts[:64], progress=False)  # warm up
    runs, vecs = {k: [] for k in embs}, {}
    for r in range(a.repeat):
        for k in (list(embs) if r % 2 == 0 else list(embs)[::-1]):
            t, c = time.perf_counter(), time.process_time()
            vecs[k] = V.embed_texts(embs[k], texts, progress=False)
            runs[k].append((time.perf_counter() - t, time.process_time() - c))
            print(f"{names[k]:9s} round {r}: {runs[k][-1][0]:.2f} s ({runs[k][-1][1]:.2f} CPU s)", flush=True)
    med = lambda k, i: statistics.median(x[i] for x in runs[k])
    res = {"chunks": len(texts), "dtypes": names, "batch_size": a.batch_size, "threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
           "chunks_per_s": {names[k]: len(texts) / med(k, 0) for k in embs}, "chunks_per_cpu_s": {names[k]: len(texts) / med(k, 1) for k in embs},
           "runs": {names[k]: v for k, v in runs.items()}}
    other = a.dtype
    if names[other] != "float32":
        res["ratio"] = med("float32", 0) / med(other, 0)
        res["ratio_cpu"] = med("float32", 1) / med(other, 1)
        res["round_ratios"] = [f[0] / b[0] for f, b in zip(runs["float32"], runs[other])]
        cos = (vecs["float32"] * vecs[other]).sum(1)
        qs = [q["question"] for q in retrieval.load_questions(ROOT/"data"/"rag_questions.jsonl")]
        top = {k: np.argsort(-(V.embed_texts(embs[k], qs, progress=False) @ vecs[k][:len(texts) // a.copies].T), 1)[:, :4] for k in embs}
        res.update(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()),
                   top4_overlap=float(np.mean([len(set(x) & set(y)) / 4 for x, y in zip(top["float32"], top[other])])),
                   top1_same=float(np.mean(top["float32"][:, 0] == top[other][:, 0])))
        print(f"{names[other]} / float32: {res['ratio']:.2f}x chunks/s (per CPU second {res['ratio_cpu']:.2f}x; medians of {a.repeat}, "
              f"per round {[round(x, 2) for x in res['round_ratios']]}); cosine to fp32 min {res['cosine_min']:.4f} mean {res['cosine_mean']:.5f}; "
              f"top-4 overlap {res['top4_overlap']:.3f}, same top-1 {res['top1_same']:.3f} over {len(qs)} questions")
    else: print("both fp32 (this CPU has no native bf16): nothing to compare")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
