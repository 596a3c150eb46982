"""Networks of the original MTT / DC-bench code and a functional flat-parameter view.

* :func:`get_model` builds a network by its original name (:data:`MODEL_NAMES`);
  :func:`model_spec` gives the JSON-serialisable arguments that re-create it
  with :func:`from_spec`.
* :mod:`mtt_fast.models.functional` runs any model over one flat parameter vector
  (``torch.func.functional_call``), replacing the original's ReparamModule.
"""

from __future__ import annotations

from mtt_fast.models import functional
from mtt_fast.models.functional import (
    ParamLayout,
    flatten,
    functional_forward,
    layout,
    load_flat,
    unflatten,
)
from mtt_fast.models.networks import MLP, VGG, AlexNet, ConvNet, LeNet, ResNet
from mtt_fast.models.registry import (
    MODEL_NAMES,
    default_convnet,
    from_spec,
    get_model,
    model_spec,
)

__all__ = [
    "MODEL_NAMES",
    "MLP",
    "VGG",
    "AlexNet",
    "ConvNet",
    "LeNet",
    "ParamLayout",
    "ResNet",
    "default_convnet",
    "flatten",
    "from_spec",
    "functional",
    "functional_forward",
    "get_model",
    "layout",
    "load_flat",
    "model_spec",
    "unflatten",
]
