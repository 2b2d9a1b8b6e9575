"""skelnb.mixers: PNM exactly as released, its closed form (value and gradient), MoCHi negatives and mixup, each
against a direct computation."""
import pytest
import torch
import torch.nn.functional as F
from skelnb.mixers import (pnm_pairs, pnm_mixtures, pnm_mix_loss, a2mc_mix_loss, pnm_linear_repulsion, pnm_negatives,
                           draw_mochi_params, apply_mochi, mochi_negatives, hardest_negatives, roll_partner,
                           beta_ratio, mix)
from skelnb.bench import bench_pnm


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def pnm_direct(q, D, T, a=0.2, b=0.1):
    N = len(q); used = N * (len(D) // N)
    pos = sum(-(q[k % N] @ ((1 - a) * q[k % N] + a * D[k])).item() / T for k in range(used)) / used
    neg = sum((q[k % N] @ (b * q[k % N] + (1 - b) * D[k])).item() / T for k in range(used)) / used
    return pos, neg


@pytest.mark.parametrize('N,K', [(4, 12), (4, 14), (5, 5), (3, 31)])
def test_pnm_loss_direct(N, K):
    q, D = unit_rows(N, 8, 0), unit_rows(K, 8, 1)
    out = pnm_mix_loss(q, D, 0.2)
    pos, neg = pnm_direct(q, D, 0.2)
    assert torch.isclose(out['pos'], torch.tensor(pos, dtype=torch.float64))
    assert torch.isclose(out['neg'], torch.tensor(neg, dtype=torch.float64))
    assert torch.isclose(out['loss'], torch.tensor(pos + neg, dtype=torch.float64))


def test_pairing_and_errors():
    assert pnm_pairs(3, 9).tolist() == [0, 1, 2] * 3
    assert pnm_pairs(3, 10).tolist() == [0, 1, 2] * 3                        # K % N != 0: the last entry is left out
    with pytest.raises(ValueError, match='not a multiple'): pnm_pairs(3, 10, strict=True)
    with pytest.raises(ValueError, match='K >= N'): pnm_pairs(4, 3)
    q, D = unit_rows(2, 4, 0), unit_rows(4, 4, 1)
    m = pnm_mixtures(q, D)
    torch.testing.assert_close(m['pos'][3], 0.8 * q[1] + 0.2 * D[3])
    torch.testing.assert_close(m['neg'][2], 0.1 * q[0] + 0.9 * D[2])


@pytest.mark.parametrize('a,b,T', [(0.2, 0.1, 0.07), (0.2, 0.1, 0.2), (0.3, 0.45, 0.5)])
def test_closed_form_value_and_gradient(a, b, T):
    D = unit_rows(12, 8, 1)
    u1 = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    u2 = u1.detach().clone().requires_grad_(True)
    released = pnm_mix_loss(F.normalize(u1, dim=1), D, T, a, b)['loss']
    closed = pnm_linear_repulsion(F.normalize(u2, dim=1), D, T, a, b)
    released.backward(); closed.backward()
    torch.testing.assert_close(released, closed, rtol=0, atol=1e-12)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=0, atol=1e-12)
    q = F.normalize(u1.detach(), dim=1)
    s_bar = sum((q[k % 4] @ D[k]).item() for k in range(12)) / 12
    assert abs(closed.item() - (1 - a - b) / T * (s_bar - 1)) < 1e-12


def test_bank_gets_no_gradient_by_default():
    q = unit_rows(4, 8, 0).requires_grad_(True)
    D = unit_rows(8, 8, 1).requires_grad_(True)
    pnm_mix_loss(q, D, 0.2)['loss'].backward()
    assert D.grad is None and q.grad is not None
    pnm_mix_loss(q, D, 0.2, detach_bank=False)['loss'].backward()
    assert D.grad is not None


def test_a2mc_mix_loss_is_mean_over_pairs():
    q1, q2, D1, D2 = unit_rows(4, 8, 0), unit_rows(4, 8, 1), unit_rows(8, 8, 2), unit_rows(12, 8, 3)
    expected = (sum(pnm_direct(q1, D1, 0.07)) + sum(pnm_direct(q2, D2, 0.07))) / 2
    assert abs(a2mc_mix_loss([(q1, D1), (q2, D2)], 0.07).item() - expected) < 1e-10


def test_pnm_negatives_direct():
    q, D = unit_rows(4, 8, 0), unit_rows(13, 8, 1)
    h = pnm_negatives(q, D)
    assert h.shape == (4, 3, 8)
    for n in range(4):
        for r in range(3):
            raw = 0.1 * q[n] + 0.9 * D[r * 4 + n]
            torch.testing.assert_close(h[n, r], raw / raw.norm())


def test_mochi_direct():
    q, negs = unit_rows(3, 6, 0), unit_rows(15, 6, 1)
    prm = draw_mochi_params(3, 4, 2, 3, beta_max=0.4, generator=torch.Generator().manual_seed(0))
    syn = apply_mochi(q, negs, prm, 4)
    assert syn.shape == (3, 5, 6)
    torch.testing.assert_close(syn.norm(dim=-1), torch.ones(3, 5, dtype=torch.float64))
    for n in range(3):
        order = sorted(range(15), key=lambda j: -(q[n] @ negs[j]).item())[:4]
        torch.testing.assert_close(hardest_negatives(q, negs, 4)[n], negs[order])
        for s in range(2):
            al = prm['alpha'][n, s].item()
            raw = al * negs[order[prm['i'][n, s]]] + (1 - al) * negs[order[prm['j'][n, s]]]
            torch.testing.assert_close(syn[n, s], raw / raw.norm())
        for s in range(3):
            be = prm['beta'][n, s].item()
            assert 0 <= be < 0.4
            raw = be * q[n] + (1 - be) * negs[order[prm['jq'][n, s]]]
            torch.testing.assert_close(syn[n, 2 + s], raw / raw.norm())
    torch.testing.assert_close(mochi_negatives(q, negs, 4, 2, 3, 0.4, torch.Generator().manual_seed(0)), syn)


def test_extra_negatives_raise_infonce():
    losses = pytest.importorskip('skelnb.losses')
    q, negs = unit_rows(4, 8, 0), unit_rows(16, 8, 1)
    k = F.normalize(q + 0.3 * unit_rows(4, 8, 2), dim=1)
    plain = losses.info_nce(q, k, negs, 0.2)
    assert losses.info_nce(q, k, negs, 0.2, extra_negatives=pnm_negatives(q, negs)) > plain
    assert losses.info_nce(q, k, negs, 0.2, extra_negatives=mochi_negatives(q, negs, 4, 4)) > plain


def test_mix_and_partners():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7):
        p = roll_partner(n, g)
        assert (p != torch.arange(n)).all() and sorted(p.tolist()) == list(range(n))
    x = torch.randn(4, 3, 5, 25, 2, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    p = torch.tensor([1, 2, 3, 0])
    out = mix(x, lam, p)
    for n in range(4): torch.testing.assert_close(out[n], lam[n] * x[n] + (1 - lam[n]) * x[p[n]])
    z = unit_rows(4, 8, 3)
    torch.testing.assert_close(mix(z, 0.3, p, renormalize=True).norm(dim=1), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize('alpha', [0.2, 1.0, 4.0])
def test_beta_ratio_moments(alpha):
    r = beta_ratio(20_000, alpha, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert ((r >= 0) & (r <= 1)).all()
    assert abs(r.mean().item() - 0.5) < 0.01
    assert abs(r.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.005


def test_bench_pnm_runs():
    out = bench_pnm(N=4, K=32, d=8, repeats=2, warmup=1)
    assert out['skelnb_ms'] > 0 and out['reference_ms'] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_parity():
    q, D = unit_rows(4, 8, 0), unit_rows(12, 8, 1)
    torch.testing.assert_close(pnm_mix_loss(q.cuda(), D.cuda(), 0.2)['loss'].cpu(), pnm_mix_loss(q, D, 0.2)['loss'])
    torch.testing.assert_close(mochi_negatives(q.cuda(), D.cuda(), 4, 2, generator=torch.Generator().manual_seed(0)).cpu(),
                               mochi_negatives(q, D, 4, 2, generator=torch.Generator().manual_seed(0)))
