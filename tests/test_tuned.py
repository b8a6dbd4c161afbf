"What a run serves: the adapter of its last adapter stage (kto, dpo, finetune in pipeline order), the same in `llmops serve` (deploy) and `llmops chat`."
import json
from pathlib import Path
import pytest
from llmops_nb import chat as C, deploy as D, runs as R, stages as ST

Q = "model.layers.0.self_attn.q_proj.weight"  # a weight every LoRA below changes


def _adapter_stage(run_dir: Path, stage: str, seed: int) -> dict:
    "A finished `stage` folder as the pipeline leaves it: a LoRA adapter with random weights (`seed`) on tiny-random, and its manifest."
    import peft, torch
    from llmops_nb.models import load_causal_lm
    out = run_dir/stage; out.mkdir(parents=True)
    torch.manual_seed(seed)
    lm, tok = load_causal_lm("tiny-random", device="cpu", dtype="float32")
    cfg = peft.LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(lm, cfg).save_pretrained(out/"adapter"); tok.save_pretrained(out/"adapter")
    ST.write_manifest(stage, out)
    return {"status": "done", "out_dir": str(out)}


def _record(root: Path, rid: str, stages: dict, index: Path, rag_eval: dict | None = None) -> dict:
    "A finished run record with the adapter stages `stages` (name -> seed), a rag_index stage holding `index`, and rag_eval's params."
    d = root/rid; d.mkdir(parents=True)
    st = {s: _adapter_stage(d, s, seed) for s, seed in stages.items()}
    st["rag_index"] = {"status": "done", "out_dir": str(index.parent)}
    params = {s: {"model": "tiny-random"} for s in stages} | {"rag_eval": rag_eval or {"model": "tiny-random", "k": 2, "retrieval": "dense"}}
    rec = {"id": rid, "name": "t", "status": "done", "run_dir": str(d), "params_file": "params/t.yaml", "raw": {"model": "tiny-random", "dtype": "float32"},
           "config": {"stages": ["prepare", *stages, "rag_index", "rag_eval"], "params": params}, "stages": st}
    R.save_record(rec)
    return rec


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Three runs on tiny-random over one small real FAISS index: finetune only; finetune + kto; finetune + dpo + kto."
    from llmops_nb.vectorstore import build_index
    root = tmp_path_factory.mktemp("tuned")
    kb = root/"kb"; kb.mkdir()
    (kb/"a.md").write_text("# Warranty\n\nThe warranty lasts ten years from the date of purchase.")
    (kb/"b.md").write_text("# Returns\n\nReturns are accepted within 30 days with a receipt.")
    build_index(kb, root/"rag_index"/"index", chunk_size=200, chunk_overlap=20)
    idx = root/"rag_index"/"index"
    return root/"runs", {"sft": _record(root/"runs", "20260101-000000-aaaa", {"finetune": 1}, idx),
                         "kto": _record(root/"runs", "20260101-000001-bbbb", {"finetune": 1, "kto": 2}, idx),
                         "both": _record(root/"runs", "20260101-000002-cccc", {"finetune": 1, "dpo": 3, "kto": 4}, idx)}


def _merged(adapter) -> "torch.Tensor":
    "The q_proj weight of tiny-random with `adapter` merged in fp32: what a server of that adapter must answer with."
    from llmops_nb.models import load_causal_lm
    lm, _ = load_causal_lm("tiny-random", device="cpu", dtype="float32", adapter=str(adapter))
    return lm.merge_and_unload().state_dict()[Q]


def test_tuned_picks_the_last_adapter_stage(runs):
    _, r = runs
    for name, stage in (("sft", "finetune"), ("kto", "kto"), ("both", "kto")):  # kto comes after dpo in pipeline order
        t = R.tuned(r[name])
        assert (t["stage"], t["adapter"], t["model"]) == (stage, Path(r[name]["run_dir"])/stage/"adapter", "tiny-random"), name
    assert ST.names().index("kto") > ST.names().index("dpo") > ST.names().index("finetune")


def test_deploy_serves_the_kto_adapter(runs):
    "`llmops serve` of a run with a kto stage: the tuned model's lineage and weights are kto's; a fine-tune-only run serves finetune's."
    import torch
    root, r = runs
    for name, stage in (("kto", "kto"), ("sft", "finetune")):
        dep = D.load(r[name]["id"], root, device="cpu", dtype="float32")
        tuned = next(s for s in dep.models.values() if s.kind == "tuned")
        want = Path(r[name]["run_dir"])/stage/"adapter"
        assert tuned.lineage["adapter"] == str(want) and dep.models[f"t-{r[name]['id'][-4:]}-rag"].lineage["adapter"] == str(want)
        assert torch.equal(tuned.model.lm.state_dict()[Q], _merged(want)), name
    sft_ad = Path(r["kto"]["run_dir"])/"finetune"/"adapter"
    assert not torch.equal(_merged(sft_ad), _merged(Path(r["kto"]["run_dir"])/"kto"/"adapter"))  # the check above can tell them apart


def test_chat_answers_with_the_kto_adapter(runs):
    "`llmops chat RUN`: the Answerer of a run with a kto stage holds kto's weights; of a fine-tune-only run, finetune's."
    import torch
    root, r = runs
    for name, stage in (("kto", "kto"), ("sft", "finetune")):
        want = Path(r[name]["run_dir"])/stage/"adapter"
        got = C.run_inputs(r[name]["id"], root)
        assert (got["adapter"], got["model"], got["index"]) == (want, "tiny-random", Path(r[name]["stages"]["rag_index"]["out_dir"])/"index")
        a = C.Answerer.from_run(r[name]["id"], root, max_new_tokens=4)
        assert a.meta["adapter_id"] == str(want)
        w = a.llm.lm.state_dict()[Q]
        assert torch.equal(w, _merged(want).to(w.dtype)), name  # merged in fp32, then in the dtype the chat answers in
        assert a("How long is the warranty?")["sources"]  # it answers over the run's index


def test_chat_and_serve_use_the_settings_rag_eval_scored(runs, tmp_path, monkeypatch):
    "A run whose rag_eval set its generation, k and retrieval to non-defaults: `llmops chat` (Answerer.from_run) and `llmops serve` (deploy.load) answer with exactly those; a caller's own values win."
    from llmops_nb import rag
    from llmops_nb.generation import gen_kwargs
    from llmops_nb.settings import RagEvalConfig
    root, r = runs
    index = Path(r["sft"]["stages"]["rag_index"]["out_dir"])/"index"
    set_ = {"max_new_tokens": 3, "batch_size": 2, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "seed": 7, "k": 3, "retrieval": "mmr"}
    rec = _record(tmp_path/"runs", "20260101-000003-dddd", {"finetune": 5}, index, {"model": "tiny-random", "dtype": "float32", **set_})
    want = gen_kwargs(RagEvalConfig(**set_))
    assert all(want[k] != v for k, v in gen_kwargs(RagEvalConfig()).items() if k in set_)  # none of them is a default
    p = D.run_parts(rec)
    assert (p["rag_gen"], p["k"], p["mode"]) == (want, 3, "mmr") and p["gen"] == gen_kwargs(ST.stage("evaluate").config())
    seen, real = [], rag.generate  # what the chain hands generate
    monkeypatch.setattr(rag, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    bot = C.Answerer.from_run(rec["id"], tmp_path/"runs")
    assert (bot.k, bot.mode, {k: getattr(bot.llm, k) for k in want}) == (3, "mmr", want)
    new, lm_generate = [], bot.llm.lm.generate  # tokens the model generated per answer
    monkeypatch.setattr(bot.llm.lm, "generate", lambda **kw: (o := lm_generate(**kw), new.append(o.shape[1] - kw["input_ids"].shape[1]))[0])
    assert bot("How long does the warranty last?")["answer"]
    assert {k: seen[-1][k] for k in want} == want and 0 < new[-1] <= 3, new
    mine = C.Answerer.from_run(rec["id"], tmp_path/"runs", k=2, max_new_tokens=5)  # `llmops chat --k 2 --max-new-tokens 5`
    assert (mine.k, mine.llm.max_new_tokens, mine.llm.repetition_penalty) == (2, 5, 1.3)
    served = D.load(rec["id"], tmp_path/"runs", device="cpu").models["t-dddd-rag"]
    assert (served.gen, served.rag["k"], served.rag["mode"], served.lineage["k"]) == (want, 3, "mmr", 3)
    assert served.defaults == {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}  # engine.Sampling's, under a client's own values


def test_push_shares_the_served_adapter_and_never_a_mismatched_merge(runs, tmp_path):
    "`llmops push` shares the adapter the run serves (kto's); `--merged` is refused there, since finetune's merged model is the SFT one."
    from llmops_nb import share as S
    from llmops_nb.core import ConfigError
    root, r = runs
    assert S.adapter_of(r["kto"]) == ("kto", Path(r["kto"]["run_dir"])/"kto"/"adapter")
    assert S.adapter_of(r["sft"]) == ("finetune", Path(r["sft"]["run_dir"])/"finetune"/"adapter")
    with pytest.raises(ConfigError, match="shares the kto adapter, but its merged model is finetune's"):
        S.bundle(R.load_record(r["kto"]["id"], root), tmp_path/"kto-merged", merged=True)
    assert not (tmp_path/"kto-merged").exists()  # refused before anything is written


def test_push_card_describes_the_shared_adapter(preference_run, runs, tmp_path):
    "A real finetune + dpo + kto run: `llmops push --out`'s README and the report's MODEL_CARD.md name kto's adapter, its settings and data, and finetune's adapter as its start; an SFT-only run's card names finetune's and no KTO."
    from conftest import llmops
    from huggingface_hub import ModelCard
    from llmops_nb import share as S
    from llmops_nb.core import md_text
    rec, (root, r) = preference_run, runs
    P, m = rec["config"]["params"], R.stage_metrics(rec, "kto")
    kto, sft = R.output(rec, "kto", "adapter"), R.output(rec, "finetune", "adapter")
    res = llmops("--run-root", Path(rec["run_dir"]).parent, "push", rec["id"], "--repo", "u/m", "--out", tmp_path/"kto")
    assert res.returncode == 0, res.stderr[-2000:]
    readme = (tmp_path/"kto"/"README.md").read_text()
    assert ModelCard(readme).data.base_model == "tiny-random"
    for card in (readme, (Path(rec["run_dir"])/"MODEL_CARD.md").read_text()):
        adapter = next(l for l in card.splitlines() if l.startswith("- Adapter:"))
        assert f"`{kto}`" in adapter and "KTO" in adapter and f"`{sft}`" in card, adapter  # the shared adapter, and where it started
        kto_part = card.split("### kto")[1].split("###")[0]
        for k in ("beta", "learning_rate", "max_steps", "max_examples"): assert f"| {md_text(k)} | `{json.dumps(P['kto'][k])}` |" in kto_part, k
        assert f"{md_text('n_examples')} {m['n_examples']}" in kto_part and "stand-ins from the sample data" in card  # how many examples, and from where
        assert "### finetune" in card and f"| {md_text('max_steps')} | `{P['finetune']['max_steps']}` |" in card.split("### finetune")[1]
    S.push(r["sft"]["id"], "u/m", root, out=tmp_path/"sft", echo=lambda *a: None)
    card = (tmp_path/"sft"/"README.md").read_text()
    assert "- Adapter: PEFT LoRA" in card and f"`{Path(r['sft']['run_dir'])/'finetune'/'adapter'}`" in card and "KTO" not in card
