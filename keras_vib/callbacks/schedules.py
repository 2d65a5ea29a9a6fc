"""KL-weight schedules: serializable callables of the epoch or step index."""

import math
import numbers

import keras

from keras_vib._validation import check_positive_int


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid value received for argument `{name}`. Expected an int "
            f">= {minimum}. Received: {name}={value!r} of type "
            f"{type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an int "
            f">= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _check_finite(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid value received for argument `{name}`. Expected a finite "
            f"float. Received: {name}={value!r}"
        )
    if not math.isfinite(float(value)):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a finite "
            f"float. Received: {name}={value!r}"
        )
    return float(value)


@keras.saving.register_keras_serializable(package="keras_vib")
class LinearWarmup:
    """Linear KL warm-up: `initial` for `delay` steps, then a straight line to
    `final` over `warmup` steps, then `final`.

    A "step" is an epoch or a batch, as set by `KLWeightScheduler(update_per=)`.

    Args:
        warmup: int >= 1, the length of the ramp.
        initial: float, the weight before and at the start of the ramp.
        final: float, the weight from step `delay + warmup` on.
        delay: int >= 0, steps to hold `initial` before the ramp starts.

    Call arguments:
        step: int >= 0, the epoch or global step index.

    Returns:
        The weight, a Python float.

    Example:

    >>> schedule = LinearWarmup(warmup=4)
    >>> [schedule(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(self, warmup, initial=0.0, final=1.0, delay=0):
        self.warmup = check_positive_int("warmup", warmup)
        self.initial = _check_finite("initial", initial)
        self.final = _check_finite("final", final)
        self.delay = _check_int("delay", delay, 0)

    def __call__(self, step):
        progress = min(max((step - self.delay) / self.warmup, 0.0), 1.0)
        return self.initial + (self.final - self.initial) * progress

    def get_config(self):
        return {
            "warmup": self.warmup,
            "initial": self.initial,
            "final": self.final,
            "delay": self.delay,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_vib")
class CyclicalAnnealing:
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
        step: int >= 0, the epoch or global step index.

    Returns:
        The weight, a Python float.

    Example:

    >>> schedule = CyclicalAnnealing(period=4, ratio=0.5)
    >>> [schedule(t) for t in range(9)]
    [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]
    """

    def __init__(self, period, ratio=0.5, initial=0.0, final=1.0, num_cycles=None):
        self.period = check_positive_int("period", period)
        ratio = _check_finite("ratio", ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(
                "Invalid value received for argument `ratio`. Expected a "
                f"float in (0, 1]. Received: ratio={ratio!r}"
            )
        self.ratio = ratio
        self.initial = _check_finite("initial", initial)
        self.final = _check_finite("final", final)
        self.num_cycles = (
            None if num_cycles is None else check_positive_int("num_cycles", num_cycles)
        )

    def __call__(self, step):
        if self.num_cycles is not None and step >= self.num_cycles * self.period:
            return self.final
        tau = (step % self.period) / self.period
        progress = min(tau / self.ratio, 1.0)
        return self.initial + (self.final - self.initial) * progress

    def get_config(self):
        return {
            "period": self.period,
            "ratio": self.ratio,
            "initial": self.initial,
            "final": self.final,
            "num_cycles": self.num_cycles,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def linear_warmup(warmup, initial=0.0, final=1.0, delay=0):
    """Shorthand for `LinearWarmup(warmup, initial, final, delay)`."""
    return LinearWarmup(warmup, initial=initial, final=final, delay=delay)


def cyclical(period, ratio=0.5, initial=0.0, final=1.0, num_cycles=None):
    """Shorthand for `CyclicalAnnealing(period, ratio, ...)` (Fu et al. 2019)."""
    return CyclicalAnnealing(
        period, ratio=ratio, initial=initial, final=final, num_cycles=num_cycles
    )
