"""Callbacks that control the KL weight of keras_vib bottlenecks."""

from keras_vib import _deprecation
from keras_vib import schedules as _schedules
from keras_vib.callbacks.adaptive_kl_weight import AdaptiveKLWeight
from keras_vib.callbacks.kl_weight_scheduler import KLWeightScheduler

__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        **_deprecation.moved(_schedules, ("LinearWarmup", "CyclicalAnnealing")),
        "linear_warmup": (
            "keras_vib.schedules.LinearWarmup",
            lambda: _schedules.LinearWarmup,
        ),
        "cyclical": (
            "keras_vib.schedules.CyclicalAnnealing",
            lambda: _schedules.CyclicalAnnealing,
        ),
    },
)
