"""Shipped encoders (data/checkpoints/): each loads safely, rebuilds its method, and reproduces its card's checks.

A card (`NAME.json`, written by tools/release_checkpoint.py) holds the recipe, the training log, the results and two
checks re-computed here: the pooled features of fixed test clips (a fingerprint, compared with a tolerance because
x86 CPUs differ in the last bits of vectorised sums) and cosine KNN-1 on an even slice of the dataset.
"""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from skelnb.checkpoint import CHECKPOINT_FORMAT
from skelnb.methods.catalog import load_method
from skelnb.evaluate import shipped_encoder_checks
from skelnb.skeleton import get_layout
from skelnb.data import ensure_synthetic_dataset, _synthetic_params

ROOT = Path(__file__).resolve().parent.parent
from conftest import SHARED_DATA
CARDS = sorted((ROOT / 'data' / 'checkpoints').glob('*.json'))


def test_there_are_shipped_encoders_within_the_size_budget():
    assert CARDS, 'no shipped checkpoints in data/checkpoints'
    sizes = [(ROOT / json.loads(c.read_text())['file']).stat().st_size for c in CARDS]
    assert max(sizes) <= 5e6 and sum(sizes) <= 30e6, sizes


@pytest.fixture(params=CARDS, ids=lambda p: p.stem)
def card(request):
    return json.loads(request.param.read_text())


def test_checkpoint_loads_safely_and_rebuilds_its_method(card):
    path = ROOT / card['file']
    raw = torch.load(path, map_location='cpu', weights_only=True)          # plain tensors and data only
    assert raw['format'] == CHECKPOINT_FORMAT and 'optimizer' not in raw and 'rng' not in raw
    assert (raw['method'], raw['method_version']) == (card['method'], card['method_version'])
    model = load_method(path)                                               # strict: every key and shape fits
    dropped = raw.get('release', {}).get('key_side_from', {})               # a compact release stores the query side only
    assert set(raw['model']) == {k for k in model.state_dict() if k.split('.')[0] not in dropped}
    for key, query in dropped.items():                                      # ... and reading restores the key side from it
        q = dict(getattr(model, query).state_dict()); k = getattr(model, key).state_dict()
        assert all(torch.equal(k[n], q[n]) for n in k)
    assert all(v.dtype != torch.float16 for v in model.state_dict().values())   # float16 storage is read back as float32
    cfg = card['method_config']
    assert not model.training
    clips = torch.randn(2, cfg['in_channels'], cfg.get('frames') or 50, get_layout(cfg['layout']).num_joints, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): f = model.encode(clips)
    assert f.shape[0] == 2 and f.dim() == 2 and torch.isfinite(f).all()


def _card_data(card):
    "The prepared data a card's checks were computed on, or a skip that says what is missing."
    name = card['data']['name']
    if name == 'synthetic':
        gen = {k: v for k, v in card['data']['generator'].items() if k != 'seconds'}   # time spent generating is not a parameter
        root = ensure_synthetic_dataset()
        want = _synthetic_params(gen['samples_per_class_per_subject'], gen['frames'], gen['seed'], gen['resample'])
        assert gen == want, f"{card['name']} was trained on embedded data {gen}, the library now makes {want}: re-release it"
        return root
    if not SHARED_DATA.is_dir(): pytest.skip(f"{card['name']}: its checks need {name}, not found under {SHARED_DATA}")
    from skelnb.data import resolve_dataset
    root = resolve_dataset(name, data_root=ROOT / 'data')                 # prepared from the shared raw files on first use
    assert json.loads((root / 'info.json').read_text())['splits'] == card['data']['splits']
    return root


def test_checkpoint_reproduces_its_card(card, one_thread):
    root = _card_data(card)
    got = shipped_encoder_checks(load_method(ROOT / card['file']), root, card['checks']['slice']['n_train'], card['checks']['slice']['n_test'])
    np.testing.assert_allclose(got['fingerprint'], card['checks']['fingerprint'], rtol=1e-3, atol=1e-5)
    assert abs(got['knn1_slice'] - card['checks']['knn1_slice']) <= 100 / card['checks']['slice']['n_test'] + 1e-9   # one clip


def test_readme_lists_every_shipped_encoder_with_its_card_numbers():
    import importlib.util
    spec = importlib.util.spec_from_file_location('release_checkpoint', ROOT / 'tools' / 'release_checkpoint.py')
    tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
    readme = (ROOT / 'README.md').read_text()
    for row in tool.table_rows(json.loads(c.read_text()) for c in CARDS):
        assert row in readme, f'README lacks (or has other numbers for) the shipped encoder row:\n{row}'
