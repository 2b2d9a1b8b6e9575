"""skelnb.methods.aimclr: shapes per stream, the loss against the library pieces (NNM off/on), EADM branch, gradients, upstream keys, Trainer resume, configs."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skelnb.methods.aimclr import AIMCLR_PRESETS, AIMCLR_TRAIN_RECIPES, AimCLR, AimCLRConfig, extreme_embeddings
from skelnb.augment.presets import aimclr_extreme, normal_view
from skelnb.data import SkeletonDataset, ensure_synthetic_dataset
from skelnb.encoders.necks import EADM, eadm_drop
from skelnb.checkpoint import load_upstream_checkpoint
from skelnb.encoders.stgcn import upstream_stgcn_keys
from skelnb.losses import d3m_loss, info_nce, moco_logits, nnm_mask
from skelnb.memory import momentum_update
from skelnb.skeleton import joint_to_bone, joint_to_motion
from skelnb.methods.skeletonclr import SkeletonCLR, SkeletonCLRConfig
from skelnb.train import Trainer, seed_everything, train_preset
from skelnb.checkpoint import checkpoint_path, latest_checkpoint

TINY = dict(hidden_channels=4, hidden_dim=32, feature_dim=16, queue_size=64)
STREAM_FN = {'joint': lambda x: x, 'motion': joint_to_motion, 'bone': joint_to_bone}


pytestmark = pytest.mark.usefixtures('one_thread')   # tiny models: one thread is faster (tests/conftest.py)


@pytest.fixture(scope='module')
def batch():
    ds = SkeletonDataset(ensure_synthetic_dataset(), 'train')
    return {'x': torch.stack([ds[i]['x'] for i in range(0, 720, 120)])}   # (6, 3, 50, 25, 2)


def make(seed=0, **kw):
    return AimCLR(AimCLRConfig.preset('lesson', **{**TINY, **kw}), seed=seed)


@pytest.mark.parametrize('stream', ['joint', 'motion', 'bone'])
def test_stream_shapes(batch, stream):
    m = make(stream=stream)
    out = m.training_step(batch, 0)
    assert set(out) == {'loss', 'nce', 'd3m', 'nnm'} and torch.isfinite(out['loss'])
    m.eval()
    f = m.encode(batch['x'])
    assert f.shape == (6, 32)
    torch.testing.assert_close(f, m.encoder_q(STREAM_FN[stream](batch['x']), output='pooled'))


def by_hand(method, batch, epoch, seed):
    "The terms of `method.training_step(batch, epoch)` written out from the library pieces, on a copy."
    c, twin = method.config, copy.deepcopy(method)
    torch.manual_seed(seed); twin.seed(seed)
    g = twin.rng('cpu')
    s = STREAM_FN[c.stream]
    xq, xk = normal_view()(batch['x'], g), normal_view()(batch['x'], g)
    xe = aimclr_extreme(c.aug_method)(batch['x'], g)
    enc = twin.encoder_q
    z = F.normalize(enc(s(xq)), dim=1)                   # upstream order: the normal query, then the extreme view
    h = enc(s(xe), output='map')                         # (N*M, C, T', V)
    pool = lambda fmap: fmap.mean((2, 3)).view(len(xe), xe.shape[-1], -1).mean(1)
    ze = F.normalize(enc.fc(pool(h)), dim=1)
    zd = F.normalize(enc.fc(pool(eadm_drop(h, c.keep_prob, c.eadm_lambda, c.eadm_legacy))), dim=1)
    with torch.no_grad():
        momentum_update(twin.encoder_k, enc, c.momentum)
        k = F.normalize(twin.encoder_k(s(xk)), dim=1)
    M = twin.queue.queue.t()
    lz, le, ld = (moco_logits(t, k, M, c.temperature) for t in (z, ze, zd))
    if epoch < c.switch_epoch:
        nce = info_nce(z, k, M, c.temperature)
    else:
        w = nnm_mask(z, ze, zd, M, c.topk).float()
        nce = (-(w * F.log_softmax(lz, 1)).sum(1) / w.sum(1)).mean()
    p = F.softmax(lz.detach(), 1)
    d3m = (-0.5 * (p * F.log_softmax(le, 1)).sum(1) - 0.5 * (p * F.log_softmax(ld, 1)).sum(1)).mean()
    torch.testing.assert_close(d3m, d3m_loss(lz, le, ld))
    return nce, d3m


@pytest.mark.parametrize('epoch,stream,legacy', [(1, 'joint', False), (2, 'joint', False), (5, 'bone', False), (0, 'motion', True)])
def test_loss_by_hand(batch, epoch, stream, legacy):
    m = make(stream=stream, eadm_legacy=legacy, topk=2)   # switch_epoch 2
    nce, d3m = by_hand(m, batch, epoch, seed=11)
    torch.manual_seed(11); m.seed(11)
    out = m.training_step(batch, epoch)
    assert out['nnm'] == float(epoch >= 2)
    torch.testing.assert_close(out['nce'], nce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['d3m'], d3m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['loss'], nce + d3m, rtol=1e-5, atol=1e-6)


def test_nnm_changes_the_nce_term(batch):
    m = make()
    torch.manual_seed(1); m.seed(1); before = m.training_step(batch, 1)   # fill part of the queue with real keys
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    torch.manual_seed(2); a.seed(2); plain = a.training_step(batch, 1)
    torch.manual_seed(2); b.seed(2); mined = b.training_step(batch, 2)
    torch.testing.assert_close(plain['d3m'], mined['d3m'])              # D3M does not see the mask
    assert not torch.allclose(plain['nce'], mined['nce'])


def test_eadm_branch():
    enc = make().encoder_q.eval()
    x = torch.randn(3, 3, 50, 25, 2)
    ze, zd = extreme_embeddings(enc, x, EADM(0.7))
    torch.testing.assert_close(ze, F.normalize(enc(x), dim=1))
    assert (ze - zd).norm(dim=1).min() > 1e-4                               # the fixed EADM drops something
    ze_l, zd_l = extreme_embeddings(enc, x, EADM(0.7, legacy=True))
    torch.testing.assert_close(ze_l, zd_l)                                  # the first release's masks are all ones


def test_one_step_grads_ema_queue(batch):
    m = make()
    kb, qb = [p.clone() for p in m.encoder_k.parameters()], [p.clone() for p in m.encoder_q.parameters()]
    ptr = int(m.queue.queue_ptr)
    out = m.training_step(batch, 3)
    out['loss'].backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.encoder_q.parameters())
    for a, k0, q0 in zip(m.encoder_k.parameters(), kb, qb):
        torch.testing.assert_close(a, 0.999 * k0 + 0.001 * q0, rtol=0, atol=1e-6)
    assert int(m.queue.queue_ptr) == (ptr + 6) % 64


def test_upstream_keys():
    m = make()
    assert {k: tuple(v.shape) for k, v in m.backbone.state_dict().items()} == \
           {k: tuple(s) for k, s in upstream_stgcn_keys(4, 32, head='none').items()}
    assert set(m.state_dict()) == set(SkeletonCLR(SkeletonCLRConfig.preset(**TINY)).state_dict())   # key-compatible
    g = torch.Generator().manual_seed(0)
    keys = upstream_stgcn_keys(4, 32, head='mlp', num_class=16)
    up = {f'module.{p}.{k}': (m.backbone.A.clone() if k == 'A' else torch.randn(s, generator=g) if s else torch.tensor(1))   # the real graph, as in a real checkpoint
          for p in ('encoder_q', 'encoder_k') for k, s in keys.items()}
    rep = load_upstream_checkpoint(m.backbone, {k[7:]: v for k, v in up.items()}, prefix='encoder_q.', ignore=('fc.',))
    assert rep['missing'] == [] and rep['unexpected'] == []
    up.update({'module.queue': torch.randn(16, 64), 'module.queue_ptr': torch.tensor([4])})
    m2 = make().load_upstream(up)
    assert torch.equal(m2.encoder_q.edge_importance[3], up['module.encoder_q.edge_importance.3']) and int(m2.queue.queue_ptr) == 4


def test_trainer_resume_is_bit_identical(tmp_path):
    ds = SkeletonDataset(ensure_synthetic_dataset(), 'train', subset=np.arange(0, 720, 45))   # 16 clips
    def run(out, seed=0, stop_at=None, **kw):
        seed_everything(seed)
        cfg = train_preset('lesson', epochs=2, batch_size=8, progress=False, out_dir=str(tmp_path / out), **kw)
        return Trainer(make(seed, switch_epoch=1), ds, cfg).fit(stop_at)
    straight = run('a')
    run('b', stop_at=1)
    assert latest_checkpoint(tmp_path / 'b') == checkpoint_path(tmp_path / 'b', 1)
    resumed = run('b', seed=5, resume='auto')
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r['loss'] for r in straight.history] == [r['loss'] for r in resumed.history]
    assert [r['nnm'] for r in resumed.history] == [0.0, 1.0] and all(np.isfinite(r['loss']) for r in resumed.history)


def test_presets_construct():
    assert set(AIMCLR_PRESETS) == set(AIMCLR_TRAIN_RECIPES)
    for name in AIMCLR_PRESETS:
        cfg = AimCLRConfig.preset(name)
        train_preset('lesson' if name == 'lesson' else 'paper', **AIMCLR_TRAIN_RECIPES[name])
    AimCLR(AimCLRConfig.preset('lesson'))
    m = AimCLR()
    assert (m.config.keep_prob, m.config.switch_epoch, m.config.topk, m.queue.size) == (0.7, 150, 1, 32768)
    assert len(m.extreme) == 2 + 5 and not m.eadm.legacy
    legacy = AimCLR(AimCLRConfig.preset('first_release', **TINY))
    assert legacy.eadm.legacy and len(legacy.extreme) == 2 + 6


@pytest.mark.parametrize('field,value', [('stream', 'rgb'), ('aug_method', '17'), ('keep_prob', 0.0), ('keep_prob', 1.5),
                                         ('eadm_lambda', 0), ('switch_epoch', -2), ('topk', 0), ('momentum', 2.0),
                                         ('temperature', -1.0), ('feature_dim', 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f'AimCLRConfig.{field}='):
        AimCLRConfig(**{field: value})


def test_bad_input(batch):
    m = make()
    x = batch['x']
    with pytest.raises(ValueError, match='expected 3 coordinate channels'): m.training_step({'x': x[:, :1]}, 0)
    with pytest.raises(ValueError, match='expected 25 joints'): m.training_step({'x': x[..., :20, :]}, 0)
    with pytest.raises(ValueError, match='expected 50 frames'): m.encode(x[:, :, :10])
    with pytest.raises(TypeError, match='expected a config of type AimCLRConfig'): AimCLR(SkeletonCLRConfig.preset())


def _bn_running_stats(encoder):
    return {k: v.clone() for k, v in encoder.state_dict().items() if 'running_' in k}


@pytest.mark.parametrize('dropout', [0.0, 0.5])
def test_bn_running_stats_follow_upstream_order(batch, dropout):
    "Levigty/AimCLR net/aimclr.py forward: q = encoder_q(im_q), then encoder_q(im_q_extreme, drop=True), then EMA and key."
    m = make(dropout=dropout).double()
    x = batch['x'].double()
    stats = {}
    for order in ('upstream', 'extreme_first'):
        twin = copy.deepcopy(m)
        torch.manual_seed(5); twin.seed(5)
        g = twin.rng('cpu')
        xq, xk = normal_view()(x, g), normal_view()(x, g)
        xe = aimclr_extreme(m.config.aug_method)(x, g)
        enc = twin.encoder_q
        extreme = lambda: enc.fc(enc.pool(eadm_drop(enc(xe, output='map'), 0.7, 1e-4), x.shape[-1]))
        if order == 'upstream': enc(xq); extreme()
        else: extreme(); enc(xq)
        with torch.no_grad():
            momentum_update(twin.encoder_k, enc, m.config.momentum)
            twin.encoder_k(xk)
        stats[order] = (_bn_running_stats(enc), _bn_running_stats(twin.encoder_k))
    torch.manual_seed(5); m.seed(5); m.training_step({'x': x}, 0)
    got = (_bn_running_stats(m.encoder_q), _bn_running_stats(m.encoder_k))
    for mine, want, other in zip(got, stats['upstream'], stats['extreme_first']):
        assert mine.keys() == want.keys() and len(mine) > 20
        for k in mine: torch.testing.assert_close(mine[k], want[k], rtol=0, atol=1e-13)
    # the other order leaves the query's statistics measurably elsewhere (the test can tell the orders apart)
    rel = [((stats['extreme_first'][0][k] - stats['upstream'][0][k]).norm() / stats['upstream'][0][k].norm()).item()
           for k in stats['upstream'][0] if 'running_var' in k]
    assert max(rel) > 1e-3
