"""Run configurations: YAML files plus ``key.sub=value`` overrides, resolved
once into typed dataclasses at the edge (library code takes plain arguments).

    seed: 0
    device: auto
    model:  {name: smallcnn, act: silu, norm: bn, width: 16}      # create_model
    data:   {name: fashion_mnist, limit: 8192, eval_limit: 1000}
    recipe: {name: madry, eps: 25, steps: 5, step_size: 8}          # recipes.create
    train:  {epochs: 3, batch_size: 128, lr: 0.05, milestones: [2]} # TrainOptions
    eval:   {attack: pgd, eps: 25, steps: 10, limit: 500}

Budgets (``eps``, ``step_size``) are in the thesis's 0–255 notation unless
written as a fraction or in pixels (``robustlab.units.parse_budget``).
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from robustlab._checks import check_number
from robustlab._io import safe_yaml
from robustlab.app.spec import SpecError, check_keys, check_mapping, from_mapping
from robustlab.train.options import TrainOptions
from robustlab.units import parse_budget

_logger = logging.getLogger(__name__)

SECTIONS = ("seed", "device", "model", "data", "recipe", "train", "eval")
BUDGET_KEYS = ("eps", "step_size")


@dataclass
class DataConfig:
    """Training and evaluation data (``robustlab.data.load_dataset``)."""

    name: str = "fashion_mnist"
    data_dir: str | None = None
    limit: int | None = None          # training images (first N; a folder: every k-th)
    eval_split: str = "test"
    eval_limit: int | None = 1000     # evaluation images (first N; a folder: every k-th)
    size: int | None = None
    channels: int | None = None
    augment: str | None = None        # none | flip_crop | random_resized_crop | autoaugment; None: the
    #                                   dataset's standard (random_resized_crop for ImageFolder, none otherwise)
    download: bool = True
    workers: int | None = None        # loader processes for streamed data (ImageFolder); None: train.workers

    def train_augment(self) -> str:
        """The training augmentation: ``augment``, or the dataset's standard one."""
        if self.augment is not None:
            return self.augment
        return "random_resized_crop" if self.name.startswith("imagefolder:") else "none"


@dataclass
class EvalConfig:
    """What is measured after every ``train.eval_every`` epochs and at the end:
    clean accuracy (every BN route of a mixture-BN model) and, unless
    ``attack`` is null, robust accuracy under a seeded attack."""

    attack: str | None = "pgd"
    eps: float | str | None = None       # 0-255 notation; default: the recipe's ε
    steps: int | None = 10
    step_size: float | str | None = None
    targeted: bool = False
    limit: int | None = 500
    seed: int = 0


@dataclass
class ModelSpec:
    """The network (``robustlab.models.create_model``): a factory name and
    its options, which depend on the factory (``act``, ``norm``, ``width``, ...)."""

    name: str = "smallcnn"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Any, path: str = "model") -> ModelSpec:
        spec = {"name": cls.name, **check_mapping(values, path, "config section")}
        if not isinstance(spec["name"], str):
            raise ValueError(f"config key {path}.name must be a string; got {spec['name']!r}")
        return cls(spec.pop("name"), spec)

    def to_dict(self) -> dict[str, Any]:
        """The section as written (``config.yaml``, the run's fingerprint)."""
        return {"name": self.name, **copy.deepcopy(self.options)}


@dataclass
class RecipeSpec:
    """The training recipe (``robustlab.train.recipes.create``): its name, the
    attacker's budgets ``eps`` / ``step_size`` parsed once into pixel units
    (None: the recipe's default), and its other options."""

    name: str = "vanilla"
    eps: float | None = None
    step_size: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] = field(default_factory=dict, repr=False)  # as the config says it (to_dict)

    @classmethod
    def from_mapping(cls, values: Any, path: str = "recipe") -> RecipeSpec:
        written = {"name": cls.name, **check_mapping(values, path, "config section")}
        if not isinstance(written["name"], str):
            raise ValueError(f"config key {path}.name must be a string; got {written['name']!r}")
        options = {k: v for k, v in written.items() if k != "name" and k not in BUDGET_KEYS}
        if options.get("routes") is not None:
            options["routes"] = tuple(options["routes"])
        budgets = {k: parse_budget(written[k], f"{path}.{k}") if written.get(k) is not None else None
                   for k in BUDGET_KEYS}
        return cls(written["name"], options=options, written=copy.deepcopy(written), **budgets)

    def to_dict(self) -> dict[str, Any]:
        """The section as written, budgets in the config's notation (``config.yaml``, the run's fingerprint)."""
        return copy.deepcopy(self.written)


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: RecipeSpec = field(default_factory=lambda: RecipeSpec.from_mapping(None))
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "device": self.device, "model": self.model.to_dict(), "data": asdict(self.data),
                "recipe": self.recipe.to_dict(), "train": self.train.to_dict(), "eval": asdict(self.eval)}

    def recipe_options(self) -> dict[str, Any]:
        """Options for ``recipes.create``: budgets in pixel units (parsed once, by :class:`RecipeSpec`)."""
        r = self.recipe
        return {**r.options, **{k: getattr(r, k) for k in BUDGET_KEYS if k in r.written}}


def parse_value(text: str) -> Any:
    """An override's value as YAML reads it: ``3`` → 3, ``[30, 60]`` → list,
    ``null`` → None, ``silu`` → "silu", ``1e-3`` → 0.001."""
    import yaml

    try:
        return safe_yaml(text)
    except yaml.YAMLError:
        return text


_PACKAGED_NAME = re.compile(r"^(?:\./)?(?:configs/)?((?:[A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+?)(?:\.ya?ml)?$")


def packaged_configs() -> dict[str, Path]:
    """The configs shipped inside the package (``robustlab/configs``), by name:
    ``quickstart``, ``train_madry``, ``imagenet/sat_resnet50``, ..."""
    from importlib.resources import files

    root = Path(str(files("robustlab") / "configs"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.glob("**/*.yaml"))}


def config_names() -> list[str]:
    """Names of the packaged configs (``robustlab list configs``)."""
    return sorted(packaged_configs())


def find_config(name_or_path: str | Path, what: str = "config") -> Path:
    """The YAML file a CONFIG argument names: an existing file wins; otherwise a
    packaged config by name — ``quickstart``, ``train_madry.yaml``,
    ``imagenet/sat_resnet50``, ``configs/ch3_transfer.yaml`` (the source
    tree's path, so the documented commands work from an installed wheel).

    Raises:
        FileNotFoundError: neither a file nor a packaged name; for a name
            (no directory but ``configs/`` or one below it) the message lists
            the packaged names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    match = _PACKAGED_NAME.match(str(name_or_path))
    if match is None:  # a path, not a name: say only that it is missing
        raise FileNotFoundError(f"cannot read {what} {name_or_path}: No such file or directory")
    packaged = packaged_configs()
    if match.group(1) in packaged:
        return packaged[match.group(1)]
    raise FileNotFoundError(f"cannot read {what} {name_or_path}: no such file, nor a packaged config of that name; "
                            f"packaged configs: {', '.join(sorted(packaged))}")


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file as a mapping (empty file: ``{}``): the one reader of configs.

    Raises:
        FileNotFoundError: the file cannot be read.
        ValueError: malformed YAML (the message gives ``FILE:LINE:COLUMN``),
            or a document that is not a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FileNotFoundError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        raw = safe_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise ValueError(f"{what} {where}: malformed YAML ({problem or err})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must be a mapping (key: value lines); got a {type(raw).__name__}")
    return raw


def split_override(item: str, example: str = "train.epochs=1") -> tuple[str, Any]:
    """``"key.sub=value"`` → (``"key.sub"``, the value as YAML reads it)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key.sub=value (e.g. {example})")
    key, value = item.split("=", 1)
    return key.strip(), parse_value(value)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw[a][b][c] = value`` for ``key="a.b.c"``, making the missing levels
    (and replacing a non-mapping on the way): the one dotted-override setter."""
    parts = [p for p in str(key).split(".") if p]
    if not parts:
        raise ValueError(f"override key {key!r} is empty")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=1", "recipe.name=advprop"]`` applied to a nested dict (a copy)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = split_override(item)
        top = key.split(".")[0]
        if top not in SECTIONS:
            raise ValueError(f"override {item!r}: unknown section {top!r}; known: {', '.join(SECTIONS)}")
        set_dotted(raw, key, value)
    return raw


def _whole(value: Any, key: str, low: int = 1, optional: bool = True) -> Any:
    """``value`` as a whole number >= ``low`` (or None when ``optional``); the error names ``key``."""
    if value is None and optional:
        return None
    try:
        check_number(value, key, low=low, integer=True)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key} must be a whole number >= {low}{' or null' if optional else ''}; "
                         f"got {value!r}") from None
    return int(value)


def check_device(name: Any, what: str = "config key device") -> str:
    """A device name torch can parse (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...); availability is
    checked where the run starts (``robustlab._io.pick_device``)."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a device name (auto, cpu, cuda, cuda:1, ...); got {name!r}")
    if name != "auto":
        import torch

        try:
            torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"{what}: unknown device {name!r}; use auto, cpu, cuda, cuda:1, ...") from None
    return name


def check_available(device: str, models: dict[str, RunConfig], prefix: str = "") -> None:
    """Refuse, before any folder is made, a study whose device (or a model's) is absent here;
    the error names the study key (after ``prefix``, e.g. ``"sweep value 56: "``)."""
    from robustlab._io import pick_device

    for where, name in (("device", device), *((f"models.{n}.device", c.device) for n, c in models.items())):
        try:
            pick_device(name)
        except ValueError as err:
            raise ValueError(f"{prefix}study key {where}: {err}") from None


def _check_data(d: DataConfig) -> None:
    from robustlab.data.augment import create_augment

    if not isinstance(d.name, str):
        raise ValueError(f"config key data.name must be a dataset name; got {d.name!r}")
    for key in ("limit", "eval_limit", "size", "channels"):
        setattr(d, key, _whole(getattr(d, key), f"data.{key}"))
    d.workers = _whole(d.workers, "data.workers", low=0)
    if not isinstance(d.download, bool):
        raise ValueError(f"config key data.download must be true or false; got {d.download!r}")
    if d.augment is not None:
        try:
            create_augment(d.augment)
        except ValueError as err:
            raise ValueError(f"config key data.{err}") from None


def _check_eval(ev: EvalConfig) -> None:
    if ev.attack is not None:
        from robustlab.attacks import names

        if not isinstance(ev.attack, str) or ev.attack not in names():
            raise ValueError(f"config key eval.attack must be null or one of {', '.join(names())}; "
                             f"got {ev.attack!r}")
    ev.steps = _whole(ev.steps, "eval.steps")
    ev.limit = _whole(ev.limit, "eval.limit")
    ev.seed = _whole(ev.seed, "eval.seed", low=0, optional=False)
    if not isinstance(ev.targeted, bool):
        raise ValueError(f"config key eval.targeted must be true or false; got {ev.targeted!r}")
    for key in BUDGET_KEYS:  # checked now, converted where used: config.yaml keeps the user's notation
        if getattr(ev, key) is not None:
            parse_budget(getattr(ev, key), f"eval.{key}")


def _train_options(train: dict[str, Any]) -> TrainOptions:
    """:class:`TrainOptions` of the ``train`` section; errors name the key (``train.epochs``)."""
    known = {f.name for f in fields(TrainOptions)}
    check_keys(train, sorted(known), "train", noun="training option")
    milestones = train.get("milestones")
    if milestones is not None and (not isinstance(milestones, (list, tuple)) or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) for m in milestones)):
        raise ValueError(f"config key train.milestones must be a list of epochs (numbers); got {milestones!r}")
    try:
        return from_mapping(TrainOptions, train, "train", noun="training option")
    except SpecError:
        raise
    except (TypeError, ValueError) as err:
        msg = str(err)
        # TrainOptions' messages start with the option's name ("epochs must be ...")
        raise ValueError(f"config key train.{msg}" if msg.split(" ")[0] in known
                         else f"config section train: {msg}") from None


def resolve(raw: dict[str, Any]) -> RunConfig:
    """A nested dict (YAML with overrides applied) → :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ValueError("a config must be a mapping of sections (model, data, recipe, train, eval)")
    check_keys(raw, SECTIONS, noun="config section")
    model = ModelSpec.from_mapping(raw.get("model"))
    recipe = RecipeSpec.from_mapping(raw.get("recipe"))
    ev = from_mapping(EvalConfig, raw.get("eval"), "eval", what="config section")
    _check_eval(ev)
    data = from_mapping(DataConfig, raw.get("data"), "data", what="config section")
    _check_data(data)
    train = check_mapping(raw.get("train"), "train", "config section")
    for key, default in (("seed", 0), ("device", "auto")):  # TrainOptions' fields, set from the top-level keys
        if key in train and train[key] != raw.get(key, default):  # (config.yaml repeats them: equal there)
            raise ValueError(f"config key train.{key}: the run's {key} is the top-level key; write {key}: "
                             f"{train[key]} (or the override {key}={train[key]}) instead")
    cfg = RunConfig(
        seed=_whole(raw.get("seed", 0), "seed", low=0, optional=False),
        device=check_device(raw.get("device", "auto")), model=model, data=data, recipe=recipe,
        train=_train_options(train), eval=ev,
    )
    cfg.train.seed = cfg.seed
    cfg.train.device = cfg.device
    if data.workers is not None:
        if "workers" in train and train["workers"] != data.workers:
            raise ValueError(f"config keys data.workers ({data.workers}) and train.workers ({train['workers']}) "
                             "disagree; set data.workers only")
        cfg.train.workers = data.workers
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """(resolved config, raw dict with overrides applied) of a YAML file or a
    packaged config's name (:func:`find_config`)."""
    from_file = load_yaml(find_config(path))
    raw = _without_foreign_model_options(from_file, apply_overrides(from_file, overrides or []), overrides or [])
    return resolve(raw), raw


def _without_foreign_model_options(from_file: dict[str, Any], raw: dict[str, Any],
                                   overrides: list[str]) -> dict[str, Any]:
    """``model.name=tv:resnet50`` on a packaged config replaces its SmallCNN:
    the file's options for that network (``width: 16``) do not follow to the
    new one, its surgery options (``act: silu``, ``norm``, ``denoise``) do,
    except to your own factory, which is built as it is. Options given on
    the command line are kept (and refused if the model does not take them)."""
    import inspect

    from robustlab.models import create_model
    from robustlab.models.resolve import is_factory_spec

    given = {split_override(o)[0] for o in overrides}
    file_model, model = from_file.get("model"), raw.get("model")
    if "model.name" not in given or not isinstance(file_model, dict) or not isinstance(model, dict):
        return raw
    if file_model.get("name") == model.get("name"):
        return raw
    surgery = set() if is_factory_spec(str(model.get("name"))) else {
        n for n, p in inspect.signature(create_model).parameters.items() if p.kind is p.KEYWORD_ONLY}
    dropped = sorted(k for k in file_model if k != "name" and k not in surgery and f"model.{k}" not in given
                     and model.get(k) is not None)
    for key in dropped:
        model.pop(key)
    if dropped:
        _logger.info("model.name=%s: the config's model options %s are for its %s and are not used", model["name"],
                     ", ".join(f"{k}={from_file['model'][k]!r}" for k in dropped), file_model.get("name"))
    return raw
