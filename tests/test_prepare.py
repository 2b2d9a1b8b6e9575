"""skelnb.prepare: the prepared-folder contract, incremental writing, normalisations, dataset preparation and reports."""
import json, pickle
from pathlib import Path
import numpy as np
import pytest
from skelnb.prepare import *
from skelnb.bench import bench_normalize
from skelnb.cli import prepare_cli
from skelnb.formats import write_ntu_skeleton, read_ntu_skeleton, SkeletonFormatError
from skelnb.skeleton import NTU25, KINECT_V1, MSR20


def _batch(N=3, T=40, V=25, M=2, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((N, 3, T, V, M), np.float32)
    for n in range(N):
        L = rng.integers(5, T + 1)
        x[n, :, :L, :, 0] = rng.normal(size=(3, L, V))
        if n % 2: x[n, :, :L // 2, :, 1] = rng.normal(size=(3, L // 2, V))
    return x


# ---------------------------------------------------------------- the prepared-folder contract
def test_contract(tmp_path):
    x = _batch(4)
    save_prepared(tmp_path, 'train', x, [0, 2, 1, 0], {'names': list('abcd'), 'length': [40] * 4, 'subject': [1, 2, 3, None]},
                  info=dict(name='toy', layout='ntu25', num_classes=3, class_names=['x', 'y', 'z'], protocol='p', source='s'))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ['info.json', 'train_data.npy', 'train_label.npy', 'train_meta.json']
    info = json.loads((tmp_path / 'info.json').read_text())
    assert list(info) == ['name', 'layout', 'num_classes', 'class_names', 'frames', 'persons', 'normalization', 'protocol', 'splits', 'source']
    assert (info['frames'], info['persons'], info['splits']) == (40, 2, {'train': 4})
    d = np.load(tmp_path / 'train_data.npy', mmap_mode='r')
    assert d.dtype == np.float32 and d.shape == x.shape
    assert np.load(tmp_path / 'train_label.npy').dtype == np.int64
    meta = json.loads((tmp_path / 'train_meta.json').read_text())
    assert set(meta) >= {'names', 'subject', 'view', 'length'} and meta['view'] == [None] * 4
    data, labels, meta2 = load_prepared(tmp_path, 'train')
    assert isinstance(data, np.memmap) and np.array_equal(data, x) and meta2 == meta
    assert read_info(tmp_path) == info


@pytest.mark.parametrize('kwargs, message', [
    (dict(data=np.zeros((2, 3, 4, 25))), 'must be (N, C, T, V, M)'),
    (dict(labels=[0]), 'labels must have shape (2,)'),
    (dict(labels=[0, -1]), '0-based'),
    (dict(meta={'names': ['a', 'b']}), "meta needs 'length'"),
    (dict(meta={'names': ['a'], 'length': [1, 1]}), "meta['names'] has 1 entries for 2 samples"),
    (dict(info=None), 'info needs'),
])
def test_save_prepared_rejects(tmp_path, kwargs, message):
    args = dict(data=np.zeros((2, 3, 4, 25, 1)), labels=[0, 1], meta={'names': ['a', 'b'], 'length': [4, 4]},
                info=dict(name='t', layout='ntu25', num_classes=2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
        save_prepared(tmp_path, 'train', **args)


def test_missing_folder_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a prepared dataset'): read_info(tmp_path)
    with pytest.raises(FileNotFoundError, match='train_data.npy not found'): load_prepared(tmp_path, 'train')


def test_writer_shrinks_and_aborts(tmp_path):
    w = PreparedWriter(tmp_path, 'test', 10, (3, 5, 25, 1))
    x = np.ones((4, 3, 5, 25, 1), np.float32)
    w.append(x)
    w.close([1, 1, 0, 0], {'names': list('abcd'), 'length': [5] * 4}, dict(name='t', layout='ntu25', num_classes=2))
    data, labels, _ = load_prepared(tmp_path, 'test')
    assert data.shape == (4, 3, 5, 25, 1) and (tmp_path / 'test_data.npy').stat().st_size == data.offset + x.nbytes
    w = PreparedWriter(tmp_path, 'val', 2, (3, 5, 25, 1))
    with pytest.raises(ValueError, match='more than the 2 samples'): w.append(np.ones((3, 3, 5, 25, 1)))
    w.abort()
    assert not any(p.name.startswith('.') for p in tmp_path.iterdir())
    assert not (tmp_path / 'val_data.npy').exists()


# ---------------------------------------------------------------- normalisations
def test_valid_lengths():
    x = _batch(5)
    ref = [max([t + 1 for t in range(x.shape[2]) if x[n, :, t].any()], default=0) for n in range(len(x))]
    assert valid_lengths(x).tolist() == ref


@pytest.mark.parametrize('layout', ['ntu25', 'kinect_v1', 'msr20'])
@pytest.mark.parametrize('upstream_sign', [False, True])
def test_normalize_aimclr_matches_reference(layout, upstream_sign):
    V = 25 if layout == 'ntu25' else 20
    x = _batch(4, V=V, seed=1)
    y = normalize_aimclr(x, 50, layout, upstream_sign=upstream_sign)
    for n in range(len(x)):
        np.testing.assert_allclose(y[n], normalize_aimclr_reference(x[n], 50, layout, upstream_sign), atol=1e-5)


def test_normalize_aimclr_properties():
    x = _batch(4, seed=2)
    y = normalize_aimclr(x, 64)
    assert y.shape == (4, 3, 64, 25, 2)
    np.testing.assert_allclose(y[:, :, :, NTU25.center], 0, atol=1e-6)
    u = y[:, :, :, NTU25.index('right_shoulder')] - y[:, :, :, NTU25.index('left_shoulder')]
    np.testing.assert_allclose(u[:, 2], 0, atol=1e-5)
    assert (u[:, 0] >= -1e-6).all()
    # invariant to a rotation of the whole clip about the vertical axis
    a = 0.7
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], np.float32)
    np.testing.assert_allclose(normalize_aimclr(np.einsum('ij,njtvm->nitvm', R, x), 64), y, atol=1e-4)


def test_pre_normalize_agcn_matches_reference():
    x = _batch(4, T=30, seed=3)
    x[0] = np.roll(x[0], 3, axis=1)                              # a clip whose first frames are empty
    y, lengths = pre_normalize_agcn(x)
    for n in range(len(x)):
        np.testing.assert_allclose(y[n], pre_normalize_agcn_reference(x[n]), atol=1e-4)
    assert lengths.tolist() == valid_lengths(x).tolist()
    assert y.any(axis=(1, 3))[:, :, 0].all()                     # empty frames of person 0 were filled


def test_bench_normalize_runs():
    r = bench_normalize(np.stack([_batch(1, T=60, seed=s)[0] for s in range(4)]), repeats=1)
    assert r['clips'] == 4 and r['skelnb_ms_per_clip'] > 0


# ---------------------------------------------------------------- preparation with bad files in the batch
def test_prepare_ntu_skips_and_reports(tmp_path):
    raw = tmp_path / 'raw'; raw.mkdir()
    rng = np.random.default_rng(0)
    good = ['S001C001P001R001A001', 'S001C002P002R001A002', 'S001C003P003R001A003', 'S018C001P001R001A001',
            'S001C001P001R001A061']
    for g in good: write_ntu_skeleton(raw / f'{g}.skeleton', rng.normal(size=(3, 8, 25, 1)).astype(np.float32))
    (raw / 'S001C001P004R001A004.skeleton').write_text('3\n1\n')            # truncated
    (raw / 'S001C001P005R001A005.skeleton').write_text('')                  # empty
    (raw / 'S001C001P006R001A006.skeleton').write_text('2\n0\n0\n')        # no body at all
    (raw / 'S1C1P7R1A7.skeleton').write_text('1\n0\n')                      # wrong name
    rep = prepare_ntu(raw, tmp_path / 'xview', 'xview')
    assert rep['splits'] == {'train': 2, 'test': 1}                         # NTU-120 setup / action left out
    reasons = {s['name'].split('.')[0]: s['reason'] for s in rep['skipped']}
    assert set(reasons) == {'S001C001P004R001A004', 'S001C001P005R001A005', 'S001C001P006R001A006', 'S1C1P7R1A7'}
    assert 'truncated' in reasons['S001C001P004R001A004'] and 'empty' in reasons['S001C001P005R001A005']
    assert 'no body' in reasons['S001C001P006R001A006'] and 'does not follow' in reasons['S1C1P7R1A7']
    assert json.loads((tmp_path / 'xview' / 'prepare_report.json').read_text())['splits'] == rep['splits']
    data, labels, meta = load_prepared(tmp_path / 'xview', 'train')
    assert meta['view'] == [2, 3] and labels.tolist() == [1, 2]
    assert np.array_equal(data[0, :, :8, :, :1], read_ntu_skeleton(raw / 'S001C002P002R001A002.skeleton', 1)[0])
    rep = prepare_ntu(raw, tmp_path / 'xset', 'xset120', normalization='aimclr', select='energy')
    assert read_info(tmp_path / 'xset')['frames'] == 50 and sum(rep['splits'].values()) == 5


def test_prepare_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match='--src'): prepare_dataset('ntu120', tmp_path)
    with pytest.raises(ValueError, match='does not belong'): prepare_dataset('ntu60', tmp_path, src=tmp_path, benchmark='xsub120')
    with pytest.raises(ValueError, match='--labels'): prepare_dataset('pku2', tmp_path, src=tmp_path)
    with pytest.raises(FileNotFoundError, match='ROSE Lab'): prepare_dataset('ntu60', tmp_path / 'o', src=tmp_path / 'none')


# ---------------------------------------------------------------- real small datasets
def _need(shared_data, name):
    d = shared_data / name
    if not d.is_dir(): pytest.skip(f'{d} not found')
    return d


def test_prepare_utd_real(shared_data, tmp_path):
    _need(shared_data, 'utd_kinect_v2')
    rep = prepare_utd(out=tmp_path)
    assert rep['splits'] == {'train': 150, 'test': 150} and rep['skipped'] == []
    data, labels, meta = load_prepared(tmp_path, 'train')
    assert data.shape == (150, 3, 50, 25, 1) and sorted(set(meta['subject'])) == [1, 3, 5]


def test_prepare_msr_real(shared_data, tmp_path):
    _need(shared_data, 'msr_action3d')
    rep = prepare_msr(out=tmp_path)
    assert rep['splits'] == {'train': 291, 'test': 275}
    assert [s['name'] for s in rep['skipped']] == ['a13_s09_e02']
    rep = prepare_msr(out=tmp_path / 'cvpr12', file_list='cvpr12', layout='msr20', persons=2)
    assert sum(rep['splits'].values()) == 557 and read_info(tmp_path / 'cvpr12')['persons'] == 2


def test_prepare_nw_ucla_real(shared_data, tmp_path):
    _need(shared_data, 'nw_ucla')
    rep = prepare_nw_ucla(out=tmp_path)
    assert rep['splits'] == {'train': 1020, 'test': 464}
    _, labels, meta = load_prepared(tmp_path, 'test')
    assert set(meta['view']) == {3} and sorted(set(labels.tolist())) == list(range(10))


# ---------------------------------------------------------------- upstream's rotation, epsilon included
def _upstream_parallel_skeleton(person):
    """Hand transcription of AimCLR's `feeder/NTUDatasets.py` `parallel_skeleton` + `_y_transmat` for one person
    (3, T, V): u = right - left shoulder with u_y = 0, theta = arccos(u_x / (|u| + 0.0001)) in degrees, negated when
    sum_t u_z >= 0, then per frame the matrix [[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]] of theta (radians)."""
    vec = person[:, :, 8] - person[:, :, 4]
    vec[1] = 0
    l2 = np.sqrt((vec ** 2).sum(0))
    thetas = np.degrees(np.arccos(vec[0] / (l2 + 0.0001)))
    if vec[2].sum() >= 0: thetas = -thetas
    out = np.empty_like(person)
    for t, th in enumerate(np.radians(thetas)):
        tm = np.array([[np.cos(th), 0, -np.sin(th)], [0, 1, 0], [np.sin(th), 0, np.cos(th)]])
        out[:, t] = tm @ person[:, t]
    return out


def test_upstream_sign_rotation_has_upstream_epsilon():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 7, 25, 2)) * 0.3
    x[:, :, :, 8] = x[:, :, :, 4] + rng.normal(size=(2, 3, 7, 2)) * 0.02    # narrow shoulders: the epsilon matters
    x[1, :, :, :, 1] = 0                                                     # an absent second person
    x[0, :, 3, 8, 0] = x[0, :, 3, 4, 0]; x[0, 1, 3, 8, 0] += 0.1            # a frame with |u| = 0 (upstream: 90 degrees)
    x = x.astype(np.float32).astype(np.float64)                             # the same inputs on both sides
    ref = np.stack([np.stack([_upstream_parallel_skeleton(x[n, ..., m]) for m in range(2)], -1) for n in range(2)])
    got = rotate_shoulders_to_x(x.astype(np.float32), 'ntu25', upstream_sign=True)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert np.abs(ref - rotate_shoulders_to_x(x.astype(np.float32), 'ntu25', upstream_sign=False)).max() > 1e-4
    # the per-clip reference applies the same formula to the resized clip
    clip = x[0].astype(np.float32)
    full = normalize_aimclr(clip[None], 7, 'ntu25', lengths=[7], upstream_sign=True)[0]
    np.testing.assert_allclose(full, normalize_aimclr_reference(clip, 7, 'ntu25', upstream_sign=True), atol=1e-5)
    centred = clip - clip[:, :, 20:21]
    np.testing.assert_allclose(full, np.stack([_upstream_parallel_skeleton(centred[..., m].astype(np.float64)) for m in range(2)], -1), atol=1e-5)


# ---------------------------------------------------------------- every kind of bad file skipped, every good one kept
def test_prepare_keeps_good_files_among_every_kind_of_bad_one(tmp_path):
    raw = tmp_path / 'raw'; raw.mkdir()
    rng = np.random.default_rng(0)
    good = {f'S001C00{c}P00{p}R001A00{a}': rng.normal(size=(3, 6, 25, 1)).astype(np.float32)
            for c, p, a in ((1, 1, 1), (2, 2, 2), (3, 3, 3), (2, 4, 4))}
    for name, clip in good.items(): write_ntu_skeleton(raw / f'{name}.skeleton', clip)
    text = (raw / 'S001C001P001R001A001.skeleton').read_text().splitlines()
    bad = {'S001C002P005R001A005': '\n'.join(text[:1] + ['9' * 20] + text[2:]),        # a 20-digit body count
           'S001C002P006R001A006': '\n'.join(text[:40]),                               # truncated
           'S001C002P007R001A007': '\n'.join(text[:5] + ['nan ' + text[5].split(' ', 1)[1]] + text[6:]),  # NaN
           'S001C002P008R001A008': '',                                                 # empty
           'S001C002P009R001A009': '\n'.join(['-3'] + text[1:]),                       # negative count
           'S001C003P010R001A010': '\n'.join(text[:3] + ['1' * 30] + text[4:])}         # a 30-digit joint count
    for name, t in bad.items(): (raw / f'{name}.skeleton').write_text(t)
    (raw / 'S001C003P011R001A011.skeleton').write_bytes(b'\xff\xfe' + bytes(range(256)))   # binary junk
    bad['S001C003P011R001A011'] = None
    rep = prepare_ntu(raw, tmp_path / 'out', 'xview')
    assert sum(rep['splits'].values()) == len(good)
    skipped = {s['name']: s['reason'] for s in rep['skipped']}
    assert set(skipped) == set(bad)
    for name, reason in skipped.items(): assert f'{name}.skeleton' in reason
    assert 'line 2' in skipped['S001C002P005R001A005'] and 'line 4' in skipped['S001C003P010R001A010']
    assert 'line 6' in skipped['S001C002P007R001A007'] and "'nan'" in skipped['S001C002P007R001A007']
    names = load_prepared(tmp_path / 'out', 'train')[2]['names'] + load_prepared(tmp_path / 'out', 'test')[2]['names']
    assert sorted(names) == sorted(good)
    for split in ('train', 'test'):
        data, _, meta = load_prepared(tmp_path / 'out', split)
        for d, n in zip(data, meta['names']): assert np.array_equal(d[:, :6, :, :1], good[n])


class _LoaderBug(Exception): pass

def test_prepare_samples_survives_any_loader_exception(tmp_path):
    clip = np.random.default_rng(1).normal(size=(3, 5, 25, 1)).astype(np.float32)
    def load(s):
        kind = s['kind']
        if kind == 'good': return clip
        if kind == 'nan': c = clip.copy(); c[0, 1, 2] = np.nan; return c
        if kind == 'shape': return clip[:2]
        if kind == 'joints': return clip[:, :, :20]
        if kind == 'none': return None
        raise {'key': KeyError('x'), 'index': IndexError('y'), 'runtime': RuntimeError('z'), 'overflow': OverflowError('w'),
               'memory': MemoryError(), 'custom': _LoaderBug('q'), 'os': OSError('disk')}[kind]
    kinds = ['good', 'nan', 'shape', 'joints', 'none', 'key', 'index', 'runtime', 'overflow', 'memory', 'custom', 'os', 'good']
    samples = {'train': [{'name': f'{k}{i}', 'label': 0, 'kind': k, 'path': f'/x/{k}{i}.bin'} for i, k in enumerate(kinds)]}
    rep = prepare_samples(tmp_path, samples, load, dict(name='t', layout='ntu25', num_classes=1), frames=5, persons=1)
    assert rep['splits'] == {'train': 2}
    skipped = {s['name']: s for s in rep['skipped']}
    assert set(skipped) == {f'{k}{i}' for i, k in enumerate(kinds) if k != 'good'}
    assert 'RuntimeError' in skipped['runtime7']['reason'] and '/x/runtime7.bin' in skipped['runtime7']['reason']
    assert '_LoaderBug' in skipped['custom10']['reason'] and 'non-finite' in skipped['nan1']['reason']
    assert all(s['split'] == 'train' and s['path'] for s in skipped.values())
    np.testing.assert_array_equal(load_prepared(tmp_path, 'train')[0][:, :, :5], np.stack([clip, clip]))
    def interrupted(s): raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): prepare_samples(tmp_path / 'k', samples, interrupted, dict(name='t', layout='ntu25', num_classes=1))
    assert not list((tmp_path / 'k').glob('*.npy')) and not list((tmp_path / 'k').glob('.*tmp'))


# ---------------------------------------------------------------- damaged prepared folders
def test_load_prepared_names_the_damaged_file(tmp_path):
    x = _batch(3, T=6)
    save_prepared(tmp_path, 'train', x, [0, 1, 1], {'names': list('abc'), 'length': [6] * 3}, info=dict(name='t', layout='ntu25', num_classes=2))
    d, orig = tmp_path, {f: (tmp_path / f).read_bytes() for f in ('train_data.npy', 'train_label.npy', 'train_meta.json')}
    def damaged(fname, data, message, **kw):
        (d / fname).write_bytes(data)
        with pytest.raises(SkeletonFormatError, match=message) as e: load_prepared(d, 'train', **kw)
        assert fname in str(e.value)
        (d / fname).write_bytes(orig[fname])
    def shape(new):   # the same header with another shape, padding shortened to keep its length
        h = orig['train_data.npy'].replace(b'(3, 3, 6, 25, 2)', new, 1)
        k = len(new) - 16
        return h.replace(b' ' * k + b'\n', b'\n', 1) if k > 0 else h.replace(b' \n', b' ' * (1 - k) + b'\n', 1)
    damaged('train_data.npy', shape(b'(3333333333333333333, 3, 6, 25, 2)'), 'header announces')       # no giant allocation
    damaged('train_data.npy', shape(b'(9, 3, 6, 25, 2)'), 'header announces', mmap=False)
    damaged('train_data.npy', shape(b'(3, 3, 6, 25)'), r'expected a \(N, C, T, V, M\) array')
    damaged('train_data.npy', orig['train_data.npy'][:-4], 'header announces')
    damaged('train_data.npy', b'', 'not a valid .npy')
    nan = np.load(d / 'train_data.npy'); nan[2, 0, 1, 3, 0] = np.inf; np.save(d / 'x.npy', nan)
    damaged('train_data.npy', (d / 'x.npy').read_bytes(), 'sample 2 holds non-finite')
    damaged('train_label.npy', orig['train_label.npy'].replace(b"'<i8'", b"'<f8'"), "kind 'iu'")
    np.save(d / 'x.npy', np.array([0, 1, 5])); damaged('train_label.npy', (d / 'x.npy').read_bytes(), 'not below num_classes=2')
    np.save(d / 'x.npy', np.array([0, 1])); damaged('train_label.npy', (d / 'x.npy').read_bytes(), '2 labels for the 3 samples')
    damaged('train_meta.json', orig['train_meta.json'][:-3], 'not valid JSON')
    damaged('train_meta.json', b'{"names": ["a"], "length": [6, 6, 6]}', "'names' has 1 entries for 3 samples")
    nan = np.load(d / 'train_data.npy'); nan[0, 0, 0, 0, 0] = np.nan; np.save(d / 'x.npy', nan)
    (d / 'train_data.npy').write_bytes((d / 'x.npy').read_bytes())
    assert load_prepared(d, 'train', check_values=False)[0].shape == x.shape             # the scan can be turned off


# ---------------------------------------------------------------- 2-D keypoints, landmarks and the centre-and-scale normalisation
from skelnb.skeleton import COCO17, get_layout
from skelnb.formats import write_pyskl, read_npy_clip

REST2D = np.asarray(COCO17.rest_pose)[:, :2] * [1, -1]              # a standing person, y down as in images (metres)
TORSO = np.linalg.norm(REST2D[[5, 6]].mean(0) - REST2D[[11, 12]].mean(0))


def _person2d(T, scale=150.0, at=(320.0, 240.0), seed=0):
    "(2, T, 17, 1) pixels: the rest pose, `scale` pixels per metre, at `at`, swaying sideways."
    sway = 8 * np.sin(np.linspace(0, 2, T) + seed)
    xy = (scale * REST2D + at)[None] + np.stack([sway, 0 * sway], -1)[:, None]            # (T, 17, 2)
    return xy.transpose(2, 0, 1)[..., None].astype(np.float32)


def test_center_scale_by_hand():
    x = np.zeros((2, 2, 9, 17, 1), np.float32)
    x[0, :, :9] = _person2d(9)
    x[1, :, :6] = _person2d(6, scale=40, at=(50, 400), seed=1)
    y = normalize_center_scale(x, 12, 'coco17')
    assert y.shape == (2, 2, 12, 17, 1)
    origin = y[:, :, :, [5, 6]].mean(3)                                  # COCO's origin: the shoulders' midpoint
    np.testing.assert_allclose(origin, 0, atol=1e-5)
    torso = np.linalg.norm(origin - y[:, :, :, [11, 12]].mean(3), axis=1)
    np.testing.assert_allclose(torso, 1, atol=1e-5)                      # a torso length is the unit
    # one pose at two scales and places is the same after normalisation (the sway is a few pixels either way)
    still = np.zeros((2, 2, 4, 17, 1), np.float32)
    still[0] = (150 * REST2D + [320, 240]).T[:, None, :, None]; still[1] = (40 * REST2D + [50, 400]).T[:, None, :, None]
    ys = normalize_center_scale(still, 4, 'coco17')
    np.testing.assert_allclose(ys[0], ys[1], atol=1e-5)
    np.testing.assert_allclose(ys[0, :, 0, :, 0].T, (REST2D - REST2D[[5, 6]].mean(0)) / TORSO, atol=1e-5)


def test_center_scale_keeps_missing_joints_missing():
    x = _person2d(6)[None].copy()
    x[0, :, 3, 9] = 0                                                     # left wrist lost in frame 3 (reported at 0, 0)
    x[0, :, :, 5] = 0; x[0, :, 2, 5] = _person2d(6)[:, 2, 5]              # left shoulder seen in frame 2 only
    y = normalize_center_scale(x, 6, 'coco17')                            # same length: frames map one to one
    assert not y[0, :, 3, 9].any() and y[0, :, [0, 1, 2, 4, 5], 9].all()
    assert not y[0, :, :, 5][:, [0, 1, 3, 4, 5]].any()
    # the person only sways sideways, so every centred frame is the same pose; in the frames without the left shoulder
    # the right one stands in for the origin, moved by its offset to the shoulders' midpoint measured in frame 2
    for t in range(6):
        seen = y[0, :, t].any(0)[:, 0]
        np.testing.assert_allclose(y[0, :, t, seen], y[0, :, 2, seen], atol=1e-5)
        np.testing.assert_allclose(y[0, :, t, 6, 0], (REST2D[6] - REST2D[[5, 6]].mean(0)) / TORSO, atol=1e-5)
    up = resize_time(x, [6], 11, present=x.any(1))                       # resizing: never halfway to the image corner
    lost = ~up[0].any(0)[:, 9, 0]
    assert lost.any() and (np.abs(up[0, 0, ~lost, 9, 0] - x[0, 0, 0, 9, 0]) < 60).all()
    near = up[0, 0, :, 9, 0]
    assert ((near == 0) | (near > 200)).all()                            # a pixel x of the wrist, or missing: no blend with 0


def test_torso_scale_fallback_and_linearity():
    x = normalize_center_scale(_person2d(5)[None], 5, 'coco17')
    np.testing.assert_allclose(torso_scale(x, 'coco17'), [1.0], atol=1e-5)
    headless = x.copy(); headless[:, :, :, [11, 12]] = 0                  # no hips: the RMS distance from the origin
    rms = np.sqrt((headless ** 2).sum() / headless.any(1).sum())
    np.testing.assert_allclose(torso_scale(headless, 'coco17'), [rms], rtol=1e-5)
    assert torso_scale(np.zeros((1, 2, 3, 17, 1)), 'coco17').tolist() == [1.0]


def test_rotations_refuse_2d_naming_normalisation_and_layout():
    x = _person2d(5)[None]
    with pytest.raises(ValueError, match=r"normalization 'aimclr' rotates .*\(layout 'coco17'\) have C = 2"): normalize_aimclr(x, 5, 'coco17')
    with pytest.raises(ValueError, match=r"normalization 'agcn' rotates .*\(layout 'coco17'\) have C = 2"): pre_normalize_agcn(x, 'coco17')
    with pytest.raises(ValueError, match="'center_scale'"): normalize_batch([x[0]], 'aimclr', 5, 'coco17')
    y = normalize_aimclr(x, 5, 'coco17', y_rotation=False)               # centring alone works in 2-D
    np.testing.assert_allclose(y[:, :, :, [5, 6]].mean(3), 0, atol=1e-4)


def test_landmark_normalisations_on_coco_and_mediapipe_3d():
    rng = np.random.default_rng(4)
    for name in ('coco17', 'mediapipe33', 'openpose25'):
        L = get_layout(name)
        x = rng.normal(size=(2, 3, 7, L.num_joints, 1)).astype(np.float32)
        y = normalize_aimclr(x, 7, name, lengths=[7, 7])
        np.testing.assert_allclose(y[:, :, :, list(L.landmark('origin'))].mean(3), 0, atol=1e-5)
        u = y[:, :, :, list(L.landmark('right_shoulder'))].mean(3) - y[:, :, :, list(L.landmark('left_shoulder'))].mean(3)
        np.testing.assert_allclose(u[:, 2], 0, atol=1e-5)
        for n in range(2):
            np.testing.assert_allclose(y[n], normalize_aimclr_reference(x[n], 7, name), atol=1e-5)
            np.testing.assert_allclose(pre_normalize_agcn(x, name)[0][n], pre_normalize_agcn_reference(x[n], name), atol=1e-4)


# ---------------------------------------------------------------- pyskl pickles
def _write_pose_pickle(path, n=6, split=None, drop_scores=False):
    clips = [_person2d(10 + i, seed=i) for i in range(n)]
    scores = None if drop_scores else [np.full((10 + i, 17, 1), 0.5 + 0.05 * i, np.float32) for i in range(n)]
    names = [f'S001C00{1 + i % 3}P00{1 + i}R001A00{1 + i % 2}' for i in range(n)]
    split = split or {'xsub_train': names[:4], 'xsub_val': names[4:]}
    return write_pyskl(path, clips, names, [i % 2 for i in range(n)], split, scores), clips, scores, names


def test_prepare_pyskl_2d_with_score_channel(tmp_path):
    p, clips, scores, names = _write_pose_pickle(tmp_path / 'pose.pkl')
    rep = prepare_pyskl(p, tmp_path / 'out', 'coco17', split='xsub_train=train,xsub_val=test', frames=10)
    assert rep['splits'] == {'train': 4, 'test': 2} and rep['skipped'] == []
    info = read_info(tmp_path / 'out')
    assert info['layout'] == 'coco17' and info['channels'] == ['x', 'y', 'score'] and info['persons'] == 1
    assert info['num_classes'] == 2 and info['normalization'].startswith('center_scale') and info['frames'] == 10
    data, labels, meta = load_prepared(tmp_path / 'out', 'train')
    assert data.shape == (4, 3, 10, 17, 1) and labels.tolist() == [0, 1, 0, 1] and meta['names'] == names[:4]
    assert meta['subject'] == [1, 2, 3, 4] and meta['view'] == [1, 2, 3, 1]          # from the NTU-style names
    np.testing.assert_allclose(data[0, 2], 0.5, atol=1e-6)                             # the score, resized with its joints
    np.testing.assert_allclose(data[:, :2], normalize_center_scale(np.stack([c[:, :10] for c in clips[:4]]), 10, 'coco17'), atol=1e-5)
    # weight: coordinates times the score; drop: coordinates only
    prepare_pyskl(p, tmp_path / 'w', 'coco17', split='xsub_train=train', frames=10, score='weight')
    prepare_pyskl(p, tmp_path / 'd', 'coco17', split='xsub_train=train', frames=10, score='drop')
    w, d = load_prepared(tmp_path / 'w', 'train')[0], load_prepared(tmp_path / 'd', 'train')[0]
    np.testing.assert_allclose(w, data[:, :2] * data[:, 2:], atol=1e-6)
    np.testing.assert_allclose(d, data[:, :2], atol=1e-6)
    assert read_info(tmp_path / 'w')['channels'] == ['x', 'y'] and sorted(read_info(tmp_path / 'd')['splits']) == ['train']


def test_prepare_pyskl_3d_and_defaults(tmp_path):
    g = np.random.default_rng(5)
    clips = [g.normal(size=(3, 8, 25, 2)).astype(np.float32) for _ in range(3)]
    clips[2][..., 1] = 0                                                  # a one-person clip
    write_pyskl(tmp_path / 'ntu.pkl', clips, ['a', 'b', 'c'], [2, 0, 1], {})   # no splits: everything is 'train'
    rep = prepare_pyskl(tmp_path / 'ntu.pkl', tmp_path / 'out', 'ntu25')
    info = read_info(tmp_path / 'out')
    assert rep['splits'] == {'train': 3} and info['channels'] == ['x', 'y', 'z'] and info['persons'] == 2
    assert info['normalization'].startswith('aimclr') and info['num_classes'] == 3 and info['frames'] == 50
    np.testing.assert_allclose(load_prepared(tmp_path / 'out', 'train')[0], normalize_aimclr(np.stack(clips), 50, 'ntu25'), atol=1e-5)


def test_prepare_pyskl_skips_and_reports_bad_samples(tmp_path):
    p, clips, scores, names = _write_pose_pickle(tmp_path / 'pose.pkl', n=7)
    obj = pickle.loads(p.read_bytes())
    a = obj['annotations']
    a[1]['keypoint'] = np.concatenate([a[1]['keypoint'], a[1]['keypoint'][:, :, :1]], 2)   # 18 joints
    a[1]['keypoint_score'] = np.concatenate([a[1]['keypoint_score'], a[1]['keypoint_score'][:, :, :1]], 2)
    a[2]['keypoint'][0, 4, 3, 1] = np.inf
    del a[3]['keypoint_score']
    a[5]['label'] = -1
    a[6]['keypoint'] = a[6]['keypoint'][..., :1]                          # C = 1
    obj['split']['xsub_val'].append('nobody')
    p.write_bytes(pickle.dumps(obj))
    rep = prepare_pyskl(p, tmp_path / 'out', 'coco17', split='xsub_train=train,xsub_val=test', frames=8)
    assert rep['splits'] == {'train': 1, 'test': 1}
    why = {s['name']: s['reason'] for s in rep['skipped']}
    assert set(why) == {names[1], names[2], names[3], names[5], names[6], 'nobody'}
    for n, r in why.items(): assert str(p) in r and (n in r), r                         # the file and the sample
    assert "'keypoint' (1, 11, 18, 2) has 18 joints, layout 'coco17' has 17" in why[names[1]]
    assert "'keypoint' holds a non-finite value (NaN, inf or beyond float32) at person 0, frame 4, joint 3" in why[names[2]]
    assert "no 'keypoint_score' (the first annotation has one)" in why[names[3]]
    assert "'label' must be a non-negative integer below 100000, got -1" in why[names[5]] and 'has C = 1 values per joint' in why[names[6]]
    assert "the split 'xsub_val' lists 'nobody', which no annotation has" in why['nobody']
    assert json.loads((tmp_path / 'out' / 'prepare_report.json').read_text())['skipped'] == rep['skipped']


@pytest.mark.parametrize('payload, kw, message', [
    (b'', {}, 'the file is empty (0 bytes)'),
    (pickle.dumps({'split': {}, 'annotations': []}), {}, 'the pickle holds no annotations'),
    (pickle.dumps({'annotations': [{'frame_dir': 'a', 'label': 0, 'keypoint': np.full((1, 2, 17, 2), np.nan)}]}), {}, 'no annotation is readable (1 bad)'),
    (None, {'split': 'xsub_tset=test'}, "the split 'xsub_tset' (from --split) is not in the pickle's 'split' field; its splits are ['xsub_train', 'xsub_val']"),
    (None, {'split': 'xsub_train'}, "--split: 'xsub_train' is not NAME=SPLIT"),
    (None, {'score': 'keep'}, "score must be one of ('channel', 'weight', 'drop')"),
    (None, {'normalization': 'none', 'score': 'weight'}, "score='weight' multiplies centred coordinates"),
    (pickle.dumps({'split': {'train': []}, 'annotations': [{'frame_dir': 'a', 'label': 0, 'keypoint': np.ones((1, 2, 17, 2))}]}), {},
     'x.pkl: no sample to prepare (none is listed)'),
])
def test_prepare_pyskl_whole_file_errors(tmp_path, payload, kw, message):
    p = tmp_path / 'x.pkl'
    if payload is None: _write_pose_pickle(p)
    else: p.write_bytes(payload)
    with pytest.raises(ValueError) as e: prepare_pyskl(p, tmp_path / 'out', 'coco17', **kw)
    assert message in str(e.value), str(e.value)
    assert not (tmp_path / 'out' / 'train_data.npy').exists()


# ---------------------------------------------------------------- folders of .npy clips
def _folder(tmp_path, table):
    d = tmp_path / 'clips'; (d / 'sub').mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(6)
    np.save(d / 'a.npy', g.normal(size=(7, 25, 3)).astype(np.float32))          # (T, V, C)
    np.save(d / 'b.npy', g.normal(size=(2, 5, 25, 3)))                          # (M, T, V, C), float64
    np.save(d / 'sub' / 'c.npy', g.normal(size=(9, 25, 3)).astype(np.float16))
    (d / 'labels.csv').write_text(table)
    return d


def test_prepare_folder(tmp_path):
    d = _folder(tmp_path, 'file,label,split,subject\na.npy,wave,train,1\nb.npy,hug,train,2\nsub/c.npy,wave,test,3\n')
    rep = prepare_folder(d, tmp_path / 'out', 'ntu25', frames=6, normalization='none')
    assert rep['splits'] == {'train': 2, 'test': 1} and rep['skipped'] == []
    info = read_info(tmp_path / 'out')
    assert info['class_names'] == ['hug', 'wave'] and info['persons'] == 2 and info['channels'] == ['x', 'y', 'z']
    data, labels, meta = load_prepared(tmp_path / 'out', 'train')
    assert labels.tolist() == [1, 0] and meta['names'] == ['a.npy', 'b.npy'] and meta['subject'] == [1, 2]
    a, b = np.load(d / 'a.npy'), np.load(d / 'b.npy')
    np.testing.assert_array_equal(data[0, :, :, :, 0], a[:6].transpose(2, 0, 1))          # centre crop of 7 frames to 6
    np.testing.assert_allclose(data[1, :, :5], b.transpose(3, 1, 2, 0).astype(np.float32))
    assert not data[0, ..., 1].any() and not data[1, :, 5:].any()
    c = np.asarray(load_prepared(tmp_path / 'out', 'test')[0])
    np.testing.assert_array_equal(c[0, :, :, :, 0], np.load(d / 'sub' / 'c.npy')[1:7].astype(np.float32).transpose(2, 0, 1))


def test_prepare_folder_integer_labels_split_map_and_2d(tmp_path):
    d = tmp_path / 'two_d'; d.mkdir()
    for i in range(4): np.save(d / f'{i}.npy', _person2d(6 + i, seed=i).transpose(3, 1, 2, 0)[0])   # (T, V, 2)
    (d / 'labels.csv').write_text('split,file,label\nfit,0.npy,2\nfit,1.npy,0\nval,2.npy,2\nspare,3.npy,1\n')
    rep = prepare_folder(d, tmp_path / 'out', 'coco', split='fit=train,val=test', frames=6)
    info = read_info(tmp_path / 'out')
    assert rep['splits'] == {'train': 2, 'test': 1} and info['class_names'] == ['0', '1', '2'] and info['layout'] == 'coco17'
    assert info['channels'] == ['x', 'y'] and info['normalization'].startswith('center_scale') and info['persons'] == 1
    assert load_prepared(tmp_path / 'out', 'train')[1].tolist() == [2, 0]


def test_prepare_folder_skips_bad_rows_and_files(tmp_path):
    d = _folder(tmp_path, 'file,label,split\na.npy,wave,train\nb.npy,hug\n,wave,train\nmissing.npy,wave,train\n'
                          'kinect.npy,wave,train\nnan.npy,wave,train\ntwo_d.npy,wave,train\njunk.npy,wave,train\nsub/c.npy,wave,test\n')
    g = np.random.default_rng(1)
    np.save(d / 'kinect.npy', g.normal(size=(5, 20, 3)))
    x = g.normal(size=(5, 25, 3)); x[2, 7, 0] = np.nan; np.save(d / 'nan.npy', x)
    np.save(d / 'two_d.npy', g.normal(size=(5, 25, 2)))
    (d / 'junk.npy').write_bytes(b'\x93NUMPY junk')
    rep = prepare_folder(d, tmp_path / 'out', 'ntu25', frames=5)
    assert rep['splits'] == {'train': 1, 'test': 1}
    why = {s['name']: s['reason'] for s in rep['skipped']}
    labels = d / 'labels.csv'
    assert why['b.npy'] == f'{labels}, line 3: expected 3 fields (file, label, split), found 2'
    assert why['line 4'] == f"{labels}, line 4: field 'file' is empty"
    assert why['missing.npy'] == f"{labels}, line 5: field 'file': 'missing.npy' is not a file in {d}"
    assert why['kinect.npy'] == f"{d / 'kinect.npy'}: shape (5, 20, 3): 20 joints, layout 'ntu25' has 25"
    assert why['nan.npy'].startswith(f"{d / 'nan.npy'}: the clip holds a non-finite value") and 'frame 2, joint 7' in why['nan.npy']
    assert why['two_d.npy'] == f"{d / 'two_d.npy'}: C = 2 coordinates, the first clip has 3"
    assert why['junk.npy'].startswith(f"{d / 'junk.npy'}: not a valid .npy file")


@pytest.mark.parametrize('table, kw, error, message', [
    ('', {}, SkeletonFormatError, 'labels.csv, line 1: the file is empty'),
    ('name,class\na.npy,x\n', {}, SkeletonFormatError, 'line 1: the header must name the columns file and label'),
    ('file,label,split\na.npy,x,train\n', {'split': 'validation=test'}, SkeletonFormatError,
     "the split 'validation' (from --split) is not in the table's split column; its splits are ['train']"),
    ('file,label\na.npy,x\n', {'labels': 'nowhere.csv'}, FileNotFoundError, 'nowhere.csv not found'),
    ('file,label\n', {}, SkeletonFormatError, 'labels.csv: no sample to prepare (none is listed)'),
    ('file,label\n,x\n', {}, SkeletonFormatError, "no sample to prepare (1 skipped, the first: {d}/labels.csv, line 2: field 'file' is empty)"),
])
def test_prepare_folder_whole_file_errors(tmp_path, table, kw, error, message):
    d = _folder(tmp_path, table)
    with pytest.raises(error) as e: prepare_folder(d, tmp_path / 'out', 'ntu25', **kw)
    assert message.format(d=d) in str(e.value), str(e.value)
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------- the command line
def test_cli_pyskl_and_folder(tmp_path, capsys):
    p, *_ = _write_pose_pickle(tmp_path / 'pose.pkl')
    prepare_cli(['pyskl', str(p), str(tmp_path / 'a'), '--layout', 'coco17', '--split', 'xsub_train=train,xsub_val=test', '--frames', '8'])
    out = capsys.readouterr().out
    assert "pose: wrote {'train': 4, 'test': 2}" in out and "channels ['x', 'y', 'score']" in out and 'normalization center_scale' in out
    d = _folder(tmp_path, 'file,label\na.npy,0\nb.npy,1\n')
    prepare_cli(['folder', str(d), str(tmp_path / 'b'), '--layout', 'ntu25', '--labels', str(d / 'labels.csv'), '--persons', '1', '--name', 'mine'])
    info = read_info(tmp_path / 'b')
    assert (info['name'], info['persons'], info['splits']) == ('mine', 1, {'train': 2})
    assert 'mine: wrote' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['pyskl', '{tmp}/empty.pkl', '{tmp}/o', '--layout', 'coco17'], 'empty.pkl: the file is empty (0 bytes)'),
    (['pyskl', '{tmp}/pose.pkl', '{tmp}/o', '--layout', 'coco18'], "unknown layout 'coco18'; registered:"),
    (['pyskl', '{tmp}/pose.pkl', '{tmp}/o', '--layout', 'coco17', '--split', 'xsub_val=test,nope=train'], "the split 'nope' (from --split)"),
    (['folder', '{tmp}', '{tmp}/o', '--layout', 'ntu25'], 'labels.csv not found'),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    _write_pose_pickle(tmp_path / 'pose.pkl'); (tmp_path / 'empty.pkl').write_bytes(b'')
    with pytest.raises(SystemExit) as e: prepare_cli([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('skelnb-prepare: error: ') and message in err and err.count('\n') == 1, err


def test_cli_usage(capsys):
    with pytest.raises(SystemExit): prepare_cli(['pyskl', '-h'])
    out = capsys.readouterr().out
    assert 'ANNOTATIONS.pkl OUT' in out and '--layout' in out and '--score {channel,weight,drop}' in out
    with pytest.raises(SystemExit) as e: prepare_cli(['folder', 'DIR'])
    assert e.value.code == 2 and 'OUT' in capsys.readouterr().err


def test_own_data_paths_reproduce_the_utd_preparation(shared_data, tmp_path):
    "Real UTD clips written as a folder of .npy files and as a pyskl pickle prepare to the arrays `prepare_utd` writes."
    from skelnb.formats import read_utd_mat
    src = _need(shared_data, 'utd_kinect_v2') / 'skeleton'
    prepare_utd(src, tmp_path / 'utd', limit=12)
    ref = {s: load_prepared(tmp_path / 'utd', s) for s in ('train', 'test')}
    d = tmp_path / 'clips'; d.mkdir()
    rows, clips, names, labels, split = ['file,label,split'], [], [], [], {'train': [], 'test': []}
    for s, (_, lab, meta) in ref.items():
        for n, y in zip(meta['names'], lab.tolist()):
            clip = read_utd_mat(src / f'{n}_skel_K2.mat')[0]                    # (3, T, 25, 1)
            np.save(d / f'{n}.npy', clip[..., 0].transpose(1, 2, 0))            # (T, V, C)
            rows.append(f'{n}.npy,{y},{s}'); clips.append(clip); names.append(n); labels.append(y); split[s].append(n)
    (d / 'labels.csv').write_text('\n'.join(rows) + '\n')
    write_pyskl(tmp_path / 'utd.pkl', clips, names, labels, split)
    prepare_folder(d, tmp_path / 'folder', 'ntu25')
    prepare_pyskl(tmp_path / 'utd.pkl', tmp_path / 'pyskl', 'ntu25')
    for out in ('folder', 'pyskl'):
        info = read_info(tmp_path / out)
        assert (info['frames'], info['persons'], info['normalization'].split(':')[0]) == (50, 1, 'aimclr')
        for s, (data, lab, meta) in ref.items():
            got, glab, gmeta = load_prepared(tmp_path / out, s)
            order = [gmeta['names'].index(n if out == 'pyskl' else f'{n}.npy') for n in meta['names']]
            np.testing.assert_allclose(np.asarray(got)[order], data, atol=1e-5)
            assert glab[order].tolist() == lab.tolist()              # integer labels are class indices in both
