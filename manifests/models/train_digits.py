"""Train the example model: a 784-300-100-10 ReLU network in a TF1 meta-graph checkpoint.

The shipped files under ``tf-dnn-mnist/model/`` are what this script writes. They stand in for
the MNIST model of Azure's "deploy a model for inference with GPU" walk-through, whose entry script
(``manifests/src/score.py``) looks up the tensors ``network/X:0`` (float32 placeholder, shape
[None, 784]) and ``network/output/MatMul:0`` (the logits) by name.

Data: scikit-learn's bundled ``load_digits`` (8x8 images, 16 grey levels), so no download is needed.
Each image goes through the same transform the tests use to build requests:

1. scale pixels to [0, 1] by dividing by 16;
2. upsample 8x8 to 28x28 by nearest neighbour: pixel (r, c) of the 28x28 image takes pixel
   (r * 8 // 28, c * 8 // 28) of the 8x8 image;
3. flatten row-major to 784 float32 values.

The held-out split is ``train_test_split(test_size=0.2, random_state=0)``; nothing from it is used
in training. Graph building uses ``tf.compat.v1`` with fixed seeds, so a rerun on the same TF
version gives the same accuracy.

Usage: ``python manifests/models/train_digits.py [OUTPUT_DIR]`` (default: next to this file).
"""

from __future__ import annotations

import os
import sys

import numpy as np

SEED = 0
INDEX = np.arange(28) * 8 // 28


def to_mnist_rows(images: np.ndarray) -> np.ndarray:
    """Turn (n, 8, 8) digit images with values 0..16 into (n, 784) float32 rows in [0, 1]."""
    scaled = images.astype(np.float32) / 16.0
    return np.ascontiguousarray(scaled[:, INDEX][:, :, INDEX].reshape(len(images), 784))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, x_test, y_train, y_test) of the transformed digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows = to_mnist_rows(digits.images)
    x_train, x_test, y_train, y_test = train_test_split(
        rows, digits.target, test_size=0.2, random_state=SEED
    )
    return x_train, x_test, y_train, y_test


def dense(inputs, fan_in: int, fan_out: int, name: str, activation):  # type: ignore[no-untyped-def]
    """One fully connected layer; its matmul op is ``<scope>/<name>/MatMul``."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with v1.variable_scope(name):
        init = v1.glorot_uniform_initializer(seed=SEED)
        weights = v1.get_variable("kernel", shape=(fan_in, fan_out), initializer=init)
        product = tf.matmul(inputs, weights)
        if activation is None:
            # No bias on the output layer: the walk-through's score.py reads the logits from the
            # matmul op itself ("network/output/MatMul:0"), so a bias added after it would be ignored.
            return product
        bias = v1.get_variable("bias", shape=(fan_out,), initializer=v1.zeros_initializer())
        return activation(product + bias)


def train(output_dir: str, epochs: int = 40) -> float:
    """Train, save ``mnist-tf.model.*`` and ``checkpoint`` into ``output_dir``; return test accuracy."""
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_v2_behavior()
    v1.reset_default_graph()
    v1.set_random_seed(SEED)
    x_train, x_test, y_train, y_test = load_split()

    with v1.name_scope("network"):
        x = v1.placeholder(tf.float32, shape=(None, 784), name="X")
        hidden1 = dense(x, 784, 300, "hidden1", tf.nn.relu)
        hidden2 = dense(hidden1, 300, 100, "hidden2", tf.nn.relu)
        logits = dense(hidden2, 100, 10, "output", None)
    assert logits.name == "network/output/MatMul:0", logits.name
    y = v1.placeholder(tf.int64, shape=(None,), name="y")
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    step = v1.train.AdamOptimizer(1e-3).minimize(loss)
    # Only the network's weights: Adam's slots would triple the checkpoint for nothing.
    saver = v1.train.Saver(var_list=v1.trainable_variables())

    rng = np.random.default_rng(SEED)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        for _ in range(epochs):
            order = rng.permutation(len(x_train))
            for start in range(0, len(order), 64):
                batch = order[start : start + 64]
                sess.run(step, feed_dict={x: x_train[batch], y: y_train[batch]})
        predicted = sess.run(logits, feed_dict={x: x_test}).argmax(axis=1)
        accuracy = float((predicted == y_test).mean())
        os.makedirs(output_dir, exist_ok=True)
        saver.save(sess, os.path.join(output_dir, "mnist-tf.model"), write_meta_graph=True)
    # A relative path in the "checkpoint" file keeps the shipped folder relocatable.
    v1.train.update_checkpoint_state(output_dir, "mnist-tf.model", ["mnist-tf.model"])
    return accuracy


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf-dnn-mnist", "model")
    target = sys.argv[1] if len(sys.argv) > 1 else default
    print(f"held-out accuracy: {train(target):.4f}")
