from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from training import torch_checkpoint

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_strided.pth"


def test_reads_strided_offset_and_typed_tensors_like_torch():
    # Written by torch 2.13 with _use_new_zipfile_serialization=False (see the values).
    state = torch_checkpoint.load_state_dict(FIXTURE)
    np.testing.assert_array_equal(state["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(state["offset_view"], [[6, 7], [10, 11]])
    assert state["halves"].dtype == np.float16 and state["halves"].tolist() == [0.5, -1.5]
    assert state["counter"].dtype == np.int64 and state["counter"].shape == ()
    assert state["transposed"].flags.c_contiguous


def test_refuses_code_in_a_checkpoint(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this would have run",))

    buffer = io.BytesIO()
    for item in (torch_checkpoint.MAGIC_NUMBER, 1001, {}):
        pickle.dump(item, buffer)
    pickle.dump(Exploit(), buffer)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        torch_checkpoint.load_state_dict(path)


def test_rejects_other_files(tmp_path):
    path = tmp_path / "not.pth"
    path.write_bytes(pickle.dumps(12345))
    with pytest.raises(ValueError, match="magic number"):
        torch_checkpoint.load_state_dict(path)
