"""Builds tiny TensorFlow models for the tests, in a subprocess (``python scoring_tf_models.py KIND DIR``).

``checkpoint``: a TF1 meta-graph checkpoint with the walk-through's tensor names whose logits are
``x @ W`` with W mapping feature i to class i (so the argmax of a one-hot row is its position).
``savedmodel``: a tf.Module SavedModel computing the same thing through a serving signature.
Run in its own process because graph mode (``disable_v2_behavior``) is process-wide.
"""

from __future__ import annotations

import os
import sys

import numpy as np

WIDTH = 784
CLASSES = 10


def weights() -> np.ndarray:
    matrix = np.zeros((WIDTH, CLASSES), dtype=np.float32)
    matrix[np.arange(CLASSES), np.arange(CLASSES)] = 1.0
    return matrix


def build_checkpoint(folder: str) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_v2_behavior()
    with v1.name_scope("network"):
        x = v1.placeholder(tf.float32, shape=(None, WIDTH), name="X")
        with v1.variable_scope("output"):
            kernel = v1.get_variable("kernel", initializer=weights())
            logits = tf.matmul(x, kernel)
    assert logits.name == "network/output/MatMul:0", logits.name
    saver = v1.train.Saver()
    os.makedirs(folder, exist_ok=True)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        saver.save(sess, os.path.join(folder, "mnist-tf.model"))


def build_savedmodel(folder: str) -> None:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            self.kernel = tf.Variable(weights())

        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": tf.matmul(x, self.kernel)}

    model = Tiny()
    tf.saved_model.save(model, folder, signatures=model.serve.get_concrete_function())


if __name__ == "__main__":
    kind, target = sys.argv[1], sys.argv[2]
    {"checkpoint": build_checkpoint, "savedmodel": build_savedmodel}[kind](target)
