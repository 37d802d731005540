"""Value checks in forward passes: on CPU tensors always, elsewhere only with the debug switch (a host sync)."""

import pytest
import torch

from magvit2.nn import LFQ, ARTransformer, checks


def test_check_values_on_cpu_not_on_meta_or_empty():
    assert checks.check_values(torch.zeros(2))
    assert not checks.check_values(torch.zeros(0))
    assert not checks.check_values(torch.zeros(2, device="meta"))


def test_debug_switch_is_visible_and_restorable():
    before = checks.debug_checks()
    try:
        checks.set_debug_checks(True)
        assert checks.debug_checks()
    finally:
        checks.set_debug_checks(before)
    assert checks.debug_checks() == before


def test_cpu_forward_still_checks_values():
    with pytest.raises(ValueError, match="indices must lie in"):
        LFQ(dim=4).indices_to_codes(torch.tensor([[16]]))
    model = ARTransformer.from_preset("tiny")
    with pytest.raises(ValueError, match="pre ids must lie in"):
        model(torch.full((1, 4), 64), torch.zeros(1, 4, dtype=torch.long), torch.tensor([0]))


def test_meta_forward_skips_value_checks():
    with torch.device("meta"):
        lfq = LFQ(dim=4)
    codes = lfq.indices_to_codes(torch.full((1, 2), 99, device="meta"))  # would be out of range on a CPU
    assert codes.shape == (1, 2, 4) and codes.is_meta
