"""Strip widget state and widget-view outputs from notebooks (nbdev_clean keeps them)."""
import json, sys
from pathlib import Path

WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'


def clean_notebook(path: Path) -> bool:
    "Remove `metadata.widgets` and widget-view outputs from `path`; return True if the file changed."
    text = path.read_text(encoding='utf-8')
    nb = json.loads(text)
    nb.get('metadata', {}).pop('widgets', None)
    for cell in nb.get('cells', []):
        outs = cell.get('outputs')
        if outs: cell['outputs'] = [o for o in outs if WIDGET_VIEW not in o.get('data', {})]
    new = json.dumps(nb, indent=1, ensure_ascii=False) + '\n'
    if new != text:
        path.write_text(new, encoding='utf-8')
        return True
    return False


if __name__ == '__main__':
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / 'nbs'
    changed = [p for p in sorted(root.rglob('*.ipynb')) if '.ipynb_checkpoints' not in p.parts and clean_notebook(p)]
    for p in changed: print(f'cleaned {p}')
