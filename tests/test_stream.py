"""The shared stream logic of ``Loaded`` (stop strings, finish reasons), on a scripted token source.

The scripted subclass stands in for nothing that could run: it feeds chosen text pieces so the
boundary cases (a stop string split across tokens) are exercised exactly.
"""

from pathlib import Path

import pytest

from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig
from toolkit.errors import InvalidSpec, ToolkitError


class Scripted(Loaded):
    backend = "scripted"

    def __init__(self, pieces, eos_at=None):
        super().__init__(LoadTarget(Path("scripted"), "scripted"))
        self.pieces, self.eos_at = pieces, eos_at

    def encode(self, text):
        return [1, 2]

    def _stream(self, ids, config):
        for i, piece in enumerate(self.pieces):
            yield [i], piece, i == self.eos_at


@pytest.mark.parametrize("stop,max_tokens,text,reason", [
    (("m ",), 10, "o", "stop"),  # the stop string spans two pieces
    (("zz",), 10, "om xy", "length"),  # a held-back prefix is released at the end
    (("m ",), 2, "om", "length"),
    (("y",), 10, "om x", "stop"),
    ((), 3, "om ", "length"),
])
def test_stop_and_length(stop, max_tokens, text, reason):
    chunks = list(Scripted(["o", "m", " ", "x", "y"]).stream("p", GenerationConfig(max_tokens=max_tokens, stop=stop)))
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == reason
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_eos_and_ignore_eos():
    model = Scripted(["a", "b", "c", "d"], eos_at=1)
    assert model.generate("p", max_tokens=10).finish_reason == "eos"
    result = model.generate("p", max_tokens=3, ignore_eos=True)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("abc", "length", 3)


def test_unloaded_model_refuses():
    model = Scripted(["a"])
    model._unload = lambda: None
    with model:
        pass
    with pytest.raises(ToolkitError, match="unloaded"):
        model.generate("p")


def test_config_validation():
    with pytest.raises(InvalidSpec, match="max_tokens"):
        GenerationConfig(max_tokens=0)
    with pytest.raises(InvalidSpec, match="top_p"):
        GenerationConfig(top_p=0)
