"""Ship a trained encoder: a slim checkpoint in data/checkpoints/ and its card (recipe, training log, results, checks).

    python tools/release_checkpoint.py runs/main skeletonclr_synthetic --command "skelnb-main"
    python tools/release_checkpoint.py runs/real/nw_ucla-crossclr-s0 crossclr_nw_ucla --command "..." --query-only --half
    python tools/release_checkpoint.py --table      # the README's table of shipped encoders, from the cards

RUN_DIR is a main-job output folder (results.json, pretrain/checkpoint_*.pt). The card's `checks` are what
tests/test_shipped_checkpoints.py re-computes on every machine.
"""
import argparse, json, shutil, sys
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from skelnb.checkpoint import latest_checkpoint, release_checkpoint
from skelnb.methods.catalog import load_method
from skelnb.evaluate import shipped_encoder_checks, result_accuracy
from skelnb.prepare import read_info
from skelnb.bench import machine_info


def table_rows(cards) -> list:
    "The README's table of shipped encoders, one row per card (tests/test_shipped_checkpoints.py checks the README against it)."
    rows = []
    for c in cards:
        a = lambda m, p: f"{result_accuracy(c['results'], m, p, 'k=1 ' if p == 'knn' else ''):.1f}"
        rows.append(f"| `{c['name']}` | {c['method']} | {c['data']['name']} | {a('pretrained', 'knn')} | {a('random init', 'knn')} | "
                    f"{a('pretrained', 'linear probe')} | {a('random init', 'linear probe')} | {a('raw joints', 'ridge floor')} | {c['bytes'] / 1e6:.1f} MB |")
    return rows


def main(argv=None):
    if argv is None and sys.argv[1:] == ['--table']:
        print('\n'.join(table_rows(json.loads(p.read_text()) for p in sorted((ROOT / 'data' / 'checkpoints').glob('*.json'))))); return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run_dir'); p.add_argument('name'); p.add_argument('--command', required=True)
    p.add_argument('--query-only', action='store_true', help='drop the momentum side (restored from the query side on reading)')
    p.add_argument('--half', action='store_true', help='store the weights in float16 (read back as float32)')
    p.add_argument('--no-embeddings', action='store_true', help="do not ship the run's per-epoch embedding snapshots")
    a = p.parse_args(argv)
    run, out = Path(a.run_dir), ROOT / 'data' / 'checkpoints'
    res = json.loads((run / 'results.json').read_text())
    src = latest_checkpoint(run / 'pretrain')
    dst = release_checkpoint(src, out / f'{a.name}.pt', query_only=a.query_only, half=a.half)
    ck = torch.load(dst, weights_only=True)
    model = load_method(dst)
    root = Path(res['dataset'])
    info = read_info(root)
    card = {'name': a.name, 'file': f'data/checkpoints/{a.name}.pt', 'bytes': dst.stat().st_size,
            'method': ck['method'], 'method_version': ck['method_version'], 'command': a.command,
            'data': {'name': info.get('name'), 'source': info.get('source'), 'generator': info.get('generator'), 'splits': info.get('splits')},
            'method_config': ck['method_config'], 'train_config': ck.get('config'), 'release': ck.get('release'),
            'measured_on': machine_info(),
            'seconds': res.get('seconds'), 'results': res.get('results'),
            'history': [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in ck.get('history', [])],
            'checks': shipped_encoder_checks(model, root)}
    snaps = src.parent / 'embeddings.npz'        # embeddings of fixed test clips after every epoch (EmbeddingSnapshotCB)
    if snaps.is_file() and not a.no_embeddings: shutil.copyfile(snaps, out / f'{a.name}.embeddings.npz'); card['embeddings'] = f'data/checkpoints/{a.name}.embeddings.npz'
    (out / f'{a.name}.json').write_text(json.dumps(card, indent=1) + '\n')
    print(f"{dst} ({card['bytes'] / 1e6:.1f} MB), KNN-1 on the slice {card['checks']['knn1_slice']:.2f} %")


if __name__ == '__main__': main()
