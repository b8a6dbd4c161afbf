"Vector stores: LangChain's standard suite for every backend, Chroma against a real server, the same metrics on both question sets."
import json, subprocess, sys, uuid, warnings
from pathlib import Path
import numpy as np
import pytest
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from llmops_nb import retrieval as R, stores, vectorstore as V
from llmops_nb.core import ConfigError

chroma = pytest.importorskip("llmops_nb.chroma", reason="chromadb and langchain-chroma are dev requirements")
ROOT = Path(__file__).resolve().parents[1]
SETS = {"kestrel": ("data/kb", "data/rag_questions.jsonl"), "ruff": ("data/ruff/kb", "data/ruff/questions.jsonl")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "A real Chroma server (`chroma run`) on 127.0.0.1 at a free port, for this module."
    with chroma.local_server(tmp_path_factory.mktemp("chroma")) as url: yield url


class TestFaissStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self):
        yield V.FaissStore(embedding=self.get_embeddings())


class TestFaissHnswStandard(VectorStoreIntegrationTests):
    "HNSW cannot remove rows in place: deletes and upserts rebuild the graph."
    @pytest.fixture
    def vectorstore(self):
        yield V.FaissStore(embedding=self.get_embeddings(), index_type="hnsw")


class TestChromaStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, server):
        s = chroma.ChromaStore(self.get_embeddings(), f"std-{uuid.uuid4().hex[:12]}", url=server)
        try: yield s
        finally: s.delete_collection()


def test_faiss_round_trip_after_upsert_and_delete(tmp_path):
    "Upserts and deletes survive save/load (faiss' writer + JSON, no pickle) and drop the per-file hashes an update would trust."
    emb = V.get_embeddings()
    s = V.FaissStore(embedding=emb, meta={"files": {"a.md": "x"}})
    s.add_texts(["battery stores 5 kWh", "charger gives 11 kW", "warranty lasts 10 years"], [{"source": f"{i}.md"} for i in range(3)], ids=["b", "c", "w"])
    s.add_texts(["the battery stores 10 kWh"], [{"source": "0.md"}], ids=["b"])
    s.delete(["c", "nope"])
    assert "files" not in s.meta
    s.save(tmp_path/"ix")
    assert not any(p.read_bytes().startswith(b"\x80") for p in (tmp_path/"ix").iterdir())
    t = V.FaissStore.load(tmp_path/"ix", embeddings=emb)
    assert [d.id for d in t.docs] == ["w", "b"] and t.get_by_ids(["b"])[0].page_content == "the battery stores 10 kWh"
    np.testing.assert_allclose(t.vectors(), s.vectors(), atol=1e-6)
    assert [d.id for d in t.similarity_search("how much energy does the battery hold", k=2)] == ["b", "w"]
    V.FaissStore(embedding=emb).save(tmp_path/"empty")
    assert len(V.FaissStore.load(tmp_path/"empty", embeddings=emb)) == 0


def test_chroma_incremental_reindex_and_manifest(server, tmp_path):
    "Only new and changed files are embedded; the index manifest changes exactly when what was indexed changes."
    from test_rag import DOCS, KW, Counting, write
    kb, emb, coll = write(tmp_path/"kb", DOCS), Counting(), f"inc-{uuid.uuid4().hex[:8]}"
    ix1, ix2, ix3 = tmp_path/"i1", tmp_path/"i2", tmp_path/"i3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1, st1 = chroma.build_index(kb, server, coll, embeddings=emb, **KW); stores.write_pointer(s1, ix1)
        assert emb.n == st1["chunks"] == st1["added"] and not st1["incremental"]
        emb.n = 0
        s2, st2 = chroma.build_index(kb, server, coll, embeddings=emb, **KW); stores.write_pointer(s2, ix2)
        assert (emb.n, st2["kept"], st2["incremental"]) == (0, st1["chunks"], True)
        assert (ix1/"store.json").read_bytes() == (ix2/"store.json").read_bytes()  # same content: same digest, downstream stays cached
        n_faq = sum(d.metadata["source"] == "faq.txt" for d in s2.docs)
        (kb/"faq.txt").write_text("Support answers within two working days.")
        (kb/"privacy.html").unlink()
        (kb/"new.md").write_text("# New\n\nA brand new article about island mode.")
        s3, st3 = chroma.build_index(kb, server, coll, embeddings=emb, **KW); stores.write_pointer(s3, ix3)
    new = [d for d in s3.docs if d.metadata["source"] in ("faq.txt", "new.md")]
    assert emb.n == len(new) == st3["embedded"] and st3["incremental"] and st3["removed"] >= n_faq
    full, _ = V.build_index(kb, None, **KW)  # the same chunks as a full FAISS build
    assert [d.id for d in s3.docs] == [d.id for d in full.docs]
    assert json.loads((ix3/"store.json").read_text())["files"] != json.loads((ix1/"store.json").read_text())["files"]
    assert stores.open_index(ix3).similarity_search("island mode article", k=1)[0].metadata["source"] == "new.md"
    with pytest.raises(ConfigError, match="changed after rag_index"):
        stores.open_index(ix1)



def test_hybrid_follows_a_collection_edited_elsewhere(server):
    "A chat's store over a collection that another client (`rag_index` elsewhere) edits, keeping its size: hybrid returns no chunk that is gone or changed."
    emb, coll = V.get_embeddings(), f"live-{uuid.uuid4().hex[:8]}"
    reader, writer = chroma.ChromaStore(emb, coll, url=server), chroma.ChromaStore(emb, coll, url=server)
    t = {"b1": "the battery stores 10 kWh", "c1": "the charger gives 11 kW", "w1": "the warranty lasts two years",
         "i1": "the inverter converts DC to AC", "p1": "the panel faces south", "a1": "the app shows live power"}
    try:
        writer.add_texts(list(t.values()), ids=list(t))  # no metadata: Chroma stores None
        r = R.make_retriever(reader, "hybrid", k=3, fetch_k=3)
        def texts(q): return [d.page_content for d in r.invoke(q)]
        assert t["w1"] in texts("warranty years") and t["b1"] in texts("battery 10 kWh")  # the reader's BM25 is cached now
        writer.delete(["w1"]); writer.add_texts(["the warranty now lasts five years"], ids=["w2"])
        writer.add_texts(["the app shows the weather"], ids=["b1"])  # an upsert
        got = texts("warranty years") + texts("battery 10 kWh")
        assert len(reader) == 6 and t["w1"] not in got and t["b1"] not in got and "the warranty now lasts five years" in got, got
    finally: writer.delete_collection()

class Memo(V.Embeddings):
    "The packaged embedding model, each text embedded once for both backends."
    def __init__(self): self.inner, self.seen = V.get_embeddings(), {}
    def embed_documents(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self.seen]
        for t, v in zip(todo, self.inner.embed_documents(todo) if todo else []): self.seen[t] = v
        return [self.seen[t] for t in texts]
    def embed_query(self, text): return self.inner.embed_query(text)


@pytest.fixture(scope="module")
def memo(): return Memo()


@pytest.mark.parametrize("name", list(SETS))
def test_chroma_matches_faiss_on_both_question_sets(server, memo, name):
    "The Chroma backend reaches the FAISS metrics (every mode) on the shipped question sets."
    docs, qfile = SETS[name]
    qs = R.load_questions(ROOT/qfile)
    f, _ = V.build_index(ROOT/docs, None, embeddings=memo)
    c, _ = chroma.build_index(ROOT/docs, server, f"eq-{name}", embeddings=memo)
    got = {b: R.score_retrieval(s, qs, k=4) for b, s in (("faiss", f), ("chroma", c))}
    for m in R.MODES:  # Chroma's HNSW is approximate (its graph is built by several threads): one question may rank otherwise
        for key in ("hit_at_1", "hit_at_k", "mrr_at_k"):
            assert got["chroma"][m][key] == pytest.approx(got["faiss"][m][key], abs=1 / len(qs) + 1e-9), (name, m, key, got)
    same = sum([d.id for d in f.similarity_search(q["question"], k=4)] == [d.id for d in c.similarity_search(q["question"], k=4)] for q in qs)
    assert same >= len(qs) - 1, (name, same, len(qs))  # the same four chunks in the same order, all but one question at most
    assert got["faiss"]["hybrid"]["hit_at_k"] >= 0.85  # far above chance: the set and its documents fit together


def test_store_setting_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="expected one of faiss, chroma"):
        stores.update_store(ROOT/"data/kb", tmp_path/"ix", store="pinecone")
    with pytest.raises(ConfigError, match="is not a Chroma server address"):
        stores.update_store(ROOT/"data/kb", tmp_path/"ix", store="chroma", store_url="")
    code = ("import sys; sys.modules['chromadb'] = None\n"
            "from llmops_nb import stores\n"
            "try: stores.update_store('data/kb', 'ix', store='chroma', store_url='http://127.0.0.1:1')\n"
            "except Exception as e: print(type(e).__name__, '|', e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.strip()
    assert out.startswith("ConfigError |") and "pip install chromadb langchain-chroma" in out and "\n" not in out, out


def test_pipeline_with_chroma_store(server, params, tmp_path):
    "rag_index -> rag_eval through papermill with `store: chroma`: the index output is store.json, rag_eval reads the collection, a rerun is cached."
    from llmops_nb import pipeline as P
    kb = tmp_path/"kb"; kb.mkdir()
    for p in sorted((ROOT/"data"/"kb").glob("*.md"))[:6]: (kb/p.name).write_text(p.read_text())
    f = params({"model": "tiny-random", "stages": ["rag_index", "rag_eval"],
                "rag_index": {"docs": str(kb), "store": "chroma", "store_url": server, "collection": "pipeline-kb"},
                "rag_eval": {"max_questions": 1, "max_new_tokens": 4}})
    r1 = P.run(f, progress=False)
    ix = Path(r1["stages"]["rag_index"]["out_dir"])/"index"
    assert sorted(p.name for p in ix.iterdir()) == ["store.json"]
    m = json.loads((ix/"store.json").read_text())
    assert (m["store"], m["collection"], len(m["files"])) == ("chroma", "pipeline-kb", 6)
    ev = r1["stages"]["rag_eval"]["metrics"]
    assert ev["n_questions"] == 74 and set(ev["retrieval"]) == set(R.MODES)
    r2 = P.run(f, progress=False)
    assert [s["status"] for s in r2["stages"].values()] == ["cached", "cached"]
