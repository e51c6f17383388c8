"""The quantizers against a float64 reference of grouped asymmetric quantization."""

import numpy as np
import pytest
import torch

from kv_transition.kv.quant.quantizers import pack_codes, quantize, unpack_codes

SHAPE = (1, 2, 64, 32)  # batch, heads, tokens, head_dim
# relative MSE a standard-normal tensor may reach, groups of 32: a uniform quantizer's error is
# step^2 / 12 with step = range / (2^bits - 1), and a group of 32 normals spans ~4 sigma
REL_MSE_BOUND = {8: 5e-5, 4: 1e-2, 3: 4e-2, 2: 0.2}


def reference(x: np.ndarray, bits: int, axis: str, group: int):
    """float64: exact min/max, scale = range / qmax, no float16 metadata. Returns (deq, step)."""
    b, h, t, d = x.shape
    g = (x.reshape(b, h, t, d // group, group) if axis == "token"
         else x.reshape(b, h, t // group, group, d).swapaxes(-1, -2))
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    step = (hi - lo) / (2 ** bits - 1)
    step = np.where(step == 0, 1.0, step)
    deq = np.clip(np.round((g - lo) / step), 0, 2 ** bits - 1) * step + lo
    step = np.broadcast_to(step, g.shape)
    if axis == "channel":
        deq, step = deq.swapaxes(-1, -2), step.swapaxes(-1, -2)
    return deq.reshape(x.shape), step.reshape(x.shape)


def _steps(q) -> torch.Tensor:
    """Each element's own float16 scale, broadcast back to (B, H, T, D)."""
    s = q.scale.float().unsqueeze(-1)
    if q.axis == "token":
        return s.expand(*s.shape[:-1], q.group).reshape(*q.scale.shape[:3], -1)
    return s.expand(*s.shape[:-1], q.group).transpose(-1, -2).reshape(
        q.scale.shape[0], q.scale.shape[1], -1, q.head_dim)


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_round_trips_and_uses_bits_per_code(bits):
    codes = torch.randint(0, 2 ** bits, (3, 5, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 5, 64 * bits // 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_byte_packing_keeps_the_eight_codes_per_word_layout(bits):
    """Widths dividing 8 take a uint8 shortcut; it must store exactly what the general
    scheme (8 codes in one 8*bits-bit word, little-endian bytes) stores."""
    codes = torch.randint(0, 2 ** bits, (3, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    word = (codes.reshape(3, 8, 8).to(torch.int64) << (torch.arange(8) * bits)).sum(-1)
    general = ((word.unsqueeze(-1) >> (torch.arange(bits) * 8)) & 0xFF).to(torch.uint8)
    assert torch.equal(pack_codes(codes, bits), general.reshape(3, -1))


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_quantizer_matches_float64_reference_within_bounds(bits, axis):
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    q = quantize(x, bits, axis, 32)
    deq = q.dequantize(torch.float32).double()
    ref, step = reference(x.double().numpy(), bits, axis, 32)
    err = (deq - x.double()).abs()
    # the hard bound: half of the element's own (float16, outward-rounded) step
    assert torch.all(err <= _steps(q).double() / 2 + 1e-6)
    # and it agrees with the exact float64 quantizer to within one step (ties may round apart)
    assert np.all(np.abs(deq.numpy() - ref) <= step * 1.01 + 1e-6)
    rel = float((err ** 2).sum() / (x.double() ** 2).sum())
    rel_ref = float(((ref - x.double().numpy()) ** 2).sum() / (x.double().numpy() ** 2).sum())
    assert rel == pytest.approx(rel_ref, rel=0.1)
    assert rel < REL_MSE_BOUND[bits]


def test_error_grows_as_bits_shrink():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    errs = [float(((quantize(x, b, "token", 32).dequantize(torch.float32) - x) ** 2).mean())
            for b in (8, 4, 3, 2)]
    assert errs == sorted(errs) and errs[0] * 1000 < errs[-1]


def test_offset_and_constant_groups_stay_within_bound():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) + 300.0
    x[..., :8, :] = 2.5  # constant groups along the token axis
    for axis in ("token", "channel"):
        q = quantize(x, 4, axis, 8)
        err = (q.dequantize(torch.float32) - x).abs()
        assert torch.all(err <= _steps(q) / 2 + 1e-4)
    q = quantize(x, 4, "channel", 8)
    assert torch.allclose(q.dequantize(torch.float32)[..., :8, :], x[..., :8, :], atol=1e-3)


def test_bfloat16_in_and_out():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    q = quantize(x, 8, "token", 32)
    out = q.dequantize(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert float((out.float() - x.float()).abs().max()) < 0.05


def test_appending_chunks_equals_quantizing_them_apart():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    for axis in ("token", "channel"):
        a, b = quantize(x[:, :, :32], 2, axis, 16), quantize(x[:, :, 32:], 2, axis, 16)
        joined = a.cat(b)
        assert joined.n_tokens == 64
        assert joined.nbytes == a.nbytes + b.nbytes
        assert torch.equal(joined.dequantize(torch.float32),
                           torch.cat([a.dequantize(torch.float32), b.dequantize(torch.float32)], 2))


def test_invalid_shapes_are_refused():
    x = torch.randn(1, 1, 30, 32)
    with pytest.raises(ValueError, match="multiple of 32 tokens"):
        quantize(x, 4, "channel", 32)
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        quantize(x, 9, "token", 32)
    with pytest.raises(ValueError, match="axis"):
        quantize(x, 4, "head", 32)
