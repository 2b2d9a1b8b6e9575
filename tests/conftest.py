"""Shared fixtures: where the real datasets live, and skips that say why."""
import os
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get('SKELNB_SHARED_DATA', ROOT.parent / 'shared' / 'data'))


@pytest.fixture
def shared_data():
    "Path of the shared real datasets, or a skip that says what is missing."
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real datasets not found at {SHARED_DATA} (set SKELNB_SHARED_DATA to the folder holding utd_kinect_v2/, nw_ucla/, ...)')
    return SHARED_DATA


@pytest.fixture
def one_thread():
    "Tiny models run fastest on one torch thread (and leave the other core free); the thread count is restored afterwards."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config):
    config.addinivalue_line('markers', 'browser: drives JupyterLab in headless Chromium (needs /usr/bin/chromium and playwright)')
    config.addinivalue_line('markers', 'slow: long-running checks')
