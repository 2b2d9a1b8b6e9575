"""SkeAttnCLR: shapes of both presets, one training step, the loss against a computation from the library pieces,
exact resume under the Trainer, upstream backbone keys, and config validation."""
import copy, math
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from skelnb.augment.ops import part_swap
from skelnb.augment.presets import get_preset
from skelnb.encoders.stgcn import upstream_stgcn_keys
from skelnb.losses import info_nce
from skelnb.memory import cosine_momentum
from skelnb.train import ToyClips, Trainer, train_preset, seed_everything
from skelnb.checkpoint import latest_checkpoint, checkpoint_path
from skelnb.methods.skeattnclr import SkeAttnCLR, SkeAttnCLRConfig, SKEATTNCLR_PRESETS, SKEATTNCLR_TRAIN_RECIPES

torch.set_num_threads(1)

# a very small model: 16 frames of 25 joints, 1 person
TINY = dict(frames=16, hidden_channels=4, hidden_dim=16, feature_dim=8, predictor_hidden=16, heads=2, queue_size=32,
            swap_chunks=(1, 3))


def tiny(**kw): return SkeAttnCLRConfig.preset('lesson', **{**TINY, **kw})


def clips(n=6, T=16, M=1, seed=0):
    return torch.randn(n, 3, T, 25, M, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('preset,T,M', [('lesson', 50, 2), ('paper', 64, 2), ('ntu60_joint', 64, 1)])
def test_shapes(preset, T, M):
    cfg = SkeAttnCLRConfig.preset(preset)
    m = SkeAttnCLR(cfg)
    x = clips(3, T, M)
    v = m.views(x)
    assert v['x_q'].shape == v['x_k'].shape == v['x_mix'].shape == x.shape and v['region'].shape == (3, T, 25)
    with torch.no_grad():
        e = m.embed(*(m.stream(v[k]) for k in ('x_q', 'x_k', 'x_mix')))
        for k in ('q_z', 'q_s', 'q_ns', 'k_z', 'k_s', 'k_ns'):
            assert e[k].shape == (3, cfg.feature_dim)
            assert torch.allclose(e[k].norm(dim=1), torch.ones(3), atol=1e-5)
        assert e['mask'].shape == (3 * M, math.ceil(math.ceil(T / 2) / 2) * 25, cfg.hidden_dim)
    m.eval()
    with torch.no_grad(): assert m.encode(x).shape == (3, cfg.hidden_dim)
    assert m.queue.queue.shape == (cfg.feature_dim, cfg.queue_size)


def test_one_step_finite_loss_and_gradients_only_on_the_query_side():
    m = SkeAttnCLR(tiny(), seed=0)
    out = m.training_step({'x': clips()}, 0)
    assert set(out) >= {'loss', 'global', 'salient', 'non_salient'}
    assert all(math.isfinite(float(v.detach())) for v in out.values())
    out['loss'].backward()
    for name, p in m.named_parameters():
        if name.startswith('encoder_k.'):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.encoder_q.neck.qkv.weight.grad.abs().sum() > 0          # the mask learns through the local terms
    assert int(m.queue.queue_ptr) == 6


def test_loss_matches_a_computation_from_the_library_pieces():
    seed_everything(0)
    m = SkeAttnCLR(tiny(queue_size=16, mu=0.3, stream='motion'), seed=3)
    twin = copy.deepcopy(m)
    x = clips(5, M=2)
    torch.manual_seed(7)
    out = m.training_step({'x': x}, 0)
    # by hand, from the same weights and seeds
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(3)
    view = get_preset('skeattnclr')
    x_q, x_k = view(x, g), view(x, g)
    x_mix, _ = part_swap(x_q, g, 'ntu25', (3, 4), (1, 3), 4, True)
    motion = lambda t: torch.cat([t[:, :, 1:] - t[:, :, :-1], torch.zeros_like(t[:, :, :1])], 2)
    N, M = x.shape[0], x.shape[-1]
    tok = lambda f: rearrange(f, 'b c t v -> b (t v) c')
    pool = lambda t: t.mean(1).view(N, M, -1).mean(1)
    fq = twin.encoder_q.backbone.feature_map(motion(x_q))
    fm = twin.encoder_q.backbone.feature_map(motion(x_mix))
    mask = twin.encoder_q.neck.mask(fm)
    with torch.no_grad():
        fk = twin.encoder_k.backbone.feature_map(motion(x_k))
        P = twin.encoder_k.projector
        k_z, k_s, k_ns = (F.normalize(P(f), dim=1) for f in (pool(tok(fk)), pool(tok(fk) * mask), pool(tok(fk) * (1 - mask))))
    P = twin.encoder_q.projector
    q_z = F.normalize(twin.predictor(P(pool(tok(fq)))), dim=1)
    q_s = F.normalize(twin.predictor_s(P(pool(tok(fm) * mask))), dim=1)
    q_ns = F.normalize(twin.predictor_ns(P(pool(tok(fm) * (1 - mask)))), dim=1)
    Q = twin.queue.queue.t()
    L_z = info_nce(q_z, k_z, Q, 0.2)
    L_s = info_nce(q_s, k_s, Q, 0.2, extra_negatives=q_ns.detach())
    L_ns = info_nce(q_ns, k_ns, Q, 0.2, extra_negatives=q_s.detach())
    for got, want in ((out['global'], L_z), (out['salient'], L_s), (out['non_salient'], L_ns),
                      (out['loss'], L_z + 0.3 * L_s + 0.7 * L_ns)):
        assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert torch.allclose(m.queue.queue[:, :N].t(), k_z, atol=1e-6)


def test_cosine_momentum_ema():
    m = SkeAttnCLR(tiny(momentum=0.996))
    with torch.no_grad():
        for p in m.encoder_q.parameters(): p.add_(0.1)
    k0, q = copy.deepcopy(m.encoder_k.state_dict()), m.encoder_q.state_dict()
    m.after_optimizer_step(30, 120)
    want_m = 1 - (1 - 0.996) * (math.cos(math.pi * 30 / 120) + 1) / 2
    assert m.last_momentum == pytest.approx(want_m) == cosine_momentum(30, 120, 0.996)
    for k, v in m.encoder_k.state_dict().items():
        if v.is_floating_point(): assert torch.allclose(v, want_m * k0[k] + (1 - want_m) * q[k], atol=1e-6), k
        else: assert torch.equal(v, q[k]), k
    m.after_optimizer_step(5, None)                  # no total known (e.g. a plain loop): the base momentum
    assert m.last_momentum == 0.996


def _run(tmp, seed=0, **kw):
    seed_everything(seed)
    ds = ToyClips(n=24, frames=16, joints=25, persons=1, seed=0)
    cfg = train_preset('paper', **{**SKEATTNCLR_TRAIN_RECIPES['lesson'], 'epochs': 2, 'batch_size': 8, 'progress': False,
                                   'out_dir': str(tmp), **kw})
    return Trainer(SkeAttnCLR(tiny(), seed=seed), ds, cfg)


def test_trainer_two_epochs_and_exact_resume(tmp_path):
    straight = _run(tmp_path / 'a').fit()
    assert len(straight.history) == 2 and all(math.isfinite(r['loss']) for r in straight.history)
    assert straight.method.last_momentum == cosine_momentum(straight.step - 1, straight.total_steps, 0.99)   # the lesson base
    _run(tmp_path / 'b').fit(stop_at=1)
    assert latest_checkpoint(tmp_path / 'b') == checkpoint_path(tmp_path / 'b', 1)
    resumed = _run(tmp_path / 'b', seed=5, resume='auto').fit()     # other weights and seeds: all must come from the checkpoint
    assert resumed.resumed_from == checkpoint_path(tmp_path / 'b', 1)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and 'queue.queue' in a and 'queue.queue_ptr' in a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert [r['loss'] for r in straight.history] == [r['loss'] for r in resumed.history]


@pytest.mark.parametrize('preset', ['lesson', 'paper'])
def test_backbone_has_upstream_stgcn_keys(preset):
    cfg = SkeAttnCLRConfig.preset(preset)
    sd = SkeAttnCLR(cfg).backbone.state_dict()
    want = upstream_stgcn_keys(cfg.hidden_channels, cfg.hidden_dim, head='none')
    assert {k: tuple(v.shape) for k, v in sd.items()} == want


@pytest.mark.parametrize('field,value', [
    ('stream', 'velocity'), ('mu', -0.1), ('mu', 1.5), ('temperature', 0.0), ('heads', 3), ('lam', 0),
    ('queue_size', 0), ('momentum', 1.2), ('dropout', 1.0), ('swap_parts', (0, 2)), ('swap_parts', (4, 6)),
    ('swap_chunks', (4, 20)), ('frames', 0), ('layout', 'no_such_layout')])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f'SkeAttnCLRConfig.{field}='):
        SkeAttnCLRConfig(**{field: value})


def test_presets_and_errors():
    assert set(SKEATTNCLR_PRESETS) == set(SKEATTNCLR_TRAIN_RECIPES) >= {'paper', 'lesson'}
    assert SkeAttnCLRConfig.preset('paper') == SkeAttnCLRConfig()
    with pytest.raises(KeyError, match='lesson'): SkeAttnCLRConfig.preset('nope')
    m = SkeAttnCLR(tiny())
    with pytest.raises(ValueError, match='frames=16'): m.training_step({'x': clips(4, T=20)}, 0)
    with pytest.raises(ValueError, match='at least 2'): m.training_step({'x': clips(1)}, 0)


def test_upstream_init_is_the_default_and_covers_the_whole_model():
    "Upstream's processor applies weights_init to the built model: every conv/linear N(0, 0.02) with zero bias,"
    "every batch norm's weight N(1, 0.02) with zero bias, key side included (its own draw); LayerNorm untouched."
    assert SkeAttnCLRConfig().upstream_init and SkeAttnCLRConfig().independent_key
    m = SkeAttnCLR(tiny(hidden_channels=16, hidden_dim=64, feature_dim=32, predictor_hidden=64, heads=4), seed=1)
    for side in (m.encoder_q, m.encoder_k, m.predictor, m.predictor_s, m.predictor_ns):
        convs = [mod for mod in side.modules() if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
        bns = [mod for mod in side.modules() if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
        w = torch.cat([c.weight.flatten() for c in convs])
        assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
        assert all(c.bias is None or c.bias.abs().max() == 0 for c in convs)
        g = torch.cat([b.weight.flatten() for b in bns])
        assert abs(g.mean().item() - 1) < 5e-3 and abs(g.std().item() - 0.02) < 5e-3
        assert all(b.bias.abs().max() == 0 for b in bns)
    assert torch.equal(m.encoder_q.neck.norm.weight, torch.ones(64))                      # LayerNorm keeps PyTorch's init
    q, k = m.encoder_q.state_dict(), m.encoder_k.state_dict()
    assert not torch.equal(q['backbone.st_gcn_networks.5.tcn.2.weight'], k['backbone.st_gcn_networks.5.tcn.2.weight'])
    assert torch.equal(q['backbone.A'], k['backbone.A'])


def test_init_flags():
    m = SkeAttnCLR(tiny(independent_key=False), seed=1)                  # upstream init, key copied from the query
    q, k = m.encoder_q.state_dict(), m.encoder_k.state_dict()
    assert all(torch.equal(q[n], k[n]) for n in q)
    w = m.backbone.st_gcn_networks[5].tcn[2].weight
    assert abs(w.std().item() - 0.02) < 0.003 and m.backbone.st_gcn_networks[5].tcn[2].bias.abs().max() == 0
    d = SkeAttnCLR(tiny(upstream_init=False), seed=1)                   # PyTorch's initialisation, key copied
    w = d.backbone.st_gcn_networks[5].tcn[2].weight
    assert abs(w.std().item() - 0.02) > 0.005 and d.backbone.st_gcn_networks[5].tcn[2].bias.abs().max() > 0
    q, k = d.encoder_q.state_dict(), d.encoder_k.state_dict()
    assert all(torch.equal(q[n], k[n]) for n in q)


def _upstream_agcn_graph_ntu():
    "Hand transcription of SkeAttnCLR net/utils/ntu_rgb_d.py: Graph(strategy='spatial').A (tools.get_spatial_graph)."
    import numpy as np
    num_node = 25
    inward_ori_index = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
                        (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
                        (22, 23), (23, 8), (24, 25), (25, 12)]
    inward = [(i - 1, j - 1) for (i, j) in inward_ori_index]
    outward = [(j, i) for (i, j) in inward]
    self_link = [(i, i) for i in range(num_node)]
    def edge2mat(link):
        A = np.zeros((num_node, num_node))
        for i, j in link: A[j, i] = 1
        return A
    def normalize_digraph(A):
        Dl = np.sum(A, 0)
        Dn = np.zeros((num_node, num_node))
        for i in range(num_node):
            if Dl[i] > 0: Dn[i, i] = Dl[i] ** (-1)
        return np.dot(A, Dn)
    return np.stack((edge2mat(self_link), normalize_digraph(edge2mat(inward)), normalize_digraph(edge2mat(outward))))


def test_backbone_uses_the_upstream_agcn_graph():
    import numpy as np
    from skelnb.skeleton import Graph, agcn_graph
    A_up = _upstream_agcn_graph_ntu()
    np.testing.assert_allclose(agcn_graph('ntu25'), A_up, rtol=0, atol=1e-7)
    assert A_up[1, 20, 4] == 1 and A_up[2, 4, 20] == 0.25 and A_up[2, 0, 1] == 1        # a few entries, 0-based
    np.testing.assert_array_equal(A_up[1].sum(1)[[20, 1, 0, 3]], [4, 1, 2, 0])           # children per joint
    m = SkeAttnCLR(tiny(), seed=0)
    np.testing.assert_allclose(m.backbone.A.numpy(), A_up, rtol=0, atol=1e-7)
    np.testing.assert_allclose(m.encoder_k.backbone.A.numpy(), A_up, rtol=0, atol=1e-7)
    s = SkeAttnCLR(tiny(graph='spatial'), seed=0)                                          # one flag away: SkeletonCLR's partition
    np.testing.assert_array_equal(s.backbone.A.numpy(), Graph('ntu25').A)
    assert set(s.state_dict()) == set(m.state_dict())
    with pytest.raises(ValueError, match='SkeAttnCLRConfig.graph'): tiny(graph='uniform')
