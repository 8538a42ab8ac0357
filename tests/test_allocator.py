"""The CPU allocator setting: glibc keeps freed blocks mapped in its heap under ``retain`` and gives them back
under ``system``; the configs apply the bundle's setting."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from scripts.engine import ALLOCATOR_MODES, allocator_mode, configure_allocator

MIB = 2**20
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's"
)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]


def mapped_and_heap() -> tuple[int, int]:
    """(bytes glibc holds in separate mmapped blocks, bytes of its main heap), from mallinfo2."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.hblkhd, info.arena


@pytest.fixture
def restore_mode():
    before = allocator_mode()
    yield
    configure_allocator(before)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="pool"):
        configure_allocator("pool")
    assert set(ALLOCATOR_MODES) == {"retain", "system"}


def resident() -> int:
    """This process's resident bytes (Linux /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@glibc_only
def test_retain_serves_large_blocks_from_the_heap_and_keeps_them(restore_mode):
    assert configure_allocator("retain") and allocator_mode() == "retain"
    mapped_before, _ = mapped_and_heap()
    resident_before = resident()
    block = torch.ones(256 * MIB, dtype=torch.uint8)
    mapped_during, heap_during = mapped_and_heap()
    assert mapped_during - mapped_before < 256 * MIB  # not a separate mmap
    assert heap_during >= 256 * MIB
    del block
    assert resident() - resident_before >= 200 * MIB  # freed, yet kept mapped for the next block


@glibc_only
def test_system_after_retain_gives_the_kept_memory_back(restore_mode):
    configure_allocator("retain")
    resident_before = resident()
    kept = torch.ones(256 * MIB, dtype=torch.uint8)
    del kept
    assert resident() - resident_before >= 200 * MIB
    assert configure_allocator("system") and allocator_mode() == "system"
    assert resident() - resident_before < 50 * MIB  # malloc_trim returned the freed pages


@glibc_only
def test_the_network_computes_the_same_numbers_either_way(restore_mode):
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).eval()
    x = torch.randn(1, 4, 40, 40, 30)
    outputs = []
    for mode in ("system", "retain", "system"):
        configure_allocator(mode)
        with torch.no_grad():
            outputs.append(network(x))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[1], outputs[2])


@glibc_only
def test_the_inference_config_applies_the_bundles_setting(restore_mode):
    configure_allocator("system")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    assert parser["allocator"] == "retain"
    parser.get_parsed_content("initialize")  # runs the list's expressions, as `monai.bundle run` does
    assert allocator_mode() == "retain"


def test_the_training_config_reads_the_inference_configs_setting():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    assert parser.get_parsed_content("allocator") == "retain"
    assert any("configure_allocator(@allocator)" in step for step in parser["initialize"])
