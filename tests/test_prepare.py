"""skelnb.prepare: the prepared-folder contract, incremental writing, normalisations, dataset preparation and reports."""
import json
from pathlib import Path
import numpy as np
import pytest
from skelnb.prepare import *
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
