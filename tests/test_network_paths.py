"""Network paths against loopback servers shaped like the services' documented responses (OpenAI's REST API): the official
SDKs run the real code; what the real services would add (auth, billing, latency) stays unverified."""
import http.server, json, threading
import pytest
from llmops_nb import openai_ft as OF

FT = "ft:gpt-4.1-mini-2025-04-14:org:kestrel:AbC123"
EVENTS = [{"object": "fine_tuning.job.event", "id": f"ftevent-{i}", "created_at": 1721764800 + i, "level": "info",
           "message": f"Step {i}", "data": {}, "type": "message"} for i in range(150, 0, -1)]  # newest first, as OpenAI lists them


def _job(status="queued", ftm=None, error=None):
    return {"object": "fine_tuning.job", "id": "ftjob-abc123", "model": "gpt-4.1-mini-2025-04-14", "created_at": 1721764800,
            "finished_at": None, "fine_tuned_model": ftm, "organization_id": "org-123", "result_files": [], "status": status,
            "validation_file": None, "training_file": "file-1", "hyperparameters": {"n_epochs": "auto"}, "trained_tokens": None,
            "error": error, "seed": 42}


class _OpenAI(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def _any(self, method):
        n = int(self.headers.get("Content-Length") or 0); body = self.rfile.read(n) if n else b""
        s, path, q = self.server.s, self.path.split("?")[0], dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
        s["calls"].append((method, path))
        if method == "POST" and path == "/v1/files":
            return self._send(200, {"object": "file", "id": f"file-{len(s['calls'])}", "bytes": len(body), "created_at": 1,
                                    "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed"})
        if method == "POST" and path == "/v1/fine_tuning/jobs": s["created"] += 1; return self._send(200, _job())
        if method == "POST" and path == "/v1/chat/completions":
            s["bodies"].append(json.loads(body))
            return self._send(200, {"id": "c1", "object": "chat.completion", "created": 1, "model": s["bodies"][-1]["model"],
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
        if path.endswith("/events"):
            if s["poll"] == 500: return self._send(500, {"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}})
            i = next((k + 1 for k, e in enumerate(EVENTS) if e["id"] == q.get("after")), 0)
            page = EVENTS[i:i + int(q.get("limit", 20))]
            return self._send(200, {"object": "list", "data": page, "has_more": i + len(page) < len(EVENTS)})
        if method == "GET" and path.startswith("/v1/fine_tuning/jobs/"):
            return self._send(200, _job(s["status"], FT if s["status"] == "succeeded" else None,
                                        {"code": "invalid_training_file", "message": "The job failed due to an invalid training file.", "param": "training_file"}
                                        if s["status"] == "failed" else None))
        self._send(404, {"error": {"message": f"Invalid URL ({method} {path})", "type": "invalid_request_error", "param": None, "code": None}})
    def do_GET(self): self._any("GET")
    def do_POST(self): self._any("POST")


@pytest.fixture
def openai_mock(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAI)
    srv.s = dict(calls=[], bodies=[], created=0, poll=200, status="running")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_port}/v1"); monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    yield srv.s
    srv.shutdown(); srv.server_close()


def _submit(tmp_path, **kw):
    (tmp_path/"t.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n")
    return OF.submit(tmp_path/"t.jsonl", poll_s=0.01, **kw)


def test_a_polling_error_after_the_job_is_created_keeps_its_id(openai_mock, tmp_path, monkeypatch):
    import openai
    made = []
    monkeypatch.setattr(openai, "OpenAI", lambda *a, _c=openai.OpenAI, **k: made.append(k) or _c(*a, **{**k, "max_retries": 0}))
    openai_mock["poll"] = 500
    r = _submit(tmp_path)
    assert (r["submitted"], r["job_id"], r["status"], openai_mock["created"]) == (True, "ftjob-abc123", "queued", 1)
    assert r["poll_error"].startswith("polling stopped, the job goes on at OpenAI:") and "\n" not in r["poll_error"]
    assert made[0]["timeout"] == 60.0  # not the SDK's 600 s per try


def test_every_page_of_events_is_read_oldest_first(openai_mock, tmp_path):
    seen = []
    r = _submit(tmp_path, on_event=seen.append)
    assert [e["id"] for e in seen] == [f"ftevent-{i}" for i in range(1, 151)] and r["n_events"] == 150 and r["poll_error"] is None


def test_evaluate_asks_again_about_a_job_that_had_no_model(openai_mock):
    job = {"submitted": True, "job_id": "ftjob-abc123", "status": "running", "fine_tuned_model": None}
    openai_mock["status"] = "running"
    spec, note = OF.evaluated("", OF.current(job))
    assert spec == "" and "rerun evaluate later" in note and "wait_minutes" not in note  # raising it starts a second, paid job
    openai_mock["status"] = "succeeded"
    assert OF.evaluated("openai_finetune", OF.current(job))[0] == f"openai:{FT}"
    openai_mock["status"] = "failed"
    with pytest.raises(OF.ConfigError, match="job ftjob-abc123 failed: The job failed due to an invalid training file"):
        OF.evaluated("openai_finetune", OF.current(job))
    assert openai_mock["calls"].count(("GET", "/v1/fine_tuning/jobs/ftjob-abc123")) == 3 and openai_mock["created"] == 0


def test_the_reports_bar_chart_names_the_evaluate_runs_summary_keys(preference_run):
    import wandb_workspaces.reports.v2 as wr
    from llmops_nb import page, runs, tracking
    bar = page.panels(preference_run, wr)[-1]
    summary = tracking.flatten(runs.stage_metrics(preference_run, "evaluate"))  # what tracking.finish puts in the run summary
    assert bar.title == "tuned" and "tuned/rougeL" in bar.metrics and set(bar.metrics) <= set(summary)
    assert "tuned/rougeL" in json.dumps(bar._to_model().model_dump(by_alias=True))  # as the saved spec names it


class _WandbRefuses(http.server.BaseHTTPRequestHandler):
    "A W&B server that refuses the key, as it answers a revoked one."
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _no(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        b = b'{"errors":[{"message":"user is not logged in"}]}'
        self.send_response(401); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    do_GET = do_POST = _no


def test_sync_with_a_refused_key_is_one_line(monkeypatch):
    from llmops_nb import tracking
    from llmops_nb.core import ConfigError
    from llmops_nb.pipeline import demo_run
    rec = demo_run()  # a fresh run with one offline W&B run
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WandbRefuses)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_MODE", ""); monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{srv.server_port}")
    try:
        assert tracking.wandb_mode() == "online"
        with pytest.raises(ConfigError) as e: tracking.sync(rec, echo=lambda *a: None)
    finally: srv.shutdown(); srv.server_close()
    assert "\n" not in str(e.value) and "was not uploaded" in str(e.value) and "wandb login" in str(e.value)


def test_a_self_hosted_login_is_online(tmp_path):
    import subprocess, sys
    (tmp_path/"settings").write_text("[default]\nbase_url = https://wandb.example.com\n")  # what `wandb login --host` writes
    (tmp_path/"netrc").write_text(f"machine wandb.example.com\n  login user\n  password {'a' * 40}\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(tmp_path/"home"), WANDB_CONFIG_DIR=str(tmp_path), NETRC=str(tmp_path/"netrc"), WANDB_SILENT="true")  # no ~/.netrc
    out = subprocess.run([sys.executable, "-c", "from llmops_nb import tracking; print(tracking.wandb_mode())"], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "online", out.stderr[-2000:]


class _Proxy502(http.server.BaseHTTPRequestHandler):
    "An HTTP proxy that answers every request 502, and remembers what it was asked."
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _bad(self):
        self.server.asked.append(self.path); self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(502); self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_POST = do_HEAD = _bad


def test_push_goes_through_the_proxy_and_fails_in_one_line(preference_run):
    import os, subprocess, sys
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy502); srv.asked = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "NO_PROXY", "no_proxy")}
    env.update(HF_ENDPOINT="http://hub.invalid", HTTP_PROXY=f"http://127.0.0.1:{srv.server_port}", HF_TOKEN="hf_" + "a" * 34, HF_HUB_ETAG_TIMEOUT="5")
    code = f"from llmops_nb import share\ntry: share.push({preference_run['run_dir']!r}, 'me/kestrel-lora')\nexcept share.ConfigError as e: print('ONE LINE:', e)"
    try: out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    finally: srv.shutdown(); srv.server_close()
    assert srv.asked and "hub.invalid" in srv.asked[0], out.stdout + out.stderr[-2000:]  # a direct connection would not resolve hub.invalid
    line = out.stdout.strip()
    assert line.startswith("ONE LINE: push: the Hugging Face Hub refused or could not be reached") and "\n" not in line and "--out DIR" in line


def test_openai_models_honour_openai_base_url_and_a_spec_omits_temperature(openai_mock):
    from llmops_nb import endpoints as EP
    [r] = EP.chat(EP.endpoint("openai:gpt-4.1-mini"), [[{"role": "user", "content": "Hi"}]], cache="")
    assert r["answer"] == "ok" and openai_mock["bodies"][-1]["temperature"] == 0.0 and "top_p" not in openai_mock["bodies"][-1]
    ep = EP.endpoint({"model": "openai:o4-mini", "temperature": None, "max_completion_tokens": 2048})  # a reasoning model
    EP.chat(ep, [[{"role": "user", "content": "Hi"}]], cache="")
    assert {k: v for k, v in openai_mock["bodies"][-1].items() if k != "messages"} == {"model": "o4-mini", "max_completion_tokens": 2048}
    assert EP.request_key(ep, {}) != EP.request_key(EP.Endpoint("o4-mini", "https://api.openai.com/v1"), {})  # keyed by the host used
