"""Checks of skelnb.evaluate against brute-force references and hand examples (small data, fast)."""
import json, math
import numpy as np
import pytest
import torch
import torch.nn as nn

from skelnb.evaluate import (extract_features, knn_accuracy, knn_predict, knn_monitor, ridge_fit, ridge_probe, logistic_probe,
                             linear_evaluation, finetune_evaluation, semi_supervised_evaluation, subset_indices,
                             ensemble_scores, ensemble_accuracy, ENSEMBLE_WEIGHTS, run_protocols, check_protocols,
                             results_table, save_results, LayoutDataset, split_validation, dataset_targets,
                             LinearProbe, FineTuneProbe, FeatureDataset, BestEpochCB, probe_config, predict_dataset)
from skelnb.cli import evaluate_cli
from skelnb.data import ArrayDataset, load_subset, make_loader, derive_seed
from skelnb.train import ToyClips, ToyMoCo, Trainer, TrainConfig
from skelnb.skeleton import convert_layout


@pytest.fixture(scope='module')
def clips():
    return ToyClips(n=96, num_classes=4, frames=12, joints=5, seed=0), ToyClips(n=48, num_classes=4, frames=12, joints=5, seed=1)


class Flat(nn.Module):
    "A plain module clips -> (N, D) with BatchNorm and dropout (modes matter)."
    def __init__(self, d_in, d=8):
        super().__init__(); self.lin = nn.Linear(d_in, d); self.bn = nn.BatchNorm1d(d); self.drop = nn.Dropout(0.5)
    def forward(self, x): return self.drop(self.bn(self.lin(x.flatten(1))))


def brute_knn(trf, trl, tef, tel, k, T=0.1, weighted=False):
    trf, tef = trf.double().numpy(), tef.double().numpy()
    hits = 0
    for q, y in zip(tef, tel.tolist()):
        s = np.array([q @ t / np.linalg.norm(q) / np.linalg.norm(t) for t in trf])
        nb = np.argsort(-s, kind='stable')[:k]
        votes = np.zeros(int(trl.max()) + 1)
        for j in nb: votes[int(trl[j])] += math.exp(s[j] / T) if weighted else 1
        hits += int(np.argmax(votes)) == y
    return 100 * hits / len(tel)


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    trf, tef = torch.randn(60, 6, generator=g, dtype=torch.float64), torch.randn(25, 6, generator=g, dtype=torch.float64)
    trl, tel = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (25,), generator=g)
    for k, w in [(1, False), (5, False), (10, True), (20, True), (40, True)]:
        assert knn_accuracy(trf, trl, tef, tel, k, weighted=w) == pytest.approx(brute_knn(trf, trl, tef, tel, k, weighted=w))


def test_knn_hand_example_and_errors():
    P = torch.tensor([[1., 0.], [0., 1.], [0.1, 1.]]); y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1., 0.2]])
    assert knn_predict(P, y, q, k=1).tolist() == [0]
    assert knn_predict(P, y, q, k=3).tolist() == [1]          # two votes against one
    assert knn_accuracy(P, y, q, torch.tensor([0]), k=1) == 100.0
    with pytest.raises(ValueError, match='k=4'): knn_accuracy(P, y, q, torch.tensor([0]), k=4)
    with pytest.raises(ValueError, match='3 feature rows but 2 labels'): knn_accuracy(P, y[:2], q, torch.tensor([0]))
    with pytest.raises(ValueError, match='1 feature rows but 2 labels'): knn_accuracy(P, y, q, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'\(M, 2\)'): knn_accuracy(P, y, torch.ones(1, 3), torch.tensor([0]))


def test_extract_features_modes_and_order(clips):
    tr, _ = clips
    torch.manual_seed(0)
    m = Flat(3 * 12 * 5)
    m.train()
    f, y = extract_features(m, tr, batch_size=10)
    assert m.training and f.dtype == torch.float32 and f.shape == (96, 8)
    assert torch.equal(y, torch.as_tensor(tr.targets))
    m.eval()
    with torch.no_grad(): ref = m(tr.x)
    assert torch.allclose(f, ref, atol=1e-6)
    m.eval(); extract_features(m, tr); assert not m.training   # mode restored, also eval
    toy = ToyMoCo(hidden=8, dim=8)
    f2, _ = extract_features(toy, tr)
    with torch.no_grad(): toy.eval(); assert torch.allclose(f2, toy.encode(tr.x), atol=1e-6)
    with pytest.raises(ValueError, match='features'): extract_features(nn.Identity(), tr)   # 5-D output is not (N, D)


def test_knn_monitor_in_trainer(clips):
    tr, te = clips
    toy = ToyMoCo(hidden=8, dim=8, queue_size=32)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule='constant', device='cpu', progress=False, monitor_every=1)
    t = Trainer(toy, tr, cfg, monitor=knn_monitor(tr, te, k=(1, 5)))
    t.fit()
    assert 'knn1' in t.history[-1] and 'knn5' in t.history[-1]
    f1, y1 = extract_features(toy, tr); f2, y2 = extract_features(toy, te)
    assert t.history[-1]['knn1'] == pytest.approx(knn_accuracy(f1, y1, f2, y2, 1))
    assert t.history[-1]['knn5'] == pytest.approx(knn_accuracy(f1, y1, f2, y2, 5, weighted=True))
    with pytest.raises(ValueError, match='larger than the training set'): knn_monitor(tr, te, k=1000)


def test_ridge_probe_against_lstsq():
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (50,), generator=g)
    W, b = ridge_fit(X, y, alpha=2.0)
    Xa = np.hstack([X.numpy(), np.ones((50, 1))])
    Y = np.eye(3)[y.numpy()]
    # penalise W but not the bias: augmented rows sqrt(alpha) * [I 0]
    A = np.vstack([Xa, np.hstack([np.sqrt(2.0) * np.eye(4), np.zeros((4, 1))])])
    sol = np.linalg.lstsq(A, np.vstack([Y, np.zeros((4, 3))]), rcond=None)[0]
    np.testing.assert_allclose(W.numpy(), sol[:4], atol=1e-9); np.testing.assert_allclose(b.numpy(), sol[4], atol=1e-9)
    r = ridge_probe(X, y, X, y, alpha=2.0, standardize=False)
    pred = (Xa @ sol).argmax(1)
    assert r['accuracy'] == pytest.approx(100 * (pred == y.numpy()).mean())


def test_logistic_probe_gradient_zero():
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(80, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (80,), generator=g)
    r = logistic_probe(X, y, X, y, weight_decay=0.1, standardize=False, return_model=True)
    W, b = [t.clone().requires_grad_(True) for t in r['model']]
    loss = nn.functional.cross_entropy(X @ W + b, y) + 0.05 * (W * W).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-6 and b.grad.abs().max() < 1e-6     # stationary point of the convex objective
    assert r['accuracy'] == pytest.approx(100 * ((X @ W + b).argmax(1) == y).double().mean().item())


def test_linear_evaluation_frozen_and_cached(clips):
    tr, te = clips
    torch.manual_seed(0); enc = Flat(3 * 12 * 5); enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    a = linear_evaluation(enc, tr, te, epochs=3, lr=0.5, milestones=(2,), batch_size=16)
    b = linear_evaluation(enc, tr, te, epochs=3, lr=0.5, milestones=(2,), batch_size=16, cache_features=True)
    assert torch.allclose(a['scores'], b['scores'], atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())   # BN stats untouched: eval mode
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert a['selection'] == 'last epoch' and 'accuracy_at_best_val' not in a
    # the reported accuracy is the argmax of the returned last-epoch scores
    assert a['accuracy'] == pytest.approx(100 * (a['scores'].argmax(1) == torch.as_tensor(te.targets)).double().mean().item())
    v = linear_evaluation(enc, tr, te, epochs=4, lr=0.5, milestones=(), batch_size=16, val_fraction=0.25, eval_every=1, cache_features=True)
    assert v['val_clips'] == 24 and v['train_clips'] == 72 and 'validation' in v['selection_note']
    assert 1 <= v['best_val_epoch'] <= 4


def test_linear_evaluation_is_the_upstream_loop(clips):
    "The probe trained by the Trainer is the plain loop: N(0, 0.01) head, SGD, the lr x0.1 at the milestone, the seeded order."
    tr, te = clips
    torch.manual_seed(0); enc = Flat(3 * 12 * 5)
    r = linear_evaluation(enc, tr, te, epochs=3, lr=0.5, milestones=(2,), batch_size=16)
    enc.eval()
    head = nn.Linear(8, 4)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, 8, generator=torch.Generator().manual_seed(derive_seed(0, 'linear_head'))) * 0.01); head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    loader = make_loader(tr, batch_size=16, shuffle=True, seed=derive_seed(0, 'linear_order'))
    for epoch in range(3):
        for g in opt.param_groups: g['lr'] = 0.5 * (0.1 if epoch >= 2 else 1.0)
        for b in loader:
            with torch.no_grad(): f = enc(b['x'])
            loss = nn.functional.cross_entropy(head(f), b['label']); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): s = head(enc(te.x)).double()
    assert torch.allclose(r['scores'], s, atol=1e-6)


def test_probes_follow_the_method_contract(clips):
    tr, te = clips
    torch.manual_seed(0); enc = Flat(3 * 12 * 5)
    f, y = extract_features(enc, tr)
    fv, yv = extract_features(enc, te)
    probe = LinearProbe(None, 4, in_features=8, seed=3)
    best = BestEpochCB(FeatureDataset(fv, yv), every=1)
    t = Trainer(probe, FeatureDataset(f, y), probe_config(4, 0.5, 0.9, 0.0, (), 0.1, 16, 0, 'cpu'), callbacks=[best]).fit()
    vals = [r['val_accuracy'] for r in t.history]
    assert len(vals) == 4 and best.best[0] == 1 + vals.index(max(vals)) and best.best[1] == max(vals)
    assert all('loss' in r and 'top1' in r for r in t.history)
    s, yy, idx = predict_dataset(probe, FeatureDataset(fv, yv))
    assert s.shape == (48, 4) and torch.equal(yy, yv) and torch.equal(idx, torch.arange(48))
    class WithBackbone(nn.Module):
        def __init__(self):
            super().__init__(); self.backbone = nn.Sequential(nn.Linear(180, 4), nn.Dropout(0.5)); self.other = nn.Linear(4, 4)
        def encode(self, x): return self.other(self.backbone(x.flatten(1)))
    ft = FineTuneProbe(WithBackbone(), 4, example=tr.x[:2], freeze_bn=True)
    assert [n for n, p in ft.named_parameters() if p.requires_grad] == ['encoder.backbone.0.weight', 'encoder.backbone.0.bias', 'head.weight', 'head.bias']
    ft.train()
    assert ft.training and not ft.encoder.training                     # freeze_bn: batch norms as in evaluation
    with pytest.raises(ValueError, match='in_features'): LinearProbe(enc, 4)


def test_split_validation_disjoint_and_balanced(clips):
    tr, _ = clips
    a, b = split_validation(tr, 0.25, seed=3)
    assert not set(a.indices) & set(b.indices) and len(a) + len(b) == len(tr)
    assert np.bincount(dataset_targets(b)).tolist() == [6, 6, 6, 6]


def test_semi_supervised_subsets_and_stats(clips, tmp_path):
    tr, te = clips
    torch.manual_seed(0); enc = Flat(3 * 12 * 5)
    rows = semi_supervised_evaluation(enc, tr, te, fractions=(0.25,), seeds=(0, 1), subset_dir=tmp_path, epochs=2, milestones=(), batch_size=8)
    r = rows[0]
    assert r['accuracy'] == pytest.approx(np.mean(r['per_seed'])) and r['std'] == pytest.approx(np.std(r['per_seed']))
    for s in (0, 1):
        idx = load_subset(tmp_path / f'train_p0.25_seed{s}.json')
        assert np.bincount(tr.targets[idx]).tolist() == [6, 6, 6, 6]
    idx0, path = subset_indices(tr, 0.25, 0, tmp_path)
    assert path.exists() and np.array_equal(idx0, load_subset(path))
    # fine-tuning changes a copy only
    w = enc.lin.weight.clone()
    finetune_evaluation(enc, tr, te, epochs=1, milestones=(), batch_size=16)
    assert torch.equal(enc.lin.weight, w)


def test_finetune_trains_backbone_only():
    class M(nn.Module):
        def __init__(self):
            super().__init__(); self.backbone = nn.Linear(60, 4); self.other = nn.Linear(4, 4)
        def encode(self, x): return self.other(self.backbone(x.flatten(1)))
    tr = ToyClips(n=32, num_classes=2, frames=4, joints=5, seed=0)
    m = M()
    r = finetune_evaluation(m, tr, tr, epochs=2, milestones=(), batch_size=8, keep_scores=True)
    assert r['scores'].shape == (32, 2) and r['train_clips'] == 32


def test_ensemble_against_hand_sum():
    g = torch.Generator().manual_seed(0)
    s = {k: torch.randn(30, 5, generator=g) for k in ('joint', 'motion', 'bone')}
    y = torch.randint(0, 5, (30,), generator=g)
    r = ensemble_accuracy(s, y, 'aimclr')
    hand = 0.6 * s['joint'].double() + 0.6 * s['bone'].double() + 0.4 * s['motion'].double()
    assert r['accuracy'] == pytest.approx(100 * (hand.argmax(1) == y).double().mean().item())
    eq, _ = ensemble_scores(s, 'equal')
    assert torch.allclose(eq, s['joint'].double() + s['motion'].double() + s['bone'].double())
    perm = torch.randperm(30, generator=g)
    al, ref = ensemble_scores({'joint': s['joint'], 'bone': s['bone'][perm]}, {'joint': 1, 'bone': 2},
                              index={'joint': torch.arange(30), 'bone': perm})
    assert torch.allclose(al, s['joint'].double() + 2 * s['bone'].double())
    with pytest.raises(ValueError, match='unknown ensemble weights'): ensemble_scores(s, 'tuned')
    with pytest.raises(ValueError, match='shape'): ensemble_scores({'joint': s['joint'], 'bone': s['bone'][:3]}, 'equal')
    assert ENSEMBLE_WEIGHTS['aimclr'] == {'joint': 0.6, 'bone': 0.6, 'motion': 0.4}


def test_layout_dataset_converts():
    x = torch.randn(4, 3, 6, 25, 1)
    ds = ArrayDataset(x, np.arange(4) % 2, layout='ntu25')
    v = LayoutDataset(ds, 'ntu25', 'kinect_v1')
    assert torch.equal(v[2]['x'], convert_layout(x[2], 'ntu25', 'kinect_v1'))
    assert v.targets.tolist() == [0, 1, 0, 1]


def test_protocol_names_and_table(clips, tmp_path):
    tr, te = clips
    with pytest.raises(ValueError, match=r"unknown protocol\(s\) \['svm'\]"): check_protocols('knn,svm')
    torch.manual_seed(0)
    rows = run_protocols(Flat(3 * 12 * 5), tr, te, ['knn', 'probe'], ks=(1, 5))
    assert [r['protocol'] for r in rows] == ['knn', 'knn', 'probe', 'probe']
    t = results_table(rows)
    assert t.count('\n') == len(rows) + 1 and f"{rows[0]['accuracy']:.2f}" in t
    p = save_results(rows + [{'protocol': 'x', 'accuracy': 1.0, 'scores': torch.ones(2)}], tmp_path / 'r.json', data='toy')
    d = json.loads(p.read_text())
    assert d['data'] == 'toy' and len(d['results']) == 5 and 'scores' not in d['results'][-1]


def test_cli_on_toy_checkpoint(tmp_path):
    from skelnb.data import ensure_synthetic_dataset, SkeletonDataset
    root = ensure_synthetic_dataset()
    toy = ToyMoCo(hidden=8, dim=8, queue_size=32)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, schedule='constant', device='cpu', progress=False)
    t = Trainer(toy, SkeletonDataset(root, 'train'), cfg); t.fit()
    ck = t.save_checkpoint(tmp_path / 'c.pt')
    rows = evaluate_cli(['--checkpoint', str(ck), '--data', str(root), '--protocols', 'knn', '--out', str(tmp_path / 'o')])
    f1, y1 = extract_features(toy, SkeletonDataset(root, 'train')); f2, y2 = extract_features(toy, SkeletonDataset(root, 'test'))
    assert rows[0]['accuracy'] == pytest.approx(knn_accuracy(f1, y1, f2, y2, 1))
    assert json.loads((tmp_path / 'o' / 'results.json').read_text())['results'][0]['protocol'] == 'knn'
    with pytest.raises(ValueError, match='magic'):
        evaluate_cli(['--checkpoint', str(ck), '--data', str(root), '--protocols', 'knn,magic', '--out', str(tmp_path / 'x')])
    bad = tmp_path / 'bad.pt'; bad.write_bytes(b'not a checkpoint')
    with pytest.raises(Exception, match='bad.pt'):
        evaluate_cli(['--checkpoint', str(bad), '--data', str(root), '--protocols', 'knn', '--out', str(tmp_path / 'y')])
