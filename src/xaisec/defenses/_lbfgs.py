"""Batched limited-memory BFGS for many independent small problems (no bounds).

Mirrors what ``scipy.optimize.minimize(method="L-BFGS-B")`` does on an unconstrained problem
(Byrd, Lu, Nocedal, Zhu 1995; Moré & Thuente 1994 line search), but for ``P`` problems at once:
every problem keeps its own memory, line-search state and stopping decision, and one call of the
objective evaluates all of them. Without bounds the L-BFGS-B step (Cauchy point + subspace
minimisation) is exactly the two-loop L-BFGS direction with ``H0 = s'y / y'y``, which is what is
computed here. Used by :func:`xaisec.defenses.tv_denoise.total_var_min` to reproduce ART's
``TotalVarMin`` numbers without a Python loop over images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor
Objective = Callable[[Tensor], tuple[Tensor, Tensor]]  # x (P,N) -> f (P,), g (P,N)

_EPS = torch.finfo(torch.float64).eps
_XTRAPL, _XTRAPU = 1.1, 4.0


def _cubic_gamma(theta: Tensor, s: Tensor, a: Tensor, b: Tensor, clamp: bool) -> Tensor:
    inner = (theta / s) ** 2 - (a / s) * (b / s)
    return s * torch.sqrt(inner.clamp_min(0) if clamp else inner)


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """One safeguarded cubic/quadratic step of the Moré-Thuente search (all args (P,) tensors)."""
    sgnd = dp * torch.sign(dx)
    # Case 1: higher function value, the minimum is bracketed.
    theta = 3 * (fx - fp) / (stp - stx) + dx + dp
    s = torch.maximum(torch.maximum(theta.abs(), dx.abs()), dp.abs())
    gamma = _cubic_gamma(theta, s, dx, dp, clamp=False)
    gamma = torch.where(stp < stx, -gamma, gamma)
    r = ((gamma - dx) + theta) / (((gamma - dx) + gamma) + dp)
    stpc = stx + r * (stp - stx)
    stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2) * (stp - stx)
    f1 = torch.where((stpc - stx).abs() < (stpq - stx).abs(), stpc, stpc + (stpq - stpc) / 2)
    # Case 2: lower value, derivatives of opposite sign: bracketed.
    gamma = _cubic_gamma(theta, s, dx, dp, clamp=False)
    gamma = torch.where(stp > stx, -gamma, gamma)
    r = ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dx)
    stpc = stp + r * (stx - stp)
    stpq = stp + (dp / (dp - dx)) * (stx - stp)
    f2 = torch.where((stpc - stp).abs() > (stpq - stp).abs(), stpc, stpq)
    # Case 3: lower value, same sign, derivative magnitude decreases.
    gamma = _cubic_gamma(theta, s, dx, dp, clamp=True)
    gamma = torch.where(stp > stx, -gamma, gamma)
    r = ((gamma - dp) + theta) / ((gamma + (dx - dp)) + gamma)
    stpc = torch.where((r < 0) & (gamma != 0), stp + r * (stx - stp), torch.where(stp > stx, stpmax, stpmin))
    stpq = stp + (dp / (dp - dx)) * (stx - stp)
    near = torch.where((stpc - stp).abs() < (stpq - stp).abs(), stpc, stpq)
    bound = stp + 0.66 * (sty - stp)
    f3b = torch.where(stp > stx, torch.minimum(bound, near), torch.maximum(bound, near))
    far = torch.where((stpc - stp).abs() > (stpq - stp).abs(), stpc, stpq)
    f3 = torch.where(brackt, f3b, torch.maximum(stpmin, torch.minimum(stpmax, far)))
    # Case 4: lower value, same sign, derivative magnitude does not decrease.
    theta4 = 3 * (fp - fy) / (sty - stp) + dy + dp
    s4 = torch.maximum(torch.maximum(theta4.abs(), dy.abs()), dp.abs())
    gamma = _cubic_gamma(theta4, s4, dy, dp, clamp=False)
    gamma = torch.where(stp > sty, -gamma, gamma)
    r = ((gamma - dp) + theta4) / (((gamma - dp) + gamma) + dy)
    f4 = torch.where(brackt, stp + r * (sty - stp), torch.where(stp > stx, stpmax, stpmin))

    case1, case2 = fp > fx, (fp <= fx) & (sgnd < 0)
    case3 = (fp <= fx) & (sgnd >= 0) & (dp.abs() < dx.abs())
    stpf = torch.where(case1, f1, torch.where(case2, f2, torch.where(case3, f3, f4)))
    brackt = brackt | case1 | case2
    # Update the interval of uncertainty.
    new_sty = torch.where(case1, stp, torch.where(case2, stx, sty))
    new_fy = torch.where(case1, fp, torch.where(case2, fx, fy))
    new_dy = torch.where(case1, dp, torch.where(case2, dx, dy))
    new_stx = torch.where(case1, stx, stp)
    new_fx = torch.where(case1, fx, fp)
    new_dx = torch.where(case1, dx, dp)
    return new_stx, new_fx, new_dx, new_sty, new_fy, new_dy, stpf, brackt


@dataclass
class _LineSearch:
    """Vectorised state of MINPACK-2 ``dcsrch`` (ftol 1e-3, gtol 0.9, xtol 0.1 as in L-BFGS-B)."""

    stp: Tensor
    finit: Tensor
    ginit: Tensor
    stpmax: float = 1e10
    ftol: float = 1e-3
    gtol: float = 0.9
    xtol: float = 0.1

    def __post_init__(self) -> None:
        z = torch.zeros_like(self.stp)
        self.gtest = self.ftol * self.ginit
        self.width = torch.full_like(self.stp, self.stpmax)
        self.width1 = self.width / 0.5
        self.stx, self.fx, self.gx = z.clone(), self.finit.clone(), self.ginit.clone()
        self.sty, self.fy, self.gy = z.clone(), self.finit.clone(), self.ginit.clone()
        self.stmin = z.clone()
        self.stmax = self.stp + _XTRAPU * self.stp
        self.brackt = torch.zeros_like(self.stp, dtype=torch.bool)
        self.stage2 = torch.zeros_like(self.brackt)

    def step(self, f: Tensor, g: Tensor, live: Tensor) -> Tensor:
        """Feed f, g'd at the current ``stp``; returns the problems whose search ended (CONV or WARN)."""
        stp, gtest = self.stp, self.gtest
        ftest = self.finit + stp * gtest
        self.stage2 = self.stage2 | (f <= ftest) & (g >= 0)
        warn = (self.brackt & ((stp <= self.stmin) | (stp >= self.stmax)))
        warn |= self.brackt & (self.stmax - self.stmin <= self.xtol * self.stmax)
        warn |= (stp == self.stpmax) & (f <= ftest) & (g <= gtest)
        warn |= (stp == 0) & ((f > ftest) | (g >= gtest))
        conv = (f <= ftest) & (g.abs() <= self.gtol * (-self.ginit))
        ended = (warn | conv) & live
        go = live & ~ended

        modified = ~self.stage2 & (f <= self.fx) & (f > ftest)
        sh = torch.where(modified, gtest, torch.zeros_like(gtest))  # auxiliary function psi = f - stp*gtest
        out = _dcstep(self.stx, self.fx - self.stx * sh, self.gx - sh, self.sty, self.fy - self.sty * sh,
                      self.gy - sh, stp, f - stp * sh, g - sh, self.brackt, self.stmin, self.stmax)
        stx, fx, gx, sty, fy, gy, new_stp, brackt = out
        fx, fy, gx, gy = fx + stx * sh, fy + sty * sh, gx + sh, gy + sh
        bisect = brackt & ((sty - stx).abs() >= 0.66 * self.width1)
        new_stp = torch.where(bisect, stx + 0.5 * (sty - stx), new_stp)
        width1 = torch.where(brackt, self.width, self.width1)
        width = torch.where(brackt, (sty - stx).abs(), self.width)
        stmin = torch.where(brackt, torch.minimum(stx, sty), new_stp + _XTRAPL * (new_stp - stx))
        stmax = torch.where(brackt, torch.maximum(stx, sty), new_stp + _XTRAPU * (new_stp - stx))
        new_stp = new_stp.clamp(0, self.stpmax)
        stuck = brackt & ((new_stp <= stmin) | (new_stp >= stmax) | (stmax - stmin <= self.xtol * stmax))
        new_stp = torch.where(stuck, stx, new_stp)
        for name, value in dict(stx=stx, fx=fx, gx=gx, sty=sty, fy=fy, gy=gy, stp=new_stp, brackt=brackt,
                                width=width, width1=width1, stmin=stmin, stmax=stmax).items():
            setattr(self, name, torch.where(go, value, getattr(self, name)))
        return ended


Pair = tuple[Tensor, Tensor, Tensor, Tensor]  # s (P,N), y (P,N), s'y (P,), y'y (P,) (0 = not accepted)


def _in_use(pairs: list[Pair], m: int) -> Tensor:
    """(P,K) mask of the pairs each problem's memory holds: its ``m`` newest accepted ones."""
    valid = torch.stack([p[3] > 0 for p in pairs], 1)
    rank = valid.flip(1).cumsum(1).flip(1)  # 1 = newest accepted pair of the problem
    return valid & (rank <= m)


def _direction(g: Tensor, pairs: list[Pair], m: int) -> Tensor:
    """Two-loop recursion, per problem, with ``H0 = s'y / y'y`` of its newest pair."""
    if not pairs:
        return -g
    use = _in_use(pairs, m)
    q = g.clone()
    alphas = []
    for k in range(len(pairs) - 1, -1, -1):
        s, y, sy, _ = pairs[k]
        a = torch.where(use[:, k], (s * q).sum(1) / sy, torch.zeros_like(sy))
        q = q - a[:, None] * y
        alphas.append(a)
    newest = torch.where(use, torch.arange(len(pairs), device=g.device), -1).amax(1)
    gamma = torch.ones_like(g[:, 0])
    for k, (_, _, sy, yy) in enumerate(pairs):
        gamma = torch.where(newest == k, sy / yy, gamma)
    r = gamma[:, None] * q
    for k, a in zip(range(len(pairs)), reversed(alphas)):
        s, y, sy, _ = pairs[k]
        b = torch.where(use[:, k], (y * r).sum(1) / sy, torch.zeros_like(sy))
        r = r + (a - b)[:, None] * s
    return -r


def lbfgs(fun: Objective, x0: Tensor, max_iter: int, m: int = 10, gtol: float = 1e-5,
          ftol: float = 2.220446049250313e-09, maxls: int = 20) -> Tensor:
    """Minimise ``P`` independent objectives from ``x0`` (P,N) float64; returns x (P,N).

    Stops each problem like scipy's L-BFGS-B: after ``max_iter`` iterations, when the largest
    gradient entry is <= ``gtol``, or when the relative decrease of f is <= ``ftol``.
    """
    x = x0.clone()
    f, g = fun(x)
    active = g.abs().amax(1) > gtol
    n_iter = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    pairs: list[Pair] = []
    zero = torch.zeros_like(f)
    while active.any():
        d = _direction(g, pairs, m)
        gd0 = (g * d).sum(1)
        first = n_iter == 0
        dnorm = d.norm(dim=1)
        stp = torch.where(first, torch.clamp(1 / dnorm, max=1e10), torch.ones_like(f))
        uphill = active & (gd0 >= 0)
        search = _LineSearch(stp, f, gd0)
        live = active & ~uphill
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        failed = uphill.clone()
        for evals in range(maxls + 1):
            if not live.any():
                break
            if evals == maxls:  # too many trial points: L-BFGS-B restarts from steepest descent
                failed |= live
                break
            xt = x + search.stp[:, None] * d
            ft, gt = fun(xt)
            x_new = torch.where(live[:, None], xt, x_new)
            f_new, g_new = torch.where(live, ft, f_new), torch.where(live[:, None], gt, g_new)
            live = live & ~search.step(ft, (gt * d).sum(1), live)
        ok = active & ~failed
        # Memory update (skipped when curvature s'y is not positive enough), as L-BFGS-B does.
        stp = search.stp
        s = stp[:, None] * d
        y = g_new - g
        sy = ((g_new * d).sum(1) - gd0) * stp
        accept = ok & (sy > _EPS * (-gd0 * stp))
        pairs.append((s, y, torch.where(accept, sy, zero + 1), torch.where(accept, (y * y).sum(1), zero)))
        # A failed search with an empty memory ends that problem (scipy: ABNORMAL_TERMINATION).
        had_memory = torch.stack([p[3] > 0 for p in pairs[:-1]], 1).any(1) if len(pairs) > 1 else zero.bool()
        restart = failed & active & had_memory
        for k, (ps, py, psy, pyy) in enumerate(pairs[:-1]):
            pairs[k] = (ps, py, psy, torch.where(restart, zero, pyy))
        reduction = f - f_new
        tiny = reduction <= ftol * torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
        x = torch.where(ok[:, None], x_new, x)
        f, g = torch.where(ok, f_new, f), torch.where(ok[:, None], g_new, g)
        n_iter = n_iter + ok.long()
        # A pair no problem holds any more is never needed again (ranks only grow): free it.
        keep = _in_use(pairs, m).any(0).tolist()
        pairs = [p for p, k in zip(pairs, keep) if k]
        done = ok & ((n_iter >= max_iter) | (g.abs().amax(1) <= gtol) | tiny)
        active = active & ~done & ~(failed & ~restart)
    return x
