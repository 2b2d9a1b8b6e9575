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
from skelnb.data import ensure_synthetic_dataset, _synthetic_params

ROOT = Path(__file__).resolve().parent.parent
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
    assert set(model.state_dict()) == set(raw['model'])
    cfg = card['method_config']
    assert model.encoder_q.data_bn.num_features == cfg['in_channels'] * model.encoder_q.num_joints
    assert not model.training


def test_checkpoint_reproduces_its_card(card):
    if card['data']['name'] != 'synthetic': pytest.skip(f"{card['name']}: checks need {card['data']['name']}")
    gen = {k: v for k, v in card['data']['generator'].items() if k != 'seconds'}   # time spent generating is not a parameter
    root = ensure_synthetic_dataset()
    want = _synthetic_params(gen['samples_per_class_per_subject'], gen['frames'], gen['seed'], gen['resample'])
    assert gen == want, f"{card['name']} was trained on embedded data {gen}, the library now makes {want}: re-release it"
    got = shipped_encoder_checks(load_method(ROOT / card['file']), root, card['checks']['slice']['n_train'], card['checks']['slice']['n_test'])
    np.testing.assert_allclose(got['fingerprint'], card['checks']['fingerprint'], rtol=1e-3, atol=1e-5)
    assert abs(got['knn1_slice'] - card['checks']['knn1_slice']) <= 100 / card['checks']['slice']['n_test'] + 1e-9   # one clip
