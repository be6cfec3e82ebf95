"""Sweep's models and datasets, and what a plugin declares its own with.

A plugin package imports its vocabulary from here (none of it needs torch):

    from sweep.models import DatasetPlugin, Hyperparameter, ModelPlugin

    TINY_RESNET = ModelPlugin(
        build="my_package.nets:tiny_resnet",  # (input_shape, n_outputs, hparams) -> nn.Module
        hyperparameters={"width": Hyperparameter("int", 64, low=8, high=512)},
    )

and names the declaration in an entry point of the group "sweep.models" (datasets:
"sweep.datasets"). `catalog` holds what a spec may name; `registry` builds a trial's model.
"""

from sweep.models.plugins import DatasetPlugin, Hyperparameter, ModelPlugin

__all__ = ["DatasetPlugin", "Hyperparameter", "ModelPlugin"]
