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
    with F.connect(db) as c2: assert F.schema_version(c2) == F.SCHEMA_VERSION  # every migration since, the indexes of 4 too
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


def _store(db, n, seed=0):
    "A store of `n` varied rows written in one executemany: ratings, corrections without a thumb, every review state, rows without latency or retrieval."
    import json, random
    rng = random.Random(seed)
    with F.connect(db): pass  # the package's schema
    rows = []
    for i in range(n):
        rating = rng.choice([1, -1]) if rng.random() < 0.3 else None
        corr = "10 years or 6,000 cycles." if rng.random() < 0.1 else None
        said = rating is not None or corr is not None
        review = rng.choice(["pending", "approved", "rejected"]) if said else rng.choice(["pending"] * 9 + ["approved"])  # an approved row whose thumb was taken back
        plain = i % 50 == 0  # a plain model: no latency, no retrieval
        ts = f"2026-0{1 + i % 3}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.000+00:00"
        rows.append((ts, "plain" if plain else f"run{i % 3}", "tiny-random" if i % 13 else None, "sft" if i % 4 else None, f"question {i % 40}?",
                     json.dumps([{"source": f"doc{i % 5}.md", "cited": i % 2 == 0}]), f"answer {i % 17}", rating, corr, "hm" if i % 19 == 0 else None,
                     None if plain or i % 7 == 0 else 100.0 + i % 900, None if plain else (i % 100) / 100, ts if said else None, review,
                     None if review == "pending" else "ana", None if review == "pending" else ts, "edited" if review == "approved" and i % 5 == 0 else None, None))
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO feedback (timestamp, run_id, model_id, adapter_id, question, sources, answer, rating, correction, comment, latency_ms,"
                        " top_similarity, rated_at, review, reviewer, reviewed_at, review_answer, review_note) VALUES (" + ",".join("?" * 18) + ")", rows)
    return db


def _plain(df):
    "Rows as plain dicts, any missing value as None: what the reader sees, whatever dtype pandas picked."
    import pandas as pd
    return [{k: None if v is None or v is pd.NA or v != v else v for k, v in r.items()} for r in df.to_dict("records")]


def _no_load(monkeypatch):
    def refuse(*a, **k): raise AssertionError("feedback.load called: a reader read the whole store")
    monkeypatch.setattr(F, "load", refuse)


def test_readers_ask_sqlite_not_the_whole_store(tmp_path, monkeypatch):
    "Queue, counts, the review page, the chat's review tab, the report's feedback section, monitor and export: no `feedback.load`, the same answers as the full-load path."
    import pandas as pd
    from llmops_nb import chat as C, monitor as M, report as R
    db = _store(tmp_path/"fb.db", 600)
    full = F.load(db)  # the old path, computed here as the spec
    said = full[full["rating"].notna() | full["correction"].notna()]
    old_q = {s: said[said["review"] == s].reset_index(drop=True) for s in RV.STATES}
    old_n = {s: len(old_q[s]) for s in RV.STATES}
    assert min(old_n.values()) > 10 and (full.loc[full["rating"].isna() & full["correction"].isna(), "review"] == "approved").any()
    run = full[full["run_id"] == "run1"]; stats0, top0 = M.daily_stats(run), M.top_downvoted(run)
    plain = full[full["run_id"] == "plain"]
    mon0 = (M.daily_stats(full), M.top_downvoted(full), int((full["rating"] == -1).sum()), float(full["latency_ms"].quantile(0.5)))
    _no_load(monkeypatch)

    for s in RV.STATES: assert _plain(RV.queue(s, db)) == _plain(old_q[s]), s
    assert RV.counts(db) == old_n
    page = RV.review_rows("pending", db, limit=25)
    assert page["counts"] == old_n and page["data"] == [{k: RV._plain_json(v) for k, v in r.items()} for r in old_q["pending"].head(25).to_dict("records")]
    p = C.pending(db)
    assert p["ids"] == old_q["pending"]["id"].tolist() and p["counts"] == f"{old_n['pending']} pending, {old_n['approved']} approved, {old_n['rejected']} rejected"
    first = old_q["pending"].iloc[0]
    assert p["rows"][0] == [int(first["id"]), first["question"], first["answer"], ", ".join(s["source"] for s in first["sources"]), C._thumb(first["rating"]),
                            C._text(first["correction"]), C._text(first["comment"])]
    assert C.show_row(int(first["id"]), db) == C._show(old_q["pending"].to_dict("records")[0]) and "**Question:**" in C.show_row(int(first["id"]), db)
    assert C.show_row(int(old_q["approved"]["id"][0]), db) == "" and C.show_row(None, db) == ""

    shown, figs = [], []
    monkeypatch.setattr(R, "_md", shown.append); monkeypatch.setattr(R, "_table", lambda t: shown.append(t)); monkeypatch.setattr(R, "_fig", lambda f: None)
    monkeypatch.setattr(M, "plot_monitor", lambda st, top=None, path=None: figs.append((st, top)))
    R.show_feedback({"id": "run1"}, db)
    rated = run["rating"].notna().sum()
    assert f"{len(run)} questions, {rated} rated, thumbs-down rate {(run['rating'] == -1).sum() / max(rated, 1):.0%}, " \
           f"latency p50 {run['latency_ms'].astype(float).quantile(0.5):.0f} ms" in "\n".join(x for x in shown if isinstance(x, str))
    pd.testing.assert_frame_equal(figs[0][0], stats0); pd.testing.assert_frame_equal(figs[0][1], top0)
    R.show_feedback({"id": "plain"}, db)  # a run whose rows have no latency and no retrieval
    pd.testing.assert_frame_equal(figs[1][0], M.daily_stats(plain), check_dtype=False)

    m = M.monitor(tmp_path/"mon", db=db, log=False)
    pd.testing.assert_frame_equal(m["daily"], mon0[0]); pd.testing.assert_frame_equal(m["top_downvoted"], mon0[1])
    assert (m["questions"], round(m["thumbs_down_rate"] * max(full["rating"].notna().sum(), 1)), m["latency_p50"]) == (len(full), mon0[2], mon0[3])
    exp = RV.export(tmp_path/"export", db=db, log=False)
    assert (exp["feedback_rows"], exp["rated"], exp["corrections"], exp["approved"], exp["left_out"]) == \
        (len(full), int(full["rating"].notna().sum()), int(full["correction"].notna().sum()), old_n["approved"], {"pending": old_n["pending"], "rejected": old_n["rejected"]})


def test_a_large_store_is_read_by_index(tmp_path, monkeypatch):
    "20,000 rows: a page of the queue, the counts and one row are index look-ups (the query plans say so), and nothing loads the store."
    db = _store(tmp_path/"big.db", 20_000, seed=1)
    _no_load(monkeypatch)
    n = RV.counts(db)
    page = RV.review_rows("pending", db)
    assert len(page["data"]) == 200 and page["counts"] == n and sum(n.values()) > 5_000
    ids = [r["id"] for r in page["data"]]
    assert ids == sorted(ids) and all(r["review"] == "pending" and (r["rating"] is not None or r["correction"]) for r in page["data"])
    with F.connect(db) as con:
        plan = lambda q, *a: " ".join(r[-1] for r in con.execute("EXPLAIN QUERY PLAN " + q, a))
        assert plan(f"SELECT * FROM feedback WHERE review = ? AND {RV.SAID} ORDER BY id LIMIT 200", "pending") == "SEARCH feedback USING INDEX feedback_said (review=?)"
        assert "USING INDEX feedback_said" in plan(f"SELECT review, COUNT(*) FROM feedback WHERE {RV.SAID} GROUP BY review")
        assert "USING INDEX feedback_run" in plan("SELECT * FROM feedback WHERE run_id = ? ORDER BY id", "run1")
    from llmops_nb import chat as C
    assert C.show_row(ids[0], db).startswith(f"**#{ids[0]}**")
