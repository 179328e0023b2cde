"""The device setting (runtime.device): validated in the config; a GPU configured on a machine without one falls
back to the CPU with a warning. CI has no GPU: the CPU path is what it tests."""

import logging

import pytest
import torch
from pydantic import ValidationError

from transfer_rec.config import RuntimeConfig
from transfer_rec.recommender.transfer import resolve_device


def test_the_config_takes_torch_device_names_only():
    assert RuntimeConfig().device == "cpu"
    for name in ("cpu", "cuda", "cuda:1", "mps"):
        assert RuntimeConfig(device=name).device == name
    for bad in ("gpu", "cuda:", "CUDA", "tpu"):
        with pytest.raises(ValidationError, match="device"):
            RuntimeConfig(device=bad)


def test_a_gpu_this_machine_lacks_falls_back_to_the_cpu_with_a_warning(caplog):
    assert resolve_device("cpu") == torch.device("cpu")
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    with caplog.at_level(logging.WARNING):
        assert resolve_device(absent) == torch.device("cpu")
    assert f"runtime.device {absent} is not available" in caplog.text
