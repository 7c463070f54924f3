"""Keras tests run once per backend, one backend per process (``.ci/test`` sets KERAS_BACKEND).

``test_tensorflow.py`` holds what only the TensorFlow backend has (``tf.distribute``); it is not
collected under another backend.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

collect_ignore = [] if keras.backend.backend() == "tensorflow" else ["test_tensorflow.py"]


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
