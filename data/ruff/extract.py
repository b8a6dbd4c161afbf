"""Extract ruff's rule documentation into one Markdown file per rule (the second RAG evaluation set's documents).

    pip install ruff==0.17.6     # or any environment where `ruff` runs; nothing else is needed
    python data/ruff/extract.py  # rewrites data/ruff/kb/

The selection was fixed before any retrieval was run: the *stable* rules of the four classic flake8 families
(Pyflakes, pycodestyle, flake8-bugbear, flake8-simplify). Preview and removed rules are left out.
Text: ruff's own rule documentation (`ruff rule --all`), MIT licence, Copyright (c) 2022 Charles Marsh.
"""
import json, shutil, subprocess, sys
from pathlib import Path

LINTERS = ("Pyflakes", "pycodestyle", "flake8-bugbear", "flake8-simplify")
OUT = Path(__file__).resolve().parent/"kb"


def rules() -> list:
    exe = shutil.which("ruff") or sys.exit("ruff is not installed; expected `pip install ruff==0.17.6`")
    return json.loads(subprocess.run([exe, "rule", "--all", "--output-format", "json"], check=True,
                                     capture_output=True, text=True).stdout)


def stable(r) -> bool: return isinstance(r["status"], dict) and "Stable" in r["status"] and not r["preview"]


def page(r) -> str:
    return (f"# {r['name']} ({r['code']})\n\n"
            f"Rule {r['code']} of the {r['linter']} family. Message: {r['summary']}. {r['fix']}\n\n"
            f"{r['explanation'].strip()}\n")


def main():
    sel = [r for r in rules() if r["linter"] in LINTERS and stable(r)]
    if OUT.exists(): shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for r in sel: (OUT/f"{r['code']}-{r['name']}.md").write_text(page(r), encoding="utf-8")
    print(f"{len(sel)} rules written to {OUT}")


if __name__ == "__main__": main()
