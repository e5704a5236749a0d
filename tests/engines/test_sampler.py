import torch

from engines.native.sampler import ARGMAX_BLOCK, SamplingBatch, greedy_argmax, sample
from engines.protocol import SamplingParams


def sample_next_tokens(logits, temperature, top_p, generator):
    """Every row with the same temperature and top_p, one random stream."""
    params = [SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)] * logits.shape[0]
    batch = SamplingBatch(params, [[]] * logits.shape[0], logits.shape[-1], logits.device)
    return sample(logits, batch, [generator] * logits.shape[0])[0]


def test_temperature_zero_and_top_p_zero_are_greedy():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert sample_next_tokens(logits, 0.0, 1.0, None).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    assert sample_next_tokens(logits.repeat(50, 1), 1.0, 0.0, gen).tolist() == [1, 0] * 50


def test_same_seed_same_samples_different_seed_differs():
    logits = torch.zeros(64, 100)
    draw = [sample_next_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(s)).tolist() for s in (7, 7, 8)]
    assert draw[0] == draw[1]
    assert draw[0] != draw[2]


def test_top_p_keeps_only_the_nucleus():
    # probabilities 0.5, 0.3, 0.1, 0.1 -> top_p 0.7 keeps the first two tokens only
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1]])).repeat(2000, 1)
    tokens = sample_next_tokens(logits, 1.0, 0.7, torch.Generator().manual_seed(1))
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).float().mean().item()
    assert 0.55 < share < 0.70  # 0.5 / 0.8 = 0.625


def test_blocked_greedy_argmax_is_argmax_with_ties_and_nan():
    vocab = ARGMAX_BLOCK * 8
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, vocab, generator=generator)
    logits[1, [5, ARGMAX_BLOCK + 7, vocab - 1]] = 50.0  # ties across blocks: the first wins
    logits[2, [ARGMAX_BLOCK * 3 + 9, ARGMAX_BLOCK * 3 + 2]] = 50.0  # ties inside one block
    logits[3, vocab - 1] = 50.0  # the very last token
    logits[4, ARGMAX_BLOCK * 5 + 1] = float("nan")  # argmax treats NaN as the max
    logits[5] = -1.0  # a flat row: token 0
    expected = logits.argmax(dim=-1)
    assert torch.equal(greedy_argmax(logits), expected)
    assert expected[1:4].tolist() == [5, ARGMAX_BLOCK * 3 + 2, vocab - 1] and expected[5] == 0
    odd = torch.randn(3, 128 * 37, generator=generator)  # blocks of 128: 4096 does not divide it
    odd[0, [128 * 36 + 5, 128 * 36 + 1]] = 50.0
    assert torch.equal(greedy_argmax(odd), odd.argmax(dim=-1)) and greedy_argmax(odd)[0] == 128 * 36 + 1
    small = torch.randn(3, 1000, generator=generator)  # blocks of 8 would gain nothing: argmax itself
    assert torch.equal(greedy_argmax(small), small.argmax(dim=-1))
