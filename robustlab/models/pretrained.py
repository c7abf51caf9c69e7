"""Pretrained weights for ``timm:`` and ``tv:`` models, through each library's
own cache.

timm loads its weights itself: from its Hugging Face hub cache
(``huggingface_hub.constants.HF_HUB_CACHE``), or torch hub's cache for
URL-hosted weights, or a local file given as ``pretrained_cfg_overlay={"file":
PATH}``. torchvision's weights (an entry of the model's weights enum) go into
torch hub's cache, ``torch.hub.get_dir()/checkpoints``, with the download's
hash checked. Either way the net's weights are checked finite, and a record
of what was loaded (source, name, tag or weights, local file, its SHA-256)
goes into the model spec. Offline with nothing cached,
:class:`PretrainedUnavailableError` names the cache looked in and the local
alternatives.
"""
from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from robustlab._io import finite_state, sha256_file
from robustlab.models.subset import last_linear, swap_module

_LOCAL = ("weights=PATH (a state-dict file, .safetensors or .pt/.pth, loaded into the net as built)")


class PretrainedUnavailableError(FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable (offline, no
    network). A FileNotFoundError, so the CLI reports it as a usage error."""


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the libraries raise when a file is not cached and the server cannot
    be reached: urllib's errors (torch hub), huggingface_hub's offline-mode and
    not-in-cache errors (it wraps connection failures in the latter)."""
    errors: list[type[BaseException]] = [urllib.error.URLError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:
        pass
    return tuple(errors)


def torch_hub_cache() -> Path:
    """Where torch hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path | None:
    """Where huggingface_hub keeps downloaded files, or None without it. The
    constant is read when huggingface_hub is imported, as its downloads do."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def _unavailable(what: str, cache: Path, local: str, err: BaseException) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"{what} are not in the cache ({cache}) and cannot be downloaded ({type(err).__name__}: {err}). "
        f"Run once with network access to fill the cache, or use a local copy: {local}")


def _record(source: str, name: str, file: Path | None, **fields: Any) -> dict[str, Any]:
    """What the model spec records about the weights loaded."""
    file = file if file is not None and file.is_file() else None
    return {"source": source, "name": name, **fields, "file": str(file) if file else None,
            "sha256": sha256_file(file) if file else None}


# --------------------------------------------------------------------------- timm


def timm_pretrained(name: str, num_classes: int, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model(name, pretrained=True, ...)`` and its record. timm
    replaces the classifier itself when ``num_classes`` differs from the
    weights' (a freshly initialized head)."""
    import timm

    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if not isinstance(overlay, dict):
        raise ValueError(f"pretrained_cfg_overlay must be a mapping such as {{'file': PATH}}; got {overlay!r}")
    local = f'pretrained_cfg_overlay={{"file": PATH}} (with pretrained=True), or {_LOCAL} without pretrained'
    if overlay.get("file") is not None and not Path(overlay["file"]).is_file():
        raise FileNotFoundError(f"pretrained_cfg_overlay: weights file not found: {overlay['file']}")
    try:
        net = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except _network_errors() as err:
        raise _unavailable(f"timm's pretrained weights for {name!r}", _timm_cache(name, overlay), local, err
                           ) from err
    except RuntimeError as err:  # no weights for this name or tag, or a file that does not fit the net
        raise ValueError(f"timm:{name}: pretrained weights cannot be loaded: {err}") from None
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    finite_state(net.state_dict(), f"timm:{name} pretrained weights")
    new_head = cfg.get("classifier") if num_classes != cfg.get("num_classes", num_classes) else None
    record = _record("timm", cfg.get("architecture", name), _timm_file(cfg), tag=cfg.get("tag"),
                     new_head=new_head)
    return net, record


def _timm_cache(name: str, overlay: dict[str, Any]) -> Path:
    """The cache timm looks in for ``name``'s weights: the Hugging Face hub's
    for weights hosted there (timm's first choice), else torch hub's."""
    import timm

    known = timm.models.get_pretrained_cfg(name)
    cfg = {**(known.to_dict() if known is not None else {}), **overlay}
    hf = hf_hub_cache()
    return hf if cfg.get("hf_hub_id") and hf is not None else torch_hub_cache()


def _timm_file(cfg: dict[str, Any]) -> Path | None:
    """The local file timm loaded, found as timm looks for it (an explicit
    file, then the Hugging Face hub, then the URL), or None if unknown."""
    if cfg.get("file"):
        return Path(cfg["file"]).resolve()
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, _, revision = cfg["hf_hub_id"].partition("@")
        filename = cfg.get("hf_hub_filename") or "pytorch_model.bin"
        # timm prefers a .safetensors twin of a .bin file, as below
        safe = {"pytorch_model.bin": "model.safetensors",
                "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(filename)
        for candidate in (safe, filename):
            found = candidate and try_to_load_from_cache(repo, candidate, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.get("url"):
        return torch_hub_cache() / os.path.basename(urlparse(cfg["url"]).path)
    return None


# --------------------------------------------------------------------------- torchvision


def torchvision_weights(tv_name: str, weights: Any) -> Any:
    """The entry of ``tv_name``'s weights enum that ``weights`` names:
    ``"DEFAULT"``, an entry name (``"IMAGENET1K_V2"``), its full name
    (``"ResNet50_Weights.IMAGENET1K_V2"``) or the enum member itself; a
    ValueError listing the accepted names otherwise."""
    import torchvision
    from torchvision.models import WeightsEnum

    enum = torchvision.models.get_model_weights(tv_name)
    accepted = (f"a state-dict file (an existing path, or one ending in .safetensors/.pt/.pth), or {tv_name}'s "
                f"torchvision weights: DEFAULT, {', '.join(w.name for w in enum)} or "
                f"{enum.__name__}.{next(iter(enum)).name}")
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(f"weights: {weights} are not {tv_name}'s; accepted: {accepted}")
        return weights
    prefix, _, entry = str(weights).rpartition(".")
    if prefix not in ("", enum.__name__) or entry not in enum.__members__:
        raise ValueError(f"weights: {weights!r} is not a weights file nor {tv_name}'s torchvision weights; "
                         f"accepted: {accepted}")
    return enum[entry]


def torchvision_pretrained(tv_name: str, entry: Any, num_classes: int, **kwargs: Any
                           ) -> tuple[nn.Module, dict[str, Any]]:
    """``tv_name`` built by torchvision with the weights ``entry``, its head
    replaced by a freshly initialized ``num_classes``-way one if the weights
    have another number of categories; and its record."""
    import torchvision

    path = torch_hub_cache() / os.path.basename(urlparse(entry.url).path)
    local = f"{_LOCAL}, or the file itself at {path}"
    try:
        # torchvision's builders read this file with weights_only=False (any
        # pickled object). Reading it first with weights_only=True downloads it
        # (the hash in its name checked) and proves, through the restricted
        # unpickler, that it holds only tensors and containers: the builder's
        # second read of the cached file then runs no code. Building through
        # torchvision keeps its per-model adjustments (DenseNet's key renaming,
        # Inception's transform_input, ViT's image size).
        torch.hub.load_state_dict_from_url(entry.url, map_location="cpu", check_hash=True, weights_only=True)
    except _network_errors() as err:
        raise _unavailable(f"torchvision's weights {entry} for {tv_name!r}", path.parent, local, err) from err
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # a refused pickle, a bad hash or file
        raise ValueError(f"weights: {path} ({entry}) is not a tensors-only weights file or fails its hash "
                         f"({type(err).__name__}: {err}); delete it to download it again") from None
    net = torchvision.models.get_model(tv_name, weights=entry, **kwargs)
    finite_state(net.state_dict(), path)
    categories = len(entry.meta.get("categories") or ()) or None
    new_head = replace_head(net, num_classes, tv_name, categories) if num_classes != categories else None
    return net, _record("torchvision", tv_name, path, weights=str(entry), new_head=new_head)


def replace_head(net: nn.Module, num_classes: int, name: str, categories: int | None) -> str:
    """Replace the classifier, the net's last ``nn.Linear`` (``fc`` in a
    ResNet, ``classifier[-1]`` in VGG/EfficientNet, ``heads.head`` in ViT),
    with a freshly initialized one of ``num_classes`` outputs; return its name.
    A net whose last Linear does not output the weights' ``categories`` (e.g.
    SqueezeNet's convolutional classifier) is refused."""
    found = last_linear(net, categories)
    if found is None:
        raise ValueError(f"tv:{name}: cannot find the classifier to resize to num_classes={num_classes} (its last "
                         f"nn.Linear does not output the weights' {categories} categories); build it with "
                         f"num_classes={categories} and replace the head yourself")
    head, old = found
    swap_module(net, head, nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                                     device=old.weight.device, dtype=old.weight.dtype))
    return head
