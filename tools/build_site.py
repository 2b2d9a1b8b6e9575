#!/usr/bin/env python
"""Build the lessons as a static, offline web site: `make docs` (or `.venv/bin/python tools/build_site.py`).

Every notebook of `nbs/` (sub-folders included; names starting with `_` or `.` skipped, as nbdev does) is
executed headless with nbclient in a fresh kernel, from its own folder (as `nbdev_test` runs it), then rendered to
static HTML with nbconvert into the build folder (`_site/` by default). The committed notebooks are only read:
they stay output-free. What the builder does beyond a plain `jupyter nbconvert --execute`:

* cells flagged with a test flag of `settings.ini` (`#| slow`, `#| notest`, `#| browser`) are shown but not run,
  exactly like `nbdev_test` (they are long runs; a note says so); `#| hide` cells run but are not shown, and the
  `#|` directive lines are dropped from the code shown;
* plotly figures (`application/vnd.plotly.v1+json`, which static HTML cannot show) become static plotly graphs;
  `plotly.min.js` is copied once from the installed plotly package into the site folder and every page loads it
  by a relative path: nothing is fetched from the web (no CDN, no require.js, no MathJax);
* widget views are rendered from the widget state nbclient records during the run: plotly `FigureWidget`s become
  static graphs of the figure the lesson left them with (a hidden last cell writes every live FigureWidget's figure
  to a temp file; if the run stopped early, the figure as first displayed is used), boxes lay out their children,
  labels/HTML keep their text, sliders and buttons show their value; anything else says that it needs a running
  kernel. Widgets need a kernel to be
  interactive, so every lesson with a widget also shows a static fallback figure;
* LaTeX in markdown (`$...$`, `$$...$$`) becomes MathML (rendered natively by the browser) when the pure-Python
  `latex2mathml` package is installed, and is shown as TeX source otherwise;
* links between lessons (`foo.ipynb`) point at the built pages (`foo.html`); every page has a navigation bar
  (lesson map, previous, next).

Each notebook is built independently: a notebook that fails to execute is reported with its failing cell, its
page is still written (up to the failure, with the error shown), the others are built, and the script exits
with status 1 at the end. A summary (seconds and plotly graphs per page) is printed and written to
`_site/build.json`.

    python tools/build_site.py                     # every notebook, 2 at a time, into _site/
    python tools/build_site.py --only 00_intro 04_viz --out /tmp/site
    python tools/build_site.py --fast              # IN_TEST=1: the lessons' small test workloads (quicker)
    python tools/build_site.py --execute-only 00_intro 04_viz   # every page, only these two executed
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, configparser, copy, html, json, os, re, shutil, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
PLOTLY_MIME, WIDGET_MIME = 'application/vnd.plotly.v1+json', 'application/vnd.jupyter.widget-view+json'
WIDGET_STATE = 'application/vnd.jupyter.widget-state+json'


# ------------------------------------------------------------------ which notebooks, in which order
def _names(p: Path) -> set:
    return {p.stem, p.relative_to(NBS).with_suffix('').as_posix()}

def notebooks(only=None, option='--only') -> list[Path]:
    "The lesson notebooks in site order: index first, then nbs/*.ipynb sorted, then sub-folders (tutorials)."
    found = [p for p in NBS.rglob('*.ipynb')
             if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts)]
    key = lambda p: (p.stem != 'index', len(p.relative_to(NBS).parts) > 1, str(p.relative_to(NBS)))
    found = sorted(found, key=key)
    if only:
        want = set(only)
        found = [p for p in found if _names(p) & want]
        missing = want - set().union(*(_names(p) for p in found)) if found else want
        if missing: raise SystemExit(f'{option}: no notebook named {sorted(missing)} under {NBS}')
    return found


def skip_flags() -> list[str]:
    "The nbdev test flags (`tst_flags` of settings.ini): cells carrying one are not executed."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT'].get('tst_flags', 'notest').split()


def page_path(nb: Path) -> Path:
    "Where a notebook's page goes, relative to the site root."
    return nb.relative_to(NBS).with_suffix('.html')


# ------------------------------------------------------------------ cell directives
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*)$')

def directives(source: str) -> list[str]:
    "The `#| ...` directive words at the top of a code cell."
    out = []
    for line in source.splitlines():
        m = DIRECTIVE.match(line)
        if m: out.extend(m.group(1).replace(':', ' ').split())
        elif line.strip(): break
    return out

def strip_directives(source: str) -> str:
    lines = source.splitlines()
    while lines and (DIRECTIVE.match(lines[0]) or not lines[0].strip()): lines.pop(0)
    return '\n'.join(lines)


# ------------------------------------------------------------------ maths and links in markdown
_CODE = re.compile(r'(```.*?```|~~~.*?~~~|`[^`\n]*`)', re.S)
_MATH = re.compile(r'(?<!\\)\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)', re.S)

def tex_to_html(tex: str, display: bool) -> str:
    "MathML for one TeX formula (latex2mathml), or the TeX source in a code span when it is not installed or fails."
    try:
        from latex2mathml.converter import convert
        out = convert(tex.strip(), display='block' if display else 'inline')
    except Exception:
        out = f'<code class="tex">{html.escape(tex)}</code>'
    return out.replace('\n', ' ').replace('|', '&#124;')          # one line, and never a markdown table bar

def markdown_math(md: str) -> str:
    "Replace `$...$` / `$$...$$` outside code by MathML."
    parts = _CODE.split(md)
    for i in range(0, len(parts), 2):
        parts[i] = _MATH.sub(lambda m: tex_to_html(m.group(1) if m.group(1) is not None else m.group(2), m.group(1) is not None), parts[i])
    return ''.join(parts)

_NB_LINK = re.compile(r'(\]\(|href=")(?!https?:|mailto:)([^)"#\s]*?)\.ipynb(#[^)"\s]*)?(?=[)"])')

def fix_links(text: str) -> str:
    "Links to `.ipynb` files of the lessons point at their pages."
    return _NB_LINK.sub(lambda m: f'{m.group(1)}{m.group(2)}.html{m.group(3) or ""}', text)


# ------------------------------------------------------------------ outputs: plotly and widgets to static HTML
def plotly_html(fig: dict) -> str:
    "A static plotly graph of a figure dict; uses the global `Plotly` of the page's plotly.min.js."
    import plotly.io as pio
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, validate=False,
                       config=fig.get('config') or {'responsive': True})

def _ref(v):
    return v[len('IPY_MODEL_'):] if isinstance(v, str) and v.startswith('IPY_MODEL_') else None

_DTYPES = {'float64': 'f8', 'float32': 'f4', 'int64': 'i8', 'int32': 'i4', 'int16': 'i2', 'int8': 'i1',
           'uint64': 'u8', 'uint32': 'u4', 'uint16': 'u2', 'uint8': 'u1'}

def _with_buffers(w: dict) -> dict:
    "The widget state with its binary buffers put back, numpy arrays as plotly's `{dtype, bdata, shape}` spec."
    s = copy.deepcopy(w.get('state', {}))
    for b in w.get('buffers') or []:
        path, node = b.get('path') or [], s
        try:
            for key in path[:-2]: node = node[key]
            arr = node[path[-2]]
            if isinstance(arr, dict) and 'dtype' in arr:
                node[path[-2]] = {'dtype': _DTYPES.get(arr['dtype'], arr['dtype']), 'bdata': b['data'], 'shape': arr.get('shape')}
        except (KeyError, IndexError, TypeError): pass
    return s

def widget_html(model_id: str, state: dict, depth: int = 0, figures: dict | None = None) -> str:
    "A static picture of a widget view from the recorded widget state (see the module docstring)."
    figures = figures or {}
    w = state.get(model_id)
    if model_id in figures: return plotly_html(figures[model_id])          # a FigureWidget's final figure, from the kernel
    if w is None or depth > 20: return '<div class="site-widget-missing">(widget: run the lesson in JupyterLab to see it)</div>'
    s, name = w.get('state', {}), w.get('model_name', '')
    desc = html.escape(str(s.get('description') or ''))
    if '_widget_data' in s and '_widget_layout' in s:                      # plotly FigureWidget (anywidget), as first displayed
        s = _with_buffers(w)
        return plotly_html({'data': s['_widget_data'], 'layout': s['_widget_layout'], 'config': s.get('_config') or {}})
    if 'children' in s:                                                    # Box, VBox, HBox, GridBox, Accordion, Tab
        flow = 'row' if name in ('HBoxModel', 'GridBoxModel') else 'column'
        kids = ''.join(f'<div class="site-widget-child">{widget_html(_ref(c), state, depth + 1, figures)}</div>'
                       for c in s['children'] if _ref(c))
        titles = s.get('titles') or []
        head = ''.join(f'<span class="site-widget-tab">{html.escape(str(t))}</span>' for t in titles if t) if titles else ''
        return f'<div class="site-widget-box" style="display:flex;flex-flow:{flow} wrap;gap:6px">{head}{kids}</div>'
    if name in ('HTMLModel', 'HTMLMathModel'): return f'<div class="site-widget-html">{desc} {s.get("value", "")}</div>'
    if name == 'LabelModel': return f'<div class="site-widget-label">{html.escape(str(s.get("value", "")))}</div>'
    if name == 'OutputModel':
        return ''.join(output_html(o, state, figures) for o in s.get('outputs', []))
    if name in ('ButtonModel',): return f'<button class="site-widget-button" disabled>{html.escape(str(s.get("description", "")))}</button>'
    if 'value' in s or 'index' in s:                                       # sliders, Play, dropdowns, checkboxes, text
        val = s.get('value', s.get('index'))
        labels = s.get('_options_labels')
        if labels and isinstance(s.get('index'), int): val = labels[s['index']] if 0 <= s['index'] < len(labels) else val
        if isinstance(val, (list, tuple)) and labels and all(isinstance(i, int) for i in val): val = ', '.join(labels[i] for i in val)
        if name == 'PlayModel': desc = desc or '▶'
        return (f'<div class="site-widget-control" title="interactive in JupyterLab">{desc} '
                f'<span class="site-widget-value">{html.escape(str(val))}</span></div>')
    return f'<div class="site-widget-missing">({html.escape(name or "widget")}: interactive in JupyterLab only)</div>'

def output_html(o: dict, state: dict, figures: dict | None = None) -> str:
    "HTML of one output inside a widget's Output area (plotly, widgets, HTML, text)."
    data = o.get('data', {})
    if PLOTLY_MIME in data: return plotly_html(data[PLOTLY_MIME])
    if WIDGET_MIME in data: return widget_html(data[WIDGET_MIME].get('model_id'), state, 0, figures)
    if 'text/html' in data: return ''.join(data['text/html']) if isinstance(data['text/html'], list) else data['text/html']
    if 'image/png' in data: return f'<img src="data:image/png;base64,{data["image/png"]}">'
    text = o.get('text') or data.get('text/plain') or ''
    if isinstance(text, list): text = ''.join(text)
    return f'<pre>{html.escape(text)}</pre>' if text else ''

def static_outputs(nb, figures: dict | None = None) -> int:
    "Turn plotly and widget outputs into static HTML outputs in place; returns the number of plotly graphs made."
    import nbformat
    state = nb.metadata.get('widgets', {}).get(WIDGET_STATE, {}).get('state', {})
    graphs = 0
    for cell in nb.cells:
        if cell.cell_type != 'code': continue
        for o in cell.get('outputs', []):
            data = o.get('data')
            if not data: continue
            if PLOTLY_MIME in data:
                o['data'] = nbformat.from_dict({'text/html': plotly_html(data[PLOTLY_MIME])}); graphs += 1
            elif WIDGET_MIME in data:
                h = widget_html(data[WIDGET_MIME].get('model_id'), state, 0, figures)
                graphs += h.count('Plotly.newPlot')
                o['data'] = nbformat.from_dict({'text/html': f'<div class="site-widget" title="a widget: interactive when the lesson runs in JupyterLab">{h}</div>'})
    nb.metadata.pop('widgets', None)
    return graphs


# ------------------------------------------------------------------ one notebook
DUMP_CELL = """
import sys as _site_sys
if 'plotly' in _site_sys.modules and 'ipywidgets' in _site_sys.modules:
    import ipywidgets as _site_w, plotly.graph_objects as _site_go, plotly.io as _site_pio
    _site_all = getattr(_site_w.Widget, 'widgets', None) or _site_w.widgets.widget._instances
    with open(%r, 'w') as _site_f:
        _site_f.write('{' + ','.join('"%%s": %%s' %% (_k, _site_pio.to_json(_v, validate=False)) for _k, _v in list(_site_all.items())
                                     if isinstance(_v, _site_go.FigureWidget)) + '}')
"""

def prepare(nb, flags) -> None:
    "Mark cells not to run (test flags), remember hidden cells, fix markdown (maths, links)."
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            cell.source = fix_links(markdown_math(cell.source))
        elif cell.cell_type == 'code':
            d = directives(cell.source)
            tags = cell.metadata.setdefault('tags', [])
            hit = [f for f in flags if f in d]
            if hit:
                tags.append('skip-execution')
                cell.metadata['site_note'] = f'not run for the site (flagged <code>#| {hit[0]}</code>: a long run; run the lesson to execute it)'
            if 'hide' in d or 'default_exp' in d: tags.append('site-hide')

def finish(nb) -> None:
    "Drop hidden cells and directive lines; put the not-run notes above the flagged cells."
    import nbformat
    cells = []
    for cell in nb.cells:
        if 'site-hide' in cell.metadata.get('tags', []): continue
        if cell.cell_type == 'code':
            cell.source = strip_directives(cell.source)
            if not cell.source.strip() and not cell.get('outputs'): continue
            note = cell.metadata.pop('site_note', None)
            if note: cells.append(nbformat.v4.new_markdown_cell(f'<div class="site-note">{note}</div>'))
        cells.append(cell)
    nb.cells = cells

def failure_text(nb, e) -> str:
    "Which cell failed (its number and first lines) and the exception, short enough to read in a log."
    where = ''
    for i, cell in enumerate(nb.cells):
        if any(o.get('output_type') == 'error' for o in cell.get('outputs', [])):
            head = '\n'.join(cell.source.splitlines()[:4])
            where = f'cell {i} (code cell starting with:\n{head}\n)\n'
            break
    ename, evalue = getattr(e, 'ename', type(e).__name__), getattr(e, 'evalue', None) or str(e)
    evalue = evalue if len(evalue) < 1200 else evalue[:600] + ' [...] ' + evalue[-400:]
    return f'{where}{ename}: {evalue}'

def build_one(nb_path: str, out_dir: str, flags: list, timeout: int, prev_next: tuple, execute: bool = True,
              env: dict | None = None) -> dict:
    "Execute and render one notebook; never raises: failures are returned in the result."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    nb_path, out_dir = Path(nb_path), Path(out_dir)
    rel = page_path(nb_path)
    t0 = time.time()
    res = dict(notebook=str(nb_path.relative_to(ROOT)), page=rel.as_posix(), ok=True, error=None, executed=execute)
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as e:
        return dict(res, ok=False, error=f'cannot read the notebook: {type(e).__name__}: {e}', seconds=0.0, plotly_graphs=0)
    prepare(nb, flags)
    dump = Path(tempfile.mkstemp(suffix='.json', prefix='site-figures-')[1])
    nb.cells.append(nbformat.v4.new_code_cell(DUMP_CELL % str(dump), metadata={'tags': ['site-hide']}))
    if execute:
        client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False, store_widget_state=True,
                                resources={'metadata': {'path': str(nb_path.parent)}}, skip_cells_with_tag='skip-execution')
        log = tempfile.TemporaryFile(mode='w+')              # the kernel process's own stderr (crash messages)
        try:
            client.execute(stderr=log, env=env or dict(os.environ))
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            res.update(ok=False, error=failure_text(nb, e))
        except Exception as e:                                  # kernel start-up and the like
            res.update(ok=False, error=f'{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}')
        if not res['ok']:
            log.seek(0)
            tail = '\n'.join(l for l in log.read().splitlines() if 'without encryption' not in l)[-1500:]
            if tail.strip(): res['error'] += f'\nkernel stderr:\n{tail}'
        log.close()
    try: figures = json.loads(dump.read_text() or '{}')       # FigureWidgets as the lesson left them
    except (OSError, ValueError): figures = {}
    dump.unlink(missing_ok=True)
    graphs = static_outputs(nb, figures)
    finish(nb)
    try:
        page = render(nb, rel, prev_next, res)
    except Exception as e:
        res.update(ok=False, error=(res['error'] or '') + f'\nrendering failed: {type(e).__name__}: {e}')
        page = f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{rel}</title></head><body><pre>{html.escape(res["error"])}</pre></body></html>'
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(page, encoding='utf-8')
    return dict(res, seconds=round(time.time() - t0, 1), plotly_graphs=graphs)


# ------------------------------------------------------------------ page template
CSS = """
.site-nav{position:sticky;top:0;z-index:100;background:#f7f7f9;border-bottom:1px solid #ddd;padding:6px 16px;
  font:14px system-ui,sans-serif;display:flex;gap:18px;align-items:center}
.site-nav a{text-decoration:none;color:#1f5fa8}.site-nav .site-title{font-weight:600;margin-right:auto}
.site-note{background:#fff8e1;border-left:4px solid #f0b400;padding:4px 10px;font-size:90%}
.site-error{background:#fdecea;border-left:4px solid #d62728;padding:8px 12px;margin:12px 16px;white-space:pre-wrap;font:13px monospace}
.site-widget{border:1px dashed #bbb;padding:6px;border-radius:4px}
.site-widget-control{font:13px system-ui,sans-serif;color:#555}.site-widget-value{font-weight:600}
.site-widget-missing{color:#777;font-style:italic}
math[display=block]{margin:.6em 0}
"""

def nav_html(rel: Path, prev_next: tuple) -> str:
    up = '../' * (len(rel.parts) - 1)
    prev, nxt = prev_next
    link = lambda p, label: f'<a href="{up}{p}">{label}</a>' if p else ''
    return (f'<nav class="site-nav"><span class="site-title"><a href="{up}index.html">skelnb lessons</a></span>'
            f'{link(prev and prev[0], "← " + html.escape(prev[1]) if prev else "")}'
            f'{link(nxt and nxt[0], html.escape(nxt[1]) + " →" if nxt else "")}</nav>')

def render(nb, rel: Path, prev_next: tuple, res: dict) -> str:
    "nbconvert's lab template, then: no remote scripts, the local plotly.min.js, the navigation bar."
    from nbconvert import HTMLExporter
    exp = HTMLExporter(template_name='lab')
    exp.exclude_input_prompt = exp.exclude_output_prompt = True
    body, _ = exp.from_notebook_node(nb)
    body = re.sub(r'<script[^>]*\bsrc="(https?:)?//[^"]*"[^>]*>\s*</script>', '', body)          # require.js, MathJax
    body = re.sub(r'<script type="text/x-mathjax-config">.*?</script>', '', body, flags=re.S)
    body = re.sub(r'<script>\s*\(function\(\)\s*\{\s*function addWidgetsRenderer.*?</script>', '', body, flags=re.S)  # widget-manager loader (CDN)
    body = re.sub(r'<link[^>]*\bhref="(https?:)?//[^"]*"[^>]*>', '', body)
    body = re.sub(r'<script type="module">(?:(?!</script>).)*?cdnjs(?:(?!</script>).)*?</script>', '', body, flags=re.S)  # mermaid (CDN)
    up = '../' * (len(rel.parts) - 1)
    head = f'<script src="{up}plotly.min.js"></script>\n<style>{CSS}</style>\n'
    body = body.replace('</head>', head + '</head>', 1)
    banner = ''
    if not res.get('executed', True):
        banner = '<div class="site-note" style="margin:12px 16px">This page was rendered without running the lesson: code and text only.</div>'
    if not res['ok']:
        banner = f'<div class="site-error">This page is incomplete: the lesson failed to execute.\n{html.escape(res["error"] or "")}</div>'
    body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav_html(rel, prev_next) + banner, body, count=1)
    return body


# ------------------------------------------------------------------ the whole site
def build(out: Path, only=None, jobs: int = 2, timeout: int = 600, fast: bool = False, execute: bool = True,
          execute_only=None) -> list[dict]:
    "Build the pages of `only` (default: every notebook) into `out`; run only `execute_only` if given."
    import plotly
    nbs = notebooks(only)
    run = set(notebooks(execute_only, '--execute-only')) if execute_only else set(nbs)
    out.mkdir(parents=True, exist_ok=True)
    js = Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js'
    shutil.copyfile(js, out / 'plotly.min.js')
    # the kernels' environment: plotly's JSON output, the repo importable, one torch thread per kernel when
    # kernels run side by side, IN_TEST only with --fast (this process's own environment is left alone)
    env = dict(os.environ, PLOTLY_RENDERER='plotly_mimetype',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    if jobs > 1:
        for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): env.setdefault(k, '1')
    if fast: env['IN_TEST'] = '1'
    else: env.pop('IN_TEST', None)
    # the lessons' scratch folders (tempfile) go to one folder removed after the build: a reader keeps them, a build does not
    scratch = Path(tempfile.mkdtemp(prefix='skelnb_site_'))
    env['TMPDIR'] = str(scratch)
    try: results = _build_pages(out, nbs, run, env, jobs, timeout, fast, execute)
    finally: shutil.rmtree(scratch, ignore_errors=True)
    return results


def _build_pages(out, nbs, run, env, jobs, timeout, fast, execute) -> list[dict]:
    flags = skip_flags()
    order = notebooks()                                      # prev/next follow the full lesson order
    pages = [(str(page_path(p)).replace(os.sep, '/'), p.stem) for p in order]
    def neighbours(p):
        i = order.index(p)
        return (pages[i - 1] if i > 0 else None, pages[i + 1] if i + 1 < len(pages) else None)
    t0 = time.time()
    results = []
    with cf.ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = {pool.submit(build_one, str(p), str(out), flags, timeout, neighbours(p), execute and p in run, env): p for p in nbs}
        for f in cf.as_completed(futs):
            p = futs[f]
            try: r = f.result()
            except Exception as e: r = dict(notebook=str(p.relative_to(ROOT)), page=str(page_path(p)), ok=False, seconds=0.0,
                                            plotly_graphs=0, error=f'worker crashed: {type(e).__name__}: {e}')
            note = '' if r.get('executed', True) else '  (not executed)'
            print(f'{"ok  " if r["ok"] else "FAIL"} {r["seconds"]:6.1f} s  {r["plotly_graphs"]:3d} graphs  {r["page"]}{note}', flush=True)
            results.append(r)
    results.sort(key=lambda r: [str(p.relative_to(ROOT)) for p in nbs].index(r['notebook']))
    total = round(time.time() - t0, 1)
    (out / 'build.json').write_text(json.dumps(dict(seconds=total, jobs=jobs, fast=fast, pages=results), indent=1))
    failed = [r for r in results if not r['ok']]
    print(f'\nbuilt {len(results)} pages into {out} in {total} s ({jobs} at a time); open {out / "index.html"}')
    for r in failed: print(f'\nFAILED {r["notebook"]}:\n{r["error"]}')
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT / '_site'), help='build folder (default: _site/ at the top of the repo)')
    ap.add_argument('--only', nargs='*', help='notebook stems or paths under nbs/ without .ipynb (e.g. 00_intro tutorials/real_data)')
    ap.add_argument('--jobs', type=int, default=2, help='notebooks executed at the same time (default 2)')
    ap.add_argument('--timeout', type=int, default=600, help='seconds one cell may run (default 600)')
    ap.add_argument('--fast', action='store_true', help='set IN_TEST=1: the lessons run their small test workloads')
    ap.add_argument('--no-execute', action='store_true', help='render without executing (no outputs; for layout checks)')
    ap.add_argument('--execute-only', nargs='*', help='render every page but execute only these notebooks (the others show code and text only)')
    a = ap.parse_args(argv)
    results = build(Path(a.out).resolve(), a.only, a.jobs, a.timeout, a.fast, not a.no_execute, a.execute_only)
    sys.exit(1 if any(not r['ok'] for r in results) else 0)


if __name__ == '__main__':
    main()
