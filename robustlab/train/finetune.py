"""Fine-tuning: a model that starts from another training run's weights.

§6.4.4 ("BN re-finetune": adversarially learned filters, BNs fine-tuned on
clean images) and Fig. 7.2 (adversarial pre-training, then clean
fine-tuning) start a training run from the weights another run made. The
weights are read from the run directory (its exported ``model.safetensors``
or, for a mixture-BN model, its last checkpoint with every BN route) and
loaded strictly: the network must be the same.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from robustlab.nn.norm import route_names


def source_model(run_dir: str | Path, routes: tuple[str, ...] = ()) -> nn.Module:
    """The trained model of ``run_dir`` in the form a model with BN
    ``routes`` needs: with no routes the exported model, its main BNs only
    (AdvProp's without its auxiliary BNs, §7.4.3; a mixture-BN model's first
    route); with routes the model with every route the run trained, or — for
    a run that trained none — its BNs copied into each route
    (:func:`robustlab.nn.surgery.convert_norm`)."""
    from robustlab.nn.norm import drop_routes
    from robustlab.nn.surgery import convert_norm
    from robustlab.train.checkpoint import load_trained_model

    model = load_trained_model(run_dir, routed=bool(routes))
    have = route_names(model)
    if routes and not have:
        model = convert_norm(model, "mbn", routes=routes, inplace=True)
    elif not routes and have:
        model = drop_routes(model, keep=have[0], inplace=True)
    return model


def init_from_run(model: nn.Module, run_dir: str | Path) -> nn.Module:
    """Copy the weights (parameters and BN running statistics) of the run in
    ``run_dir`` into ``model``, in place; returns ``model``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no trained model.
        ValueError: the weights do not fit ``model`` (another network, other
            BN routes); the message names the run and the mismatched keys.
    """
    routes = route_names(model)
    source = source_model(run_dir, routes)
    if routes and route_names(source) != routes:
        raise ValueError(f"init_from {run_dir}: its BN routes {route_names(source)} are not the model's {routes}")
    theirs, mine = source.state_dict(), model.state_dict()
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    shapes = sorted(k for k in set(mine) & set(theirs) if mine[k].shape != theirs[k].shape)
    if missing or extra or shapes:
        raise ValueError(f"init_from {run_dir}: its weights do not fit this network (another architecture?): "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, other shapes {shapes[:5]}")
    model.load_state_dict(theirs)
    return model
