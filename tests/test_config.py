"Bad params are caught before any kernel starts: one line, exit status 2, no run folder."
import json, subprocess, sys
from datetime import date
import pytest
from conftest import llmops, ROOT
from llmops_nb.cli import main

GOOD = {"stages": ["prepare"], "prepare": {"max_examples": 20}}

BAD = [  # (params, --set overrides, expected fragment of the one-line message)
    ({**GOOD, "sed": 1}, [], "unknown key 'sed'; did you mean 'seed'?"),
    ({**GOOD, "prepare": {"val_sise": 0.1}}, [], "unknown key 'prepare.val_sise'; did you mean 'val_size'?"),
    ({**GOOD, "stages": ["prepair"]}, [], "stages: unknown stage 'prepair'; did you mean 'prepare'?"),
    ({**GOOD, "prepare": {"val_size": "a lot"}}, [], "val_size = 'a lot' is str, expected float"),
    ({**GOOD, "prepare": {"max_examples": 2.5}}, [], "max_examples = 2.5 is float, expected int"),
    ({**GOOD, "seed": "42"}, [], "seed = '42' is str, expected int"),
    ({**GOOD, "prepare": {"data": "data/nope.jsonl"}}, [], "no such file or folder 'data/nope.jsonl'"),
    ({**GOOD, "model": "smollm3-135m"}, [], "unknown model 'smollm3-135m'"),
    ({**GOOD, "wandb": {"mode": "sometimes"}}, [], "wandb.mode = 'sometimes'; expected one of"),
    ({**GOOD, "wandb": {"projekt": "x"}}, [], "unknown key 'wandb.projekt'; did you mean 'project'?"),
    ({**GOOD, "wandb": {"api_key": "abc"}}, [], "looks like a secret"),
    ({**GOOD, "prepare": ["data"]}, [], "section 'prepare' must be a mapping"),
    ({**GOOD, "stages": ["prepare", "prepare"]}, [], "listed twice"),
    ({**GOOD, "prepare": {"out_dir": "/tmp/x"}}, [], "unknown key 'prepare.out_dir'"),
    (GOOD, ["prepare.max_exampels=3"], "unknown key 'prepare.max_exampels'; did you mean 'max_examples'?"),
    (GOOD, ["prepare.val_size=big"], "val_size = 'big' is str, expected float"),
    (GOOD, ["noequals"], "--set noequals: expected KEY=VALUE"),
    (GOOD, ["model=no-such-alias"], "unknown model 'no-such-alias'"),
    ({**GOOD, "stages": "prepare"}, [], "stages = 'prepare' is str, expected list"),
    # an endpoint model where local weights are needed
    ({"stages": ["prepare", "finetune"], "model": "openai:gpt-4.1-mini"}, [], "finetune: model: 'openai:gpt-4.1-mini' is an endpoint model, but finetune needs the model's weights (endpoint models go to evaluate, rag_eval only)"),
    ({"stages": ["kto"]}, ["kto.model=openai:gpt-4.1-mini"], "--set kto.model=openai:gpt-4.1-mini: model: 'openai:gpt-4.1-mini' is an endpoint model, but kto needs"),
    ({"stages": ["prepare", "finetune", "evaluate"], "evaluate": {"model": "openai:gpt-4.1-mini"}}, [], "evaluate.model: 'openai:gpt-4.1-mini' is an endpoint model, but an adapter needs its local base model and this run trains finetune"),
    ({"stages": ["prepare", "finetune", "rag_index", "rag_eval"], "rag_eval": {"endpoint": "openai:gpt-4.1-mini"}}, [], "rag_eval.endpoint: 'openai:gpt-4.1-mini' is an endpoint model, but an adapter"),
    # a folder that is no index, and values outside a declared fixed set
    ({"stages": ["rag_index"], "rag_index": {"previous_index": "runs/no-such-index"}}, [], "rag_index: previous_index: 'runs/no-such-index' is not an index folder"),
    ({"stages": ["rag_index", "rag_eval"], "rag_eval": {"retrieval": "nope"}}, [], "rag_eval: retrieval = 'nope' is unknown; expected one of: dense, diverse, hybrid, mmr"),
    ({"stages": ["rag_index"]}, ["rag_index.index_type=hsnw"], "--set rag_index.index_type=hsnw: index_type = 'hsnw' is unknown; did you mean 'hnsw'?"),
    ({"stages": ["rag_index"], "rag_index": {"store": "pinecone"}}, [], "rag_index: store = 'pinecone' is unknown; expected one of: chroma, faiss"),
    ({"stages": ["prepare", "finetune"], "finetune": {"peft_method": "qlora"}}, [], "finetune: peft_method = 'qlora' is unknown"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"split": "tset"}}, [], "evaluate: split = 'tset' is unknown; did you mean 'test'?"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"task": "chat", "metrics": ["rougeL"]}}, [], "evaluate: task = 'chat' is unknown"),
    ({"stages": ["prepare", "finetune"], "finetune": {"lr_scheduler_type": "cosin"}}, [], "finetune: lr_scheduler_type: 'cosin' is not a transformers learning-rate scheduler; did you mean 'cosine'?"),
    # a price table the stages could not read (they would fail after the paid requests were sent)
    ({"stages": ["prepare", "evaluate"], "evaluate": {"prices": {"gpt-4.1-mini": 0.4}}}, [], "evaluate.prices: 'gpt-4.1-mini': 0.4 is not a price; expected {input: X, output: Y}"),
    ({"stages": ["rag_index", "rag_eval"], "rag_eval": {"prices": {"m": {"in": 0.4, "out": 1.6}}}}, [], "rag_eval.prices: 'm': {'in': 0.4, 'out': 1.6} is not a price"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"prices": {"m": {"input": "0.4", "output": 1.6}}}}, [], "evaluate.prices: 'm': {'input': '0.4', 'output': 1.6} is not a price"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"prices": {"m": {"input": -0.4, "output": 1.6}}}}, [], "evaluate.prices: 'm': {'input': -0.4, 'output': 1.6} is not a price"),
    # credentials inside a URL would be written into run.json, the notebooks, the report and the Hub README
    ({"stages": ["rag_index"], "rag_index": {"store": "chroma", "store_url": "http://admin:hunter2@h:8001"}}, [], "rag_index: store_url: the URL carries credentials before its host (user:password@); a credential goes in an environment variable"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"endpoint": {"base_url": "https://h/v1?api_key=abc123def456", "model": "m"}}}, [], "evaluate: endpoint: base_url: the URL carries a secret in its query ('api_key')"),
    ({"stages": ["rag_index"]}, ["rag_index.store_url=https://h:8000/?key=AIzaSyA1234567890"], "rag_index: store_url: the URL carries a secret in its query ('key')"),
    ({"stages": ["prepare", "evaluate"]}, ["evaluate.judge={base_url: 'http://h/v1?x=1&Access_Token=t0k3n', model: m}"], "evaluate: judge: base_url: the URL carries a secret in its query ('Access_Token')"),
    # a YAML date is no text (it also crashed the JSON copy of the params)
    ({**GOOD, "name": date(2024, 1, 1)}, [], 'name = 2024-01-01 is a date, expected str (quote it: "2024-01-01")'),
    ({**GOOD, "prepare": {"data": date(2024, 1, 1)}}, [], 'prepare: data = 2024-01-01 is a date, expected str (quote it: "2024-01-01")'),
    (GOOD, ["wandb.tags=[a, 2024-01-01]"], '--set wandb.tags=[a, 2024-01-01]: wandb.tags = 2024-01-01 is a date, expected str'),
    # values out of their declared range, NaN and infinity: refused before the stage, not inside it or never
    ({"stages": ["rag_index", "rag_eval"]}, ["rag_eval.k=0"], "--set rag_eval.k=0: k = 0; expected an int >= 1"),
    ({"stages": ["rag_index", "rag_eval"], "rag_eval": {"k": 0}}, [], "rag_eval: k = 0; expected an int >= 1"),
    ({"stages": ["rag_index", "rag_eval"]}, ["rag_eval.gates={hit_at_k: .nan}"], "--set rag_eval.gates={hit_at_k: .nan}: rag_eval.gates.hit_at_k = nan; expected a finite number"),
    ({"stages": ["prepare", "evaluate"], "evaluate": {"gates": {"rougeL": {"min": float("inf")}}}}, [], "evaluate.gates.rougeL.min = inf; expected a finite number"),
    (GOOD, ["prepare.max_examples=-1"], "max_examples = -1; expected an int >= 0"),
    ({"stages": ["prepare", "finetune"]}, ["finetune.r=-4"], "r = -4; expected an int >= 1"),
    ({"stages": ["prepare", "finetune"], "finetune": {"learning_rate": float("nan")}}, [], "finetune: learning_rate = nan; expected a finite number > 0"),
    ({"stages": ["prepare", "finetune"]}, ["finetune.learning_rate=-.inf"], "learning_rate = -inf; expected a finite number > 0"),
    (GOOD, ["prepare.val_size=-0.1"], "val_size = -0.1; expected a finite number >= 0 and < 1"),
    ({"stages": ["prepare", "evaluate"]}, ["evaluate.n_boot=-5"], "n_boot = -5; expected an int >= 1"),
    # a --set value or key is blamed on the --set, not on the params file
    ({"stages": ["prepare", "finetune"]}, ["finetune.r=abc"], "--set finetune.r=abc: r = 'abc' is str, expected int"),
    (GOOD, ["=1"], "--set =1: '' is not a key; expected KEY=VALUE"),
    (GOOD, ["name=\udcff"], "--set name=\\udcff: not UTF-8 text"),
    # a folder that holds no model, a data file prepare cannot read, a hub dataset offline
    (GOOD, ["model=settings.ini"], "--set model=settings.ini: model: 'settings.ini' is a file; expected a packaged alias, a model folder or a hub id"),
    (GOOD, ["prepare.data=params/smoke.yaml"], "--set prepare.data=params/smoke.yaml: prepare.data: "),
    (GOOD, ["prepare.data=nobody-here/no-such-data"], "data: dataset 'nobody-here/no-such-data' is not in the local Hugging Face cache"),
]


@pytest.mark.parametrize("p,sets,msg", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_params(params, tmp_path, capsys, p, sets, msg):
    f = params(p)
    args = ["run", str(f)] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert msg in err and str(f) in err or msg in err and err.startswith("llmops: --set"), err
    assert not (tmp_path/"runs").exists()


def test_bad_yaml(tmp_path, capsys):
    f = tmp_path/"p.yaml"
    f.write_text("stages: [prepare\nseed: 1\n")
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmops: {f}:") and "not valid YAML" in err and "\n" not in err


def test_missing_file(capsys):
    assert main(["run", "params/nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "llmops: params/nope.yaml: no such params file"


def test_unknown_stage_in_stages_flag(params, capsys):
    assert main(["run", str(params(GOOD)), "--stages", "finetune"]) == 2
    assert "--stages: 'finetune' is not among the stages" in capsys.readouterr().err


def test_exit_status(params, tmp_path):
    r = llmops("run", params({**GOOD, "sed": 1}))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "did you mean 'seed'" in r.stderr
    r = llmops("--help")
    assert r.returncode == 0 and "resume" in r.stdout and "compare" in r.stdout and "chat" in r.stdout


def test_help_imports_nothing_heavy():
    "`llmops --help` stays instant because no heavy library is imported for it (time: bench/cli.py)."
    code = ("import sys\nfrom llmops_nb.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'papermill', 'wandb', 'datasets', 'gradio', 'langchain_core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_shipped_params_validate():
    from llmops_nb.params import load_params
    for f in sorted((ROOT/"params").glob("*.yaml")):
        if f.name.startswith("sweep"): continue
        cfg = load_params(f)
        assert cfg["stages"], f


def test_declared_choices_are_what_the_modules_take():
    "Choices the modules cannot read from the declaration (tasks map to metrics, splits come from the data) equal the declared ones; the others (retrieval modes, stores, index types, PEFT methods) are read from it."
    import datasets
    from llmops_nb import evaluation as E
    from llmops_nb.data import split_dataset
    from llmops_nb.stages import parameters
    test = parameters("evaluate")
    assert test["task"]["choices"] == tuple(E.TASK_METRICS)
    assert test["split"]["choices"] == tuple(split_dataset(datasets.Dataset.from_dict({"x": list(range(10))}), 0.2, 0.2))


def test_json_list_data(params, tmp_path, capsys):
    "A .json data file holding one list loads the same, pretty-printed or on one line (what json.dump writes); an object is a one-line error."
    from llmops_nb.data import load_records
    from llmops_nb.params import load_params
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    (tmp_path/"one.json").write_text(json.dumps(rows)); (tmp_path/"pretty.json").write_text(json.dumps(rows, indent=2))
    for f in ("one.json", "pretty.json"): load_params(params({"stages": ["prepare"], "prepare": {"data": str(tmp_path/f)}}))
    assert load_records(tmp_path/"one.json")["messages"] == load_records(tmp_path/"pretty.json")["messages"]
    assert load_records(tmp_path/"one.json")[19]["messages"][1]["content"] == "a19"
    (tmp_path/"obj.json").write_text(json.dumps({"rows": rows}, indent=2))
    assert main(["run", str(params({"stages": ["prepare"], "prepare": {"data": str(tmp_path/"obj.json")}}))]) == 2
    err = capsys.readouterr().err.strip()
    assert "prepare.data: " in err and "obj.json: expected a JSON list of records (or JSON lines), got one dict" in err and "\n" not in err, err
    assert not (tmp_path/"runs").exists()


@pytest.mark.parametrize("top", ["- a\n- b\n", "just text\n"])
def test_top_level_not_a_mapping_with_overrides(tmp_path, capsys, top):
    "A params file that is a list or a scalar is one line with --set and --run-root too (they used to write into it and crash)."
    f = tmp_path/"p.yaml"; f.write_text(top)
    for args in (["run", str(f)], ["run", str(f), "--set", "seed=1"], ["--run-root", str(tmp_path/"runs"), "run", str(f)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"llmops: {f}: expected a mapping of keys to values at the top level, got {'list' if top[0] == '-' else 'str'}", err


def test_model_folder_without_config(params, tmp_path, capsys):
    "A folder that is no model fails before the run, not inside finetune with transformers' message; a model folder passes."
    from llmops_nb.models import embedding_path
    from llmops_nb.params import load_params
    (tmp_path/"emptydir").mkdir()
    for key in ("model", "embedding_model"):
        f = params({"stages": ["prepare", "finetune", "rag_index"], key: str(tmp_path/"emptydir")})
        assert main(["run", str(f)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"'{tmp_path/'emptydir'}' is a folder without " in err and "expected a packaged alias, a model folder or a hub id" in err and "\n" not in err, err
    (tmp_path/"emptydir"/"config.json").write_text("{}")  # what save_pretrained writes (finetune's merged folder too)
    load_params(params({"stages": ["prepare"], "model": str(tmp_path/"emptydir"), "embedding_model": embedding_path()}))
    assert not (tmp_path/"runs").exists()


def test_corrupt_parquet_named(params, tmp_path, capsys):
    (tmp_path/"d.parquet").write_bytes(b"PAR1 cut off")
    assert main(["run", str(params({"stages": ["prepare"], "prepare": {"data": str(tmp_path/"d.parquet")}}))]) == 2
    err = capsys.readouterr().err.strip()
    assert f"prepare.data: {tmp_path/'d.parquet'}: not a readable Parquet file" in err and "\n" not in err, err


def test_csv_na_is_text_to_check_and_prepare(params, tmp_path):
    "A CSV cell holding the text NA or None is that text for the params check and for `prepare` alike (pandas' missing-value words are not nulls); an empty cell is null to both."
    from llmops_nb.checks import check_data
    from llmops_nb.core import ConfigError
    from llmops_nb.data import load_prepared, prepare
    from llmops_nb.params import load_params
    rows = [("Wie heißt der Tarif?", "NA"), ("Und der zweite?", "None"), ("null", "n/a")] + [(f"q{i}", f"a{i}") for i in range(7)]
    f = tmp_path/"na.csv"; f.write_text("prompt,completion\n" + "".join(f"{p},{c}\n" for p, c in rows), encoding="utf-8")
    load_params(params({"stages": ["prepare"], "prepare": {"data": str(f)}}))  # the check before the run passes ...
    dd = load_prepared(prepare(f, tmp_path/"prep")["out_dir"])  # ... and so does prepare, with the same records
    got = {tuple(m["content"] for m in r["messages"]) for split in dd.values() for r in split}
    assert got == set(rows), got ^ set(rows)
    (tmp_path/"empty.csv").write_text("prompt,completion\nq,\n")
    for read in (lambda: check_data(tmp_path/"empty.csv", "prepare.data"), lambda: prepare(tmp_path/"empty.csv", tmp_path/"prep2")):
        with pytest.raises(ConfigError, match="'completion' is null"): read()
