"""skelnb.train: exact resume, accumulation, seeds, metrics, checkpoints, bad input, and 2-process DDP (gloo, CPU)."""
import csv, json, math, re, warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from skelnb.data import derive_seed

from skelnb.methods.core import SSLMethod
from skelnb.train import (ToyMoCo, ToyClips, Trainer, TrainConfig, train_preset, run_pretraining, seed_everything, lr_at, wrap_ddp, run_toy_ddp)
from skelnb.bench import bench_trainer
from skelnb.checkpoint import (CheckpointError, read_checkpoint, load_method_weights, list_checkpoints, latest_checkpoint, checkpoint_path, atomic_save, CHECKPOINT_FORMAT)
from skelnb.runtime import allocator_reexec_command, FAST_ALLOCATOR_ENV


pytestmark = pytest.mark.usefixtures('one_thread')   # tiny models: one thread is faster (tests/conftest.py)


def lesson(**kw):
    return train_preset('lesson', **{'progress': False, **kw})


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


def fresh_run(cfg, n=64, seed=0, **method_kw):
    seed_everything(seed)
    return Trainer(ToyMoCo(**method_kw), ToyClips(n=n), cfg)


# ---------------------------------------------------------------- exact resume

@pytest.mark.parametrize('stop_at,overrides', [
    (1, {}),
    (2, {}),
    (3, dict(schedule='step', milestones=(2,), accumulate=2, batch_size=8, max_grad_norm=1.0, nesterov=True)),
    (2, dict(optimizer='adamw', lr=1e-3, weight_decay=0.05, schedule='constant', checkpoint_every=2)),
])
def test_exact_resume_matches_uninterrupted_run(tmp_path, stop_at, overrides):
    cfg = lesson(epochs=4, **overrides)
    straight = fresh_run(replace(cfg, out_dir=str(tmp_path / 'a'))).fit()
    fresh_run(replace(cfg, out_dir=str(tmp_path / 'b'))).fit(stop_at=stop_at)
    assert latest_checkpoint(tmp_path / 'b') == checkpoint_path(tmp_path / 'b', stop_at)
    # a different process state and different initial weights: everything must come from the checkpoint
    resumed = fresh_run(replace(cfg, out_dir=str(tmp_path / 'b'), resume='auto'), seed=99).fit()
    assert resumed.resumed_from == checkpoint_path(tmp_path / 'b', stop_at)
    assert max_abs_diff(straight.method.state_dict(), resumed.method.state_dict()) == 0.0
    assert [r['loss'] for r in straight.history] == [r['loss'] for r in resumed.history]
    assert straight.step == resumed.step == 4 * straight.steps_per_epoch
    sa, sb = straight.optimizer.state_dict()['state'], resumed.optimizer.state_dict()['state']
    for k in sa:
        for name in sa[k]:
            if torch.is_tensor(sa[k][name]): assert torch.equal(sa[k][name], sb[k][name])
    # the metrics files are rewritten from the restored history: one row per epoch, no duplicates
    rows = [json.loads(l) for l in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2, 3, 4]


def test_resume_from_explicit_path_and_auto_without_checkpoint(tmp_path):
    cfg = lesson(epochs=3, out_dir=str(tmp_path))
    t = fresh_run(replace(cfg, resume='auto'))          # nothing to resume: a fresh run
    assert t.resumed_from is None and t.epoch == 0
    t.fit(stop_at=1)
    t2 = fresh_run(replace(cfg, out_dir=None, resume=str(checkpoint_path(tmp_path, 1))))
    assert (t2.epoch, t2.step) == (1, t.steps_per_epoch)
    with pytest.raises(ValueError, match="resume='auto' needs config.out_dir"):
        fresh_run(lesson(resume='auto'))


def test_resume_with_changed_config_warns(tmp_path):
    cfg = lesson(epochs=2, out_dir=str(tmp_path))
    fresh_run(cfg).fit(stop_at=1)
    with pytest.warns(UserWarning, match='different lr'):
        fresh_run(replace(cfg, lr=0.5, resume='auto'))


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_contents_and_keep_last(tmp_path):
    t = fresh_run(lesson(epochs=4, keep_last=2, out_dir=str(tmp_path))).fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ['checkpoint_e0003.pt', 'checkpoint_e0004.pt']
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    ck = torch.load(latest_checkpoint(tmp_path), weights_only=True)    # loadable without unrestricted pickle
    assert ck['format'] == CHECKPOINT_FORMAT and (ck['method'], ck['method_version']) == ('toy_moco', 1)
    assert {'model', 'optimizer', 'schedule', 'scaler', 'rng', 'config', 'history', 'epoch', 'step'} <= set(ck)
    assert 'queue.queue' in ck['model'] and 'queue.queue_ptr' in ck['model'] and any(k.startswith('encoder_k.') for k in ck['model'])
    assert len(ck['rng']) == 1 and set(ck['rng'][0]) == {'global', 'method'}
    assert torch.equal(ck['model']['queue.queue'], t.method.queue.queue)
    m = load_method_weights(ToyMoCo(), latest_checkpoint(tmp_path))
    assert max_abs_diff(m.state_dict(), t.method.state_dict()) == 0.0


def test_checkpoint_every_and_stop_at(tmp_path):
    t = fresh_run(lesson(epochs=6, checkpoint_every=4, keep_last=0, out_dir=str(tmp_path)))
    t.fit(stop_at=3)                                   # stopping early always writes a checkpoint
    t.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ['checkpoint_e0003.pt', 'checkpoint_e0004.pt', 'checkpoint_e0006.pt']


class Other(SSLMethod):
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(3, 2)
    def training_step(self, batch, epoch):
        return {'loss': self.lin(batch['x'].mean((2, 3, 4))).pow(2).mean()}


def test_bad_checkpoints_name_the_file(tmp_path):
    fresh_run(lesson(epochs=1, out_dir=str(tmp_path))).fit()
    good = latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"written by method 'toy_moco' version 1, but is being loaded into 'Other'"):
        Trainer(Other(), ToyClips(n=64), lesson(resume=str(good)))
    with pytest.raises(CheckpointError, match='do not fit'):
        Trainer(ToyMoCo(hidden=8), ToyClips(n=64), lesson(resume=str(good)))
    cases = {'truncated.pt': good.read_bytes()[: len(good.read_bytes()) // 2], 'garbage.pt': b'\x00not a checkpoint' * 50, 'empty.pt': b''}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(f'cannot read checkpoint {tmp_path / name}')):
            read_checkpoint(tmp_path / name)
    torch.save({'a': torch.ones(1), 'obj': Path('x')}, tmp_path / 'pickled.pt')           # arbitrary objects: refused
    with pytest.raises(CheckpointError, match='refused by torch.load'):
        read_checkpoint(tmp_path / 'pickled.pt')
    torch.save({'a': torch.ones(1)}, tmp_path / 'plain.pt')
    with pytest.raises(CheckpointError, match='not a skelnb training checkpoint'):
        read_checkpoint(tmp_path / 'plain.pt')
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        read_checkpoint(tmp_path / 'missing.pt')


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    atomic_save({'v': torch.tensor(1)}, tmp_path / 'c.pt')
    with pytest.raises(Exception):
        atomic_save({'v': lambda: 0}, tmp_path / 'c.pt')
    assert torch.load(tmp_path / 'c.pt', weights_only=True)['v'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['c.pt']


# ---------------------------------------------------------------- loop semantics

class Regress(SSLMethod):
    "A BatchNorm-free, deterministic least-squares 'method': gradient accumulation must be exact for it."
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(3 * 16 * 5, 1)
        self.steps, self.epochs = [], []
    def training_step(self, batch, epoch):
        return {'loss': (self.lin(batch['x'].flatten(1)).squeeze(1) - batch['label'].float()).pow(2).mean()}
    def after_optimizer_step(self, step, total_steps): self.steps.append((step, total_steps))
    def on_epoch_start(self, epoch): self.epochs.append(epoch)


def test_gradient_accumulation_equals_the_big_batch():
    ds = ToyClips(n=64)
    def train(batch_size, accumulate):
        torch.manual_seed(0); m = Regress()
        return Trainer(m, ds, lesson(epochs=2, batch_size=batch_size, accumulate=accumulate, lr=1e-3)).fit().method
    big, acc = train(16, 1), train(4, 4)
    assert max_abs_diff(big.state_dict(), acc.state_dict()) < 1e-6
    assert max_abs_diff(big.state_dict(), train(8, 1).state_dict()) > 1e-4     # and the test can tell batches apart


def test_hooks_are_called_with_steps_and_epochs():
    t = Trainer(Regress(), ToyClips(n=64), lesson(epochs=3, batch_size=16, accumulate=2)).fit()
    assert t.steps_per_epoch == 2 and t.total_steps == 6
    assert t.method.steps == [(s, 6) for s in range(6)]
    assert t.method.epochs == [0, 1, 2]


def test_lr_follows_the_schedule_per_step():
    t = Trainer(Regress(), ToyClips(n=64), lesson(epochs=3, batch_size=16, schedule='step', milestones=(1, 2), warmup_epochs=0.5, lr=0.4))
    lrs = []
    orig = t.optimizer.step
    def spy(*a, **k): lrs.append(t.optimizer.param_groups[0]['lr']); return orig(*a, **k)
    t.optimizer.step = spy
    t.fit()
    assert lrs == pytest.approx([lr_at(s, 4, t.config) for s in range(12)])
    assert lrs[:2] == pytest.approx([0.2, 0.4]) and lrs[4] == pytest.approx(0.04) and lrs[8] == pytest.approx(0.004)


def test_trainer_equals_the_reference_loop():
    b = bench_trainer(n=64, batch_size=16, repeats=1)          # asserts bit-identical weights internally
    assert b['trainer_samples_per_s'] > 0 and b['reference_samples_per_s'] > 0


def test_amp_on_cpu_uses_bfloat16():
    t = fresh_run(lesson(epochs=1, amp=True)).fit()
    assert t.callbacks['amp'].dtype == torch.bfloat16 and not t.callbacks['amp'].scaler.is_enabled()
    assert math.isfinite(t.history[0]['loss'])
    assert fresh_run(lesson(epochs=1)).callbacks['amp'].dtype is None       # 'auto' is off on CPU


# ---------------------------------------------------------------- seeds

class RandomItems(torch.utils.data.Dataset):
    "Each item draws from the worker's global generators, as augmentations in a Dataset would."
    def __len__(self): return 32
    def __getitem__(self, i):
        import numpy as np
        return {'x': torch.rand(1), 'n': torch.tensor(np.random.rand()), 'index': torch.tensor(i)}


@pytest.mark.parametrize('num_workers', [0, 2])
def test_data_seeds_differ_per_epoch_and_repeat_per_run(num_workers):
    def draws():
        seed_everything(0)
        t = Trainer(Regress(), ToyClips(n=32), lesson(batch_size=8, num_workers=num_workers))
        t.dataset = RandomItems()
        per_epoch = []
        for epoch in range(2):
            out = {}
            for b in t._loader(epoch):
                for i, x, n in zip(b['index'].tolist(), b['x'].tolist(), b['n'].tolist()): out[i] = (x[0], n)
            per_epoch.append(out)
        return per_epoch
    e0, e1 = draws()
    assert [e0, e1] == draws()                                   # reproducible
    assert all(e0[i] != e1[i] for i in e0)                       # new draws every epoch, for every sample
    assert len({v for v in e0.values()}) == len(e0)              # no two samples (or workers) share a stream


def test_derive_seed_is_stable():
    assert derive_seed(0, 'sampler', 1) == derive_seed(0, 'sampler', 1) != derive_seed(0, 'sampler', 2)
    assert 0 <= derive_seed('x') < 2**63


# ---------------------------------------------------------------- metrics and monitor

def test_metrics_files_and_monitor(tmp_path):
    calls = []
    def monitor(trainer, epoch):
        calls.append((epoch, trainer.method.training, torch.is_grad_enabled()))
        return {'probe': float(epoch) / 10}
    t = Trainer(ToyMoCo(), ToyClips(n=64), lesson(epochs=5, monitor_every=2, out_dir=str(tmp_path)), monitor=monitor).fit()
    assert calls == [(2, False, False), (4, False, False), (5, False, False)]   # every 2 epochs and the last; eval, no grad
    assert t.method.training
    with open(tmp_path / 'metrics.csv') as f: rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1', '2', '3', '4', '5']
    assert [r['probe'] for r in rows] == ['', '0.2', '', '0.4', '0.5']
    for key in ('loss', 'top1', 'lr', 'samples_per_s', 'epoch_time_s', 'skipped_steps', 'peak_rss_mb', 'samples'):
        assert key in rows[0], key
    jl = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert jl == t.history
    assert all(r['samples'] == 64 for r in jl) and all(r['peak_rss_mb'] > 0 for r in jl)


def test_bad_monitor_and_bad_methods():
    with pytest.raises(TypeError, match='dict of numbers'):
        Trainer(ToyMoCo(), ToyClips(n=64), lesson(epochs=1), monitor=lambda t, e: 0.5).fit()
    with pytest.raises(TypeError, match='no training_step'):
        Trainer(nn.Linear(2, 2), ToyClips(n=64), lesson())
    class NoDict(Other):
        def training_step(self, batch, epoch): return super().training_step(batch, epoch)['loss']
    with pytest.raises(TypeError, match="must return a dict with a scalar tensor 'loss'"):
        Trainer(NoDict(), ToyClips(n=64), lesson(epochs=1)).fit()
    class Detached(Other):
        def training_step(self, batch, epoch): return {'loss': super().training_step(batch, epoch)['loss'].detach()}
    with pytest.raises(RuntimeError, match='does not require grad'):
        Trainer(Detached(), ToyClips(n=64), lesson(epochs=1)).fit()


# ---------------------------------------------------------------- bad input

def test_dataset_smaller_than_the_batch():
    with pytest.raises(ValueError, match=r'has 10 samples, fewer than batch_size=16: with drop_last=True not a single batch'):
        Trainer(ToyMoCo(), ToyClips(n=10), lesson(batch_size=16))
    with pytest.raises(ValueError, match='fewer than accumulate=4'):
        Trainer(ToyMoCo(), ToyClips(n=40), lesson(batch_size=16, accumulate=4))
    with pytest.warns(UserWarning, match='not a multiple of accumulate=2'):
        t = Trainer(Regress(), ToyClips(n=48), lesson(batch_size=16, accumulate=2))
    assert t.steps_per_epoch == 1
    t = Trainer(Regress(), ToyClips(n=10), lesson(batch_size=16, drop_last=False, epochs=1)).fit()   # the documented way out
    assert t.history[0]['samples'] == 10


def test_nan_in_the_data_names_the_samples():
    ds = ToyClips(n=32); ds.x[5, 0, 3, 2, 0] = float('nan'); ds.x[17, 1, 0, 0, 0] = float('inf')
    with pytest.raises(ValueError, match='non-finite values') as err:
        Trainer(ToyMoCo(), ds, lesson(batch_size=32)).fit()
    listed = re.search(r'dataset indices \[([^\]]*)\]', str(err.value)).group(1)
    assert sorted(int(i) for i in listed.split(',')) == [5, 17]


class NaNAt(Other):
    def __init__(self, bad):
        super().__init__(); self.calls, self.bad = 0, set(bad)
    def training_step(self, batch, epoch):
        out = super().training_step(batch, epoch); self.calls += 1
        return {'loss': out['loss'] * float('nan')} if self.calls - 1 in self.bad else out


def test_nan_loss_raises_with_the_step():
    with pytest.raises(FloatingPointError, match=r'non-finite loss \(nan\) at epoch 2, optimizer step 5'):
        Trainer(NaNAt({5}), ToyClips(n=64), lesson()).fit()


def test_nan_loss_skip_policy(tmp_path):
    t = Trainer(NaNAt({1, 6}), ToyClips(n=64), lesson(nan_policy='skip', out_dir=str(tmp_path))).fit()
    assert t.skipped_steps == 2 and [r['skipped_steps'] for r in t.history] == [1, 1, 0, 0]
    assert all(math.isfinite(r['loss']) for r in t.history) and [r['samples'] for r in t.history] == [48, 48, 64, 64]
    assert all(torch.isfinite(p).all() for p in t.method.parameters())
    with pytest.raises(FloatingPointError, match='3 consecutive optimizer steps'):
        Trainer(NaNAt(range(100)), ToyClips(n=64), lesson(nan_policy='skip', max_nan_skips=3)).fit()


class PoisonsQueue(ToyMoCo):
    def training_step(self, batch, epoch):
        out = super().training_step(batch, epoch)
        if epoch == 1: self.queue.queue[:, 0] = float('nan'); out['loss'] = out['loss'] * float('nan')
        return out


def test_skip_refuses_a_poisoned_state():
    with pytest.raises(FloatingPointError, match=r"NaN/inf in \['queue.queue'\]"):
        Trainer(PoisonsQueue(), ToyClips(n=64), lesson(nan_policy='skip')).fit()


# ---------------------------------------------------------------- DDP and devices

def test_sync_bn_needs_cuda_and_is_noop_alone():
    with pytest.raises(ValueError, match='sync_bn=True needs CUDA'):
        wrap_ddp(ToyMoCo(), TrainConfig(sync_bn=True), torch.device('cpu'))
    with pytest.warns(UserWarning, match='no effect in a single process'):
        Trainer(ToyMoCo(), ToyClips(n=64), lesson(sync_bn=True))


def test_ddp_two_cpu_processes_end_identical(tmp_path):
    res = run_toy_ddp(tmp_path, nproc=2, epochs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    params = [k for k, _ in ToyMoCo().named_parameters()]
    assert params and all(torch.equal(r0[k], r1[k]) for k in params)            # DDP: the same steps everywhere
    assert torch.equal(r0['queue.queue'], r1['queue.queue']) and torch.equal(r0['queue.queue_ptr'], r1['queue.queue_ptr'])   # all-gathered keys
    seed_everything(0)
    assert not torch.equal(r0['queue.queue'], ToyMoCo().queue.queue)                        # keys did enter the queue
    ck = read_checkpoint(latest_checkpoint(tmp_path))
    assert ck['world_size'] == 2 and len(ck['rng']) == 2 and ck['epoch'] == 2
    assert not torch.equal(ck['rng'][0]['global']['torch'], ck['rng'][1]['global']['torch'])   # per-process seeds
    rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2] and rows[0]['samples'] == 64      # only rank 0 writes, totals over ranks


def test_allocator_reexec_decision():
    assert allocator_reexec_command(environ={}, modules={}, device='cpu', argv=['-m', 'skelnb.x']) [1:] == ['-m', 'skelnb.x']
    assert allocator_reexec_command(environ=dict(FAST_ALLOCATOR_ENV), modules={}, device='cpu', argv=[]) is None
    assert allocator_reexec_command(environ={'SKELNB_NO_REEXEC': '1'}, modules={}, device='cpu', argv=[]) is None
    assert allocator_reexec_command(device='cpu') is None         # never inside pytest


# ---------------------------------------------------------------- collapse monitor

def test_embedding_stats_match_direct_formulas():
    from skelnb.train import embedding_stats
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64) + torch.tensor([2.0, 0, 0, 0, 0], dtype=torch.float64)
    zp = z + 0.3 * torch.randn(12, 5, generator=g, dtype=torch.float64)
    st = embedding_stats(z, zp)
    unit = lambda row: [v / math.sqrt(sum(w * w for w in row)) for v in row]
    u, up = [unit(r) for r in z.tolist()], [unit(r) for r in zp.tolist()]
    n, d = 12, 5
    def mean(xs): return sum(xs) / len(xs)
    stds = [math.sqrt(sum((u[i][j] - mean([u[k][j] for k in range(n)])) ** 2 for i in range(n)) / (n - 1)) for j in range(d)]
    assert abs(st['emb_std'] - mean(stds)) < 1e-12
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    sq = lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b))
    assert abs(st['emb_uniformity'] - math.log(mean([math.exp(-2 * sq(u[i], u[j])) for i, j in pairs]))) < 1e-10
    assert abs(st['emb_cos'] - mean([sum(x * y for x, y in zip(u[i], u[j])) for i, j in pairs])) < 1e-12
    assert abs(st['emb_alignment'] - mean([sq(u[i], up[i]) for i in range(n)])) < 1e-12
    import numpy as np
    s = np.linalg.svd(np.array(u) - np.array(u).mean(0), compute_uv=False); p = s / s.sum()
    assert abs(st['emb_rank'] - math.exp(-(p * np.log(p)).sum())) < 1e-10
    with pytest.raises(ValueError, match='n >= 2'): embedding_stats(torch.ones(1, 3))


class _Collapsed(ToyMoCo):
    def encode(self, x): return torch.ones(len(x), 32) * 3 + 1e-7 * x.flatten(1)[:, :32]


def test_trainer_logs_collapse_stats_and_warns_on_a_collapsed_encoder(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        t = Trainer(_Collapsed(), ToyClips(n=32), train_preset('lesson', epochs=2, progress=False, out_dir=str(tmp_path))).fit()
    assert [r['collapsed'] for r in t.history] == [1.0, 1.0]
    assert sum('embeddings collapsed' in str(w.message) for w in caught) == 2
    rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert all('emb_std' in r and 'emb_uniformity' in r and 'emb_rank' in r for r in rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ok = Trainer(ToyMoCo(), ToyClips(n=32), train_preset('lesson', epochs=1, progress=False)).fit()
    assert ok.history[0]['collapsed'] == 0.0 and not any('collapsed' in str(w.message) for w in caught)
    assert ok.history[0]['emb_std'] > 0.01 / math.sqrt(32)
    off = Trainer(ToyMoCo(), ToyClips(n=32), train_preset('lesson', epochs=1, progress=False, collapse_batch=0)).fit()
    assert 'emb_std' not in off.history[0]


def test_collapse_check_leaves_training_unchanged():
    "The check reads no random state and changes no weights: the same run with and without it ends bit-identical."
    from skelnb.train import seed_everything
    runs = []
    for cb in (0, 16):
        seed_everything(0)
        t = Trainer(ToyMoCo(), ToyClips(n=32), train_preset('lesson', epochs=2, progress=False, collapse_batch=cb)).fit()
        runs.append(t.method.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
