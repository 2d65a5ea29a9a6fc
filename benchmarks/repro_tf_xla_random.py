"""Minimal reproduction: TensorFlow's XLA draws normals far slower on CPU.

The IWAE k=50 train step (benchmarks/iwae_scaling.py) draws 250,000
standard normals per step. Profiled under `jit_compile=True`, that draw is
the step's largest single cost (an XLA fusion of the Philox generator),
while the same op in a plain `tf.function` graph is a small one. This script
times only the draw, one intra-op thread, both ways, in one process.

Usage:

    python benchmarks/repro_tf_xla_random.py
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import tensorflow as tf  # noqa: E402

SHAPE = (50, 100, 50)  # k, batch, latent


def draw(seed):
    return tf.reduce_sum(tf.random.stateless_normal(SHAPE, seed=seed))


def cpu_ms_per_call(fn, calls=20, rounds=5):
    seed = tf.constant([1, 2], tf.int32)
    fn(seed)  # trace and compile
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn(seed).numpy()
        times.append((time.process_time() - start) / calls * 1e3)
    return statistics.median(times)


def main():
    graph = cpu_ms_per_call(tf.function(draw, jit_compile=False))
    xla = cpu_ms_per_call(tf.function(draw, jit_compile=True))
    print(f"TensorFlow {tf.__version__}, {SHAPE} standard normals per call")
    print(f"tf.function graph:            {graph:8.2f} CPU ms")
    print(f"tf.function jit_compile=True: {xla:8.2f} CPU ms")
    print(f"XLA / graph: {xla / graph:.1f}x")


if __name__ == "__main__":
    main()
