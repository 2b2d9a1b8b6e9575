"""skelnb.formats: readers, writers, bad input, restricted pickles (real data used when present, never copied)."""
import os, pickle
from pathlib import Path
import numpy as np
import pytest
from skelnb.formats import *
from skelnb.formats import _tokenize, _walk_headers, _walk_headers_fast
from skelnb.bench import bench_ntu_reader


def _clip(T=4, M=1, seed=0):
    return np.random.default_rng(seed).normal(size=(3, T, 25, M)).astype(np.float32)


@pytest.fixture
def good_file(tmp_path):
    "A 3-frame, 1-body NTU file (85 lines) written by the writer."
    return write_ntu_skeleton(tmp_path / 'S001C001P001R001A001.skeleton', _clip(3))


def _edit(path, fn):
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(fn(lines)) + '\n')
    return path


def _set(line, i, text):
    v = line.split(); v[i] = text
    return ' '.join(v)


# ---------------------------------------------------------------- decimal parser
def test_decimal_parser_is_bit_exact():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=5000) * 10.0 ** rng.integers(-7, 5, 5000)
    toks = [('%.7g' % x).encode() for x in xs] + [('%.9g' % x).encode() for x in xs.astype(np.float32)] + [b'0', b'-0', b'5.', b'.25']
    buf = np.frombuffer(b' '.join(toks), np.uint8)
    ends = np.cumsum([len(t) + 1 for t in toks]) - 1
    starts = ends - np.array([len(t) for t in toks])
    vals, ok = parse_decimal_tokens(buf, starts, ends)
    ref = np.array([float(t) for t in toks])
    assert ok.mean() > 0.5
    assert np.array_equal(vals[ok], ref[ok])


@pytest.mark.parametrize('tok', [b'nan', b'inf', b'1.2.3', b'--1', b'1-2', b'abc', b'-', b'.'])
def test_decimal_parser_flags_what_it_cannot_do(tok):
    buf = np.frombuffer(tok + b' ', np.uint8)
    _, ok = parse_decimal_tokens(buf, [0], [len(tok)])
    assert not ok[0]


# ---------------------------------------------------------------- NTU round trips
def test_ntu_roundtrip_with_absent_person_and_empty_frame(tmp_path):
    clip = _clip(6, 2)
    clip[:, 2:4, :, 1] = 0
    clip[:, 5] = 0
    p = write_ntu_skeleton(tmp_path / 'S002C003P004R001A005.skeleton', clip)
    back, meta = read_ntu_skeleton(p)
    assert np.array_equal(back, clip)
    assert np.array_equal(read_ntu_skeleton_lines(p), clip)
    assert meta['body_counts'].tolist() == [2, 2, 1, 1, 2, 0]
    assert (meta['setup'], meta['camera'], meta['subject'], meta['replication'], meta['label']) == (2, 3, 4, 1, 4)


def test_crlf_and_irregular_spacing_read_the_same(good_file, tmp_path):
    ref = read_ntu_skeleton(good_file)[0]
    text = good_file.read_text()
    crlf = tmp_path / 'crlf.skeleton'; crlf.write_bytes(text.replace('\n', '\r\n').encode())
    messy = tmp_path / 'messy.skeleton'; messy.write_text('  ' + text.replace(' ', ' \t ').replace('\n', '  \n'))
    for p in (crlf, messy):
        assert np.array_equal(read_ntu_skeleton(p)[0], ref)


def test_body_id_is_exact_and_all_fields_kept(tmp_path):
    rec = NTUSkeletonFile(1, np.array([1]), np.array([72057594037944738], np.uint64), np.array([[0, 1, 2, 1, 3, 0, 0.25, -0.5, 2]], float),
                          np.arange(25 * 12, dtype=np.float32).reshape(1, 25, 12) / 7)
    back = parse_ntu_skeleton(write_ntu_skeleton(tmp_path / 'x.skeleton', rec))
    assert back.body_ids.tolist() == [72057594037944738]
    assert np.array_equal(back.body_info, rec.body_info)
    assert np.array_equal(back.joints, rec.joints)


def test_body_selection(tmp_path):
    # two bodies listed in swapped order in frame 2: 'first' swaps slots, 'tracked' does not
    rec = NTUSkeletonFile(2, np.array([2, 2]), np.array([7, 9, 9, 7], np.uint64), np.zeros((4, 9)),
                          (np.arange(4, dtype=np.float32) + 1)[:, None, None] * np.ones((4, 25, 3), np.float32))
    assert bodies_to_clip(rec, 2, 'first')[0, :, 0].tolist() == [[1, 2], [3, 4]]
    assert bodies_to_clip(rec, 2, 'tracked')[0, :, 0].tolist() == [[1, 2], [4, 3]]
    with pytest.raises(ValueError, match='select must be one of'): bodies_to_clip(rec, 2, 'random')


# ---------------------------------------------------------------- bad NTU files: each names the file and line
@pytest.mark.parametrize('edit, message', [
    (lambda l: l[:40], 'line 40: the file ends inside the joints of frame 2, body 1'),
    (lambda l: l[:-1] + [l[-1][:20]], 'line 85: a joint line needs 12 values, found 2'),
    (lambda l: l[:6] + [_set(l[6], 2, 'abc')] + l[7:], "line 7: 'abc' is not a number"),
    (lambda l: l[:6] + [_set(l[6], 0, 'nan')] + l[7:], "line 7: non-finite value 'nan'"),
    (lambda l: l[:6] + [_set(l[6], 1, 'inf')] + l[7:], "line 7: non-finite value 'inf'"),
    (lambda l: l[:3] + ['24'] + l[4:28], 'line 4: frame 1, body 1 has 24 joints, expected 25'),
    (lambda l: l[:2] + [l[2] + ' 7'] + l[3:], 'line 3: frame 1, body 1: expected the 10 body fields, found 11'),
    (lambda l: l + ['1'], 'line 86: unexpected data after the last of the 3 frames'),
    (lambda l: ['4'] + l[1:], 'line 85: the file ends where the body count of frame 4 was expected'),
    (lambda l: ['x'] + l[1:], "line 1: expected the frame count, found 'x'"),
    (lambda l: ['0'], 'line 1: the file announces 0 frames'),
    (lambda l: [], 'line 1: the file is empty'),
    (lambda l: l[:29] + [''] + l[29:], 'line 30: blank line'),
    (lambda l: ['2', '0', '0'], 'no body in any of the 2 frames'),
])
def test_bad_ntu_files(good_file, edit, message):
    p = _edit(good_file, edit)
    with pytest.raises(SkeletonFormatError) as e: read_ntu_skeleton(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def _mutations(lines, rng):
    "Random damage of the kinds real files show: lost, repeated or swapped lines, changed counts, extra values."
    i = int(rng.integers(len(lines)))
    kind = int(rng.integers(6))
    if kind == 0: return lines[:i] + lines[i + 1:]
    if kind == 1: return lines[:i] + [lines[i]] + lines[i:]
    if kind == 2:
        j = int(rng.integers(len(lines))); lines = list(lines); lines[i], lines[j] = lines[j], lines[i]; return lines
    if kind == 3: return lines[:i] + [str(int(rng.integers(0, 4)))] + lines[i + 1:]
    if kind == 4: return lines[:i] + [lines[i] + ' 0'] + lines[i + 1:]
    return lines[:i] + [' '.join(lines[i].split()[:-1]) or '1'] + lines[i + 1:]


def test_fast_walk_agrees_with_the_careful_walk(tmp_path):
    "Whenever the vectorised walk accepts a file, the line-by-line walk finds the same structure and no problem."
    clip = _clip(5, 2); clip[:, 1, :, 1] = 0; clip[:, 3] = 0        # frames with 2, 1 and 0 bodies
    text = write_ntu_skeleton(tmp_path / 'x.skeleton', clip).read_text().splitlines()
    rng = np.random.default_rng(0)
    accepted = rejected = 0
    for trial in range(300):
        lines = _mutations(text, rng) if trial else text
        data = ('\n'.join(lines) + '\n').encode()
        if not data.strip(): continue
        tok = _tokenize(data, 'x.skeleton')
        fast = _walk_headers_fast(*tok, 25)
        careful = _walk_headers(tok[0], tok[2], tok[3], tok[4], tok[5], 'x.skeleton', 25)
        if fast is None: rejected += 1; continue
        accepted += 1
        assert careful[5] is None, (trial, careful[5])
        assert fast[:5] == careful[:5]
    assert accepted > 10 and rejected > 100      # both outcomes exercised


def test_zero_body_frame_in_the_middle_is_fine(good_file):
    clip, meta = read_ntu_skeleton(_edit(good_file, lambda l: ['4'] + l[1:29] + ['0'] + l[29:]))
    assert meta['body_counts'].tolist() == [1, 0, 1, 1]
    assert not clip[:, 1].any() and clip[:, 2].any()


def test_wrong_file_names(tmp_path):
    p = write_ntu_skeleton(tmp_path / 'recording_1.skeleton', _clip(2))
    clip, meta = read_ntu_skeleton(p)                       # readable, but no label
    assert 'label' not in meta
    with pytest.raises(SkeletonFormatError, match="does not follow ntu pattern"): parse_sample_name(p, 'ntu')
    with pytest.raises(SkeletonFormatError, match="does not follow"): parse_sample_name('S1C2P3R4A5.skeleton')


# ---------------------------------------------------------------- other formats on hand-made files
def test_nw_ucla_and_utd_bad_input(tmp_path):
    from scipy.io import savemat
    p = tmp_path / 'a01_s01_e00_v01.json'
    p.write_text('{"skeletons": [[[0, 1, 2]]], "label": 1}')
    with pytest.raises(SkeletonFormatError, match='T x 20 x 3'): read_nw_ucla_json(p)
    p.write_text('{"skeletons": [' + ','.join(['[' + ','.join(['[0, 1, 2]'] * 20) + ']'] * 2) + '], "label": 11}')
    with pytest.raises(SkeletonFormatError, match='1..10'): read_nw_ucla_json(p)
    m = tmp_path / 'a1_s1_t1_skel_K2.mat'
    savemat(m, {'S_K2': {'world': np.full((25, 3, 2), np.inf)}})
    with pytest.raises(SkeletonFormatError, match='non-finite'): read_utd_mat(m)
    savemat(m, {'other': np.zeros(3)})
    with pytest.raises(SkeletonFormatError, match="no struct 'S_K2'"): read_utd_mat(m)


def test_msr_text_and_tar(tmp_path):
    import tarfile, io
    x = np.random.default_rng(1).normal(size=(3, 20, 4)).round(5)
    text = '\n'.join(' '.join('%.5f' % v for v in row) for row in x.reshape(-1, 4)).encode()
    tar_path = tmp_path / 'msr.tar.xz'
    with tarfile.open(tar_path, 'w:xz') as tar:
        for name, data in (('d/a02_s03_e01_skeleton3D.txt', text), ('d/a02_s04_e01_skeleton3D.txt', text[:text.rindex(b'\n')]), ('d/readme.txt', b'hi')):
            info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    it = iter_msr_tar(tar_path)
    clip, meta = next(it)
    assert clip.shape == (3, 3, 20, 1) and meta['label'] == 1 and meta['subject'] == 3
    assert np.allclose(clip[:, 1, :, 0], x[1, :, :3].T.astype(np.float32))
    with pytest.raises(SkeletonFormatError, match='a02_s04_e01_skeleton3D.txt, line 59: 59 joint lines is not a whole number'): next(it)
    v1 = next(iter_msr_tar(tar_path, layout='kinect_v1'))[0]
    assert np.array_equal(v1[:, :, 0], clip[:, :, 6])        # MSR joint 7 (hip centre) is Kinect v1 joint 1


def test_pku_cutting_and_split(tmp_path):
    seq = np.random.default_rng(2).normal(size=(25, 150)).round(4)
    seq[:, 75:] = 0
    np.savetxt(tmp_path / 'A01N02-M.txt', seq, fmt='%.4f')
    (tmp_path / 'lab.txt').write_text('4,0,4,1\n4,5,24,1\n')
    paths = write_pku_clips(tmp_path / 'A01N02-M.txt', tmp_path / 'lab.txt', tmp_path / 'out')
    assert [p.name for p in paths] == ['A01N02V002C004L001.skeleton', 'A01N02V002C004L002.skeleton']
    clip, meta = read_ntu_skeleton(paths[1])
    assert clip.shape[1] == 20 and meta['body_counts'].max() == 1 and meta['label'] == 3
    (tmp_path / 'bad.txt').write_text('4,10,4,1\n')
    with pytest.raises(SkeletonFormatError, match='line 1: bad label row'): read_pku_labels(tmp_path / 'bad.txt')
    (tmp_path / 'short.txt').write_text('0.1 0.2\n')
    with pytest.raises(SkeletonFormatError, match='line 1: expected 150 values, found 2'): read_pku_sequence(tmp_path / 'short.txt')


# ---------------------------------------------------------------- pickles
class _Evil:
    def __reduce__(self): return (os.system, ('echo hacked',))


@pytest.mark.parametrize('proto', [2, 3, 4, 5])
def test_restricted_unpickler_reads_arrays(tmp_path, proto):
    obj = {'k': np.arange(12, dtype=np.float32).reshape(3, 4), 'l': [np.int64(2), 'a', (1.5, None, True)], 'b': b'\x00\x01'}
    back = safe_load_pickle('x', data=pickle.dumps(obj, protocol=proto))
    assert np.array_equal(back['k'], obj['k']) and back['l'] == obj['l'] and back['b'] == obj['b']


@pytest.mark.parametrize('payload', [_Evil(), [1, _Evil()], np.array([1, None], dtype=object), Path, eval])
def test_restricted_unpickler_refuses(payload):
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle('evil.pkl', data=pickle.dumps(payload))


def test_pyskl_roundtrip_and_label_pickle(tmp_path):
    clips = [_clip(5, 2, 1), _clip(9, 2, 2)]
    p = write_pyskl(tmp_path / 'd.pkl', clips, ['a', 'b'], [3, 1], split={'train': ['a'], 'val': ['b']})
    obj = read_pyskl(p)
    assert obj['annotations'][0]['keypoint'].shape == (2, 5, 25, 3)
    for a, c in zip(obj['annotations'], clips): assert np.array_equal(pyskl_to_clip(a)[0], c)
    with open(tmp_path / 'l.pkl', 'wb') as f: pickle.dump((['x.skeleton'], [5]), f)
    assert read_label_pickle(tmp_path / 'l.pkl')[1].tolist() == [5]
    with open(tmp_path / 'e.pkl', 'wb') as f: pickle.dump((['x.skeleton'], _Evil()), f)
    with pytest.raises(pickle.UnpicklingError, match='refusing'): read_label_pickle(tmp_path / 'e.pkl')


def _pose2d(tmp_path, n=4, V=17):
    "A 2-D pyskl pickle with scores: clips a, b, c, ... of 3 + i frames."
    g = np.random.default_rng(2)
    clips = [g.uniform(0, 640, size=(2, 3 + i, V, 1)).astype(np.float32) for i in range(n)]
    scores = [g.uniform(size=(3 + i, V, 1)).astype(np.float32) for i in range(n)]
    names = [chr(97 + i) for i in range(n)]
    return write_pyskl(tmp_path / 'p.pkl', clips, names, list(range(n)), {'train': names[:2], 'test': names[2:]}, scores), clips, scores


def test_pyskl_score_channel(tmp_path):
    p, clips, scores = _pose2d(tmp_path)
    ann = read_pyskl(p)['annotations'][2]
    clip, meta = pyskl_to_clip(ann, score=True)
    assert clip.shape == (3, 5, 17, 1) and np.array_equal(clip[:2], clips[2]) and np.array_equal(clip[2], scores[2])
    assert pyskl_to_clip(ann)[0].shape == (2, 5, 17, 1) and meta['name'] == 'c' and 'keypoint_score' not in meta


@pytest.mark.parametrize('edit, field', [
    (lambda a: a.update(label=-2), "'label' must be a non-negative integer below 100000, got -2"),
    (lambda a: a.update(label='3'), "'label' must be a non-negative integer below 100000, got '3'"),
    (lambda a: a.pop('label'), "'label' must be a non-negative integer below 100000, got None"),
    (lambda a: a.update(label=np.int64(2 ** 40)), "'label' must be a non-negative integer below 100000, got 1099511627776"),
    (lambda a: a.update(total_frames=99), "'total_frames' is 99 but 'keypoint' has 4 frames"),
    (lambda a: a.update(keypoint_score=a['keypoint_score'][..., :3]), "'keypoint_score' must be a numeric (M, T, V) = (1, 4, 17) array"),
    (lambda a: a['keypoint_score'].__setitem__((0, 2, 6), np.nan), "'keypoint_score' holds a non-finite value (NaN, inf or beyond float32) at person 0, frame 2, joint 6"),
    (lambda a: a['keypoint'].__setitem__((0, 3, 1, 0), np.inf), "'keypoint' holds a non-finite value (NaN, inf or beyond float32) at person 0, frame 3, joint 1"),
    (lambda a: a.update(keypoint=np.zeros((1, 4, 17, 5))), "'keypoint' (1, 4, 17, 5) has C = 5 values per joint"),
    (lambda a: a.update(keypoint=np.zeros((1, 0, 17, 2))), "'keypoint' must be a non-empty numeric (M, T, V, C) array"),
    (lambda a: a.update(frame_dir=''), "annotation 1: 'frame_dir' must be a non-empty string"),
    (lambda a: a.update(frame_dir='a'), "annotation 1 ('a'): 'frame_dir' repeats annotation 0"),
])
def test_pyskl_bad_annotation_is_named_and_skipped(tmp_path, edit, field):
    p, _, _ = _pose2d(tmp_path)
    obj = pickle.loads(p.read_bytes())
    edit(obj['annotations'][1])
    p.write_bytes(pickle.dumps(obj))
    with pytest.raises(SkeletonFormatError) as e: read_pyskl(p)
    assert str(e.value).startswith(f'{p}: annotation 1') and field in str(e.value), str(e.value)
    errors = []
    kept = read_pyskl(p, errors)['annotations']
    assert [a['frame_dir'] for a in kept] == ['a', 'c', 'd'] and len(errors) == 1
    assert errors[0]['index'] == 1 and field in errors[0]['reason'] and str(p) in errors[0]['reason']


@pytest.mark.parametrize('payload, message', [
    (b'', 'the file is empty (0 bytes)'),
    (pickle.dumps([1, 2]), "a pyskl pickle is a dict with an 'annotations' list, this holds list"),
    (pickle.dumps({'split': {'train': 'abc'}, 'annotations': []}), "'split' must map split names to lists"),
])
def test_pyskl_whole_file_errors(tmp_path, payload, message):
    (tmp_path / 'w.pkl').write_bytes(payload)
    with pytest.raises(SkeletonFormatError, match=message.replace('(', r'\(').replace(')', r'\)')): read_pyskl(tmp_path / 'w.pkl', [])


def test_npy_clip_reader(tmp_path):
    g = np.random.default_rng(3)
    x = g.normal(size=(6, 33, 3))
    np.save(tmp_path / 'a.npy', x)
    clip, meta = read_npy_clip(tmp_path / 'a.npy', 'mediapipe33')
    assert clip.shape == (3, 6, 33, 1) and clip.dtype == np.float32 and np.allclose(clip[..., 0], x.transpose(2, 0, 1))
    assert (meta['frames'], meta['persons'], meta['coords']) == (6, 1, 3)
    np.save(tmp_path / 'i.npy', np.arange(2 * 3 * 17 * 2, dtype=np.int16).reshape(2, 3, 17, 2))    # integer pixels
    clip, _ = read_npy_clip(tmp_path / 'i.npy', 'coco17')
    assert clip.shape == (2, 3, 17, 2) and clip[1, 0, 0, 1] == 3 * 17 * 2 + 1
    np.save(tmp_path / 'f.npy', np.asfortranarray(x))
    assert np.array_equal(read_npy_clip(tmp_path / 'f.npy')[0], read_npy_clip(tmp_path / 'a.npy')[0])
    for arr, msg in ((np.zeros((4, 17)), "expected a (T, V, C) or (M, T, V, C) array of kind 'fiu', the header says float64 (4, 17)"),
                     (np.zeros((4, 17, 2), bool), "of kind 'fiu', the header says bool"),
                     (np.zeros((0, 17, 2)), 'shape (0, 17, 2) holds no coordinates'),
                     (np.full((2, 17, 2), 1e39), 'non-finite value (NaN, inf or beyond float32) at person 0, frame 0, joint 0')):
        np.save(tmp_path / 'b.npy', arr)
        with pytest.raises(SkeletonFormatError) as e: read_npy_clip(tmp_path / 'b.npy')
        assert str(e.value).startswith(f"{tmp_path / 'b.npy'}: ") and msg in str(e.value), str(e.value)
    (tmp_path / 'b.npy').write_bytes(b'')
    with pytest.raises(SkeletonFormatError, match='not a valid .npy file'): read_npy_clip(tmp_path / 'b.npy')
    with pytest.raises(FileNotFoundError): read_npy_clip(tmp_path / 'missing.npy')


def test_labels_csv(tmp_path):
    p = tmp_path / 'labels.csv'
    p.write_bytes('\ufefffile,label,view\r\nα/1.npy,schwingen,2\r\nb.npy,3, \r\n/abs.npy,x,1\r\nc.npy,x\r\nd.npy,100000,1\r\n'.encode())
    rows, problems = read_labels_csv(p)
    assert problems.pop()['reason'] == f"{p}, line 6: field 'label': 100000 is not a class index below 100000"
    assert rows == [{'line': 2, 'file': 'α/1.npy', 'label': 'schwingen', 'view': 2}, {'line': 3, 'file': 'b.npy', 'label': '3', 'view': None}]
    assert [(q['line'], q['name']) for q in problems] == [(4, '/abs.npy'), (5, 'c.npy')]
    assert problems[0]['reason'] == f"{p}, line 4: field 'file': '/abs.npy' must be a path inside the folder (relative, no '..')"
    p.write_bytes(b'file,label\n\xff\xfe.npy,1\n')
    with pytest.raises(SkeletonFormatError, match='not UTF-8 text'): read_labels_csv(p)
    p.write_text('file,label,label\na,1,2\n')
    with pytest.raises(SkeletonFormatError, match='line 1: the header must name'): read_labels_csv(p)
    p.write_text('file,label,colour\na,1,red\n')
    with pytest.raises(SkeletonFormatError, match=r"unknown: \['colour'\]"): read_labels_csv(p)
    p.write_text('file,label\n')
    assert read_labels_csv(p) == ([], [])


def test_shared_data_dir_message(tmp_path, monkeypatch):
    monkeypatch.setenv('SKELNB_SHARED_DATA', str(tmp_path))
    assert shared_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match='all_sqe.zip'): shared_data_dir('nw_ucla')
    monkeypatch.setenv('SKELNB_SHARED_DATA', str(tmp_path / 'none'))
    with pytest.raises(FileNotFoundError, match='What to put there'): shared_data_dir()


# ---------------------------------------------------------------- real files (skipped with the reason when absent)
def test_real_ntu_samples_match_reference(shared_data):
    folder = shared_data / 'ntu_rgbd_samples'
    if not folder.is_dir(): pytest.skip(f'{folder} not found')
    files = sorted(folder.glob('*.skeleton'))
    for p in files:
        clip, meta = read_ntu_skeleton(p)
        assert np.array_equal(clip, read_ntu_skeleton_lines(p))
        rec = parse_ntu_skeleton(p)
        assert rec.joints.shape[1:] == (25, 12) and rec.body_ids.dtype == np.uint64
    assert [read_ntu_skeleton(p)[1]['frames'] for p in files] == [82, 70, 100, 71, 124]
    r = bench_ntu_reader(files, repeats=1)
    assert r['frames'] == 447 and r['speedup'] > 1


def test_real_small_datasets(shared_data):
    utd, ucla, msr = shared_data / 'utd_kinect_v2', shared_data / 'nw_ucla', shared_data / 'msr_action3d'
    if not (utd.is_dir() and ucla.is_dir() and msr.is_dir()): pytest.skip('UTD / NW-UCLA / MSR folders not all present')
    clip, meta = read_utd_mat(utd / 'skeleton' / 'a10_s6_t5_skel_K2.mat')
    assert clip.shape[2:] == (25, 1) and meta['label'] == 9
    clip, meta = read_nw_ucla_json(ucla / 'all_sqe' / 'a01_s01_e00_v01.json')
    assert clip.shape == (3, 44, 20, 1) and meta['label'] == 0
    names = {m['name'] for _, m in iter_msr_tar(msr / 'MSRAction3DSkeletonReal3D.tar.xz')}
    assert len(names) == 567
