"Review before reuse: the terminal flow fed through stdin, a store from before the review, the training guards."
import os, sqlite3, subprocess, sys
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
