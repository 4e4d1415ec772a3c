"""The batched L-BFGS follows scipy's L-BFGS-B iterate for iterate on unconstrained problems."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from xaisec.defenses._lbfgs import lbfgs


def rosenbrock(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = x[:, :-1], x[:, 1:]
    f = (scale[:, None] * (b - a**2) ** 2 + (1 - a) ** 2).sum(1)
    g = torch.zeros_like(x)
    g[:, :-1] += -4 * scale[:, None] * a * (b - a**2) - 2 * (1 - a)
    g[:, 1:] += 2 * scale[:, None] * (b - a**2)
    return f, g


@pytest.mark.parametrize("max_iter", [1, 5, 30])
def test_matches_scipy_lbfgsb_per_problem(max_iter):
    rng = np.random.RandomState(0)
    x0 = torch.from_numpy(rng.uniform(-2, 2, (6, 5)))
    scale = torch.from_numpy(rng.uniform(1, 100, 6))
    out = lbfgs(lambda z: rosenbrock(z, scale), x0, max_iter=max_iter)
    for i in range(6):
        def fun(z, i=i):
            f, g = rosenbrock(torch.from_numpy(z)[None], scale[i:i + 1])
            return f.item(), g[0].numpy()
        ref = minimize(fun, x0[i].numpy(), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        np.testing.assert_allclose(out[i].numpy(), ref.x, rtol=1e-7, atol=1e-9)


def test_converged_problems_stay_put_and_others_continue():
    x0 = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # first is the minimum
    out = lbfgs(lambda z: rosenbrock(z, torch.full((2,), 10.0, dtype=torch.float64)), x0, max_iter=200)
    assert torch.equal(out[0], x0[0])
    assert torch.allclose(out[1], torch.ones(3, dtype=torch.float64), atol=1e-4)
