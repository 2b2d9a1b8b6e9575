"""2-D keypoints with a score channel, end to end: the methods' views on COCO-17 (x, y, score) batches, a training
step, and the commands (main job, pretraining, evaluation) on a small prepared 2-D folder."""
import json
from types import SimpleNamespace
import numpy as np
import pytest
import torch

from skelnb.augment.core import gather_frames
from skelnb.augment.ops import temporal_crop_index
from skelnb.skeleton import COCO17, NTU25

COCO_XYS = {'layout': 'coco17', 'channels': ['x', 'y', 'score']}


@pytest.fixture(autouse=True)
def _one_thread(one_thread): yield


def coco_batch(n=8, T=32, seed=0) -> torch.Tensor:
    "A (n, 3, T, 17, 1) batch: random coordinates, scores in [0, 1)."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, T, 17, 1, generator=g)
    x[:, 2] = torch.rand(n, T, 17, 1, generator=g)
    return x


def build(name, T=32):
    from skelnb.methods.catalog import build_method, with_data_layout
    data = SimpleNamespace(info=COCO_XYS, root='coco2d', data=np.zeros((1, 3, T, 17, 1), np.float32))
    return build_method(name, 'lesson', seed=0, **with_data_layout(name, data))


def cropped(x, start, padding_ratio):
    "The batch after the normal view's temporal crop (what the score channel may undergo)."
    T = x.shape[2]
    return gather_frames(x, temporal_crop_index(start, T, T // padding_ratio))


# ------------------------------------------------------------------ the views
def test_with_data_layout_marks_the_coordinates():
    m = build('skeletonclr')
    assert (m.config.layout, m.config.in_channels, m.config.coords) == ('coco17', 3, 2)
    assert [getattr(s, 'coords', None) for s in m.augment] == [None, 2]          # the crop has none; the shear acts on x, y


def test_skeletonclr_views_shear_the_coordinates_and_move_the_score_in_time_only():
    m, x = build('skeletonclr'), coco_batch()
    view, params = m.augment(x, torch.Generator().manual_seed(1), return_params=True)
    c = cropped(x, params[0]['start'], m.config.padding_ratio)
    assert torch.equal(view[:, 2], c[:, 2])                                     # score: the crop's frames, bit for bit
    S = params[1]['matrix']                                                     # (N, 2, 2) shears of (x, y)
    assert S.shape == (8, 2, 2) and torch.equal(S.diagonal(dim1=1, dim2=2), torch.ones(8, 2))
    torch.testing.assert_close(view[:, :2], torch.einsum('nij,njtvm->nitvm', S, c[:, :2]))
    assert not torch.equal(view[:, :2], c[:, :2])


def test_aimclr_extreme_view_uses_coco_pairs_and_keeps_scores():
    m, x = build('aimclr'), coco_batch()
    ext = m.extreme
    flip = [s for s in ext if type(s).__name__ == 'SpatialFlip'][0]
    assert flip.layout == 'coco17' and all(s.coords == 2 for s in ext if hasattr(s, 'coords'))
    out, params = ext(x, torch.Generator().manual_seed(2), return_params=True)
    assert out.shape == x.shape and bool(out.isfinite().all())
    c = cropped(x, params[0]['start'], m.config.padding_ratio)[:, 2]
    flipped = params[[type(s).__name__ for s in ext].index('SpatialFlip')]['flip'].view(-1, 1, 1, 1)
    assert flipped.any() and not flipped.all()
    # every output score is an input score: moved in time by the crop, and with its joint by the COCO-17 flip
    assert torch.equal(out[:, 2], torch.where(flipped, c[:, :, list(COCO17.mirror)], c))
    assert list(COCO17.mirror) != list(range(17)) and len(NTU25.mirror) == 25


def test_a_3d_only_setting_is_refused_on_2d_data():
    from skelnb.augment.ops import SpatialFlip, Rotate
    x = coco_batch(2)
    with pytest.raises(ValueError, match=r"mirror_axis=2 .* \(C=3, coords=2, layout 'coco17'\)"):
        SpatialFlip(1.0, 'coco17', mirror_axis=2, coords=2)(x)
    with pytest.raises(ValueError, match=r'Rotate maps coordinates .* C=4'):
        Rotate()(torch.randn(2, 4, 8, 17, 1))


# ------------------------------------------------------------------ training steps
@pytest.mark.parametrize('name', ['skeletonclr', 'aimclr'])
def test_one_training_step_on_a_coco_batch(name):
    m, x = build(name), coco_batch()
    opt = torch.optim.SGD(m.optimizer_param_groups(), lr=0.01, momentum=0.9)
    before = {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}
    m.train(); m.on_epoch_start(0)
    out = m.training_step({'x': x.clone()}, 0)
    assert torch.isfinite(out['loss'])
    opt.zero_grad(); out['loss'].backward(); opt.step()
    assert any(not torch.equal(before[k], v) for k, v in m.named_parameters() if k in before)
    assert bool(m.encode(x).isfinite().all())


# ------------------------------------------------------------------ the commands on a prepared 2-D folder
def _coco_pixels(ntu):
    "(3, T, 25, M) metres -> (2, T, 17, M) image coordinates (y down): x, y of the body joints, face joints at the head."
    out = np.zeros((2, ntu.shape[1], 17, ntu.shape[3]), np.float32)
    for v, n in enumerate(COCO17.joint_names):
        out[:, :, v] = ntu[:2, :, NTU25.index(n if n in NTU25.joint_names else 'head')]
    out[1] *= -1
    return (300 * out + 200) * ntu.any(axis=(0, 2), keepdims=True)


@pytest.fixture(scope='module')
def coco_folder(tmp_path_factory):
    "A prepared COCO-17 (x, y, score) folder: 4 actions, 8 subjects (6 train, 2 test), 32 frames, from a pyskl pickle."
    from skelnb.data import synthetic_clip, SYNTHETIC_ACTIONS
    from skelnb.formats import write_pyskl
    from skelnb.cli import prepare_cli
    tmp = tmp_path_factory.mktemp('coco2d')
    rng = np.random.default_rng(0)
    clips, scores, names, labels, split = [], [], [], [], {'xsub_train': [], 'xsub_val': []}
    for a, action in enumerate(SYNTHETIC_ACTIONS[:4]):
        for subject in range(1, 9):
            c = _coco_pixels(synthetic_clip(action, subject, frames=32))
            clips.append(c); names.append(f'{action}_s{subject}'); labels.append(a)
            scores.append(rng.uniform(0.5, 1.0, c.shape[1:]).astype(np.float32) * c.any(0))
            split['xsub_train' if subject <= 6 else 'xsub_val'].append(names[-1])
    write_pyskl(tmp / 'pose2d.pkl', clips, names, labels, split, scores)
    prepare_cli(['pyskl', str(tmp / 'pose2d.pkl'), str(tmp / 'mine2d'), '--layout', 'coco17',
                 '--split', 'xsub_train=train,xsub_val=test', '--frames', '32'])
    return tmp / 'mine2d'


def test_main_job_runs_on_a_2d_folder(coco_folder, tmp_path, monkeypatch):
    from skelnb.cli import main_cli
    from skelnb.prepare import read_info, data_channels
    import skelnb.viz
    assert data_channels(read_info(coco_folder)) == ['x', 'y', 'score']
    drawn, real = [], skelnb.viz.animation_figure
    def spy(clips, *args, **kwargs):
        drawn.append((clips, kwargs)); return real(clips, *args, **kwargs)
    monkeypatch.setattr(skelnb.viz, 'animation_figure', spy)
    main_cli(['--data', str(coco_folder), '--epochs', '1', '--max-clips', '64', '--batch-size', '8', '--out', str(tmp_path / 'main')])
    res = json.loads((tmp_path / 'main' / 'results.json').read_text())
    models = {r['model'] for r in res['results']}
    assert models == {'skeletonclr pretrained', 'skeletonclr random init', 'raw joints'}
    assert all(0 <= r['accuracy'] <= 100 for r in res['results'])
    assert np.isfinite([h['loss'] for h in res['history'] if 'loss' in h]).all()
    page = (tmp_path / 'main' / 'report.html').read_text()
    assert 'three test clips' in page and 'Embedding, after pretraining' in page
    (clips, kwargs), = drawn                                    # the report's clips: (x, y) drawn flat, the score as colour
    assert {c.shape[0] for c in clips.values()} == {2} and kwargs['values_name'] == 'score'
    assert set(kwargs['joint_values']) == set(clips)            # the scores made above: 0 (absent) or in [0.5, 1]
    assert all(np.all((v == 0) | ((v >= 0.5) & (v <= 1))) for v in map(np.asarray, kwargs['joint_values'].values()))


def test_readme_commands_run_on_a_2d_folder(coco_folder, tmp_path, capsys):
    "`skelnb-pretrain` then `skelnb-evaluate --protocols knn,probe` on the checkpoint it writes (the README's commands)."
    from skelnb.cli import pretrain_cli, evaluate_cli
    run = tmp_path / 'runs' / 'mine2d'
    assert pretrain_cli(['--method', 'skeletonclr', '--preset', 'lesson', '--data', str(coco_folder), '--out', str(run),
                         '--epochs', '1', '--batch-size', '8']) == 0
    ckpt = run / 'checkpoint_e0001.pt'
    assert ckpt.is_file()
    rows = evaluate_cli(['--checkpoint', str(ckpt), '--data', str(coco_folder), '--protocols', 'knn,probe', '--out', str(tmp_path / 'eval')])
    assert {r['protocol'] for r in rows} == {'knn', 'probe'} and all(0 <= r['accuracy'] <= 100 for r in rows)
