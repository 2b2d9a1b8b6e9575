"""skelnb.augment (core, ops, presets, reference, explorer): shapes, devices, determinism, identities, the distributions of
the random draws, equality with the per-sample numpy reference, the explorer driven headless, and the light import."""
import math, subprocess, sys
import numpy as np
import pytest
import torch
from scipy import stats

from skelnb.augment.core import *
from skelnb.augment.core import _OFFDIAG
from skelnb.augment.ops import *
from skelnb.augment.presets import *
from skelnb.augment.reference import reference, reference_random, sample_params
from skelnb.skeleton import get_layout, joint_to_bone, LAYOUTS

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
STEPS = [TemporalCrop(), Shear(), SpatialFlip(), Rotate(), GaussianNoise(), GaussianBlur(), AxisMask(), TimeFlip(),
         CropResize(), CenterCropResize(), SpatialMask(), TemporalMask(), ToStream('bone'), ToStream('motion'),
         GaussianBlur(normalize=True), GaussianNoise(keep_absent=True), SpatialFlip(mirror_axis=0), Rotate(p=0.5), Shear(1.0, p=0.5)]
N_STAT = 20_000   # draws for the distribution checks


def gen(seed=0): return torch.Generator().manual_seed(seed)

def batch(n=6, T=64, M=2, dtype=torch.float32, seed=0, absent=True):
    x = 0.3 * torch.randn(n, 3, T, 25, M, generator=gen(seed), dtype=dtype)
    if absent and M > 1: x[::2, ..., 1] = 0
    return x

def shaped(n, T=64, V=25, M=2, dtype=torch.float32):
    "A batch of zeros of that shape without the memory (draws read only the shape, device and dtype)."
    return torch.zeros((), dtype=dtype).expand(n, 3, T, V, M)

def out_frames(step, T):
    return step.size if isinstance(step, (CropResize, CenterCropResize)) else T


# ---------------------------------------------------------------- shapes, dtypes, devices, determinism
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('step', STEPS, ids=lambda s: repr(s))
def test_shape_dtype_device(step, dtype, device):
    x = batch(dtype=dtype).to(device)
    y = step(x, gen(1))
    assert y.shape == (6, 3, out_frames(step, 64), 25, 2)
    assert y.dtype == dtype and y.device.type == device


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_presets_shapes_and_determinism(name):
    x = batch(T=80)
    lengths = torch.tensor([80, 70, 64, 40, 80, 66])
    pipeline = get_preset(name)
    a, b = pipeline(x, gen(3), lengths), pipeline(x, gen(3), lengths)
    assert torch.equal(a, b)
    assert a.shape[2] == (64 if name.startswith(('a2mc', 'scdnet')) else 80)
    if len(pipeline) and name != 'a2mc_eval': assert not torch.equal(a, pipeline(x, gen(4), lengths))   # the eval crop is deterministic


def test_generator_device_independence():
    "A CPU generator gives the same parameters whatever the batch's device, and CUDA matches CPU."
    x = batch()
    for pipeline in (aimclr_extreme(), a2mc_view('motion'), normal_view()):
        y = pipeline(x, gen(5))
        if torch.cuda.is_available():
            torch.testing.assert_close(pipeline(x.cuda(), gen(5)).cpu(), y, atol=1e-5, rtol=1e-5)
            yc = pipeline(x.cuda(), torch.Generator('cuda').manual_seed(5))   # CUDA generator: draws on the GPU
            assert yc.device.type == 'cuda' and yc.shape == y.shape


def test_fused_equals_step_by_step():
    x = batch(dtype=torch.float64)
    for pipeline in (aimclr_extreme(), aimclr_extreme_v1(), a2mc_view('bone'), normal_view()):
        plain = Compose(pipeline.steps, fuse_linear=False)
        torch.testing.assert_close(pipeline(x, gen(2)), plain(x, gen(2)), atol=1e-12, rtol=1e-12)


def test_caller_batch_untouched():
    x = batch()
    x0 = x.clone()
    for name in sorted(PRESETS): get_preset(name)(x, gen(0), torch.full((6,), 60))
    for step in STEPS: Compose([step, step])(x, gen(0))
    assert torch.equal(x, x0)


def test_replay_with_params():
    x = batch()
    pipeline = a2mc_view()
    y, params = pipeline(x, gen(9), torch.full((6,), 50), return_params=True)
    assert torch.equal(pipeline.apply(x, params), y)


# ---------------------------------------------------------------- identities
def test_identities():
    x = batch(dtype=torch.float64)
    assert torch.equal(Shear().apply(x, dict(matrix=shear_matrix(torch.zeros(6, 6)))), x)
    assert torch.equal(TemporalCrop().apply(x, dict(start=torch.full((6,), 64 // 6))), x)            # start = p
    on = dict(flip=torch.ones(6, dtype=torch.bool))
    assert torch.equal(TimeFlip().apply(TimeFlip().apply(x, on), on), x)
    torch.testing.assert_close(CropResize(size=64).apply(x, dict(start=torch.zeros(6, dtype=torch.long), length=torch.full((6,), 64))), x)
    torch.testing.assert_close(Rotate().apply(x, dict(angles=torch.zeros(6, 3))), x)
    assert torch.equal(PartSwap().apply(x, dict(partner=torch.arange(6), region=torch.ones(6, 64, 25, dtype=torch.bool))), x)
    assert torch.equal(AxisMask().apply(x, dict(axis=torch.zeros(6, dtype=torch.long), apply=torch.zeros(6, dtype=torch.bool))), x)
    tiny = GaussianBlur().apply(x, dict(sigma=torch.full((6,), 0.05)))                      # weights e^{-200}: identity
    torch.testing.assert_close(tiny, x)


@pytest.mark.parametrize('layout', ['ntu25', 'kinect_v1', 'msr20'])
def test_flip_twice_is_identity(layout):
    V = get_layout(layout).num_joints
    x = torch.randn(5, 3, 8, V, 2, dtype=torch.float64)
    on = dict(flip=torch.tensor([True, False, True, True, False]))
    for axis in (None, 0):
        flip = SpatialFlip(layout=layout, mirror_axis=axis)
        assert torch.equal(flip.apply(flip.apply(x, on), on), x)
    assert torch.equal(permute_joints(x, get_layout(layout).mirror), x[:, :, :, list(get_layout(layout).mirror)])


@pytest.mark.parametrize('layout', ['kinect_v1', 'msr20'])
def test_other_layouts(layout):
    V = get_layout(layout).num_joints
    x = torch.randn(4, 3, 64, V, 2)
    for pipeline in (aimclr_extreme('123456', layout=layout), a2mc_view('bone', layout=layout)):
        y, params = pipeline(x, gen(0), return_params=True)
        assert y.shape == (4, 3, 64, V, 2)
        for i in range(4):
            np.testing.assert_allclose(y[i].numpy(), reference(pipeline, x[i].numpy(), [sample_params(p, i) for p in params]), atol=1e-4)
    mixed, region = part_swap(x, gen(0), layout=layout)
    assert region.shape == (4, 64, V)


def test_rotation_keeps_bone_lengths():
    x = batch(200, T=8, dtype=torch.float64, absent=False)
    y = Rotate()(x, gen(0))
    torch.testing.assert_close(joint_to_bone(y).norm(dim=1), joint_to_bone(x).norm(dim=1))
    R = rotation_matrix(Rotate().draw(x, gen(1))['angles'])
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(200, 3, 3))


def test_part_swap_semantics():
    x = batch(8)
    prm = PartSwap(shared=False).draw(x, gen(0))
    y = PartSwap().apply(x, prm)
    r = prm['region'][:, None, :, :, None].expand_as(x)
    assert torch.equal(y[r], x[prm['partner']][r]) and torch.equal(y[~r], x[~r])
    mixed, region = part_swap(x, gen(0))
    assert torch.equal(region, region[:1].expand_as(region))           # shared: one block for the batch (upstream)
    assert torch.equal(PartSwap().draw(shaped(2), gen(0))['partner'], torch.tensor([1, 0]))
    assert torch.equal(PartSwap().draw(shaped(1), gen(0))['partner'], torch.tensor([0]))


def test_absent_persons():
    x = batch(8, absent=False); x[..., 1] = 0
    for pipeline in (normal_view(), aimclr_extreme('12456'), a2mc_view('bone'), a2mc_eval()):
        assert pipeline(x, gen(0), torch.full((8,), 60))[..., 1].abs().sum() == 0
    assert GaussianNoise(p=1.0)(x, gen(0))[..., 1].abs().sum() > 0                              # upstream
    assert GaussianNoise(p=1.0, keep_absent=True)(x, gen(0))[..., 1].abs().sum() == 0


# ---------------------------------------------------------------- distributions of the draws
def assert_fraction(k, n, p):
    "k successes in n Bernoulli(p) draws, within 5 standard deviations."
    assert abs(k - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (k, n, p)

def assert_uniform(samples, low, high):
    assert stats.kstest(np.asarray(samples, np.float64), 'uniform', args=(low, high - low)).pvalue > 1e-4

def assert_discrete_uniform(samples, values):
    counts = np.array([(np.asarray(samples) == v).sum() for v in values])
    assert counts.sum() == len(samples)
    assert stats.chisquare(counts).pvalue > 1e-4, counts


def test_shear_draws():
    prm = Shear(amplitude=0.5, p=0.3).draw(shaped(N_STAT, T=1), gen(0))
    M = prm['matrix']
    assert torch.equal(M[:, [0, 1, 2], [0, 1, 2]], torch.ones(N_STAT, 3))
    for (i, j) in _OFFDIAG: assert_uniform(M[:, i, j], -0.5, 0.5)
    assert_fraction(int(prm['apply'].sum()), N_STAT, 0.3)
    assert abs(np.corrcoef(M[:, 0, 1], M[:, 1, 0])[0, 1]) < 0.05                                # independent


def test_rotation_draws():
    prm = Rotate(p=0.5).draw(shaped(N_STAT, T=1), gen(1))
    deg = np.rad2deg(-prm['angles'].numpy())
    main = deg.argmax(1)
    assert_discrete_uniform(main, [0, 1, 2])
    big = deg[np.arange(N_STAT), main]
    small = np.sort(deg, 1)[:, :2].ravel()
    # the main angle is U(0, 30) but is only identifiable as the max when above 1 degree
    assert_uniform(big[big > 1], 1, 30)
    assert_uniform(small[small < 1], 0, 1)
    assert (deg >= 0).all() and deg.max() <= 30
    assert_fraction(int(prm['apply'].sum()), N_STAT, 0.5)


def test_crop_and_flip_draws():
    start = TemporalCrop(padding_ratio=6).draw(shaped(N_STAT, T=50), gen(2))['start']
    assert_discrete_uniform(start, range(17))                                                     # U{0..2p}, p = 8
    for step in (SpatialFlip(p=0.5), TimeFlip(p=0.5)):
        assert_fraction(int(step.draw(shaped(N_STAT), gen(3))['flip'].sum()), N_STAT, 0.5)


def test_noise_draws():
    prm = GaussianNoise(sigma=0.01, p=0.5).draw(shaped(2000, T=10), gen(4))
    on = prm['apply']
    assert_fraction(int(on.sum()), 2000, 0.5)
    noise = prm['noise'][on].ravel().double().numpy()
    assert (prm['noise'][~on] == 0).all()
    assert abs(noise.mean()) < 5 * 0.01 / math.sqrt(len(noise)) and abs(noise.std() / 0.01 - 1) < 0.01
    assert stats.kstest(noise / 0.01, 'norm').pvalue > 1e-4


def test_blur_and_mask_draws():
    prm = GaussianBlur(sigma_range=(0.1, 2.0), p=0.5).draw(shaped(N_STAT), gen(5))
    assert_uniform(prm['sigma'], 0.1, 2.0)
    assert_fraction(int(prm['apply'].sum()), N_STAT, 0.5)
    prm = AxisMask().draw(shaped(N_STAT), gen(6))
    assert_discrete_uniform(prm['axis'], [0, 1, 2])
    assert_fraction(int(prm['apply'].sum()), N_STAT, 0.5)


def test_crop_resize_draws():
    L = 300
    prm = CropResize(scale=(0.1, 1.0), min_length=64).draw(shaped(N_STAT, T=L), gen(7))
    length, start = prm['length'].numpy(), prm['start'].numpy()
    assert (length >= 64).all() and (length <= L).all() and (start + length <= L).all()
    # P(length == 64) = P(floor(300 s) <= 64) = P(s < 65/300), s ~ U(0.1, 1)
    assert_fraction(int((length == 64).sum()), N_STAT, (65 / L - 0.1) / 0.9)
    long = length > 64
    assert_uniform(length[long] / L, 65 / L, 1.0 + 1 / L)                                          # floor(300 s) above 64
    u = (start + 0.5) / (L - length + 1)                                                           # start ~ U{0..L-length}
    assert_uniform(u, 0, 1)
    short = CropResize().draw(shaped(100, T=L), gen(8), torch.full((100,), 40))
    assert (short['length'] == 40).all() and (short['start'] == 0).all()                          # shorter than 64: whole clip


def test_mask_draws():
    prm = SpatialMask(num_seeds=5).draw(shaped(N_STAT, V=25), gen(9))
    assert_discrete_uniform(prm['seeds'].ravel(), range(25))
    keep = spatial_mask_keep(prm['seeds'], prm['tie_break'], 'ntu25', 8, 2)
    assert ((~keep).sum(1) == 8).all()
    prm = TemporalMask(chunk=4, num_masked=6).draw(shaped(N_STAT, T=64), gen(10))
    assert (prm['masked'].sum(1) == 6).all()
    freq = prm['masked'].float().mean(0).numpy()
    assert np.abs(freq - 6 / 16).max() < 5 * math.sqrt(6 / 16 * 10 / 16 / N_STAT)


def test_part_swap_draws():
    n = 4000
    prm = PartSwap(shared=False).draw(shaped(n, T=64), gen(11))
    region = prm['region']
    parts = get_layout('ntu25').parts
    joints = region.any(1)                                                                         # (n, V)
    n_parts = sum(joints[:, list(j)].all(1).int() for j in parts.values())
    assert all(joints[:, list(j)].all(1).eq(joints[:, list(j)].any(1)).all() for j in parts.values())  # whole parts
    assert_discrete_uniform(n_parts, [3, 4])
    frames = region.any(2)                                                                         # (n, T)
    chunks = frames.view(n, 16, 4)
    assert (chunks.all(2) == chunks.any(2)).all()                                                  # whole chunks
    n_chunks = chunks.all(2).sum(1)
    assert_discrete_uniform(n_chunks, [4, 5, 6, 7])
    runs = (chunks.all(2).int().diff(dim=1) == 1).sum(1) + chunks.all(2)[:, 0].int()
    assert (runs == 1).all()                                                                       # one contiguous run
    offsets = [int((PartSwap().draw(shaped(10, T=64), gen(s))['partner'][0])) for s in range(2000)]
    assert_discrete_uniform(offsets, range(1, 9))                                                  # o ~ U{1..N-2}


# ---------------------------------------------------------------- equality with the per-sample numpy reference
@pytest.mark.parametrize('step', STEPS, ids=lambda s: repr(s))
def test_step_matches_reference(step):
    x = batch(6, T=80, dtype=torch.float64)
    lengths = torch.tensor([80, 75, 64, 30, 80, 70])
    pipeline = Compose([step])
    y, params = pipeline(x, gen(12), lengths, return_params=True)
    for i in range(6):
        want = reference(pipeline, x[i].numpy(), [sample_params(p, i) for p in params])
        np.testing.assert_allclose(y[i].numpy(), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_preset_matches_reference(name):
    x = batch(6, T=80, dtype=torch.float64)
    lengths = torch.tensor([80, 75, 64, 30, 80, 70])
    pipeline = get_preset(name)
    y, params = pipeline(x, gen(13), lengths, return_params=True)
    for i in range(6):
        want = reference(pipeline, x[i].numpy(), [sample_params(p, i) for p in params])
        np.testing.assert_allclose(y[i].numpy(), want, atol=1e-10, rtol=1e-10)
    ref = reference_random(pipeline, x[0].numpy(), np.random.default_rng(0), length=75)
    assert ref.shape == y[0].shape


def test_part_swap_matches_reference():
    x = batch(7, dtype=torch.float64)
    ps = PartSwap(shared=False)
    params = ps.draw(x, gen(14))
    np.testing.assert_array_equal(ps.apply(x, params).numpy(), reference(ps, x.numpy(), params))


def test_crop_resize_matches_interpolate():
    x = batch(3, T=100, dtype=torch.float64)
    start, length = torch.tensor([0, 7, 30]), torch.tensor([100, 93, 41])
    y = CropResize(size=64).apply(x, dict(start=start, length=length))
    for n in range(3):
        crop = x[n, :, start[n]:start[n] + length[n]].permute(0, 2, 3, 1).reshape(1, -1, int(length[n]))
        want = torch.nn.functional.interpolate(crop, size=64, mode='linear', align_corners=False)
        torch.testing.assert_close(y[n], want.reshape(3, 25, 2, 64).permute(0, 3, 1, 2))


def test_blur_gain_and_conv():
    ones = torch.ones(1, 3, 60, 25, 1, dtype=torch.float64)
    for s in (0.5, 1.0, 2.0):
        gain = GaussianBlur().apply(ones, dict(sigma=torch.tensor([s])))[0, 0, 30, 0, 0].item()
        assert abs(gain - sum(math.exp(-k * k / (2 * s * s)) for k in range(-7, 8))) < 1e-12
        assert abs(gain / (s * math.sqrt(2 * math.pi)) - 1) < 0.02                             # about sigma sqrt(2 pi)
        assert abs(GaussianBlur(normalize=True).apply(ones, dict(sigma=torch.tensor([s])))[0, 0, 30, 0, 0].item() - 1) < 1e-12


# ---------------------------------------------------------------- fused passes (the fast paths agree with the plain ones)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_gather_linear_matches_two_steps(dtype):
    x = batch(5, T=20, dtype=dtype)
    index = torch.randint(0, 20, (5, 13), generator=gen(1))
    A = torch.randn(5, 3, 3, generator=gen(2), dtype=torch.float64)
    want = apply_linear(gather_frames(x, index), A)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gather_linear(x, index, A), want, **tol)
    torch.testing.assert_close(gather_linear(x, index, A[0]), apply_linear(gather_frames(x, index), A[0]), **tol)   # one matrix for all
    assert torch.equal(gather_linear(x, index), gather_frames(x, index))
    torch.testing.assert_close(gather_linear(x, matrix=A), apply_linear(x, A), **tol)
    y = gather_linear(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    # by hand: output frame t of sample 0 is A x[:, index[0, t]]
    t = 4
    torch.testing.assert_close(gather_linear(x, index, A)[0, :, t], torch.einsum('ij,jvm->ivm', A[0].to(dtype), x[0, :, index[0, t]]), **tol)
    with pytest.raises(IndexError, match='outside'): gather_linear(x, torch.full((5, 3), 20))
    with pytest.raises(ValueError, match=r'matrix must be'): gather_linear(x, index, torch.eye(2))


@pytest.mark.parametrize('dtype,M', [(torch.float32, 1), (torch.float32, 2), (torch.float32, 3), (torch.float64, 1),
                                     (torch.float64, 2), (torch.float16, 2)])
def test_permute_joints_every_width(dtype, M):
    "The one-word-per-joint path (2, 4, 8 bytes) and the runs path give x[:, :, :, perm]."
    perm = get_layout('ntu25').mirror
    x = torch.randn(3, 3, 7, 25, M).to(dtype)
    want = x[:, :, :, list(perm)]
    assert torch.equal(permute_joints(x, perm), want)
    xt = x.transpose(0, 2)                                                               # not contiguous: runs path
    assert torch.equal(permute_joints(xt, perm), xt[:, :, :, list(perm)])


def test_blur_matrix_is_the_band():
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    T, size = 20, 15
    B = blur_matrix(sigma, T, size, False, dtype=torch.float64)
    w = gaussian_kernel(sigma, size, False)
    for n in range(3):
        for t in range(T):
            for s in range(T):
                want = w[n, s - t + 7].item() if abs(s - t) <= 7 else 0.0
                want = 0.0 if want < torch.finfo(torch.float64).tiny / torch.finfo(torch.float64).eps else want
                assert B[n, t, s].item() == want
    assert blur_matrix(sigma, 4, size, False).shape == (3, 4, 4)                                # shorter than the kernel


def test_axis_mask_and_time_flip_as_maps():
    x = batch(6, T=9)
    axis, on = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([True, True, False, True, False, True])
    assert torch.equal(apply_linear(x, axis_mask_matrix(axis, on)), AxisMask().apply(x, dict(axis=axis, apply=on)))
    assert torch.equal(gather_frames(x, time_flip_index(on, 9)), TimeFlip().apply(x, dict(flip=on)))
    assert time_flip_index(torch.tensor([True, False]), 4).tolist() == [[3, 2, 1, 0], [0, 1, 2, 3]]


FUSED_PIPELINES = [
    [TemporalCrop(), TimeFlip(p=1.0), Shear(), SpatialFlip(p=1.0), AxisMask(p=1.0), Rotate()],
    [TimeFlip(), TemporalCrop(), SpatialMask(), Shear(), GaussianBlur(p=1.0), AxisMask(), SpatialFlip(mirror_axis=0)],
    [Shear(), SpatialFlip(), TemporalCrop(), ToStream('bone'), Rotate(), TemporalMask(), AxisMask()],
    [TemporalCrop(), SpatialFlip(), SpatialMask()],          # only frame picks and joint steps
    [AxisMask(p=1.0), GaussianNoise(p=1.0), AxisMask(p=1.0)],
]


@pytest.mark.parametrize('k', range(len(FUSED_PIPELINES)))
def test_fused_pipelines_equal_step_by_step(k):
    "Frame picks, coordinate maps and joint steps deferred and applied in one pass give the step-by-step result."
    x = batch(6, T=64, dtype=torch.float64)
    fused, plain = Compose(FUSED_PIPELINES[k]), Compose(FUSED_PIPELINES[k], fuse_linear=False)
    y, params = fused(x, gen(4), return_params=True)
    torch.testing.assert_close(y, plain(x, gen(4)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(fused.apply(x, params), y, atol=0, rtol=0)
    for i in range(6):
        np.testing.assert_allclose(y[i].numpy(), reference(fused, x[i].numpy(), [sample_params(p, i) for p in params]), atol=1e-10)


def test_replayed_bad_crop_raises():
    x = batch(2, T=50)
    pipeline = normal_view()
    _, params = pipeline(x, gen(0), return_params=True)
    params[0] = dict(start=torch.tensor([0, 17]))                                         # 2p = 16 for T = 50
    with pytest.raises(ValueError, match='start must be in 0..16'): pipeline.apply(x, params)


def test_integer_draws_match_tensor_bounds():
    "The plain-int fast path of rand_int draws exactly what the per-draw-bounds path draws."
    a = rand_int(1000, 2, 9, gen(3))
    b = rand_int(1000, torch.full((1000,), 2), torch.full((1000,), 9), gen(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match='empty range'): rand_int(3, 5, 4)


# ---------------------------------------------------------------- errors, presets, light import
def test_errors_name_the_argument():
    x = batch()
    with pytest.raises(ValueError, match=r'\(N, C, T, V, M\)'): Shear()(x[0])
    with pytest.raises(ValueError, match='3 coordinates'): Shear().apply(x[:, :2], dict(matrix=torch.eye(3)))
    with pytest.raises(ValueError, match="layout 'ntu25' has 25"): SpatialFlip().apply(x[:, :, :, :20], dict(flip=torch.ones(6, dtype=torch.bool)))
    with pytest.raises(ValueError, match='lengths must be in'): CropResize().draw(shaped(6, T=64), None, torch.full((6,), 65))
    with pytest.raises(ValueError, match='inside the 64 frames'): CropResize().apply(x, dict(start=torch.full((6,), 10), length=torch.full((6,), 60)))
    with pytest.raises(ValueError, match='digits 1-6'): aimclr_extreme('17')
    with pytest.raises(KeyError, match='unknown augmentation preset'): get_preset('nope')
    with pytest.raises(ValueError, match='no body parts'):
        from skelnb.skeleton import Layout
        bare = Layout.from_bones('bare3', ('a', 'b', 'c'), [(0, 1), (1, 2)], center=1)
        PartSwap(layout=bare).draw(shaped(4, T=64, V=3))


def test_aug_method_switches():
    names = lambda c: [type(s).__name__ for s in c]
    assert names(aimclr_extreme('12345')) == ['TemporalCrop', 'Shear', 'SpatialFlip', 'Rotate', 'GaussianNoise', 'GaussianBlur', 'AxisMask']
    assert names(aimclr_extreme('654321'))[-1] == 'TimeFlip'
    assert names(aimclr_extreme_v1())[2:] == ['SpatialFlip', 'Rotate', 'TimeFlip', 'GaussianNoise', 'GaussianBlur', 'AxisMask']
    assert len(get_preset('linear_eval')) == 0
    assert 'Shear(amplitude=0.5' in repr(get_preset('skeletonclr'))


def test_import_is_light():
    code = ("import sys, skelnb.augment.core, skelnb.augment.ops, skelnb.augment.presets, skelnb.augment.reference; "
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_benchmarks_run_small():
    from skelnb.bench import bench_normal_pair, bench_extreme_view
    for bench in (bench_normal_pair, bench_extreme_view):
        r = bench(batch=8, repeats=2, warmup=1)
        assert r['max_abs_diff'] < 1e-4 and r['skelnb_samples_per_s'] > 0 and r['reference_samples_per_s'] > 0
        assert set(r) >= {'speedup', 'skelnb_us_per_sample', 'reference_us_per_sample', 'upstream_us_per_sample', 'load_average'}
        assert r['malloc_tuned'] is False and r['threads'] == torch.get_num_threads()


# ---------------------------------------------------------------- explorer, headless
def test_explorer_headless():
    pytest.importorskip('ipywidgets'); pytest.importorskip('plotly')
    from skelnb.augment.explorer import AugmentExplorer
    clip = np.asarray(batch(1, T=40)[0])
    ex = AugmentExplorer({'a': clip, 'b': clip[::-1].copy()}, augmentation='rotate', seed=2)
    ex.sliders['main_max'].value = 60.0
    want = Rotate(60.0, 1.0, p=1.0)(torch.from_numpy(clip)[None], gen(2))[0].numpy()
    np.testing.assert_allclose(ex.augmented, want, atol=1e-6)
    ex.player.frame = 7
    i = next(i for i, s in enumerate(ex.player.traces.specs) if s['kind'] == 'joints' and s['clip'] == 'augmented' and s['person'] == 0)
    np.testing.assert_allclose(np.stack([ex.player.fig.data[i][k] for k in 'xyz']), want[:, 7, :, 0], atol=1e-6)
    np.testing.assert_allclose(ex.displacement, np.linalg.norm(want - clip, axis=0), atol=1e-6)
    ex.reroll.click()
    assert ex.seed.value == 3
    ex.aug_picker.value = 'preset:a2mc'
    want = a2mc_view()(torch.from_numpy(clip)[None], gen(3), torch.tensor([40]))[0].numpy()
    np.testing.assert_allclose(ex.augmented, want, atol=1e-6)
    assert ex.augmented.shape == ex.original.shape == (3, 64, 25, 2)
    ex.clip_picker.value = 'b'
    ex.aug_picker.value = 'part_swap'
    assert ex.augmented.shape == clip.shape
    with pytest.raises(ValueError, match='unknown augmentation'): AugmentExplorer({'a': clip}, augmentation='nope')
