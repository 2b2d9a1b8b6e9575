"""Headless checks of skelnb.explore: projections against direct formulas, figures, and the explorer driven from Python."""
import numpy as np
import pytest
import torch
from plotly.callbacks import Points, InputDeviceState

from skelnb.explore import project, embedding_figure, curves_figure, nearest_neighbours, EmbeddingExplorer
from skelnb.data import ensure_synthetic_dataset, SkeletonDataset, labelled_subset
from skelnb.viz import SkeletonTraces


@pytest.fixture(scope='module')
def data():
    root = ensure_synthetic_dataset()
    full = SkeletonDataset(root, 'test')
    ds = SkeletonDataset(root, 'test', subset=labelled_subset(full.targets, 0.1))   # 48 clips, 4 per class
    x = np.stack([ds.clip(i) for i in range(len(ds))])
    g = np.random.default_rng(0)
    feats = x.reshape(len(ds), -1) @ g.standard_normal((x[0].size, 16)) / 50   # a fixed random linear encoder
    return ds, feats


def test_pca_is_svd_projection():
    g = np.random.default_rng(1)
    f = g.standard_normal((30, 6)) @ np.diag([5, 3, 2, 1, .5, .1])
    c = f - f.mean(0)
    w, v = np.linalg.eigh(np.cov(c.T))
    ref = c @ v[:, ::-1][:, :3]
    p = project(f, 'pca', 3)
    np.testing.assert_allclose(np.abs(p), np.abs(ref), atol=1e-9)
    assert np.all(p[np.abs(p).argmax(0), [0, 1, 2]] > 0)          # sign convention
    with pytest.raises(ValueError, match='dims'): project(f, 'pca', 4)
    with pytest.raises(ValueError, match='method'): project(f, 'umap')
    with pytest.raises(ValueError, match='at least 2'): project(f[:1])


def test_embedding_figure_traces(data):
    ds, feats = data
    fig = embedding_figure(feats, ds.targets, ds.class_names)
    p = project(feats, 'pca', 2)
    assert len(fig.data) == 12
    for tr in fig.data:
        m = ds.targets == ds.class_names.index(tr.name)
        np.testing.assert_allclose(np.asarray(tr.x), p[m, 0]); np.testing.assert_allclose(np.asarray(tr.y), p[m, 1])
    with pytest.raises(ValueError, match='labels'): embedding_figure(feats, ds.targets[:5])


def test_curves_figure():
    rows = [{'epoch': 1, 'loss': 2.0}, {'epoch': 2, 'loss': 1.0, 'knn1': 30.0}]
    fig = curves_figure(rows)
    assert [t.name for t in fig.data] == ['loss', 'knn1'] and list(fig.data[1].x) == [2]
    with pytest.raises(KeyError): curves_figure(rows, keys=['top1'])
    with pytest.raises(ValueError): curves_figure([])


def test_nearest_neighbours_brute_force(data):
    _, feats = data
    idx, sim = nearest_neighbours(feats, 7, 5)
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s = fn @ fn[7]; s[7] = -np.inf
    assert list(idx) == list(np.argsort(-s)[:5])
    np.testing.assert_allclose(sim, np.sort(s)[::-1][:5], atol=1e-9)
    with pytest.raises(ValueError, match='k='): nearest_neighbours(feats, 0, len(feats))


def test_explorer_controls_and_click(data):
    ds, feats = data
    other = feats[:, ::-1] ** 2
    ex = EmbeddingExplorer({'a': feats, 'b': other}, ds, neighbours=2)
    for name, f in (('a', feats), ('b', other)):
        p = project(f, 'pca', 2)
        for tr in ex.traces(name):
            rows = np.asarray(tr.customdata)
            np.testing.assert_allclose(np.asarray(tr.x), p[rows, 0]); np.testing.assert_allclose(np.asarray(tr.y), p[rows, 1])
            assert (ds.targets[rows] == ds.class_names.index(tr.name)).all()
    # colour by view: groups follow the prepared meta
    ex.color_dd.value = 'view'
    views = np.asarray(ds.meta['view'])[ds.indices]
    for tr in ex.traces():
        assert set(views[np.asarray(tr.customdata)].tolist()) == {int(tr.name.split()[1])}
    # 3-D
    ex.dims_tb.value = 3
    p3 = project(feats, 'pca', 3)
    tr = ex.traces()[0]
    np.testing.assert_allclose(np.asarray(tr.z), p3[np.asarray(tr.customdata), 2])
    ex.dims_tb.value = 2; ex.color_dd.value = 'class'
    # click through plotly's dispatch
    tr = ex.traces()[3]
    tr._dispatch_on_click(Points(point_inds=[1], xs=[tr.x[1]], ys=[tr.y[1]], trace_name=tr.name, trace_index=3), InputDeviceState())
    row = int(tr.customdata[1])
    assert ex.selected == row and ex.sample.value == row
    shown = [np.nan_to_num(np.asarray(t.x, float)) for t in ex.player.fig.data]
    ref = [np.nan_to_num(np.asarray(t.x, float)) for t in SkeletonTraces(ds.clip(row), ds.layout).figure(0).data]
    assert len(shown) == len(ref) and all(np.allclose(a, b) for a, b in zip(shown, ref))
    assert list(ex.neighbours) == list(nearest_neighbours(feats, row, 2)[0])
    assert len(ex.neighbour_box.children) == 1
    # typing a row selects too
    ex.sample.value = 0
    assert ex.selected == 0
    with pytest.raises(IndexError): ex.select(len(ds))


def test_explorer_bad_input(data):
    ds, feats = data
    with pytest.raises(ValueError, match='feature rows'): EmbeddingExplorer(feats[:10], ds)
    with pytest.raises(ValueError, match='different numbers of rows'): EmbeddingExplorer({'a': feats, 'b': feats[:5]}, ds)
    with pytest.raises(ValueError, match='color_by'): EmbeddingExplorer(feats, labels=ds.targets, color_by='subject')
    with pytest.raises(ValueError, match='dataset or labels'): EmbeddingExplorer(feats)
