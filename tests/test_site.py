"""The rendered site (`make docs`, tools/build_site.py) in a real browser, plus the builder's text transforms.

The browser tests build the site into a temp folder with the builder `make docs` uses. Executing every lesson takes
about 9 minutes on 2 shared cores (longer than the whole rest of the suite), so by default every page is rendered
but only the lessons in `EXECUTED` are executed (the index, the on-ramp, the viz lesson and the real-data tutorial:
pages with plotly figures, animations, widgets and maths; about a minute and a half on 2 idle cores); set
`SKELNB_SITE_FULL=1` to execute them all. The tests then open every page from disk in Debian's headless Chromium
(playwright, `/usr/bin/chromium`, no `playwright install`) and assert: no console errors and no uncaught
exceptions, no request that fails or leaves the disk (the site is offline: plotly.min.js is local, there is no
CDN), every plotly graph the builder wrote is drawn (`.js-plotly-plot` elements, counted per page), the on-ramp
and the viz lesson have graphs, and every link between pages points at a page that exists. Set `SKELNB_SITE=/path/to/_site` to test an already built site instead.
Outside CI the browser tests skip when Chromium or playwright is missing; with `CI=true` they fail instead.
"""
import json, os, re, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlparse, unquote
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import build_site as bs                                     # noqa: E402

CHROMIUM = Path(os.environ.get('SKELNB_CHROMIUM', '/usr/bin/chromium'))
IN_CI = os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')
CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
MUST_HAVE_GRAPHS = ('00_intro.html', '04_viz.html')
EXECUTED = ('index', '00_intro', '04_viz', 'tutorials/real_data')
FULL = os.environ.get('SKELNB_SITE_FULL', '').strip().lower() in ('1', 'true', 'yes')
BUILD_BUDGET_S = 1500 if FULL else 300                       # the build on 2 cores must end within this


# ---------------------------------------------------------------- the builder's text transforms (no browser)
def test_directives_and_stripping():
    src = '#| export\n#| slow\n\nx = 1\n#| not a directive here\n'
    assert bs.directives(src) == ['export', 'slow']
    assert bs.directives('#| eval: false\nx') == ['eval', 'false']
    assert bs.strip_directives(src) == 'x = 1\n#| not a directive here'


def test_links_to_lessons_become_pages():
    md = '[a](00_skeleton.ipynb), [b](tutorials/real_data.ipynb#the-table), [c](https://x.org/a.ipynb), <a href="../04_viz.ipynb">v</a>'
    assert bs.fix_links(md) == ('[a](00_skeleton.html), [b](tutorials/real_data.html#the-table), [c](https://x.org/a.ipynb), '
                                '<a href="../04_viz.html">v</a>')


def test_maths_outside_code_only():
    pytest.importorskip('latex2mathml')
    out = bs.markdown_math(r'loss $\ell = -\log p$ costs \$5, `$not$` and | $|a|$ |' + '\n\n$$m^n$$')
    assert out.count('<math') == 3 and '`$not$`' in out and r'\$5' in out
    assert 'display="block"' in out and '|a|' not in out          # table bars inside maths are escaped


def test_widget_state_renders_statically():
    "A hand-made widget state: a VBox of a slider, an HTML label and a FigureWidget."
    state = {
        'box': {'model_name': 'VBoxModel', 'state': {'children': ['IPY_MODEL_s', 'IPY_MODEL_h', 'IPY_MODEL_f']}},
        's': {'model_name': 'SelectionSliderModel', 'state': {'description': 'm', 'index': 1, '_options_labels': ['0.9', '0.99']}},
        'h': {'model_name': 'HTMLModel', 'state': {'value': '<b>half-life 69 steps</b>'}},
        'f': {'model_name': 'AnyModel', 'state': {'_widget_data': [{'type': 'scatter', 'x': [1, 2], 'y': [3, 4]}],
                                                   '_widget_layout': {'title': {'text': 'decay'}}}},
    }
    h = bs.widget_html('box', state)
    assert 'flex-flow:column' in h and '>0.99<' in h and '<b>half-life 69 steps</b>' in h
    assert h.count('Plotly.newPlot') == 1 and '"decay"' in h
    assert 'JupyterLab' in bs.widget_html('nope', state)
    # the figure the kernel reported for that widget wins over the state it was first displayed with
    h2 = bs.widget_html('box', state, figures={'f': {'data': [{'type': 'bar', 'y': [7]}], 'layout': {'title': {'text': 'final'}}}})
    assert '"final"' in h2 and '"decay"' not in h2
    # numpy arrays travel as binary buffers: they come back as plotly's typed-array spec
    state['f']['state']['_widget_data'][0]['y'] = {'dtype': 'float64', 'shape': [2]}
    state['f']['buffers'] = [{'path': ['_widget_data', 0, 'y', 'buffer'], 'data': 'AAAAAAAACEAAAAAAAAAQQA==', 'encoding': 'base64'}]
    assert '"bdata":"AAAAAAAACEAAAAAAAAAQQA=="' in bs.widget_html('box', state).replace(' ', '')


def test_a_failing_notebook_is_reported_and_the_others_built(tmp_path, monkeypatch, capsys):
    "Two lessons in a temp project: the good one is built with its graph, the failing one named with its cell, rc 1."
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Good\nsee [bad](b_bad.ipynb)'), new_code_cell('#| hide\nx = 2'),
                                       new_code_cell(f'import pathlib, tempfile\npathlib.Path(r"{tmp_path}/scratch.txt").write_text(tempfile.mkdtemp())'),
                                       new_code_cell('import plotly.graph_objects as go\ngo.Figure(go.Scatter(y=[1, x])).show()'),
                                       new_code_cell('#| slow\nraise SystemExit("slow cells are not run")')]), nbs / 'a_good.ipynb')
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Bad'), new_code_cell('y = 1'),
                                       new_code_cell('raise ValueError("boom in the lesson")')]), nbs / 'b_bad.ipynb')
    (tmp_path / 'settings.ini').write_text('[DEFAULT]\ntst_flags = notest slow\n')
    monkeypatch.setattr(bs, 'ROOT', tmp_path); monkeypatch.setattr(bs, 'NBS', nbs)
    out = tmp_path / 'site'
    with pytest.raises(SystemExit) as e: bs.main(['--out', str(out), '--jobs', '2'])
    assert e.value.code == 1
    log = capsys.readouterr().out
    assert 'FAILED nbs/b_bad.ipynb' in log and 'cell 2' in log and 'ValueError: boom in the lesson' in log
    pages = {r['page']: r for r in json.loads((out / 'build.json').read_text())['pages']}
    assert pages['a_good.html']['ok'] and pages['a_good.html']['plotly_graphs'] == 1 and not pages['b_bad.html']['ok']
    good, bad = (out / 'a_good.html').read_text(), (out / 'b_bad.html').read_text()
    assert 'href="b_bad.html"' in good and 'x = 2' not in good and 'not run for the site' in good
    assert 'slow cells are not run' in good and 'SystemExit' not in good.split('slow cells are not run')[1][:200]
    assert 'the lesson failed to execute' in bad and 'boom in the lesson' in bad
    assert '<script src="plotly.min.js"></script>' in good and 'cdn' not in good.lower().split('<body')[0]
    scratch = Path((tmp_path / 'scratch.txt').read_text())   # a lesson's temp folder: made in the build's, removed with it
    assert scratch.parent.name.startswith('skelnb_site_') and not scratch.parent.exists()


def test_notebook_order_and_pages():
    nbs = bs.notebooks()
    names = [str(p.relative_to(bs.NBS)) for p in nbs]
    assert names[0] == 'index.ipynb' and 'tutorials/real_data.ipynb' in names
    assert names.index('00_intro.ipynb') < names.index('00_skeleton.ipynb')
    assert bs.page_path(bs.NBS / 'tutorials' / 'real_data.ipynb') == Path('tutorials/real_data.html')


# ---------------------------------------------------------------- the built site in Chromium
def _require_browser_tools():
    missing = []
    if not CHROMIUM.exists(): missing.append(f'Chromium at {CHROMIUM} (apt-get install -y chromium)')
    try: import playwright.sync_api  # noqa: F401
    except ImportError: missing.append('the playwright Python package (pip install playwright; no `playwright install`)')
    if missing:
        why = 'site test needs ' + ' and '.join(missing)
        if IN_CI: pytest.fail(why + ' -- CI=true, so it must run')
        pytest.skip(why)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A built site: $SKELNB_SITE if given, else a fresh full build (tools/build_site.py) into a temp folder."
    _require_browser_tools()
    given = os.environ.get('SKELNB_SITE')
    if given:
        out = Path(given)
        assert (out / 'build.json').is_file(), f'SKELNB_SITE={given} has no build.json: build it with make docs'
        return out
    out = tmp_path_factory.mktemp('site') / '_site'
    t0 = time.monotonic()
    cmd = [sys.executable, str(ROOT / 'tools' / 'build_site.py'), '--out', str(out), '--jobs', '2']
    if not FULL: cmd += ['--execute-only', *EXECUTED]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_BUDGET_S + 120)
    secs = time.monotonic() - t0
    print(p.stdout[-4000:])
    assert (out / 'build.json').is_file(), f'the builder wrote no build.json (rc {p.returncode}):\n{p.stderr[-3000:]}'
    failed = [r for r in json.loads((out / 'build.json').read_text())['pages'] if not r['ok']]
    assert not failed, 'notebooks failed to execute for the site:\n' + '\n\n'.join(f'{r["notebook"]}: {r["error"][-1500:]}' for r in failed)
    assert p.returncode == 0, p.stderr[-3000:]
    assert secs < BUILD_BUDGET_S, f'the site build took {secs:.0f} s (budget {BUILD_BUDGET_S} s)'
    return out


def _visit(browser, url: str):
    "Open one page; return console errors, page errors, bad requests and the number of drawn plotly graphs."
    page = browser.new_page(viewport={'width': 1200, 'height': 900})
    errors, bad = [], []
    page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
    page.on('requestfailed', lambda r: bad.append(f'failed request {r.url} ({r.failure})'))
    page.on('request', lambda r: bad.append(f'request off the disk: {r.url}') if not r.url.startswith(('file:', 'data:', 'blob:', 'about:')) else None)
    try:
        page.goto(url, wait_until='load', timeout=60_000)
        page.wait_for_timeout(300)
        n = page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")
        scripts = page.evaluate("() => Array.from(document.scripts).filter(s => s.textContent.includes('Plotly.newPlot')).length")
        plotly_ok = page.evaluate("() => typeof window.Plotly === 'object'")
        links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    finally:
        page.close()
    return dict(errors=errors, bad=bad, graphs=n, scripts=scripts, plotly=plotly_ok, links=links)


@pytest.mark.browser
def test_every_page_loads_offline_and_draws_its_graphs(site):
    from playwright.sync_api import sync_playwright
    pages = sorted(site.rglob('*.html'))
    built = {r['page'].replace(os.sep, '/'): r for r in json.loads((site / 'build.json').read_text())['pages']}
    assert (site / 'index.html') in pages and (site / 'plotly.min.js').is_file()
    seen, problems = {}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for path in pages:
                rel = path.relative_to(site).as_posix()
                text = path.read_text(encoding='utf-8')
                remote = re.findall(r'<script[^>]*\bsrc="(?:https?:)?//[^"]*"|import\(\s*"https?://[^"]*"|<link[^>]*\bhref="https?://[^"]*"', text)
                if remote: problems.append(f'{rel}: loads code from the web: {remote[:2]}')
                r = seen[rel] = _visit(browser, path.as_uri())
                problems += [f'{rel}: {e}' for e in r['errors'] + r['bad']]
                if not r['plotly']: problems.append(f'{rel}: plotly.min.js did not load')
                if r['graphs'] != r['scripts']: problems.append(f'{rel}: {r["scripts"]} plotly graphs written, {r["graphs"]} drawn')
                for href in r['links']:                      # every link inside the site leads to a file that exists
                    u = urlparse(href)
                    if u.scheme == 'file' and not Path(unquote(u.path)).exists(): problems.append(f'{rel}: broken link {href}')
        finally:
            browser.close()
    print('plotly graphs per page: ' + ', '.join(f'{k} {v["graphs"]}' for k, v in seen.items()))
    assert set(built) <= set(seen), f'pages in build.json but not on disk: {set(built) - set(seen)}'
    assert not problems, '\n'.join(problems[:20])
    for name in MUST_HAVE_GRAPHS:
        if name in seen: assert seen[name]['graphs'] > 0, f'{name} shows no plotly graph'
    assert all(name in seen for name in MUST_HAVE_GRAPHS), sorted(seen)
    executed = {rel for rel, r in built.items() if r.get('executed', True)}
    assert set(MUST_HAVE_GRAPHS) <= executed, f'{MUST_HAVE_GRAPHS} must be executed; executed: {sorted(executed)}' 
    for rel, r in built.items():                             # the builder's count agrees with the browser's
        assert seen[rel]['graphs'] == r['plotly_graphs'], (rel, seen[rel]['graphs'], r['plotly_graphs'])
