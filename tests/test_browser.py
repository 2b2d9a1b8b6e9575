"""The skeleton player in a real browser: headless JupyterLab + Debian's Chromium driven by playwright.

A temp copy of `tests/browser/demo_viz.ipynb` is served by a JupyterLab started here (localhost, free port,
token); Chromium runs all cells, waits for the WebGL canvas, presses Play, pauses, and checks that the trace data
inside the browser equal the clip's joints at the frame the kernel reports. A screenshot goes to
`artifacts/browser/` (git-ignored). Outside CI the test skips when Chromium or playwright is missing; with
`CI=true` it fails instead. Never run `playwright install`: the browser is `/usr/bin/chromium`.
"""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / 'tests' / 'browser'
DEMO = HERE / 'demo_viz.ipynb'
CHROMIUM = Path(os.environ.get('SKELNB_CHROMIUM', '/usr/bin/chromium'))
ARTIFACTS = ROOT / 'artifacts' / 'browser'
IN_CI = os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')
CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
T_DEMO = 60            # frames of the demo clip (tests/browser/demo_viz.ipynb)
BUDGET_S = 160         # the whole JupyterLab test (warm-up, waits, one retry) ends within this
NEWS_OFF = {'fetchNews': 'false', 'checkForUpdates': False}   # no "Jupyter news?" toast over the page


def _require_browser_tools():
    "Skip (or, under CI=true, fail) with the reason when Chromium, playwright or JupyterLab is missing."
    missing = []
    if not CHROMIUM.exists(): missing.append(f'Chromium at {CHROMIUM} (apt-get install -y chromium)')
    try: import playwright.sync_api  # noqa: F401
    except ImportError: missing.append('the playwright Python package (pip install playwright; no `playwright install`)')
    try: import jupyterlab  # noqa: F401
    except ImportError: missing.append('jupyterlab')
    if missing:
        why = 'browser test needs ' + ' and '.join(missing)
        if IN_CI: pytest.fail(why + ' -- CI=true, so it must run: .ci/run has to install them')
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _api(base, token, path, method='GET', timeout=5):
    req = urllib.request.Request(f'{base}{path}', method=method, headers={'Authorization': f'token {token}'})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A headless JupyterLab on localhost serving a temp copy of the demo notebook; shut down afterwards."
    _require_browser_tools()
    tmp = tmp_path_factory.mktemp('lab')
    root, cfg, settings = tmp / 'root', tmp / 'config', tmp / 'settings'
    for d in (root, cfg, settings, tmp / 'workspaces', tmp / 'runtime'): d.mkdir()
    shutil.copy(DEMO, root / DEMO.name)
    shutil.copy(HERE / 'jupyter_lab_config.py', cfg / 'jupyter_lab_config.py')
    note = settings / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    note.parent.mkdir(parents=True)
    note.write_text(json.dumps(NEWS_OFF))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / 'workspaces'), JUPYTER_RUNTIME_DIR=str(tmp / 'runtime'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--port-retries=0',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
    log = open(tmp / 'lab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None: pytest.fail(f'JupyterLab exited with {proc.returncode}:\n{(tmp / "lab.log").read_text()[-3000:]}')
            try:
                _api(base, token, '/api/status'); break
            except OSError:
                if time.monotonic() > deadline: pytest.fail(f'JupyterLab did not answer within 60 s:\n{(tmp / "lab.log").read_text()[-3000:]}')
                time.sleep(0.5)
        yield dict(base=base, token=token, root=root, log=tmp / 'lab.log')
    finally:
        try:
            for k in _api(base, token, '/api/kernels') or []: _api(base, token, f'/api/kernels/{k["id"]}', method='DELETE', timeout=15)
        except OSError: pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)        # the server's own process group (start_new_session)
            try: proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=5)
        log.close()


# decode a plotly trace array in the page: plain arrays, typed arrays, or plotly's {dtype, bdata} base64 spec
JS_TRACES = """(n) => {
  const gd = document.querySelector('.js-plotly-plot');
  const types = {f8: Float64Array, f4: Float32Array, i4: Int32Array, i2: Int16Array, u1: Uint8Array};
  const dec = (v) => {
    if (v == null) return null;
    if (Array.isArray(v)) return v.map(Number);
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (v.bdata !== undefined) {
      const s = atob(v.bdata), b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
      return Array.from(new types[v.dtype](b.buffer));
    }
    return null;
  };
  return gd.data.slice(0, n).map(d => ({x: dec(d.x), y: dec(d.y), z: dec(d.z)}));
}"""


def _label_frame(page):
    "The frame the kernel last drew, from the player's label 'frame t / T-1' (set by the kernel callback)."
    for text in page.locator('.widget-label').all_inner_texts():
        if text.startswith('frame ') and '/' in text: return int(text.split()[1])
    return None


class _Deadline:
    "Timeouts (ms) for each wait: at most `cap_s`, and never past the test's overall deadline."
    def __init__(self, seconds): self.end = time.monotonic() + seconds
    def left(self) -> float: return self.end - time.monotonic()
    def ms(self, cap_s: float = 60) -> float:
        if self.left() <= 1: raise TimeoutError(f'the browser test ran out of its {BUDGET_S} s budget')
        return 1000 * min(cap_s, self.left())


def _open_and_run(page, lab, name, dl):
    "Open notebook `name`, wait for an idle kernel, run all cells, wait for the 3-D plot and the player's label."
    page.goto(f"{lab['base']}/lab/tree/{name}?token={lab['token']}", timeout=dl.ms())
    page.wait_for_selector('.jp-Notebook', timeout=dl.ms())
    page.wait_for_function("() => (document.querySelector('#jp-main-statusbar') || {innerText: ''}).innerText.includes('Idle')",
                           timeout=dl.ms())
    started = "() => Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt')).some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))"
    for _ in range(2):                                   # a click before the kernel connection settles can be lost
        page.get_by_role('menuitem', name='Run').click(timeout=dl.ms(10))
        page.get_by_text('Run All Cells', exact=True).click(timeout=dl.ms(10))
        try:
            page.wait_for_function(started, timeout=dl.ms(15)); break
        except Exception: pass
    page.wait_for_selector('.js-plotly-plot .gl-container canvas', timeout=dl.ms(75))
    page.wait_for_function("() => Array.from(document.querySelectorAll('.widget-label')).some(l => l.innerText.startsWith('frame 0 /'))",
                           timeout=dl.ms(30))


def _play_pause_and_check(page, clip, dl):
    "Press Play, pause after some frames, then compare the browser's traces with the clip at the kernel's frame."
    from skelnb.viz import bone_segments
    play = page.locator('.widget-play button').first
    play.click(timeout=dl.ms(10))
    page.wait_for_function("() => Array.from(document.querySelectorAll('.widget-label')).some(l => /^frame ([5-9]|\\d\\d+) \\//.test(l.innerText))",
                           timeout=dl.ms(30))
    play.click(timeout=dl.ms(10))                        # the Play button toggles to pause
    t, stable, deadline = None, 0, time.monotonic() + min(20, dl.left())
    while stable < 3:                                    # the kernel's frame stops changing once paused
        time.sleep(0.4)
        now = _label_frame(page)
        stable = stable + 1 if now == t else 0
        t = now
        if time.monotonic() > deadline: raise AssertionError(f'the player did not stop (frame {t})')
    assert t is not None and 0 < t < T_DEMO, f'Play did not advance the frame (kernel frame {t})'
    traces = page.evaluate(JS_TRACES, 4)
    for m in range(2):
        bones, joints = traces[2 * m], traces[2 * m + 1]
        want = clip[:, t, :, m]                                             # (3, V)
        got = np.array([joints['x'], joints['y'], joints['z']], float)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f'joints of person {m} at frame {t}')
        seg = np.array([bones['x'], bones['y'], bones['z']], float).T      # (3B, 3)
        np.testing.assert_allclose(seg, bone_segments(want.T), atol=1e-6, err_msg=f'bones of person {m} at frame {t}')
        assert np.isnan(seg[2::3]).all()
    return t


def test_player_in_jupyterlab(lab):
    "Run the demo notebook in JupyterLab, press Play, and compare the browser's trace data with the kernel's frame."
    from playwright.sync_api import sync_playwright
    t0 = time.monotonic()
    dl = _Deadline(BUDGET_S)
    timings, page_errors = {}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            warm = browser.new_page()                    # warm-up: the first page load makes the server check its build
            warm.goto(f"{lab['base']}/lab?token={lab['token']}", timeout=dl.ms())
            warm.wait_for_selector('#jp-main-dock-panel', timeout=dl.ms())
            warm.close()
            timings['warm-up'] = time.monotonic() - t0
            for attempt in (1, 2):                       # one retry, on a fresh copy (fresh kernel) of the notebook
                name = DEMO.name if attempt == 1 else f'retry_{DEMO.name}'
                if attempt == 2: shutil.copy(DEMO, lab['root'] / name)
                page = browser.new_page(viewport={'width': 1400, 'height': 1000})
                page.on('pageerror', lambda e: page_errors.append(str(e)))
                try:
                    t1 = time.monotonic()
                    _open_and_run(page, lab, name, dl)
                    timings['run all cells'] = time.monotonic() - t1
                    clip = np.load(lab['root'] / 'demo_clip.npy')           # saved by the kernel
                    t2 = time.monotonic()
                    frame = _play_pause_and_check(page, clip, dl)
                    timings['play + check'] = time.monotonic() - t2
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    page.locator('.js-plotly-plot').first.scroll_into_view_if_needed()
                    page.screenshot(path=str(ARTIFACTS / 'viz_player.png'))
                    break
                except Exception as e:
                    if attempt == 2 or dl.left() < 45: raise   # retry only with time left for a full run
                    print(f'browser attempt 1 failed, retrying once: {type(e).__name__}: {str(e)[:300]}')
                finally:
                    page.close()
        finally:
            browser.close()
    timings['total'] = time.monotonic() - t0
    print(f'browser test: kernel frame {frame} matched; ' + ', '.join(f'{k} {v:.1f} s' for k, v in timings.items()))
    assert not page_errors, f'uncaught errors in the page: {page_errors[:3]}'


def test_standalone_html_plays_in_chromium(tmp_path):
    "The offline HTML export plays without a kernel: Play advances plotly's slider and the drawn frame is the clip's."
    _require_browser_tools()
    from playwright.sync_api import sync_playwright
    from skelnb.viz import animation_figure, save_html, wave_clip
    clip = wave_clip(T=40, M=2, seed=0)
    path = save_html(animation_figure(clip, title='handout', fps=20), tmp_path / 'handout.html')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={'width': 1100, 'height': 700})
            errors = []
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('request', lambda r: errors.append(f'network request {r.url}') if not r.url.startswith(('file:', 'data:', 'blob:')) else None)
            page.goto(path.as_uri())
            page.wait_for_selector('.js-plotly-plot .gl-container canvas', timeout=60_000)
            page.get_by_text('▶ Play').click()
            page.wait_for_function("() => document.querySelector('.js-plotly-plot')._fullLayout.sliders[0].active >= 5", timeout=30_000)
            page.get_by_text('❚❚ Pause').click()
            page.wait_for_timeout(600)
            step = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.sliders[0].active")
            traces = page.evaluate(JS_TRACES, 2)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / 'viz_handout.png'))
        finally:
            browser.close()
    got = np.array([traces[1]['x'], traces[1]['y'], traces[1]['z']], float)
    np.testing.assert_allclose(got, clip[:, step, :, 0], atol=1e-6, err_msg=f'joints drawn at step {step}')
    # Pause interrupts plotly.animate, whose promise then rejects with `undefined` (plotly.js behaviour): expected
    errors = [e for e in errors if e != 'undefined']
    assert not errors, errors[:3]
