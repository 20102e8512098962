"""The Keras side of `bench_keras.py`: the package's VAE written in Keras 3 on TensorFlow,
trained step by step, timed, on request of the driver.

Runs in the benchmark's own virtual environment (TensorFlow is no project dependency) and
imports nothing of plumelink, so the layers and the loss are restated here; keep them equal to
`plumelink.models.networks.VAE` and `plumelink.models.fit.vae_loss`:

- encoder Dense(4062 -> 1024) LeakyReLU(0.01), Dense(512) LeakyReLU(0.01); mean and log
  variance Dense(64) each (linear); decoder Dense(512) LeakyReLU, Dense(1024) LeakyReLU,
  Dense(4062) linear;
- z = mean + eps * exp(0.5 log_var) in training;
- loss: mean over the batch of (sum over pixels of (recon - x)^2 + beta KL), beta the cyclical
  KL weight of `cyclic_kl_weight` (4 cycles, maximum 0.5, linear ramp over half a cycle) at
  the optimiser's step; the reconstruction MSE (the validation criterion) is computed too;
- Adam, lr 1e-4, weight decay 1e-5, epsilon 1e-8 (torch's). Keras applies weight decay
  decoupled (AdamW), torch's Adam adds it to the gradient: one more multiply-add per weight
  on either side, the same cost.

Protocol (lines on stdin/stdout): after building and compiling the step, print one JSON line
``{"ready": ..., "threads": ...}``; then for each line ``round`` run `--warmup` untimed and
`--steps` timed steps and print ``{"step_seconds": [...]}``; ``quit`` (or end of input) ends.

    python keras_worker.py [--xla] [--batch 128] [--steps 20] [--warmup 3]
                           [--total-steps 1000] [--device cpu|gpu] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

N_PRIMARY = 4062
HIDDEN = (1024, 512)
LATENT = 64
LEAKY_SLOPE = 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xla", action="store_true", help="compile the step with XLA")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--total-steps", type=int, default=1000,
                        help="steps of the KL schedule (as vae_loss(total_steps))")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra- and inter-op threads (default: TensorFlow's choice)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np
    import tensorflow as tf

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from keras import layers

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            print(json.dumps({"error": "TensorFlow sees no GPU"}), flush=True)
            return 2
        tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 as torch

    total = float(args.total_steps)

    def beta_at(step: tf.Tensor) -> tf.Tensor:
        period = tf.maximum(total / 4.0, 1.0)
        phase = tf.math.floormod(step, period) / period
        return 0.5 * tf.minimum(phase / 0.5, 1.0)

    class VAE(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = keras.Sequential(
                [layers.Dense(HIDDEN[0]), layers.LeakyReLU(LEAKY_SLOPE),
                 layers.Dense(HIDDEN[1]), layers.LeakyReLU(LEAKY_SLOPE)])
            self.to_mean = layers.Dense(LATENT)
            self.to_log_var = layers.Dense(LATENT)
            self.decoder = keras.Sequential(
                [layers.Dense(HIDDEN[1]), layers.LeakyReLU(LEAKY_SLOPE),
                 layers.Dense(HIDDEN[0]), layers.LeakyReLU(LEAKY_SLOPE),
                 layers.Dense(N_PRIMARY)])
            self.noise = keras.random.SeedGenerator(0)

        def call(self, x, training=False):
            h = self.encoder(x)
            mean, log_var = self.to_mean(h), self.to_log_var(h)
            z = mean
            if training:
                eps = keras.random.normal(tf.shape(mean), seed=self.noise)
                z = mean + eps * tf.exp(0.5 * log_var)
            return self.decoder(z), mean, log_var

        def train_step(self, data):
            x = data[0] if isinstance(data, tuple) else data
            with tf.GradientTape() as tape:
                recon, mean, log_var = self(x, training=True)
                sq = tf.reduce_sum(tf.square(recon - x), axis=1)
                kl = -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var),
                                          axis=1)
                beta = beta_at(tf.cast(self.optimizer.iterations, tf.float32))
                loss = tf.reduce_mean(sq + beta * kl)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
            return {"loss": loss, "recon_mse": tf.reduce_mean(sq) / N_PRIMARY}

    keras.utils.set_random_seed(0)
    model = VAE()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4, weight_decay=1e-5,
                                                  epsilon=1e-8),
                  jit_compile=bool(args.xla))
    rng = np.random.default_rng(0)
    data = [tf.constant(rng.standard_normal((args.batch, N_PRIMARY), dtype=np.float32))
            for _ in range(4)]
    model(data[0])  # build the variables
    step = 0

    def train(n: int) -> list[float]:
        nonlocal step
        seconds = []
        for _ in range(n):
            t = time.perf_counter()
            model.train_on_batch(data[step % 4])  # returns numpy: the step has finished
            seconds.append(time.perf_counter() - t)
            step += 1
        return seconds

    train(max(args.warmup, 1))  # traces and compiles the step
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(json.dumps({
        "threads_used": f"{args.threads} (explicit)" if args.threads
        else f"TF default on {cores} cores",
        "ready": True, "framework": "keras-xla" if args.xla else "keras",
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "cores": cores,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "device": args.device}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            train(args.warmup)
            print(json.dumps({"step_seconds": train(args.steps)}), flush=True)
        elif command == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
