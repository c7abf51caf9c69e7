"""README.md's Python examples run as written, and its links (and docs/'s) resolve.

Every ```python block of README.md runs in a fresh interpreter, in a
temporary working directory with the repository importable, as a reader
would paste it, after two documented adjustments:

- PRELUDE_FILES: the "your own model" examples import ``my_model`` from the
  reader's ``my_models.py``; the test writes that file (a small untrained
  SmallCNN for 1×28×28 images, seeded) into the working directory.
- SUBSTITUTIONS: sizes shrunk so the whole file runs in well under two
  minutes on 2 CPU cores. Each entry must match some block, so a stale entry
  fails instead of silently testing the full-size example.

A block right after ``<!-- readme-test: skip (reason) -->`` is skipped; keep
that for blocks that need a GPU, the network or a user's own files.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

PRELUDE_FILES = {
    "my_models.py": (
        "import torch\n\nimport robustlab as rl\n\n\n"
        "def my_model():\n"
        "    torch.manual_seed(0)  # the same weights every run, so the evaluation's cost is the same too\n"
        "    return rl.models.create_model('smallcnn', 10, in_channels=1, width=8).eval()\n"
    ),
}

# (README text, what the test runs instead, why)
SUBSTITUTIONS = [
    ('"test", limit=1000)', '"test", limit=128)', "evaluate 128 images, not 1000"),
    ('"test", limit=256)', '"test", limit=64)', "attack 64 images, not 256"),
    ('"train", limit=8000)', '"train", limit=512)', "train on 512 images, not 8000"),
    ("epochs=2,", "epochs=1,", "one training epoch"),
]

SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) of every ```python block."""
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        skip = SKIP.fullmatch(before.strip())
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group("code"), skip and skip.group("reason")))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def shrink(code: str) -> str:
    for old, new, _why in SUBSTITUTIONS:
        code = code.replace(old, new)
    return code


def test_readme_has_python_blocks_and_every_substitution_is_used():
    assert len(BLOCKS) >= 3
    for old, _new, why in SUBSTITUTIONS:
        assert any(old in code for _, code, _ in BLOCKS), f"substitution for {why!r} matches no README block: {old!r}"


def test_extractor_reads_skip_markers():
    text = "a\n\n<!-- readme-test: skip (needs a GPU) -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n", "needs a GPU"), (8, "y = 2\n", None)]


@pytest.fixture(scope="module")
def fashion_mnist_on_disk() -> bool:
    import robustlab as rl

    try:
        rl.data.load_dataset("fashion_mnist", "test", limit=1, download=False)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("line, code, skip", BLOCKS, ids=[f"README.md:{line}" for line, _, _ in BLOCKS])
def test_readme_python_block_runs(line, code, skip, tmp_path, fashion_mnist_on_disk):
    if skip:
        pytest.skip(skip)
    if "fashion_mnist" in code and not fashion_mnist_on_disk:
        pytest.skip("Fashion-MNIST is not on disk (make data installs it) and the test does not download")
    for name, text in PRELUDE_FILES.items():
        (tmp_path / name).write_text(text)
    script = tmp_path / "block.py"
    script.write_text(shrink(code), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


# -- links -------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", re.M)
CODE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"`([^`]*)`", r"\1", title).strip().lower()
    kept = "".join(ch for ch in title if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = CODE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(text):
        s = slug(m.group("title"))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def test_slug_matches_github():
    assert slug("Results: what reproduced and what did not") == "results-what-reproduced-and-what-did-not"
    assert slug("Ch. 2 — DAG on segmentation") == "ch-2--dag-on-segmentation"
    assert slug("`rl.eval.evaluate` vs AutoAttack (`benchmarks/eval_strength.py`)") == \
        "rlevalevaluate-vs-autoattack-benchmarkseval_strengthpy"


#: The repository's address as pyproject.toml's [project.urls] gives it: README.md
#: links its files there (a relative link does not resolve on PyPI's page).
REPO = re.search(r'^Source\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1).rstrip("/")
IN_REPO = re.compile(re.escape(REPO) + r"/(?:blob|tree)/main/(?P<path>[^#]*)(?P<anchor>#.*)?$")


def test_readme_links_files_by_their_repository_address():
    text = CODE.sub("", README.read_text(encoding="utf-8"))
    relative = [m.group("target") for m in LINK.finditer(text)
                if not re.match(r"[a-z][a-z0-9+.-]*:", m.group("target")) and not m.group("target").startswith("#")]
    assert not relative, f"README.md is PyPI's page too: link files as {REPO}/blob/main/PATH; got {relative}"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    """Relative links, and README.md's links into the repository (checked against the checkout)."""
    text = CODE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for m in LINK.finditer(text):
        target = m.group("target")
        local = IN_REPO.match(target)
        if local:
            target = os.path.relpath(ROOT / local.group("path"), doc.parent) + (local.group("anchor") or "")
        elif re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
