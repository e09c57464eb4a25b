"""A finished study's analysis: power-law fits of validation loss per architecture, the ROI pick, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

# (results column, plot label); results written before a column existed are fitted on the others
AXES = (("parameters", "parameters"), ("dense_parameters", "non-embedding parameters"),
        ("training_flops", "training FLOPs"))


def _axes(results: pd.DataFrame) -> list[tuple[str, str]]:
    return [(axis, label) for axis, label in AXES if axis in results and results[axis].notna().any()]


def _no_fit(n: int, note: str) -> dict:
    return {"points": n, "alpha": math.nan, "alpha_low": math.nan, "alpha_high": math.nan, "alpha_se": math.nan,
            "a": math.nan, "c": math.nan, "note": note, **_no_slope()}


def _no_slope() -> dict:
    return {"slope": math.nan, "slope_low": math.nan, "slope_high": math.nan}


def log_slope(x: np.ndarray, loss: np.ndarray) -> dict:
    """The pure power law ``loss = b·x^(−slope)`` (no floor): least squares on log-log axes, with a 95 %
    Student-t interval on ``slope`` (n − 2 degrees of freedom). Two parameters, so better determined than α
    on a few points; it reads the local steepness over the grid rather than the approach to a floor."""
    from scipy import stats

    if len(x) < 3:
        return _no_slope()
    res = stats.linregress(np.log(x), np.log(loss))
    half = float(stats.t.ppf(0.975, len(x) - 2) * res.stderr)
    return {"slope": float(-res.slope), "slope_low": float(-res.slope - half), "slope_high": float(-res.slope + half)}


def fit_power_law(x: np.ndarray, loss: np.ndarray) -> dict:
    """loss = a * (x / x0)^(-alpha) + c, least squares; 95 % interval on alpha from the covariance, with the
    Student-t quantile of n − 3 degrees of freedom (on 5 points t = 4.30, not the normal 1.96); plus
    :func:`log_slope`, the floor-free exponent."""
    from scipy import stats
    from scipy.optimize import curve_fit

    if len(x) < 3:
        return _no_fit(int(len(x)), "fewer than 3 finished points: no fit")
    x0 = float(x.min())
    f = lambda xx, a, alpha, c: a * (xx / x0) ** (-alpha) + c  # noqa: E731
    span = float(loss.max() - loss.min()) or 1e-3
    try:
        (a, alpha, c), cov = curve_fit(f, x, loss, p0=(span, 0.3, float(loss.min()) * 0.9),
                                       bounds=([0, 0, 0], [np.inf, 5.0, float(loss.min())]), maxfev=20000)
    except (RuntimeError, ValueError) as err:
        return {**_no_fit(int(len(x)), f"fit failed: {err}"), **log_slope(x, loss)}
    se = math.sqrt(cov[1, 1]) if np.isfinite(cov[1, 1]) and len(x) > 3 else math.nan
    half = float(stats.t.ppf(0.975, len(x) - 3)) * se if len(x) > 3 else math.nan
    return {"points": int(len(x)), "alpha": float(alpha), "alpha_low": float(alpha - half),
            "alpha_high": float(alpha + half), "alpha_se": se, "a": float(a), "c": float(c), "x0": x0,
            "note": "" if len(x) > 3 else "3 points for 3 parameters: no interval", **log_slope(x, loss)}


def analyse(results: pd.DataFrame, flops_budget: float | None) -> dict:
    """Power-law fits per architecture against parameters and training FLOPs; the ROI pick (the lowest
    validation logloss within ``flops_budget`` forward FLOPs per example)."""
    done = results[results["status"] == "finished"]
    fits = {}
    for arch, g in done.groupby("arch"):
        fits[arch] = {axis: fit_power_law(g[axis].to_numpy(float), g["valid_logloss"].to_numpy(float))
                      for axis, _ in _axes(done)}
    eligible = done if flops_budget is None else done[done["flops_per_example"] <= flops_budget]
    pick = None
    if len(eligible):
        best = eligible.sort_values(["valid_logloss", "flops_per_example"]).iloc[0]
        pick = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items() if k != "kwargs"}
        pick["kwargs"] = best["kwargs"]
    return {"fits": fits, "roi_pick": pick, "flops_budget": flops_budget}


def plot(results: pd.DataFrame, analysis: dict, out_dir: Path) -> list[Path]:
    """One log-log plot per axis (``scaling_<axis>.png``): the finished points and each fitted curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = results[results["status"] == "finished"]
    paths = []
    for axis, label in _axes(done):
        fig, ax = plt.subplots(figsize=(6, 4))
        for arch, g in done.groupby("arch"):
            g = g.sort_values(axis)
            line = ax.plot(g[axis], g["valid_logloss"], "o", label=arch)[0]
            fit = analysis["fits"].get(arch, {}).get(axis, {})
            if np.isfinite(fit.get("alpha", math.nan)):
                xs = np.geomspace(g[axis].min(), g[axis].max(), 50)
                ys = fit["a"] * (xs / fit["x0"]) ** (-fit["alpha"]) + fit["c"]
                ax.plot(xs, ys, "-", color=line.get_color(), label=f"{arch} fit: alpha={fit['alpha']:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation logloss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
