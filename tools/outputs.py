"""Run the library notebooks and keep the outputs of their example cells, so that they read as documentation.

Usage: python tools/outputs.py [NOTEBOOK ...]   (default: every library notebook in nbs/)

Cells are run the way `nbdev_test` runs them (same engine, same skipped flags). Of what they print, only what
reads the same on any machine is kept: stderr (warnings, progress bars), widgets, outputs naming local paths,
memory addresses or dates, and outputs over the size limits are dropped, and each drop is listed.
Run `nbdev_clean` afterwards (`make outputs` does both).
"""
import os, re, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"
# a notebook that runs a whole scenario (minutes) documents itself through its executed copies, not here
SKIP = {"46_loop.ipynb"}
# what differs between machines or runs: paths, addresses, clock times, run ids, ports, uuids
LOCAL = re.compile(r"/tmp/|/work/|/home/|/root/|/Users/|site-packages|\.venv|\b0x[0-9a-f]{6,}|\b20\d\d-\d\d-\d\d[T ]\d\d:|"
                   r"\b\d{6}-[0-9a-f]{4}\b|127\.0\.0\.1:\d+|localhost:\d+|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-")
REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")  # a default repr, e.g. a pandas Styler's beside its HTML
NOISE = re.compile(r"^\[INFO\] Running in WANDB offline mode\n", re.M)  # wandb says it on import, wherever it is
MAX_TEXT, MAX_IMAGE = 3_000, 120_000  # characters of text, bytes of base64 image per output


def library_notebooks() -> list:
    return [p for p in sorted(NBS.glob("*.ipynb")) if p.name not in SKIP]


def _text(o) -> str:
    if o.get("output_type") == "stream": return "".join(o.get("text", ""))
    data = o.get("data", {})
    return "".join("".join(v) if isinstance(v, list) else str(v) for k, v in data.items() if k.startswith("text/"))


def why_dropped(o) -> str | None:
    "The reason an output is not kept, or None."
    if o.get("output_type") == "stream" and o.get("name") == "stderr": return "stderr"
    if o.get("output_type") == "error": return "error"
    data = o.get("data", {})
    if "application/vnd.jupyter.widget-view+json" in data: return "widget"
    t = _text(o)
    if m := LOCAL.search(t): return f"machine-specific ({m.group(0)!r})"
    if len(t) > MAX_TEXT: return f"{len(t)} characters"
    if len(img := "".join(data.get("image/png", ""))) > MAX_IMAGE: return f"{len(img)} byte image"
    return None


def keep(outputs: list) -> tuple:
    "The outputs worth keeping, and the reasons for the others."
    kept, dropped = [], []
    for o in outputs:
        if o.get("output_type") == "stream":
            text = NOISE.sub("", "".join(o.get("text", "")))
            if not text: continue
            o["text"] = text.splitlines(keepends=True)  # as Jupyter writes it: one string per line
        data = o.get("data", {})
        if len(data) > 1 and REPR.fullmatch("".join(data.get("text/plain", ""))): del data["text/plain"]  # a richer form is there
        (dropped.append(r) if (r := why_dropped(o)) else kept.append(o))
    return kept, dropped


def run(fn: Path, dest: Path | None = None) -> list:
    "Execute `fn` like nbdev_test and write it (to `dest`, default: back) with the kept outputs; returns (cell, reason) for each drop."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    flags = set(get_config().tst_flags.split())
    nb = read_nb(fn)  # as written (NBProcessor takes the directives out of the sources)
    directives = [getattr(c, "directives_", {}) or {} for c in NBProcessor(fn).nb.cells]

    def skip(cell):
        if cell.cell_type != "code": return True
        d = directives[cell.idx_]
        return "nbdev_export(" in cell.source or d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())

    os.environ["IN_TEST"] = "1"
    k = CaptureShell(fn)
    with working_directory(fn.parent): k.run_all(nb, exc_stop=True, preproc=skip)
    drops = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code": continue
        c.outputs, why = keep(c.get("outputs", []))
        drops += [(i, w) for w in why]
    write_nb(nb, dest or fn)
    return drops


if __name__ == "__main__":
    for fn in [Path(a).resolve() for a in sys.argv[1:]] or library_notebooks():
        t = time.time()
        drops = run(fn)
        print(f"{fn.relative_to(ROOT)}: {time.time() - t:.0f} s" + "".join(f"\n  cell {i}: dropped {w}" for i, w in drops), flush=True)
