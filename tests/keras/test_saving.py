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

import keras
import numpy as np
import pytest
from keras import layers

import weight_constraints as wc
from weight_constraints.adapters import keras as wk

LOAD = r"""
import json, sys
import keras
if sys.argv[1] == "import":
    import weight_constraints.adapters.keras
results = []
for path in sys.argv[2:]:
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
print("RESULT " + json.dumps(results))
"""


def run(script: str, mode: str, *paths) -> list:
    """Run ``script`` in a fresh process with ``mode`` and ``paths`` (one process for all of
    them: each start imports Keras and its backend); its ``RESULT`` line, decoded."""
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script, mode, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def load_in_a_fresh_process(path, import_adapter: bool) -> dict:
    (result,) = run(LOAD, "import" if import_adapter else "no-import", path)
    return result


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            layers.Dense(4, kernel_constraint=wk.MaxNorm(2), bias_constraint=wk.NonNeg()),
            layers.Dense(2, kernel_constraint=wk.MinMaxNorm(0.5, 1), bias_constraint=wk.UnitNorm()),
        ]
    )
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    model.save(path)
    return path


def test_a_process_without_the_adapter_gets_an_error_naming_it(saved):
    result = load_in_a_fresh_process(saved, import_adapter=False)
    assert not result["adapter_imported"]
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert "weight_constraints.adapters.keras" in result["error"]
    assert "weight_constraints.MaxNorm" in result["error"]


def test_a_process_with_the_adapter_gets_our_classes(saved):
    result = load_in_a_fresh_process(saved, import_adapter=True)
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


def test_h5_files_do_not_substitute_either(tmp_path):
    """The legacy HDF5 format writes the same configs: the same error, never a substitute."""
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2, kernel_constraint=wk.MaxNorm(2))])
    model.save(tmp_path / "model.h5")
    result = load_in_a_fresh_process(tmp_path / "model.h5", import_adapter=False)
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert "weight_constraints>MaxNorm" in result["error"]
    loaded = keras.saving.load_model(tmp_path / "model.h5")
    assert loaded.layers[0].kernel_constraint == wk.MaxNorm(2)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.layers[0].kernel),
        keras.ops.convert_to_numpy(model.layers[0].kernel),
    )


# -- core objects used directly as layer constraints (Dense(kernel_constraint=wc.MaxNorm(2))) ------

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

CORE_CLASSES = [
    "weight_constraints._objects.MaxNorm",
    "weight_constraints._objects.NonNeg",
    "weight_constraints._objects.Simplex",
    "weight_constraints._objects.Clip",
]
SAVERS = ["import", "no-import"]
SUFFIXES = ["keras", "h5"]


@pytest.fixture(scope="module")
def core_files(tmp_path_factory):
    """Core objects saved as layer constraints by a process with the adapter and by one
    without, in both formats, then loaded by a process without the adapter and by one with it:
    ``{(saver, suffix): (path, loaded without, loaded with)}`` (four processes in all)."""
    folder = tmp_path_factory.mktemp("core")
    paths = {(s, suffix): folder / f"{s}.{suffix}" for s in SAVERS for suffix in SUFFIXES}
    for saver in SAVERS:
        run(SAVE_CORE, saver, *(paths[saver, suffix] for suffix in SUFFIXES))
    without = run(LOAD, "no-import", *paths.values())
    with_adapter = run(LOAD, "import", *paths.values())
    return {
        key: (path, a, b)
        for (key, path), a, b in zip(paths.items(), without, with_adapter, strict=True)
    }


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("saver", SAVERS, ids=["saved-with", "saved-without"])
def test_core_objects_never_load_as_keras_classes(core_files, saver, suffix):
    """Core objects as layer constraints were saved as class_name 'MaxNorm' and loaded silently
    as keras.constraints.MaxNorm where the adapter was not imported by the loading (or the
    saving) process. Now: ours with the adapter, an error without it, whoever saved the file."""
    path, without, with_adapter = core_files[saver, suffix]
    assert "loaded" not in without, f"loaded silently as {without.get('loaded')}"
    assert "weight_constraints" in without["error"]
    assert with_adapter["loaded"] == CORE_CLASSES
    loaded = keras.saving.load_model(path)  # this process has the adapter
    first, second = loaded.layers
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
