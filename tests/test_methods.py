"""The method registry end to end: every method builds, trains a step, checkpoints, reloads, and runs under DDP."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from skelnb.methods.catalog import METHODS, build_method, load_method, one_step
from skelnb.train import method_train_config
from skelnb.cli import pretrain, parse_overrides
from skelnb.train import Trainer
from skelnb.checkpoint import latest_checkpoint, read_checkpoint, CheckpointError, atomic_save
from skelnb.data import SkeletonDataset, ensure_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def batch():
    ds = SkeletonDataset(ensure_synthetic_dataset(), 'train')
    return {'x': torch.stack([ds[i]['x'] for i in range(0, 720, 90)]), 'label': torch.arange(8) % 12}


@pytest.mark.parametrize('name', list(METHODS))
def test_every_method_steps_and_round_trips(name, batch, tmp_path):
    method = build_method(name, 'lesson')
    terms, _ = one_step(method, batch, epoch=100)
    assert math.isfinite(terms['loss'])
    atomic_save({'format': read_checkpoint.__globals__['CHECKPOINT_FORMAT'], 'method': method.method_name,
                 'method_version': method.method_version, 'model': method.state_dict(),
                 'method_config': __import__('dataclasses').asdict(method.config)}, tmp_path / 'c.pt')
    back = load_method(tmp_path / 'c.pt')
    assert type(back) is type(method) and back.config == method.config
    a, b = back.state_dict(), method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    f = back.encode(batch['x'][:2])
    assert f.ndim == 2 and f.shape[0] == 2 and torch.isfinite(f).all()


def test_load_method_refuses_foreign_and_corrupt_files(tmp_path):
    bad = tmp_path / 'bad.pt'; bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='corrupt'):
        load_method(bad)
    m = build_method('skeletonclr', 'lesson')
    ck = {'format': read_checkpoint.__globals__['CHECKPOINT_FORMAT'], 'method': 'simclr', 'method_version': 1,
          'model': m.state_dict(), 'method_config': None}
    atomic_save(ck, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match="'simclr'"):
        load_method(tmp_path / 'foreign.pt')


def test_parse_overrides():
    assert parse_overrides(['queue_size=64', 'stream=motion', 'milestones=[3, 4]', 'amp=false']) == \
        {'queue_size': 64, 'stream': 'motion', 'milestones': [3, 4], 'amp': False}
    with pytest.raises(ValueError, match='field=value'):
        parse_overrides(['queue_size'])


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match='fewer than batch_size'):
        pretrain('skeletonclr', 'lesson', 'synthetic', None, {'queue_size': 64},
                 dict(epochs=1, batch_size=64, progress=False), knn_every=0, max_clips=32)


@pytest.mark.parametrize('name', ['skeletonclr', 'aimclr', 'a2mc', 'skeattnclr', 'crossclr'])
def test_pretrain_cli_under_torchrun_two_cpu_processes(name, tmp_path):
    "DistributedDataParallel with gloo: two processes train the method; rank 0 writes one checkpoint of a 2-process run."
    out = tmp_path / 'run'
    args = ['--method', name, '--preset', 'lesson', '--out', str(out), '--epochs', '1', '--batch-size', '8',
            '--max-clips', '32', '--knn-every', '0', '--device', 'cpu', '--train-set', 'progress=false',
            '--set', 'bank_size=64' if name == 'a2mc' else 'queue_size=64']
    script = tmp_path / 'ddp.py'
    script.write_text(f'from skelnb.cli import pretrain_cli\npretrain_cli({args!r})\n')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    res = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = read_checkpoint(latest_checkpoint(out))
    assert ck['world_size'] == 2 and ck['epoch'] == 1 and ck['method'] == name
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert rows[-1]['samples'] == 32            # both processes' samples counted once each
    back = load_method(latest_checkpoint(out))
    assert torch.isfinite(back.encode(torch.randn(2, 3, 50, 25, 2))).all()
