"""Callbacks that control the KL weight of keras_vib bottlenecks."""

from keras_vib import _deprecation
from keras_vib import schedules as _schedules
from keras_vib.callbacks.adaptive_kl_weight import AdaptiveKLWeight
from keras_vib.callbacks.kl_weight_scheduler import KLWeightScheduler


def _linear_warmup(warmup, initial=0.0, final=1.0, delay=0):
    return _schedules.LinearWarmup(
        warmup, initial=initial, final=final, delay=delay
    )


def _cyclical(period, ratio=0.5, initial=0.0, final=1.0, num_cycles=None):
    return _schedules.CyclicalAnnealing(
        period, ratio=ratio, initial=initial, final=final, num_cycles=num_cycles
    )


__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        "LinearWarmup": (
            "keras_vib.schedules.LinearWarmup",
            lambda: _schedules.LinearWarmup,
        ),
        "CyclicalAnnealing": (
            "keras_vib.schedules.CyclicalAnnealing",
            lambda: _schedules.CyclicalAnnealing,
        ),
        "linear_warmup": (
            "keras_vib.schedules.LinearWarmup",
            lambda: _linear_warmup,
        ),
        "cyclical": (
            "keras_vib.schedules.CyclicalAnnealing",
            lambda: _cyclical,
        ),
    },
)
