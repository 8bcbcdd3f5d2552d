"""Shared test settings: a small, deterministic CPU setup."""
import os
import socket
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (32 px batches gain nothing from more; the CPUs are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_batch(b: int = 2, size: int = 32, seed: int = 0, num_classes: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (b, 3, size, size) and labels (b, size, size) in [0, num_classes) with a void band (255)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (b, size, size), generator=g)
    y[:, :2] = 255  # a void band
    return x, y


def load_example(name: str, module: str | None = None):
    """``examples/<name>.py`` imported as a module (``module``: its name in sys.modules terms; default ``name``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module or name, os.path.join(ROOT, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    """A free TCP port on localhost for a spawned gloo process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
