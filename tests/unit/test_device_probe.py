"""The one GPU probe (``devices.cuda_available`` / ``device_view``) and ``modeling.resolve_device`` on it."""

from __future__ import annotations

import sys

import pytest

from autoquant_sweep import devices
from autoquant_sweep.errors import UserInputError
from autoquant_sweep.modeling import resolve_device


def test_device_view_answers_auto_like_torch():
    assert devices.device_view("cpu") == "cpu" and devices.device_view("cuda") == "cuda"
    import torch

    if not devices.torch_could_see_a_gpu():  # a CPU build of torch, or no GPU driver: never CUDA
        assert not torch.cuda.is_available() and devices.device_view("auto") == "cpu"
    else:
        assert devices.device_view("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_without_a_gpu_the_device_is_known_without_torch(monkeypatch):
    monkeypatch.setattr(devices, "_gpu_driver_present", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert devices.device_view("auto") == "cpu" and resolve_device("auto") == "cpu"
    with pytest.raises(UserInputError, match=r"^autoquant\.device=cuda but torch sees no CUDA device"):
        resolve_device("cuda")


def test_resolve_device_names_the_key_of_an_unknown_device():
    with pytest.raises(UserInputError, match=r"^autoquant\.device: unknown device 'tpu'; choose one of auto"):
        resolve_device("tpu")
