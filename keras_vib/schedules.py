"""KL-weight schedules, built on Keras's `LearningRateSchedule` protocol.

A schedule maps a step (an epoch or a batch index, as
`keras_vib.callbacks.KLWeightScheduler(update_per=...)` says) to a weight.
Any `keras.optimizers.schedules.LearningRateSchedule` works as a KL
schedule too, e.g. `keras.optimizers.schedules.PolynomialDecay`.
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_vib._validation import check_finite_float
from keras_vib._validation import check_fraction
from keras_vib._validation import check_int
from keras_vib._validation import check_optional_positive_int
from keras_vib._validation import check_positive_int


class _KLSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One formula, `weight(xp, step)`, for both kinds of step: computed
    with `numpy` (a Python float out) or with `keras.ops` (a tensor out)."""

    def __call__(self, step):
        if isinstance(step, (int, float, np.integer, np.floating)):
            return float(self.weight(np, np.float64(step)))
        return self.weight(ops, ops.cast(step, "float32"))

    def get_config(self):
        """The constructor's arguments, each kept as an attribute."""
        names = list(inspect.signature(type(self).__init__).parameters)
        return {name: getattr(self, name) for name in names[1:]}


@keras.saving.register_keras_serializable(package="keras_vib")
class LinearWarmup(_KLSchedule):
    """Linear KL warm-up: `initial` for `delay` steps, then a straight line to
    `final` over `warmup` steps, then `final`.

    Args:
        warmup: int >= 1, the length of the ramp.
        initial: float, the weight before and at the start of the ramp.
        final: float, the weight from step `delay + warmup` on.
        delay: int >= 0, steps to hold `initial` before the ramp starts.

    Call arguments:
        step: int >= 0 (or an integer tensor), the epoch or global step.

    Returns:
        The weight: a Python float for a Python step (as the callbacks pass
        it), a float32 scalar tensor for a tensor step.

    Example:

    >>> schedule = kv.schedules.LinearWarmup(warmup=4)
    >>> [float(schedule(t)) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(self, warmup, initial=0.0, final=1.0, delay=0):
        self.warmup = check_positive_int("warmup", warmup)
        self.initial = check_finite_float("initial", initial)
        self.final = check_finite_float("final", final)
        self.delay = check_int("delay", delay, minimum=0)

    def weight(self, xp, step):
        progress = xp.clip((step - self.delay) / self.warmup, 0.0, 1.0)
        return self.initial + (self.final - self.initial) * progress


@keras.saving.register_keras_serializable(package="keras_vib")
class CyclicalAnnealing(_KLSchedule):
    """Cyclical KL annealing (Fu et al., 2019).

    The schedule repeats every `period` steps. Within a cycle, at position
    `tau = (step mod period) / period`, the weight rises linearly from
    `initial` to `final` while `tau < ratio`, then holds `final`. After
    `num_cycles` cycles (if given) it stays at `final`.

    Args:
        period: int >= 1, steps per cycle.
        ratio: float in (0, 1], the fraction of each cycle spent rising.
        initial: float, the weight at the start of each cycle.
        final: float, the weight held for the rest of each cycle.
        num_cycles: int >= 1 or `None` (cycle forever).

    Call arguments:
        step: int >= 0 (or an integer tensor), the epoch or global step.

    Returns:
        The weight, of the kind `LinearWarmup` returns.

    Example:

    >>> schedule = kv.schedules.CyclicalAnnealing(period=4, ratio=0.5)
    >>> [float(schedule(t)) for t in range(9)]
    [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]
    """

    def __init__(
        self, period, ratio=0.5, initial=0.0, final=1.0, num_cycles=None
    ):
        self.period = check_positive_int("period", period)
        self.ratio = check_fraction("ratio", ratio, include_one=True)
        self.initial = check_finite_float("initial", initial)
        self.final = check_finite_float("final", final)
        self.num_cycles = check_optional_positive_int("num_cycles", num_cycles)

    def weight(self, xp, step):
        tau = xp.mod(step, self.period) / self.period
        progress = xp.minimum(tau / self.ratio, 1.0)
        weight = self.initial + (self.final - self.initial) * progress
        if self.num_cycles is not None:
            done = step >= self.num_cycles * self.period
            weight = xp.where(done, self.final, weight)
        return weight
