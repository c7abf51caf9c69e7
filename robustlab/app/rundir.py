"""Run directories: one folder holds one run.

:class:`RunDir` owns what every command does with its folder: the default
path (``runs/KIND-YYYYmmdd-HHMMSS``), creating it when the first file is
written (so a command refused on bad input leaves no folder behind),
``config.yaml``, the run's identity in ``run.json`` (kind and the fingerprint
of its resolved config), an exclusive ``.lock`` while it writes, and the
ending every job shares: ``results.json``, then ``report.html``. ``run.json``
also names the git commit of the robustlab source that ran (``commit``; None
when robustlab is not run from a git checkout), refreshed when the run
finishes, so a folder resumed under newer code names the code that wrote its
results.

A folder that holds another run (another kind or fingerprint) is refused
before anything is written; the same fingerprint reuses it, which is how a
killed run resumes and finished work is reused.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab._io import atomic_write_text, read_json_mapping, write_json

RUN, LOCK = "run.json", ".lock"
INIT_RECORD = "init_from.json"  # a study model's source weights (robustlab.app.study_models)
PRE_RUN = (LOCK, INIT_RECORD)  # what robustlab writes into a run's folder before its run.json


def fingerprint_of(config: Any) -> str:
    """SHA-256 of the canonical JSON of a resolved config (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def study_fingerprint(name: str) -> str:
    """A study's folder holds one study, by name: changes to its models and
    evaluations are met by reusing what is unchanged, not by a new folder."""
    return fingerprint_of({"study": name})


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout robustlab is imported from, or
    None: not a git checkout (e.g. an installed wheel, even one inside some
    other repository), no git, or git too slow (2 s). Never raises."""
    root = Path(__file__).resolve().parents[2]  # robustlab/app/rundir.py → the source tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # no GIT_DIR pointing elsewhere
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=2, env=env, stdin=subprocess.DEVNULL)
        top, commit = out.stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if out.returncode != 0 or Path(top).resolve() != root or len(commit) != 40:
        return None
    return commit


def default_path(out: str | Path | None, kind: str) -> Path:
    return Path(out) if out is not None else Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def flat_keys(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{dotted.key: value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted.key: (old, new)}`` where two nested configs differ."""
    a, b = flat_keys(old), flat_keys(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], most: int = 4) -> str:
    """``steps: 3 → 4, lr: 0.1 → 0.05 and 2 more``: the first ``most`` keys
    where two nested configs differ, for a message; empty when none do."""
    changes = changed_keys(old, new)
    text = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in list(changes.items())[:most])
    return text + (f" and {len(changes) - most} more" if len(changes) > most else "")


def first_free(base: Path, kind: str, fingerprint: str) -> Path:
    """``base``, else ``base-2``, ``base-3``, …: the first folder that is new
    or already holds this run. A default path never refuses a run for
    holding another: an evaluation of a model at another ε lands next to
    the first one, the same command resumes or reuses its own."""
    path, n = base, 1
    while True:
        try:
            RunDir(path, kind, fingerprint, writer=False)
            return path
        except ValueError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


class RunDirLocked(ValueError):
    """Another live process is writing into the run directory."""


class RunDir:
    """The folder of one run.

    Args:
        out: the folder, or None for ``runs/KIND-YYYYmmdd-HHMMSS``.
        kind: what runs there (``train``, ``study``, ``attack``, ...).
        fingerprint: the identity of the run, usually :func:`fingerprint_of`
            its resolved config; None accepts any run of the same kind.
        writer: False for a process that only reads the identity check
            (a non-zero DDP rank): it never locks nor writes.

    Raises:
        ValueError: ``out`` holds another run (the message says which), or
            another process holds its lock (:class:`RunDirLocked`).
    """

    def __init__(self, out: str | Path | None, kind: str, fingerprint: str | None = None, *,
                 writer: bool = True, config: Mapping[str, Any] | None = None) -> None:
        self.path = default_path(out, kind)
        self.kind, self.fingerprint, self.writer, self.config = kind, fingerprint, writer, config
        self._locked = False
        self._made: list[Path] = []
        self.existing = self._check()
        if writer:
            self._check_lock()

    # -- identity ----------------------------------------------------------
    def _check(self) -> dict[str, Any] | None:
        """The stored identity, after refusing a folder that holds another run."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file, not a run directory")
        path = self.path / RUN
        if not path.is_file():
            others = (sorted(p.name for p in self.path.iterdir() if p.name not in PRE_RUN)
                      if self.path.is_dir() else [])
            if others:  # a user's folder (a dataset, notes): a run directory holds one run and nothing else
                raise ValueError(f"{self.path} is not empty and holds no robustlab run ({', '.join(others[:4])}"
                                 f"{' ...' if len(others) > 4 else ''}); choose a new or empty output directory")
            return None
        stored = read_json_mapping(path, f"refusing to write into {self.path}")
        differs = [f"kind {stored.get('kind')!r} (this run: {self.kind!r})"] if stored.get("kind") != self.kind else []
        if self.fingerprint is not None and stored.get("fingerprint") not in (None, self.fingerprint):
            changed = self._changed_keys()
            differs.append(f"its config differs in {changed}" if changed else
                           f"config fingerprint {str(stored.get('fingerprint'))[:12]}… "
                           f"(this run: {self.fingerprint[:12]}…)")
        if differs:
            raise ValueError(f"{self.path} holds another run ({'; '.join(differs)}, created "
                             f"{stored.get('created', '?')}); choose another output directory or remove it")
        return stored

    def _changed_keys(self, most: int = 4) -> str:
        """The keys where this run's ``config`` differs from the folder's
        config.yaml (``steps: 3 → 4``); empty when either is unknown."""
        if self.config is None or not (self.path / "config.yaml").is_file():
            return ""
        from robustlab._io import safe_yaml

        try:
            old = safe_yaml((self.path / "config.yaml").read_text())
        except Exception:  # noqa: BLE001 - a damaged config.yaml: the fingerprint alone is said
            return ""
        if not isinstance(old, Mapping):
            return ""
        return describe_changes(old, json.loads(json.dumps(dict(self.config), default=str)), most)

    @property
    def reused(self) -> bool:
        """True when the folder already holds this run (resume, reuse)."""
        return self.existing is not None

    # -- lock --------------------------------------------------------------
    def _holder(self) -> int | None:
        """The pid of a live process holding the lock, or None."""
        try:
            pid = int((self.path / LOCK).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a dead process's lock: stale, taken over
        except PermissionError:
            return pid
        return pid

    def _check_lock(self) -> None:
        holder = self._holder()
        if holder is not None and not self._locked:
            raise RunDirLocked(f"{self.path} is in use by process {holder} (lock file {self.path / LOCK}); "
                               "wait for it to finish, or remove the lock file if that process is not robustlab")

    def _acquire(self) -> None:
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_lock()
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._locked = True
            atexit.register(self.close)
            return
        raise RunDirLocked(f"{self.path}: could not take the lock {lock}")

    def close(self) -> None:
        """Release the lock (also done at exit)."""
        if self._locked:
            self._locked = False
            try:
                if int((self.path / LOCK).read_text().strip() or 0) == os.getpid():
                    (self.path / LOCK).unlink()
            except (FileNotFoundError, ValueError):
                pass
            atexit.unregister(self.close)

    def discard(self) -> None:
        """Remove a run refused after its folder was made (nothing of it is
        kept), with the parent folders :meth:`ensure` created for it, if empty."""
        import shutil

        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self._made[1:]:  # deepest first, each only if empty
            try:
                parent.rmdir()
            except OSError:
                break

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------
    def ensure(self) -> Path:
        """Create the folder, take the lock and record the run (once)."""
        if not self.writer:
            raise RuntimeError(f"{self.path}: this process only reads the run directory")
        if not self._locked:
            self._check()  # nothing changed since construction
            self._made = [p for p in (self.path, *self.path.parents) if not p.exists()]  # what discard may remove
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire()
            if self.existing is None:
                from robustlab import __version__

                self.existing = {"kind": self.kind, "fingerprint": self.fingerprint,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "robustlab": __version__,
                                 "commit": source_commit()}
                write_json(self.path / RUN, self.existing)
        return self.path

    def record(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` (e.g. an extension of ``train.epochs``) to run.json's history."""
        self.ensure()
        self.existing = {**self.existing, "history": [*self.existing.get("history", []),
                                                      {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}]}
        write_json(self.path / RUN, self.existing)

    def write_config(self, config: Mapping[str, Any], name: str = "config.yaml") -> Path:
        import yaml

        path = self.ensure() / name
        atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
        return path

    def finish(self, results: dict[str, Any], *, report: bool = True) -> dict[str, Any]:
        """Write ``results.json`` (atomically), then render ``report.html``;
        returns ``results`` with ``run_dir`` (and ``report``) added."""
        write_json(self.ensure() / "results.json", results)
        if "commit" not in self.existing or self.existing["commit"] != source_commit():
            self.existing = {**self.existing, "commit": source_commit()}  # the code that wrote these results
            write_json(self.path / RUN, self.existing)
        results = {**results, "run_dir": str(self.path)}
        if report:
            from robustlab.report import write_report

            results["report"] = str(write_report(self.path))
        return results

