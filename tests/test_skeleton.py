"""skelnb.skeleton: layouts as checked data (NTU, Kinect v1, MSR and the pose-estimator layouts), landmarks, graphs."""
import numpy as np
import pytest
from skelnb.skeleton import *
from skelnb.skeleton import joint_side, check_layout

# the bone lists as their projects publish them (hand transcriptions)
PYSKL_COCO_INWARD = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6), (5, 0),
                     (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]
OPENPOSE_BODY25_RENDER_PAIRS = [1, 8, 1, 2, 1, 5, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 8, 12, 12, 13, 13, 14, 1, 0,
                                0, 15, 15, 17, 0, 16, 16, 18, 14, 19, 19, 20, 14, 21, 11, 22, 22, 23, 11, 24]
MEDIAPIPE_POSE_CONNECTIONS = [(0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13),
                              (13, 15), (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20),
                              (16, 22), (18, 20), (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
                              (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32)]
COCO_NAMES = ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder', 'left_elbow',
              'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee', 'right_knee',
              'left_ankle', 'right_ankle']

undirected = lambda pairs: {frozenset(p) for p in pairs}


def test_coco17_is_pyskls_tree_in_mmpose_order():
    L = get_layout('coco17')
    assert list(L.joint_names) == COCO_NAMES and L.center == 0
    assert sorted(L.bones) == sorted(PYSKL_COCO_INWARD)        # same (child, parent) orientation as pyskl
    assert get_layout('coco') is L


def test_openpose25_bones_are_openposes_drawing():
    L = get_layout('body25')
    pairs = list(zip(OPENPOSE_BODY25_RENDER_PAIRS[::2], OPENPOSE_BODY25_RENDER_PAIRS[1::2]))
    assert undirected(L.bones) == undirected(pairs) and L.joint_names[L.center] == 'neck'
    assert L.joint_names[8] == 'mid_hip' and L.joint_names[24] == 'right_heel'


def test_mediapipe33_tree_differs_from_the_drawing_only_as_documented():
    L = get_layout('mediapipe')
    dropped = undirected([(9, 10), (11, 12), (17, 19), (18, 20), (23, 24), (29, 31), (30, 32)])
    added = undirected([(0, 9), (0, 10), (0, 11), (0, 12)])
    assert undirected(L.bones) == (undirected(MEDIAPIPE_POSE_CONNECTIONS) - dropped) | added
    assert L.num_joints == 33 and L.joint_names[32] == 'right_foot_index'


@pytest.mark.parametrize('name', ['ntu25', 'kinect_v1', 'msr20', 'coco17', 'openpose25', 'mediapipe33'])
def test_every_layout_is_a_consistent_tree(name):
    L = get_layout(name)
    V = L.num_joints
    assert len(L.bones) == V - 1 and max(L.depths) < V
    assert all(L.mirror[L.mirror[v]] == v for v in range(V))
    for v, w in enumerate(L.mirror):                             # a mirror swaps the sides of one body part
        a, b = joint_side(L.joint_names[v]), joint_side(L.joint_names[w])
        if v != w: assert a[1] == b[1] and {a[0], b[0]} == {'left', 'right'}
    assert sorted(sum(L.parts.values(), ())) == list(range(V))
    for mark in ('origin', 'left_shoulder', 'right_shoulder', 'shoulder_center', 'hip_center', 'spine_mid'):
        assert all(0 <= j < V for j in L.landmark(mark))
    # the ST-GCN partitions: every column of the summed spatial partitions averages the neighbours
    g = Graph(L)
    assert g.A.shape == (3, V, V)
    np.testing.assert_allclose(g.A.sum(0).sum(0), np.ones(V), atol=1e-6)
    assert Graph(L, 'agcn').A.shape == (3, V, V)


def test_pose_estimator_landmarks_sit_where_ntus_do():
    ntu = np.asarray(NTU25.rest_pose)
    for name in ('coco17', 'openpose25', 'mediapipe33'):
        L = get_layout(name); rest = np.asarray(L.rest_pose)
        point = lambda lay, pose, mark: pose[list(lay.landmark(mark))].mean(0)
        for mark in ('left_shoulder', 'right_shoulder', 'hip_center'):
            np.testing.assert_allclose(point(L, rest, mark), point(NTU25, ntu, mark), atol=1e-9)
    assert COCO17.landmark('origin') == (5, 6) and OPENPOSE25.landmark('origin') == (1,)


def test_agcn_graph_of_coco_equals_pyskls_construction():
    def edge2mat(link, n):
        A = np.zeros((n, n))
        for i, j in link: A[j, i] = 1
        return A
    def normalize(A):
        d = A.sum(0)
        return A @ np.diag([1 / x if x > 0 else 0 for x in d])
    ref = np.stack([np.eye(17), normalize(edge2mat(PYSKL_COCO_INWARD, 17)),
                    normalize(edge2mat([(j, i) for i, j in PYSKL_COCO_INWARD], 17))])
    np.testing.assert_allclose(agcn_graph('coco17'), ref, atol=1e-7)


def test_bone_stream_round_trips_on_the_new_layouts():
    rng = np.random.default_rng(0)
    for name in ('coco17', 'openpose25', 'mediapipe33'):
        L = get_layout(name)
        x = rng.normal(size=(2, 4, L.num_joints, 1))                # a 2-D clip
        b = joint_to_bone(x, L)
        np.testing.assert_allclose(bone_to_joint(b, L, center=x[..., L.center, :]), x, atol=1e-12)


# ---------------------------------------------------------------- validation: the layout and the joint are named
NAMES = ('root', 'left_arm', 'right_arm', 'head')
OK = dict(name='toy', joint_names=NAMES, parents=(0, 0, 0, 0), center=0, mirror=(0, 2, 1, 3))


@pytest.mark.parametrize('change, message', [
    (dict(parents=(0, 0, 9, 0)), "layout 'toy': joint 2 ('right_arm') has parent 9, not a joint in 0..3"),
    (dict(parents=(0, 0, -1, 0)), "joint 2 ('right_arm') has parent -1"),
    (dict(parents=(0, 0, 0)), "parents has 3 entries for 4 joints, so joint 3 ('head') has no parent"),
    (dict(parents=(0, 3, 0, 1)), "layout 'toy': the parent tree has a cycle through joint 1 ('left_arm')"),
    (dict(parents=(0, 0, 0, 3)), "joint 3 ('head') is its own parent, but only the centre joint 0 ('root') may be"),
    (dict(parents=(1, 0, 0, 0)), 'the centre joint 0 must be its own parent'),
    (dict(center=7), 'the centre joint 7 is not a joint'),
    (dict(mirror=(0, 1, 2, 3)), "joint 1 ('left_arm') has no left/right partner although joint 2 ('right_arm') exists"),
    (dict(mirror=(0, 2, 3, 1)), "joint 1 ('left_arm') mirrors to joint 2 ('right_arm'), which mirrors to joint 3"),
    (dict(mirror=(0, 2, 1, 8)), "joint 3 ('head') mirrors to 8"),
    (dict(joint_names=('root', 'left_arm', 'left_leg', 'head')), "the left/right pair joint 1 ('left_arm'), joint 2 ('left_leg')"),
    (dict(joint_names=('root', 'arm', 'arm', 'head')), "joints 1 and 2 are both called 'arm'"),
    (dict(parts={'arms': (1, 2, 5)}), "part 'arms' holds 5"),
    (dict(landmarks={'origin': ()}), "landmark 'origin' must list joints"),
    (dict(rest_pose=((0, 0, 0),)), 'rest_pose must be (4, 3)'),
])
def test_bad_layouts_are_refused_naming_layout_and_joint(change, message):
    with pytest.raises(ValueError) as e: Layout(**{**OK, **change})
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize('bones, pairs, message', [
    ([(1, 0), (2, 0), (2, 1)], [(1, 2)], "layout 'bad': the bones form a cycle"),
    ([(1, 0), (2, 0), (3, 0)], [(1, 2)], "bone (3, 0) names joint 3, not a joint in 0..2"),
    ([(1, 0)], [(1, 2)], 'joints [2] are not connected to the centre joint 0'),
    ([(1, 0), (2, 0)], [(1, 2), (2, 0)], "layout 'bad': joint 2 is in two left/right pairs"),
    ([(1, 0), (2, 0)], [(1, 5)], "layout 'bad': the left/right pair (1, 5) names joint 5"),
])
def test_from_bones_refuses_bad_bones_and_pairs(bones, pairs, message):
    with pytest.raises(ValueError) as e: Layout.from_bones('bad', ('neck', 'left_hand', 'right_hand'), bones, 0, pairs)
    assert message in str(e.value), str(e.value)


def test_good_layout_and_check_layout_returns_it():
    L = Layout(**OK)
    assert check_layout(L) is L and L.bones == [(1, 0), (2, 0), (3, 0)]
    assert joint_side('mouth_left') == ('left', 'mouth') and joint_side('r_knee') == ('right', 'knee')
    assert joint_side('spine_mid') is None and joint_side('leftover') is None
    with pytest.raises(KeyError, match="layout 'toy' has no landmark 'hip_center'"): L.landmark('hip_center')
    assert L.landmark('origin') == (0,)


def test_registry_and_aliases():
    assert get_layout('nw_ucla') is KINECT_V1 and get_layout('body25') is OPENPOSE25
    with pytest.raises(KeyError, match="unknown layout 'coco18'"): get_layout('coco18')
    with pytest.raises(ValueError, match='already registered'): register_layout(Layout(**{**OK, 'name': 'coco17'}))
