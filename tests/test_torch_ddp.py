"""PyTorch DistributedDataParallel (two CPU processes) equals one process.

The recipe of the keras.io guide "Multi-GPU distributed training with
PyTorch": a Keras model on the torch backend wrapped in
`torch.nn.parallel.DistributedDataParallel`, a hand-written torch loop with
a torch optimizer, the KL reaching the loss through `model.losses` (a
`VIB`) or through `VAE.compute_loss`. Two processes join a gloo process
group on loopback, configured by the environment variables `torchrun` sets
(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE), and each trains on its half of
every global batch.

What DDP computes: each replica draws its noise from its own copy of the
sampling layers' seed state, and DDP starts every replica from rank 0's
state, so the two replicas draw the *same* noise for their local batches
(JAX's `DataParallel` draws the global batch's noise instead). The
single-process reference therefore runs each global batch as its two
halves, each from the step's seed state, and averages their losses: what
DDP's gradient average computes. The logged loss and KL and the final
weights must agree within float32 round-off; a reference that draws one
noise for the whole global batch must not (the comparison sees the noise).

Every run is a subprocess with a timeout, on a free loopback port; the
processes are killed if the test fails.
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
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    import keras
    import keras_vib as kv
    from helpers import classification_data, linear_gaussian, make_vib_model

    # "ddp": one of the processes torchrun (or the test) starts; "single":
    # the two one-process references, "halves" and "global".
    ddp, work = sys.argv[1] == "ddp", sys.argv[2]
    REPLICAS, GLOBAL_BATCH, STEPS, EPOCHS = 2, 16, 4, 2
    LOCAL = GLOBAL_BATCH // REPLICAS
    if ddp:
        dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE
        rank = dist.get_rank()
        assert dist.get_world_size() == REPLICAS

    def batches(a):
        # (step, replica, local batch, ...): replica r of a step takes rows
        # [r * LOCAL, (r + 1) * LOCAL) of that step's global batch.
        return a[: STEPS * GLOBAL_BATCH].reshape(
            (STEPS, REPLICAS, LOCAL) + a.shape[1:])

    def build(name):
        keras.utils.set_random_seed(0)
        if name == "vib":
            model, _ = make_vib_model(classes=2, kl_weight=0.1, seed=1)
            x, y = classification_data(n=STEPS * GLOBAL_BATCH)
            ce = keras.losses.SparseCategoricalCrossentropy()

            def loss_fn(net, xb, yb):
                # The keras.io loop, plus the KL from `model.losses`.
                return ce(yb, net(xb, training=True)) + sum(model.losses)

            return model, model.get_layer("vib"), (x, y), loss_fn
        lg = linear_gaussian()
        model = kv.models.VAE(lg.encoder(), lg.decoder(),
                              likelihood=lg.likelihood(), seed=1)

        def loss_fn(net, xb):
            # The forward pass through DDP; the loss (ELBO, KL, metrics)
            # from the model itself, as `fit` would compute it.
            return model.compute_loss(x=xb, y_pred=net(xb, training=True))

        return model, model, (lg.sample_x(STEPS * GLOBAL_BATCH),), loss_fn

    def train(mode):
        out = {}
        for name in ("vib", "vae"):
            model, bottleneck, data, loss_fn = build(name)
            data = [torch.as_tensor(batches(a)) for a in data]
            net = model
            if mode == "ddp":
                net = torch.nn.parallel.DistributedDataParallel(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            seed_states = [v for v in model.non_trainable_variables
                           if v.path.endswith("seed_generator_state")]
            assert seed_states
            losses, kls = [], []
            for epoch in range(EPOCHS):
                running = bottleneck.running_kl()
                for v in running:
                    v.assign(0.0)
                for step in range(STEPS):
                    optimizer.zero_grad()
                    if mode == "ddp":
                        loss = loss_fn(net, *[a[step, rank] for a in data])
                        logged = loss.detach().clone()
                        dist.all_reduce(logged)
                        logged = logged / REPLICAS
                    elif mode == "halves":
                        start = [v.value.clone() for v in seed_states]
                        halves = []
                        for r in range(REPLICAS):
                            for v, s in zip(seed_states, start):
                                v.assign(s)
                            batch = [a[step, r] for a in data]
                            halves.append(loss_fn(net, *batch))
                        loss = logged = sum(halves) / REPLICAS
                    else:
                        loss = logged = loss_fn(
                            net, *[a[step].reshape((-1,) + a.shape[3:])
                                   for a in data])
                    loss.backward()
                    optimizer.step()
                    losses.append(float(logged.detach()))
                total, count = (v.value.detach().clone() for v in running)
                if mode == "ddp":
                    dist.all_reduce(total)
                    dist.all_reduce(count)
                kls.append(float(total / count))
            out[name] = {
                "loss": losses,
                "kl": kls,
                "count": float(count),
                "weights": [keras.ops.convert_to_numpy(w).tolist()
                            for w in model.trainable_weights],
            }
        return out

    for mode in ["ddp"] if ddp else ["halves", "global"]:
        suffix = f"ddp_{rank}" if mode == "ddp" else mode
        with open(os.path.join(work, f"out_{suffix}.json"), "w") as f:
            json.dump(train(mode), f)
    if ddp:
        dist.destroy_process_group()
    """
)


def _run_all(script, work):
    """The two DDP processes and the one-process references, side by side."""
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    # What `torchrun --nproc-per-node 2` sets, on loopback.
    ddp = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ddp["WORLD_SIZE"] = "2"
    modes = [
        ("ddp", dict(ddp, RANK=str(i), LOCAL_RANK=str(i))) for i in range(2)
    ] + [("single", {})]
    run_replica_script(script, work, modes, env, TIMEOUT)
    results = {}
    for name in ("ddp_0", "ddp_1", "halves", "global"):
        with open(work / f"out_{name}.json") as f:
            results[name] = json.load(f)
    return results


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    if BACKEND != "torch":
        pytest.skip(
            "DistributedDataParallel is the PyTorch backend's route (run "
            "with KERAS_BACKEND=torch; docs/scaling_out.md has the others)"
        )
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("torch_ddp")
    script = work / "worker.py"
    script.write_text(_WORKER)
    runs = _run_all(script, work)
    return runs["halves"], runs["global"], [runs["ddp_0"], runs["ddp_1"]]


# Float32 round-off. The runs differ only in where the two replicas'
# gradients are added: DDP all-reduces (g0 + g1) / 2 in gloo, the reference
# lets autograd form g0 / 2 + g1 / 2, a relative difference of a few ulp
# (eps = 2**-23 = 1.2e-7) per gradient. Adam's direction m / sqrt(v) is
# scale free, so a step of size <= lr = 1e-2 moves by <= lr * 4 eps = 5e-9;
# 8 steps give ~4e-8 on a weight, and a loss of order 1 sums a few dozen
# float32 terms (~1e-6 relative at worst). atol 1e-6 / rtol 1e-5 sit a
# decade above both; the global-noise reference is out by far more
# (checked below).
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("name", ["vib", "vae"])
def test_two_processes_equal_one(torch_runs, name):
    halves, _, pair = torch_runs
    assert_replicas_match(pair, halves, name, RTOL, ATOL, examples=4 * 16)


@pytest.mark.parametrize("name", ["vib", "vae"])
def test_replicas_draw_the_same_noise(torch_runs, name):
    # One noise draw for the whole global batch (as one process, or JAX's
    # DataParallel, draws it) is not what DDP computes.
    halves, whole, pair = torch_runs
    assert_whole_batch_noise_differs(pair, halves, whole, name, RTOL, ATOL)
