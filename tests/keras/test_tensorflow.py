"""TensorFlow-only: ``tf.distribute.MirroredStrategy`` over two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the training runs in a
fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import weight_constraints as wc
from weight_constraints.adapters.keras import MaxNorm, UnitNorm

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, kernel_constraint=MaxNorm(0.5), bias_constraint=MaxNorm(0.1)),
        keras.layers.Dense(1, kernel_constraint=UnitNorm()),
    ])
    model.compile(keras.optimizers.SGD(5.0), "mse")
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 8)).astype("float32")
y = rng.standard_normal((64, 1)).astype("float32")
model.fit(x, y, batch_size=16, epochs=3, verbose=0)

report = {"replicas": strategy.num_replicas_in_sync, "variables": []}
for variable in model.trainable_variables:
    replicas = [np.asarray(t) for t in strategy.experimental_local_results(variable.value)]
    constraint = variable.constraint
    report["variables"].append({
        "path": variable.path,
        "n_replicas": len(replicas),
        "replicas_equal": all(np.array_equal(replicas[0], r) for r in replicas[1:]),
        "kind": type(constraint).__qualname__,
        "norms": None if constraint is None else (
            np.atleast_1d(wc.node_norms(replicas[0], constraint.axis)).tolist()
        ),
        "limit": getattr(constraint, "max_value", 1.0),
    })
print("REPORT " + json.dumps(report))
"""


def test_mirrored_strategy_over_two_logical_cpus():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert report["replicas"] == 2
    assert [v["kind"] for v in report["variables"]] == [
        "MaxNorm",
        "MaxNorm",
        "UnitNorm",
        "NoneType",
    ]
    for variable in report["variables"]:
        assert variable["n_replicas"] == 2, variable
        assert variable["replicas_equal"], variable
        norms = variable["norms"]
        if norms is None:
            continue
        if variable["kind"] == "UnitNorm":
            assert all(abs(n - 1) <= 1e-6 for n in norms), variable
        else:
            assert max(norms) <= variable["limit"] * (1 + 1e-6), variable
            assert max(norms) >= variable["limit"] * 0.99, variable  # the projection was active
