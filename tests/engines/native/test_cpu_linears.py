"""Pre-packed oneDNN linears: same logits as the plain model, weights replaced rather than copied."""

import pytest
import torch

from engines.native.cpu_linears import pack_cpu_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _pair(model_dir):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    packed = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return plain, packed


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gemma_dir"])
def test_packed_model_gives_the_plain_logits_for_any_row_count(request, which):
    plain, packed = _pair(request.getfixturevalue(which))
    linears = [m for m in plain.modules() if type(m) is torch.nn.Linear]
    assert pack_cpu_linears(packed) == len(linears)
    vocab = plain.config.vocab_size
    with torch.inference_mode():
        for rows in (1, 7, 33, 200):  # decode batches and a prefill chunk, on either side of the hint
            ids = torch.randint(0, vocab, (1, rows), generator=torch.Generator().manual_seed(rows))
            expected = plain(input_ids=ids).logits
            got = packed(input_ids=ids).logits
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_packing_replaces_weights_keeps_a_tied_head_and_runs_once(tiny_llama_dir):
    _, model = _pair(tiny_llama_dir)
    before = sum(p.numel() for p in model.parameters())
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    count = pack_cpu_linears(model)
    assert count == len(linears)
    inner = [m for m in linears if m is not head]
    assert all(m.weight is None and m.packed_weight.is_mkldnn for m in inner)
    freed = sum(m.in_features * m.out_features for m in inner)
    if not tied:
        freed += head.in_features * head.out_features
    assert sum(p.numel() for p in model.parameters()) == before - freed
    if tied:  # the embedding lookup still reads the plain weight
        assert head.weight is model.get_input_embeddings().weight
    assert pack_cpu_linears(model) == count  # a second runner on the same model packs nothing again
