"""Training: one loop (:func:`fit`), recipes that turn a batch into a loss
(:mod:`robustlab.train.recipes`), resumable checkpoints and DDP via torchrun.

    import robustlab as rl
    model = rl.models.create_model("smallcnn", 10, norm="mbn")
    result = rl.train.fit(model, train_set, recipe=rl.train.recipes.create("advprop"),
                          epochs=5, lr=0.05, out="runs/advprop")
"""
from robustlab.train import recipes
from robustlab.train.loop import TrainResult, fit
from robustlab.train.options import TrainOptions
from robustlab.train.quick import fit_classifier

__all__ = ["TrainOptions", "TrainResult", "fit", "fit_classifier", "recipes"]
