"""``cpu_memory: keep``: glibc serves and keeps the step's large buffers in its heap."""

import ctypes
import ctypes.util
import platform

import pytest
import torch

from thyroid_monai.engine import MultitaskTrainer
from thyroid_monai.engine.memory import apply_cpu_memory, keep_freed_memory
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.networks import MultitaskUNet

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def mallinfo() -> MallInfo2:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


@needs_glibc
def test_a_large_buffer_comes_from_the_heap_and_stays_there_after_it_is_freed():
    assert keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 24 * 2**20  # a 256-px activation of batch 8 is 8-34 MB
    mapped_before = mallinfo().hblkhd
    pointer = libc.malloc(size)
    try:
        assert mallinfo().hblkhd == mapped_before  # not a fresh mapping
        heap_in_use = mallinfo().arena
    finally:
        libc.free(pointer)
    assert mallinfo().arena == heap_in_use  # not returned to the system


def test_the_choice_is_checked():
    with pytest.raises(ValueError, match="cpu_memory"):
        apply_cpu_memory("jemalloc")
    assert apply_cpu_memory("system") is False
    net = MultitaskUNet(num_classes=3)
    with pytest.raises(ValueError, match="cpu_memory"):
        MultitaskTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[],
                         network=net, optimizer=torch.optim.SGD(net.parameters(), 0.1),
                         loss_function=MultitaskLoss(), cpu_memory="jemalloc")  # fmt: skip


@needs_glibc
@pytest.mark.parametrize(("choice", "kept"), [("keep", True), ("system", False)])
def test_a_cpu_trainer_applies_its_choice(choice, kept):
    net = MultitaskUNet(num_classes=3)
    trainer = MultitaskTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[],
                               network=net, optimizer=torch.optim.SGD(net.parameters(), 0.1),
                               loss_function=MultitaskLoss(), cpu_memory=choice)  # fmt: skip
    assert trainer.cpu_memory_kept is kept
