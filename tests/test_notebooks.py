"""Every lesson notebook is one test case, run the way `nbdev_test` runs it (honouring tst_flags)."""
from pathlib import Path
import os
import pytest
import nbdev.test as nbt  # not `from nbdev.test import test_nb`: pytest would collect it
from nbdev.config import get_config

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
             if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT / 'nbs').parts))


def _skip_flags():
    flags = get_config().tst_flags
    return flags.split() if isinstance(flags, str) else list(flags)


@pytest.mark.parametrize('nb', NBS, ids=lambda p: str(p.relative_to(ROOT / 'nbs')))
def test_notebook(nb):
    os.environ['IN_TEST'] = '1'
    ok, secs = nbt.test_nb(nb, skip_flags=_skip_flags(), basepath=ROOT)
    assert ok, f'{nb.name} failed (traceback above)'
