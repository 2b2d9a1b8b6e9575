"""Headless checks of skelnb.viz: widgets are built without a browser, driven through their slider trait,
and the figure's trace data are compared with the clip (bone gaps NaN), the cameras, and the colours."""
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from skelnb.skeleton import get_layout, joint_to_motion
from skelnb.viz import (SkeletonPlayer, ComparisonPlayer, SkeletonTraces, skeleton_figure, joint_heatmap,
                        animation_figure, save_html, wave_clip, as_clip, bone_segments, difference_segments,
                        person_joints, kinect_camera, axis_ranges, equal_aspect, CLIP_COLORS)
from skelnb.bench import bench_player_update

ROOT = Path(__file__).resolve().parent.parent


def assert_close_nan(a, b, atol=1e-6):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=atol)


def xyz(trace):
    "A trace's points as an `(N, 3)` array."
    return np.stack([np.asarray(trace[k], float) for k in 'xyz'], -1)


@pytest.fixture(scope='module')
def clip():
    return wave_clip(T=30, M=2, seed=3)


# ---------------------------------------------------------------- inputs
@pytest.mark.parametrize('make', [
    lambda c: c,
    lambda c: torch.as_tensor(c),
    lambda c: torch.as_tensor(c).half(),
    lambda c: torch.as_tensor(c).bfloat16(),
    lambda c: torch.as_tensor(c).requires_grad_(),
], ids=['numpy', 'torch', 'float16', 'bfloat16', 'requires_grad'])
def test_as_clip_accepts_numpy_and_torch(clip, make):
    a = as_clip(make(clip))
    assert a.shape == clip.shape and a.dtype == np.float64
    np.testing.assert_allclose(a, clip, atol=1e-2)   # half precision rounds


def test_as_clip_errors_name_the_argument():
    with pytest.raises(ValueError, match='attacked must have C = 3 or 2 coordinates'): as_clip(np.zeros((4, 4, 25, 1)), name='attacked')
    assert as_clip(np.ones((2, 4, 25))).shape == (2, 4, 25, 1)        # 2-D clips are clips
    with pytest.raises(ValueError, match=r'\(C, T, V, M\)'): as_clip(np.zeros((1, 3, 4, 25, 1)))
    with pytest.raises(ValueError, match="layout 'ntu25' has 25"): SkeletonPlayer(np.zeros((3, 4, 20, 1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_tensor_gives_the_same_player(clip):
    a, b = SkeletonPlayer(torch.as_tensor(clip).cuda()), SkeletonPlayer(clip)
    a.frame = b.frame = 7
    for ta, tb in zip(a.fig.data, b.fig.data): assert_close_nan(xyz(ta), xyz(tb))


# ---------------------------------------------------------------- geometry helpers
def test_bone_segments_hand_made():
    L = get_layout('ntu25')
    j = np.random.default_rng(0).normal(size=(25, 3))
    seg = bone_segments(j, L)
    assert seg.shape == (3 * 24, 3)
    for b, (c, p) in enumerate(L.bones):
        np.testing.assert_array_equal(seg[3 * b], j[c])
        np.testing.assert_array_equal(seg[3 * b + 1], j[p])
        assert np.isnan(seg[3 * b + 2]).all()


def test_difference_segments_and_ranges():
    a = np.zeros((4, 3)); b = a + [0.1, 0, 0]
    d = difference_segments(a, b)
    np.testing.assert_allclose(d[1::3] - d[0::3], [[0.1, 0, 0]] * 4)
    r = axis_ranges(np.array([[0, 0, 0], [2.0, 1.0, 0.0]]), pad=0, min_width=0.5)
    assert r == {'x': (0.0, 2.0), 'y': (0.0, 1.0), 'z': (-0.25, 0.25)}
    assert equal_aspect(r) == {'x': 1.0, 'y': 0.5, 'z': 0.25}


def test_default_camera_is_y_up_from_the_sensor():
    cam = kinect_camera()
    assert cam['up'] == dict(x=0, y=1, z=0) and cam['eye']['z'] < 0


# ---------------------------------------------------------------- the player
@pytest.mark.parametrize('layout', ['ntu25', 'kinect_v1', 'msr20'])
def test_player_slider_draws_that_frame(layout):
    L = get_layout(layout)
    c = wave_clip(T=12, M=2, layout=L)
    p = SkeletonPlayer(c, layout=L)
    for t in (5, 11, 0):
        p.slider.value = t
        assert p.frame == t and p.label.value == f'frame {t} / 11'
        for m in range(2):
            bones, joints = p.fig.data[2 * m], p.fig.data[2 * m + 1]
            assert_close_nan(xyz(joints), c[:, t, :, m].T)
            got = xyz(bones)
            assert np.isnan(got[2::3]).all()
            assert_close_nan(got, bone_segments(c[:, t, :, m].T, L))
            assert list(joints.hovertext) == list(L.joint_names)


def test_player_scene_is_fixed_equal_scale_kinect_view(clip):
    p = SkeletonPlayer(clip)
    sc = p.fig.layout.scene
    widths = np.array([np.ptp(sc[k + 'axis'].range) for k in 'xyz'])
    np.testing.assert_allclose([sc.aspectratio[k] for k in 'xyz'], widths / widths.max())
    assert sc.camera.up.to_plotly_json() == dict(x=0, y=1, z=0)
    assert p.fig.layout.uirevision is not None and sc.uirevision is not None
    before = [sc[k + 'axis'].range for k in 'xyz']
    p.frame = 20
    assert [sc[k + 'axis'].range for k in 'xyz'] == before            # ranges never move with the frame
    lo, hi = clip.min(axis=(1, 2, 3)), clip.max(axis=(1, 2, 3))
    for i, k in enumerate('xyz'): assert sc[k + 'axis'].range[0] < lo[i] and sc[k + 'axis'].range[1] > hi[i]


def test_absent_persons_are_not_drawn(clip):
    c = clip.copy()
    c[:, 10:, :, 1] = 0                               # person 1 leaves at frame 10
    p = SkeletonPlayer(torch.as_tensor(c))
    p.frame = 12
    assert np.isnan(xyz(p.fig.data[2])).all() and np.isnan(xyz(p.fig.data[3])).all()
    p.frame = 9
    assert_close_nan(xyz(p.fig.data[3]), c[:, 9, :, 1].T)
    c[:, :, :, 1] = 0                                 # never present: no traces for that person
    assert len(SkeletonPlayer(c).fig.data) == 2


def test_person_joints_nan_only_where_absent(clip):
    c = clip.copy(); c[:, :3, :, 0] = 0
    J = person_joints(c)
    assert np.isnan(J[0, :3]).all() and not np.isnan(J[0, 3:]).any() and not np.isnan(J[1]).any()


# ---------------------------------------------------------------- comparison
def test_side_by_side_one_slider_synced_cameras(clip):
    th = np.deg2rad(30)
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    rot = np.einsum('ij,jtvm->itvm', R, clip)
    atk = clip + 0.01
    cp = ComparisonPlayer({'original': clip, 'rotated': rot, 'attacked': atk})
    assert [d.scene for d in cp.fig.data] == ['scene'] * 4 + ['scene2'] * 4 + ['scene3'] * 4
    cp.slider.value = 17
    for i, c in enumerate((clip, rot, atk)):
        for m in range(2): assert_close_nan(xyz(cp.fig.data[4 * i + 2 * m + 1]), c[:, 17, :, m].T)
    lay = cp.fig.layout
    assert lay.scene.xaxis.range == lay.scene2.xaxis.range == lay.scene3.xaxis.range
    # a camera set from Python ...
    lay.scene3.camera.eye = dict(x=0.3, y=1.1, z=-1.2)
    for s in (lay.scene, lay.scene2): assert s.camera.eye.to_plotly_json() == dict(x=0.3, y=1.1, z=-1.2)
    # ... and a camera dragged in the browser (the relayout message plotly.js sends to the kernel)
    cam = dict(eye=dict(x=-1.0, y=0.5, z=-1.0), up=dict(x=0, y=1, z=0), center=dict(x=0, y=0, z=0))
    cp.fig._js2py_relayout = {'relayout_data': {'scene2.camera': cam}, 'source_view_id': 'view'}
    for s in (lay.scene, lay.scene3): assert s.camera.eye.to_plotly_json() == cam['eye']


def test_overlay_draws_amplified_differences(clip):
    eps = np.random.default_rng(0).normal(scale=0.003, size=clip.shape)
    ov = ComparisonPlayer({'original': clip, 'attacked': clip + eps}, mode='overlay', amplify=10)
    kinds = [(s['kind'], s['clip'], s['person']) for s in ov.traces.specs]
    assert ov.traces.n_scenes == 1 and {d.scene for d in ov.fig.data} == {'scene'}
    ov.frame = 4
    for m in range(2):
        seg = xyz(ov.fig.data[kinds.index(('difference', 'attacked', m))])
        np.testing.assert_allclose(seg[0::3], clip[:, 4, :, m].T, atol=1e-6)
        np.testing.assert_allclose(seg[1::3] - seg[0::3], 10 * eps[:, 4, :, m].T, atol=1e-6)
        assert np.isnan(seg[2::3]).all()
        joints = ov.fig.data[kinds.index(('joints', 'attacked', m))]
        np.testing.assert_allclose(xyz(joints), (clip + 10 * eps)[:, 4, :, m].T, atol=1e-6)
        assert joints.marker.color == CLIP_COLORS[1]
    assert any('×10' in (a.text or '') for a in ov.fig.layout.annotations)


def test_comparison_needs_equal_shapes_and_known_names(clip):
    with pytest.raises(ValueError, match="clip 'b' has shape"): ComparisonPlayer({'a': clip, 'b': clip[:, :5]})
    with pytest.raises(KeyError, match='are not clips'): ComparisonPlayer({'a': clip}, joint_values={'z': np.zeros(25)})
    with pytest.raises(ValueError, match="mode must be"): ComparisonPlayer({'a': clip}, mode='stacked')


# ---------------------------------------------------------------- colour
def test_joint_values_colour_the_markers_on_one_axis(clip):
    speed = np.linalg.norm(joint_to_motion(clip), axis=0)             # (T, V, M)
    p = SkeletonPlayer(clip, joint_values=torch.as_tensor(speed), values_name='m/frame')
    p.frame = 8
    for m in range(2):
        j = p.fig.data[2 * m + 1]
        np.testing.assert_allclose(j.marker.color, speed[8, :, m])
        np.testing.assert_allclose(j.customdata, speed[8, :, m])
        assert j.marker.coloraxis == 'coloraxis'
    ca = p.fig.layout.coloraxis
    np.testing.assert_allclose([ca.cmin, ca.cmax], [speed.min(), speed.max()])
    assert ca.colorbar.title.text == 'm/frame'
    assert p.heat is not None and p.heat.layout.shapes[0].x0 == 8     # the heat map follows the slider
    np.testing.assert_allclose(p.heat.data[1].z, speed[:, :, 1].T)


def test_joint_values_broadcast_and_explicit_range(clip):
    T, V = clip.shape[1], clip.shape[2]
    per_joint = np.arange(V, dtype=float)
    p = SkeletonPlayer(clip, joint_values=per_joint, cmin=0, cmax=50, heatmap=False)
    p.frame = 3
    np.testing.assert_allclose(p.fig.data[3].marker.color, per_joint)   # (V,) -> every frame and person
    assert (p.fig.layout.coloraxis.cmin, p.fig.layout.coloraxis.cmax) == (0, 50) and p.heat is None
    tv = np.random.default_rng(0).random((T, V))
    st = SkeletonTraces(clip, joint_values=tv)
    np.testing.assert_allclose(st.frame_props(3, 6)['marker']['color'], tv[6])
    with pytest.raises(ValueError, match=r'\(T, V, M\)'): SkeletonPlayer(clip, joint_values=np.zeros((T, V, 3)))


def test_values_in_a_comparison_only_where_given(clip):
    size = np.abs(np.random.default_rng(0).normal(size=clip.shape[1:]))
    cp = ComparisonPlayer({'original': clip, 'attacked': clip + 0.01}, joint_values={'attacked': size})
    cp.frame = 2
    assert isinstance(cp.fig.data[1].marker.color, str)                # original: person colour
    np.testing.assert_allclose(cp.fig.data[5].marker.color, size[2, :, 0])


def test_joint_heatmap_rows_are_joints(clip):
    v = np.random.default_rng(1).random((clip.shape[1], 25, 2))
    hm = joint_heatmap(v, 'ntu25', values_name='attention')
    assert len(hm.data) == 2 and list(hm.data[0].y) == list(get_layout('ntu25').joint_names)
    for m in range(2): np.testing.assert_allclose(hm.data[m].z, v[:, :, m].T)
    np.testing.assert_allclose(hm.data[0].x, np.arange(clip.shape[1]))
    assert hm.layout.coloraxis.colorbar.title.text == 'attention'
    assert len(joint_heatmap(v[:, :, 0]).data) == 1
    with pytest.raises(ValueError, match='V = 20'): joint_heatmap(v, 'kinect_v1')


# ---------------------------------------------------------------- static export
def test_skeleton_figure_shows_the_frame(clip):
    fig = skeleton_figure(clip, frame=9)
    np.testing.assert_allclose(xyz(fig.data[3]), clip[:, 9, :, 1].T, atol=1e-6)
    with pytest.raises(IndexError, match='outside 0..29'): skeleton_figure(clip, frame=30)


def test_animation_figure_frames_equal_the_clip(clip):
    fig = animation_figure(clip, step=3)
    ts = list(range(0, 30, 3))
    assert [f.name for f in fig.frames] == [str(t) for t in ts]
    assert [s.label for s in fig.layout.sliders[0].steps] == [str(t) for t in ts]
    for f, t in zip(fig.frames, ts):
        for m in range(2):
            np.testing.assert_allclose(xyz(f.data[2 * m + 1]), clip[:, t, :, m].T, atol=1e-6)
            assert_close_nan(xyz(f.data[2 * m]), bone_segments(clip[:, t, :, m].T))
    assert {b.label for b in fig.layout.updatemenus[0].buttons} == {'▶ Play', '❚❚ Pause'}
    with pytest.raises(ValueError, match='step must be'): animation_figure(clip, step=0)


def test_save_html_is_offline_and_standalone(tmp_path, clip):
    p = SkeletonPlayer(clip[:, :6])
    out = save_html(p, tmp_path / 'sub' / 'player.html')               # a player is exported through to_figure()
    html = out.read_text(encoding='utf-8')
    assert out.stat().st_size > 3_000_000 and 'plotly.js v' in html
    assert '<script src="http' not in html                              # no script is fetched from the web
    assert html.count('"name":"5"') >= 1                                # the last frame is in the file
    small = save_html(animation_figure(clip[:, :6]), tmp_path / 'cdn.html', include_plotlyjs='cdn')
    assert small.stat().st_size < 500_000
    with pytest.raises(TypeError, match='go.Figure or a player'): save_html({'data': []}, tmp_path / 'x.html')


# ---------------------------------------------------------------- 2-D clips (pose-estimator keypoints)
LAYOUTS_WITH_POSE = ['ntu25', 'kinect_v1', 'msr20', 'coco17', 'openpose25', 'mediapipe33']


def pixels(clip, f=500.0, c=(320.0, 240.0)):
    "Pinhole projection (y up, metres) -> pixels (y down); absent persons stay zero."
    x, y, z = clip
    seen = clip.any(0)
    zz = np.where(seen, z, 1)
    return np.where(seen, np.stack([f * x / zz + c[0], -f * y / zz + c[1]]), 0)


@pytest.mark.parametrize('name', LAYOUTS_WITH_POSE)
def test_2d_player_any_layout(name):
    L = get_layout(name)
    clip = pixels(wave_clip(T=12, M=2, layout=name, seed=1))
    p = SkeletonPlayer(torch.as_tensor(clip), name)
    p.frame = 7
    assert len(p.fig.data) == 4 and all(d.type == 'scatter' for d in p.fig.data)
    for m in range(2):
        bones, joints = p.fig.data[2 * m], p.fig.data[2 * m + 1]
        np.testing.assert_allclose(np.stack([joints.x, joints.y]), clip[:, 7, :, m], atol=1e-6)
        seg = np.stack([np.asarray(bones[k], float) for k in 'xy'], -1)
        assert seg.shape == (3 * (L.num_joints - 1), 2)                    # every bone of the layout, NaN-separated
        for b, (child, parent) in enumerate(L.bones):
            np.testing.assert_allclose(seg[3 * b], clip[:, 7, child, m], atol=1e-6)
            np.testing.assert_allclose(seg[3 * b + 1], clip[:, 7, parent, m], atol=1e-6)
            assert np.isnan(seg[3 * b + 2]).all()
    lay = p.fig.layout
    assert lay.yaxis.range[0] > lay.yaxis.range[1]                          # image rows: y grows downwards
    assert lay.yaxis.scaleanchor == 'x' and lay.yaxis.scaleratio == 1      # one pixel equally long on x and y
    seen = clip[:, clip.any(0)]                                             # every joint of every frame inside the fixed ranges
    assert lay.xaxis.range[0] < seen[0].min() and lay.xaxis.range[1] > seen[0].max()
    assert lay.yaxis.range[1] < seen[1].min() and lay.yaxis.range[0] > seen[1].max()
    assert list(p.fig.data[1].hovertext) == list(L.joint_names)


def test_2d_y_up_option_and_absent_person():
    clip = pixels(wave_clip(T=10, M=2, layout='coco17'))
    clip[:, 4:, :, 1] = 0                                                   # person 1 leaves after frame 3
    tr = SkeletonTraces(clip, 'coco17', y_down=False)
    fig = tr.figure(6)
    assert fig.layout.yaxis.range[0] < fig.layout.yaxis.range[1] and fig.layout.yaxis.title.text == 'y'
    assert np.isnan(np.asarray(fig.data[3].x, float)).all() and not np.isnan(np.asarray(fig.data[1].x, float)).any()
    assert tr.frame_props(1, 6).keys() == {'x', 'y'}


def test_2d_comparison_overlay_and_html(tmp_path):
    a = pixels(wave_clip(T=8, M=1, layout='openpose25'))
    b = np.where(a.any(0), a + np.array([0.0, 12.0])[:, None, None, None], 0)   # 12 px lower
    side = ComparisonPlayer({'a': a, 'b': b}, 'openpose25')
    side.frame = 3
    assert side.scenes == [] and [d.xaxis for d in side.fig.data] == ['x', 'x', 'x2', 'x2']
    assert side.fig.layout.yaxis.range == side.fig.layout.yaxis2.range
    np.testing.assert_allclose(np.asarray(side.fig.data[3].y) - np.asarray(side.fig.data[1].y), 12, atol=1e-6)
    ov = SkeletonTraces({'a': a, 'b': b}, 'openpose25', mode='overlay', amplify=2)
    i = [s['kind'] for s in ov.specs].index('difference')
    seg = np.stack([ov.frame_props(i, 5)[k] for k in 'xy'], -1)
    np.testing.assert_allclose(seg[1::3] - seg[0::3], np.tile([0.0, 24.0], (25, 1)), atol=1e-6)   # amplified twice
    fig = animation_figure({'a': a, 'b': b}, 'openpose25', step=3)
    assert len(fig.frames) == 3 and fig.frames[1].data[1].type == 'scatter'
    np.testing.assert_allclose(fig.frames[1].data[1].x, a[0, 3, :, 0], atol=1e-6)
    html = save_html(side, tmp_path / 'two_d.html').read_text()
    assert '"scaleanchor":"x"' in html


def test_2d_joint_values_and_heatmap():
    clip = pixels(wave_clip(T=6, M=1, layout='mediapipe33'))
    score = np.random.default_rng(0).uniform(size=(6, 33))
    p = SkeletonPlayer(clip, 'mediapipe33', joint_values=score, values_name='score')
    p.frame = 2
    np.testing.assert_allclose(p.fig.data[1].marker.color, score[2])
    assert p.heat is not None and p.fig.data[1].marker.coloraxis == 'coloraxis'


# ---------------------------------------------------------------- benchmark
def test_bench_player_update_runs_and_agrees():
    r = bench_player_update(T=40, M=2, updates=4, warmup=1)
    assert set(r) >= {'skelnb_ms', 'naive_ms', 'speedup', 'T', 'M', 'updates'}
    assert r['skelnb_ms'] > 0 and r['naive_ms'] > 0 and (r['T'], r['M']) == (40, 2)


# ---------------------------------------------------------------- hygiene
WIDGET_MODULES = ('viz', 'explore', 'mechanisms', 'attack_explorer')   # the widgets layer (ARCHITECTURE.md)


def test_computational_modules_do_not_import_plotly():
    "The light core: importing any module except the widget ones leaves plotly and ipywidgets unloaded."
    mods = sorted(p.stem for p in (ROOT / 'skelnb').glob('*.py') if not p.stem.startswith('_') and p.stem not in WIDGET_MODULES)
    code = ('import importlib, sys\n'
            f'for m in {mods!r}: importlib.import_module("skelnb." + m)\n'
            'print(sorted(k for k in ("plotly", "ipywidgets", "jupyterlab", "skelnb.viz") if k in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == '[]', f'heavy imports from {mods}: {out.stdout}'


def test_browser_demo_notebook_is_clean():
    nb = json.loads((ROOT / 'tests' / 'browser' / 'demo_viz.ipynb').read_text(encoding='utf-8'))
    assert 'widgets' not in nb.get('metadata', {})
    assert all(not c.get('outputs') for c in nb['cells'])
