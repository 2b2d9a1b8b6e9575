"""Encoders: shapes, parameter counts, upstream state_dict layout, equality with the reference, gradients,
activation checkpointing, checkpoint round trips, EADM, the attention-mask neck, SCD-Net, device parity."""
import math
import pytest
import torch
import torch.nn.functional as F

from skelnb.skeleton import Graph, STREAMS, to_stream
from skelnb.encoders.stgcn import (STGCN, STGCN_PRESETS, STGCNConfig, get_stgcn_config, stgcn_reference_forward, count_parameters, upstream_stgcn_keys, stgcn_flops, measured_flops, mlp_head, linear_head, upstream_init_, stgcn_receptive_fields, checkpointed, frozen_running_stats, saved_tensor_bytes)
from skelnb.encoders.stgcn_kernels import (graph_conv, graph_conv_reference, keep_mask, drop_add_relu, batch_stats, batch_norm_accurate, max_abs_diff, DropAddReLU)
from skelnb.checkpoint import load_upstream_checkpoint
from skelnb.encoders.necks import (simam_attention, eadm_masks, eadm_drop, EADM, AttentionMaskNeck, MLP1D, skeattnclr_projector, skeattnclr_predictor)
from skelnb.encoders.scdnet import SCDNetEncoder, SCDNET_PRESETS
from skelnb.bench import bench_stgcn, bench_graph_conv, matmul_peak_gflops, bench_checkpointing
from skelnb.runtime import tune_malloc

torch.manual_seed(0)


def _no_dropout(model):
    for b in model.st_gcn_networks[1:]: b.tcn[4].p = 0.0
    return model


# ---------------------------------------------------------------- ST-GCN shapes and sizes
@pytest.mark.parametrize('preset', sorted(STGCN_PRESETS))
@pytest.mark.parametrize('stream', STREAMS)
def test_stgcn_shapes_every_preset_and_stream(preset, stream):
    model = STGCN(preset).eval()
    cfg = model.config
    x = to_stream(torch.randn(2, 3, 20, 25, 2), stream)
    with torch.no_grad(): out = model(x, 'all')
    assert out['map'].shape == (4, cfg.hidden_dim, 5, 25)          # 20 -> 10 -> 5 frames
    assert out['pooled'].shape == (2, cfg.hidden_dim)
    assert out['head'].shape == (2, cfg.num_class if cfg.head != 'none' else cfg.hidden_dim)


def test_stgcn_frames_50_and_64():
    with torch.no_grad():
        assert STGCN('skeletonclr').eval()(torch.randn(1, 3, 50, 25, 2), 'map').shape == (2, 256, 13, 25)
        assert STGCN('skeattnclr').eval()(torch.randn(1, 3, 64, 25, 2), 'map').shape == (2, 256, 16, 25)


def test_stgcn_nw_ucla_layout():
    model = STGCN('tiny', layout='kinect_v1')
    assert model.A.shape == (3, 20, 20) and model.data_bn.num_features == 60
    assert model(torch.randn(2, 3, 12, 20, 1)).shape == (2, 16)


def test_parameter_counts():
    assert count_parameters(STGCN('skeletonclr')) == 821_380
    assert count_parameters(STGCN('skeletonclr').st_gcn_networks[9], ()) == 658_176
    assert count_parameters(STGCN('skeletonclr').edge_importance, ()) == 18_750
    assert count_parameters(STGCN('skeletonclr').fc, ()) == 98_688
    assert count_parameters(STGCN('linear_eval').fc, ()) == 15_420
    assert count_parameters(STGCN('skeattnclr')) == 3_083_412


def test_flops_match_counter_and_anchor():
    with torch.device('meta'):
        model, x = STGCN('skeletonclr').eval(), torch.empty(1, 3, 50, 25, 2)
        assert measured_flops(stgcn_reference_forward, model, x, contraction='einsum') == stgcn_flops('skeletonclr')
    assert abs(stgcn_flops('skeletonclr') / 1e9 - 1.22) < 0.01
    assert abs(stgcn_flops('skeattnclr', T=64) / 1e9 - 7.29) < 0.01


def test_bad_input_errors():
    model = STGCN('tiny')
    with pytest.raises(ValueError, match='expected 25 joints'): model(torch.randn(1, 3, 10, 20, 2))
    with pytest.raises(ValueError, match='expected 3 channels'): model(torch.randn(1, 2, 10, 25, 2))
    with pytest.raises(ValueError, match=r'expected a batch \(N, C, T, V, M\)'): model(torch.randn(3, 10, 25, 2))
    with pytest.raises(KeyError, match='unknown ST-GCN preset'): get_stgcn_config('stgcn++')
    with pytest.raises(ValueError, match='head must be'): STGCN('tiny', head='transformer')


# ---------------------------------------------------------------- upstream key layout
def _keys_from_reference_text(hidden=16, head='mlp'):
    "The key list of the methods reference (section 3.4), written out independently of the library."
    table = [(3, hidden, False), (hidden, hidden, False), (hidden, hidden, False), (hidden, hidden, False),
             (hidden, 2 * hidden, True), (2 * hidden, 2 * hidden, False), (2 * hidden, 2 * hidden, False),
             (2 * hidden, 4 * hidden, True), (4 * hidden, 4 * hidden, False), (4 * hidden, 256, 4 * hidden != 256)]
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    keys = {'A': (3, 25, 25)}
    keys.update({f'data_bn.{s}': (75,) if s != 'num_batches_tracked' else () for s in bn})
    for i, (cin, cout, conv_res) in enumerate(table):
        p = f'st_gcn_networks.{i}'
        keys[f'{p}.gcn.conv.weight'] = (3 * cout, cin, 1, 1); keys[f'{p}.gcn.conv.bias'] = (3 * cout,)
        for j in (0, 3): keys.update({f'{p}.tcn.{j}.{s}': (cout,) if s != 'num_batches_tracked' else () for s in bn})
        keys[f'{p}.tcn.2.weight'] = (cout, cout, 9, 1); keys[f'{p}.tcn.2.bias'] = (cout,)
        if conv_res:
            keys[f'{p}.residual.0.weight'] = (cout, cin, 1, 1); keys[f'{p}.residual.0.bias'] = (cout,)
            keys.update({f'{p}.residual.1.{s}': (cout,) if s != 'num_batches_tracked' else () for s in bn})
    if head == 'mlp': keys.update({'fc.0.weight': (256, 256), 'fc.0.bias': (256,), 'fc.2.weight': (128, 256), 'fc.2.bias': (128,)})
    else: keys.update({'fc.weight': (60, 256), 'fc.bias': (60,)})
    keys.update({f'edge_importance.{i}': (3, 25, 25) for i in range(10)})
    return keys


@pytest.mark.parametrize('preset,hidden,head', [('skeletonclr', 16, 'mlp'), ('aimclr', 16, 'mlp'),
                                                ('skeattnclr', 64, 'mlp'), ('linear_eval', 16, 'linear')])
def test_state_dict_keys_and_shapes(preset, hidden, head):
    got = {k: tuple(v.shape) for k, v in STGCN(preset).state_dict().items()}
    assert got == _keys_from_reference_text(hidden, head)
    kw = dict(head='linear', num_class=60) if head == 'linear' else {}
    assert got == upstream_stgcn_keys(hidden, **kw)


def test_adjacency_buffer_is_upstream_graph():
    A = STGCN('skeletonclr').A
    assert A.dtype == torch.float32 and A.shape == (3, 25, 25)
    assert torch.equal(A, torch.tensor(Graph('ntu25').A))
    assert [int((a != 0).sum()) for a in A] == [25, 40, 8]


# ---------------------------------------------------------------- fast path == reference
@pytest.mark.parametrize('ci,co', [(3, 8), (8, 8), (8, 16), (16, 8)])
@pytest.mark.parametrize('order', ['auto', 'conv_first', 'graph_first'])
def test_graph_conv_orders_equal_reference(ci, co, order):
    A = torch.tensor(Graph('ntu25').A) * (1 + torch.rand(3, 25, 25))
    x, w, b = torch.randn(3, ci, 7, 25), torch.randn(3 * co, ci, 1, 1), torch.randn(3 * co)
    ref = graph_conv_reference(x, w, b, A).permute(0, 2, 3, 1)
    out = graph_conv(x.permute(0, 2, 3, 1).contiguous(), w, b, A, order)
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
    assert torch.allclose(graph_conv_reference(x, w, b, A, 'einsum'), ref.permute(0, 3, 1, 2), atol=1e-4)


@pytest.mark.parametrize('preset', ['skeletonclr', 'skeattnclr'])
def test_stgcn_equals_reference_float32(preset):
    model = STGCN(preset)
    x = torch.zeros(2, 3, 30, 25, 2); x[..., 0] = torch.randn(2, 3, 30, 25)
    model.eval()
    with torch.no_grad():
        assert max_abs_diff(model(x, 'all'), stgcn_reference_forward(model, x, 'all')) < 1e-5
        assert max_abs_diff(model(x), stgcn_reference_forward(model, x, contraction='einsum')) < 1e-5
    _no_dropout(model).train()             # batch statistics: compare relative to the map's scale
    with torch.no_grad(): fast, ref = model(x, 'all'), stgcn_reference_forward(model, x, 'all')
    assert max_abs_diff(fast['head'], ref['head']) < 1e-5
    assert max_abs_diff(fast['map'], ref['map']) < 1e-5 * ref['map'].abs().max()


def test_native_batch_norm_path_is_close_too():
    model = _no_dropout(STGCN('skeletonclr', accurate_bn_stats=False)).train()
    x = torch.zeros(2, 3, 30, 25, 2); x[..., 0] = torch.randn(2, 3, 30, 25)
    with torch.no_grad(): assert max_abs_diff(model(x), stgcn_reference_forward(model, x)) < 1e-5


def test_stgcn_gradients_equal_reference_float64():
    model = _no_dropout(STGCN('tiny').double()).train()
    x = torch.randn(2, 3, 12, 25, 2, dtype=torch.float64)
    grads = []
    for fwd in (lambda: model(x), lambda: stgcn_reference_forward(model, x)):
        model.zero_grad(); (fwd() ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]: assert torch.allclose(grads[0][n], grads[1][n], atol=1e-9, rtol=1e-7), n


def test_unfolded_and_nn_dropout_paths_equal():
    model = STGCN('tiny').eval()
    x = torch.randn(2, 3, 12, 25, 2)
    slow = STGCN('tiny', fold_bn_eval=False, fast_dropout=False).eval(); slow.load_state_dict(model.state_dict())
    with torch.no_grad(): assert max_abs_diff(model(x), slow(x)) < 1e-5


def test_every_parameter_gets_a_gradient_in_training():
    model = STGCN('tiny').train()
    model(torch.randn(2, 3, 12, 25, 2)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if not (n.endswith('tcn.2.bias') or n.endswith('residual.0.bias') or n.endswith('gcn.conv.bias')))


def test_dropout_semantics():
    m = keep_mask((2000, 500), generator=torch.Generator().manual_seed(0))
    assert abs(m.float().mean().item() - 0.5) < 3e-3
    assert abs(keep_mask((2000, 500), 0.2).float().mean().item() - 0.8) < 3e-3
    h = torch.rand(400, 400) + 0.5
    out = drop_add_relu(h.clone(), None, 0.5)
    assert set(torch.unique(out / h).tolist()) <= {0.0, 2.0}
    assert abs(out.mean().item() - h.mean().item()) < 0.01
    assert torch.equal(drop_add_relu(h.clone(), None, training=False), h)
    model = STGCN('tiny').train(); x = torch.randn(2, 3, 12, 25, 2)
    with torch.no_grad(): assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad(): assert torch.equal(model(x), model(x))


def test_drop_add_relu_keeps_a_bool_mask_for_backward():
    h = torch.randn(4, 8, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    r = torch.randn(4, 8, 5, 6, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = drop_add_relu(h * 1, r, 0.5, generator=torch.Generator().manual_seed(1))
    dtypes = [t.dtype for t in saved if t.shape == h.shape]
    assert sorted(map(str, dtypes)) == ['torch.bool', 'torch.float32']   # the mask (1 byte per element) and the output
    m = keep_mask([4, 5, 6, 8], generator=torch.Generator().manual_seed(1)).permute(0, 3, 1, 2)
    g = torch.randn_like(out)
    gh, gr = torch.autograd.grad(out, (h, r), g)
    pos = (h.detach() * m * 2 + r.detach()) > 0
    assert torch.equal(gh, g * pos * m * 2.0) and torch.equal(gr, g * pos)


# ---------------------------------------------------------------- activation checkpointing
def _train_run(model, x, seed, steps=2):
    "Two SGD steps in training mode (dropout on) from `seed`: outputs, losses, gradients, buffers, weights, RNG state."
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(seed)
    rec = {}
    for i in range(steps):
        opt.zero_grad()
        out = model(x); loss = out.pow(2).sum() + out.sum(); loss.backward()
        rec.update({f'out{i}': out.detach().clone(), f'loss{i}': loss.detach().clone()})
        rec.update({f'grad{i}.{n}': p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    rec.update({f'buf.{n}': b.clone() for n, b in model.named_buffers()})
    rec.update({f'param.{n}': p.detach().clone() for n, p in model.named_parameters()})
    rec['rng'] = torch.get_rng_state()
    return rec


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('paths', [dict(), dict(accurate_bn_stats=False, fast_dropout=False)])
def test_checkpointing_changes_nothing_but_memory(dtype, paths):
    kw = dict(hidden_channels=8, hidden_dim=32, num_class=16, **paths)
    plain = STGCN('skeletonclr', **kw).to(dtype).train()
    ckpt = STGCN('skeletonclr', checkpoint_activations=True, **kw).to(dtype).train()
    ckpt.load_state_dict(plain.state_dict())
    init = {k: v.clone() for k, v in plain.state_dict().items()}
    x = torch.randn(3, 3, 20, 25, 2, dtype=dtype)
    a, b = _train_run(plain, x, seed=11), _train_run(ckpt, x, seed=11)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith('grad0.')]) == len(list(plain.parameters()))
    for k in a:
        if dtype == torch.float64 or k == 'rng' or k.startswith('buf.') and k.endswith('num_batches_tracked'):
            assert torch.equal(a[k], b[k]), k
        else:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5), k
    assert a['buf.st_gcn_networks.9.tcn.0.num_batches_tracked'].item() == 2     # one update per step, not two
    other = STGCN('skeletonclr', **kw).to(dtype).train(); other.load_state_dict(init)
    assert not torch.equal(a['out0'], _train_run(other, x, seed=12, steps=1)['out0'])   # the seed matters: dropout is active


def test_naive_checkpoint_would_update_running_stats_twice():
    "The pitfall `checkpointed` avoids: a plain non-reentrant checkpoint of a block moves its running statistics again."
    block = STGCN('tiny').train().st_gcn_networks[1]
    x, A = torch.randn(4, 12, 25, 4, requires_grad=True), torch.tensor(Graph('ntu25').A, dtype=torch.float32)
    stats = []
    for run in (lambda: block(x, A), lambda: torch.utils.checkpoint.checkpoint(block, x, A, use_reentrant=False),
                lambda: checkpointed(block, x, A)):
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d): m.reset_running_stats()
        torch.manual_seed(0); run().sum().backward()
        stats.append((block.tcn[0].running_mean.clone(), block.tcn[0].num_batches_tracked.item()))
    assert stats[1][1] == 2 and not torch.equal(stats[1][0], stats[0][0])
    assert stats[2][1] == 1 and torch.equal(stats[2][0], stats[0][0])


def test_frozen_running_stats_restores_every_batch_norm():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4, momentum=None),
                              torch.nn.BatchNorm1d(4, track_running_stats=False))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_running_stats(net):
        net(torch.randn(8, 4) + 3)
        assert not torch.equal(net[1].running_mean, before['1.running_mean'])
    for k, v in net.state_dict().items(): assert torch.equal(v, before[k]), k
    with pytest.raises(RuntimeError):       # restored on an exception too
        with frozen_running_stats(net): net(torch.randn(8, 4)); raise RuntimeError('boom')
    assert torch.equal(net[2].num_batches_tracked, before['2.num_batches_tracked'])


def test_explicit_generators_are_replayed():
    class Drop(torch.nn.Module):
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(6, 6); self.g = torch.Generator().manual_seed(1)
        def forward(self, x): return drop_add_relu(self.lin(x), None, 0.5, True, self.g)
    m = Drop(); x = torch.randn(32, 6, requires_grad=True)
    def run(f):
        m.g.manual_seed(1); x.grad = None
        f().pow(2).sum().backward()
        return x.grad.clone(), m.g.get_state()
    plain = run(lambda: m(x))
    replayed = run(lambda: checkpointed(m, x, generators=(m.g,)))
    not_replayed = run(lambda: checkpointed(m, x))
    assert torch.equal(plain[0], replayed[0]) and torch.equal(plain[1], replayed[1])
    assert not torch.equal(plain[0], not_replayed[0])      # the recomputation drew a fresh mask


def test_checkpointing_keeps_only_block_inputs():
    kw = dict(hidden_channels=8, hidden_dim=32, num_class=16)
    plain = STGCN('skeletonclr', **kw).train()
    ckpt = STGCN('skeletonclr', checkpoint_activations=True, **kw).train(); ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 20, 25, 2)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0].nbytes)) for b in ckpt.st_gcn_networks]
    _, plain_bytes = saved_tensor_bytes(plain, x)
    _, ckpt_bytes = saved_tensor_bytes(ckpt, x)
    for h in hooks: h.remove()
    assert len(inputs) == 10
    assert sum(inputs) <= ckpt_bytes <= sum(inputs) + x.nbytes + sum(p.nbytes for p in ckpt.parameters())
    assert plain_bytes > 5 * ckpt_bytes


def test_checkpointing_only_in_training_with_gradients(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    model = STGCN('tiny', checkpoint_activations=True).train(); x = torch.randn(2, 3, 12, 25, 2)
    model(x).sum().backward(); assert len(calls) == 10
    with torch.no_grad(): model(x)                     # the MoCo key encoder
    model.eval(); model(x).sum().backward()            # evaluation (e.g. gradients with respect to the input)
    assert len(calls) == 10
    ref = STGCN('tiny').eval(); ref.load_state_dict(model.state_dict())
    with torch.no_grad(): assert torch.equal(model(x), ref(x))
    assert STGCNConfig().checkpoint_activations is False


def test_bench_checkpointing_runs_small():
    res = bench_checkpointing('tiny', batch=2, T=12, steps=1, warmup=0)
    assert res['saved_mb_plain'] > 4 * res['saved_mb_checkpointed'] > 0
    assert res['seconds_plain'] > 0 and res['seconds_checkpointed'] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_checkpointing_is_exact():
    plain = STGCN('tiny').double().cuda().train()
    ckpt = STGCN('tiny', checkpoint_activations=True).double().cuda().train(); ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 12, 25, 2, dtype=torch.float64, device='cuda')
    outs = []
    for m in (plain, ckpt):
        torch.cuda.manual_seed(3); out = m(x); out.pow(2).sum().backward()
        outs.append([out.detach()] + [p.grad for p in m.parameters()] + list(m.buffers()))
    for a, b in zip(*outs): assert torch.equal(a, b)


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    src = STGCN('aimclr')
    with torch.no_grad():
        for p in src.parameters(): p.add_(torch.randn_like(p))
    ckpt = {**{f'module.encoder_q.{k}': v for k, v in src.state_dict().items()},
            **{f'module.encoder_k.{k}': v.clone() for k, v in src.state_dict().items()},
            'module.queue': torch.randn(128, 32), 'module.queue_ptr': torch.zeros(1, dtype=torch.long)}
    path = tmp_path / 'epoch300_model.pt'
    torch.save(ckpt, path)
    dst = STGCN('aimclr')
    report = load_upstream_checkpoint(dst, path)
    assert report['missing'] == report['unexpected'] == report['mismatched'] == []
    for k, v in dst.state_dict().items(): assert torch.equal(v, src.state_dict()[k]), k
    x = torch.randn(2, 3, 20, 25, 2)
    src.eval(); dst.eval()
    with torch.no_grad(): assert torch.equal(src(x), dst(x))
    # no prefix, no module.
    torch.save(src.state_dict(), tmp_path / 'plain.pt')
    assert load_upstream_checkpoint(STGCN('aimclr'), tmp_path / 'plain.pt', prefix='')['missing'] == []
    # linear evaluation: the pretraining head is skipped, strictness applies to the rest
    lin = STGCN('linear_eval')
    with pytest.raises(ValueError, match='missing'): load_upstream_checkpoint(lin, path)
    rep = load_upstream_checkpoint(lin, path, ignore=('fc.',))
    assert rep['ignored'] == ['fc.0.bias', 'fc.0.weight', 'fc.2.bias', 'fc.2.weight'] and rep['missing'] == []
    assert torch.equal(lin.st_gcn_networks[9].tcn[2].weight, src.st_gcn_networks[9].tcn[2].weight)
    rep = load_upstream_checkpoint(STGCN('linear_eval'), path, strict=False)
    assert rep['missing'] == ['fc.bias', 'fc.weight'] and 'fc.0.weight' in rep['unexpected']


def test_checkpoint_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self): return (print, ('unpickled!',))
    path = tmp_path / 'evil.pt'
    torch.save({'encoder_q.A': torch.zeros(1), 'x': Evil()}, path)
    with pytest.raises(Exception, match='(?i)weights_only|unsupported|global'):
        load_upstream_checkpoint(STGCN('tiny'), path)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_upstream_checkpoint(STGCN('tiny'), tmp_path / 'none.pt')
    with pytest.raises(ValueError, match='no key starts with'): load_upstream_checkpoint(STGCN('tiny'), {'encoder_k.A': torch.zeros(1)})
    with pytest.raises(ValueError, match='mismatched'):
        load_upstream_checkpoint(STGCN('tiny'), {f'encoder_q.{k}': v for k, v in STGCN('skeletonclr').state_dict().items()})


def test_upstream_init():
    model = upstream_init_(STGCN('skeletonclr'), torch.Generator().manual_seed(0))
    w = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert all(torch.equal(e, torch.ones_like(e)) for e in model.edge_importance)


# ---------------------------------------------------------------- EADM
def test_eadm_closed_form_and_gradient():
    z = torch.randn(4, 16, 13, 25)
    ms, mt = eadm_masks(z)
    d = (z - z.mean((2, 3), keepdim=True)) ** 2
    var = d.sum((2, 3), keepdim=True) / (13 * 25 - 1)
    closed_form = d < 4 * (math.log(0.7 / 0.3) - 0.5) * (var + 1e-4)
    assert (mt.bool() != closed_form).float().mean() < 1e-4      # equal up to rounding exactly at the threshold
    assert 0.2 < 1 - mt.mean() < 0.28                             # |z - mu| > 1.18 sigma: 23.8 % of a Gaussian
    zg = z.clone().requires_grad_()
    out = eadm_drop(zg)
    (g,) = torch.autograd.grad(out.sum(), zg)
    scale = ms[:, None, None, :] * (ms.numel() / ms.sum()) * mt * (mt.numel() / mt.sum())
    assert torch.allclose(g, scale) and torch.allclose(out, z * scale)


def test_eadm_drops_salient_joints():
    z = torch.randn(2, 8, 13, 25) * 0.1
    z[0, :, ::2, 7] += 3.0        # joint 7 of sample 0 far from the map mean in every channel, half of the frames
    ms, mt = eadm_masks(z)
    assert ms[0, 7] == 0 and ms[0].sum() == 24 and ms[1].sum() == 25
    out = eadm_drop(z)
    assert out[0, :, :, 7].abs().sum() == 0
    assert torch.isfinite(out).all()


def test_eadm_legacy_bug_is_a_no_op():
    z = torch.randn(3, 8, 13, 25)
    ms, mt = eadm_masks(z, legacy=True)
    assert torch.equal(ms, torch.ones_like(ms)) and torch.equal(mt, torch.ones_like(mt))
    assert torch.equal(EADM(legacy=True)(z), z)
    assert not torch.equal(EADM()(z), z)


def test_simam_range():
    a = simam_attention(torch.randn(2, 4, 6, 25))
    assert a.min() >= torch.sigmoid(torch.tensor(0.5)) - 1e-6 and a.max() < 1


# ---------------------------------------------------------------- attention-mask neck and heads
def test_attention_mask_neck():
    neck = AttentionMaskNeck(256, 8)
    fmap = STGCN('skeattnclr').eval()(torch.randn(2, 3, 64, 25, 2), 'map').detach()
    f_s, f_ns, mask = neck(fmap, 2)
    assert f_s.shape == f_ns.shape == (2, 256) and mask.shape == (4, 16 * 25, 256)
    assert ((mask > 0) & (mask < 1)).all()
    assert torch.allclose(f_s + f_ns, fmap.mean((2, 3)).view(2, 2, 256).mean(1), atol=1e-5)
    k_s, k_ns, k_mask = neck(torch.randn_like(fmap), 2, mask=mask)
    assert k_mask is mask
    # gradient flows into the neck's parameters through the salient feature
    f_s.sum().backward()
    assert neck.qkv.weight.grad.abs().sum() > 0 and neck.norm.weight.grad is not None


def test_heads_and_projectors():
    assert mlp_head()(torch.randn(3, 256)).shape == (3, 128)
    assert linear_head(256, 60)(torch.randn(3, 256)).shape == (3, 60)
    proj, pred = skeattnclr_projector(), skeattnclr_predictor()
    assert pred(proj(torch.randn(4, 256))).shape == (4, 128)
    assert proj.mlp[-1].bias is None and isinstance(proj.mlp[1], torch.nn.BatchNorm1d)
    assert MLP1D(8, 16, 4, bn=False, last_bias=True)(torch.randn(2, 8)).shape == (2, 4)


# ---------------------------------------------------------------- SCD-Net
def test_scdnet_tiny_shapes_and_gradients():
    model = SCDNetEncoder('tiny')
    cfg = model.config
    out = model(torch.randn(2, 3, cfg.num_frames, 25, 2))
    assert {k: tuple(v.shape) for k, v in out.items()} == dict(
        v_t=(2, cfg.hidden), v_s=(2, cfg.hidden), z_t=(2, cfg.feature_dim), z_s=(2, cfg.feature_dim), z_i=(2, cfg.feature_dim))
    sum(v.sum() for v in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(ValueError, match='expected a batch'): model(torch.randn(2, 3, cfg.num_frames + 1, 25, 2))


def test_scdnet_paper_preset_on_meta():
    with torch.device('meta'):
        model = SCDNetEncoder('paper')
        out = model(torch.empty(2, 3, 64, 25, 2))
    assert {k: tuple(v.shape) for k, v in out.items()} == dict(v_t=(2, 2048), v_s=(2, 2048), z_t=(2, 128), z_s=(2, 128), z_i=(2, 128))
    stem = model.gcn_t.blocks
    assert [b.gcn.bn.num_features for b in stem] == [64, 256, 64]
    assert model.t_embed[0].in_features == 2 * 25 * 64 and model.s_embed[0].in_features == 64 * 64
    assert model.i_proj[0].in_features == 4096
    assert set(SCDNET_PRESETS) >= {'paper', 'tiny'}


# ---------------------------------------------------------------- lesson helpers and benchmarks
def test_receptive_fields():
    rf = stgcn_receptive_fields('skeletonclr', joint=11)
    assert rf[0]['joints'] == [10, 11, 24] and len(rf[-1]['joints']) == 25
    assert [r['frames'] for r in rf][:5] == [9, 17, 25, 33, 41] and rf[-1]['frames'] == 153


def test_bench_functions_run_small():
    res = bench_stgcn(hidden_channels=4, batch=2, T=12, steps=1, warmup=0, matmul_size=128)
    assert res['max_abs_diff_eval'] < 1e-5 and res['train_speedup'] > 0 and res['matmul_peak_gflops'] > 0
    assert set(res['train_samples_per_s']) == {'skelnb', 'reference'}
    times = bench_graph_conv(4, 8, batch=2, T=6, repeats=1)
    assert set(times) == {'reference_loop', 'reference_einsum', 'conv_first', 'graph_first'}
    assert isinstance(tune_malloc(), bool)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_parity():
    cpu = STGCN('tiny').eval(); gpu = STGCN('tiny').cuda().eval(); gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 3, 20, 25, 2)
    with torch.no_grad():
        assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-4)
        assert torch.allclose(stgcn_reference_forward(gpu, x.cuda()).cpu(), cpu(x), atol=1e-4)
    gpu.train(); cpu.train(); _no_dropout(gpu); _no_dropout(cpu)
    gpu(x.cuda()).sum().backward(); cpu(x).sum().backward()
    for (n, p), q in zip(cpu.named_parameters(), gpu.parameters()): assert torch.allclose(p.grad, q.grad.cpu(), atol=1e-3, rtol=1e-3), n
    assert keep_mask((64,), device='cuda').device.type == 'cuda'
    z = torch.randn(2, 8, 13, 25)
    assert torch.allclose(eadm_drop(z.cuda()).cpu(), eadm_drop(z), atol=1e-5)
    neck = AttentionMaskNeck(32, 4); f = torch.randn(4, 32, 5, 25)
    assert torch.allclose(neck.cuda()(f.cuda())[0].cpu(), neck.cpu()(f)[0], atol=1e-4)
    scd = SCDNetEncoder('tiny').eval(); xs = torch.randn(2, 3, 16, 25, 2)
    with torch.no_grad(): ref = scd(xs)['z_i']; got = scd.cuda()(xs.cuda())['z_i'].cpu()
    assert torch.allclose(ref, got, atol=1e-4)


def test_absent_person_sharing_is_exact():
    shared, unshared = STGCN('tiny').eval(), STGCN('tiny', share_absent_eval=False).eval()
    unshared.load_state_dict(shared.state_dict())
    x = torch.zeros(4, 3, 16, 25, 2); x[..., 0] = torch.randn(4, 3, 16, 25); x[2, ..., 1] = torch.randn(3, 16, 25)
    with torch.no_grad():
        for xx in (x, torch.zeros(2, 3, 16, 25, 2), torch.randn(2, 3, 16, 25, 2), x[..., :1]):
            assert max_abs_diff(shared(xx, 'all'), unshared(xx, 'all')) < 1e-5
        h, rows = shared.person_features(x)
    assert h.shape[0] == 6 and rows.tolist() == [0, 5, 1, 5, 2, 3, 4, 5]
    shared.train()
    assert shared.person_features(x)[1] is None          # training: every row is encoded (batch statistics, dropout)


# ---------------------------------------------------------------- SCD-Net: released graph, initialisation, checkpoints
# A transcription of the released modules (SCD-Net / A2MC model/ctrgcn.py and scd/scd_encoder.py), parametrised in
# widths so a small instance runs on the CPU. Their state_dict is the upstream layout, built by hand.
import numpy as _np
import torch.nn as _nn
from einops import rearrange as _rearrange
from skelnb.encoders.scdnet import (convert_scdnet_state_dict, load_scdnet_checkpoint, scdnet_init_, CTRGraphConv, MultiScaleTemporalConv)


def _up_graph():
    inward = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11), (13, 1),
              (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12)]
    inward = [(i - 1, j - 1) for i, j in inward]
    def e2m(link):
        A = _np.zeros((25, 25))
        for i, j in link: A[j, i] = 1
        return A
    def nd(A):
        d = A.sum(0); return A @ _np.diag(_np.where(d > 0, 1 / _np.where(d > 0, d, 1), 0))
    return _np.stack([e2m([(i, i) for i in range(25)]), nd(e2m(inward)), nd(e2m([(j, i) for i, j in inward]))]).astype(_np.float32)


class _UpCTRGC(_nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        rel = 8 if cin in (3, 9) else cin // 8
        self.conv1, self.conv2 = _nn.Conv2d(cin, rel, 1), _nn.Conv2d(cin, rel, 1)
        self.conv3, self.conv4 = _nn.Conv2d(cin, cout, 1), _nn.Conv2d(rel, cout, 1)
    def forward(self, x, A, alpha):
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)
        x1 = self.conv4(torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))) * alpha + A[None, None]
        return torch.einsum('ncuv,nctv->nctu', x1, x3)


class _UpTemporal(_nn.Module):
    def __init__(self, cin, cout, k, stride=1, dilation=1):
        super().__init__()
        self.conv = _nn.Conv2d(cin, cout, (k, 1), (stride, 1), ((k + (k - 1) * (dilation - 1) - 1) // 2, 0), (dilation, 1))
        self.bn = _nn.BatchNorm2d(cout)
    def forward(self, x): return self.bn(self.conv(x))


class _UpMSTCN(_nn.Module):
    def __init__(self, c, k=5, dilations=(1, 2)):
        super().__init__()
        bc = c // (len(dilations) + 2)
        self.branches = _nn.ModuleList([_nn.Sequential(_nn.Conv2d(c, bc, 1), _nn.BatchNorm2d(bc), _nn.ReLU(), _UpTemporal(bc, bc, k, dilation=d)) for d in dilations])
        self.branches.append(_nn.Sequential(_nn.Conv2d(c, bc, 1), _nn.BatchNorm2d(bc), _nn.ReLU(), _nn.MaxPool2d((3, 1), 1, (1, 0)), _nn.BatchNorm2d(bc)))
        self.branches.append(_nn.Sequential(_nn.Conv2d(c, bc, 1), _nn.BatchNorm2d(bc)))
    def forward(self, x): return torch.cat([b(x) for b in self.branches], 1)


class _UpGCN(_nn.Module):
    def __init__(self, cin, cout, A):
        super().__init__()
        self.convs = _nn.ModuleList([_UpCTRGC(cin, cout) for _ in range(3)])
        self.down = _nn.Sequential(_nn.Conv2d(cin, cout, 1), _nn.BatchNorm2d(cout)) if cin != cout else None
        self.PA = _nn.Parameter(torch.from_numpy(A)); self.alpha = _nn.Parameter(torch.zeros(1)); self.bn = _nn.BatchNorm2d(cout)
    def forward(self, x):
        y = sum(self.convs[i](x, self.PA[i], self.alpha) for i in range(3))
        return torch.relu(self.bn(y) + (self.down(x) if self.down is not None else x))


class _UpUnitTCN(_nn.Module):
    def __init__(self, cin, cout):
        super().__init__(); self.conv = _nn.Conv2d(cin, cout, 1); self.bn = _nn.BatchNorm2d(cout)
    def forward(self, x): return self.bn(self.conv(x))


class _UpUnit(_nn.Module):
    def __init__(self, cin, cout, A, residual=True):
        super().__init__()
        self.gcn1, self.tcn1 = _UpGCN(cin, cout, A), _UpMSTCN(cout)
        self.res = residual
        if residual and cin != cout: self.residual = _UpUnitTCN(cin, cout)
    def forward(self, x):
        r = 0 if not self.res else (self.residual(x) if hasattr(self, 'residual') else x)
        return torch.relu(self.tcn1(self.gcn1(x)) + r)


class _UpModel(_nn.Module):
    def __init__(self, chans, M=2, V=25, C=3):
        super().__init__()
        A = _up_graph()
        self.data_bn = _nn.BatchNorm1d(M * V * C)
        self.l1, self.l2, self.l3 = _UpUnit(C, chans[0], A, False), _UpUnit(chans[0], chans[1], A), _UpUnit(chans[1], chans[2], A)
    def forward(self, x):
        N, C, T, V, M = x.size()
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).contiguous().view(N, M * V * C, T))
        x = x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).contiguous().view(N * M, C, T, V)
        return self.l3(self.l2(self.l1(x)))


class _UpEncoder(_nn.Module):
    "PretrainingEncoder: `encoder` (two stems, token MLPs, Transformers) and three projectors."
    def __init__(self, chans, d, heads, T, feat, M=2, V=25):
        super().__init__()
        enc = _nn.Module()
        enc.gcn_t, enc.gcn_s = _UpModel(chans, M, V), _UpModel(chans, M, V)
        enc.channel_t = _nn.Sequential(_nn.Linear(M * V * chans[-1], d), _nn.LayerNorm(d), _nn.ReLU(True), _nn.Linear(d, d))
        enc.channel_s = _nn.Sequential(_nn.Linear(T * chans[-1], d), _nn.LayerNorm(d), _nn.ReLU(True), _nn.Linear(d, d))
        layer = _nn.TransformerEncoderLayer(d, heads, d, batch_first=True)
        enc.t_encoder, enc.s_encoder = _nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), _nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.encoder, self.M = enc, M
        self.t_proj = _nn.Sequential(_nn.Linear(d, d), _nn.ReLU(True), _nn.Linear(d, feat))
        self.s_proj = _nn.Sequential(_nn.Linear(d, d), _nn.ReLU(True), _nn.Linear(d, feat))
        self.i_proj = _nn.Sequential(_nn.Linear(2 * d, d), _nn.ReLU(True), _nn.Linear(d, feat))
    def forward(self, x):
        e = self.encoder
        vt = e.channel_t(_rearrange(e.gcn_t(x), '(B M) C T V -> B T (M V C)', M=self.M))
        vs = e.channel_s(_rearrange(e.gcn_s(x), '(B M) C T V -> B (M V) (T C)', M=self.M))
        vt, vs = e.t_encoder(vt).amax(1), e.s_encoder(vs).amax(1)
        return self.t_proj(vt), self.s_proj(vs), self.i_proj(torch.cat([vt, vs], 1)), vt, vs


def _scd_small(**kw):
    return SCDNetEncoder('tiny', num_frames=8, stem_channels=(24, 32, 24), hidden=32, heads=4, ffn=32, feature_dim=16, **kw)


def test_scdnet_graph_is_the_released_one():
    model = SCDNetEncoder('tiny')
    for block in model.gcn_t.blocks: assert torch.allclose(block.gcn.PA.detach(), torch.from_numpy(_up_graph()).transpose(-1, -2))


def test_scdnet_upstream_checkpoint_loads_and_matches_the_released_forward():
    torch.manual_seed(0)
    up = _UpEncoder((24, 32, 24), 32, 4, 8, 16).double()
    with torch.no_grad():   # random values everywhere (BN statistics too, alpha non-zero) so every mapping matters
        for name, t in up.state_dict().items():
            if t.is_floating_point(): t.copy_(torch.rand_like(t) + 0.5 if 'running_var' in name else torch.randn_like(t) * 0.3)
    sd = {f'module.encoder_q.{k}': v for k, v in up.state_dict().items()} | {'module.encoder_k.t_proj.0.bias': torch.zeros(32)}
    mine = _scd_small().double()
    report = load_scdnet_checkpoint(mine, {'state_dict': sd})
    assert report['missing'] == [] and report['unexpected'] == [] and report['mismatched'] == []
    assert report['loaded'] == len(mine.state_dict())
    up.eval(); mine.eval()
    x = torch.randn(3, 3, 8, 25, 2, dtype=torch.float64)
    with torch.no_grad():
        zt, zs, zi, vt, vs = up(x); out = mine(x)
    for a, b in ((out['v_t'], vt), (out['v_s'], vs), (out['z_t'], zt), (out['z_s'], zs), (out['z_i'], zi)):
        assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()
    # conversion rules one by one
    conv = convert_scdnet_state_dict({k[len('module.encoder_q.'):]: v for k, v in sd.items() if k.startswith('module.encoder_q.')})
    g = 'encoder.gcn_t.l2.gcn1.convs.1.'
    assert torch.equal(conv['gcn_t.blocks.1.gcn.convs.1.conv1.weight'], up.state_dict()[g + 'conv2.weight'])
    assert torch.equal(conv['gcn_t.blocks.1.gcn.convs.1.conv4.weight'], -up.state_dict()[g + 'conv4.weight'])
    assert torch.equal(conv['gcn_t.blocks.1.gcn.convs.1.conv4.bias'], up.state_dict()[g + 'conv4.bias'])
    assert torch.equal(conv['gcn_t.blocks.0.gcn.PA'], up.state_dict()['encoder.gcn_t.l1.gcn1.PA'].transpose(1, 2))
    with pytest.raises(ValueError, match='shared_input_bn=False'): load_scdnet_checkpoint(_scd_small(shared_input_bn=True), sd)
    with pytest.raises(ValueError, match='no key starts with'): load_scdnet_checkpoint(_scd_small(), sd, prefix='backbone.')


def test_scdnet_released_initialisation():
    torch.manual_seed(0)
    model = _scd_small()
    for block in model.gcn_s.blocks:
        assert torch.all(block.gcn.bn.weight == 1e-6) and torch.all(block.gcn.bn.bias == 0)
        for m in block.gcn.modules():
            if isinstance(m, torch.nn.Conv2d): assert torch.all(m.bias == 0)
        tcn_bn = torch.cat([m.weight.detach() for m in block.tcn.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        assert 0.002 < tcn_bn.std() < 0.05 and abs(tcn_bn.mean() - 1) < 0.02
    w = model.gcn_t.blocks[1].gcn.convs[0].conv3.weight   # (32, 24, 1, 1): Kaiming fan-out, std sqrt(2 / 32)
    assert abs(w.std().item() / math.sqrt(2 / 32) - 1) < 0.15
    for name, p in model.named_parameters():
        if p.dim() == 2:
            bound = math.sqrt(6 / (p.shape[0] + p.shape[1]))
            assert p.abs().max() <= bound + 1e-7 and p.abs().max() > 0.8 * bound, name
    # the earlier set-up is one flag away: PyTorch defaults, one shared input batch norm
    old = _scd_small(upstream_init=False, shared_input_bn=True)
    assert 'data_bn.weight' in old.state_dict() and 'gcn_t.data_bn.weight' not in old.state_dict()
    assert torch.all(old.gcn_t.blocks[0].gcn.bn.weight == 1)
    x = torch.randn(2, 3, 8, 25, 2)
    assert old(x)['z_i'].shape == (2, 16) and model(x)['z_i'].shape == (2, 16)


def test_stgcn_graph_choice_agcn_for_skeattnclr():
    "SkeAttnCLR's preset uses the AGCN graph (as its released net/st_gcn.py); the other presets keep the ST-GCN spatial partition."
    from skelnb.encoders.stgcn import STGCN
    from skelnb.skeleton import Graph, agcn_graph
    import numpy as np
    np.testing.assert_array_equal(STGCN('skeattnclr').A.numpy(), agcn_graph('ntu25'))
    for name in ('skeletonclr', 'crossclr', 'aimclr', 'linear_eval', 'tiny'):
        np.testing.assert_array_equal(STGCN(name).A.numpy(), Graph('ntu25', 'spatial').A)
    a, s = STGCN('tiny', strategy='agcn', layout='kinect_v1'), STGCN('tiny', layout='kinect_v1')
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in s.state_dict().items()}
    assert not np.array_equal(a.A.numpy(), s.A.numpy())
