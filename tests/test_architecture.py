"""The dependency rule of ARCHITECTURE.md: every skelnb module imports only layers below it (no import circle)."""
import ast, importlib.util, pkgutil
from pathlib import Path
import skelnb

# rank of every module's layer (lower = more basic); a module may import modules of a lower rank, or its own
# layer's modules listed in SAME_LAYER_ORDER before it
RANKS = {
    'skeleton': 1, 'formats': 2, 'prepare': 3, 'data': 4, 'augment': 5, 'encoders': 6,
    'memory': 7, 'losses': 7, 'attacks': 7, 'mixers': 7,
    'methods': 8, 'train': 9, 'evaluate': 10,
    'viz': 11, 'explore': 11, 'augment.explorer': 11, 'attack_explorer': 11, 'mechanisms': 11,
    'main': 12, 'bench': 13, 'cli': 14,
}
ANYWHERE = {'runtime', 'checkpoint'}   # import nothing from skelnb; every layer may use them
WITHIN = {   # inside one layer, the order in which modules may build on each other
    'augment': ['augment.core', 'augment.ops', 'augment.presets', 'augment.reference'],
    'encoders': ['encoders.stgcn_kernels', 'encoders.stgcn', 'encoders.necks', 'encoders.scdnet'],
    'memory': ['losses', 'memory', 'mixers', 'attacks'],
    'methods': ['methods.core', 'methods.skeletonclr', 'methods.crossclr', 'methods.aimclr', 'methods.a2mc',
                'methods.skeattnclr', 'methods.catalog'],
    'viz': ['viz', 'explore', 'augment.explorer', 'attack_explorer', 'mechanisms'],
}


def _modules():
    for m in pkgutil.walk_packages(skelnb.__path__, 'skelnb.'):
        if not m.name.endswith('_modidx'): yield m.name


def _imports(name):
    "Every skelnb module `name` imports, at module level or inside functions."
    path = Path(importlib.util.find_spec(name).origin)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = name.split('.')[:-node.level] if node.level else []
            if path.name == '__init__.py' and node.level: base = name.split('.')[:len(name.split('.')) - node.level + 1]
            mod = '.'.join(base + ([node.module] if node.module else [])) if node.level else (node.module or '')
            if mod.startswith('skelnb.'): out.add(mod[len('skelnb.'):])
        elif isinstance(node, ast.Import):
            out |= {a.name[len('skelnb.'):] for a in node.names if a.name.startswith('skelnb.')}
    return out


def _layer(mod):
    "(rank, position within the layer) of a module name relative to the package, e.g. 'methods.core'."
    if mod in RANKS: key = mod
    else: key = mod.split('.')[0]
    rank = RANKS[key]
    for group, order in WITHIN.items():
        if mod in order: return rank if mod not in RANKS else RANKS[mod], order.index(mod)
    return rank, 0


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m[len('skelnb.'):] not in ANYWHERE and m.count('.') >= 1
               and m[len('skelnb.'):].split('.')[0] not in RANKS and m[len('skelnb.'):] not in RANKS
               and not m.endswith('__init__')]
    assert not missing, f'modules without a layer in ARCHITECTURE.md: {missing}'


def test_imports_go_downward_only():
    bad = []
    for full in _modules():
        mod = full[len('skelnb.'):]
        if mod in ('encoders', 'augment', 'methods'): continue     # empty package __init__
        deps = _imports(full) - {mod}
        if mod in ANYWHERE:
            bad += [f'{mod} imports {d}' for d in deps]
            continue
        me = _layer(mod)
        for d in deps:
            if d in ANYWHERE: continue
            other = _layer(d)
            if other >= me: bad.append(f'{mod} (layer {me}) imports {d} (layer {other})')
    assert not bad, 'imports against the layer order of ARCHITECTURE.md:\n' + '\n'.join(sorted(bad))
