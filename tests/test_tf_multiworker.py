"""A custom loop under `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3 `fit` does not support `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), but a hand-written loop does: `strategy.run`
with a `tf.GradientTape` and the Keras optimizer's `apply_gradients` (which
all-reduces the replicas' gradients by summing them), `strategy.reduce` for
the logged loss. Two worker processes on loopback (a `TF_CONFIG` with two
free ports), each feeding its half of every global batch, train a model
with a `VIB` (the KL through `model.losses`) and a `VAE` (its
`compute_loss`).

Loss scaling follows Keras's `scale_loss_for_distribution`: every term of a
replica's loss is divided by `num_replicas_in_sync`, so the summed gradients
are those of the mean over the global batch. A Keras loss object does this
division itself (reduction "sum_over_batch_size"), and so does
`VAE.compute_loss`; `model.losses` (the VIB's KL of the replica's batch) is
not divided, so the loop divides it, as Keras's own TF `train_step` does.

As under PyTorch DDP, every replica starts from the same seed state, so the
replicas draw the same noise for their local batches; the one-process
reference runs each global batch as its two halves from the step's seed
state and averages them. Loss, logged KL (the on-read replica sums) and
final weights must agree within float32 round-off; a reference drawing one
noise for the global batch must not.

Every run is a subprocess with a timeout; processes are killed on failure.
"""

import json
import os
import textwrap

import keras
import pytest
from helpers import assert_replicas_match
from helpers import assert_whole_batch_noise_differs
from helpers import free_port
from helpers import run_replica_script

pytestmark = pytest.mark.large

BACKEND = keras.backend.backend()
TIMEOUT = 300

_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_vib as kv
    from helpers import classification_data, linear_gaussian, make_vib_model

    # "worker": one of the two MultiWorkerMirroredStrategy workers (its
    # TF_CONFIG set by the test); "single": the one-process references.
    multiworker, work = sys.argv[1] == "worker", sys.argv[2]
    REPLICAS, GLOBAL_BATCH, STEPS, EPOCHS = 2, 16, 4, 2
    LOCAL = GLOBAL_BATCH // REPLICAS
    if multiworker:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        assert strategy.num_replicas_in_sync == REPLICAS
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    else:
        strategy = tf.distribute.get_strategy()  # the default, one replica

    def batches(a):
        # (step, replica, local batch, ...), as in test_torch_ddp.py.
        return a[: STEPS * GLOBAL_BATCH].reshape(
            (STEPS, REPLICAS, LOCAL) + a.shape[1:])

    def build(name):
        keras.utils.set_random_seed(0)
        if name == "vib":
            model, _ = make_vib_model(classes=2, kl_weight=0.1, seed=1)
            x, y = classification_data(n=STEPS * GLOBAL_BATCH)
            ce = keras.losses.SparseCategoricalCrossentropy()

            def loss_fn(xb, yb):
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                # A Keras loss object already divides its batch mean by the
                # replicas in sync; `model.losses` (the VIB's KL of this
                # replica's batch) is not divided: divide it, as Keras's TF
                # train_step does (`_aggregate_additional_loss`).
                pred = model(xb, training=True)
                return ce(yb, pred) + sum(model.losses) / replicas

            return model, model.get_layer("vib"), (x, y), loss_fn
        lg = linear_gaussian()
        model = kv.models.VAE(lg.encoder(), lg.decoder(),
                              likelihood=lg.likelihood(), seed=1)

        def loss_fn(xb):
            # Already divided by num_replicas_in_sync.
            return model.compute_loss(x=xb, y_pred=model(xb, training=True))

        return model, model, (lg.sample_x(STEPS * GLOBAL_BATCH),), loss_fn

    def train(mode):
        out = {}
        for name in ("vib", "vae"):
            with strategy.scope():
                model, bottleneck, data, loss_fn = build(name)
                optimizer = keras.optimizers.Adam(1e-2)
                optimizer.build(model.trainable_variables)
            data = [batches(a) for a in data]
            seed_states = [v for v in model.non_trainable_variables
                           if v.path.endswith("seed_generator_state")]
            assert seed_states

            def apply(loss, tape):
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(
                    zip(grads, model.trainable_variables))

            @tf.function
            def replica_step(*batch):
                with tf.GradientTape() as tape:
                    loss = loss_fn(*batch)
                apply(loss, tape)
                return loss

            @tf.function
            def distributed_step(*batch):
                per_replica = strategy.run(replica_step, args=batch)
                return strategy.reduce("SUM", per_replica, axis=None)

            losses, kls = [], []
            for epoch in range(EPOCHS):
                running = bottleneck.running_kl()
                for v in running:
                    v.assign(0.0)
                for step in range(STEPS):
                    if mode == "worker":
                        batch = [tf.constant(a[step, index]) for a in data]
                        logged = distributed_step(*batch)
                    elif mode == "halves":
                        start = [v.numpy() for v in seed_states]
                        with tf.GradientTape() as tape:
                            halves = []
                            for r in range(REPLICAS):
                                for v, s in zip(seed_states, start):
                                    v.assign(s)
                                halves.append(
                                    loss_fn(*[a[step, r] for a in data]))
                            logged = sum(halves) / REPLICAS
                        apply(logged, tape)
                    else:
                        batch = [a[step].reshape((-1,) + a.shape[3:])
                                 for a in data]
                        logged = replica_step(*batch)
                    losses.append(float(logged))
                # On-read replica sums: reading them adds the replicas'.
                total, count = (float(v.numpy()) for v in running)
                kls.append(total / count)
            out[name] = {
                "loss": losses,
                "kl": kls,
                "count": count,
                "weights": [keras.ops.convert_to_numpy(w).tolist()
                            for w in model.trainable_weights],
            }
        return out

    for mode in ["worker"] if multiworker else ["halves", "global"]:
        suffix = f"worker_{index}" if multiworker else mode
        with open(os.path.join(work, f"out_{suffix}.json"), "w") as f:
            json.dump(train(mode), f)
    """
)


def _run_all(script, work):
    """The two workers and the one-process references, side by side."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    cluster = {"worker": workers}
    modes = [
        (
            "worker",
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                )
            },
        )
        for i in range(2)
    ] + [("single", {})]
    run_replica_script(script, work, modes, env, TIMEOUT)
    results = {}
    for name in ("worker_0", "worker_1", "halves", "global"):
        with open(work / f"out_{name}.json") as f:
            results[name] = json.load(f)
    return results


@pytest.fixture(scope="module")
def tf_runs(tmp_path_factory):
    if BACKEND != "tensorflow":
        pytest.skip(
            "MultiWorkerMirroredStrategy is the TensorFlow backend's route "
            "(run with KERAS_BACKEND=tensorflow; docs/scaling_out.md has "
            "the others)"
        )
    pytest.importorskip("tensorflow")
    work = tmp_path_factory.mktemp("tf_multiworker")
    script = work / "worker.py"
    script.write_text(_WORKER)
    runs = _run_all(script, work)
    return runs["halves"], runs["global"], [runs["worker_0"], runs["worker_1"]]


# Float32 round-off, derived as in test_torch_ddp.py: the runs differ in
# where the replicas' gradients are added (the collective's sum against
# autograd's), a few ulp per gradient; Adam's scale-free steps of <= 1e-2
# keep 8 steps' drift near 4e-8, and the losses' float32 sums near 1e-6
# relative: atol 1e-6 / rtol 1e-5 sit a decade above both.
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("name", ["vib", "vae"])
def test_two_workers_equal_one(tf_runs, name):
    halves, _, pair = tf_runs
    assert_replicas_match(pair, halves, name, RTOL, ATOL, examples=4 * 16)


@pytest.mark.parametrize("name", ["vib", "vae"])
def test_replicas_draw_the_same_noise(tf_runs, name):
    halves, whole, pair = tf_runs
    assert_whole_batch_noise_differs(pair, halves, whole, name, RTOL, ATOL)
