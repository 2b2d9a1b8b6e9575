"""skelnb.data: datasets over prepared folders, seeded loaders, labelled subsets, the synthetic actions."""
import hashlib, json, os, pickle, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from skelnb.data import (ArrayDataset, SkeletonDataset, EpochSampler, make_loader, derive_seed, labelled_subset,
                         subset_counts, save_subset, load_subset, labelled_subset_file, synthetic_clip, synthetic_subject,
                         make_synthetic_dataset, ensure_synthetic_dataset, default_dataset_dir, SYNTHETIC_ACTIONS,
                         SYNTHETIC_SPLITS, TWO_PERSON_ACTIONS, dataset_summary)
from skelnb.prepare import load_prepared, read_info
from skelnb.skeleton import NTU25, joint_to_bone

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    "A small synthetic dataset (one take per action and subject)."
    return make_synthetic_dataset(tmp_path_factory.mktemp('synth') / 'synthetic', samples_per_class_per_subject=1)


def sha(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- prepared folders and items
def test_folder_contract(synth):
    info = read_info(synth)
    assert info['layout'] == 'ntu25' and info['class_names'] == list(SYNTHETIC_ACTIONS)
    assert info['num_classes'] == len(SYNTHETIC_ACTIONS) and info['frames'] == 50 and info['persons'] == 2
    assert info['splits'] == {'train': 6 * 12, 'test': 4 * 12}
    data, labels, meta = load_prepared(synth, 'train')
    assert data.dtype == np.float32 and data.shape == (72, 3, 50, 25, 2)
    assert labels.dtype == np.int64 and labels.shape == (72,)
    assert set(meta) >= {'names', 'subject', 'view', 'length'} and all(len(v) == 72 for v in meta.values())
    assert info['generator']['samples_per_class_per_subject'] == 1


def test_item_shapes_and_dtypes(synth):
    ds = SkeletonDataset(synth, 'train')
    item = ds[3]
    assert set(item) == {'x', 'label', 'index', 'length'}
    assert item['x'].shape == (3, 50, 25, 2) and item['x'].dtype == torch.float32
    for k in ('label', 'index', 'length'): assert item[k].dtype == torch.int64 and item[k].dim() == 0
    assert int(item['index']) == 3 and int(item['length']) == 50 and int(item['label']) == 3
    batch = next(iter(make_loader(ds, batch_size=8)))
    assert batch['x'].shape == (8, 3, 50, 25, 2) and batch['label'].shape == (8,)


def test_memmap_is_used_and_pickles_lightly(synth):
    ds = SkeletonDataset(synth, 'train')
    assert isinstance(ds.data, np.memmap) and Path(ds.data.filename).resolve() == (synth / 'train_data.npy').resolve()
    blob = pickle.dumps(ds)
    assert len(blob) < ds.data.nbytes / 100, 'the data array must not travel with the pickled dataset'
    clone = pickle.loads(blob)
    assert torch.equal(clone[7]['x'], ds[7]['x']) and isinstance(clone.data, np.memmap)
    assert not isinstance(SkeletonDataset(synth, 'train', mmap=False).data, np.memmap)


def test_items_are_copies_not_views(synth):
    ds = SkeletonDataset(synth, 'train')
    x = ds[0]['x']; x.zero_()                     # must not write into (or fail on) the read-only map
    assert ds[0]['x'].abs().sum() > 0


def test_streams_and_subsets(synth):
    ds = SkeletonDataset(synth, 'test', stream='bone')
    raw = SkeletonDataset(synth, 'test')
    assert torch.allclose(ds[2]['x'], joint_to_bone(raw[2]['x']))
    sub = SkeletonDataset(synth, 'test', subset=[5, 1])
    assert len(sub) == 2 and int(sub[0]['index']) == 5 and sub.targets.tolist() == raw.targets[[5, 1]].tolist()
    with pytest.raises(ValueError, match='0..47'): SkeletonDataset(synth, 'test', subset=[48])
    with pytest.raises(KeyError, match="no split 'val'"): SkeletonDataset(synth, 'val')
    with pytest.raises(ValueError, match='stream must be'): SkeletonDataset(synth, 'test', stream='velocity')


def test_array_dataset_accepts_torch_and_masks():
    x = torch.randn(5, 3, 4, 25, 1)
    ds = ArrayDataset(x, [0, 1, 0, 1, 2], subset=np.array([True, False, True, False, True]))
    assert ds.indices.tolist() == [0, 2, 4] and torch.allclose(ds[1]['x'], x[2])
    with pytest.raises(ValueError, match='shape'): ArrayDataset(np.zeros((3, 4, 25, 1)), [0, 1, 2])


# ---------------------------------------------------------------- loaders
def _orders(loader, epochs):
    return [[i for b in loader for i in b['index'].tolist()] for _ in range(epochs)]


def test_loader_determinism_and_resume():
    ds = ArrayDataset(np.random.default_rng(0).normal(size=(37, 3, 4, 25, 1)).astype(np.float32), np.arange(37) % 5)
    a = _orders(make_loader(ds, 8, shuffle=True, seed=11), 3)
    assert a == _orders(make_loader(ds, 8, shuffle=True, seed=11), 3)
    assert a[0] != a[1] and sorted(a[0]) == list(range(37))
    assert a[0] != _orders(make_loader(ds, 8, shuffle=True, seed=12), 1)[0]
    resumed = make_loader(ds, 8, shuffle=True, seed=11); resumed.set_epoch(2)
    assert _orders(resumed, 1)[0] == a[2]
    assert _orders(make_loader(ds, 8), 1)[0] == list(range(37))


def test_sampler_shards_cover_the_epoch():
    shards = [list(EpochSampler(10, seed=1, rank=r, world_size=4)) for r in range(4)]
    assert all(len(s) == 3 for s in shards) and set(sum(shards, [])) == set(range(10))
    with pytest.raises(ValueError, match='rank'): EpochSampler(10, rank=4, world_size=4)


class _Draws(torch.utils.data.Dataset):
    def __len__(self): return 4
    def __getitem__(self, i):
        w = torch.utils.data.get_worker_info()
        return torch.tensor([w.id, np.random.randint(1 << 30), torch.randint(1 << 30, ()).item()])


def test_worker_seeds_differ_by_worker_and_epoch_and_repeat_by_seed():
    def run(seed):
        loader = make_loader(_Draws(), batch_size=2, seed=seed, num_workers=2)
        return [torch.cat(list(loader)).tolist() for _ in range(2)]
    r = run(5)
    def draws(epoch, worker): return next(row[1:] for row in r[epoch] if row[0] == worker)
    assert draws(0, 0) != draws(0, 1), 'two workers drew the same numbers'
    assert draws(0, 0) != draws(1, 0), 'a worker repeated its numbers in the next epoch (upstream bug)'
    assert r == run(5)


def test_upstream_worker_seed_quirk_repeats_epochs():
    loader = make_loader(_Draws(), batch_size=2, num_workers=2, upstream_worker_seeds=True)
    epochs = [sorted(torch.cat(list(loader)).tolist()) for _ in range(2)]
    assert epochs[0] == epochs[1]


def test_derive_seed():
    assert derive_seed(0, 'order', 1) == derive_seed(0, 'order', 1) != derive_seed(0, 'order', 2)
    assert 0 <= derive_seed(2**40, 'x') < 2**63


# ---------------------------------------------------------------- labelled subsets
@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.5])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_subsets_are_class_balanced(fraction, seed):
    labels = np.repeat(np.arange(6), [100, 55, 7, 30, 1, 64])
    idx = labelled_subset(labels, fraction, seed)
    counts = np.bincount(labels[idx], minlength=6)
    n = np.bincount(labels)
    assert counts.tolist() == [min(int(m), max(1, round(fraction * int(m)))) for m in n]
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    assert subset_counts(labels, fraction) == dict(enumerate(counts.tolist()))


def test_subsets_depend_on_seed_and_roundtrip(tmp_path):
    labels = np.arange(300) % 3
    a, b = labelled_subset(labels, 0.1, 0), labelled_subset(labels, 0.1, 1)
    assert a.tolist() != b.tolist() and np.array_equal(a, labelled_subset(labels, 0.1, 0))
    for suffix in ('.json', '.npy'):
        assert np.array_equal(load_subset(save_subset(a, tmp_path / f's{suffix}', fraction=0.1)), a)
    (tmp_path / 'bad.json').write_text('{"nope": 1}')
    with pytest.raises(ValueError, match='not a subset file'): load_subset(tmp_path / 'bad.json')


def test_subset_files_of_a_prepared_folder(synth):
    f = labelled_subset_file(synth, 0.1, seed=3)
    assert f == synth / 'subsets' / 'train_p0.1_seed3.json' and labelled_subset_file(synth, 0.1, seed=3) == f
    labels = load_prepared(synth, 'train')[1]
    assert np.bincount(labels[load_subset(f)]).tolist() == [1] * 12
    ds = SkeletonDataset(synth, 'train', subset=f)
    assert np.array_equal(ds.indices, load_subset(f))


# ---------------------------------------------------------------- synthetic actions
def test_generation_is_deterministic(tmp_path, synth):
    again = make_synthetic_dataset(tmp_path / 'again', samples_per_class_per_subject=1)
    for split in ('train', 'test'):
        for kind in ('data.npy', 'label.npy', 'meta.json'):
            assert sha(again / f'{split}_{kind}') == sha(synth / f'{split}_{kind}')
    other = make_synthetic_dataset(tmp_path / 'other', samples_per_class_per_subject=1, seed=1)
    assert sha(other / 'train_data.npy') != sha(synth / 'train_data.npy')


def test_clip_regenerates_dataset_items(synth):
    ds = SkeletonDataset(synth, 'test')
    i = 12 + 4                                                  # subject 8, action 4 (squat), take 0
    assert ds.names[i] == 'S001C001P008R001A005'
    assert np.array_equal(ds.clip(i), synthetic_clip('squat', 8, take=0))


def test_subject_split_is_disjoint(synth):
    tr, te = SkeletonDataset(synth, 'train'), SkeletonDataset(synth, 'test')
    assert set(tr.subjects) == set(SYNTHETIC_SPLITS['train']) and set(te.subjects) == set(SYNTHETIC_SPLITS['test'])
    assert not set(tr.subjects) & set(te.subjects)
    assert not set(tr.names) & set(te.names)
    assert np.bincount(tr.targets).tolist() == [6] * 12 and np.bincount(te.targets).tolist() == [4] * 12


def _bone_lengths(clip, person=0):
    return np.linalg.norm(joint_to_bone(clip)[..., person], axis=0)      # (T, V)


@pytest.mark.parametrize('action', SYNTHETIC_ACTIONS)
def test_limb_lengths_are_constant_within_a_clip(action):
    clean = _bone_lengths(synthetic_clip(action, 4, take=2, noise=False, glitches=False))
    assert np.abs(clean - clean[0]).max() < 1e-5
    noisy = _bone_lengths(synthetic_clip(action, 4, take=2, glitches=False))
    assert np.median(np.abs(noisy - clean)) < 0.02                       # noise of a few millimetres per joint


def test_limb_lengths_belong_to_the_subject():
    def lengths(subject, action, take): return _bone_lengths(synthetic_clip(action, subject, take=take, noise=False, glitches=False)).mean(0)
    a, b = lengths(2, 'wave', 0), lengths(2, 'kick', 3)
    assert np.allclose(a, b, atol=1e-5)                                  # same subject, other action and take
    assert np.abs(a - lengths(9, 'wave', 0)).max() > 0.005               # another body
    scale = np.asarray(synthetic_subject(2).bone_scale)
    rest = np.linalg.norm(np.asarray(NTU25.rest_pose) - np.asarray(NTU25.rest_pose)[list(NTU25.parents)], axis=1)
    assert np.allclose(a, rest * scale, atol=1e-5)


def test_clip_conventions():
    x = synthetic_clip('jump', 1)
    assert x.shape == (3, 50, 25, 2) and x.dtype == np.float32
    assert np.abs(x[:, :, NTU25.center, 0]).max() < 1e-6                 # centred on the spine shoulder
    head_above_feet = x[1, :, 3, 0] > x[1, :, [15, 19], 0].max(0)
    assert head_above_feet.mean() > 0.9                                  # y is up
    standing = synthetic_clip('wave', 1, noise=False, glitches=False)
    assert 1.2 < np.median(standing[1, :, 3, 0] - standing[1, :, [15, 19], 0].min(0)) < 1.8   # head to feet: metres
    for a in TWO_PERSON_ACTIONS: assert synthetic_clip(a, 1)[..., 1].any()
    assert not synthetic_clip('clap', 1, bystanders=False)[..., 1].any()
    raw, meta = synthetic_clip('bow', 6, frames=None, return_meta=True)
    assert raw.shape[1] == meta['length'] and 30 < meta['length'] < 400


def test_padded_variant(tmp_path):
    out = make_synthetic_dataset(tmp_path / 'raw', samples_per_class_per_subject=1, frames=300, resample=False)
    data, _, meta = load_prepared(out, 'test')
    lengths = np.asarray(meta['length'])
    assert data.shape[2] == 300 and lengths.min() < lengths.max() <= 300
    i = int(np.argmin(lengths))
    assert not data[i, :, lengths[i]:].any() and data[i, :, lengths[i] - 1].any()


def test_ensure_reuses_and_regenerates(tmp_path):
    d = ensure_synthetic_dataset(tmp_path / 'syn', samples_per_class_per_subject=1)
    stamp = (d / 'train_data.npy').stat().st_mtime_ns
    assert ensure_synthetic_dataset(d, samples_per_class_per_subject=1) == d
    assert (d / 'train_data.npy').stat().st_mtime_ns == stamp                       # reused
    ensure_synthetic_dataset(d, samples_per_class_per_subject=2)                      # other arguments: regenerated
    assert read_info(d)['splits']['train'] == 6 * 12 * 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.syn.') and not p.name.endswith('.lock')]


def test_concurrent_ensure_gives_one_complete_folder(tmp_path):
    code = ('import sys; from skelnb.data import ensure_synthetic_dataset; '
            'ensure_synthetic_dataset(sys.argv[1], samples_per_class_per_subject=1)')
    procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path / 'syn')]) for _ in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert read_info(tmp_path / 'syn')['splits'] == {'train': 72, 'test': 48}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.syn.lock', 'syn']


def test_default_dataset_dir(monkeypatch, tmp_path):
    monkeypatch.delenv('SKELNB_SYNTHETIC_DIR', raising=False)
    assert default_dataset_dir() == ROOT / 'data' / 'synthetic'          # a source checkout
    monkeypatch.setenv('SKELNB_SYNTHETIC_DIR', str(tmp_path / 'x'))
    assert default_dataset_dir() == tmp_path / 'x'


def test_bad_arguments():
    with pytest.raises(ValueError, match='unknown action'): synthetic_clip('dance', 1)
    with pytest.raises(ValueError, match='view must be'): synthetic_clip('wave', 1, view=7)
    with pytest.raises(ValueError, match='fraction must lie'): labelled_subset([0, 1], 1.5)


def test_summary_mentions_every_class(synth):
    text = dataset_summary(synth)
    assert all(a in text for a in SYNTHETIC_ACTIONS) and '(72, 3, 50, 25, 2)' in text


def test_spawned_workers_reopen_the_memory_map(synth):
    "With spawn, the dataset travels pickled (without its data) and each worker re-opens the file."
    ds = SkeletonDataset(synth, 'test')
    loader = make_loader(ds, batch_size=16, num_workers=1, multiprocessing_context='spawn')
    got = torch.cat([b['x'] for b in loader])
    assert torch.equal(got, torch.from_numpy(np.array(ds.data)))
