"A flag that cannot work is one line on stderr, `llmops: <what was wrong, where, what is expected>`, and exit status 2, before anything slow starts."
import socket
import pytest
from llmops_nb.cli import main
from conftest import llmops


def run(capsys, *argv) -> tuple:
    "(exit status, stderr, stdout) of `llmops argv`, in this process."
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.err, out.out


@pytest.fixture
def busy():
    "A port some other program listens on."
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    yield s.getsockname()[1]
    s.close()


def test_device(capsys):
    assert run(capsys, "serve", "nope", "--device", "tpu")[:2] == (2, "llmops: --device tpu: expected auto, cpu, cuda[:N] or mps\n")
    import torch
    n = torch.cuda.device_count()  # one past the last CUDA device
    rc, err, _ = run(capsys, "serve", "nope", "--device", f"cuda:{n}")
    assert (rc, err) == (2, f"llmops: --device cuda:{n}: " + (f"this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}\n" if n else "no CUDA device here\n"))


def test_key_files(tmp_path, capsys):
    (tmp_path/"badkey.bin").write_bytes(b"\xff\xfe\x00bad")
    assert run(capsys, "serve", "nope", "--api-key-file", tmp_path/"badkey.bin")[:2] == (
        2, f"llmops: --api-key-file {tmp_path/'badkey.bin'}: not UTF-8 text; expected the API key on its first line\n")
    assert run(capsys, "serve", "nope", "--review-key-file", tmp_path)[:2] == (
        2, f"llmops: --review-key-file {tmp_path}: is a folder; expected a file holding the reviewer key on its first line\n")


def test_busy_port_serve(busy, capsys):
    "Refused before the run is even looked up (let alone its models loaded)."
    assert run(capsys, "serve", "nope", "--port", busy) == (2, f"llmops: --port {busy}: 127.0.0.1:{busy} is already in use; choose another --port\n", "")


def test_busy_port_chat(busy, tmp_path, capsys):
    assert run(capsys, "chat", "--index", tmp_path/"noindex", "--port", busy, "--db", tmp_path/"fb.db")[:2] == (
        2, f"llmops: --port {busy}: 127.0.0.1:{busy} is already in use; choose another --port\n")


def test_busy_port_installed_cli(busy, tmp_path):
    "The installed command, as a user runs it: no traceback, no `serving run` line."
    r = llmops("--run-root", tmp_path, "serve", "latest", "--port", busy, timeout=120)
    assert (r.returncode, r.stderr, r.stdout) == (2, f"llmops: --port {busy}: 127.0.0.1:{busy} is already in use; choose another --port\n", "")


def test_chat_db_not_sqlite(tmp_path, capsys):
    (tmp_path/"notdb.db").write_text("some text, not an SQLite database, long enough to be read as one")
    rc, err, _ = run(capsys, "chat", "--index", tmp_path/"noindex", "--port", 0, "--db", tmp_path/"notdb.db")
    assert (rc, err.count("\n")) == (2, 1) and err.startswith(f"llmops: feedback store {tmp_path/'notdb.db'} is not a readable SQLite database"), err


def test_list(tmp_path, capsys):
    (tmp_path/"afile").write_text("x"); (tmp_path/"empty").mkdir()
    assert run(capsys, "--run-root", tmp_path/"none", "list") == (0, "", f"no runs in {tmp_path/'none'}\n")
    assert run(capsys, "--run-root", tmp_path/"empty", "list") == (0, "", f"no runs in {tmp_path/'empty'}\n")
    assert run(capsys, "--run-root", tmp_path/"afile", "list") == (2, f"llmops: --run-root {tmp_path/'afile'}: is a file; expected a folder of runs\n", "")
    assert run(capsys, "--run-root", tmp_path/"afile", "status")[:2] == (2, f"llmops: --run-root {tmp_path/'afile'}: is a file; expected a folder of runs\n")


def test_run(tmp_path, capsys):
    (tmp_path/"afile").write_text("x")
    assert run(capsys, "--run-root", tmp_path/"afile", "run", "params/smoke.yaml", "--stages", "prepare")[:2] == (
        2, f"llmops: --run-root {tmp_path/'afile'}: is a file; expected a folder of runs\n")
    assert run(capsys, "--run-root", tmp_path/"runs", "run", "params/smoke.yaml", "--stages", "")[:2] == (
        2, "llmops: --stages '': names no stage; expected comma-separated stage names, e.g. prepare,finetune\n")
    assert not (tmp_path/"runs").exists()  # nothing ran


def test_compare_out(tmp_path, capsys):
    (tmp_path/"victim.yaml").write_text("a: 1\n"); (tmp_path/"report.html").write_text("<!doctype html><title>Report</title>")
    for out, why in [(tmp_path, "is a folder"), (tmp_path/"victim.yaml", "does not end in .html"),
                     (tmp_path/"report.html", "is a page but not an earlier comparison")]:
        assert run(capsys, "compare", "a", "b", "--out", out) == (
            2, f"llmops: --out {out}: {why}; expected an HTML file path, new or an earlier comparison (nothing else is overwritten)\n", "")
    assert (tmp_path/"victim.yaml").read_text() == "a: 1\n"


def test_output_folders(tmp_path, capsys):
    (tmp_path/"afile").write_text("x")
    assert run(capsys, "monitor", "--out", tmp_path/"afile", "--db", tmp_path/"fb.db")[:2] == (
        2, f"llmops: --out {tmp_path/'afile'}: is a file; expected a folder for the monitor's tables and plots\n")
    assert run(capsys, "feedback", "export", "--out", tmp_path/"afile"/"sub", "--db", tmp_path/"fb.db", "--no-wandb")[:2] == (
        2, f"llmops: --out {tmp_path/'afile'/'sub'}: {tmp_path/'afile'} is a file; expected a folder for the exported files\n")


def test_feedback_prune_and_monitor_without_wandb(tmp_path, capsys):
    "A store kept for weeks: prune gives back what nothing uses, and a cron'd monitor leaves no W&B run behind."
    from llmops_nb.servelog import RequestLog
    db = tmp_path/"fb.db"; rl = RequestLog(db)
    for n in range(50): rl.add({"response_id": f"o{n}", "timestamp": "2020-01-01T00:00:00.000+00:00", "model": "m", "status": 200}, {"question": "q", "answer": "a"})
    rl.flush(); rl.close()
    assert run(capsys, "feedback", "prune", "--days", "-1", "--db", db)[:2] == (2, "llmops: --days -1: expected a number of days >= 0\n")
    rc, _, out = run(capsys, "feedback", "prune", "--days", "30", "--db", db)
    assert rc == 0 and out.startswith("deleted 50 request row(s) and 50 unrated question(s) older than 30 days"), out
    assert run(capsys, "feedback", "prune", "--days", "30", "--db", tmp_path/"typo.db")[0] == 2 and not (tmp_path/"typo.db").exists()
    assert run(capsys, "monitor", "--db", db, "--out", tmp_path/"mon", "--no-wandb")[0] == 0
    assert (tmp_path/"mon"/"serving.png").exists() and not (tmp_path/"mon"/"wandb").exists()
