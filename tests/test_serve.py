"Serving: a real server on a loopback port, real clients (the openai SDK, LangChain's ChatOpenAI, chromium), real promotion."
import concurrent.futures as cf, json, os, socket, subprocess, sys, threading, time, urllib.request
from pathlib import Path
import pytest
from conftest import llmops

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
openai = pytest.importorskip("openai")
from llmops_nb import feedback as F, generation as G, servelog as SL, vectorstore as V  # noqa: E402
from llmops_nb.kernels import malloc_env  # noqa: E402
from llmops_nb.serving import Caps  # noqa: E402
from llmops_nb.settings import Generation  # noqa: E402
from llmops_nb.server import serve  # noqa: E402

DOCS = {"battery.md": "# Battery\n\nThe KB-5 module stores 5.1 kWh, of which 4.8 kWh is usable.\n\n## Warranty\n\n"
                      "KB-5 modules are covered for 10 years or 6,000 full cycles.\n",
        "charger.md": "# Charger\n\nThe KC-11 charges cars at up to 11 kW.\n\n## Modes\n\nSolar-only mode uses surplus PV.\n",
        "island.md": "# Island mode\n\nDuring a power cut the system switches to battery power in under 20 ms.\n"}
QUESTIONS = ["How long is the battery warranty?", "How fast does the charger charge?", "What happens in a power cut?",
             "What is solar-only mode?", "How much of the battery is usable?", "Can I reset the gateway?", "What is the KB-5?", "Hi"]
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _run(root: Path, rid: str, seed: int, index: Path) -> dict:
    "A finished run record: tiny-random, a LoRA adapter with random weights (`seed`), a rag_index folder holding `index`."
    import peft, torch
    from llmops_nb.models import load_causal_lm
    d = root/rid; (d/"finetune").mkdir(parents=True)
    torch.manual_seed(seed)
    lm, _ = load_causal_lm("tiny-random", device="cpu")
    cfg = peft.LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(lm, cfg).save_pretrained(d/"finetune"/"adapter")
    rec = {"id": rid, "name": "test", "status": "done", "run_dir": str(d), "params_file": "p.yaml", "created": rid, "raw": {"model": "tiny-random", "dtype": "float32"},  # fp32: batched greedy answers equal lone ones exactly
           "config": {"stages": ["finetune", "rag_index", "rag_eval"], "params": {
               "prepare": {"system_prompt": "Answer briefly."}, "rag_eval": {"model": "tiny-random", "k": 2, "retrieval": "hybrid"}}},
           "stages": {"finetune": {"status": "done", "out_dir": str(d/"finetune")}, "rag_index": {"status": "done", "out_dir": str(index.parent)}}}
    (d/"run.json").write_text(json.dumps(rec))
    return rec


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "A runs folder with two finished runs (different adapters) sharing a small real FAISS index."
    root = tmp_path_factory.mktemp("serve")
    kb = root/"kb"; kb.mkdir()
    for name, text in DOCS.items(): (kb/name).write_text(text)
    V.build_index(kb, root/"rag_index"/"index", chunk_size=200, chunk_overlap=20)
    r1 = _run(root/"runs", "20260101-000000-aaaa", 1, root/"rag_index"/"index")
    r2 = _run(root/"runs", "20260101-000001-bbbb", 2, root/"rag_index"/"index")
    return root, r1, r2


@pytest.fixture(scope="module")
def server(runs):
    "`llmops serve`'s server for the first run, in this process, on a free loopback port."
    root, r1, _ = runs
    db = root/"fb.db"
    srv, follow, backend, reqlog = serve(r1["id"], root/"runs", port=0, db=db, max_batch=8, device="cpu", block=False)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="loopback", max_retries=0, timeout=120)
    yield dict(srv=srv, follow=follow, backend=backend, log=reqlog, db=db, client=client, url=srv.url, models=list(follow.current.models))
    srv.stop(); backend.close(); reqlog.close()


def _ask(q): return [{"role": "user", "content": q}]


def test_openai_sdk_models_completion_stream(server):
    c = server["client"]
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny-random", "test-aaaa", "test-aaaa-rag"]
    assert {m.id: m.model_extra["kind"] for m in models} == {"tiny-random": "base", "test-aaaa": "tuned", "test-aaaa-rag": "rag"}
    assert models[1].model_extra["lineage"]["run_id"] == "20260101-000000-aaaa" and models[1].model_extra["lineage"]["adapter"].endswith("adapter")
    r = c.chat.completions.create(model="test-aaaa", messages=_ask(QUESTIONS[0]), max_tokens=16)
    text = r.choices[0].message.content
    assert text and r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.system_fingerprint == "20260101-000000-aaaa"
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (16, "length") and r.usage.prompt_tokens > 10
    # the same greedy answer as generation.generate on the same prompt alone
    served = server["follow"].current.models["test-aaaa"]
    prompt = served.tok.apply_chat_template([{"role": "system", "content": "Answer briefly."}, *_ask(QUESTIONS[0])], tokenize=False, add_generation_prompt=True)
    assert served.defaults == {"repetition_penalty": Generation.repetition_penalty, "no_repeat_ngram_size": Generation.no_repeat_ngram_size}
    assert text == G.generate(served.model.lm, served.tok, [prompt], max_new_tokens=16, progress=False, **served.defaults)[0]
    chunks = list(c.chat.completions.create(model="test-aaaa", messages=_ask(QUESTIONS[0]), max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and len({ch.id for ch in chunks}) == 1 and chunks[0].id != r.id
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    rag = c.chat.completions.create(model="test-aaaa-rag", messages=_ask(QUESTIONS[0]), max_tokens=16)
    srcs = rag.model_extra["sources"]
    assert [s["source"] for s in srcs][:1] == ["battery.md"] and all(0 < s["score"] <= 1 for s in srcs if s["score"] is not None)


def test_raw_sse_format(server):
    "The bytes on the wire: `data: {...}` events separated by blank lines, ending with `data: [DONE]`."
    body = json.dumps({"model": "test-aaaa", "messages": _ask("Hi"), "max_tokens": 4, "stream": True}).encode()
    req = urllib.request.Request(f"{server['url']}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_error_statuses(server):
    c = server["client"]
    with pytest.raises(openai.BadRequestError, match="'temperature' must be between 0 and 2"):
        c.chat.completions.create(model="test-aaaa", messages=_ask("x"), temperature=5)
    with pytest.raises(openai.BadRequestError, match="the last message must be the user's"):
        c.chat.completions.create(model="test-aaaa", messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist") as e:
        c.chat.completions.create(model="nope", messages=_ask("x"))
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert 'model="nope"' not in urllib.request.urlopen(f"{server['url']}/metrics", timeout=30).read().decode()  # no label per name a client sends
    with pytest.raises(openai.BadRequestError, match="the limit is 32,000") as e:  # OpenAI's status and code: clients know them
        c.chat.completions.create(model="test-aaaa", messages=_ask("x" * 40_000))
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:  # a prompt that cannot fit the tiny model's 2048-token context
        c.chat.completions.create(model="test-aaaa", messages=_ask("word " * 3000), max_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="unrecognized request argument 'top_k'"):  # a vLLM extra: refused, not dropped
        c.chat.completions.create(model="test-aaaa", messages=_ask("x"), extra_body={"top_k": 1})
    bad = urllib.request.Request(f"{server['url']}/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(bad, timeout=30)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["message"] == "the request body is not valid JSON"
    nested = urllib.request.Request(f"{server['url']}/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(nested, timeout=30)
    assert e.value.code == 400  # too deep to parse is malformed, not a crash



def test_text_that_is_not_utf8_is_refused_and_the_rest_recorded(server):
    "Half an emoji's JSON escape (\"\\ud83d\": valid JSON, no text) is a 400 naming the field on every endpoint; the requests around one are answered and recorded."
    import httpx
    c, db, rlog = server["client"], server["db"], server["log"]
    def raw(body: bytes, path="/v1/chat/completions"):
        return httpx.post(f"{server['url']}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=120)
    r = raw(b'{"model": "test-aaaa", "messages": [{"role": "user", "content": "Hallo \\ud83d"}], "max_tokens": 4}')
    assert (r.status_code, r.json()) == (400, {"error": {"message": "'messages[0].content' is not valid UTF-8 text (a lone surrogate \\ud83d)",
                                                         "type": "invalid_request_error", "param": "messages[0].content", "code": None}}), r.text
    r = raw(b'{"response_id": "chatcmpl-x", "rating": -1, "comment": "gut \\udc00"}', "/v1/feedback")
    assert (r.status_code, r.json()["error"]["param"]) == (400, "comment"), r.text
    r = raw(b'{"id": 1, "decision": "approve", "reviewer": "ana \\ud83d"}', "/v1/feedback/review")
    assert (r.status_code, r.json()["error"]["param"]) == (400, "reviewer"), r.text
    assert rlog.flush()
    before, failed = len(SL.load_requests(db)), rlog.failed
    go = threading.Barrier(7)
    def one(i):  # six questions and, among them, a model name with a lone surrogate: the log writes them in the same batches
        go.wait()
        if i == 3: return raw(b'{"model": "gpt\\ud83d", "messages": [{"role": "user", "content": "Hallo"}]}').status_code
        return c.chat.completions.create(model="test-aaaa", messages=_ask(f"Frage {i}: welche Größe?"), max_tokens=8).id
    with cf.ThreadPoolExecutor(7) as ex: got = list(ex.map(one, range(7)))
    assert got[3] == 400
    assert rlog.flush()
    req = SL.load_requests(db).iloc[before:]
    assert len(req) == 7 and rlog.failed == failed and sorted(req["status"]) == [200] * 6 + [400]
    assert set(got[:3] + got[4:]) <= set(req["response_id"])
    questions = F.load(db).set_index("id").loc[req["feedback_id"].dropna().astype(int), "question"]
    assert sorted(questions) == sorted(f"Frage {i}: welche Größe?" for i in (0, 1, 2, 4, 5, 6))


def test_served_name(runs):
    "`llmops serve --name kestrel` serves the run's models as kestrel and kestrel-rag."
    root, r1, _ = runs
    srv, follow, backend, reqlog = serve(r1["id"], root/"runs", port=0, db=root/"name.db", name="kestrel", device="cpu", block=False)
    try: assert [m.id for m in openai.OpenAI(base_url=f"{srv.url}/v1", api_key="loopback").models.list()] == ["tiny-random", "kestrel", "kestrel-rag"]
    finally: srv.stop(); backend.close(); reqlog.close()


def test_api_key_and_busy(runs):
    "A server with a key answers 401 without it; a full queue answers 503 with Retry-After."
    root, r1, _ = runs
    os.environ["LLMOPS_TEST_SERVE_KEY"] = key = "s3cret-" + "x" * 20
    from llmops_nb import deploy, engine as EN, serving
    from llmops_nb.server import Running, create_app
    dep = deploy.load(r1["id"], root/"runs", device="cpu")
    backend, reqlog = serving.HFBackend(EN.Engine(max_batch=1, max_queue=1)), SL.RequestLog(root/"keyed.db")
    srv = Running(create_app(dep, backend, reqlog, Caps(max_tokens=1900), key=key, db=root/"keyed.db"))
    try:
        wrong = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong-key-wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided: wro...ey"): wrong.models.list()
        with pytest.raises(openai.AuthenticationError): wrong.chat.completions.create(model="test-aaaa", messages=_ask("Hi"))
        with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(f"{srv.url}/metrics", timeout=30)
        assert e.value.code == 401
        assert json.loads(urllib.request.urlopen(f"{srv.url}/health", timeout=30).read()) == {"status": "ok", "auth": True}
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in c.models.list()] == ["tiny-random", "test-aaaa", "test-aaaa-rag"]
        long = c.chat.completions.create(model="test-aaaa", messages=_ask("Tell me everything."), max_tokens=1900, stream=True)  # near the context: busy for seconds
        first = next(iter(long))  # it holds the only batch row now
        queued = cf.ThreadPoolExecutor(1).submit(c.chat.completions.create, model="test-aaaa", messages=_ask("Hi"), max_tokens=4)
        for _ in range(1000):  # the queued request in line while the long one decodes (the long one's first chunk can come before its row)
            if backend.engine.waiting == 1 and backend.engine.active == 1: break
            time.sleep(0.01)
        assert backend.engine.waiting == 1 and backend.engine.active == 1, (backend.engine.waiting, backend.engine.active)
        with pytest.raises(openai.InternalServerError, match="the server is busy") as e:
            c.chat.completions.create(model="test-aaaa", messages=_ask("Hi"), max_tokens=4)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        long.close()
        assert queued.result(timeout=120).choices[0].finish_reason in ("length", "stop") and first.choices[0].delta.role == "assistant"
    finally:
        srv.stop(); backend.close(); reqlog.close()
    got = SL.load_requests(root/"keyed.db")["status"].tolist()
    assert sorted(got) == [200, 401, 499, 503], got  # every chat request, refused ones too


def test_langchain_chat_openai(server):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(base_url=f"{server['url']}/v1", api_key="loopback", model="test-aaaa-rag", max_tokens=12, temperature=0, max_retries=0)
    msg = llm.invoke(QUESTIONS[2])
    direct = server["client"].chat.completions.create(model="test-aaaa-rag", messages=_ask(QUESTIONS[2]), max_tokens=12, temperature=0)
    assert msg.content == direct.choices[0].message.content and msg.content
    assert "".join(ch.content for ch in llm.stream(QUESTIONS[2])) == msg.content
    assert msg.response_metadata["model_name"] == "test-aaaa-rag" and msg.usage_metadata["output_tokens"] == 12
    with pytest.raises(openai.BadRequestError) as e:  # over the cap: OpenAI's 400 and code, which LangChain raises as its invalid-request error
        llm.invoke("word " * 5000)
    assert e.value.body["code"] == "context_length_exceeded"


def test_64_concurrent_mixed_requests_none_lost(server, tmp_path):
    "64 requests at once (three models, streamed or not, greedy or seeded sampling): all answered, greedy ones as when asked alone, all recorded."
    c, models = server["client"], server["models"]
    jobs = [dict(model=models[i % 3], q=QUESTIONS[i % len(QUESTIONS)], stream=bool(i % 2), sample=i % 5 == 0) for i in range(64)]
    alone = {}
    for j in jobs:  # the greedy answers one at a time, first
        if not j["sample"] and (j["model"], j["q"]) not in alone:
            alone[j["model"], j["q"]] = c.chat.completions.create(model=j["model"], messages=_ask(j["q"]), max_tokens=16).choices[0].message.content
    server["log"].flush()
    before = len(SL.load_requests(server["db"]))
    go = threading.Barrier(64)
    def one(j):
        kw = dict(model=j["model"], messages=_ask(j["q"]), max_tokens=16, **(dict(temperature=0.8, seed=7) if j["sample"] else {}))
        go.wait()
        if not j["stream"]:
            r = c.chat.completions.create(**kw); return r.id, r.choices[0].message.content
        parts, rid = [], None
        for ch in c.chat.completions.create(stream=True, **kw):
            rid = ch.id; parts += [ch.choices[0].delta.content or ""] if ch.choices else []
        return rid, "".join(parts)
    with cf.ThreadPoolExecutor(64) as ex: got = list(ex.map(one, jobs))
    ids = [rid for rid, _ in got]
    assert len(set(ids)) == 64
    for j, (_, text) in zip(jobs, got):
        if not j["sample"]: assert text == alone[j["model"], j["q"]], (j, text)
    assert server["log"].flush()
    req = SL.load_requests(server["db"]).iloc[before:]
    assert set(ids) <= set(req["response_id"]) and len(req) == 64 and (req["status"] == 200).all()
    assert req["feedback_id"].notna().all() and (req["completion_tokens"] > 0).all() and (req["ttft_ms"] <= req["latency_ms"]).all()
    fb = F.load(server["db"]).set_index("id").loc[req["feedback_id"].astype(int)]
    assert sorted(fb["question"]) == sorted(j["q"] for j in jobs)
    assert (fb[fb["adapter_id"].isna()].index.size, fb["run_id"].unique().tolist()) == (sum(j["model"] == "tiny-random" for j in jobs), ["20260101-000000-aaaa"])
    metrics = urllib.request.urlopen(f"{server['url']}/metrics", timeout=30).read().decode()
    assert "llmops_queue_depth 0.0" in metrics and 'llmops_request_latency_seconds_count{model="test-aaaa-rag"}' in metrics
    res = llmops("monitor", "--db", server["db"], "--out", tmp_path/"mon")
    assert res.returncode == 0, res.stderr
    assert "serving, per model" in res.stdout and (tmp_path/"mon"/"serving.png").stat().st_size > 5_000
    import pandas as pd
    sv = pd.read_csv(tmp_path/"mon"/"serving.csv", index_col=0)
    assert int(sv["requests"].sum()) == len(SL.load_requests(server["db"]))


def test_client_disconnects_mid_stream(server):
    "A client that closes its stream frees its batch row at once and is recorded as 499; the server goes on."
    c, eng = server["client"], server["backend"].engine
    s = c.chat.completions.create(model="test-aaaa", messages=_ask("Tell me a long story."), max_tokens=1000, stream=True)
    it = iter(s)
    rid = [next(it).id for _ in range(3)][0]
    s.close()
    for _ in range(300):
        if eng.active == 0 and eng.waiting == 0: break
        time.sleep(0.05)
    assert (eng.active, eng.waiting) == (0, 0)
    server["log"].flush()
    row = SL.load_requests(server["db"]).set_index("response_id").loc[rid]
    assert (row["status"], row["error"]) == (499, "client disconnected") and 0 < row["completion_tokens"] < 1000
    assert c.chat.completions.create(model="test-aaaa", messages=_ask("Hi"), max_tokens=4).choices[0].finish_reason in ("length", "stop")


def test_client_gives_up_on_a_completion(server):
    "A client that times out on a completion (not streamed) frees its batch row at once and is recorded as 499, not as a delivered answer."
    eng = server["backend"].engine
    impatient = openai.OpenAI(base_url=f"{server['url']}/v1", api_key="loopback", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="test-aaaa", messages=_ask("Tell me a long story."), max_tokens=1000)
    t = time.time()
    while (eng.active or eng.waiting) and time.time() - t < 30: time.sleep(0.05)
    assert (eng.active, eng.waiting) == (0, 0)  # the row is free (a generous wait: completion_tokens < 1000 below shows it was cut)
    server["log"].flush()
    req = SL.load_requests(server["db"])
    gone = req[(req["stream"] == 0) & (req["status"] == 499)]
    assert len(gone) == 1 and gone.iloc[0]["error"] == "client disconnected" and gone.iloc[0]["completion_tokens"] < 1000
    assert gone["feedback_id"].isna().all()  # nobody received it: nothing to rate or review


def test_feedback_endpoint(server):
    c = server["client"]
    r = c.chat.completions.create(model="test-aaaa-rag", messages=_ask(QUESTIONS[0]), max_tokens=8)
    out = c.post("/feedback", cast_to=object, body={"response_id": r.id, "rating": -1, "correction": "10 years or 6,000 cycles."})
    assert out == {"object": "feedback", "response_id": r.id, "rating": -1, "correction": "10 years or 6,000 cycles."}
    row = SL.load_requests(server["db"]).set_index("response_id").loc[r.id]
    fb = F.load(server["db"]).set_index("id").loc[int(row["feedback_id"])]
    assert (row["rating"], fb["rating"], fb["correction"], fb["answer"]) == (-1, -1, "10 years or 6,000 cycles.", r.choices[0].message.content)
    assert fb["sources"][0]["source"] == "battery.md" and fb["top_similarity"] > 0
    with pytest.raises(openai.NotFoundError, match="no answer with id"):
        c.post("/feedback", cast_to=object, body={"response_id": "chatcmpl-nope", "rating": 1})


def test_page_on_another_site_cannot_use_the_server(browser, server, tmp_path):
    "A page on another origin posts a rating the only way it can without a CORS preflight (no-cors, text/plain): nothing is stored."
    import functools, http.server, pandas as pd
    from playwright.sync_api import sync_playwright
    c = server["client"]
    r = c.chat.completions.create(model="test-aaaa", messages=_ask(QUESTIONS[1]), max_tokens=4)
    body = json.dumps({"response_id": r.id, "rating": 1, "correction": "Injected by another site"})
    (tmp_path/"attack.html").write_text(f"""<!doctype html><title>loading</title><script>
fetch("{server['url']}/v1/feedback", {{method: "POST", mode: "no-cors", body: JSON.stringify({body})}})
  .then(() => document.title = "sent", e => document.title = "failed: " + e);
</script>""")
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=browser, headless=True, args=FLAGS)
            try:
                page = ctx.new_page()
                page.goto(f"http://localhost:{site.server_address[1]}/attack.html")  # another origin on this machine
                page.wait_for_function("document.title !== 'loading'", timeout=60_000)
                assert page.title() == "sent"  # the request went out (a no-cors answer is opaque to the page either way)
            finally: ctx.close()
    finally: site.shutdown()
    server["log"].flush()
    fb = F.load(server["db"]).set_index("id").loc[int(SL.load_requests(server["db"]).set_index("response_id").loc[r.id, "feedback_id"])]
    assert fb["answer"] == r.choices[0].message.content and pd.isna(fb["rating"]) and pd.isna(fb["correction"])


def test_refuses_public_address_without_key(runs, tmp_path):
    root, r1, _ = runs
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_API_KEY"}
    exe = Path(sys.executable).parent/"llmops"
    t = time.time()
    res = subprocess.run([str(exe), "--run-root", str(root/"runs"), "serve", r1["id"], "--host", "0.0.0.0"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and time.time() - t < 60
    err = res.stderr.strip()
    assert "0.0.0.0 is not a loopback address, so an API key is required" in err and "\n" not in err, err
    (tmp_path/"key").write_text("")
    res = subprocess.run([str(exe), "--run-root", str(root/"runs"), "serve", r1["id"], "--host", "0.0.0.0", "--api-key-file", str(tmp_path/"key")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "the file is empty" in res.stderr
    res = subprocess.run([str(exe), "--run-root", str(root/"runs"), "serve", r1["id"], "--host", "0.0.0.0"], capture_output=True, text=True,
                         env={**env, "LLMOPS_API_KEY": "short"}, timeout=120)
    assert res.returncode == 2 and "use at least 16" in res.stderr and "short" not in res.stderr


def test_promotion_during_traffic(runs, tmp_path):
    "`llmops serve production` under traffic while `llmops promote` moves the alias: nothing fails, in-flight answers finish on the old adapter, new ones come from the new."
    root, r1, r2 = runs
    rr = root/"runs"
    assert llmops("--run-root", rr, "promote", r1["id"]).returncode == 0
    port, db = _free_port(), tmp_path/"fb.db"
    exe = Path(sys.executable).parent/"llmops"
    proc = subprocess.Popen([str(exe), "--run-root", str(rr), "serve", "production", "--port", str(port), "--db", str(db), "--device", "cpu", "--max-batch", "8", "--max-tokens", "2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            try:
                if json.loads(urllib.request.urlopen(f"{url}/health", timeout=2).read())["run_id"] == r1["id"]: break
            except OSError: time.sleep(0.1)
        else: pytest.fail("the server did not start: " + (proc.stdout.read() if proc.poll() is not None else ""))
        lib = malloc_env("auto").get("LD_PRELOAD")  # where tcmalloc is installed (.ci/run installs it) the server restarted on it
        assert lib is None or "libtcmalloc" in Path(f"/proc/{proc.pid}/maps").read_text(), lib
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="loopback", max_retries=0, timeout=300)
        assert "production" in [m.id for m in c.models.list()]
        def ask(q, n=24):
            t0, parts, fps = time.time(), [], set()
            for ch in c.chat.completions.create(model="production", messages=_ask(q), max_tokens=n, stream=True):
                fps.add(ch.system_fingerprint); parts += [ch.choices[0].delta.content or ""] if ch.choices else []
            assert len(fps) == 1, fps  # one run from the first chunk to the last
            return dict(q=q, start=t0, end=time.time(), run=fps.pop(), text="".join(parts))
        expected = {r1["id"]: {q: ask(q)["text"] for q in QUESTIONS[:4]}}
        long_q = "Tell me a long story."
        long_old = ask(long_q, 1900)["text"]
        stop, done, errors = threading.Event(), [], []
        def traffic(w):
            i = w
            while not stop.is_set():
                try: done.append(ask(QUESTIONS[i % 4]))
                except Exception as e: errors.append(repr(e))
                i += 1
        with cf.ThreadPoolExecutor(5) as ex:
            workers = [ex.submit(traffic, w) for w in range(4)]
            time.sleep(1.0)
            promoting = subprocess.Popen([str(exe), "--run-root", str(rr), "promote", r2["id"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            inflight = ex.submit(ask, long_q, 1900)  # starts while `llmops promote` is still starting up
            assert promoting.wait(120) == 0, promoting.stderr.read()
            for _ in range(600):
                if len([d for d in done if d["run"] == r2["id"]]) >= 8: break
                time.sleep(0.1)
            stop.set()
            for w in workers: w.result(timeout=300)
            old = inflight.result(timeout=300)
        assert not errors, errors[:3]
        new = [d for d in done if d["run"] == r2["id"]]
        assert len(new) >= 8 and {d["run"] for d in done} == {r1["id"], r2["id"]}
        switch = min(d["start"] for d in new)
        assert old["run"] == r1["id"] and old["text"] == long_old  # the request in flight finished on the old adapter, whole
        assert old["start"] < switch < old["end"], (old["start"], switch, old["end"])  # ... while new requests already got the new one
        assert all(d["run"] == r2["id"] for d in done if d["start"] > switch + 0.5)  # once switched, new requests stay on the new run
        for d in done:
            if d["run"] == r1["id"]: assert d["text"] == expected[r1["id"]][d["q"]]
        by_q = {}
        for d in new: by_q.setdefault(d["q"], set()).add(d["text"])
        assert all(len(v) == 1 for v in by_q.values()) and any(by_q[q] != {expected[r1["id"]][q]} for q in by_q)  # another adapter, one answer each
        assert json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())["run_id"] == r2["id"]
    finally:
        proc.terminate()
        try: proc.wait(60)
        except subprocess.TimeoutExpired: proc.kill()
    req = SL.load_requests(db)
    assert set(req["run_id"]) == {r1["id"], r2["id"]} and (req["status"] == 200).all()



def test_chat_page_in_browser(browser, server, tmp_path):
    "The page at /: two turns (the second sent with the history), streamed answers with sources, a thumbs down with a correction stored."
    from playwright.sync_api import sync_playwright
    sent = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=browser, headless=True, args=FLAGS)
        try:
            page = ctx.new_page()
            page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
            page.goto(f"{server['url']}/")
            page.locator("#model option").first.wait_for(state="attached", timeout=60_000)
            assert page.locator("#model").input_value() == "test-aaaa-rag"
            for i, q in enumerate([QUESTIONS[0], QUESTIONS[4]]):
                page.locator("#question").fill(q)
                page.locator("#send").click()
                page.locator("#status").get_by_text("Answered").wait_for(timeout=120_000)
                page.locator(".turn.assistant .rate").nth(i).wait_for(timeout=30_000)
            answers = page.locator(".turn.assistant .answer")
            assert answers.count() == 2 and all(int(answers.nth(i).get_attribute("data-chunks")) > 1 for i in range(2))  # streamed, delta by delta
            assert "battery.md" in page.locator(".turn.assistant .sources").first.inner_text()
            for box in (page.locator("#question"), page.locator(".turn.user .text").first, answers.first):  # right to left when users write so
                assert box.get_attribute("dir") == "auto", box
            last = page.locator(".turn.assistant").nth(1)
            rid = last.get_attribute("data-id")
            last.locator("button.down").click()
            last.get_by_text("rating stored").wait_for(timeout=30_000)
            last.locator("textarea.correction").fill("4.8 kWh of the 5.1 kWh.")
            last.locator("button.send-correction").click()
            last.get_by_text("correction stored").wait_for(timeout=30_000)
            first_id = page.locator(".turn.assistant").nth(0).get_attribute("data-id")
        finally: ctx.close()
    assert [len(b["messages"]) for b in sent] == [1, 3] and all(b["stream"] for b in sent)
    req, fb = SL.load_requests(server["db"]).set_index("response_id"), F.load(server["db"]).set_index("id")
    first = fb.loc[int(req.loc[first_id, "feedback_id"])]
    assert sent[1]["messages"][:2] == [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": first["answer"]}]
    row = req.loc[rid]
    last = fb.loc[int(row["feedback_id"])]
    assert (row["rating"], last["rating"], last["correction"], last["question"]) == (-1, -1, "4.8 kWh of the 5.1 kWh.", QUESTIONS[4])


def _keyed(runs, db, **kw):
    "A server (create_app over a fixed deployment) on a free loopback port."
    from llmops_nb import deploy, engine as EN, serving
    from llmops_nb.server import Running, create_app
    root, r1, _ = runs
    backend, reqlog = serving.HFBackend(EN.Engine(max_batch=2)), SL.RequestLog(db)
    srv = Running(create_app(deploy.load(r1["id"], root/"runs", device="cpu"), backend, reqlog, Caps(), db=db, **kw))
    return srv, lambda: (srv.stop(), backend.close(), reqlog.close())


def _review(url, key=None, body=None, **headers):
    "GET (or POST `body` to) /v1/feedback/review with httpx: (status, JSON)."
    import httpx
    h = {**headers, **({"Authorization": f"Bearer {key}"} if key else {})}
    r = httpx.post(f"{url}/v1/feedback/review", json=body, headers=h, timeout=60) if body else httpx.get(f"{url}/v1/feedback/review", headers=h, timeout=60)
    return r.status_code, r.json()


def test_review_needs_the_reviewer_key(runs):
    "With a reviewer key, the API key no longer lists or decides feedback; the reviewer key does, and also chats (the page needs one key)."
    root, r1, _ = runs
    db, api, rev = root/"review-key.db", "a" * 24, "r" * 24
    srv, stop = _keyed(runs, db, key=api, review_key=rev)
    try:
        i = F.record("q?", "a secret conversation", model_id="tiny-random", rating=-1, correction="poison", db=db)
        code, body = _review(srv.url, api)
        assert code == 403 and "reviewer key" in body["error"]["message"] and "\n" not in body["error"]["message"]
        assert _review(srv.url, api, {"id": i, "decision": "approve", "reviewer": "mallory"})[0] == 403
        assert _review(srv.url, None)[0] == 401 and _review(srv.url, "x" * 24)[0] == 401
        code, body = _review(srv.url, rev)
        assert code == 200 and i in [r["id"] for r in body["data"]]
        assert _review(srv.url, rev, {"id": i, "decision": "approve", "reviewer": "ana"})[0] == 200
        assert F.load(db).set_index("id").loc[i, "reviewer"] == "ana"
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=rev, max_retries=0, timeout=120)  # the reviewer chats on the page with the same key
        assert c.chat.completions.create(model="test-aaaa", messages=_ask("Hi"), max_tokens=2).choices[0].message.content is not None
        import httpx
        assert httpx.get(f"{srv.url}/health", timeout=30).json() == {"status": "ok", "auth": True, "review_key": True}
    finally: stop()


def test_review_without_reviewer_key_answers_this_machine_only(runs):
    "Without a reviewer key, the review endpoints answer loopback clients only: one behind a proxy (X-Forwarded-For) gets a one-line 403."
    root, _, _ = runs
    db, api = root/"review-local.db", "a" * 24
    srv, stop = _keyed(runs, db, key=api)
    try:
        assert _review(srv.url, api)[0] == 200  # on this machine
        code, body = _review(srv.url, api, **{"X-Forwarded-For": "203.0.113.7"})  # uvicorn takes the client from a loopback proxy's header
        assert code == 403 and "--review-key-file" in body["error"]["message"] and "\n" not in body["error"]["message"]
        assert _review(srv.url, api, {"id": 1, "decision": "approve", "reviewer": "x"}, **{"X-Forwarded-For": "203.0.113.7"})[0] == 403
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=api, max_retries=0, default_headers={"X-Forwarded-For": "203.0.113.7"})
        assert [m.id for m in c.models.list()][0] == "tiny-random"  # chat stays open to API-key holders anywhere
    finally: stop()


def test_reviewer_key_rules(tmp_path, monkeypatch):
    "The reviewer key follows the API key's rules: a file's first line, else $LLMOPS_REVIEW_KEY, 16 characters at least; none is fine."
    from llmops_nb.core import ConfigError
    from llmops_nb.server import review_key
    monkeypatch.delenv("LLMOPS_REVIEW_KEY", raising=False)
    assert review_key("0.0.0.0") is None
    monkeypatch.setenv("LLMOPS_REVIEW_KEY", "r" * 20)
    assert review_key("0.0.0.0") == "r" * 20
    (tmp_path/"k").write_text("short\n")
    with pytest.raises(ConfigError, match="--review-key-file .*use at least 16"): review_key("0.0.0.0", tmp_path/"k")


def test_reviewer_uses_the_page_with_one_key(browser, runs, tmp_path):
    "On a server with an API key and a reviewer key, the page asks for a key; with the reviewer's, it lists the models and the review queue, and records a decision."
    from playwright.sync_api import sync_playwright
    root, _, _ = runs
    db, rev = root/"review-page.db", "r" * 24
    srv, stop = _keyed(runs, db, key="a" * 24, review_key=rev)
    try:
        i = F.record("island?", "two years", model_id="tiny-random", rating=-1, db=db)
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp_path/"profile"), executable_path=browser, headless=True, args=FLAGS)
            try:
                page = ctx.new_page(); page.goto(f"{srv.url}/")
                page.locator("#key").wait_for(state="visible", timeout=60_000)
                page.locator("#key").fill(rev); page.locator("#key").dispatch_event("change")
                page.locator("#model option").first.wait_for(state="attached", timeout=60_000)
                page.locator("#tab").click(); page.locator("#reviewer").fill("ana")
                card = page.locator(f'.card[data-id="{i}"]'); card.wait_for(timeout=60_000)
                card.locator("button.approve").click()
                card.get_by_text("Recorded: approved by ana.").wait_for(timeout=30_000)
            finally: ctx.close()
    finally: stop()
    assert F.load(db).set_index("id").loc[i, "reviewer"] == "ana"


def test_model_name_cannot_forge_log_lines(server):
    "A model name with a newline is logged as `unknown`: one request, one log line."
    import logging
    lines, h = [], logging.Handler()
    h.emit = lambda r: lines.append(h.format(r))
    lg = logging.getLogger("llmops_nb.serve"); old = lg.level
    lg.addHandler(h); lg.setLevel(logging.INFO)
    try:
        with pytest.raises(openai.NotFoundError):
            server["client"].chat.completions.create(model="x\nreq_forged - admin 200 0/0 tokens 1 ms", messages=_ask("Hi"), max_tokens=2)
        server["log"].flush()
    finally: lg.removeHandler(h); lg.setLevel(old)
    assert len(lines) == 1 and "\n" not in lines[0] and "forged" not in lines[0] and " unknown " in lines[0], lines


def test_startup_line_shows_no_character_of_the_key(runs, capsys, monkeypatch):
    "`llmops serve` prints that a key is required and its sha256 fingerprint, not a character of it."
    import hashlib
    root, r1, _ = runs
    key, rkey = "QZX" + "0" * 18 + "WV", "RVW" + "1" * 18 + "YU"
    monkeypatch.setenv("LLMOPS_API_KEY", key); monkeypatch.setenv("LLMOPS_REVIEW_KEY", rkey)
    srv, follow, backend, reqlog = serve(r1["id"], root/"runs", port=0, db=root/"start.db", device="cpu", block=False)
    srv.stop(); backend.close(); reqlog.close(); follow.close()
    out = capsys.readouterr().out
    assert f"API key required (sha256:{hashlib.sha256(key.encode()).hexdigest()[:8]})" in out, out
    assert "reviewer key (sha256:" in out
    for k in (key, rkey): assert k[:3] not in out and k[-2:] not in out, out


def test_message_count_and_note_caps(server):
    "More than limits.MAX_MESSAGES messages, or a correction/comment over limits.MAX_NOTE_CHARS: a 400 with one line, nothing rendered or stored."
    from llmops_nb.limits import MAX_MESSAGES, MAX_NOTE_CHARS
    c = server["client"]
    with pytest.raises(openai.BadRequestError, match=f"array too long. Expected an array with maximum length {MAX_MESSAGES}, but got an array with length {MAX_MESSAGES + 2}"):
        c.chat.completions.create(model="test-aaaa", messages=_ask("x") * (MAX_MESSAGES + 2), max_tokens=2)
    for k in ("correction", "comment"):
        with pytest.raises(openai.BadRequestError, match=f"'{k}' is {MAX_NOTE_CHARS + 1:,} characters long"):
            c.post("/feedback", cast_to=object, body={"response_id": "chatcmpl-x", "rating": -1, k: "n" * (MAX_NOTE_CHARS + 1)})


def test_monitor_prints_no_escapes(tmp_path):
    "`llmops monitor` shows a client's model name and question with control characters as \\xNN: no escape reaches the terminal."
    db = tmp_path/"m.db"
    bad_model, bad_q = "evil\x1b]0;pwned\x07\x1b[2J", "why?\x1b[31m red\r"
    log = SL.RequestLog(db)
    for s in (200, 404):
        log.add({"timestamp": "2026-01-01T00:00:00+00:00", "request_id": f"req_{s}", "model": bad_model, "status": s, "latency_ms": 5.0, "stream": 0})
    log.close()
    F.record(bad_q, "an answer", model_id=bad_model, rating=-1, db=db)
    res = llmops("monitor", "--db", db, "--out", tmp_path/"mon", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\r" not in res.stdout, repr(res.stdout)
    assert "evil\\x1b]0;pwned" in res.stdout and "why?\\x1b[31m red" in res.stdout, res.stdout
