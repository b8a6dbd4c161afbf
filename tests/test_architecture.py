"The architecture's promises: one declaration per setting, explicit stage contracts, no import cycle, small modules."
import ast, dataclasses, json, re
import pytest
from conftest import ROOT
from llmops_nb import settings as S, stages as ST
from llmops_nb.cli import main
from llmops_nb.core import resolve_path
from llmops_nb.params import validate

PKG = ROOT/"llmops_nb"
MODULES = sorted(p for p in PKG.glob("*.py") if p.name != "_modidx.py")


def test_parameters_cells_are_the_declarations():
    "Every stage notebook's parameters cell assigns exactly the declared parameters, with the declared defaults."
    assert ST.cell_mismatches() == []
    for s in ST.names():
        nb = json.loads(ST.notebook(s).read_text())
        cell = "".join(next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
        ns = {}; exec(cell, {}, ns)
        assert {k: v for k, v in ns.items() if k != "__annotations__"} == {k: d["default"] for k, d in ST.parameters(s).items()}, s


def test_validator_and_cli_use_the_declared_defaults(capsys):
    "A run's resolved values and `llmops stages` show the declared default of every setting nobody set."
    cfg = validate({"stages": ST.names()})
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for s in ST.names():
        for k, d in ST.parameters(s).items():
            if d["role"] != "setting": continue
            want = str(resolve_path(d["default"])) if d["kind"].startswith("path") and d["default"] and resolve_path(d["default"]).exists() else d["default"]
            assert cfg["params"][s][k] == want, (s, k)
            assert f"  {k}: {ST._type_src(d['type'])} = {ST._literal(d['default'])}  # {d['help']}" in out, (s, k)


def test_same_name_same_type_everywhere():
    "A setting that several stages declare has one type and one kind; a stage that re-defaults one keeps its type."
    seen = {}
    for s in ST.names():
        for k, d in ST.parameters(s).items():
            if d["role"] == "setting": assert seen.setdefault(k, (d["type"], d["kind"])) == (d["type"], d["kind"]), (s, k)
    assert seen["max_length"][0] is int and seen["target_modules"][0] == (str | list)


def test_settings_module_declares_only():
    "llmops_nb.settings holds declarations only (why the pipeline leaves it out of code hashes): imports, constants, `setting`, dataclasses of settings."
    for node in ast.parse((PKG/"settings.py").read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)): continue
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Tuple, ast.List)): continue  # KINDS, __all__
        if isinstance(node, ast.FunctionDef) and node.name == "setting": continue
        assert isinstance(node, ast.ClassDef) and [d.id for d in node.decorator_list] == ["dataclass"], ast.dump(node)[:200]
        for item in node.body:
            doc = isinstance(item, ast.Expr) and isinstance(item.value, ast.Constant)
            assert doc or (isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call) and item.value.func.id == "setting"), (node.name, ast.dump(item)[:200])


def test_training_arguments_follow_the_settings(tmp_path):
    "Every finetune setting named like a TrainingArguments field reaches TrainingArguments unchanged: no hand-written mapping."
    from llmops_nb.trainer import TRAINING_FIELDS, training_args
    changed = dict(learning_rate=1e-3, num_train_epochs=2.5, max_steps=11, per_device_train_batch_size=3, gradient_accumulation_steps=2,
                   warmup_steps=0.2, lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=0.5, logging_steps=7, seed=3,
                   per_device_eval_batch_size=2, eval_steps=5, save_steps=9, save_total_limit=4, gradient_checkpointing=True,
                   torch_compile=False, use_liger_kernel=False)
    named = {f.name for f in dataclasses.fields(S.FinetuneConfig)} & TRAINING_FIELDS
    assert named == set(changed), named ^ set(changed)  # a new TrainingArguments-named setting gets a value here
    args = training_args(S.FinetuneConfig(**changed), tmp_path)
    for k, v in changed.items():
        got = getattr(args, "activation_checkpointing" if k == "gradient_checkpointing" and hasattr(args, "activation_checkpointing") else k)
        assert got == v, (k, got, v)


def test_peft_and_trl_configs_follow_the_settings(tmp_path):
    from llmops_nb.lora import peft_config
    from llmops_nb.models import load_causal_lm
    from llmops_nb.preference import dpo_args
    model, _ = load_causal_lm("tiny-random", device="cpu")
    c = peft_config(S.FinetuneConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj"], use_dora=True, use_rslora=True), model)
    assert (c.r, c.lora_alpha, c.lora_dropout, sorted(c.target_modules), c.use_dora, c.use_rslora) == (4, 8, 0.1, ["q_proj"], True, True)
    p = S.PreferenceConfig(beta=0.3, learning_rate=1e-4, num_train_epochs=2.0, max_steps=5, per_device_train_batch_size=3, max_length=99,
                           gradient_accumulation_steps=2, warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.1,
                           max_grad_norm=0.3, logging_steps=3, seed=5, gradient_checkpointing=True)
    a = dpo_args(p, tmp_path)
    for k in ("beta", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "max_length", "gradient_accumulation_steps",
              "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm", "logging_steps", "seed", "gradient_checkpointing"):
        assert getattr(a, k) == getattr(p, k), k


@pytest.mark.parametrize("p,sets,msg", [
    ({"stages": ["prepare"], "prepare": {"foo": 1}}, [], "unknown key 'prepare.foo'"),
    ({"stages": ["prepare"], "finetune": {"rr": 8}}, [], "unknown key 'finetune.rr'; did you mean 'r'?"),
    ({"stages": ["prepare"]}, ["dpo.beta=0.2"], "--set dpo.beta=0.2: stage 'dpo' is not in this run's stages (prepare)"),
    ({"stages": ["prepare"], "prepare": {"out_dir": "/tmp/x"}}, [], "unknown key 'prepare.out_dir'"),
    ({"stages": ["finetune"]}, [], "'finetune' reads the output of 'prepare'; add 'prepare' to stages"),
])
def test_unknown_or_unused_parameter_fails_in_one_line(params, capsys, p, sets, msg):
    assert main(["run", str(params(p))] + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err, err


def test_no_import_cycles():
    "The module graph (every import, lazy ones inside functions too) is acyclic."
    from llmops_nb.pipeline import imports
    graph = {f"llmops_nb.{p.stem}": {m for m in imports(p.read_text(), f"llmops_nb.{p.stem}") if m != f"llmops_nb.{p.stem}"} for p in MODULES}
    state = {}
    def visit(m, path):
        if state.get(m) == "done": return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for n in graph.get(m, ()): visit(n, path + [m])
        state[m] = "done"
    for m in graph: visit(m, [])


def test_modules_are_small_and_classes_are_not_built_in_functions():
    "No module above ~400 lines unless CONTRIBUTING gives a reason; no class defined inside a function."
    text = (ROOT/"CONTRIBUTING.md").read_text()
    excused = set(re.findall(r"^- `llmops_nb/(\w+)\.py`: ", text.split("### Modules above 400 lines", 1)[-1], re.M)) if "### Modules above 400 lines" in text else set()
    for p in MODULES:
        n = len(p.read_text().splitlines())
        assert n <= 400 or p.stem in excused, f"{p.name}: {n} lines"
        for f in ast.walk(ast.parse(p.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert not any(isinstance(c, ast.ClassDef) for c in ast.walk(f)), f"{p.name}: a class built inside {f.name}()"


def test_contributing_lists_every_module():
    text = (ROOT/"CONTRIBUTING.md").read_text()
    for p in MODULES:
        if p.stem != "__init__": assert f"`{p.stem}`" in text, p.stem


def test_outputs_are_found_through_the_contracts():
    "No module or stage notebook spells the path of a stage's output: they ask `stages.output`."
    spelled = re.compile(r'/\s*"(adapter|merged|dataset|index|predictions\.jsonl|answers\.jsonl)"')
    sources = {p.name: p.read_text() for p in MODULES if p.name != "stages.py"}
    sources |= {p.name: "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")
                for p in (ROOT/"nbs"/"pipeline").glob("*.ipynb")}
    for name, src in sources.items(): assert not spelled.search(src), (name, spelled.search(src).group(0))


def test_stage_notebooks_define_nothing():
    "Library logic lives in the package: a stage notebook calls it, and defines no function or class of its own."
    for p in (ROOT/"nbs"/"pipeline").glob("*.ipynb"):
        for c in json.loads(p.read_text())["cells"]:
            if c["cell_type"] != "code": continue
            tree = ast.parse("\n".join(l for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith(("%", "!"))))
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda)) for n in ast.walk(tree)), p.name
