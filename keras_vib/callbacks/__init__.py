"""Callbacks that control the KL weight of keras_vib bottlenecks."""

from keras_vib.callbacks.adaptive_kl_weight import AdaptiveKLWeight
from keras_vib.callbacks.kl_weight_scheduler import KLWeightScheduler
from keras_vib.callbacks.schedules import CyclicalAnnealing
from keras_vib.callbacks.schedules import LinearWarmup
from keras_vib.callbacks.schedules import cyclical
from keras_vib.callbacks.schedules import linear_warmup
