"""Seeded fuzzing of every reader: a mutated file gives a sane array or a clear error naming the file, never a hang.

Mutations: truncation, random byte flips, inserted bytes, deleted and duplicated lines, huge or negative numbers
(also in count lines), NaN/inf, empty files. Seeds are fixed, so every run tries the same files. The seed files are
written here with the project's writers (so the test runs anywhere); a second part starts from the real files in the
shared data folder and is skipped, with the reason, when that folder is absent.

The readers of your own data (`.npy` clips, `labels.csv`) are fuzzed like the others, and so are the two
preparations built on them, a pyskl pickle and a folder of clips: a damaged input must give a consistent prepared
folder (every written array finite, of the shape `info.json` announces) with the bad samples reported, or one clear
error naming the file.
"""
import json, re, signal, shutil, tarfile
from pathlib import Path
import numpy as np
import pytest
from skelnb.formats import *

N_MUTATIONS = 1000        # per format (synthetic seeds); the real-file part adds more when the data are present
CALL_BUDGET_S = 5.0       # a hang guard: a read that has not answered by then is stuck (or allocating a giant array)

NUMBER = re.compile(rb'-?\d+(?:\.\d+)?(?:[eE]-?\d+)?')
COUNT_LINE = re.compile(rb'(?m)^ *(-?\d+) *\r?$')
HUGE = [b'9' * 20, b'-' + b'9' * 20, b'1' + b'0' * 400, b'1e308', b'-1e309', b'3.5e38', b'99999999', b'-1', b'-7',
        b'2147483648', b'0', b'18446744073709551616']
NANS = [b'nan', b'inf', b'-inf', b'NaN', b'Infinity', b'-Infinity']
KINDS = ['truncate', 'flip', 'insert', 'delete_line', 'dup_line', 'huge', 'count', 'nan', 'empty']


def mutate(data: bytes, rng) -> tuple:
    "One random damage of `data`: (kind, damaged bytes)."
    kind = KINDS[int(rng.choice(len(KINDS), p=[.15, .15, .15, .1, .1, .1, .1, .1, .05]))]
    n = len(data)
    if kind == 'empty' or n == 0: return 'empty', b''
    if kind == 'truncate': return kind, data[:int(rng.integers(0, n))]
    b = bytearray(data)
    if kind == 'flip':
        for i in rng.integers(0, n, int(rng.integers(1, 5))): b[i] = int(rng.integers(0, 256))
        return kind, bytes(b)
    if kind == 'insert':
        pool = b'0123456789-+.eE \n\t\x00\xff{}[],"'
        i = int(rng.integers(0, n + 1))
        return kind, data[:i] + bytes(pool[j] for j in rng.integers(0, len(pool), int(rng.integers(1, 8)))) + data[i:]
    if kind in ('delete_line', 'dup_line'):
        lines = data.split(b'\n')
        i = int(rng.integers(0, len(lines)))
        if kind == 'delete_line': del lines[i]
        else: lines.insert(i, lines[i])
        return kind, b'\n'.join(lines)
    spans = (list(COUNT_LINE.finditer(data)) if kind == 'count' else []) or list(NUMBER.finditer(data))
    if not spans: return kind, data[::-1]
    m = spans[int(rng.integers(0, len(spans)))]
    pool = NANS if kind == 'nan' else HUGE
    return kind, data[:m.start()] + pool[int(rng.integers(0, len(pool)))] + data[m.end():]


def test_mutate_is_seeded_and_damages():
    a = [mutate(b'3\n1 2.5 -4\n7\n', np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    kinds = {mutate(b'3\n1 2.5 -4\n7\n', rng)[0] for _ in range(200)}
    assert kinds == set(KINDS)


class _Timeout(Exception): pass

def _alarm(*_): raise _Timeout()


def _finite(*arrays): return all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays)


def fuzz(name, seeds, read, suffix, tmp, n, seed=0, target=None):
    """Mutate the seeds `n` times; `read(path)` returns True for a sane result. Returns the unclear outcomes.
    The damaged bytes go to `target` when given (a file inside a folder the reader opens), else to a fresh file."""
    rng = np.random.default_rng(seed)
    unclear, counts = [], {'ok': 0, 'error': 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for k in range(n):
            kind, data = mutate(seeds[k % len(seeds)], rng)
            p = target or tmp / f'{name}_{k}{suffix}'
            p.write_bytes(data)
            signal.setitimer(signal.ITIMER_REAL, CALL_BUDGET_S)
            try:
                try: sane = read(p)
                finally: signal.setitimer(signal.ITIMER_REAL, 0)
                if sane: counts['ok'] += 1
                else: unclear.append((kind, p.name, 'a result that is not finite or has the wrong shape'))
            except _Timeout: unclear.append((kind, p.name, f'no answer within {CALL_BUDGET_S} s'))
            except SkeletonFormatError: counts['error'] += 1
            except ValueError as e:
                if p.name in str(e): counts['error'] += 1
                else: unclear.append((kind, p.name, f'{type(e).__name__} without the file name: {e}'))
            except Exception as e: unclear.append((kind, p.name, f'{type(e).__name__}: {e}'))
            if target is None: p.unlink()
    finally: signal.signal(signal.SIGALRM, old)
    assert counts['ok'] + counts['error'] + len(unclear) >= n
    return unclear, counts


# ---------------------------------------------------------------- readers and their sanity checks
def read_ntu(p):
    clip, meta = read_ntu_skeleton(p)
    return clip.shape[0] == 3 and clip.shape[2:] == (25, 2) and clip.shape[1] == meta['frames'] and _finite(clip)

def read_ntu_all(p):
    rec = parse_ntu_skeleton(p, num_joints=None)
    return rec.joints.shape[2] == 12 and len(rec.body_ids) == rec.body_counts.sum() and _finite(rec.joints, rec.body_info)

def read_ntu_ref(p):
    clip = read_ntu_skeleton_lines(p)
    return clip.shape[0] == 3 and clip.shape[2:] == (25, 2) and _finite(clip)

def read_pku(p):
    x = read_pku_sequence(p); return x.shape[0] == 3 and x.shape[2:] == (25, 2) and _finite(x)

def read_pku_lab(p):
    t = read_pku_labels(p); return t.ndim == 2 and t.shape[1] == 4 and t.dtype == np.int64

def read_utd(p):
    c, _ = read_utd_mat(p); return c.shape[0] == 3 and c.shape[2:] == (25, 1) and _finite(c)

def read_ucla(p):
    c, _ = read_nw_ucla_json(p); return c.shape[0] == 3 and c.shape[2:] == (20, 1) and _finite(c)

def read_msr(p):
    c, _ = read_msr_text(p); return c.shape[0] == 3 and c.shape[2:] == (20, 1) and _finite(c)

def read_pyskl_all(p):
    obj = read_pyskl(p)
    clips = [pyskl_to_clip(a)[0] for a in obj['annotations']]
    return all(c.ndim == 4 and _finite(c) for c in clips)


def _rng(): return np.random.default_rng(1)

def seeds_ntu(tmp):
    g, out = _rng(), []
    for T, M in ((3, 1), (5, 2), (4, 2)):
        c = g.normal(size=(3, T, 25, M)).astype(np.float32); c[:, 1, :, -1] = 0
        out.append(write_ntu_skeleton(tmp / 's.skeleton', c).read_bytes())
    rec = NTUSkeletonFile(2, np.array([1, 2]), np.array([72057594037944738, 7, 72057594037944738], np.uint64),
                          g.normal(size=(3, 9)), g.normal(size=(3, 25, 12)).astype(np.float32))
    out.append(write_ntu_skeleton(tmp / 's.skeleton', rec).read_bytes())
    return out

def seeds_pku(tmp):
    return ['\n'.join(' '.join('%.6f' % v for v in r) for r in _rng().normal(size=(T, 150))).encode() + b'\n' for T in (6, 11)]

def seeds_pku_labels(tmp): return [b'3,0,4,1\n7,5,11,2\n', b'51,10,30,1\r\n2,31,39,2\r\n']

def seeds_utd(tmp):
    from scipy.io import savemat
    out = []
    for T in (4, 7):
        savemat(tmp / 'w.mat', {'S_K2': {'world': _rng().normal(size=(25, 3, T))}}); out.append((tmp / 'w.mat').read_bytes())
    return out

def seeds_ucla(tmp):
    g = _rng()
    return [json.dumps({'file_name': 'a01_s01_e00_v01', 'skeletons': g.normal(size=(T, 20, 3)).round(6).tolist(), 'label': 3}).encode()
            for T in (3, 5)]

def seeds_msr(tmp):
    return ['\n'.join(' '.join('%.5f' % v for v in r) for r in _rng().normal(size=(20 * T, 4))).encode() for T in (2, 3)]

def seeds_pyskl(tmp):
    g = _rng()
    write_pyskl(tmp / 'a.pkl', [g.normal(size=(3, 5, 25, 2)), g.normal(size=(2, 4, 17, 1))], ['x', 'y'], [0, 1],
                {'train': ['x'], 'test': ['y']})
    write_pyskl(tmp / 'b.pkl', [g.normal(size=(2, 3, 17, 1))], ['z'], [4], scores=[g.random(size=(3, 17, 1))])
    return [(tmp / 'a.pkl').read_bytes(), (tmp / 'b.pkl').read_bytes()]

def read_npy(p):
    c, meta = read_npy_clip(p)
    return c.ndim == 4 and c.shape[0] in (2, 3) and c.shape[0] == meta['coords'] and _finite(c)

def read_labels(p):
    rows, problems = read_labels_csv(p)
    return all(r['file'] and r['label'] and isinstance(r['line'], int) for r in rows) and all(q['reason'] for q in problems)

def seeds_npy(tmp):
    g, out = _rng(), []
    for a in (g.normal(size=(6, 17, 2)).astype(np.float32), g.normal(size=(2, 4, 25, 3)), (g.random((5, 33, 2)) * 600).astype(np.int16)):
        np.save(tmp / 'c.npy', a); out.append((tmp / 'c.npy').read_bytes())
    return out

def seeds_labels(tmp):
    return [b'file,label,split,subject\nwave/0.npy,wave,train,1\nwave/1.npy,wave,test,2\n"a,b.npy",clap,train,P3\n',
            b'label,file\r\n# comment\r\n0,x.npy\r\n12,y.npy\r\n\r\n3,z.npy\r\n']

FORMATS = {  # name: (seed maker, reader, suffix)
    'ntu': (seeds_ntu, read_ntu, '.skeleton'),
    'ntu_all_fields': (seeds_ntu, read_ntu_all, '.skeleton'),
    'ntu_reference': (seeds_ntu, read_ntu_ref, '.skeleton'),
    'pku_sequence': (seeds_pku, read_pku, '.txt'),
    'pku_labels': (seeds_pku_labels, read_pku_lab, '.txt'),
    'utd_mat': (seeds_utd, read_utd, '.mat'),
    'nw_ucla_json': (seeds_ucla, read_ucla, '.json'),
    'msr_text': (seeds_msr, read_msr, '.txt'),
    'pyskl_pickle': (seeds_pyskl, read_pyskl_all, '.pkl'),
    'npy_clip': (seeds_npy, read_npy, '.npy'),
    'labels_csv': (seeds_labels, read_labels, '.csv'),
}


@pytest.mark.parametrize('name', list(FORMATS))
def test_fuzz_reader(name, tmp_path):
    make, read, suffix = FORMATS[name]
    seeds = make(tmp_path)
    for s in seeds:                                          # the seeds themselves are good files
        (tmp_path / f'seed{suffix}').write_bytes(s); assert read(tmp_path / f'seed{suffix}')
    unclear, counts = fuzz(name, seeds, read, suffix, tmp_path, N_MUTATIONS)
    assert not unclear, f'{name}: {len(unclear)} unclear outcomes of {N_MUTATIONS}, e.g. {unclear[:5]}'
    assert counts['ok'] > 0 and counts['error'] > 0          # the mutations both break files and leave some readable


# ---------------------------------------------------------------- prepared folders
PREPARED_FILES = ('train_data.npy', 'train_label.npy', 'train_meta.json', 'info.json')

def test_fuzz_prepared(tmp_path):
    from skelnb.prepare import save_prepared, load_prepared
    src = tmp_path / 'src'
    save_prepared(src, 'train', _rng().normal(size=(3, 3, 6, 25, 2)), [0, 2, 1], {'names': list('abc'), 'length': [6, 6, 6]},
                  info=dict(name='toy', layout='ntu25', num_classes=3))
    work = tmp_path / 'work'; shutil.copytree(src, work)
    for mmap in (True, False): assert load_prepared(work, 'train', mmap=mmap)[0].shape == (3, 3, 6, 25, 2)
    total, ok = 0, 0
    for i, fname in enumerate(PREPARED_FILES):
        def read(p, mmap=bool(i % 2)):
            data, labels, meta = load_prepared(work, 'train', mmap=mmap)
            return (data.ndim == 5 and _finite(data) and labels.shape == (len(data),) and labels.min() >= 0
                    and len(meta['names']) == len(data))
        n = N_MUTATIONS // len(PREPARED_FILES) + 1
        # the damaged file replaces its namesake in the folder, so a clear error names that file
        unclear, counts = fuzz(fname, [(src / fname).read_bytes()], read, '', tmp_path, n, seed=i, target=work / fname)
        shutil.copy(src / fname, work / fname)
        assert not unclear, f'{fname}: {len(unclear)} unclear outcomes, e.g. {unclear[:5]}'
        total += n; ok += counts['ok']
    assert total >= N_MUTATIONS and ok > 0


# ---------------------------------------------------------------- preparing your own data: pyskl pickles and folders
N_PREPARE = 300           # per path: every mutation writes (and checks) a prepared folder


def _prepared_ok(out):
    "A prepared folder is consistent: every split's data finite, of the shape info.json announces, labels in range."
    from skelnb.prepare import read_info, load_prepared
    from skelnb.skeleton import get_layout
    info = read_info(out)
    V = get_layout(info['layout']).num_joints
    for split, n in info['splits'].items():
        data, labels, meta = load_prepared(out, split, mmap=False, check_values=False)
        if data.shape != (n, len(info['channels']), info['frames'], V, info['persons']) or not _finite(data): return False
        if n and not 0 <= labels.min() <= labels.max() < info['num_classes']: return False
        if len(meta['names']) != n: return False
    return True


def _preparer(tmp, prepare):
    "`read(path)` for the fuzzer: prepare into a fresh folder, check it, remove it."
    count = iter(range(10 ** 9))
    def read(p):
        out = tmp / f'prepared_{next(count)}'
        try:
            rep = prepare(p, out)
            return _prepared_ok(out) and sum(rep['splits'].values()) + len(rep['skipped']) > 0
        finally: shutil.rmtree(out, ignore_errors=True)
    return read


def _pose_pickles(tmp):
    "A 2-D COCO-17 pickle with scores and splits, and a 3-D NTU one without scores."
    from skelnb.viz import wave_clip
    g = _rng()
    clips2d = [(wave_clip(T=6 + i, M=1, layout='coco17', seed=i)[:2] * 300 + 200) for i in range(4)]
    write_pyskl(tmp / 'p2.pkl', clips2d, ['a', 'b', 'c', 'd'], [0, 1, 1, 0], {'train': ['a', 'b', 'c'], 'test': ['d', 'c']},
                [g.random((6 + i, 17, 1)) for i in range(4)])
    write_pyskl(tmp / 'p3.pkl', [g.normal(size=(3, 5, 25, 2)) for _ in range(3)], ['x', 'y', 'z'], [2, 0, 1],
                {'train': ['x', 'y'], 'test': ['z']})
    return (tmp / 'p2.pkl').read_bytes(), (tmp / 'p3.pkl').read_bytes()


@pytest.mark.parametrize('dims', [2, 3])
def test_fuzz_prepare_pyskl(tmp_path, dims):
    from skelnb.prepare import prepare_pyskl
    seed = _pose_pickles(tmp_path)[dims - 2]
    layout, kw = ('coco17', dict(split='train=train,test=test')) if dims == 2 else ('ntu25', dict(normalization='agcn', frames=8))
    read = _preparer(tmp_path, lambda p, out: prepare_pyskl(p, out, layout, **kw))
    (tmp_path / 'seed.pkl').write_bytes(seed); assert read(tmp_path / 'seed.pkl')
    unclear, counts = fuzz(f'pyskl_prepare_{dims}d', [seed], read, '.pkl', tmp_path, N_PREPARE, seed=dims)
    assert not unclear, f'{len(unclear)} unclear outcomes of {N_PREPARE}, e.g. {unclear[:5]}'
    assert counts['ok'] > 0 and counts['error'] > 0


@pytest.mark.parametrize('target', ['labels.csv', 'wave/1.npy'])
def test_fuzz_prepare_folder(tmp_path, target):
    from skelnb.prepare import prepare_folder
    d = tmp_path / 'clips'; (d / 'wave').mkdir(parents=True)
    g = _rng()
    for i in range(3): np.save(d / 'wave' / f'{i}.npy', g.normal(size=(5 + i, 25, 3)).astype(np.float32))
    np.save(d / 'pair.npy', g.normal(size=(2, 4, 25, 3)))
    (d / 'labels.csv').write_text('file,label,split\nwave/0.npy,wave,train\nwave/1.npy,wave,train\npair.npy,hug,train\nwave/2.npy,wave,test\n')
    read = _preparer(tmp_path, lambda p, out: prepare_folder(d, out, 'ntu25', frames=6))
    assert read(d / target)
    seed = (d / target).read_bytes()
    unclear, counts = fuzz(f'folder_{target}', [seed], read, '', tmp_path, N_PREPARE, seed=5, target=d / target)
    assert not unclear, f'{target}: {len(unclear)} unclear outcomes of {N_PREPARE}, e.g. {unclear[:5]}'
    assert counts['ok'] > 0


# ---------------------------------------------------------------- checkpoints
def _checkpoint_seed(tmp):
    import torch
    from skelnb.checkpoint import CHECKPOINT_FORMAT, atomic_save
    g = torch.Generator().manual_seed(0)
    atomic_save({'format': CHECKPOINT_FORMAT, 'method': 'skeletonclr', 'method_version': 1, 'epoch': 2, 'step': 8,
                 'model': {'w': torch.randn(4, 3, generator=g), 'b': torch.zeros(4)}, 'history': [{'loss': 1.5}]}, tmp / 'c.pt')
    return [(tmp / 'c.pt').read_bytes()]


def test_fuzz_training_checkpoint(tmp_path):
    import torch
    from skelnb.checkpoint import read_checkpoint
    torch.set_num_threads(1)
    unclear, counts = fuzz('ckpt', _checkpoint_seed(tmp_path), lambda p: isinstance(read_checkpoint(p), dict),
                           '.pt', tmp_path, N_MUTATIONS)
    assert not unclear, f'{len(unclear)} unclear outcomes, e.g. {unclear[:5]}'


def test_fuzz_upstream_checkpoint(tmp_path):
    import torch
    from skelnb.checkpoint import load_upstream_checkpoint
    torch.set_num_threads(1); torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))   # small: the file format is what is fuzzed
    torch.save({'state_dict': {'encoder_q.' + k: v for k, v in enc.state_dict().items()}}, tmp_path / 'u.pt')
    load_upstream_checkpoint(enc, tmp_path / 'u.pt')
    unclear, counts = fuzz('upstream', [(tmp_path / 'u.pt').read_bytes()],
                           lambda p: load_upstream_checkpoint(enc, p) is not None, '.pt', tmp_path, N_MUTATIONS)
    assert not unclear, f'{len(unclear)} unclear outcomes, e.g. {unclear[:5]}'


# ---------------------------------------------------------------- real files (when the shared data are present)
def _shared(name):
    try: return shared_data_dir(name)
    except FileNotFoundError as e: pytest.skip(f'real data absent: {str(e).splitlines()[0]}')


def _real_ntu(frames=8):
    "Real NTU files cut to their first `frames` frames, keeping the text exactly as recorded."
    out = []
    for p in sorted(_shared('ntu_rgbd_samples').glob('*.skeleton')):
        rec = parse_ntu_skeleton(p)
        lines = p.read_bytes().split(b'\n')
        n = 1 + int((1 + rec.body_counts[:frames] * 27).sum())
        out.append(b'\n'.join([str(frames).encode()] + lines[1:n]) + b'\n')
    return out

def _real_ucla(frames=6):
    files = sorted((_shared('nw_ucla') / 'all_sqe').glob('*.json'))[::300]
    return [json.dumps({**(j := json.loads(p.read_text())), 'skeletons': j['skeletons'][:frames]}).encode() for p in files]

def _real_utd(): return [p.read_bytes() for p in sorted((_shared('utd_kinect_v2') / 'skeleton').glob('*.mat'))[::100]]

def _real_msr(lines=80):
    out = []
    with tarfile.open(_shared('msr_action3d') / 'MSRAction3DSkeletonReal3D.tar.xz') as tar:
        for m in tar:
            if m.isfile() and m.name.endswith('skeleton3D.txt'):
                out.append(b'\n'.join(tar.extractfile(m).read().split(b'\n')[:lines]) + b'\n')
                if len(out) == 3: break
    return out

REAL = {'ntu': (_real_ntu, read_ntu, '.skeleton'), 'ntu_reference': (_real_ntu, read_ntu_ref, '.skeleton'),
        'nw_ucla_json': (_real_ucla, read_ucla, '.json'), 'utd_mat': (_real_utd, read_utd, '.mat'),
        'msr_text': (_real_msr, read_msr, '.txt')}


@pytest.mark.parametrize('name', list(REAL))
def test_fuzz_real_files(name, tmp_path):
    make, read, suffix = REAL[name]
    seeds = make()
    unclear, counts = fuzz(name, seeds, read, suffix, tmp_path, 300, seed=7)
    assert not unclear, f'{name}: {len(unclear)} unclear outcomes of 300, e.g. {unclear[:5]}'
    assert counts['ok'] > 0
