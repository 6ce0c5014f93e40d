from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from toolkit.commands import probe as probe_command
from toolkit.errors import InvalidSpec
from toolkit.facts.devices import Device, device_from_spec
from toolkit.facts.probe import device_for
from toolkit.units import GiB, parse_memory


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * 2**30), ("24GB", 24 * 10**9), ("512MiB", 512 * 2**20), ("1.5TB", 1_500_000_000_000),
    ("16 gb", 16 * 10**9), (1234, 1234), ("2048", 2048), ("0.5GiB", 2**29),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["24 gigs", "", "GiB", "-3GB", "1.2.3GB", "0GB", True, -5])
def test_parse_memory_rejects_garbage(bad):
    with pytest.raises(InvalidSpec, match="24GiB"):
        parse_memory(bad)


def test_specs():
    t4 = device_from_spec("T4")
    assert (t4.kind, t4.total_bytes, t4.compute_capability) == ("cuda", 16 * GiB, (7, 5))
    assert t4.bandwidth_bytes_s == 320e9
    a = device_from_spec("A100-80GB")
    assert a.total_bytes == 80 * GiB and a.compute_capability == (8, 0)
    assert device_from_spec("A100").total_bytes == 40 * GiB
    h = device_from_spec("2xH100")
    assert h.count == 2 and h.compute_capability == (9, 0)
    assert device_from_spec("RTX-4090").compute_capability == (8, 9)
    assert device_from_spec("rtx4090").name == "RTX-4090"
    for name in ("L4", "A10G", "V100", "H200"):
        assert device_from_spec(name).kind == "cuda"
    g = device_from_spec("24GiB")
    assert g.total_bytes == 24 * GiB and g.compute_capability == (8, 0) and g.free_bytes == g.total_bytes
    m = device_from_spec("M2-Max-32GB")
    assert m.kind == "mps" and m.total_bytes == 32 * GiB and m.free_bytes == int(32 * GiB * 2 / 3)
    assert m.bandwidth_bytes_s == 400e9
    assert device_from_spec("M3-Max-128GB").free_bytes == 96 * GiB  # 3/4 above 36 GB
    c = device_from_spec("cpu:16GiB")
    assert c.kind == "cpu" and c.free_bytes == 16 * GiB


def test_bad_spec_says_how():
    with pytest.raises(InvalidSpec, match="T4"):
        device_from_spec("GTX-Potato")
    with pytest.raises(InvalidSpec):
        device_from_spec("tpu:16GiB")


def test_device_for_flags():
    d = device_for(memory="24GiB", compute_capability="7.5")
    assert d.kind == "cuda" and d.total_bytes == 24 * GiB and d.compute_capability == (7, 5)
    assert device_for(memory="8GiB", kind="cpu").kind == "cpu"
    assert device_for(kind="T4", gpus=2).count == 2
    assert device_for(kind="A100-80GB", memory="40GiB").free_bytes == 40 * GiB
    with pytest.raises(InvalidSpec):
        device_for(memory="8GiB", kind="cpu", gpus=2)
    with pytest.raises(InvalidSpec):
        device_for(memory="8GiB", compute_capability="eight")


def test_probe_has_cpu_and_no_torch():
    # in a fresh interpreter: this test process may have imported torch for other tests
    code = ("import sys; from toolkit.facts.probe import probe, device_for; devices = probe(); cpu = devices[-1]; "
            "assert cpu.kind == 'cpu' and cpu.total_bytes > 0 and 0 < cpu.free_bytes <= cpu.total_bytes; "
            "assert device_for().kind in ('cuda', 'mps', 'cpu'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # probing never imports torch


def test_device_dict_and_html():
    d = Device("cuda", "X", 10, 5, 1, (8, 0), None, "spec")
    assert d.to_dict()["compute_capability"] == [8, 0]
    json.dumps(d.to_dict())
    assert "<table>" in d._repr_html_()


def test_main_probe_json(capsys):
    assert probe_command.run(argparse.Namespace(json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[-1]["kind"] == "cpu"
