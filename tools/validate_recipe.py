"""One validation run of a main-job recipe: the rows of data/results/main_recipe_validation.json.

    python tools/validate_recipe.py motion_lr2e3 --method skeletonclr \
        --cfg '{"hidden_channels": 8, "hidden_dim": 128, "feature_dim": 128, "queue_size": 256, "momentum": 0.99,
                "temperature": 0.2, "dropout": 0.1, "stream": "motion"}' \
        --tcfg '{"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0001, "schedule": "cosine", "warmup_epochs": 0.5,
                 "epochs": 15, "batch_size": 16}'

Protocol: pretraining on every training clip of the embedded data without labels; KNN-1 and the L-BFGS logistic probe
(penalty 1e-4) fitted on training subjects 1-4 and scored on training subjects 5-6; the ridge floor on raw joints on the
same split; the test split (subjects 7-10) is never read. Prints the row as JSON; with `--record "what changed"` it is
also appended to data/results/main_recipe_validation.json with its command. Rows whose `view` names an augmentation the library does not have (a yaw
range, crop-resize, the face-the-camera normalisation) were made with an experiment hook that is not shipped.
"""
import argparse, json, shlex, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from skelnb.methods.catalog import build_method, with_data_layout
from skelnb.train import method_train_config, Trainer
from skelnb.data import SkeletonDataset, resolve_dataset, ridge_floor
from skelnb.evaluate import extract_features, knn_accuracy, logistic_probe
RESULTS = Path(__file__).resolve().parent.parent / 'data' / 'results' / 'main_recipe_validation.json'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('name'); p.add_argument('--method', default='skeletonclr'); p.add_argument('--preset', default='lesson')
    p.add_argument('--cfg', default='{}', help='method config fields (JSON)'); p.add_argument('--tcfg', default='{}', help='TrainConfig fields (JSON)')
    p.add_argument('--threads', type=int, default=1); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--monitor', type=int, default=3, help='score the validation clips every this many epochs (0: never)')
    p.add_argument('--record', metavar='CHANGE', help='append the row, with this description of what changed, to --results')
    p.add_argument('--view', default='normal view, then the motion stream', help="the row's description of the views")
    p.add_argument('--results', default=str(RESULTS), help='the JSON file of validation rows')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = resolve_dataset('synthetic')
    train = SkeletonDataset(root, 'train')
    subject = np.asarray(train.meta['subject'])
    fit_idx, val_idx = np.flatnonzero(subject < 5), np.flatnonzero(subject >= 5)
    fit, val = SkeletonDataset(root, 'train', subset=fit_idx), SkeletonDataset(root, 'train', subset=val_idx)

    def measure(model):
        ftr, ytr = extract_features(model, fit); fva, yva = extract_features(model, val)
        return {'knn1': round(knn_accuracy(ftr, ytr, fva, yva, 1), 2), 'probe': round(logistic_probe(ftr, ytr, fva, yva)['accuracy'], 2)}

    cfg, tcfg = json.loads(a.cfg), json.loads(a.tcfg)
    over = with_data_layout(a.method, train, cfg)
    torch.manual_seed(a.seed); twin = measure(build_method(a.method, a.preset, seed=a.seed, **over))
    torch.manual_seed(a.seed); model = build_method(a.method, a.preset, seed=a.seed, **over)
    tc = method_train_config(a.method, a.preset, seed=a.seed, device='cpu', out_dir=None, progress=False, **tcfg)
    tc.monitor_every = a.monitor
    curve = []
    def monitor(trainer, epoch):
        r = measure(trainer.method); curve.append([epoch, r['knn1'], r['probe']]); return r
    t0 = time.time(); Trainer(model, train, tc, monitor if a.monitor else None).fit(); seconds = time.time() - t0
    floor = ridge_floor(root, 'train', 'train', train_subset=fit_idx, test_subset=val_idx)['accuracy']
    validation = {'pretrained': measure(model), 'random_init_twin': twin, 'ridge_floor': round(100 * floor, 2)}
    print(json.dumps({'name': a.name, 'method': a.method, 'method_config': cfg, 'train_config': tcfg, 'seed': a.seed,
                      'seconds': round(seconds, 1), 'validation': validation, 'monitor_curve_epoch_knn1_probe': curve}))
    if a.record:
        command = ['python', 'tools/validate_recipe.py', a.name, '--method', a.method, '--cfg', json.dumps(cfg), '--tcfg', json.dumps(tcfg)]
        if a.seed: command += ['--seed', str(a.seed)]
        record(Path(a.results), {'name': a.name, 'method': a.method, 'data': 'embedded v2', 'method_config': cfg, 'train_config': tcfg,
                                 'view': a.view, 'change': a.record, 'seconds_one_thread_shared_cpu': round(seconds, 1),
                                 'validation': validation, 'monitor_curve_epoch_knn1_probe': curve, 'command': shlex.join(command)})


def record(path: Path, row: dict):
    "Append `row` to the validation file (a row of the same name is replaced: a re-run)."
    d = json.loads(path.read_text())
    d['rows'] = [r for r in d['rows'] if r['name'] != row['name']] + [row]
    path.write_text(json.dumps(d, indent=1))


if __name__ == '__main__':
    main()
