"""Saved models and the processes that load them.

Keras writes a saved object's ``type(obj).__name__`` as its ``class_name``; where the registered
name is unknown (a process that has not imported the adapter) ``keras.constraints.get`` looks the
``class_name`` up among Keras's own classes. With our classes named ``MaxNorm`` a model saved
with exact constraints loaded silently with Keras's inexact ones (issue item 13). Loading must
give our classes or fail with an error naming them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import weight_constraints as wc
from weight_constraints.adapters import keras as wk

LOAD = r"""
import json, sys
import keras

def load(paths):
    results = []
    for path in paths:
        try:
            model = keras.saving.load_model(path)
            result = {
                "loaded": [
                    f"{type(c).__module__}.{type(c).__qualname__}"
                    for layer in model.layers
                    for c in (layer.kernel_constraint, layer.bias_constraint)
                ]
            }
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"}
        result["adapter_imported"] = "weight_constraints.adapters.keras" in sys.modules
        results.append(result)
    return results

without = load(sys.argv[1:])  # a process that has not imported the adapter
import weight_constraints.adapters.keras
print("RESULT " + json.dumps({"without": without, "with": load(sys.argv[1:])}))
"""

SAVE_CORE = r"""
import sys
import keras
import weight_constraints as wc
if sys.argv[1] == "import":
    import weight_constraints.adapters.keras
model = keras.Sequential([
    keras.Input((3,)),
    keras.layers.Dense(4, kernel_constraint=wc.MaxNorm(2), bias_constraint=wc.NonNeg()),
    keras.layers.Dense(3, kernel_constraint=wc.Simplex(axis=0), bias_constraint=wc.Clip(-1, 1)),
])
for path in sys.argv[2:]:
    model.save(path)
assert ("weight_constraints.adapters.keras" in sys.modules) == (sys.argv[1] == "import")
print("RESULT []")
"""


def run(script: str, *arguments) -> Any:
    """Run ``script`` in a fresh process with ``arguments``; its ``RESULT`` line, decoded."""
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


SAVERS = ["import", "no-import"]
SUFFIXES = ["keras", "h5"]
CORE_FILES = [f"core-{saver}.{suffix}" for saver in SAVERS for suffix in SUFFIXES]


def save_and_load_elsewhere(folder: Path) -> dict:
    """The saved files, and what a fresh process loads from each: ``{file: (loaded without
    the adapter, loaded with it)}``. ``model.keras`` and ``model.h5`` hold the adapter's
    classes; ``core-{saver}.{suffix}`` core objects as layer constraints, saved by this process
    (which has the adapter) and by a fresh one without it. Two processes in all (each start
    imports Keras and its backend): the one that saves without the adapter, and one that loads
    every file first without the adapter, then imports it and loads them again."""
    model = keras.Sequential(
        [
            keras.Input((3,)),
            layers.Dense(4, kernel_constraint=wk.MaxNorm(2), bias_constraint=wk.NonNeg()),
            layers.Dense(2, kernel_constraint=wk.MinMaxNorm(0.5, 1), bias_constraint=wk.UnitNorm()),
        ]
    )
    model.save(folder / "model.keras")
    h5 = keras.Sequential([keras.Input((3,)), layers.Dense(2, kernel_constraint=wk.MaxNorm(2))])
    h5.save(folder / "model.h5")
    np.save(folder / "model.h5.kernel.npy", keras.ops.convert_to_numpy(h5.layers[0].kernel))
    core = keras.Sequential(
        [
            keras.Input((3,)),
            layers.Dense(4, kernel_constraint=wc.MaxNorm(2), bias_constraint=wc.NonNeg()),
            layers.Dense(3, kernel_constraint=wc.Simplex(axis=0), bias_constraint=wc.Clip(-1, 1)),
        ]
    )  # SAVE_CORE's model, saved by a process with the adapter: this one
    assert "weight_constraints.adapters.keras" in sys.modules
    for suffix in SUFFIXES:
        core.save(folder / f"core-import.{suffix}")
    run(SAVE_CORE, "no-import", *(folder / f"core-no-import.{suffix}" for suffix in SUFFIXES))
    files = ["model.keras", "model.h5", *CORE_FILES]
    loaded = run(LOAD, *(folder / name for name in files))
    return {
        name: (without, with_adapter)
        for name, without, with_adapter in zip(
            files, loaded["without"], loaded["with"], strict=True
        )
    }


@pytest.fixture(scope="module")
def saved(once_per_run) -> tuple[Path, dict]:
    return once_per_run("saving", save_and_load_elsewhere)


def test_a_process_without_the_adapter_gets_an_error_naming_it(saved):
    _, loaded = saved
    result, _ = loaded["model.keras"]
    assert not result["adapter_imported"]
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert "weight_constraints.adapters.keras" in result["error"]
    assert "weight_constraints.MaxNorm" in result["error"]


def test_a_process_with_the_adapter_gets_our_classes(saved):
    _, loaded = saved
    _, result = loaded["model.keras"]
    assert result["adapter_imported"]
    module = "weight_constraints.adapters.keras"
    assert result["loaded"] == [
        f"{module}.MaxNorm",
        f"{module}.NonNeg",
        f"{module}.MinMaxNorm",
        f"{module}.UnitNorm",
    ]


@pytest.mark.parametrize("name", ["MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg"])
def test_configs_saved_with_the_former_class_names_still_load_as_ours(name):
    config = {
        "module": "weight_constraints.adapters.keras",
        "class_name": name,
        "config": {},
        "registered_name": f"weight_constraints>{name}",
    }
    for load in (keras.constraints.get, keras.constraints.deserialize, wk.get, wk.deserialize):
        assert type(load(config)) is getattr(wk, name)


def test_h5_files_do_not_substitute_either(saved):
    """The legacy HDF5 format writes the same configs: the same error, never a substitute."""
    folder, loaded = saved
    result, _ = loaded["model.h5"]
    assert not result["adapter_imported"]
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert "weight_constraints>MaxNorm" in result["error"]
    model = keras.saving.load_model(folder / "model.h5")  # this process has the adapter
    assert model.layers[0].kernel_constraint == wk.MaxNorm(2)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.layers[0].kernel),
        np.load(folder / "model.h5.kernel.npy"),
    )


# -- core objects used directly as layer constraints (Dense(kernel_constraint=wc.MaxNorm(2))) ------

CORE_CLASSES = [
    "weight_constraints._objects.MaxNorm",
    "weight_constraints._objects.NonNeg",
    "weight_constraints._objects.Simplex",
    "weight_constraints._objects.Clip",
]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("saver", SAVERS, ids=["saved-with", "saved-without"])
def test_core_objects_never_load_as_keras_classes(saved, saver, suffix):
    """Core objects as layer constraints were saved as class_name 'MaxNorm' and loaded silently
    as keras.constraints.MaxNorm where the adapter was not imported by the loading (or the
    saving) process. Now: ours with the adapter, an error without it, whoever saved the file."""
    folder, loaded = saved
    without, with_adapter = loaded[f"core-{saver}.{suffix}"]
    assert not without["adapter_imported"] and with_adapter["adapter_imported"]
    assert "loaded" not in without, f"loaded silently as {without.get('loaded')}"
    assert "weight_constraints" in without["error"]
    assert with_adapter["loaded"] == CORE_CLASSES
    model = keras.saving.load_model(folder / f"core-{saver}.{suffix}")  # with the adapter
    first, second = model.layers
    assert (first.kernel_constraint, first.bias_constraint) == (wc.MaxNorm(2), wc.NonNeg())
    assert (second.kernel_constraint, second.bias_constraint) == (wc.Simplex(), wc.Clip(-1, 1))


@pytest.mark.parametrize("name", ["MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg"])
def test_core_configs_saved_before_the_rename_load_as_ours(name):
    """Files written before the core classes were renamed hold class_name 'MaxNorm' with the
    registered name 'weight_constraints.core>MaxNorm': they load as the core classes."""
    config = {
        "module": "weight_constraints._objects",
        "class_name": name,
        "config": {},
        "registered_name": f"weight_constraints.core>{name}",
    }
    for load in (keras.constraints.get, keras.constraints.deserialize):
        assert type(load(config)) is getattr(wc, name)


@pytest.mark.parametrize(
    "constraint",
    [
        wc.MaxNorm(2),
        wc.UnitNorm(1),
        wc.MinMaxNorm(0.5, 1),
        wc.NonNeg(),
        wc.Clip(-1, 1),
        wc.BoxMaxNorm(-1, 1, 2),
        wc.Simplex(2.0),
        wc.MaxL1Norm(1.5),
    ],
    ids=repr,
)
def test_core_objects_serialise_under_names_keras_does_not_have(constraint):
    config = keras.saving.serialize_keras_object(constraint)
    name = type(constraint).__qualname__
    assert config["class_name"] == f"weight_constraints.{name}"
    assert config["class_name"] not in keras.constraints.__dict__
    assert config["registered_name"] == f"weight_constraints.core>{name}"
    assert keras.constraints.get(config) == constraint
    unregistered = {**config, "registered_name": config["class_name"]}  # saved without adapter
    assert type(keras.constraints.get(unregistered)) is type(constraint)
