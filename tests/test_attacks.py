"""skelnb.attacks: attacks stay in their ball, raise the attacked loss, leave the model untouched, and every formula
matches a direct computation."""
import copy, math
from functools import partial
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from skelnb.skeleton import NTU25, joint_to_bone
from skelnb.attacks import (attack_guard, input_gradient, ascent_step, project_ball, random_in_ball, per_sample_norm,
                            pgd, fgsm, cosine_distance, freeze_absent_persons, clamp_joint_displacement,
                            project_bone_lengths, feature_attack, smart_perceptual_terms, smart_perceptual_loss,
                            normalize_per_frame, adam_step, att_aug_direction, att_aug, AttAugConfig, pseudo_labels,
                            A2MC_ACC_JOINT_WEIGHTS)
from skelnb.bench import bench_att_aug


class Tiny(nn.Module):
    "Conv1d over time on all joint coordinates, BatchNorm, ReLU, pooling, linear; persons averaged."
    def __init__(self, V=25, dim=16):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(3 * V, 24, 3, padding=1), nn.BatchNorm1d(24), nn.Linear(24, dim)
    def forward(self, x):
        M = x.shape[-1]
        h = F.relu(self.bn(self.conv(rearrange(x, 'n c t v m -> (n m) (c v) t')))).mean(-1)
        return rearrange(self.fc(h), '(n m) d -> n m d', m=M).mean(1)


def gen(seed=0): return torch.Generator().manual_seed(seed)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    enc = Tiny().double()
    head = nn.Linear(16, 7).double()
    x = torch.randn(3, 3, 8, 25, 2, generator=gen(1), dtype=torch.float64)
    x[2, :, :, :, 1] = 0                                                    # sample 2 has one person
    y = torch.tensor([0, 4, 6])
    return enc, head, x, y


def ce(model, x, y): return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize('norm,eps', [('linf', 1e-3), ('l2', 0.05)])
@pytest.mark.parametrize('random_start', [False, True])
def test_pgd_stays_in_ball_and_increases_loss(setup, norm, eps, random_start):
    enc, head, x, y = setup
    model = nn.Sequential(enc, head).eval()
    xa = pgd(model, x, y, eps=eps, steps=5, norm=norm, random_start=random_start, generator=gen(2))
    d = xa - x
    dist = d.abs().flatten(1).amax(1) if norm == 'linf' else d.flatten(1).norm(dim=1)
    assert (dist <= eps * (1 + 1e-9)).all()
    assert ce(model, xa, y) > ce(model, x, y)
    if random_start: assert torch.equal(xa, pgd(model, x, y, eps=eps, steps=5, norm=norm, generator=gen(2)))


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_fgsm_formula_and_targeted(setup, norm):
    enc, head, x, y = setup
    model = nn.Sequential(enc, head).eval()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    g = xr.grad
    step = g.sign() if norm == 'linf' else g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=1e-3, norm=norm), x + 1e-3 * step)
    assert ce(model, fgsm(model, x, y, eps=1e-3, norm=norm), y) > ce(model, x, y)
    t = torch.tensor([2, 2, 2])
    assert ce(model, fgsm(model, x, t, eps=1e-3, norm=norm, targeted=True), t) < ce(model, x, t)


def test_pgd_recursion_by_hand(setup):
    enc, head, x, y = setup
    model = nn.Sequential(enc, head).eval()
    eps, alpha = 2e-3, 7e-4
    xs = x + random_in_ball(x, eps, 'linf', gen(3))
    for _ in range(3):
        xg = xs.clone().requires_grad_(True)
        F.cross_entropy(model(xg), y).backward()
        xs = x + (xs + alpha * xg.grad.sign() - x).clamp(-eps, eps)
    torch.testing.assert_close(pgd(model, x, y, eps=eps, steps=3, step_size=alpha, generator=gen(3)), xs)


def test_ball_helpers():
    g = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    torch.testing.assert_close(ascent_step(g, 0.5, 'l2'), torch.tensor([[0.3, -0.4], [0.0, 0.0]]))
    torch.testing.assert_close(ascent_step(g, 0.1, 'linf'), torch.tensor([[0.1, -0.1], [0.0, 0.0]]))
    x0, xa = torch.zeros(2, 2), torch.tensor([[0.3, -0.05], [3.0, 4.0]])
    torch.testing.assert_close(project_ball(xa, x0, 1.0, 'l2'), torch.tensor([[0.3, -0.05], [0.6, 0.8]]))
    torch.testing.assert_close(project_ball(xa, x0, 0.1, 'linf'), torch.tensor([[0.1, -0.05], [0.1, 0.1]]))
    r = random_in_ball(torch.zeros(64, 10), 0.3, 'l2', gen())
    assert (per_sample_norm(r) <= 0.3 + 1e-6).all()
    with pytest.raises(ValueError, match='norm must be one of'): project_ball(xa, x0, 0.1, 'l1')


def test_guard_restores_model(setup):
    enc, head, x, y = setup
    enc.train(); enc.bn.eval(); enc.conv.bias.requires_grad_(False)
    before = copy.deepcopy(enc.state_dict())
    flags = [p.requires_grad for p in enc.parameters()]
    modes = [m.training for m in enc.modules()]
    model = nn.Sequential(enc, head)
    pgd(model, x, y, eps=1e-3, steps=2, mode='train', generator=gen())
    att_aug(enc, x, head)
    assert [p.requires_grad for p in enc.parameters()] == flags
    assert [m.training for m in enc.modules()] == modes
    for k, v in enc.state_dict().items(): assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in enc.parameters())


def test_update_bn_option_matches_plain_forwards(setup):
    enc, head, x, y = setup
    enc.train()
    ref = copy.deepcopy(enc)
    att_aug(enc, x, head, update_bn=True)                                   # pseudo-label pass + attack pass
    with torch.no_grad(): ref(x); ref(x)
    torch.testing.assert_close(enc.bn.running_mean, ref.bn.running_mean)
    torch.testing.assert_close(enc.bn.running_var, ref.bn.running_var)
    assert enc.bn.num_batches_tracked.item() == 2


def test_embedding_attacks(setup):
    enc, head, x, y = setup
    enc.eval()
    key = enc(x).detach()
    away = pgd(enc, x, key, cosine_distance, eps=0.02, steps=5)
    towards = pgd(enc, x, key.roll(1, 0), cosine_distance, eps=0.02, steps=5, targeted=True)
    cos = lambda a, k: F.cosine_similarity(enc(a), k)
    assert (cos(away, key) < cos(x, key)).all()
    assert (cos(towards, key.roll(1, 0)) > cos(x, key.roll(1, 0))).all()
    assert (away - x).abs().max() <= 0.02 + 1e-12


def test_feature_attack_closed_form():
    z = F.normalize(torch.randn(4, 8, generator=gen(5), dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(4, 8, generator=gen(6), dtype=torch.float64), dim=-1)
    c = (z * k).sum(-1, keepdim=True)
    grad = k - c * z                                                          # unit z, unit k
    torch.testing.assert_close(feature_attack(z, k, eps=0.2, renormalize=False), z + 0.2 * grad / grad.norm(dim=-1, keepdim=True))
    moved = feature_attack(z, k, eps=0.3, steps=4)
    assert (F.cosine_similarity(moved, k) > F.cosine_similarity(z, k)).all()


def _walk_tree(x_adv, x_ref, L):
    out = x_adv.clone()
    order = sorted(range(L.num_joints), key=lambda v: L.depths[v])
    for t in range(x_adv.shape[1]):
        for m in range(x_adv.shape[3]):
            if (x_ref[:, t, :, m] == 0).all(): out[:, t, :, m] = 0; continue
            for v in order:
                p = L.parents[v]
                if v == p: continue
                dirn = x_adv[:, t, v, m] - x_adv[:, t, p, m]
                out[:, t, v, m] = out[:, t, p, m] + (x_ref[:, t, v, m] - x_ref[:, t, p, m]).norm() * dirn / dirn.norm()
    return out


def test_constraints_against_direct_computation():
    xc = torch.randn(3, 5, 25, 2, generator=gen(0), dtype=torch.float64); xc[:, 3:, :, 1] = 0
    xp = xc + 0.05 * torch.randn(xc.shape, generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(project_bone_lengths(xp, xc), _walk_tree(xp, xc, NTU25))
    torch.testing.assert_close(joint_to_bone(project_bone_lengths(xp, xc)).norm(dim=0), joint_to_bone(xc).norm(dim=0))
    cl = clamp_joint_displacement(xp, xc, 0.06)
    d = xp - xc
    n = d.norm(dim=0, keepdim=True)
    torch.testing.assert_close(cl, xc + d * torch.clamp(0.06 / n, max=1.0))
    assert (freeze_absent_persons(xp, xc)[:, 3:, :, 1] == 0).all()


def test_pgd_with_constraints_stays_in_ball(setup):
    enc, head, x, y = setup
    model = nn.Sequential(enc, head).eval()
    xa = pgd(model, x, y, eps=0.01, steps=3, generator=gen(),
             constraints=[partial(project_bone_lengths, layout='ntu25'), partial(clamp_joint_displacement, eps=0.01), freeze_absent_persons])
    assert (xa - x).abs().max() <= 0.01 + 1e-12
    assert (xa - x).norm(dim=1).max() <= 0.01 + 1e-12
    assert (xa[2, :, :, :, 1] == 0).all()                                    # the absent person stays absent


def _perceptual_direct(xa, xr, w, dt=1 / 30):
    N, C, T, V, M = xa.shape
    R = A = B = 0.0
    for n in range(N):
        for m in range(M):
            P, Q = xa[n, ..., m], xr[n, ..., m]
            for t in range(T):
                for v in range(V):
                    R += ((P[:, t, v] - Q[:, t, v]) ** 2).sum().item()
                    if t < T - 2:
                        acc = lambda Z: (Z[:, t + 2, v] - 2 * Z[:, t + 1, v] + Z[:, t, v]) / dt ** 2
                        A += w[v] * ((acc(P) - acc(Q)) ** 2).sum().item()
                for v, p in NTU25.bones:
                    B += (((Q[:, t, v] - Q[:, t, p]) ** 2).sum() - ((P[:, t, v] - P[:, t, p]) ** 2).sum()).item() ** 2
    return R / (N * M), A / (N * M), B / (N * M)


def test_smart_perceptual_terms_direct():
    xr = torch.randn(2, 3, 5, 25, 2, generator=gen(7), dtype=torch.float64)
    xa = xr + 0.01 * torch.randn(xr.shape, generator=gen(8), dtype=torch.float64)
    R, A, B = _perceptual_direct(xa, xr, A2MC_ACC_JOINT_WEIGHTS)
    t = smart_perceptual_terms(xa, xr, joint_weights='a2mc')
    assert math.isclose(t['recon'].item(), R, rel_tol=1e-10)
    assert math.isclose(t['acc'].item(), A, rel_tol=1e-10)
    assert math.isclose(t['bone'].item(), B, rel_tol=1e-10)
    assert math.isclose(smart_perceptual_loss(xa, xr, joint_weights='a2mc').item(), 0.4 * R + 0.6 * (0.7 * B + 0.3 * A), rel_tol=1e-10)


def test_perceptual_gradient_is_exactly_zero_at_x(setup):
    enc, head, x, y = setup
    xg = x.clone().requires_grad_(True)
    smart_perceptual_loss(xg, x, joint_weights='a2mc').backward()
    assert torch.count_nonzero(xg.grad) == 0
    assert torch.count_nonzero(normalize_per_frame(xg.grad)) == 0


def test_normalisation_and_adam():
    g = torch.randn(2, 3, 4, 25, 2, generator=gen(9), dtype=torch.float64)
    ng = normalize_per_frame(g)
    for n in range(2):
        for t in range(4):
            for m in range(2):
                torch.testing.assert_close(ng[n, :, t, :, m], g[n, :, t, :, m] / (g[n, :, t, :, m].norm() + 1e-18))
    step = -adam_step(torch.zeros_like(g), g, 1e-4)[0]
    torch.testing.assert_close(step, 1e-4 * math.sqrt(1e-3) * g / (math.sqrt(1e-3) * g.abs() + 1e-8), rtol=1e-12, atol=1e-20)
    rel = (1 - step.abs() / 1e-4)
    assert ((rel > 0) & (rel <= 1e-8 / (math.sqrt(1e-3) * g.abs()))).all()  # a sign step, shortened by eps/(sqrt(1-b2)|g|)
    torch.testing.assert_close(att_aug_direction(g, 2 * g, 0.6), ng)


def test_att_aug_released_is_a_sign_step(setup):
    enc, head, x, y = setup
    enc.train()
    xa, info = att_aug(enc, x, head, joint_weights='a2mc', return_info=True)
    assert info['perc_grad_max'] == [0.0]
    labels = info['labels']
    with attack_guard(enc):
        torch.testing.assert_close(labels, head(enc(x)).argmax(1))
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(head(enc(xg)), labels).backward()
        gh = 0.6 * normalize_per_frame(-xg.grad)
        torch.testing.assert_close(xa, x - 1e-4 * math.sqrt(1e-3) * gh / (math.sqrt(1e-3) * gh.abs() + 1e-8), rtol=0, atol=1e-12)
        torch.testing.assert_close(att_aug(enc, x, head, update='sign'), x + 1e-4 * xg.grad.sign())
        assert F.cross_entropy(head(enc(xa)), labels) > F.cross_entropy(head(enc(x)), labels)
    rel = (1 - (xa - x).abs() / 1e-4)[xg.grad != 0]
    assert rel.median() < 2e-5


def test_att_aug_multistep_and_targeted(setup):
    enc, head, x, y = setup
    enc.eval()
    cfg = AttAugConfig.multistep(steps=3, step_size=1e-3, eps=2e-3)
    xa, info = att_aug(enc, x, head, return_info=True, **vars(cfg))
    assert info['perc_grad_max'][0] == 0 and all(v > 0 for v in info['perc_grad_max'][1:])
    assert (xa - x).abs().max() <= 2e-3 + 1e-12
    t = torch.tensor([1, 1, 1])
    xt = att_aug(enc, x, head, labels=t, targeted=True, update='sign', step_size=1e-3)
    assert F.cross_entropy(head(enc(xt)), t) < F.cross_entropy(head(enc(x)), t)
    with pytest.raises(ValueError, match='needs labels'): att_aug(enc, x, head, targeted=True)
    assert AttAugConfig.a2mc_upstream().update_bn and not AttAugConfig.a2mc().update_bn


def test_bench_att_aug_runs():
    out = bench_att_aug(N=2, T=8, repeats=2, warmup=1)
    assert out['skelnb_ms'] > 0 and out['reference_ms'] > 0


def test_module_is_light():
    import subprocess, sys
    code = "import sys, skelnb.attacks; assert 'plotly' not in sys.modules and 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, '-c', code], check=True)


def test_attack_explorer_headless():
    pytest.importorskip('plotly'); pytest.importorskip('ipywidgets')
    from skelnb.attack_explorer import AttackExplorer
    torch.manual_seed(0)
    enc = Tiny().eval()
    clip = torch.randn(3, 10, 25, 1, generator=gen(3))
    ex = AttackExplorer(clip, enc, target=clip.flip(1), eps=0.01, steps=2)
    ex.eps.value = 0.004                                                     # drive the slider
    expected = pgd(enc, clip[None], enc(clip[None]).detach(), cosine_distance, eps=0.004 * math.sqrt(clip.numel()), steps=2,
                   norm='l2', random_start=False, mode='eval', constraints=[freeze_absent_persons])
    torch.testing.assert_close(ex.x_adv, expected)
    for t in (0, 5):
        ex.player.frame = t
        torch.testing.assert_close(ex.shown_perturbation(), (1e3 * (expected - clip[None]).norm(dim=1))[0, t].double(), rtol=1e-5, atol=1e-5)
    assert len(ex.sim_fig.data[0].y) == 3
    ex.norm.value = 'linf'
    assert (ex.x_adv - ex.x).abs().max() <= 0.004 + 1e-6
    ex.goal.value = 'towards target'
    assert ex.sim_target[-1] > ex.sim_target[0]
    ex.goal.value = 'att-aug'
    assert (ex.x_adv - ex.x).abs().max() <= ex.eps.value + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_parity(setup):
    enc, head, x, y = setup
    model = nn.Sequential(enc, head).eval()
    a = pgd(model, x, y, eps=1e-3, steps=2, generator=gen(4))
    b = pgd(copy.deepcopy(model).cuda(), x.cuda(), y.cuda(), eps=1e-3, steps=2, generator=gen(4))
    torch.testing.assert_close(a, b.cpu())


def test_input_gradients_reach_absent_persons_in_eval_mode():
    "ST-GCN's eval-mode sharing of absent persons cuts their input gradient; the guard and input_gradient switch it off."
    from dataclasses import replace
    from skelnb.encoders.stgcn import STGCN
    from skelnb.attacks import input_gradient, attack_guard, encode_every_person, pgd
    torch.manual_seed(0)
    shared = STGCN('tiny', head='linear', num_class=3).eval()
    every = STGCN(replace(shared.config, share_absent_eval=False)).eval(); every.load_state_dict(shared.state_dict())
    x = torch.zeros(2, 3, 10, 25, 2); x[..., 0] = torch.randn(2, 3, 10, 25)
    y = torch.tensor([0, 2])
    def plain(model):
        xg = x.clone().requires_grad_(True); F.cross_entropy(model(xg), y).backward(); return xg.grad
    assert plain(shared)[..., 1].abs().max() == 0            # the documented pitfall
    g_true = plain(every)
    assert g_true[..., 1].abs().max() > 0
    assert torch.allclose(input_gradient(shared, x, y)[1], g_true, atol=1e-6)
    assert shared.config.share_absent_eval is True
    with attack_guard(shared, mode='eval'): assert shared.config.share_absent_eval is False
    with attack_guard(shared, share_absent=True): assert shared.config.share_absent_eval is True
    with encode_every_person(torch.nn.Sequential(shared)): assert shared.config.share_absent_eval is False
    assert shared.config.share_absent_eval is True
    # an eval-mode PGD step moves the absent person where the true gradient is non-zero
    adv = pgd(shared, x, y, eps=1e-3, steps=1, step_size=1e-3, random_start=False, mode="eval")
    assert (adv - x)[..., 1].abs().max() > 0
