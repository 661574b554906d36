"""Building ticket tensors: inputs whose storage dtype contradicts the spec dtype are refused."""

from __future__ import annotations

import numpy as np
import pytest

from lotavec.errors import LotavecError
from lotavec.ticket import TicketTensor

CASES = [
    (np.float32, "BF16"),  # float32 arrays viewed as uint16 give twice as many "values"
    (np.float16, "F32"),
    (np.float32, "F16"),
]


@pytest.mark.parametrize("np_dtype, dtype", CASES)
def test_from_finetuned_refuses_storage_of_another_dtype(np_dtype, dtype):
    base = np.arange(10).astype(np_dtype)
    with pytest.raises(LotavecError):
        TicketTensor.from_finetuned("w", base, base + 1, np.array([1, 5]), dtype)
