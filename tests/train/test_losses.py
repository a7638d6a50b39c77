"""InfoNCE and the diversity regulariser against straightforward reference computations."""

import math

import torch
import torch.nn.functional as F

from lame.losses import diversity_penalty, info_nce


def _reference_info_nce(q, t, temp, negatives, same, valid):
    total = 0.0
    for i in range(len(q)):
        logits = []
        for j in range(len(t)):
            if j != i and same[i, j]:
                continue
            logits.append(float(q[i] @ t[j]) / temp)
        positive = float(q[i] @ t[i]) / temp
        for h in range(negatives.shape[1]):
            if valid[i, h]:
                logits.append(float(q[i] @ negatives[i, h]) / temp)
        total += -(positive - math.log(sum(math.exp(x) for x in logits)))
    return total / len(q)


def test_info_nce_equals_reference():
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    t = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    neg = F.normalize(torch.randn(6, 2, 8, generator=gen), dim=-1)
    answers = ["a", "b", "a", "c", "d", "b"]
    same = torch.tensor([[x == y for y in answers] for x in answers])
    valid = torch.tensor([[True, True], [True, False]] * 3)
    ours = info_nce(q, t, 0.1, neg, same, valid)
    reference = _reference_info_nce(q.numpy(), t.numpy(), 0.1, neg.numpy(), same.numpy(), valid.numpy())
    assert abs(float(ours) - reference) < 1e-5


def test_false_negatives_are_masked_not_pushed():
    q = F.normalize(torch.randn(4, 8), dim=-1)
    t = q.clone()
    t[1] = t[0]  # row 1's target is identical to row 0's: a false negative for row 0
    same = torch.tensor(
        [
            [True, True, False, False],
            [True, True, False, False],
            [False, False, True, False],
            [False, False, False, True],
        ]
    )
    masked = info_nce(q, t, 0.05, same_answer=same)
    unmasked = info_nce(q, t, 0.05)
    assert masked < unmasked


def test_diversity_penalty_extremes():
    same = torch.ones(2, 4, 8)
    assert torch.isclose(diversity_penalty(same), torch.tensor(1.0))
    orthogonal = torch.eye(8)[:4].expand(2, 4, 8)
    assert float(diversity_penalty(orthogonal)) < 1e-7
    assert float(diversity_penalty(torch.randn(2, 1, 8))) == 0.0


def test_diversity_gradient_spreads_states():
    states = (torch.ones(1, 3, 4) + 0.01 * torch.randn(1, 3, 4)).requires_grad_()
    before = float(diversity_penalty(states.detach()))
    diversity_penalty(states).backward()
    with torch.no_grad():
        after = float(diversity_penalty(states - 1.0 * states.grad))
    assert after < before


def test_info_nce_offset_splits_the_global_batch():
    """Two halves with offsets (as two processes compute them) average to the full loss."""
    gen = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(8, 6, generator=gen), dim=-1)
    t = F.normalize(torch.randn(8, 6, generator=gen), dim=-1)
    answers = list("aabcdefa")
    same = torch.tensor([[x == y for y in answers] for x in answers])
    full = info_nce(q, t, 0.1, same_answer=same)
    halves = [info_nce(q[s], t, 0.1, same_answer=same[s], offset=s.start) for s in (slice(0, 4), slice(4, 8))]
    assert torch.isclose(full, sum(halves) / 2, atol=1e-6)
    assert not torch.isclose(full, info_nce(q[4:], t, 0.1, same_answer=same[4:]), atol=1e-3)


def test_matryoshka_contrastive_is_the_mean_over_prefixes():
    """With matryoshka_dims the contrastive term is the mean of InfoNCE on each renormalised
    prefix (and differs from the full-size term alone)."""
    from types import SimpleNamespace

    from lame.training.objective import contrastive_loss

    gen = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    t = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    neg = F.normalize(torch.randn(5, 2, 16, generator=gen), dim=-1)
    batch = {"same_answer": torch.eye(5, dtype=torch.bool)}

    def model(dims):
        return SimpleNamespace(config=SimpleNamespace(temperature=0.1, matryoshka_dims=dims))

    full = contrastive_loss(model(None), batch, q, t, neg)
    assert torch.allclose(full, info_nce(q, t, 0.1, neg, batch["same_answer"]))
    nested = contrastive_loss(model([4, 8, 16]), batch, q, t, neg)
    expected = (
        sum(
            info_nce(
                F.normalize(q[:, :d], dim=-1),
                F.normalize(t[:, :d], dim=-1),
                0.1,
                F.normalize(neg[..., :d], dim=-1),
                batch["same_answer"],
            )
            for d in (4, 8, 16)
        )
        / 3
    )
    assert torch.allclose(nested, expected, atol=1e-6)
    assert not torch.allclose(nested, full, atol=1e-3)


def test_matryoshka_dims_are_validated():
    import pytest

    from lame.config import LameConfig

    assert LameConfig(embed_dim=32, matryoshka_dims=[8, 16, 32]).matryoshka_dims == [8, 16, 32]
    for bad in ([32], [16, 8, 32], [8, 16], [0, 32], [8, 8, 32], "8,32"):
        with pytest.raises(ValueError, match="matryoshka_dims"):
            LameConfig(embed_dim=32, matryoshka_dims=bad)
