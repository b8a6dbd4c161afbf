"""Endpoint models (issue 15): the project's own server, scored as an endpoint model by the evaluate stage, equals the same
adapter evaluated in-process (greedy); a second run is served from the request cache, unless `llmops promote` moved the
name to another run; retries and backoff against a real HTTP server in front of it that answers 429 and 503 first."""
import http.server, json, threading, time, urllib.error, urllib.request
from pathlib import Path
import pytest

openai = pytest.importorskip("openai")
from test_serve import DOCS, _run  # noqa: E402  (the serve tests' run records: tiny-random and a random LoRA adapter)
from llmops_nb import endpoints as EP, runs as R, stages as ST, vectorstore as V  # noqa: E402
from llmops_nb.core import ConfigError, read_jsonl, read_metrics  # noqa: E402
from llmops_nb.server import serve  # noqa: E402


class _Proxy(http.server.BaseHTTPRequestHandler):
    "Forwards to the real server; answers the statuses queued in `server.fail` first; counts and times chat requests."
    def log_message(self, *a): pass
    def _forward(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        s = self.server
        if self.path.endswith("/chat/completions"):
            with s.lock: s.seen.append(time.monotonic()); status, headers = s.fail.pop(0) if s.fail else (None, {})
            if status:
                data = json.dumps({"error": {"message": f"test says {status}", "type": "server_error", "param": None, "code": None}}).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items(): self.send_header(k, v)
                self.end_headers(); self.wfile.write(data); return
            with s.lock: s.forwarded += 1
        req = urllib.request.Request(s.upstream + self.path, body, {"Content-Type": "application/json"}, method=method)
        try: r = urllib.request.urlopen(req, timeout=120)
        except urllib.error.HTTPError as e: r = e
        data = r.read()
        self.send_response(r.status if hasattr(r, "status") else r.code)
        self.send_header("Content-Type", r.headers.get("Content-Type", "application/json")); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def do_GET(self): self._forward("GET")
    def do_POST(self): self._forward("POST")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "`llmops serve` for a run with a random adapter, and a proxy on another loopback port in front of it."
    root = tmp_path_factory.mktemp("endpoints")
    kb = root/"kb"; kb.mkdir()
    for name, text in DOCS.items(): (kb/name).write_text(text)
    V.build_index(kb, root/"rag_index"/"index", chunk_size=200, chunk_overlap=20)
    rec = _run(root/"runs", "20260101-000000-aaaa", 1, root/"rag_index"/"index")
    ST.write_manifest("finetune", Path(rec["run_dir"])/"finetune")  # as the finetune stage leaves it: evaluate verifies the adapter
    srv, follow, backend, reqlog = serve(rec["id"], root/"runs", port=0, db=root/"fb.db", max_batch=8, device="cpu", block=False)
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    proxy.upstream, proxy.fail, proxy.seen, proxy.forwarded, proxy.lock = srv.url, [], [], 0, threading.Lock()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield dict(root=root, rec=rec, proxy=proxy, url=f"http://127.0.0.1:{proxy.server_address[1]}/v1")
    proxy.shutdown(); srv.stop(); backend.close(); reqlog.close()


def _evaluate(served, out: Path, cache: Path) -> dict:
    import papermill as pm
    from llmops_nb.kernels import ensure_kernel
    pm.execute_notebook(str(ST.notebook("evaluate")), str(out.parent/f"{out.name}.ipynb"), kernel_name=ensure_kernel(), progress_bar=False,
                        parameters=dict(finetune_dir=str(Path(served["rec"]["run_dir"])/"finetune"), out_dir=str(out),
                                        endpoint={"base_url": served["url"], "model": "test-aaaa"}, metrics=["rougeL", "token_f1"],
                                        max_examples=4, max_new_tokens=8, n_boot=50, request_cache=str(cache),
                                        prices={"test-aaaa": {"input": 1.0, "output": 2.0}}))
    return read_metrics(out)


def test_evaluate_scores_the_server_like_the_adapter_in_process_and_reruns_from_the_cache(served, tmp_path):
    p = served["proxy"]; before = p.forwarded
    m = _evaluate(served, tmp_path/"ev1", tmp_path/"cache")
    ev = m["endpoint_vs"]
    assert ev["model"] == f"test-aaaa at {served['url']}" and ev["against"] == "tuned"
    assert ev["endpoint"] == m["tuned"] and set(ev["delta"].values()) == {0.0}  # the same greedy answers, so the same scores
    rows = [r for _, r in read_jsonl(ST.output("evaluate", tmp_path/"ev1", "predictions"))]
    assert [r["endpoint"] for r in rows] == [r["tuned"] for r in rows] and any(r["tuned"] for r in rows)
    assert [r["tuned"] for r in rows] != [r["base"] for r in rows]  # the adapter changes the answers: equality is not trivial
    u = m["usage"]["endpoint"]
    assert (u["requests"], u["sent"], u["cached"], p.forwarded - before) == (4, 4, 0, 4)
    assert u["prompt_tokens"] > 4*20 and 0 < u["completion_tokens"] <= 4*8
    assert u["cost_usd"] == pytest.approx((u["prompt_tokens"] + 2*u["completion_tokens"])/1e6)
    m2 = _evaluate(served, tmp_path/"ev2", tmp_path/"cache")  # a rerun: every answer from the cache, no request sent
    u2 = m2["usage"]["endpoint"]
    assert (u2["sent"], u2["cached"], u2["cost_usd"], p.forwarded - before) == (0, 4, 0.0, 4)
    assert u2["cost_usd_uncached"] == u["cost_usd"] and m2["endpoint_vs"]["endpoint"] == ev["endpoint"]


def test_a_promoted_name_is_asked_again_not_answered_from_the_cache(served, tmp_path):
    "`llmops serve production` while `llmops promote` moves it: the cache keeps run A's answers for run A, and run B is asked."
    rr, idx, cache = tmp_path/"runs", served["root"]/"rag_index"/"index", str(tmp_path/"cache")
    a_rec, b_rec = _run(rr, "20260101-000000-aaaa", 1, idx), _run(rr, "20260101-000001-bbbb", 2, idx)
    R.promote(a_rec["id"], run_root=rr, echo=lambda *a: None)
    srv, follow, backend, reqlog = serve("production", rr, port=0, db=tmp_path/"fb.db", max_batch=8, device="cpu", block=False)
    try:
        ep = EP.endpoint({"base_url": f"{srv.url}/v1", "model": "production"})
        convs = [[{"role": "user", "content": q}] for q in ("How long is the battery warranty?", "What is the KB-5?")]
        a = EP.chat(ep, convs, max_tokens=8, cache=cache)
        assert EP.chat(ep, convs, max_tokens=8, cache=cache) == [{**r, "cached": True} for r in a]  # the same run: all from the cache
        R.promote(b_rec["id"], run_root=rr, echo=lambda *a: None)
        for _ in range(600):
            if follow.current.run_id == b_rec["id"]: break
            time.sleep(0.1)
        b = EP.chat(ep, convs, max_tokens=8, cache=cache)
        assert not any(r["cached"] for r in b)
        assert [r["answer"] for r in b] == [r["answer"] for r in EP.chat(ep, convs, max_tokens=8, cache="")] != [r["answer"] for r in a]
        assert {r["system_fingerprint"] for r in a} == {a_rec["id"]} and {r["system_fingerprint"] for r in b} == {b_rec["id"]}
    finally: srv.stop(); follow.close(); backend.close(); reqlog.close()


def test_retries_back_off_on_429_and_503(served, tmp_path):
    p, ep = served["proxy"], EP.endpoint({"base_url": served["url"], "model": "test-aaaa"})
    conv = [[{"role": "user", "content": "How long is the battery warranty?"}]]
    with p.lock: p.fail[:], p.seen[:] = [(429, {"retry-after-ms": "50"}), (503, {})], []
    before = p.forwarded
    r = EP.chat(ep, conv, max_tokens=4, cache=str(tmp_path/"c"), max_retries=3)[0]
    assert (r["retries"], r["cached"], len(p.seen), p.forwarded - before) == (2, False, 3, 1) and r["completion_tokens"] == 4
    assert p.seen[1] - p.seen[0] >= 0.04   # Retry-After honoured
    assert p.seen[2] - p.seen[1] >= 0.3    # no Retry-After: the SDK's exponential backoff (0.5 s, less up to 25% jitter)
    assert EP.chat(ep, conv, max_tokens=4, cache=str(tmp_path/"c"))[0] == {**r, "cached": True, "retries": 0}
    with p.lock: p.fail[:] = [(503, {"retry-after-ms": "10"})]*3
    with pytest.raises(EP.EndpointError, match=r"^test-aaaa at http://127\.0\.0\.1:\d+/v1: HTTP 503 after retries: test says 503$"):
        EP.chat(ep, [[{"role": "user", "content": "Another question"}]], max_tokens=4, cache="", max_retries=2)
    assert not p.fail


def test_concurrency_is_bounded_and_order_kept(served, tmp_path):
    ep = EP.endpoint({"base_url": served["url"], "model": "test-aaaa"})
    convs = [[{"role": "user", "content": q}] for q in ("Hi", "What is the KB-5?", "What happens in a power cut?")]
    one = [EP.chat(ep, [c], max_tokens=6, cache="")[0]["answer"] for c in convs]
    assert [r["answer"] for r in EP.chat(ep, convs, max_tokens=6, cache="", concurrency=3)] == one


def test_no_key_for_openai_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^openai:gpt-4\.1-mini: no API key; set \$OPENAI_API_KEY in the environment"):
        EP.chat(EP.endpoint("openai:gpt-4.1-mini"), [[{"role": "user", "content": "Hi"}]], cache=str(tmp_path))


def test_rag_eval_with_the_server_as_endpoint_equals_the_adapter_in_process(served, tmp_path):
    "rag_eval answered by the served adapter (endpoint) and by the same adapter in the kernel: the same answers and scores."
    import papermill as pm
    from llmops_nb.kernels import ensure_kernel
    common = dict(max_questions=2, max_new_tokens=8, k=2, request_cache=str(tmp_path/"cache"))
    runs = {"endpoint": dict(endpoint={"base_url": served["url"], "model": "test-aaaa"}),
            "local": dict(finetune_dir=str(Path(served["rec"]["run_dir"])/"finetune"))}
    m = {}
    for name, extra in runs.items():
        pm.execute_notebook(str(ST.notebook("rag_eval")), str(tmp_path/f"{name}.ipynb"), kernel_name=ensure_kernel(), progress_bar=False,
                            parameters=dict(out_dir=str(tmp_path/name), **common, **extra))
        m[name] = read_metrics(tmp_path/name)
    ans = {n: [r["answer"] for _, r in read_jsonl(ST.output("rag_eval", tmp_path/n, "answers"))] for n in runs}
    assert ans["endpoint"] == ans["local"] and any(ans["local"])
    assert m["endpoint"]["model"] == f"test-aaaa at {served['url']}" and m["endpoint"]["usage"]["sent"] == 2 and "usage" not in m["local"]
    assert all(m["endpoint"][k] == m["local"][k] for k in ("rougeL", "token_f1", "groundedness", "hit_at_k"))


def test_openai_answers_all_cached_send_nothing_and_need_no_key(tmp_path, monkeypatch):
    "A rerun whose OpenAI answers are all in the request cache sends nothing (no client is made) and needs no key."
    from llmops_nb import endpoints as EP
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ep, conv = EP.endpoint("openai:gpt-4.1-mini-2025-04-14"), [[{"role": "user", "content": "How long is the warranty?"}]]
    rec = dict(answer="Ten years.", finish_reason="stop", model=ep.model, system_fingerprint=None, prompt_tokens=9, completion_tokens=3, retries=0)
    EP.RequestCache(tmp_path).put(EP.request_key(ep, EP._body(ep, conv[0], 16, 0.0, 1.0, None)), rec)
    assert EP.chat(ep, conv, cache=str(tmp_path)) == [{**rec, "cached": True}]
    with pytest.raises(ConfigError, match="no API key"): EP.chat(ep, [[{"role": "user", "content": "Not cached?"}]], cache=str(tmp_path))


class _Odd(http.server.BaseHTTPRequestHandler):
    "An OpenAI-compatible server that counts no completion tokens, or answers with no choice at all (server.choices)."
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        choices = [{"index": 0, "message": {"role": "assistant", "content": " Ten years. "}, "finish_reason": "stop"}][:self.server.choices]
        data = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": choices,
                           "usage": {"prompt_tokens": 7, "completion_tokens": None, "total_tokens": 7}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)


def test_servers_that_count_no_tokens_or_send_no_choice():
    "No completion-token count is 0 tokens; an answer with no choice is one line (EndpointError), not an IndexError."
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Odd); srv.choices = 1
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ep, conv = EP.endpoint({"base_url": f"http://127.0.0.1:{srv.server_port}/v1", "model": "m"}), [[{"role": "user", "content": "Warranty?"}]]
        got = EP.chat(ep, conv, cache="", max_retries=0)[0]
        assert (got["answer"], got["prompt_tokens"], got["completion_tokens"]) == ("Ten years.", 7, 0)
        srv.choices = 0
        with pytest.raises(EP.EndpointError, match=r"the answer has no choices; expected one chat completion choice$"): EP.chat(ep, conv, cache="", max_retries=0)
    finally: srv.shutdown()
