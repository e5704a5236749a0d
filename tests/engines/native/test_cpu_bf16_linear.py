"""int8 weights times bfloat16 rows (csrc/bf16_linear_cpu.cpp): from 8 rows up, on a CPU with AVX-512 BF16, in
bfloat16 dot products; elsewhere, and below 8 rows, the rows widened to float32 for the float32 kernel. Either way
the result is x @ (q * scale)^T + bias summed in float32 and rounded once to bfloat16, whatever the rows, the panels
(an odd last one) and the threads."""

import pytest
import torch

from engines.native import cpu_kernel

OPS = cpu_kernel.fused_ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="the CPU ops did not build here (no compiler?)")


@pytest.mark.parametrize("rows", [1, 7, 8, 13, 32, 45])
def test_bfloat16_rows_times_int8_weights_match_float32(rows):
    from engines.native.cpu_quant import quantize_weight

    generator = torch.Generator().manual_seed(rows)
    for out, width in ((8 * 203, 64), (16 * 40, 640), (8, 98), (16, 99)):  # odd panels; one panel; odd width
        weight, bias = torch.randn(out, width, generator=generator), torch.randn(out, generator=generator)
        qweight, scales = quantize_weight(weight)
        blocked = OPS.block_weight(qweight)
        x = torch.randn(3, rows, width, generator=generator).bfloat16()
        want = torch.nn.functional.linear(x.float(), qweight.float() * scales[:, None], bias)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            got = OPS.blocked_linear(x, blocked, bias, scales)
            torch.set_num_threads(1)
            alone = OPS.blocked_linear(x, blocked, bias, scales)
        finally:
            torch.set_num_threads(threads)
        assert got.dtype == torch.bfloat16 and got.shape == (3, rows, out)
        # summed in float32, then one rounding: at most one bfloat16 step from the float32 result rounded
        torch.testing.assert_close(got.float(), want, atol=1e-4 * want.abs().max().item(), rtol=2 ** -7)
        assert torch.equal(got, alone)  # each column's sums in one order, however the threads split the panels
        unbiased = OPS.blocked_linear(x, blocked, None, scales)
        torch.testing.assert_close(unbiased.float(), want - bias, atol=1e-4 * want.abs().max().item(), rtol=2 ** -7)


def test_float32_weights_take_bfloat16_rows_widened_and_round_the_result_once():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(24, 40, generator=generator)
    x = torch.randn(16, 40, generator=generator).bfloat16()
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    got = OPS.blocked_linear(x, OPS.block_weight(weight), None, None)
    widened = OPS.blocked_linear(x.float(), OPS.block_weight(weight), None, None)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[1:], widened[1:].bfloat16())  # rounded as torch rounds
    assert got[0].isnan().all() and widened[0].isnan().all()
