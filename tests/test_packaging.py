"""The package as a user installs it: core dependencies only, every optional
package imported where it is used (an ImportError naming the extra), the
configs shipped as package data and found by name, one version string; and
(slow) a wheel built from the source, installed without extras into a fresh
virtual environment, that trains and attacks from a packaged config."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

import robustlab
from robustlab.app.cli import main
from robustlab.app.config import config_names, find_config, packaged_configs

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustlab"
# import name → the extra that installs it (huggingface_hub: timm's, used only where present)
OPTIONAL = {"sklearn": "digits", "torchmetrics": "dense", "faster_coco_eval": "dense", "timm": "timm",
            "huggingface_hub": "timm", "tensorboard": "tensorboard", "scipy": "imagenet"}
DISTRIBUTIONS = {"scikit-learn", "torchmetrics", "faster-coco-eval", "timm", "tensorboard", "scipy"}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _third_party_imports() -> dict[str, str]:
    """Top-level name → first file, of every non-stdlib module robustlab imports anywhere."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "robustlab" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


# ------------------------------------------------------------------ dependencies and extras

def test_core_dependencies_hold_no_optional_package_and_dev_holds_every_extra():
    project = _pyproject()["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    assert not core & DISTRIBUTIONS
    extras = project["optional-dependencies"]
    assert {_requirement_name(r) for r in extras["digits"]} == {"scikit-learn"}
    assert {_requirement_name(r) for r in extras["dense"]} == {"torchmetrics", "faster-coco-eval"}
    assert {_requirement_name(r) for r in extras["imagenet"]} == {"scipy"}
    dev = {_requirement_name(r) for r in extras["dev"]}
    for name, reqs in extras.items():
        assert {_requirement_name(r) for r in reqs} <= dev, f"dev lacks extra {name!r}"


def test_every_package_robustlab_imports_is_declared():
    """A direct import is a core dependency, or an optional package imported lazily (above)."""
    from importlib.metadata import packages_distributions

    core = {_requirement_name(r) for r in _pyproject()["project"]["dependencies"]}
    owners = packages_distributions()
    undeclared = {}
    for top, where in _third_party_imports().items():
        if top in OPTIONAL:
            continue
        dists = {_requirement_name(d) for d in owners.get(top, [top])}
        if not dists & core:
            undeclared[top] = where
    assert undeclared == {}


_LAZY = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` raises ImportError, as if not installed
import robustlab as rl
assert "torch" not in sys.modules, "import robustlab must stay light"
import robustlab.app.cli, robustlab.attacks, robustlab.data, robustlab.eval, robustlab.models, robustlab.nn
import robustlab.report, robustlab.train, robustlab.train.sinks, robustlab.app.study, robustlab.app.dag
import torch

def refused(call, extra):
    try:
        call()
    except ImportError as err:
        assert f"pip install 'robustlab[{{extra}}]'" in str(err), str(err)
    else:
        raise AssertionError(f"{{call}} worked without robustlab[{{extra}}]")

refused(lambda: rl.data.load_dataset("digits", "test"), "digits")
refused(lambda: rl.models.create_model("timm:resnet18", 10), "timm")
refused(lambda: rl.train.sinks.require(["tensorboard"]), "tensorboard")
import pathlib
import robustlab.data.folder
refused(lambda: robustlab.data.folder.read_devkit(pathlib.Path("devkit"), pathlib.Path("val")), "imagenet")
box = {{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1])}}
refused(lambda: rl.eval.mean_ap([{{**box, "scores": torch.tensor([0.9])}}], [box["boxes"]], [box["labels"]]), "dense")
# mIoU needs no extra (a bincount)
assert rl.eval.mean_iou(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 2) == 1.0
try:
    robustlab.app.cli.main(["--help"])
except SystemExit as done:
    assert done.code == 0
print("OK", sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in {blocked!r}))
"""


def test_every_optional_import_is_lazy_and_names_its_extra():
    """With the optional packages blocked, every sub-package imports and each
    feature that needs one raises an ImportError with the pip command."""
    code = _LAZY.format(blocked=sorted(OPTIONAL))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK []"


def test_each_optional_package_is_imported_only_inside_functions():
    """No module-level import of an optional package anywhere in robustlab."""
    pattern = re.compile(rf"^(?:import|from)\s+({'|'.join(OPTIONAL)})\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


# ------------------------------------------------------------------ packaged configs

def _source_files(package: Path = PACKAGE) -> list[Path]:
    """Every file of the package source but bytecode, relative to robustlab/."""
    return sorted(p.relative_to(package) for p in package.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_every_data_file_of_the_package_is_package_data():
    """Configs, report templates, py.typed: each matched by a pattern of
    pyproject's package-data (same depth: a new sub-folder is not missed)."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["robustlab"]
    data = [rel for rel in _source_files() if rel.suffix != ".py"]
    assert Path("py.typed") in data and Path("configs/quickstart.yaml") in data
    missed = [str(rel) for rel in data
              if not any(rel.match(pat) and len(rel.parts) == len(Path(pat).parts) for pat in patterns)]
    assert missed == []


def test_every_packaged_config_is_found_by_name():
    files = sorted(p for p in (PACKAGE / "configs").rglob("*") if p.is_file())
    assert files and all(p.suffix == ".yaml" for p in files)
    names = config_names()
    assert len(names) == len(files)
    assert {"quickstart", "train_madry", "ch3_transfer", "imagenet/sat_resnet50"} <= set(names)
    for name, path in packaged_configs().items():
        assert find_config(name).samefile(path)
        assert find_config(f"{name}.yaml").samefile(path)
        assert find_config(f"configs/{name}.yaml").samefile(path)  # the source tree's path, from anywhere


def test_config_lookup_prefers_an_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "quickstart.yaml"
    own.write_text("name: mine\n")
    assert find_config("quickstart.yaml") == Path("quickstart.yaml")
    assert find_config(own) == own
    assert find_config("quickstart").samefile(PACKAGE / "configs" / "quickstart.yaml")  # no such file: the name
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("name: local\n")
    assert find_config("configs/quickstart.yaml") == Path("configs/quickstart.yaml")


@pytest.mark.parametrize("name", ["nope", "imagenet/nope", "configs/nope.yaml"])
def test_an_unknown_config_name_is_refused_listing_the_packaged_ones(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"packaged configs: .*imagenet/sat_resnet50.*quickstart"):
        find_config(name)


def test_a_missing_path_is_refused_without_the_name_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file") as info:
        find_config(tmp_path / "a" / "b.yaml")
    assert "packaged" not in str(info.value)


@pytest.mark.parametrize("argv", [["study", "nope"], ["train", "nope"], ["attack", "--config", "nope"]])
def test_the_cli_refuses_an_unknown_config_with_exit_2_and_the_names(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "quickstart" in err and "train_madry" in err
    assert not (tmp_path / "runs").exists()


def test_cli_commands_take_a_packaged_config_by_name(tmp_path, monkeypatch, capsys):
    from robustlab.app.config import load_config
    from robustlab.app.study import load_study

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_study("quickstart").name == "quickstart"
    assert load_study("ch3_transfer", smoke=True).name == "ch3_transfer"
    cfg, _ = load_config("imagenet/sat_resnet50")
    assert cfg.data.name.startswith("imagefolder:")
    cfg, _ = load_config("train_madry", ["train.epochs=1"])
    assert cfg.recipe.name == "madry" and cfg.train.epochs == 1
    assert main(["list", "configs"]) == 0
    assert "imagenet/sat_resnet50" in capsys.readouterr().out


# ------------------------------------------------------------------ version, typing, rl.report

def test_one_version_string():
    from robustlab._version import __version__

    assert robustlab.__version__ == __version__ == installed_version("robustlab")
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "robustlab._version.__version__"}
    assert "version" in _pyproject()["project"]["dynamic"]
    written = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.name != "_version.py" and re.search(r"""['"]\d+\.\d+\.\d+['"]""", p.read_text())]
    assert written == []


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"robustlab {robustlab.__version__}"


def test_typed_marker_license_and_urls():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["robustlab"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    urls = _pyproject()["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert all(u.startswith("https://github.com/robustlab/robustlab") for u in urls.values())


def test_report_is_a_lazy_attribute():
    code = ("import sys, robustlab as rl; assert 'robustlab.report' not in sys.modules; "
            "assert callable(rl.report.write_report) and callable(rl.report.render); print('OK')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr[-2000:]
    assert "report" in dir(robustlab)


# ------------------------------------------------------------------ the wheel, installed without extras

def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """The wheel of a copy of the source (so no build/ lands in the checkout),
    with the setuptools of this environment (offline: no build isolation)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "robustlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
              str(src)], tmp, env))
    (wheel,) = (tmp / "dist").glob("robustlab-*.whl")
    return wheel


def _check_wheel_contents(wheel: Path, package: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
    for path in ("robustlab/configs/quickstart.yaml", "robustlab/configs/imagenet/sat_resnet50.yaml",
                 "robustlab/py.typed", "robustlab/_version.py", "robustlab/report/templates/page.html"):
        assert path in names
    # every file of the source it was built from, nothing else
    assert sorted(n for n in names if n.startswith("robustlab/")) == sorted(f"robustlab/{p.as_posix()}"
                                                                           for p in _source_files(package))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"Version: {robustlab.__version__}" in metadata
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    core = {_requirement_name(r) for r in requires if "extra ==" not in r}
    assert core and not core & DISTRIBUTIONS, core
    for dist, extra in (("scikit-learn", "digits"), ("torchmetrics", "dense"), ("faster-coco-eval", "dense"),
                        ("timm", "timm"), ("tensorboard", "tensorboard")):
        assert any(_requirement_name(r) == dist and f'extra == "{extra}"' in r for r in requires), dist


def _fresh_venv(tmp: Path, env: dict[str, str]) -> Path:
    """A new virtual environment (no system site-packages) with only torch and
    torchvision, at this environment's versions, from the machine's wheels."""
    venv = tmp / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], tmp, env))
    python = venv / "bin" / "python"
    pins = [f"{d}=={installed_version(d).split('+')[0]}" for d in ("torch", "torchvision")]
    got = _run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", *pins], tmp, env, timeout=900)
    if got.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"cannot install {' '.join(pins)} offline into a fresh venv: {got.stderr.strip()[-500:]}")
    return venv


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_wheel_installs_without_extras_and_runs(tmp_path):
    from robustlab.data import load_dataset
    from robustlab.data.sources import DataNotFoundError

    try:
        load_dataset("fashion_mnist", "test", limit=1, download=False)
    except DataNotFoundError as err:
        pytest.skip(f"needs Fashion-MNIST on disk (make data): {str(err).splitlines()[0]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    wheel = _build_wheel(tmp_path, env)
    _check_wheel_contents(wheel, tmp_path / "src" / "robustlab")
    venv = _fresh_venv(tmp_path, env)
    try:
        _installed_wheel_works(venv, wheel, tmp_path / "work", env)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # gigabytes of torch


def _installed_wheel_works(venv: Path, wheel: Path, work: Path, env: dict[str, str]) -> None:
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "robustlab")
    env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    work.mkdir()
    _ok(_run([python, "-m", "pip", "install", "--quiet", str(wheel)], work, env, timeout=600))
    probe = ("import importlib.util, json, sys, robustlab; from robustlab.app.config import find_config; "
             "print(json.dumps({'file': robustlab.__file__, 'version': robustlab.__version__, "
             "'missing': [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None], "
             "'sat': str(find_config('imagenet/sat_resnet50'))}))")
    info = json.loads(_ok(_run([python, "-c", probe, *sorted(OPTIONAL)], work, env)))
    assert Path(info["file"]).is_relative_to(venv), info  # the installed copy, not the checkout
    assert info["missing"] == sorted(OPTIONAL), "the fresh venv must hold no extra"
    assert Path(info["sat"]).is_relative_to(venv) and Path(info["sat"]).is_file()
    assert info["version"] == robustlab.__version__
    assert "attack" in _ok(_run([cli, "--help"], work, env))
    assert _ok(_run([cli, "--version"], work, env)).strip() == f"robustlab {robustlab.__version__}"
    assert "quickstart" in _ok(_run([cli, "list", "configs"], work, env))
    _ok(_run([cli, "-q", "train", "train_vanilla", "data.limit=128", "data.download=false", "data.eval_limit=32",
              "train.batch_size=64", "train.epochs=1", "eval.limit=32", "--out", "run"], work, env))
    assert (work / "run" / "model.safetensors").is_file()
    _ok(_run([cli, "-q", "attack", "--model", "run", "--data", "fashion_mnist", "--limit", "32", "--attack", "fgsm",
              "--eps", "8", "--no-download", "--out", "atk"], work, env))
    assert json.loads((work / "atk" / "results.json").read_text())
    _ok(_run([python, "-c", "from robustlab.app.study import load_study; assert load_study('quickstart', "
              "smoke=True).name == 'quickstart'; import robustlab as rl; assert callable(rl.report.write_report)"],
             work, env))
    refused = _run([cli, "study", "nope"], work, env)
    assert refused.returncode == 2 and "quickstart" in refused.stderr
    digits = _run([cli, "attack", "--model", "smallcnn", "--data", "digits", "--limit", "8", "--out", "d"], work, env)
    assert digits.returncode == 2 and "pip install 'robustlab[digits]'" in digits.stderr, digits.stderr
