"""Stress cases for `tests/test_cpu_safety.py`, each run in a fresh process: `python cpu_safety_worker.py CASE [--unsafe]`.

Heap corruption inside a native kernel shows up as a crash (SIGSEGV, SIGABRT from glibc) some steps later, so each
case repeats forward + backward many times and exits 0 only when every output and gradient is finite.
`--unsafe` switches off `skelnb.encoders.safe_conv_input` (every convolution then sees the raw channels-last view):
on an affected CPU the library cases then crash, which is how the test was checked to be able to fail.
"""
import sys
import torch

REPS = 20


def check(*tensors):
    for t in tensors:
        if not torch.isfinite(t).all(): sys.exit(f'non-finite values in a tensor of shape {tuple(t.shape)}')


def probe():
    "Pure PyTorch, no skelnb: a stride-2 1x1 convolution on a channels-last view (crashes on affected CPUs)."
    for ci, co in ((4, 8), (8, 16)):
        conv = torch.nn.Conv2d(ci, co, 1, stride=(2, 1))
        for _ in range(REPS):
            x = torch.randn(12, 50, 25, ci).permute(0, 3, 1, 2).requires_grad_()
            y = conv(x); y.square().sum().backward()
            check(y, x.grad)


def blocks(width):
    "ST-GCN blocks at one width, strides 1 and 2, three batch sizes, training mode, forward + backward."
    from skelnb.encoders.stgcn import STGCNBlock
    from skelnb.skeleton import Graph
    A = torch.tensor(Graph('ntu25').A, dtype=torch.float32)
    for ci, co, stride in ((3, width, 1), (width, width, 1), (width, 2 * width, 2), (width, width, 2)):
        blk = STGCNBlock(ci, co, A.shape[0], stride, dropout=0.5).train()
        for b in ((2, 12, 33) if width <= 16 else (2, 7)):
            for _ in range(REPS):
                x = torch.randn(b, 50, 25, ci).requires_grad_()
                y = blk(x, A); y.square().mean().backward()
                check(y, x.grad, *(p.grad for p in blk.parameters()))
                blk.zero_grad()
        with torch.no_grad(): check(blk.eval()(torch.randn(5, 50, 25, ci), A))


def encoders():
    "Whole ST-GCN encoders at widths 4, 8, 16 and the tiny SCD-Net encoder, forward + backward and eval."
    from skelnb.encoders.stgcn import STGCN
    from skelnb.encoders.scdnet import SCDNetEncoder
    for width in (4, 8, 16):
        net = STGCN('skeletonclr', hidden_channels=width, hidden_dim=32, num_class=16).train()
        for b in (2, 5):
            for _ in range(REPS):
                x = torch.randn(b, 3, 50, 25, 2)
                y = net(x); y.square().mean().backward()
                check(y, *(p.grad for p in net.parameters() if p.grad is not None))
                net.zero_grad()
    scd = SCDNetEncoder('tiny').train()
    for _ in range(REPS):
        out = scd(torch.randn(4, 3, 16, 25, 2))
        loss = sum(v.square().mean() for v in (out.values() if isinstance(out, dict) else [out]))
        loss.backward(); scd.zero_grad()


def methods():
    "One training step of every method's lesson preset, repeated (the preset widths 4-8 that crashed before)."
    from skelnb.methods.catalog import METHODS, build_method, one_step
    x = torch.randn(6, 3, 50, 25, 2)
    x[::2, ..., 1] = 0                                   # every other clip has no second person
    for name, preset in [(n, 'lesson') for n in METHODS] + [('a2mc', 'lesson_scdnet')]:   # A2MC's attack on SCD-Net too
        m = build_method(name, preset)
        for step in range(REPS // 4):
            terms, _ = one_step(m, {'x': x.clone()}, epoch=step)
            if not all(torch.isfinite(torch.tensor(v)) for v in terms.values()): sys.exit(f'{name}: non-finite loss terms {terms}')


CASES = {'probe': probe, 'methods': methods, 'encoders': encoders,
         **{f'blocks{w}': (lambda w=w: blocks(w)) for w in (4, 8, 16, 32, 64)}}

if __name__ == '__main__':
    case, unsafe = sys.argv[1], '--unsafe' in sys.argv[2:]
    torch.set_num_threads(1)                             # the crash reproduces with one thread; one thread is also fastest here
    torch.manual_seed(0)
    if unsafe:
        import skelnb.encoders.stgcn_kernels as enc
        enc.safe_conv_input = lambda x, weight, stride=1: x
    CASES[case]()
    print('ok')
