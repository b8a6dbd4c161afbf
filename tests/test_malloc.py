"A stage's kernel runs on tcmalloc where it is installed (kernels.malloc_env): a real papermill kernel, its own memory map."
import os
import nbformat, papermill as pm
import pytest
from conftest import llmops
from llmops_nb import kernels as K, pipeline as P

needs_tcmalloc = pytest.mark.skipif(not K.malloc_env("auto") and not os.environ.get("CI"),  # in CI it runs, and fails without it
                                    reason="no tcmalloc here (apt install libtcmalloc-minimal4; .ci/run installs it)")


def _maps(tmp_path, env) -> str:
    "The shared libraries a stage kernel has mapped, started the way execute_stage starts it."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import re; print(sorted({m for m in re.findall(r'\\S+\\.so[.\\d]*$', open('/proc/self/maps').read(), re.M)}))")])
    src, out = tmp_path/"maps.ipynb", tmp_path/"maps.out.ipynb"
    nbformat.write(nb, src)
    with P._env(**env): pm.execute_notebook(str(src), str(out), kernel_name=K.ensure_kernel(), progress_bar=False)
    return nbformat.read(out, as_version=4).cells[0].outputs[0]["text"]


@needs_tcmalloc
def test_stage_kernel_uses_tcmalloc(tmp_path):
    assert "libtcmalloc" in _maps(tmp_path, K.malloc_env())
    assert "libtcmalloc" not in _maps(tmp_path, K.malloc_env("system"))


def test_wrong_allocator_is_one_line(params, tmp_path, monkeypatch):
    f = params({"stages": ["prepare"], "prepare": {"max_examples": 30}})
    monkeypatch.setenv("LLMOPS_MALLOC", str(tmp_path/"libnothing.so"))
    r = llmops("run", f, "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "LLMOPS_MALLOC=" in r.stderr and "expected auto, system or the path" in r.stderr
    assert not (tmp_path/"runs").exists() or not any((tmp_path/"runs").iterdir())  # no run folder was made


@needs_tcmalloc
def test_run_record_names_each_stages_allocator(params, monkeypatch):
    "execute_stage hands the kernel malloc_env's preload and records it; LLMOPS_MALLOC=system runs (and records) none."
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    f = params({"stages": ["prepare"], "prepare": {"max_examples": 30}})
    rec = P.run(f, progress=False)
    assert rec["stages"]["prepare"]["preload"] == K.malloc_env("auto")["LD_PRELOAD"], rec["stages"]["prepare"]
    monkeypatch.setenv("LLMOPS_MALLOC", "system")
    rec = P.run(f, progress=False, force=True)
    assert rec["stages"]["prepare"]["status"] == "done" and rec["stages"]["prepare"]["preload"] is None, rec["stages"]["prepare"]


def _chat_maps(tmp_path, **env) -> str:
    "The memory map of a real `llmops chat` process (its page answering on a loopback port), then the process stopped."
    import os, socket, subprocess, sys, time, urllib.request
    from pathlib import Path
    from llmops_nb import vectorstore
    kb, index = tmp_path/"kb", tmp_path/"index"
    if not index.exists():
        kb.mkdir(); (kb/"a.md").write_text("# Battery\n\nThe battery keeps the house running for ten hours.")
        vectorstore.build_index(kb, index, chunk_size=200, chunk_overlap=20)
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    exe = Path(sys.executable).parent/"llmops"
    err = tmp_path/"chat.err"  # a file, not a pipe: nothing reads a pipe while the page starts, and a full one would stall it
    with err.open("w") as f:
        p = subprocess.Popen([str(exe), "chat", "--index", str(index), "--model", "tiny-random", "--port", str(port), "--db", str(tmp_path/"fb.db")],
                             stdout=subprocess.DEVNULL, stderr=f, env={**os.environ, **env})
    try:
        for _ in range(240):
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2); break
            except OSError:
                assert p.poll() is None, err.read_text()[-2000:]
                time.sleep(0.5)
        else: raise AssertionError("llmops chat did not answer on its port within 2 minutes")
        return Path(f"/proc/{p.pid}/maps").read_text()  # the same PID: the restart on tcmalloc is an exec
    finally: p.kill(); p.wait()


@needs_tcmalloc
def test_chat_restarts_on_tcmalloc(tmp_path, monkeypatch):
    "`llmops chat` is long-lived, as `llmops serve` is: it restarts itself with tcmalloc preloaded; LLMOPS_MALLOC=system keeps glibc's."
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "libtcmalloc" in _chat_maps(tmp_path)
    assert "libtcmalloc" not in _chat_maps(tmp_path, LLMOPS_MALLOC="system")
