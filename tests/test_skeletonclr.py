"""skelnb.methods.skeletonclr and skelnb.methods.crossclr: SkeletonCLR and CrosSCLR shapes, losses against the library pieces, gradients, upstream keys, Trainer resume, configs."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skelnb.augment.presets import normal_view
from skelnb.data import SkeletonDataset, ensure_synthetic_dataset
from skelnb.checkpoint import load_upstream_checkpoint
from skelnb.encoders.stgcn import STGCN, upstream_stgcn_keys
from skelnb.losses import crossclr_loss_2view, crossclr_loss_3view, info_nce
from skelnb.memory import momentum_update
from skelnb.skeleton import joint_to_bone, joint_to_motion
from skelnb.methods.crossclr import CROSSCLR_PRESETS, CROSSCLR_TRAIN_RECIPES, CrosSCLR, CrosSCLRConfig
from skelnb.methods.skeletonclr import SKELETONCLR_PRESETS, SKELETONCLR_TRAIN_RECIPES, SkeletonCLR, SkeletonCLRConfig
from skelnb.train import Trainer, TrainConfig, seed_everything, train_preset
from skelnb.checkpoint import latest_checkpoint, checkpoint_path

TINY = dict(hidden_channels=4, hidden_dim=32, feature_dim=16, queue_size=64)


pytestmark = pytest.mark.usefixtures('one_thread')   # tiny models: one thread is faster (tests/conftest.py)


@pytest.fixture(scope='module')
def synth():
    return SkeletonDataset(ensure_synthetic_dataset(), 'train')


@pytest.fixture(scope='module')
def batch(synth):
    return {'x': torch.stack([synth[i]['x'] for i in range(0, 720, 120)])}   # 6 clips, 6 actions, (6, 3, 50, 25, 2)


def make(kind, seed=0, **kw):
    if kind == 'skeletonclr': return SkeletonCLR(SkeletonCLRConfig.preset('lesson', **{**TINY, **kw}), seed=seed)
    if kind == 'crossclr2': return CrosSCLR(CrosSCLRConfig.preset('lesson', **{**TINY, **kw}), seed=seed)
    if kind == 'crossclr3': return CrosSCLR(CrosSCLRConfig.preset('lesson_3view', **{**TINY, **kw}), seed=seed)
    raise KeyError(kind)


def query_key_params(method):
    "(query parameters, key parameters) of any of the methods."
    if isinstance(method, CrosSCLR):
        pairs = [method.encoders(v) for v in method.config.views]
        return [p for q, _ in pairs for p in q.parameters()], [p for _, k in pairs for p in k.parameters()]
    return list(method.encoder_q.parameters()), list(method.encoder_k.parameters())


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize('stream', ['joint', 'motion', 'bone'])
def test_skeletonclr_stream_shapes(batch, stream):
    m = SkeletonCLR(SkeletonCLRConfig.preset(stream=stream, **TINY))
    assert m.encode(batch['x']).shape == (6, 32)
    out = m.training_step(batch, 0)
    assert out['loss'].shape == () and torch.isfinite(out['loss'])
    # the stream is computed inside the method: encoding the stream directly with the encoder gives the same features
    m.eval()
    conv = {'joint': lambda x: x, 'motion': joint_to_motion, 'bone': joint_to_bone}[stream]
    torch.testing.assert_close(m.encode(batch['x']), m.encoder_q(conv(batch['x']), output='pooled'))


@pytest.mark.parametrize('views,dim', [(('joint', 'motion'), 64), (('joint', 'motion', 'bone'), 96), (('motion', 'bone'), 64)])
def test_crossclr_view_shapes(batch, views, dim):
    m = CrosSCLR(CrosSCLRConfig.preset('lesson', views=views, **TINY))
    assert m.encode(batch['x']).shape == (6, dim)
    assert CrosSCLR(CrosSCLRConfig.preset('lesson', views=views, encode_view=views[-1], **TINY)).encode(batch['x']).shape == (6, 32)
    for epoch in (0, 2):
        assert torch.isfinite(m.training_step(batch, epoch)['loss'])
    assert m.queue.views == views and len(m.backbones) == len(views)


# ---------------------------------------------------------------- one step: gradients, EMA, queue

@pytest.mark.parametrize('kind,epoch', [('skeletonclr', 0), ('crossclr2', 0), ('crossclr2', 3), ('crossclr3', 3)])
def test_one_step_grads_only_on_query_side(batch, kind, epoch):
    m = make(kind)
    qp, kp = query_key_params(m)
    k_before, q_before = [p.clone() for p in kp], [p.clone() for p in qp]
    out = m.training_step(batch, epoch)
    assert torch.isfinite(out['loss'])
    out['loss'].backward()
    assert all(p.grad is None for p in kp) and not any(p.requires_grad for p in kp)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in qp)
    for kb, ka, qb in zip(k_before, kp, q_before):   # one EMA step per training step
        torch.testing.assert_close(ka, 0.999 * kb + 0.001 * qb, rtol=0, atol=1e-6)


def test_queue_receives_the_keys(batch):
    m = make('skeletonclr')
    m.queue.queue_ptr.fill_(60)   # wraps around a 64-long queue
    twin = copy.deepcopy(m)
    torch.manual_seed(0); m.seed(1); m.training_step(batch, 0)
    torch.manual_seed(0); twin.seed(1)
    g = twin.rng('cpu')
    xq, xk = normal_view()(batch['x'], g), normal_view()(batch['x'], g)
    twin.encoder_q(xq)   # the query forward draws its dropout masks first
    with torch.no_grad():
        momentum_update(twin.encoder_k, twin.encoder_q, 0.999)
        k = F.normalize(twin.encoder_k(xk), dim=1)
    assert int(m.queue.queue_ptr) == (60 + 6) % 64
    cols = [(60 + i) % 64 for i in range(6)]
    torch.testing.assert_close(m.queue.queue[:, cols].t(), k)


# ---------------------------------------------------------------- losses by hand

def test_skeletonclr_loss_by_hand(batch):
    m = make('skeletonclr', momentum=0.9, temperature=0.2)
    twin = copy.deepcopy(m)
    torch.manual_seed(4); m.seed(9); out = m.training_step(batch, 0)
    torch.manual_seed(4); twin.seed(9)
    g = twin.rng('cpu')
    xq, xk = normal_view()(batch['x'], g), normal_view()(batch['x'], g)
    q = F.normalize(twin.encoder_q(xq), dim=1)
    with torch.no_grad():
        momentum_update(twin.encoder_k, twin.encoder_q, 0.9)
        k = F.normalize(twin.encoder_k(xk), dim=1)
    # InfoNCE written out: -log softmax of [q.k, q.M] / T at the positive
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ twin.queue.queue], 1) / 0.2
    want = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    torch.testing.assert_close(out['loss'], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind', ['crossclr2', 'crossclr3'])
def test_crossclr_loss_by_hand(batch, kind):
    m = make(kind)   # switch_epoch 2
    views = m.config.views
    for epoch in (1, 2):
        twin = copy.deepcopy(m)
        torch.manual_seed(4); m.seed(9); out = m.training_step(batch, epoch)
        torch.manual_seed(4); twin.seed(9)
        g = twin.rng('cpu')
        xq, xk = normal_view()(batch['x'], g), normal_view()(batch['x'], g)
        streams = {'joint': lambda x: x, 'motion': joint_to_motion, 'bone': joint_to_bone}
        qs = [F.normalize(twin.encoders(v)[0](streams[v](xq)), dim=1) for v in views]
        ks = []
        with torch.no_grad():
            for v in views:
                momentum_update(twin.encoders(v)[1], twin.encoders(v)[0], 0.999)
                ks.append(F.normalize(twin.encoders(v)[1](streams[v](xk)), dim=1))
        negs = [twin.queue.negatives(v) for v in views]
        if epoch < 2:
            want = sum(info_nce(q, k, n, 0.07) for q, k, n in zip(qs, ks, negs))
            assert out['cross'] == 0.0
        else:
            fn = crossclr_loss_2view if len(views) == 2 else crossclr_loss_3view
            want = fn(*[t for trio in zip(qs, ks, negs) for t in trio], topk=1, temperature=0.07, context=True)
            assert out['cross'] == 1.0
        torch.testing.assert_close(out['loss'], want, rtol=1e-5, atol=1e-6)


def test_crossclr_quirks(batch):
    m = make('crossclr2', share_heads=True, key_update_quirk=True)
    sd = m.state_dict()
    assert sd['encoder_q_motion.fc.2.0.weight'].data_ptr() == sd['encoder_q.fc.0.weight'].data_ptr()
    assert sd['encoder_k_motion.fc.2.2.bias'].data_ptr() == sd['encoder_k.fc.2.bias'].data_ptr()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad: p.add_(0.05)
    jk = [p.clone() for p in m.encoder_k.st_gcn_networks.parameters()]
    mk = [p.clone() for p in m.encoder_k_motion.st_gcn_networks.parameters()]
    m.training_step(batch, 1)   # plain phase: every key encoder moves
    assert any(not torch.equal(a, b) for a, b in zip(jk, m.encoder_k.st_gcn_networks.parameters()))
    jk = [p.clone() for p in m.encoder_k.st_gcn_networks.parameters()]
    m.training_step(batch, 2)   # cross phase: only motion's
    assert all(torch.equal(a, b) for a, b in zip(jk, m.encoder_k.st_gcn_networks.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(mk, m.encoder_k_motion.st_gcn_networks.parameters()))
    # default: no sharing
    d = make('crossclr2').state_dict()
    assert 'encoder_q_motion.fc.2.weight' in d and 'encoder_q_motion.fc.2.0.weight' not in d


# ---------------------------------------------------------------- upstream keys

def upstream_like(prefixes, hidden=4, hidden_dim=32, num_class=16, seed=0):
    "A dict shaped like an upstream checkpoint (values random), from the published key layout."
    g = torch.Generator().manual_seed(seed)
    keys = upstream_stgcn_keys(hidden, hidden_dim, head='mlp', num_class=num_class)
    A = STGCN('skeletonclr', hidden_channels=hidden, hidden_dim=hidden_dim).A   # a real checkpoint holds the graph it was trained with
    return {f'module.{p}.{k}': (A.clone() if k == 'A' else torch.randn(s, generator=g) if s else torch.tensor(3)) for p in prefixes for k, s in keys.items()}


def test_skeletonclr_upstream_keys_and_loading():
    m = make('skeletonclr')
    own = {k: tuple(v.shape) for k, v in m.backbone.state_dict().items()}
    assert own == {k: tuple(s) for k, s in upstream_stgcn_keys(4, 32, head='none').items()}
    up = upstream_like(['encoder_q', 'encoder_k'])
    rep = load_upstream_checkpoint(m.backbone, {k[7:]: v for k, v in up.items()}, prefix='encoder_q.', ignore=('fc.',))
    assert rep['missing'] == [] and rep['unexpected'] == []
    assert torch.equal(m.encoder_q.st_gcn_networks[9].residual[0].weight, up['module.encoder_q.st_gcn_networks.9.residual.0.weight'])
    # the whole upstream model state (encoders, queue, pointer) loads into the method
    up.update({'module.queue': torch.randn(16, 64), 'module.queue_ptr': torch.tensor([12])})
    m2 = make('skeletonclr').load_upstream(up)
    assert torch.equal(m2.encoder_k.fc[2].weight, up['module.encoder_k.fc.2.weight'])
    assert torch.equal(m2.queue.queue, up['module.queue']) and int(m2.queue.queue_ptr) == 12


def test_crossclr_upstream_loading():
    m = make('crossclr3')
    up = upstream_like(['encoder_q', 'encoder_k', 'encoder_q_motion', 'encoder_k_motion', 'encoder_q_bone', 'encoder_k_bone'])
    for name in ('queue', 'queue_motion', 'queue_bone'):
        up[f'module.{name}'] = torch.randn(16, 64); up[f'module.{name.replace("queue", "queue_ptr")}'] = torch.tensor([6])
    m.load_upstream(up)
    assert torch.equal(m.encoder_q_bone.data_bn.weight, up['module.encoder_q_bone.data_bn.weight'])
    assert torch.equal(m.queue.buffer('bone'), up['module.queue_bone']) and int(m.queue.queue_ptr) == 6
    assert set(m.backbones['motion'].state_dict()) == set(upstream_stgcn_keys(4, 32, head='none'))


# ---------------------------------------------------------------- Trainer: run and exact resume

def trainer(method_factory, ds, out_dir, seed=0, **kw):
    seed_everything(seed)
    cfg = train_preset('lesson', epochs=2, batch_size=8, progress=False, out_dir=str(out_dir), **kw)
    return Trainer(method_factory(seed), ds, cfg)


@pytest.mark.parametrize('kind', ['skeletonclr', 'crossclr2'])
def test_trainer_resume_is_bit_identical(tmp_path, synth, kind):
    ds = SkeletonDataset(ensure_synthetic_dataset(), 'train', subset=np.arange(0, 720, 45))   # 16 clips
    cfg = dict(switch_epoch=1) if kind.startswith('crossclr') else {}
    factory = lambda seed: make(kind, seed, **cfg)
    straight = trainer(factory, ds, tmp_path / 'a').fit()
    assert len(straight.history) == 2 and all(np.isfinite(r['loss']) for r in straight.history)
    trainer(factory, ds, tmp_path / 'b').fit(stop_at=1)
    assert latest_checkpoint(tmp_path / 'b') == checkpoint_path(tmp_path / 'b', 1)
    resumed = trainer(factory, ds, tmp_path / 'b', seed=7, resume='auto').fit()   # other weights and global state
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r['loss'] for r in straight.history] == [r['loss'] for r in resumed.history]
    if kind.startswith('crossclr'): assert [r['cross'] for r in resumed.history] == [0.0, 1.0]


# ---------------------------------------------------------------- presets, configs, bad input

def test_presets_construct():
    for name in SKELETONCLR_PRESETS:
        cfg = SkeletonCLRConfig.preset(name)
        train_preset('lesson' if name.startswith('lesson') else 'paper', **SKELETONCLR_TRAIN_RECIPES[name])
        if name.startswith('lesson'): SkeletonCLR(cfg)
    for name in CROSSCLR_PRESETS:
        cfg = CrosSCLRConfig.preset(name)
        train_preset('lesson' if name.startswith('lesson') else 'paper', **CROSSCLR_TRAIN_RECIPES[name])
        if name.startswith('lesson'): CrosSCLR(cfg)
    m = SkeletonCLR()   # the paper model
    assert m.queue.size == 32768 and m.config.temperature == 0.07 and m.config.momentum == 0.999
    assert sum(p.numel() for p in m.backbone.parameters()) == 821_380   # the published backbone size
    assert CrosSCLRConfig.preset('paper').switch_epoch == 150 and CrosSCLRConfig.preset('paper_3view').views == ('joint', 'motion', 'bone')
    assert train_preset('paper', **SKELETONCLR_TRAIN_RECIPES['paper']).epochs == 300
    with pytest.raises(KeyError, match='no SkeletonCLRConfig preset'): SkeletonCLRConfig.preset('big')
    with pytest.raises(TypeError, match='no field'): CrosSCLRConfig.preset('paper', queue_len=4)


@pytest.mark.parametrize('cls,field,value', [
    (SkeletonCLRConfig, 'stream', 'rgb'), (SkeletonCLRConfig, 'momentum', -0.1), (SkeletonCLRConfig, 'temperature', 0),
    (SkeletonCLRConfig, 'queue_size', 0), (SkeletonCLRConfig, 'layout', 'nope'), (SkeletonCLRConfig, 'dropout', 1.0),
    (SkeletonCLRConfig, 'frames', 1), (CrosSCLRConfig, 'views', ('joint',)), (CrosSCLRConfig, 'views', ('joint', 'rgb')),
    (CrosSCLRConfig, 'switch_epoch', -1), (CrosSCLRConfig, 'topk', 0), (CrosSCLRConfig, 'encode_view', 'bone'),
    (CrosSCLRConfig, 'hidden_channels', 0),
])
def test_bad_config_names_the_field(cls, field, value):
    with pytest.raises(ValueError, match=f'{cls.__name__}.{field}='):
        cls(**{field: value})


@pytest.mark.parametrize('kind', ['skeletonclr', 'crossclr2'])
def test_bad_input(batch, kind):
    m = make(kind)
    x = batch['x']
    with pytest.raises(ValueError, match='expected 3 coordinate channels'): m.training_step({'x': x[:, :2]}, 0)
    with pytest.raises(ValueError, match='expected 25 joints'): m.encode(x[..., :18, :])
    with pytest.raises(ValueError, match='expected 50 frames'): m.encode(x[:, :, :30])
    with pytest.raises(ValueError, match=r'\(N, C, T, V, M\)'): m.encode(x[0])
    assert make(kind, frames=None).encode(x[:, :, :30]).shape[0] == 6


# ---------------------------------------------------------------- share_heads: the upstream step, transcribed

def _upstream_crossclr_step(model, im_q, im_k, cross, T=0.07, m=0.999, topk=1, key_order='upstream'):
    "Hand transcription of LinguoLi/CrosSCLR net/crossclr.py (forward / cross_training, context on) and its processor loss."
    def motion(x):
        out = torch.zeros_like(x); out[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]; return out
    def ema(enc_q, enc_k):
        for pq, pk in zip(enc_q.parameters(), enc_k.parameters()): pk.data = pk.data * m + pq.data * (1. - m)
    q = F.normalize(model.encoder_q(im_q), dim=1)
    q_m = F.normalize(model.encoder_q_motion(motion(im_q)), dim=1)
    with torch.no_grad():
        if key_order == 'upstream':       # every EMA step, then both keys
            if not cross: ema(model.encoder_q, model.encoder_k)   # the cross phase moves only the motion key encoder
            ema(model.encoder_q_motion, model.encoder_k_motion)
            k = F.normalize(model.encoder_k(im_k), dim=1)
            k_m = F.normalize(model.encoder_k_motion(motion(im_k)), dim=1)
        else:                             # each key right after its own stream's EMA step
            if not cross: ema(model.encoder_q, model.encoder_k)
            k = F.normalize(model.encoder_k(im_k), dim=1)
            ema(model.encoder_q_motion, model.encoder_k_motion)
            k_m = F.normalize(model.encoder_k_motion(motion(im_k)), dim=1)
    queue, queue_m = model.queue.buffer('joint').clone(), model.queue.buffer('motion').clone()   # (d, K), as upstream
    l_pos, l_neg = (q * k).sum(1, keepdim=True), q @ queue
    l_pos_m, l_neg_m = (q_m * k_m).sum(1, keepdim=True), q_m @ queue_m
    if not cross:
        zero = torch.zeros(len(q), dtype=torch.long)
        return F.cross_entropy(torch.cat([l_pos, l_neg], 1) / T, zero) + F.cross_entropy(torch.cat([l_pos_m, l_neg_m], 1) / T, zero)
    l_ctx = l_neg * l_neg_m
    logits, logits_m = torch.cat([l_pos, l_neg, l_ctx], 1) / T, torch.cat([l_pos_m, l_neg_m, l_ctx], 1) / T
    oh = torch.zeros_like(l_neg).scatter_(1, torch.topk(l_neg_m, topk, 1)[1], 1)     # joint's positives mined by motion
    oh_m = torch.zeros_like(l_neg_m).scatter_(1, torch.topk(l_neg, topk, 1)[1], 1)
    one = torch.ones(len(q), 1, dtype=q.dtype)
    mask, mask_m = torch.cat([one, oh, oh], 1), torch.cat([one, oh_m, oh_m], 1)
    loss = (-(F.log_softmax(logits, 1) * mask).sum(1) / mask.sum(1)).mean()
    return loss + (-(F.log_softmax(logits_m, 1) * mask_m).sum(1) / mask_m.sum(1)).mean()


def test_crossclr_share_heads_matches_upstream_step(batch):
    "share_heads + key_update_quirk (upstream's model) in float64: loss and every encoder tensor equal the transcription."
    m = make('crossclr2', dropout=0.0, share_heads=True, key_update_quirk=True).double()
    with torch.no_grad():   # move the query side away from the key side so that every EMA step is visible
        g = torch.Generator().manual_seed(1)
        for p in m.parameters():
            if p.requires_grad: p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = batch['x'].double()
    for epoch in (1, 2):    # plain phase, then cross phase (switch_epoch 2)
        twin, other = copy.deepcopy(m), copy.deepcopy(m)
        m.seed(9); out = m.training_step({'x': x}, epoch)
        twin.seed(9); g = twin.rng('cpu')
        xq, xk = normal_view()(x, g), normal_view()(x, g)
        want = _upstream_crossclr_step(twin, xq, xk, cross=epoch >= 2)
        assert abs(out['loss'].item() - want.item()) < 1e-12
        sd, sdt = m.state_dict(), twin.state_dict()
        for k in sd:
            if k.startswith('encoder_') and sd[k].is_floating_point(): torch.testing.assert_close(sd[k], sdt[k], rtol=0, atol=1e-12)
        # the other order (key right after its own EMA step) is measurably different: the test can tell them apart
        assert abs(_upstream_crossclr_step(other, xq, xk, cross=epoch >= 2, key_order='per_view').item() - want.item()) > 1e-5
