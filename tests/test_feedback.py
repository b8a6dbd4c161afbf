"Feedback loop: the chat in a real browser, concurrent writers, exports, monitoring, the dpo stage."
import json, os, socket, sqlite3, subprocess, sys, threading
import pytest
from conftest import llmops

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
from llmops_nb import chat as C, feedback as F, preference as PR, retrieval as R, vectorstore as V

from conftest import CHROMIUM  # noqa: E402
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DOCS = {"battery.md": "# Battery\n\nThe KB-5 module stores 5.1 kWh, of which 4.8 kWh is usable.\n\n## Warranty\n\n"
                      "KB-5 modules are covered for 10 years or 6,000 full cycles.\n",
        "charger.md": "# Charger\n\nThe KC-11 charges cars at up to 11 kW.\n\n## Modes\n\nSolar-only mode uses surplus PV.\n",
        "island.md": "# Island mode\n\nDuring a power cut the system switches to battery power in under 20 ms.\n"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    "A small real FAISS index (packaged MiniLM) of three documents."
    root = tmp_path_factory.mktemp("kb")
    for name, text in DOCS.items(): (root/name).write_text(text)
    V.build_index(root, root.parent/"index", chunk_size=200, chunk_overlap=20)
    return root.parent/"index"


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    "A finetune stage folder with a real (untrained, freshly initialised) LoRA adapter on tiny-random."
    import peft
    from llmops_nb.models import load_causal_lm
    ft = tmp_path_factory.mktemp("finetune")
    lm, tok = load_causal_lm("tiny-random", device="cpu")
    m = peft.get_peft_model(lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    m.save_pretrained(str(ft/"adapter")); tok.save_pretrained(str(ft/"adapter"))
    return ft



def test_chat_in_browser(browser, index, sft_adapter, tmp_path):
    "Ask in the served chat, see the answer and its sources, thumbs down, send a correction: the row is complete."
    from playwright.sync_api import sync_playwright
    db = tmp_path/"fb.db"
    bot = C.Answerer(index, "tiny-random", adapter=sft_adapter/"adapter", max_new_tokens=16, run_id="run-under-test")
    port = _free_port()
    app = C.serve(bot, "127.0.0.1", port, db=db, block=False)
    question = "How long is the battery warranty?"
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#question textarea").fill(question)
            page.locator("#ask").click()
            page.locator("#status").get_by_text("Answered").wait_for(timeout=120_000)
            assert page.locator("#answer").inner_text().strip()
            shown = page.locator("#sources").inner_text()
            assert "battery.md" in shown and "similarity" in shown, shown
            page.locator("#thumbs-down").click()
            page.locator("#status").get_by_text("recorded").wait_for(timeout=30_000)
            page.locator("#correction textarea").fill("10 years or 6,000 full cycles.")
            page.locator("#comment textarea").fill("the cycles are missing")
            page.locator("#send").click()
            page.locator("#status").get_by_text("feedback saved").wait_for(timeout=30_000)
            ctx.close()
    finally: app.close()
    con = sqlite3.connect(db); con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM feedback")]
    assert len(rows) == 1
    r = rows[0]
    assert (r["question"], r["rating"], r["correction"], r["comment"]) == (question, -1, "10 years or 6,000 full cycles.", "the cycles are missing")
    assert (r["run_id"], r["model_id"], r["adapter_id"]) == ("run-under-test", "tiny-random", str(sft_adapter/"adapter"))
    srcs = json.loads(r["sources"])
    assert srcs and srcs[0]["source"] == "battery.md" and all(0 < s["score"] <= 1 for s in srcs)
    assert isinstance(r["answer"], str) and r["latency_ms"] > 0 and r["top_similarity"] == max(s["score"] for s in srcs)
    assert r["timestamp"] <= r["rated_at"]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_review_tab_in_browser(browser, index, tmp_path):
    "The Review tab of `llmops chat`'s page: pending rows listed as text; edit-and-approve and reject recorded in the store with who and when."
    from playwright.sync_api import sync_playwright
    db = tmp_path/"fb.db"
    a = F.record("How long is the <img src=x onerror=alert(1)> warranty?", "12 months", [{"source": "battery.md"}], rating=-1,
                 correction="10 years.", db=db)
    b = F.record("Reset the app?", "Hold it.", [{"source": "charger.md"}], rating=1, db=db)
    F.record("not rated", "x", db=db)  # nothing to review
    bot = C.Answerer(index, "tiny-random", max_new_tokens=4)
    port = _free_port()
    app = C.serve(bot, "127.0.0.1", port, db=db, block=False)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = ctx.new_page(); alerts = []
            page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Review").click()
            page.locator("#review-counts").get_by_text("2 pending, 0 approved, 0 rejected").wait_for(timeout=30_000)
            listed = page.locator("#review-list").inner_text()
            assert "<img src=x onerror=alert(1)>" in listed and "Reset the app?" in listed and "not rated" not in listed, listed
            assert "10 years." in listed and "battery.md" in listed
            page.locator("#review-item").get_by_text("12 months").wait_for(timeout=30_000)  # the first pending row, in full
            assert "<img src=x onerror=alert(1)>" in page.locator("#review-item").inner_text()
            page.locator("#review-approve").click()  # no reviewer's name: refused, nothing recorded
            page.locator("#review-status").get_by_text("Not recorded").wait_for(timeout=30_000)
            assert F.load(db).set_index("id").loc[a, "review"] == "pending"
            page.locator("#reviewer textarea, #reviewer input").first.fill("ana@example.com")
            page.locator("#review-answer textarea").fill("10 years or 6,000 full cycles.")
            page.locator("#review-edit").click()
            page.locator("#review-status").get_by_text(f"#{a} approved with your edit by ana@example.com").wait_for(timeout=30_000)
            page.locator("#review-counts").get_by_text("1 pending, 1 approved, 0 rejected").wait_for(timeout=30_000)
            page.locator("#review-item").get_by_text("Hold it.").wait_for(timeout=30_000)  # the next pending row
            page.locator("#review-note textarea, #review-note input").first.fill("a blank-ish answer")
            page.locator("#review-reject").click()
            page.locator("#review-status").get_by_text(f"#{b} rejected by ana@example.com").wait_for(timeout=30_000)
            page.locator("#review-counts").get_by_text("0 pending, 1 approved, 1 rejected").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path/"review-tab.png"), full_page=True)
            ctx.close()
        assert not alerts  # nothing from the store ran in the page
    finally: app.close()
    con = sqlite3.connect(db); con.row_factory = sqlite3.Row
    rows = {r["id"]: dict(r) for r in con.execute("SELECT * FROM feedback")}
    assert (rows[a]["review"], rows[a]["reviewer"], rows[a]["review_answer"]) == ("approved", "ana@example.com", "10 years or 6,000 full cycles.")
    assert (rows[b]["review"], rows[b]["reviewer"], rows[b]["review_note"]) == ("rejected", "ana@example.com", "a blank-ish answer")
    assert all(rows[i]["reviewed_at"] >= rows[i]["timestamp"] for i in (a, b))
    trail = [(r["feedback_id"], r["decision"], r["reviewer"]) for r in con.execute("SELECT * FROM reviews ORDER BY id")]
    assert trail == [(a, "approved", "ana@example.com"), (b, "rejected", "ana@example.com")]  # the refused click left no trace


WRITER = """
import sys
from llmops_nb import feedback as F
db, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    rid = F.record(f"q {who}-{i}", "a", ["x.md"], latency_ms=1.0, top_similarity=0.5, db=db)
    F.rate(rid, 1 if i % 2 else -1, correction=f"c {who}-{i}", db=db)
"""


def test_concurrent_sessions_lose_nothing(tmp_path):
    "20 threads and 20 processes record and rate at the same time; every row and every rating arrives."
    db, n = tmp_path/"fb.db", 15
    go = threading.Barrier(20)
    errors = []
    def session(who):
        go.wait()
        try:
            for i in range(n):
                rid = F.record(f"q t{who}-{i}", "a", ["x.md"], latency_ms=1.0, top_similarity=0.5, db=db)
                F.rate(rid, 1 if i % 2 else -1, correction=f"c t{who}-{i}", db=db)
        except Exception as e: errors.append(e)
    ts = [threading.Thread(target=session, args=(w,)) for w in range(20)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"p{w}", str(n)]) for w in range(20)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert [p.wait(timeout=300) for p in procs] == [0] * 20
    assert not errors, errors
    df = F.load(db)
    assert len(df) == 40 * n and df["id"].is_unique
    assert set(df["question"]) == {f"q {k}{w}-{i}" for k in "tp" for w in range(20) for i in range(n)}
    assert df["rating"].notna().all() and (df["correction"] == df["question"].str.replace("q ", "c ")).all()


def _history(db, approve=True):
    "9 rated rows answered by a model, all approved: 4 eval questions, 3 SFT examples, 4 preference pairs (a blank answer refused)."
    def r(q, a, rating=None, corr=None):
        i = F.record(q, a, [{"source": "battery.md", "cited": True}], rating=rating, correction=corr, run_id="r1", model_id="tiny-random", db=db)
        if approve: F.review(i, "approve", "ana", db=db)
        return i
    r("warranty?", "two years", -1, "10 years or 6,000 cycles")  # eval (correction), sft, pair
    r("warranty?", "five years", -1)                             # pair with the correction
    r("usable energy?", "4.8 kWh [1]", 1)                        # eval (upvoted)
    r("usable energy?", "5.1 kWh", -1)                           # pair with the upvote
    r("charger power?", "22 kW", -1, "11 kW")                    # eval, sft, pair
    r("charger power?", "11 kW", 1)                              # same text as the correction: no extra pair
    r("island switch time?", "slow", -1)                         # downvote, nothing better: nothing
    r("modes?", "solar-only")                                    # unrated: nothing
    r("app reset?", "\n\n", -1, "Hold the button for 10 s")    # a blank answer corrected: eval, sft; the pair is refused


def test_export_counts_and_formats(tmp_path):
    db = tmp_path/"fb.db"; _history(db)
    pend = F.record("pending?", "not reviewed", rating=1, model_id="tiny-random", db=db)
    F.review(F.record("wrong?", "12 months", rating=1, model_id="tiny-random", db=db), "reject", "ana", note="KB says 10 years", db=db)
    res = llmops("feedback", "export", "--db", db, "--out", tmp_path/"export")
    assert res.returncode == 0, res.stderr
    assert "4 eval questions, 3 SFT examples, 4 preference pairs, 7 KTO examples" in res.stdout, res.stdout
    assert "left out: 1 pending, 1 rejected" in res.stdout and "refused from pairs: 1 empty rejected\n" in res.stdout, res.stdout
    assert "refused from kto: 1 empty answer" in res.stdout, res.stdout
    out = tmp_path/"export"
    qs = R.load_questions(out/"eval_questions.jsonl")
    assert {q["question"]: q["answer"] for q in qs} == {"warranty?": "10 years or 6,000 cycles", "usable energy?": "4.8 kWh [1]",
                                                         "charger power?": "11 kW", "app reset?": "Hold the button for 10 s"}
    assert qs[1]["sources"] == ["battery.md"]
    from llmops_nb.data import load_records
    assert len(load_records(out/"sft.jsonl")) == 3
    pairs = PR.load_pairs(out/"pairs.jsonl")
    assert sorted((p["prompt"], p["chosen"], p["rejected"]) for p in pairs) == sorted([
        ("warranty?", "10 years or 6,000 cycles", "two years"), ("warranty?", "10 years or 6,000 cycles", "five years"),
        ("usable energy?", "4.8 kWh [1]", "5.1 kWh"), ("charger power?", "11 kW", "22 kW")])
    raw = [json.loads(l) for l in (out/"pairs.jsonl").read_text().splitlines()]
    assert all(p["provenance"]["rejected"][0]["run_id"] == "r1" and p["provenance"]["chosen"][0]["review"] == "approved" for p in raw)
    assert pend not in {i for p in raw for i in p["feedback_ids"]}
    arts = json.loads((out/"artifacts.json").read_text())
    assert [a["name"] for a in arts] == ["feedback-snapshot", "feedback-eval-questions", "feedback-sft", "feedback-pairs", "feedback-kto"]
    assert json.loads((out/"metrics.json").read_text())["feedback_rows"] == 11
    man = json.loads((out/"export.json").read_text())
    assert man["runs"] == ["r1"] and man["left_out"] == {"pending": 1, "rejected": 1} and len(man["snapshot_sha256"]) == 64
    assert list(out.glob("wandb/offline-run-*"))
    again = llmops("feedback", "export", "--db", db, "--out", out)
    assert again.returncode == 0 and "(unchanged: nothing written)" in again.stdout, again.stdout
    assert len(list(out.glob("wandb/offline-run-*"))) == 1 and json.loads((out/"export.json").read_text()) == man


def test_monitor(tmp_path):
    db = tmp_path/"fb.db"
    for d, (rating, lat, sim) in enumerate([(-1, 100, 0.1), (1, 300, 0.8), (-1, 500, 0.9), (None, 700, 0.2)]):
        F.record("q", "a", rating=rating, latency_ms=lat, top_similarity=sim, timestamp=f"2026-03-0{1 + d // 2}T10:0{d}:00+00:00", db=db)
    res = llmops("monitor", "--db", db, "--out", tmp_path/"mon")
    assert res.returncode == 0, res.stderr
    assert (tmp_path/"mon"/"monitor.png").stat().st_size > 10_000
    import pandas as pd
    st = pd.read_csv(tmp_path/"mon"/"daily.csv", index_col=0)
    assert st["questions"].tolist() == [2, 2] and st["thumbs_down_rate"].tolist() == [0.5, 1.0]
    assert st["latency_p50"].tolist() == [200.0, 600.0] and st["no_source_share"].tolist() == [0.5, 0.5]
    for name in ("daily.csv", "top_downvoted.csv", "serving.csv"):  # Excel reads UTF-8 as such only after a BOM (else Größe shows as GrÃ¶ÃŸe)
        assert (tmp_path/"mon"/name).read_bytes().startswith(b"\xef\xbb\xbf"), name
    assert st.index.name == "day"  # pandas reads the BOM away


def test_store_refuses_text_that_is_not_utf8(tmp_path):
    "A lone surrogate (what the JSON escape \"\\ud83d\" decodes to) is a one-line ConfigError naming the field, never an UnicodeEncodeError; nothing is stored."
    from llmops_nb.core import ConfigError
    db, cut = tmp_path/"fb.db", json.loads('"Hallo \\ud83d"')
    with pytest.raises(ConfigError, match=r"'question' is not valid UTF-8 text \(a lone surrogate \\ud83d\)"): F.record(cut, "x", db=db)
    with pytest.raises(ConfigError, match="'sources' is not valid UTF-8"): F.record("q", "x", sources=[cut], db=db)
    i = F.record("Wie groß? 🔋", "x", db=db)
    with pytest.raises(ConfigError, match="'correction' is not valid UTF-8"): F.rate(i, -1, correction=cut, db=db)
    with pytest.raises(ConfigError, match="'reviewer' is not valid UTF-8"): F.review(i, "approve", cut, db=db)
    df = F.load(db)
    assert df["question"].tolist() == ["Wie groß? 🔋"] and df["rating"].isna().all() and (df["review"] == "pending").all()


def test_chat_needs_run_or_index():
    res = llmops("chat")
    assert res.returncode == 2 and "give a RUN" in res.stderr


def test_run_inputs(tmp_path, index, sft_adapter):
    run = tmp_path/"runs"/"r1"; run.mkdir(parents=True)
    rag_eval = {"model": "tiny-random", "k": 3, "retrieval": "mmr", "dtype": "float32", "repetition_penalty": 1.3}
    rec = {"id": "r1", "run_dir": str(run), "raw": {"model": "tiny-random"}, "config": {"params": {"rag_eval": rag_eval}},
           "stages": {"rag_index": {"status": "done", "out_dir": str(index.parent)},
                      "finetune": {"status": "done", "out_dir": str(sft_adapter)}}}
    (run/"run.json").write_text(json.dumps(rec))
    got = C.run_inputs("r1", tmp_path/"runs")
    assert (got["index"], got["adapter"], got["model"]) == (index, sft_adapter/"adapter", "tiny-random")
    bot = C.Answerer.from_run("r1", tmp_path/"runs", max_new_tokens=4)  # the chain rag_eval scored, not the chat's own defaults
    assert (bot.k, bot.mode, bot.llm.repetition_penalty, str(bot.llm.lm.dtype)) == (3, "mmr", 1.3, "torch.float32")
    assert C.Answerer.from_run("r1", tmp_path/"runs", k=2, max_new_tokens=4).k == 2


def test_dpo_stage_from_sft_adapter(tmp_path, sft_adapter):
    "The dpo stage on exported pairs, continuing from an SFT adapter: a new adapter that differs from it."
    import papermill as pm
    from safetensors.torch import load_file
    from llmops_nb.core import read_metrics
    from llmops_nb.stages import notebook
    from llmops_nb.kernels import ensure_kernel
    from llmops_nb.review import export
    db = tmp_path/"fb.db"; _history(db)
    export(tmp_path/"export", db=db, log=False)
    out = tmp_path/"dpo"
    pm.execute_notebook(str(notebook("dpo")), str(tmp_path/"dpo.ipynb"), kernel_name=ensure_kernel(), progress_bar=False,
                        parameters=dict(pairs=str(tmp_path/"export"/"pairs.jsonl"), finetune_dir=str(sft_adapter), out_dir=str(out),
                                        learning_rate=1e-2, max_pairs=0))
    m = read_metrics(out)
    assert (m["n_pairs"], m["steps"], m["started_from"]) == (4, 2, str(sft_adapter/"adapter"))
    assert len(m["history"]) == 2 and all("rewards/margins" in h for h in m["history"])
    assert not (out/"adapter"/"ref").exists()
    new, old = load_file(out/"adapter"/"adapter_model.safetensors"), load_file(sft_adapter/"adapter"/"adapter_model.safetensors")
    assert new.keys() == old.keys() and any(not (new[k] == old[k]).all() for k in new)


def test_dpo_refuses_adapter_of_another_model(tmp_path, sft_adapter):
    from llmops_nb.core import ConfigError
    with pytest.raises(ConfigError, match="trained on .*tiny-random.*not on model 'smollm2-135m-instruct'"):
        from llmops_nb.settings import PreferenceConfig
        PR.train_dpo(PreferenceConfig(model="smollm2-135m-instruct"), PR.sample_pairs(2), tmp_path, sft_adapter/"adapter")
