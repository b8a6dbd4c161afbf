"Review before reuse: the terminal flow fed through stdin, a store from before the review, the training guards."
import sqlite3, subprocess, sys
from pathlib import Path
import pytest
from llmops_nb import feedback as F, preference as PR, review as RV
from llmops_nb.core import ConfigError
from llmops_nb.settings import KtoConfig, PreferenceConfig

LLMOPS = Path(sys.executable).parent/"llmops"


def _rows(db):
    mk = lambda q, a, rating, corr=None: F.record(q, a, ["warranty.md"], run_id="r1", model_id="tiny-random", rating=rating, correction=corr, db=db)
    return [mk("warranty?", "12 months", 1), mk("warranty?", "two years", -1, "10 years or 6,000 cycles"),
            mk("island mode?", "<img src=x onerror=alert(1)> keeps running", 1), mk("reset?", "tap", -1)]


def test_review_in_the_terminal(tmp_path):
    "`llmops feedback review` fed through stdin: reject, edit, approve, then quit; who and when are recorded, only approved rows export."
    db = tmp_path/"fb.db"; ids = _rows(db)
    feed = "r\nKB says 10 years\ne\n10 years or 6,000 full cycles.\na\nq\n"
    res = subprocess.run([str(LLMOPS), "feedback", "review", "--db", str(db), "--reviewer", "ana"], input=feed, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "4 pending row(s)" in res.stdout and "question:   warranty?" in res.stdout and "rating:     thumbs up" in res.stdout
    assert "2 approved, 1 rejected, 0 skipped, 1 left" in res.stdout, res.stdout
    assert "store: 1 pending, 2 approved, 1 rejected" in res.stdout
    with sqlite3.connect(db) as con:
        got = {r[0]: r[1:] for r in con.execute("SELECT id, review, reviewer, reviewed_at IS NOT NULL, review_answer, review_note FROM feedback")}
        trail = con.execute("SELECT feedback_id, decision, reviewer FROM reviews ORDER BY id").fetchall()
    assert got[ids[0]] == ("rejected", "ana", 1, None, "KB says 10 years")
    assert got[ids[1]] == ("approved", "ana", 1, "10 years or 6,000 full cycles.", None)
    assert got[ids[2]][:2] == ("approved", "ana") and got[ids[3]][:2] == ("pending", None)
    assert trail == [(ids[0], "rejected", "ana"), (ids[1], "approved", "ana"), (ids[2], "approved", "ana")]
    exp = RV.export(tmp_path/"export", db=db, log=False)
    assert exp["left_out"] == {"pending": 1, "rejected": 1}
    import json
    eq = [json.loads(l) for l in (tmp_path/"export"/"eval_questions.jsonl").read_text().splitlines()]
    assert {e["question"]: e["answer"] for e in eq} == {"warranty?": "10 years or 6,000 full cycles.",
                                                        "island mode?": "<img src=x onerror=alert(1)> keeps running"}
    # revisiting: the rejected row is approved by someone else, the decision trail grows
    res = subprocess.run([str(LLMOPS), "feedback", "review", "--db", str(db), "--reviewer", "bo", "--status", "rejected"],
                         input="a\n", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 approved, 0 rejected" in res.stdout, res.stdout + res.stderr
    assert RV.counts(db) == {"pending": 1, "approved": 3, "rejected": 0}


def test_rerating_sends_back_to_review(tmp_path):
    db = tmp_path/"fb.db"; ids = _rows(db)
    F.review(ids[3], "approve", "ana", db=db)
    F.rate(ids[3], correction="Hold the button for 10 s", db=db)
    assert RV.queue("pending", db)["id"].tolist() == ids
    F.rate(ids[2], comment="nice", db=db)  # a comment changes nothing a decision was about
    F.review(ids[2], "approve", "ana", db=db); F.rate(ids[2], comment="still nice", db=db)
    assert RV.queue("approved", db)["id"].tolist() == [ids[2]]


def test_store_from_before_the_review_migrates(tmp_path):
    "A store written by the previous schema (migrations 1-2) gets the review columns; its rows wait as pending."
    db = tmp_path/"old.db"
    con = sqlite3.connect(db, isolation_level=None)
    F.migrate(con, F.MIGRATIONS[:2])
    con.execute("INSERT INTO feedback (timestamp, question, answer, rating, model_id) VALUES ('2026-01-01T00:00:00+00:00', 'q', 'a', 1, 'm')")
    con.close()
    with F.connect(db) as c2: assert F.schema_version(c2) == 3
    assert RV.queue("pending", db)["question"].tolist() == ["q"]
    assert RV.export(tmp_path/"export", db=db, log=False)["left_out"] == {"pending": 1, "rejected": 0}


def test_guards_refuse_too_little_or_one_sided_feedback(tmp_path):
    "DPO and KTO refuse to start (one line, before loading a model) on fewer examples than min_examples or one KTO label."
    with pytest.raises(ConfigError, match=r"^dpo: 1 pairs, fewer than min_examples=2; approve more feedback"):
        PR.train_dpo(PreferenceConfig(), PR.sample_pairs(1), tmp_path)
    ups = [e for e in PR.sample_kto(8) if e["label"]]
    with pytest.raises(ConfigError, match=r"^kto: all 4 examples are desirable \(label True\); KTO needs undesirable ones too"):
        PR.train_kto(KtoConfig(), ups, tmp_path)
    with pytest.raises(ConfigError, match="kto: 3 examples, fewer than min_examples=5"):
        PR.train_kto(KtoConfig(min_examples=5), PR.sample_kto(3), tmp_path)
    assert not (tmp_path/"adapter").exists()


from test_serve import FLAGS, runs, server  # noqa: E402,F401  (the real server; `browser` comes from conftest)

XSS = '<img src=x onerror="document.title=\'pwned\'">'


def test_review_tab_in_browser(browser, server, tmp_path):
    "The chat page's review tab: pending rows listed (an XSS payload shown as text), one approved with an edit, one rejected, by name."
    from playwright.sync_api import sync_playwright
    db = server["db"]
    a = F.record("warranty?", "12 months " + XSS, ["warranty.md"], run_id="r1", model_id="tiny-random", rating=1, db=db)
    b = F.record("island? " + XSS, "two years", ["island.md"], run_id="r1", model_id="tiny-random", rating=-1, correction=XSS + " 20 ms", db=db)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=browser, headless=True, args=FLAGS)
        try:
            page = ctx.new_page()
            dialogs = []; page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{server['url']}/")
            page.locator("#tab").click()
            page.locator(f'.card[data-id="{a}"]').wait_for(timeout=60_000)
            cards = {i: page.locator(f'.card[data-id="{i}"]') for i in (a, b)}
            assert XSS in cards[a].inner_text() and XSS in cards[b].inner_text()  # shown as text
            assert page.locator("#rlist img").count() == 0 and page.title() != "pwned"
            cards[b].locator("button.approve").click()
            cards[b].get_by_text("Type your name as reviewer first.").wait_for(timeout=10_000)  # nothing recorded without a name
            page.locator("#reviewer").fill("ana")
            cards[b].locator("textarea.edit").fill("Under 20 ms.")
            cards[b].locator("button.approve").click()
            cards[b].get_by_text("Recorded: approved by ana.").wait_for(timeout=30_000)
            cards[a].locator("input.why").fill("the KB says 10 years")
            cards[a].locator("button.reject").click()
            cards[a].get_by_text("Recorded: rejected by ana.").wait_for(timeout=30_000)
            page.locator("#rstatus").select_option("rejected")
            page.locator(f'.card[data-id="{a}"]').get_by_text("rejected by ana at").wait_for(timeout=30_000)
            assert page.title() != "pwned" and not dialogs
        finally: ctx.close()
    df = F.load(db).set_index("id")
    assert tuple(df.loc[b, ["review", "reviewer", "review_answer"]]) == ("approved", "ana", "Under 20 ms.")
    assert tuple(df.loc[a, ["review", "reviewer", "review_note"]]) == ("rejected", "ana", "the KB says 10 years")
    assert df.loc[a, "reviewed_at"] and df.loc[b, "reviewed_at"]


def test_review_endpoints_refuse_bad_decisions(server):
    "POST /v1/feedback/review: a bad body is a 400 with one line, an unknown row a 404; GET lists one state with the counts."
    import json, urllib.error, urllib.request
    def post(body):
        req = urllib.request.Request(f"{server['url']}/v1/feedback/review", json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r: return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e: return e.code, json.loads(e.read())
    i = F.record("q?", "a", model_id="tiny-random", rating=1, db=server["db"])
    code, body = post({"id": i, "decision": "approve"})
    assert code == 400 and "'reviewer' must be a name" in body["error"]["message"]
    code, body = post({"id": 10**9, "decision": "reject", "reviewer": "ana"})
    assert code == 404 and "does not exist" in body["error"]["message"]
    assert post({"id": i, "decision": "approve", "reviewer": "ana"})[0] == 200
    got = json.loads(urllib.request.urlopen(f"{server['url']}/v1/feedback/review?status=approved", timeout=60).read())
    assert i in [r["id"] for r in got["data"]] and got["counts"]["approved"] >= 1
    with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(f"{server['url']}/v1/feedback/review?status=maybe", timeout=60)
    assert e.value.code == 400


def test_review_endpoints_need_the_key(runs):
    "With an API key, the review list and decisions are refused without it (401), like every /v1 endpoint."
    import urllib.error, urllib.request
    from llmops_nb import deploy, engine as EN, serving, servelog as SL
    from llmops_nb.serving import Caps
    from llmops_nb.server import Running, create_app
    root, r1, _ = runs
    dep = deploy.load(r1["id"], root/"runs", device="cpu")
    backend, reqlog = serving.HFBackend(EN.Engine(max_batch=1)), SL.RequestLog(root/"rkey.db")
    srv = Running(create_app(dep, backend, reqlog, Caps(), key="k" * 24, db=root/"rkey.db"))
    try:
        for req in (urllib.request.Request(f"{srv.url}/v1/feedback/review"),
                    urllib.request.Request(f"{srv.url}/v1/feedback/review", b'{"id": 1, "decision": "approve", "reviewer": "x"}',
                                           {"Content-Type": "application/json"})):
            with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(req, timeout=60)
            assert e.value.code == 401
        ok = urllib.request.Request(f"{srv.url}/v1/feedback/review", headers={"Authorization": "Bearer " + "k" * 24})
        assert urllib.request.urlopen(ok, timeout=60).status == 200
    finally: srv.stop(); backend.close(); reqlog.close()


def test_one_answer_in_two_unicode_forms_is_one_answer(tmp_path):
    "The same answer thumbed up in NFC and down in NFD (pasted from a macOS app): no DPO pair of identical-looking sides, and KTO sees the conflict."
    import unicodedata
    db, a = tmp_path/"fb.db", "Le délai est de quatorze jours."
    for form, rating in (("NFC", 1), ("NFD", -1)):
        F.review(F.record("Quel délai ?", unicodedata.normalize(form, a), run_id="r1", model_id="m", rating=rating, db=db), "approve", reviewer="anna", db=db)
    ok, ref = F.load(db), {}
    assert RV.preference_pairs(ok, ref) == [] and RV.kto_examples(ok, ref) == []
    assert ref == {"pairs": {"same_answer": 1}, "kto": {"conflicting_labels": 2}}
