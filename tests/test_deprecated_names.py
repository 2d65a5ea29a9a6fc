"""Every 0.1 public name still resolves, to the 0.2 object, with a warning
that names the new path (the CHANGELOG's table of moves)."""

import pytest

import keras_vib as kv

MOVED = [
    (kv, "VIB", "keras_vib.layers.VIB", lambda: kv.layers.VIB),
    (kv, "Sampling", "keras_vib.layers.Sampling", lambda: kv.layers.Sampling),
    (
        kv,
        "GaussianBottleneck",
        "keras_vib.layers.GaussianBottleneck",
        lambda: kv.layers.GaussianBottleneck,
    ),
    (kv, "VAE", "keras_vib.models.VAE", lambda: kv.models.VAE),
    (kv, "IWAE", "keras_vib.models.IWAE", lambda: kv.models.IWAE),
    (
        kv,
        "predict_mc",
        "keras_vib.prediction.predict_mc",
        lambda: kv.prediction.predict_mc,
    ),
    *[
        (
            kv.models,
            name,
            f"keras_vib.likelihoods.{name}",
            lambda name=name: getattr(kv.likelihoods, name),
        )
        for name in (
            "Bernoulli",
            "Gaussian",
            "CallableLikelihood",
            "Likelihood",
        )
    ],
    *[
        (
            kv.callbacks,
            name,
            f"keras_vib.schedules.{new}",
            lambda new=new: getattr(kv.schedules, new),
        )
        for name, new in (
            ("LinearWarmup", "LinearWarmup"),
            ("CyclicalAnnealing", "CyclicalAnnealing"),
        )
    ],
]


@pytest.mark.parametrize(
    "module, old, new_path, new", MOVED, ids=[m[1] for m in MOVED]
)
def test_old_name_warns_and_is_the_new_object(module, old, new_path, new):
    with pytest.warns(DeprecationWarning, match=new_path.replace(".", r"\.")):
        resolved = getattr(module, old)
    assert resolved is new()


@pytest.mark.parametrize("old", ["linear_warmup", "cyclical"])
def test_old_schedule_factories_still_build_schedules(old):
    with pytest.warns(DeprecationWarning, match=r"keras_vib\.schedules\."):
        factory = getattr(kv.callbacks, old)
    schedule = (
        factory(warmup=2) if old == "linear_warmup" else factory(period=4)
    )
    assert isinstance(
        schedule, (kv.schedules.LinearWarmup, kv.schedules.CyclicalAnnealing)
    )


@pytest.mark.parametrize("module", [kv, kv.models, kv.callbacks])
def test_unknown_names_still_raise_attribute_error(module):
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name
