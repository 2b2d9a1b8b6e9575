"""Measure whether an A2MC configuration collapses on the embedded synthetic actions, next to its untrained twin.

Trains `A2MC(A2MCConfig.preset(PRESET, **CFG))` with `Trainer(method_train_config('a2mc', PRESET, **TCFG))` on one
CPU thread, records the collapse statistics of the backbone features of a fixed batch of 64 training clips every
`--every` optimizer steps (centred per-dimension std, effective rank, raw mean pair cosine, and `qq`, the mean pair
cosine of the unit query embeddings), then the KNN-1 accuracy (test clips against training clips) and a logistic
probe of the trained model and of the same model untrained (same seed). With `--save`, the run is added to
`data/results/a2mc_collapse_ablations.json` (replacing a run of the same name).

    python tools/a2mc_collapse.py --name stgcn_lesson_v2 --preset lesson --tcfg '{"epochs": 4}' --save
    python tools/a2mc_collapse.py --name scdnet_lesson_v2 --preset lesson_scdnet --tcfg '{"epochs": 2}' --every 3 --save
"""
import argparse, json, os, platform, shlex, tempfile, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
import torch.nn.functional as F

from skelnb.data import SkeletonDataset, ensure_synthetic_dataset, SYNTHETIC_VERSION
from skelnb.evaluate import extract_features, knn_accuracy, logistic_probe
from skelnb.methods.a2mc import A2MC, A2MCConfig
from skelnb.skeleton import to_stream
from skelnb.train import Callback, Trainer, embedding_stats, method_train_config, seed_everything

RESULTS = Path(__file__).resolve().parents[1] / 'data' / 'results' / 'a2mc_collapse_ablations.json'


def fixed_stats(method, x) -> dict:
    "Collapse statistics of the backbone features of clips `x` (centred, as `CollapseCB`; `raw_std` not centred) and `qq` of their query embeddings."
    was = method.training
    method.eval()
    try:
        with torch.no_grad():
            f = method.encode(x)
            xe = method.eval_aug(x, None, None)
            if method.config.stream != 'joint': xe = to_stream(xe, method.config.stream, method.config.layout)
            q = method.embed(xe, 'q')
    finally: method.train(was)
    st = {k: v for k, v in embedding_stats(f, centre=True).items() if k in ('emb_std', 'emb_rank', 'emb_cos')}
    st['raw_std'] = embedding_stats(f)['emb_std']  # per-dimension std of the unit features, not centred
    st['qq'] = sum(float((v @ v.t()).mean()) for v in q.values()) / len(q)
    return {k: round(v, 5) for k, v in st.items()}


class StepStats(Callback):
    "`fixed_stats` of a fixed batch after every `every`-th optimizer step (and the first), in `rows`."
    name, order = 'step_stats', 60
    def __init__(self, x, every: int): self.x, self.every, self.rows = x, every, []
    def after_step(self, trainer):
        n = trainer.step + 1                # optimizer steps taken (the Trainer counts the step after this event)
        if n == 1 or n % self.every == 0: self.rows.append({'step': n, **fixed_stats(trainer.method, self.x)})


def evaluate(method, train_ds, test_ds, x) -> dict:
    "KNN-1 and logistic-probe accuracy (%) of the backbone features, and the collapse statistics of the fixed batch."
    ftr, ytr = extract_features(method, train_ds); fte, yte = extract_features(method, test_ds)
    return {'knn1': round(knn_accuracy(ftr, ytr, fte, yte, 1), 2), 'probe': round(logistic_probe(ftr, ytr, fte, yte)['accuracy'], 2),
            **fixed_stats(method, x)}


def run(name, preset='lesson', cfg=None, tcfg=None, every=5, seed=0) -> dict:
    torch.set_num_threads(1)
    cfg, tcfg = cfg or {}, tcfg or {}
    root = ensure_synthetic_dataset()
    train_ds, test_ds = SkeletonDataset(root, 'train'), SkeletonDataset(root, 'test')
    idx = torch.linspace(0, len(train_ds) - 1, 64).round().long()
    x = torch.stack([train_ds[int(i)]['x'] for i in idx])
    seed_everything(seed)
    method = A2MC(A2MCConfig.preset(preset, **cfg))
    twin = evaluate(method, train_ds, test_ds, x)
    steps = StepStats(x, every)
    steps.rows.append({'step': 0, **fixed_stats(method, x)})
    t = method_train_config('a2mc', preset, progress=False, out_dir=tempfile.mkdtemp(prefix='a2mc_collapse_'), **tcfg)
    t0 = time.perf_counter()
    trainer = Trainer(method, train_ds, t, callbacks=[steps]).fit()
    secs = time.perf_counter() - t0
    epochs = [{k: round(r[k], 5) for k in ('epoch', 'loss', 'nce', 'emb_std', 'emb_rank', 'emb_cos', 'collapsed') if k in r} for r in trainer.history]
    return {'name': name, 'data_version': SYNTHETIC_VERSION, 'preset': preset, 'cfg': cfg, 'tcfg': tcfg, 'seed': seed,
            'seconds': round(secs, 1), 'threads': torch.get_num_threads(), 'cpu': platform.processor() or platform.machine(),
            'trained': evaluate(method, train_ds, test_ds, x), 'twin': twin, 'epochs': epochs, 'steps': steps.rows}


def save(rec: dict, path: Path = RESULTS):
    "Add `rec` to the ablation file's `runs` (a run of the same name is replaced)."
    d = json.loads(path.read_text())
    d['runs'] = [r for r in d['runs'] if r['name'] != rec['name']] + [rec]
    path.write_text(json.dumps(d, indent=1) + '\n')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--name', required=True)
    p.add_argument('--preset', default='lesson')
    p.add_argument('--cfg', default='{}', help='JSON A2MCConfig overrides')
    p.add_argument('--tcfg', default='{}', help='JSON TrainConfig overrides')
    p.add_argument('--every', type=int, default=5, help='optimizer steps between the statistics')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--save', action='store_true', help='add the run to data/results/a2mc_collapse_ablations.json')
    p.add_argument('--out', help='also write the whole record to this JSON file')
    a = p.parse_args()
    rec = run(a.name, a.preset, json.loads(a.cfg), json.loads(a.tcfg), a.every, a.seed)
    rec['command'] = (f'python tools/a2mc_collapse.py --name {a.name} --preset {a.preset} --cfg {shlex.quote(a.cfg)} '
                      f'--tcfg {shlex.quote(a.tcfg)} --every {a.every} --seed {a.seed}')
    print(json.dumps({k: rec[k] for k in ('name', 'seconds', 'trained', 'twin')}), flush=True)
    print(json.dumps(rec['steps'][-3:]), flush=True)
    if a.out: Path(a.out).write_text(json.dumps(rec, indent=1))
    if a.save: save(rec)
