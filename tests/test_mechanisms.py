"""The computations behind the mechanism pictures (skelnb.mechanisms), checked against formulas and the methods' own code."""
import math, subprocess, sys
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skelnb.data import ArrayDataset, synthetic_clip
from skelnb.memory import momentum_update
from skelnb.attacks import att_aug
from skelnb.encoders.necks import eadm_masks
from skelnb.methods.catalog import build_method
from skelnb.explore import project
from skelnb import mechanisms as mech

torch.set_num_threads(1)
TINY = dict(hidden_channels=4, hidden_dim=16, feature_dim=8, queue_size=32)


@pytest.fixture(scope='module')
def clips():
    return np.stack([synthetic_clip(a, 1 + a % 3, take=a) for a in range(8)])   # 8 actions, (8, 3, 50, 25, 2)


@pytest.fixture(scope='module')
def bank_data(clips):
    return ArrayDataset(clips, np.arange(8))


def _tiny(name, clips=None, **extra):
    "A small method whose batch-norm statistics have seen the clips (a fresh network in eval mode maps every clip alike)."
    torch.manual_seed(0)
    m = build_method(name, 'lesson', **({} if name == 'a2mc' else TINY), **extra)
    x = torch.as_tensor(np.stack([synthetic_clip(a, 2, take=a) for a in range(8)]) if clips is None else clips)
    with torch.no_grad():
        for _ in range(5): m.training_step({'x': x}, 0)
    return m.eval()


@pytest.mark.parametrize('m', [0.5, 0.9, 0.97, 0.99])
def test_half_life_matches_a_simulated_ema(m):
    "The library's EMA (momentum_update) halves the weight of the starting state after ln 0.5 / ln m steps."
    key, query = torch.nn.Linear(1, 1, bias=False).double(), torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad(): key.weight.fill_(0.0); query.weight.fill_(1.0)
    left = []
    for _ in range(400):
        left.append(1 - key.weight.item())         # the share of the starting state (0) still in the key
        momentum_update(key, query, m)
    h = mech.ema_half_life(m)
    assert int(np.argmax(np.array(left) <= 0.5 + 1e-12)) == math.ceil(h - 1e-9)
    assert abs(np.log(left[10]) - 10 * np.log(0.5) / h) < 1e-9       # m^s = 0.5^(s/h) at every step


def test_half_life_and_staleness_edges():
    assert mech.ema_half_life(1.0) == math.inf and mech.ema_half_life(0.0) == 0.0
    assert abs(mech.ema_half_life(0.999) - 692.8) < 0.1
    assert mech.queue_staleness(16384, 128) == 128.0
    with pytest.raises(ValueError): mech.ema_half_life(1.5)
    with pytest.raises(ValueError): mech.queue_staleness(0, 128)


def test_temperature_softmax_and_effective_count():
    c = np.array([0.8, 0.1, -0.3])
    for tau in (0.05, 0.2, 1.0):
        p = mech.softmax_over_cosines(c, tau)
        assert np.allclose(p, np.exp(c / tau) / np.exp(c / tau).sum())
    assert abs(mech.effective_count([0.5, 0.5]) - 2) < 1e-12
    assert mech.effective_count(mech.softmax_over_cosines(c, 0.05)) < mech.effective_count(mech.softmax_over_cosines(c, 1.0))
    assert len(mech.temperature_figure((0.1, 0.5)).data) == 2


def test_seeded_views_restore_the_generator(clips):
    m = _tiny('skeletonclr')
    x = torch.as_tensor(clips[:1])
    before = m.rng('cpu').get_state().clone()
    with mech.seeded(m, 4): a = m.augmented(x, m.augment, 2)
    with mech.seeded(m, 4): b = m.augmented(x, m.augment, 2)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])
    assert torch.equal(m.rng('cpu').get_state(), before)


def test_d3m_distributions_are_softmaxes_of_the_loss_logits(clips, bank_data):
    m = _tiny('aimclr')
    bank = mech.key_bank(m, bank_data, n=None)
    d = mech.d3m_distributions(m, clips[0], bank, seed=2, topk=2)
    x = torch.as_tensor(clips[:1])
    with torch.no_grad(), mech.seeded(m, 2):
        g = m.rng('cpu')
        xq, xk, xe = m.augment(x, g), m.augment(x, g), m.extreme(x, g)
        k = F.normalize(m.encoder_k(xk), dim=1)
        z = F.normalize(m.encoder_q(xq), dim=1)
        out = m.encoder_q(xe, output='all')
        ze = F.normalize(out['head'], dim=1)
        zd = F.normalize(m.encoder_q.fc(m.encoder_q.pool(m.eadm(out['map']), 2)), dim=1)
    keys = F.normalize(m.encoder_k(x.new_tensor(clips)), dim=1).detach()
    assert torch.allclose(bank['keys'], keys, atol=1e-5)
    T = m.config.temperature
    for name, u in (('p', z), ('p_hat', ze), ('p_hat_d', zd)):
        logits = torch.cat([(u * k).sum(1), (u @ keys.t())[0]]) / T
        assert abs(d[name].sum().item() - 1) < 1e-5
        assert torch.allclose(d[name], torch.exp(logits) / torch.exp(logits).sum(), atol=1e-5)
    H = lambda p, q: -(p * q.log()).sum().item()
    assert abs(d['d3m'] - (0.5 * H(d['p'], d['p_hat']) + 0.5 * H(d['p'], d['p_hat_d']))) < 1e-4
    picked = {j for c in d['nominated'].values() for j in c.tolist()}
    assert set(np.flatnonzero(d['nnm'][1:].numpy()).tolist()) == picked and bool(d['nnm'][0])
    assert len(mech.d3m_figure(d, bank).data) == 3
    assert len(mech.nnm_figure(d, bank).layout.annotations) == 1 + len(picked)


def test_eadm_drop_map_is_the_methods_masks(clips):
    m = _tiny('aimclr')
    drop = mech.eadm_drop_map(m, clips[1], seed=0)
    _, _, xe = mech.aimclr_views(m, torch.as_tensor(clips[1:2]), 0)
    with torch.no_grad(): h = m.encoder_q(xe, output='map')
    joint, element = eadm_masks(h, m.eadm.keep_prob, m.eadm.lam)
    assert torch.equal(drop['joint_mask'], joint) and torch.equal(drop['element_mask'], element)
    assert torch.allclose(drop['dropped'], 1 - (joint[:, None, None, :] * element).mean(1))


def test_attack_heat_is_the_norm_of_the_perturbation(clips):
    m = _tiny('a2mc')
    a = mech.attack_heat(m, clips[2], seed=1)
    assert np.allclose(a['heat'], 1e3 * np.linalg.norm(a['x_adv'] - a['x'], axis=0), atol=1e-5)
    with mech.seeded(m, 1): xq, _ = m.views(torch.as_tensor(clips[2:3]))
    by_hand = att_aug(m.backbone, xq, m.attack_head, layout=m.config.layout, **vars(m.config.att_aug))
    M = a['x_adv'].shape[-1]
    assert np.allclose(a['x_adv'], by_hand[0, ..., :M].numpy(), atol=1e-7)
    more = mech.attack_heat(m, clips[2], seed=1, steps=3)
    assert more['heat'].max() > a['heat'].max() and m.config.att_aug.steps == 1
    n = mech._present(clips[2])
    assert len(mech.attack_figure(a).data) == 5 * n + 1


def test_pnm_projection_mixtures_follow_the_formula(clips):
    m = _tiny('a2mc')
    p = mech.pnm_projection(m, clips, seed=0, query=1)
    v, a, b = p['vectors'], m.config.pos_ratio, m.config.neg_ratio
    assert torch.allclose(v['pos'], (1 - a) * v['queries'][1] + a * v['partners'], atol=1e-6)
    assert torch.allclose(v['neg'], b * v['queries'][1] + (1 - b) * v['partners'], atol=1e-6)
    assert torch.allclose(v['partners'], v['bank'][1::len(clips)][:len(v['partners'])])   # k = 1, 1 + N, 1 + 2N, ...
    assert len(v['pos']) == m.config.bank_size // len(clips)
    assert len(mech.pnm_figure(p).data) == 7


def test_attention_saliency_is_the_necks_mask(clips):
    m = _tiny('skeattnclr')
    s = mech.attention_saliency(m, clips[3])
    with torch.no_grad(): own = m.encoder_q(torch.as_tensor(clips[3:4]), global_=False)['mask']
    assert torch.allclose(s['mask'], own, atol=1e-6)
    assert torch.allclose(s['tokens'].flatten(1), own.mean(-1), atol=1e-6)
    assert s['per_frame'].shape == (50, 25, 2)


def test_cross_view_neighbours_rank_by_each_stream(clips, bank_data):
    m = _tiny('crossclr')
    bank = mech.key_bank(m, bank_data, n=None)
    r = mech.cross_view_neighbours(m, clips[0], bank, topk=3, seed=0)
    for v in m.config.views:
        with mech.seeded(m, 0): xq, _ = m.augmented(torch.as_tensor(clips[:1]), m.augment, 2)
        with torch.no_grad():
            q = F.normalize(m.encoders(v)[0](mech.to_stream(xq, v, 'ntu25')), dim=1)
        sims = (q @ bank['keys'][v].t())[0]
        assert torch.allclose(r['streams'][v]['similarity'], sims.sort(descending=True).values[:3], atol=1e-6)
        assert torch.allclose(sims[r['streams'][v]['index']], r['streams'][v]['similarity'], atol=1e-6)
    assert len(mech.crossclr_figure(r, bank).layout.annotations) == 2 * 4


def test_views_and_gallery_trace_counts(clips):
    methods = {n: _tiny(n) for n in ('skeletonclr', 'aimclr', 'skeattnclr', 'a2mc')}
    fig = mech.view_gallery(methods, clips[0], clips[1], seed=0)
    n = mech._present(clips[0])
    per = {n_: len(mech.method_views(m, clips[0], clips[1], 0)) for n_, m in methods.items()}
    assert per == {'skeletonclr': 3, 'aimclr': 4, 'skeattnclr': 4, 'a2mc': 4}
    assert len(fig.data) == 2 * n * sum(per.values())          # bones and joints per person and panel
    g = mech.skeleton_grid([dict(clip=clips[0], title='a'), None, dict(clip=clips[1], title='b', values=np.ones(25))], cols=3)
    assert len(g.data) == 2 * (n + mech._present(clips[1]))


def test_snapshots_and_comparison(bank_data):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    feats = np.stack([rng.normal(size=(40, 6)) + 3 * s * np.eye(6)[labels] for s in (0.0, 0.5, 1.0)]).astype(np.float16)
    snaps = dict(epochs=np.array([1, 2, 3]), features=feats, labels=labels, index=np.arange(40))
    f = F.normalize(torch.tensor(feats[-1].astype(np.float32)), dim=1)
    s = f @ f.t(); s.fill_diagonal_(-2)
    assert abs(mech.loo_knn1(feats[-1], labels) - 100 * (labels[s.argmax(1).numpy()] == labels).mean()) < 1e-9
    assert mech.loo_knn1(feats[-1], labels) > mech.loo_knn1(feats[0], labels)     # structure appears over the epochs
    xy = mech.snapshot_coords(snaps)
    assert np.allclose(np.sqrt((xy ** 2).sum(-1).mean(-1)), 1)
    ref = project(feats[-1].astype(np.float64), 'pca', 2)
    assert np.allclose(xy[-1], ref / np.sqrt((ref ** 2).sum(1).mean()), atol=1e-6)
    assert len(mech.snapshot_figure(snaps, panels=2).data) == 4 * 2
    assert (mech.confusion_matrix([0, 1, 1], [0, 0, 1], 2) == np.array([[1, 0], [1, 1]])).all()
    res = mech.compare_methods({'skeletonclr': _tiny('skeletonclr')}, bank_data, bank_data, max_iter=20)
    r = res['skeletonclr']
    assert r['confusion'].sum() == 8 and abs(100 * np.trace(r['confusion']) / 8 - r['linear']) < 1e-9
    assert len(mech.comparison_figure(res).data) == 3


def test_widgets_update_and_the_module_stays_light():
    code = "import sys, skelnb.mechanisms; assert 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, '-c', code], check=True)
    pytest.importorskip('ipywidgets')
    w = mech.knobs_widget()
    w.controls['one_minus_m'].value = 1e-2
    assert w.figures[0].layout.title.text.startswith('momentum m = 0.99:')
    w.controls['temperature'].value = 0.5
    assert np.allclose(w.figures[1].data[0].y, mech.softmax_over_cosines(mech.DEFAULT_COSINES, 0.5))
