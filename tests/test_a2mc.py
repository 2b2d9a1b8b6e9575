"""A2MC: shapes of the presets, gradients, the loss against a computation from the library pieces, exact resume, config checks."""
import copy
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from skelnb.methods.a2mc import A2MC, A2MCConfig, A2MC_PRESETS, A2MC_TRAIN_RECIPES, SCDNetBackbone
from skelnb.train import method_train_config
from skelnb.attacks import att_aug
from skelnb.augment.core import Compose
from skelnb.augment.ops import TemporalMask
from skelnb.augment.presets import a2mc_view
from skelnb.data import ArrayDataset
from skelnb.losses import scd_losses
from skelnb.mixers import a2mc_mix_loss
from skelnb.train import Trainer, TrainConfig, seed_everything, embedding_stats
from skelnb.checkpoint import latest_checkpoint, checkpoint_path


pytestmark = pytest.mark.usefixtures('one_thread')   # tiny models: one thread is faster (tests/conftest.py)


def clips(n=8, frames=24, persons=2, seed=0):
    "Smooth random clips `(n, 3, frames, 25, persons)` (random walks), with varying valid lengths."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, frames, 25, persons, generator=g).cumsum(2) * 0.05 + torch.randn(n, 3, 1, 25, persons, generator=g) * 0.3
    lengths = torch.randint(frames // 2, frames + 1, (n,), generator=g)
    return x, lengths


def batch_of(n=8, **kw):
    x, lengths = clips(n, **kw)
    return {'x': x, 'label': torch.arange(n) % 3, 'index': torch.arange(n), 'length': lengths}


def lesson(**kw):
    "The released backbone at lesson size (the tiny SCD-Net): the preset the mechanics are checked on."
    return A2MCConfig.preset('lesson_scdnet', **kw)


# ---------------------------------------------------------------- shapes

def test_lesson_shapes():
    seed_everything(0)
    m = A2MC(lesson())
    b = batch_of()
    xq, xk = m.views(b['x'], b['length'])
    assert xq.shape == xk.shape == (8, 3, 16, 25, 2) and not torch.equal(xq, xk)
    z = m.embed(xq)
    assert set(z) == {'t', 's', 'i'} and all(v.shape == (8, 32) for v in z.values())
    assert torch.allclose(z['i'].norm(dim=1), torch.ones(8))
    m.eval()
    with torch.no_grad(): f = m.encode(b['x'], b['length'])
    assert f.shape == (8, 2 * m.encoder_q.config.hidden) == (8, m.feature_dim_out)
    assert isinstance(m.backbone, SCDNetBackbone) and m.backbone.gcn_t.data_bn is m.encoder_q.gcn_t.data_bn
    assert not any(k.split('.')[0].endswith('_proj') for k in m.backbone.state_dict())


def test_stgcn_shapes_and_step():
    seed_everything(0)
    m = A2MC(A2MCConfig.preset('stgcn', bank_size=32, bank_warmup=False))
    assert m.encoder_q.config.hidden_channels == 16 and set(m.banks) == {'i'}
    b = batch_of(frames=30)
    out = m.training_step(b, 0)
    assert set(out) >= {'loss', 'nce', 'mix', 'i_i', 'bank_loss'} and torch.isfinite(out['loss'])
    out['loss'].backward()
    assert all(p.grad is None for p in list(m.encoder_k.parameters()) + list(m.projector_k.parameters()))
    assert any(p.grad is not None for p in m.projector_q.parameters())
    m.eval()
    with torch.no_grad(): assert m.encode(b['x']).shape == (8, 256)
    assert m.backbone is m.encoder_q


# ---------------------------------------------------------------- gradients and state

def test_one_step_gradients_only_where_they_belong():
    seed_everything(0)
    m = A2MC(lesson(bank_warmup=False, bank_size=64))
    b = batch_of()
    xq, _ = m.views(b['x'], b['length'])
    x_adv = m.attack(xq)
    assert all(p.grad is None for p in m.parameters()), 'the attack left gradients on parameters'
    assert 0 < (x_adv - xq).abs().max().item() <= m.config.att_aug.step_size * (1 + 1e-3)
    W0 = {k: bank.W.clone() for k, bank in m.banks.items()}
    out = m.training_step(b, 0)
    assert torch.isfinite(out['loss']) and out['warmup'] == 0.0 and out['mix'] != 0
    out['loss'].backward()
    q_grads = [p.grad for p in m.encoder_q.parameters() if p.requires_grad]
    assert q_grads and all(g is not None and torch.isfinite(g).all() for g in q_grads)
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert m.attack_head.weight.grad is None and not m.attack_head.weight.requires_grad
    assert all(not torch.equal(W0[k], m.banks[k].W) for k in W0), 'every bank takes an ascent step'
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert not any(n.startswith(('encoder_k', 'attack_head', 'banks')) for n in names)


def test_warmup_fills_banks_then_copies_query_into_key():
    seed_everything(0)
    m = A2MC(lesson(bank_size=16))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    b = batch_of()
    for step in range(2):
        assert not m.banks_full and not bool(m.warmed_up)
        out = m.training_step(b, 0)
        assert out['warmup'] == 1.0 and float(out['attack_linf']) == 0.0
        opt.zero_grad(); out['loss'].backward(); opt.step(); m.after_optimizer_step(step, 10)
    assert m.banks_full and bool(m.warmed_up)
    assert all(torch.equal(a, c) for a, c in zip(m.encoder_k.state_dict().values(), m.encoder_q.state_dict().values()))
    assert all(torch.allclose(bank.W.norm(dim=0), torch.ones(16), atol=1e-5) for bank in m.banks.values())
    out = m.training_step(b, 0)
    assert out['warmup'] == 0.0 and float(out['attack_linf']) > 0


def by_hand_loss(m, batch, seed):
    "A2MC's loss from the library functions: views, att_aug, the encoders, scd_losses and a2mc_mix_loss."
    cfg = m.config
    g = torch.Generator().manual_seed(seed)
    view = a2mc_view(cfg.stream, cfg.frames, cfg.crop_scale, cfg.min_crop, cfg.layout)
    view = Compose([replace(s, chunk=cfg.frames // 16) if isinstance(s, TemporalMask) else s for s in view.steps])
    xq, xk = view(batch['x'], g, batch['length']), view(batch['x'], g, batch['length'])
    torch.manual_seed(seed)
    x_adv = att_aug(SCDNetBackbone(m.encoder_q), xq, m.attack_head, layout=cfg.layout, **asdict(cfg.att_aug))
    zq = m.encoder_q(x_adv)
    with torch.no_grad(): zk = m.encoder_k(xk)
    q = {b: F.normalize(zq[f'z_{b}'], dim=1) for b in 'tsi'}
    k = {b: F.normalize(zk[f'z_{b}'], dim=1) for b in 'tsi'}
    D = {b: m.banks[b].negatives for b in 'tsi'}
    nce = scd_losses(q['t'], q['s'], q['i'], k['t'], k['s'], k['i'], D['t'], D['s'], D['i'], cfg.temperature)
    mix = a2mc_mix_loss([(q['t'], D['i']), (q['s'], D['i']), (q['i'], D['t']), (q['i'], D['s'])], cfg.temperature,
                        pos_ratio=cfg.pos_ratio, neg_ratio=cfg.neg_ratio)
    return nce, mix


@pytest.mark.parametrize('overrides', [dict(), dict(stream='motion', temperature=0.07, pos_ratio=0.3)])
def test_loss_matches_by_hand(overrides):
    cfg = lesson(bank_warmup=False, bank_size=32, **overrides)
    seed_everything(0); m1 = A2MC(cfg, seed=3)
    seed_everything(0); m2 = A2MC(cfg, seed=3)
    b = batch_of()
    nce, mix = by_hand_loss(m2, b, seed=3)
    torch.manual_seed(3)
    out = m1.training_step(b, 0)
    for name in ('t_i', 's_i', 'i_t', 'i_s'): assert torch.allclose(out[name], nce[name], atol=1e-5)
    assert torch.allclose(out['mix'], mix, atol=1e-5)
    assert torch.allclose(out['loss'], nce['loss'] + mix, atol=1e-5)


def test_denominator_mode_and_weights():
    b = batch_of()
    seed_everything(0); m = A2MC(lesson(bank_warmup=False, bank_size=32, pnm_mode='denominator'))
    out = m.training_step(b, 0)
    assert float(out['mix']) == 0.0 and torch.allclose(out['loss'], out['nce'])
    seed_everything(0); m = A2MC(lesson(bank_warmup=False, bank_size=32, nce_weight=0.5, mix_weight=2.0))
    out = m.training_step(b, 0)
    assert torch.allclose(out['loss'], 0.5 * out['nce'] + 2.0 * out['mix'], atol=1e-5)


def test_cosine_momentum_schedule():
    seed_everything(0)
    m = A2MC(lesson(bank_warmup=False, momentum=0.9, momentum_schedule='cosine'))
    assert m.momentum_at(0, 10) == pytest.approx(0.9) and m.momentum_at(10, 10) == pytest.approx(1.0)
    assert m.momentum_at(3, None) == pytest.approx(0.9)
    with torch.no_grad(): m.encoder_q.gcn_t.data_bn.bias.add_(1.0)
    k0 = m.encoder_k.gcn_t.data_bn.bias.clone()
    m.after_optimizer_step(5, 10)          # m = 0.95
    assert torch.allclose(m.encoder_k.gcn_t.data_bn.bias - k0, 0.05 * (m.encoder_q.gcn_t.data_bn.bias - k0), atol=1e-6)


# ---------------------------------------------------------------- training and resume

def tiny_run(cfg: TrainConfig, seed=0):
    x, lengths = clips(24, frames=24, seed=1)
    ds = ArrayDataset(x, (torch.arange(24) % 3).numpy(), lengths=lengths.numpy())
    seed_everything(seed)
    return Trainer(A2MC(lesson(bank_size=16)), ds, cfg)


def test_trainer_resume_is_bit_identical(tmp_path):
    cfg = method_train_config('a2mc', 'lesson', epochs=2, batch_size=8, progress=False)
    straight = tiny_run(replace(cfg, out_dir=str(tmp_path / 'a'))).fit()
    assert len(straight.history) == 2 and all(torch.isfinite(torch.tensor(r['loss'])) for r in straight.history)
    assert straight.history[0]['warmup'] > 0 and straight.history[1]['warmup'] == 0
    tiny_run(replace(cfg, out_dir=str(tmp_path / 'b'))).fit(stop_at=1)
    assert latest_checkpoint(tmp_path / 'b') == checkpoint_path(tmp_path / 'b', 1)
    resumed = tiny_run(replace(cfg, out_dir=str(tmp_path / 'b'), resume='auto'), seed=7).fit()
    a, r = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == r.keys() and {'banks.i.W', 'banks.t.v', 'banks.s.fill_ptr', 'warmed_up'} <= set(a)
    assert all(torch.equal(a[k], r[k]) for k in a)
    assert [h['loss'] for h in straight.history] == [h['loss'] for h in resumed.history]


# ---------------------------------------------------------------- the lesson preset does not collapse

def _query_spread(m, x) -> tuple:
    "(raw per-dimension std of the unit backbone features, mean pair cosine qq of the unit query embeddings) of clips `x`."
    m.eval()
    with torch.no_grad():
        f, q = m.encode(x), m.embed(m.eval_aug(x, None, None), 'q')['i']
    m.train()
    return embedding_stats(f)['emb_std'], (q @ q.t()).mean().item()


def test_lesson_preset_does_not_collapse(tmp_path):
    from skelnb.data import SkeletonDataset, ensure_synthetic_dataset
    train = SkeletonDataset(ensure_synthetic_dataset(), 'train')
    part = torch.utils.data.Subset(train, list(range(0, len(train), 2)))          # 360 clips, 22 steps an epoch
    x = torch.stack([train[i]['x'] for i in range(0, len(train), 12)][:64])
    seed_everything(0)
    m = A2MC(A2MCConfig.preset('lesson'))
    assert m.config.backbone == 'stgcn' and m.config.momentum_schedule == 'cosine'
    std0, qq0 = _query_spread(m, x)
    cfg = method_train_config('a2mc', 'lesson', epochs=2, progress=False, out_dir=str(tmp_path))
    tr = Trainer(m, part, cfg).fit()
    std1, qq1 = _query_spread(m, x)
    last = tr.history[-1]
    d = m.feature_dim_out
    assert last['collapsed'] == 0.0 and last['emb_std'] > 0.5 / d ** 0.5 and last['emb_rank'] > 2, last
    assert std1 > 10 * std0 and std1 > 0.02, (std0, std1)      # the features spread out (collapsed SCD-Net: about 1e-3)
    # qq is no test of collapse for this backbone: the untrained ST-GCN's pooled ReLU features are all positive, so even its
    # random twin has qq = 1.000; training lowers it (to about 0.9 after 4 full epochs)
    assert qq1 < qq0, (qq0, qq1)


def test_released_scdnet_lesson_config_builds():
    cfg = A2MCConfig.preset('lesson_scdnet')
    assert cfg == A2MCConfig(encoder='tiny', frames=16, feature_dim=32, min_crop=16, bank_size=256, attack_classes=32)
    assert (cfg.backbone, cfg.momentum, cfg.momentum_schedule, cfg.attack, cfg.pnm_mode) == ('scdnet', 0.999, 'constant', True, 'released')
    m = A2MC(cfg)
    assert isinstance(m.backbone, SCDNetBackbone) and set(m.banks) == {'t', 's', 'i'}
    assert A2MCConfig.preset('lesson', backbone='scdnet').encoder_config() == cfg.encoder_config()
    assert method_train_config('a2mc', 'lesson_scdnet') == method_train_config('a2mc', 'lesson')
    for name in ('paper', 'code_defaults'):                    # SCD-Net's released recipe, unchanged
        c = A2MCConfig.preset(name)
        assert (c.backbone, c.encoder, c.momentum, c.momentum_schedule, c.frames) == ('scdnet', 'paper', 0.999, 'constant', 64)


# ---------------------------------------------------------------- presets and config

def test_presets_construct():
    assert set(A2MC_PRESETS) == set(A2MC_TRAIN_RECIPES) >= {'paper', 'code_defaults', 'lesson', 'lesson_scdnet', 'stgcn'}
    for name in A2MC_PRESETS:
        cfg, tcfg = A2MCConfig.preset(name), method_train_config('a2mc', name)
        assert cfg.bank_size % tcfg.batch_size == 0
    assert method_train_config('a2mc', 'paper').epochs == 451 and method_train_config('a2mc', 'paper').lr == 0.01
    assert A2MCConfig.preset('stgcn').encoder_config().hidden_channels == 16
    with torch.device('meta'):              # the paper model without memory: count its parameters
        m = A2MC(A2MCConfig.preset('paper'))
    n = sum(p.numel() for p in m.encoder_q.parameters())
    # the reference's architecture: 2 token MLPs (3200 and 4096 -> 2048 -> 2048), 2 Transformer layers
    # (d 2048, FFN 2048: 4 d^2 attention + 2 d^2 FFN), projectors 2048 -> 2048 -> 128 (x2) and 4096 -> 2048 -> 128
    d = 2048
    big = (3200 * d + d * d) + (4096 * d + d * d) + 2 * (6 * d * d) + 2 * (d * d + d * 128) + (2 * d * d + d * 128)
    assert big < n < 1.02 * big, (n, big)
    assert m.feature_dim_out == 4096 and m.banks['i'].size == 8192 and m.config.temperature == 0.2


@pytest.mark.parametrize('kw, field', [
    (dict(backbone='gru'), 'backbone'), (dict(encoder='huge'), 'encoder'), (dict(stream='velocity'), 'stream'),
    (dict(layout='nope'), 'layout'), (dict(frames=0), 'frames'), (dict(frames=5), 'frames'), (dict(temporal_chunk=0), 'temporal_chunk'), (dict(bank_size=0), 'bank_size'),
    (dict(temperature=-1.0), 'temperature'), (dict(momentum=1.5), 'momentum'), (dict(momentum_schedule='linear'), 'momentum_schedule'),
    (dict(pnm_mode='mochi'), 'pnm_mode'), (dict(neg_ratio=2.0), 'neg_ratio'), (dict(crop_scale=(0.5, 0.2)), 'crop_scale'),
    (dict(eval_ratio=0.0), 'eval_ratio'), (dict(mix_weight=-1.0), 'mix_weight'), (dict(att_aug=dict(update='adagrad')), 'att_aug'),
    (dict(encoder_overrides=dict(num_persons=1)), 'encoder_overrides'), (dict(bank_lr=0.0), 'bank_lr'),
])
def test_bad_config_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=rf'A2MCConfig\.{field}\b'):
        A2MCConfig(**kw)
    with pytest.raises(TypeError):
        A2MC(config='lesson')


# ---------------------------------------------------------------- the banks' ascent step, as released

def released_bank_step(W, v, q, kp, l_neg, Wn, lr=3.0, mom=0.9, wd=1e-4, t=0.03):
    "One bank update of the released A2MC code (scd/builder.py), transcribed: `l_neg` and `Wn` come from the forward pass."
    logits = torch.cat([(q * kp).sum(1, keepdim=True), l_neg], 1) / t
    p = torch.softmax(logits, 1)[:, 1:]
    g = q.t() @ p / logits.shape[0] - (p * l_neg).mean(0) * Wn
    g = -g / W.norm(dim=0) / t           # W is the bank as it stands now (the released code swaps W.data in place)
    v = mom * v + g + wd * W
    return W - lr * v, v


def test_bank_updates_match_the_released_order():
    seed_everything(0)
    m = A2MC(lesson(bank_warmup=False, bank_size=64)).double()
    b = batch_of(); b['x'] = b['x'].double()
    seen = {}
    embed = m.embed
    def recording_embed(x, which='q'):
        out = embed(x, which); seen[which] = {k: v.detach().clone() for k, v in out.items()}; return out
    m.embed = recording_embed
    for bank in m.banks.values(): bank.v.normal_()          # a non-zero momentum buffer, so its use is checked too
    W0 = {k: bank.W.clone() for k, bank in m.banks.items()}; v0 = {k: bank.v.clone() for k, bank in m.banks.items()}
    m.training_step(b, 0)
    q, k = seen['q'], seen['k']
    Wn = {n: F.normalize(W0[n], dim=0) for n in W0}
    # the forward pass: all four negatives' logits from the old banks
    terms = [('i', q['t'], k['i']), ('i', q['s'], k['i']), ('t', q['i'], k['t']), ('s', q['i'], k['s'])]
    negs = [qq @ Wn[n] for n, qq, _ in terms]
    W, v = dict(W0), dict(v0)
    for (n, qq, kk), l_neg in zip(terms, negs):
        W[n], v[n] = released_bank_step(W[n], v[n], qq, kk, l_neg, Wn[n])
    for n in W0:
        rel = ((m.banks[n].W - W[n]).norm() / W[n].norm()).item()
        assert rel < 1e-10, (n, rel)
        assert torch.allclose(m.banks[n].v, v[n], atol=1e-10)
    # the instance bank's second step differs clearly when it re-reads the updated bank
    seq = copy.deepcopy(m.banks['i']); seq.W.copy_(W0['i']); seq.v.copy_(v0['i'])
    seq.update_many([(q['t'], k['i']), (q['s'], k['i'])], released=False)
    assert ((seq.W - W['i']).norm() / W['i'].norm()).item() > 1e-6
