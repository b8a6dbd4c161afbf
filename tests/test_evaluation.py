"""Evaluation: packaged metric modules equal their libraries; gates; batched == one-by-one greedy generation.

BLEU has no library of the same algorithm installed (the Hub module is TensorFlow NMT's script): it is checked
against sacrebleu (unsmoothed, 13a) and NLTK's corpus_bleu on the same tokens, which compute the same number when
each example has one reference, or references of equal length (all three clip n-gram counts by the references'
maximum; the brevity penalty uses the shortest reference in the Hub/TF algorithm and the closest one in
sacrebleu/NLTK, which coincide then). Token F1 has no installed library (transformers 5 dropped squad_metrics):
it is checked against a direct transcription of the SQuAD v1.1 script's definition below.
"""
import collections, math, os, re, string, unicodedata
from pathlib import Path
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
import evaluate  # noqa: E402
from llmops_nb import evaluation as E, generation as G  # noqa: E402
from llmops_nb.core import ConfigError  # noqa: E402

PREDS = ["The KH-5 is a 5 kW inverter with two MPPT trackers.", "Hold the reset pin for ten seconds",
         "yes, the battery works off-grid with the backup box", "Warranty is 10 years.",
         "I don't know.", "the cat sat on the mat", "Paris is the capital of France!", "It charges at 11 kW on three-phase."]
REFS = ["The KH-5 is a fanless 5.0 kW single-phase inverter with 2 MPPT trackers.", "Hold the reset pin for 10 seconds.",
        "Yes: with the Backup Box the battery keeps the house running off-grid.", "Ten years on the inverter and the battery.",
        "The KC-11 needs a three-phase supply.", "the cat sat on the mat", "paris is the capital of france",
        "The KC-11 charges at up to 11 kW on a three-phase supply."]
NAMES = ["bleu", "chrf", "exact_match", "perplexity", "rouge", "sacrebleu", "semantic_similarity", "token_f1"]


@pytest.fixture(scope="module")
def load():
    return lambda name: evaluate.load(E.metric_path(name))


def test_modules_are_offline_evaluate_scripts(load):
    assert E.metric_names() == NAMES
    for n in NAMES:
        script = Path(E.metric_path(n))/f"{n}.py"
        src = script.read_text()
        assert "# From:" not in src and not re.search(r"^\s*from \.", src, re.M), n
        assert isinstance(load(n), evaluate.Metric), n
    with pytest.raises(ConfigError, match="meteor"): E.metric_path("meteor")


def test_bleu_equals_sacrebleu_and_nltk(load):
    import sacrebleu
    from nltk.translate.bleu_score import corpus_bleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    r = load("bleu").compute(predictions=PREDS, references=REFS)
    assert set(r) == {"bleu", "precisions", "brevity_penalty", "length_ratio", "translation_length", "reference_length"}
    sb = sacrebleu.corpus_bleu(PREDS, [REFS], smooth_method="none", tokenize="13a")
    assert r["bleu"] == pytest.approx(sb.score/100, rel=1e-9)
    assert r["precisions"] == pytest.approx([p/100 for p in sb.precisions], rel=1e-9)
    assert (r["translation_length"], r["reference_length"]) == (sb.sys_len, sb.ref_len)
    assert r["brevity_penalty"] == pytest.approx(sb.bp) and r["length_ratio"] == pytest.approx(sb.sys_len/sb.ref_len)
    tk = Tokenizer13a()
    assert r["bleu"] == pytest.approx(corpus_bleu([[tk(x).split()] for x in REFS], [tk(x).split() for x in PREDS]), rel=1e-9)
    # two references of the same length per example: the union of their counts clips, as in sacrebleu
    refs2 = [[a, b] for a, b in zip(REFS, ["The KH-5 is a fanless 5.0 kW single-phase inverter with 2 MPPT units.",
             "Press the reset pin for 10 seconds.", "Yes: with the Backup Box the battery keeps the home running off-grid.",
             "Ten years on the inverter and on battery.", "The KC-11 needs a three-phase connection.",
             "a cat sat on the mat", "paris is the capital of France", "The KC-11 charges at up to 11 kW on a three-phase line."])]
    assert all(len(tk(a).split()) == len(tk(b).split()) for a, b in refs2)
    r2 = load("bleu").compute(predictions=PREDS, references=refs2)
    sb2 = sacrebleu.corpus_bleu(PREDS, [[a for a, _ in refs2], [b for _, b in refs2]], smooth_method="none")
    assert r2["bleu"] == pytest.approx(sb2.score/100, rel=1e-9) and r2["bleu"] > r["bleu"]
    # a different max_order changes the number the same way in both
    r3 = load("bleu").compute(predictions=PREDS, references=REFS, max_order=2)
    assert r3["bleu"] == pytest.approx(corpus_bleu([[tk(x).split()] for x in REFS], [tk(x).split() for x in PREDS], weights=(0.5, 0.5)))


@pytest.mark.parametrize("kw", [{}, {"smooth_method": "floor", "smooth_value": 0.1}, {"lowercase": True, "tokenize": "char"}])
def test_sacrebleu_equals_library(load, kw):
    import sacrebleu
    r = load("sacrebleu").compute(predictions=PREDS, references=[[x] for x in REFS], **kw)
    sb = sacrebleu.corpus_bleu(PREDS, [REFS], **kw)
    assert r == {"score": sb.score, "counts": sb.counts, "totals": sb.totals, "precisions": sb.precisions,
                 "bp": sb.bp, "sys_len": sb.sys_len, "ref_len": sb.ref_len}
    with pytest.raises(ValueError, match="same number of references"):
        load("sacrebleu").compute(predictions=PREDS[:2], references=[[REFS[0]], [REFS[1], REFS[0]]])


@pytest.mark.parametrize("kw", [{}, {"word_order": 2}, {"lowercase": True, "char_order": 4, "beta": 1}])
def test_chrf_equals_library(load, kw):
    from sacrebleu.metrics import CHRF
    r = load("chrf").compute(predictions=PREDS, references=REFS, **kw)
    assert r["score"] == CHRF(**kw).corpus_score(PREDS, [REFS]).score
    assert (r["char_order"], r["word_order"], r["beta"]) == (kw.get("char_order", 6), kw.get("word_order", 0), kw.get("beta", 2))


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score(load, stem):
    from rouge_score import rouge_scorer, scoring
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    sc = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    r = load("rouge").compute(predictions=PREDS, references=REFS, use_aggregator=False, use_stemmer=stem)
    for k in types: assert r[k] == [sc.score(t, p)[k].fmeasure for t, p in zip(REFS, PREDS)], k
    np.random.seed(3); agg = load("rouge").compute(predictions=PREDS, references=REFS, use_stemmer=stem)
    np.random.seed(3); ba = scoring.BootstrapAggregator()
    for t, p in zip(REFS, PREDS): ba.add_scores(sc.score(t, p))
    assert agg == {k: v.mid.fmeasure for k, v in ba.aggregate().items()}
    multi = load("rouge").compute(predictions=PREDS[:2], references=[[REFS[0], REFS[1]], [REFS[1]]], rouge_types=["rougeL"], use_aggregator=False)
    assert multi["rougeL"] == [sc.score_multi([REFS[0], REFS[1]], PREDS[0])["rougeL"].fmeasure, sc.score(REFS[1], PREDS[1])["rougeL"].fmeasure]


def test_exact_match(load):
    em = lambda **kw: load("exact_match").compute(predictions=PREDS, references=REFS, **kw)["exact_match"]
    def norm(s, case, punct):
        if case: s = s.lower()
        return s.translate(str.maketrans("", "", string.punctuation)) if punct else s
    assert em() == np.mean([p == r for p, r in zip(PREDS, REFS)]) == 1/8
    assert em(ignore_case=True, ignore_punctuation=True) == np.mean([norm(p, 1, 1) == norm(r, 1, 1) for p, r in zip(PREDS, REFS)]) == 2/8
    assert load("exact_match").compute(predictions=["ab12"], references=["AB 34"], ignore_case=True, ignore_numbers=True,
                                       regexes_to_ignore=[" "])["exact_match"] == 1.0


def normalize(s):
    "SQuAD v1.1 evaluate script's normalize_answer, transcribed: lower, punctuation, articles, whitespace, in that order."
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred, ref):
    "SQuAD v1.1 evaluate script's f1_score, transcribed."
    p, g = normalize(pred).split(), normalize(ref).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0: return 0
    prec, rec = same/len(p), same/len(g)
    return 2*prec*rec/(prec+rec)


def test_token_f1_equals_squad_definition(load):
    r = load("token_f1").compute(predictions=PREDS, references=REFS)
    assert r["token_f1"] == pytest.approx(np.mean([squad_f1(p, t) for p, t in zip(PREDS, REFS)]))
    multi = load("token_f1").compute(predictions=PREDS[:2], references=[[REFS[1], REFS[0]], [REFS[1]]])
    assert multi["token_f1"] == pytest.approx((max(squad_f1(PREDS[0], REFS[1]), squad_f1(PREDS[0], REFS[0])) + squad_f1(PREDS[1], REFS[1]))/2)
    assert E.score_examples("token_f1", PREDS, REFS)["token_f1"] == pytest.approx([squad_f1(p, t) for p, t in zip(PREDS, REFS)])


def test_exact_match_and_token_f1_share_squad_normalisation():
    # the order matters: punctuation before articles ("the.end" -> "theend"), as SQuAD's script does
    tricky = [("A-B", "AB"), ("the.end", "end"), ("Paris.", "paris"), ("The end", "end"), ("an  apple!", "Apple"),
              ("The", "a"), ("red car", "car red"), ("U.S.A", "usa")]
    p, r = [t[0] for t in tricky], [t[1] for t in tricky]
    em, f1 = E.score_examples("exact_match", p, r)["exact_match"], E.score_examples("token_f1", p, r)["token_f1"]
    assert em == [float(normalize(a) == normalize(b)) for a, b in tricky] == [1, 0, 1, 1, 1, 1, 0, 1]
    assert f1 == pytest.approx([squad_f1(a, b) for a, b in tricky])
    assert all(f == 1 for (a, _), e, f in zip(tricky, em, f1) if e and normalize(a))  # equal non-empty answers: F1 1
    assert E.score_examples("exact_match", ["A-B", "the.end"], ["AB", "end"])["exact_match"] == [1.0, 0.0]  # the review's case


def test_semantic_similarity_equals_sentence_transformers(load):
    from sentence_transformers import SentenceTransformer, util
    from llmops_nb.models import embedding_path
    r = load("semantic_similarity").compute(predictions=PREDS, references=REFS)
    st = SentenceTransformer(embedding_path("minilm-l6-v2"), device="cpu")
    expected = util.cos_sim(st.encode(PREDS), st.encode(REFS)).diagonal().tolist()
    assert r["scores"] == pytest.approx(expected, abs=1e-5)
    assert r["semantic_similarity"] == pytest.approx(np.mean(expected), abs=1e-5)



# Scores of PREDS / REFS computed before text in other scripts got its own tokenizers and normalisation (tokenize: auto):
# English must score exactly as it did.
ENGLISH = {"rougeL": [0.7857142857142857, 0.8571428571428571, 0.4347826086956522, 0.16666666666666666, 0.0, 1.0, 1.0, 0.6363636363636364],
           "bleu": [0.36845414240544244, 0.6129752413741055, 0.14635886675399035, 0.13575914775035755, 0.1697232447536737, 1.0, 0.5169731539571706, 0.20415757364239068],
           "sacrebleu": [29.69830085238936, 55.780028607687655, 8.412054473847528, 5.70796903405875, 7.545383788761362, 100.00000000000004, 41.11336169005198, 15.049981051832416],
           "chrf": [52.15131102054503, 77.8818091463019, 40.149061456054206, 15.220107832263865, 2.3980815347721824, 100.0, 78.60529688086302, 46.45838983284997],
           "token_f1": [0.7000000000000001, 0.8333333333333334, 0.75, 0.2, 0.0, 1.0, 1.0, 0.7058823529411764],
           "exact_match": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]}
ENGLISH_CORPUS = {"bleu": 0.27346514333130517, "sacrebleu": 27.34651433313051, "chrf": 47.33616511525914}


def test_english_scores_unchanged():
    for n, want in ENGLISH.items():
        assert E.score_examples(n, PREDS, REFS)[n] == pytest.approx(want, rel=1e-12, abs=1e-12), n
        assert E.score_examples(n, PREDS, REFS, tokenize="13a")[n] == pytest.approx(want, rel=1e-12, abs=1e-12), n
    assert E.corpus_scores(list(ENGLISH_CORPUS), PREDS, REFS) == pytest.approx(ENGLISH_CORPUS, rel=1e-12)
    assert E.tokenize_used("auto", REFS) == "13a"
    # beside Chinese answers in one call, English answers keep their 13a scores (each reference decides)
    mixed = E.score_examples("rougeL", PREDS + ["电池保修两年。"], REFS + ["电池保修两年。"])["rougeL"]
    assert mixed == pytest.approx(ENGLISH["rougeL"] + [1.0], rel=1e-12)
    assert E.tokenize_used("auto", REFS + ["电池保修两年。"]) == "13a: 8, zh: 1"


def test_rouge_in_other_scripts():
    "rouge_score's own tokenizer keeps [a-z0-9] only: identical Chinese, Russian, Arabic answers scored 0."
    for same in ["电池保修两年。", "Гарантия на батарею два года.", "ضمان البطارية سنتان", "バッテリーの保証は2年です。", "배터리 보증은 2년입니다."]:
        assert E.score_examples("rougeL", [same], [same])["rougeL"] == [1.0], same
    r = E.score_examples("rouge1", ["Die Größe ist wählbar", "请联系客服", "电池的保修期是两年"], ["Die Größe ist fest", "电池保修两年", "电池保修两年"])["rouge1"]
    assert r == pytest.approx([0.75, 0.0, 0.8])  # 3 of 4 words (not 'gr', 'e'); nothing shared; 6 of 6 and 9 characters
    assert E.words("„Die GRÖSSE“, bitte!", "intl") == ["die", "grösse", "bitte"]


def test_token_f1_and_exact_match_in_other_scripts():
    "MLQA's normalisation: NFKC, casefold, Unicode punctuation, a token per CJK character; these pairs scored 0."
    pairs = [("电池保修两年。", "电池保修两年"), ("„Ja“", "Ja"), (unicodedata.normalize("NFD", "Le café est prêt"), "Le café est prêt"),
             ("« oui »", "oui"), ("ＫＨ－５", "KH-5"), ("STRASSE", "straße")]
    p, r = [a for a, _ in pairs], [b for _, b in pairs]
    assert E.score_examples("token_f1", p, r)["token_f1"] == [1.0] * len(pairs)
    assert E.score_examples("exact_match", p, r)["exact_match"] == [1.0] * len(pairs)
    assert E.score_examples("token_f1", ["电池的保修期是两年"], ["电池保修两年"])["token_f1"] == pytest.approx([0.8])  # not 0 or 1


def test_bleu_in_other_scripts():
    "13a leaves a Chinese sentence one word: a paraphrase scored sacreBLEU 0, smoothed BLEU of any two different sentences 0.841."
    import sacrebleu
    para, ref = "电池的保修期是两年", "电池保修两年"
    s = E.score_examples("sacrebleu", [para], [ref])["sacrebleu"][0]
    assert s == pytest.approx(sacrebleu.sentence_bleu(para, [ref], tokenize="zh", use_effective_order=True).score) and s > 10
    assert E.corpus_scores(["sacrebleu"], [para], [ref])["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu([para], [[ref]], tokenize="zh").score)
    bleu = E.score_examples("bleu", ["请联系客服", para], [ref, ref])["bleu"]
    assert bleu[0] < 0.25 and bleu[1] > bleu[0]
    assert E.score_examples("sacrebleu", [para], [ref], tokenize="13a")["sacrebleu"] == [0.0]  # what 13a gives: the setting is honoured
    nfd = unicodedata.normalize("NFD", "Le café est prêt")
    assert E.score_examples("sacrebleu", [nfd], ["Le café est prêt"])["sacrebleu"][0] == pytest.approx(100)
    assert E.score_examples("chrf", [nfd, para], ["Le café est prêt", ref])["chrf"][0] == pytest.approx(100)


def test_tokenize_setting():
    from llmops_nb.stages import parameters
    for stage in ("evaluate", "rag_eval"):
        assert parameters(stage)["tokenize"]["choices"] == E.TOKENIZE and parameters(stage)["similarity_model"]["kind"] == "embedding"
    assert [E.resolve_tokenize("auto", [t]) for t in ["The KH-5.", "电池", "Гарантия", "Größe"]] == ["13a", "zh", "intl", "intl"]
    assert E.resolve_tokenize("auto", ["バッテリー"]) == ("ja-mecab" if E.installed("ja-mecab") else "char")
    with pytest.raises(ConfigError, match="expected one of auto, 13a"): E.resolve_tokenize("moses", REFS)
    if not E.installed("ko-mecab"):
        with pytest.raises(ConfigError) as e: E.score_examples("rougeL", PREDS, REFS, tokenize="ko-mecab")
        assert "\n" not in str(e.value) and "pip install 'sacrebleu[ko]'" in str(e.value)


def test_similarity_model_is_passed(tmp_path):
    "semantic_similarity embedded with the packaged English model whatever was asked."
    import shutil, sys
    from llmops_nb.models import embedding_path
    folder = shutil.copytree(embedding_path("minilm-l6-v2"), tmp_path/"my-encoder")
    got = E.score_examples("semantic_similarity", PREDS[:2], REFS[:2], similarity_model=str(folder))["semantic_similarity"]
    assert got == pytest.approx(E.score_examples("semantic_similarity", PREDS[:2], REFS[:2])["semantic_similarity"], abs=1e-5)
    encoders = sys.modules[type(E.load_metric("semantic_similarity")).__module__].ENCODERS
    assert (str(folder), None) in encoders

@pytest.fixture(scope="module")
def tiny():
    from llmops_nb.models import load_causal_lm
    return load_causal_lm("tiny-random", device="cpu", dtype="float32")  # fp32: the exact equalities below


def test_perplexity_equals_model_loss(load, tiny):
    import torch
    m, tok = tiny
    r = load("perplexity").compute(predictions=REFS[:4], model=m, tokenizer=tok, batch_size=3)
    for text, p in zip(REFS[:4], r["perplexities"]):
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(): assert p == pytest.approx(math.exp(m(input_ids=ids, labels=ids).loss.item()), rel=1e-4)
    assert r["mean_perplexity"] == pytest.approx(np.mean(r["perplexities"]))
    by_id = load("perplexity").compute(predictions=REFS[:2], model_id="tiny-random", device="cpu", dtype="float32")
    assert by_id["perplexities"] == pytest.approx(r["perplexities"][:2], rel=1e-4)
    bf16 = load("perplexity").compute(predictions=REFS[:4], model_id="tiny-random", device="cpu", dtype="bfloat16", batch_size=3)
    assert bf16["perplexities"] == pytest.approx(r["perplexities"], rel=0.01)  # bf16 weights: within 1%


def test_gates_pass_and_fail():
    summary = E.compare({"rougeL": [0.2, 0.3], "perplexity": [12., 14.]}, {"rougeL": [0.3, 0.4], "perplexity": [9., 11.]})
    vals = E.gate_metrics(summary)
    assert vals["rougeL"] == pytest.approx(0.35) and vals["delta_rougeL"] == pytest.approx(0.1) and vals["delta_perplexity"] == pytest.approx(-3)
    res = E.check_gates(vals, {"rougeL": 0.35, "delta_rougeL": 0.0, "perplexity": 10, "delta_perplexity": 0})
    assert all(g["passed"] for g in res.values()) and res["perplexity"]["kind"] == "max"
    with pytest.raises(E.GateError) as e:
        E.check_gates(vals, {"rougeL": 0.4, "delta_rougeL": 0.0, "perplexity": 9.5, "delta_perplexity": -5})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("quality gate failed: rougeL = 0.35 < 0.4 (minimum); perplexity = 10 > 9.5 (maximum); "
                   "delta_perplexity = -3 > -5 (maximum)")
    assert not E.check_gates(vals, {"rougeL": {"max": 0.3}}, raise_error=False)["rougeL"]["passed"]
    assert E.check_gates(E.gate_metrics(E.compare({"rougeL": [0.5]})), {"rougeL": 0.5})["rougeL"]["passed"]  # base only
    with pytest.raises(ConfigError, match="gate 'delta_bleu': no such metric"): E.check_gates(vals, {"delta_bleu": 0})
    with pytest.raises(ConfigError, match="not a number"): E.check_gates(vals, {"rougeL": "high"})
    with pytest.raises(ConfigError, match="expected a number or"): E.validate_gates({"rougeL": {"above": 1}}, ["rougeL"])


def test_bootstrap_ci():
    x = np.random.default_rng(0).uniform(0, 1, 200)
    m, lo, hi = E.bootstrap_ci(x, seed=1)
    assert lo < m < hi and m == pytest.approx(x.mean()) and E.bootstrap_ci(x, seed=1) == (m, lo, hi)
    assert hi - lo == pytest.approx(2*1.96*x.std()/np.sqrt(len(x)), rel=0.15)


def test_batched_equals_one_by_one_greedy(tiny):
    from peft import LoraConfig, get_peft_model
    from llmops_nb.data import load_records
    m, tok = tiny
    # the tiny random model alone only emits newlines: a random LoRA on top makes the answers vary (seeded: with some
    # draws every answer is the same, whatever tests ran before in this process)
    import torch; torch.manual_seed(0)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ds = load_records("data/instructions.jsonl")
    prompts, _, _ = G.chat_prompts(tok, ds.select(range(10))["messages"])
    kw = dict(max_new_tokens=20, progress=False)
    batched = G.generate(pm, tok, prompts, batch_size=4, **kw)
    single = [G.generate(pm, tok, [p], batch_size=1, **kw)[0] for p in prompts]
    assert all(batched) and len(set(batched)) > 1
    assert batched == single
    with G.base_model(pm):
        assert G.generate(pm, tok, prompts[:4], batch_size=4, **kw) == [G.generate(pm, tok, [p], **kw)[0] for p in prompts[:4]]
    pm.unload()  # leave the shared tiny model as it was


def test_bootstrap_ci_in_blocks_equals_one_draw(monkeypatch):
    "Resampling in blocks of bounded memory draws what one n_boot x n draw did: the same interval for the same seed."
    from scipy import stats
    def whole(x, n_boot, alpha=0.05, seed=0):  # bootstrap_ci as it was, all the indices at once
        x, n = np.asarray(x, float), len(x)
        a = 2 * stats.norm.cdf(math.sqrt(n / (n - 1)) * stats.t.ppf(alpha / 2, n - 1))
        means = x[np.random.default_rng(seed).integers(0, n, (n_boot, n))].mean(1)
        return float(x.mean()), float(np.quantile(means, a / 2)), float(np.quantile(means, 1 - a / 2))
    for n, n_boot, seed in [(5, 200, 0), (37, 1000, 1), (1001, 301, 7), (4099, 50, 2)]:
        x = np.random.default_rng(n).normal(size=n)
        want = whole(x, n_boot, seed=seed)
        assert E.bootstrap_ci(x, n_boot, seed=seed) == want
        for block in (1, 3 * n + 1, n * n_boot - 1):  # one resample a block, three, all but the last
            monkeypatch.setattr(E, "BOOT_BLOCK", block)
            assert E.bootstrap_ci(x, n_boot, seed=seed) == want, (n, block)
