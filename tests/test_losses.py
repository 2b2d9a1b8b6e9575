"""Checks of skelnb.losses and skelnb.memory beyond the lessons: multi-process (DDP) memories, light imports,
queue wrap-around for random batch sequences, gradient routing, and the loss explorer driven headlessly."""
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from skelnb.losses import (info_nce, cvc_km_loss, d3m_loss, moco_logits, multi_positive_nce, nnm_mask, topk_mask,
                           loss_panels, toy_views)
from skelnb.memory import (MoCoQueue, MultiViewQueue, AdversarialBank, concat_all_gather, momentum_update,
                           MomentumUpdater)

ROOT = Path(__file__).resolve().parent.parent
DIM, K = 4, 10


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _ddp_steps():
    "Keys each rank enqueues at each step; ranks hold different batch sizes at step 1 (a last batch without drop_last)."
    sizes = [(3, 3), (3, 2), (4, 4), (3, 3)]
    return [[_unit(b, DIM, seed=100 * s + r) for r, b in enumerate(step)] for s, step in enumerate(sizes)]


def _ddp_worker(rank, world, tmpdir):
    "Runs in a spawned process: the memories under torch.distributed (gloo), results saved for the parent."
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{tmpdir}/rendezvous', rank=rank, world_size=world)
    try:
        queue = MoCoQueue(DIM, K, generator=torch.Generator().manual_seed(0))
        views = MultiViewQueue(DIM, K, views=('joint', 'motion'), generator=torch.Generator().manual_seed(1))
        bank = AdversarialBank(DIM, K, generator=torch.Generator().manual_seed(2))
        steps = _ddp_steps()
        for step in steps:
            queue.enqueue(step[rank])
            views.enqueue({'joint': step[rank], 'motion': -step[rank]})
        filled = [bank.fill(step[rank]) for step in steps[:2]]
        q, k = _unit(3 + rank, DIM, seed=7 + rank), _unit(3 + rank, DIM, seed=17 + rank)
        bank.update(q, k)
        torch.save({'queue': queue.state_dict(), 'views': views.state_dict(), 'bank': bank.state_dict(),
                    'filled': filled, 'gathered': concat_all_gather(steps[1][rank])}, f'{tmpdir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory):
    "Spawn two gloo processes once; return what each rank saved."
    import torch.multiprocessing as mp
    tmp = tmp_path_factory.mktemp('ddp')
    ctx = mp.spawn(_ddp_worker, args=(2, str(tmp)), nprocs=2, join=False)
    deadline = time.time() + 120
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes: p.terminate()
            pytest.fail('DDP workers did not finish within 120 s')
    return [torch.load(tmp / f'rank{r}.pt', weights_only=True) for r in range(2)]


def test_ddp_queues_are_identical_and_global(ddp_results):
    "Both ranks end with the queues one process gets from the global batch (rank 0's keys, then rank 1's)."
    steps = _ddp_steps()
    queue = MoCoQueue(DIM, K, generator=torch.Generator().manual_seed(0))
    views = MultiViewQueue(DIM, K, views=('joint', 'motion'), generator=torch.Generator().manual_seed(1))
    for step in steps:
        keys = torch.cat(step)
        queue.enqueue(keys); views.enqueue({'joint': keys, 'motion': -keys})
    for r in ddp_results:
        for name, mem in (('queue', queue), ('views', views)):
            for key, value in mem.state_dict().items(): torch.testing.assert_close(r[name][key], value)
        torch.testing.assert_close(r['gathered'], torch.cat(steps[1]))        # unequal sizes 3 + 2
    # the queue holds the last K keys of the global stream, which came from both ranks
    last = torch.cat([torch.cat(s) for s in steps])[-K:]
    held = {tuple(c) for c in ddp_results[0]['queue']['queue'].t().tolist()}
    assert held == {tuple(c) for c in last.tolist()}
    from_rank = lambda r: {tuple(c) for s in steps for c in s[r].tolist()}
    assert held & from_rank(0) and held & from_rank(1)


def test_ddp_bank_step_is_global_batch_step(ddp_results):
    "Warm-up fill and the ascent step under DDP equal one process working on the concatenated batch."
    steps = _ddp_steps()
    bank = AdversarialBank(DIM, K, generator=torch.Generator().manual_seed(2))
    filled = [bank.fill(torch.cat(step)) for step in steps[:2]]
    bank.update(torch.cat([_unit(3, DIM, seed=7), _unit(4, DIM, seed=8)]),
                torch.cat([_unit(3, DIM, seed=17), _unit(4, DIM, seed=18)]))
    assert filled == [6, 4]
    for r in ddp_results:
        assert r['filled'] == filled
        for key, value in bank.state_dict().items(): torch.testing.assert_close(r['bank'][key], value)


def test_core_modules_import_without_widgets():
    code = ('import sys, skelnb.losses, skelnb.memory; '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("plotly", "ipywidgets", "IPython", "anywidget")]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


@pytest.mark.parametrize('seed', range(5))
def test_queue_wraparound_random_batches(seed):
    "Random batch sizes (including > K): the queue equals writing the keys one at a time into a list ring."
    g = torch.Generator().manual_seed(seed)
    size = int(torch.randint(3, 9, (1,), generator=g))
    queue = MoCoQueue(DIM, size, generator=g)
    ring, ptr = list(queue.queue.t().clone()), 0
    for _ in range(6):
        keys = torch.randn(int(torch.randint(1, 2 * size, (1,), generator=g)), DIM, generator=g)
        queue.enqueue(keys)
        for key in keys: ring[ptr] = key; ptr = (ptr + 1) % size
        torch.testing.assert_close(queue.queue, torch.stack(ring, 1))
        assert int(queue.queue_ptr) == ptr


def test_gradient_routing():
    q, k, M = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(9, 8, seed=3)
    z, ze, zd = (t.clone().requires_grad_() for t in (q, _unit(4, 8, seed=4), _unit(4, 8, seed=5)))
    d3m_loss(moco_logits(z, k, M), moco_logits(ze, k, M), moco_logits(zd, k, M)).backward()
    assert z.grad is None and ze.grad.norm() > 0 and zd.grad.norm() > 0          # no gradient to the normal branch
    qu, qv = q.clone().requires_grad_(), _unit(4, 8, seed=6).requires_grad_()
    cvc_km_loss(qu, k, M, qv, _unit(9, 8, seed=7)).backward()
    assert qu.grad.norm() > 0 and qv.grad.norm() > 0                                # both views learn


def test_cvc_km_against_formula_float32():
    "The same formula in float32 at upstream sizes of d, with a few mined positives."
    qu, ku, Mu, qv, Mv = _unit(3, 128, seed=1), _unit(3, 128, seed=2), _unit(50, 128, seed=3), _unit(3, 128, seed=4), _unit(50, 128, seed=5)
    T, topk = 0.07, 3
    nu, nv = qu @ Mu.t(), qv @ Mv.t()
    expected = []
    for n in range(3):
        top = set(nv[n].topk(topk).indices.tolist())
        logits = torch.cat([(qu[n] * ku[n]).sum()[None], nu[n], nu[n] * nv[n]]).double() / T
        logz = torch.logsumexp(logits, 0)
        pos = [0] + [1 + j for j in top] + [1 + 50 + j for j in top]
        expected.append(-sum(float(logits[p] - logz) for p in pos) / len(pos))
    np.testing.assert_allclose(cvc_km_loss(qu, ku, Mu, qv, Mv, topk, T, reduction='none').numpy(), expected, rtol=1e-5)


def test_momentum_update_through_wrappers():
    q_net, k_net = nn.Linear(3, 2), nn.Linear(3, 2)
    before = k_net.weight.detach().clone()
    momentum_update(k_net, nn.DataParallel(q_net), 0.5)                  # a wrapped source is unwrapped
    torch.testing.assert_close(k_net.weight.detach(), 0.5 * before + 0.5 * q_net.weight.detach())
    up = MomentumUpdater(k_net, q_net, base=0.996, total_steps=4)
    assert [round(up.step(), 6) for _ in range(5)] == [round(1 - 0.004 * (math.cos(math.pi * t / 4) + 1) / 2, 6) for t in (0, 1, 2, 3, 4)]


def test_loss_explorer_headless():
    pytest.importorskip('plotly'); pytest.importorskip('ipywidgets')
    from skelnb.losses import LossExplorer
    data = toy_views(n=4, queue_size=8, dim=8, seed=3)
    ex = LossExplorer(data, temperature=0.1)
    for mode, temp in (('NNM', 0.05), ('CVC-KM', 0.3), ('plain', 0.5)):
        ex.mode.value, ex.temperature.value = mode, temp
        p = loss_panels(data, mode, ex.temperature.value)
        np.testing.assert_allclose(np.asarray(ex.fig.data[0].z), p['similarity'].numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(ex.fig.data[1].z), p['probs'].numpy(), rtol=1e-6)
        assert len(ex.fig.data[3].x) == int(p['mask'].sum())
        assert f'{float(p["loss"]):.3f}' in ex.readout.value
