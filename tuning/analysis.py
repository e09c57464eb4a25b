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


def fit_reducible(x: np.ndarray, loss: np.ndarray, floor: float) -> dict:
    """The power law of the loss above a known floor, ``loss − floor = b·x^(−exponent)``: with the floor
    known (the Bayes loss of synthetic data) the saturating law has two parameters left, fitted on log-log
    axes with a 95 % Student-t interval (n − 2 degrees of freedom)."""
    excess = loss - floor
    if (excess <= 0).any():
        return {"exponent": math.nan, "exponent_low": math.nan, "exponent_high": math.nan,
                "note": "a loss at or below the floor: no fit"}
    s = log_slope(x, excess)
    return {"exponent": s["slope"], "exponent_low": s["slope_low"], "exponent_high": s["slope_high"],
            "note": "" if np.isfinite(s["slope"]) else "fewer than 3 finished points: no fit"}


def analyse(results: pd.DataFrame, flops_budget: float | None, floor: float | None = None) -> dict:
    """Power-law fits per architecture against parameters and training FLOPs; with ``floor`` (the lowest
    loss possible, known for synthetic data) also the fit of the loss above it (``reducible``); the ROI pick
    (the lowest validation logloss within ``flops_budget`` forward FLOPs per example)."""
    done = results[results["status"] == "finished"]
    fits = {}
    for arch, g in done.groupby("arch"):
        loss = g["valid_logloss"].to_numpy(float)
        fits[arch] = {}
        for axis, _ in _axes(done):
            x = g[axis].to_numpy(float)
            fits[arch][axis] = fit_power_law(x, loss)
            if floor is not None:
                fits[arch][axis]["reducible"] = fit_reducible(x, loss, floor)
    eligible = done if flops_budget is None else done[done["flops_per_example"] <= flops_budget]
    pick = None
    if len(eligible):
        best = eligible.sort_values(["valid_logloss", "flops_per_example"]).iloc[0]
        pick = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items() if k != "kwargs"}
        pick["kwargs"] = best["kwargs"]
    return {"fits": fits, "roi_pick": pick, "flops_budget": flops_budget, "bayes_logloss": floor}


def _fitted_curve(x: np.ndarray, loss: np.ndarray, fit: dict, floor: float | None):
    """(xs, ys, legend) of an architecture's fitted curve on one axis: the saturating law, or with ``floor``
    the power law of the loss above it; None where there is no fit."""
    xs = np.geomspace(x.min(), x.max(), 50)
    if floor is None:
        if not np.isfinite(fit.get("alpha", math.nan)):
            return None
        return xs, fit["a"] * (xs / fit["x0"]) ** (-fit["alpha"]) + fit["c"], f"alpha={fit['alpha']:.2f}"
    exponent = fit.get("reducible", {}).get("exponent", math.nan)
    if not np.isfinite(exponent):
        return None
    log_b = np.mean(np.log(loss - floor) + exponent * np.log(x))  # the least-squares intercept
    return xs, np.exp(log_b) * xs ** -exponent, f"exponent={exponent:.2f}"


def plot(results: pd.DataFrame, analysis: dict, out_dir: Path) -> list[Path]:
    """One log-log plot per axis (``scaling_<axis>.png``): the finished points and each fitted curve; with a
    known floor also the loss above it against each axis (``scaling_reducible_<axis>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = results[results["status"] == "finished"]
    floor = analysis.get("bayes_logloss")
    kinds = [("", None)] + ([("reducible_", floor)] if floor is not None else [])
    paths = []
    for prefix, below in kinds:
        for axis, label in _axes(done):
            fig, ax = plt.subplots(figsize=(6, 4))
            for arch, g in done.groupby("arch"):
                g = g.sort_values(axis)
                x, loss = g[axis].to_numpy(float), g["valid_logloss"].to_numpy(float)
                line = ax.plot(x, loss if below is None else loss - below, "o", label=arch)[0]
                curve = _fitted_curve(x, loss, analysis["fits"].get(arch, {}).get(axis, {}), below)
                if curve is not None:
                    ax.plot(curve[0], curve[1], "-", color=line.get_color(), label=f"{arch} fit: {curve[2]}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("validation logloss" if below is None else
                          f"validation logloss − Bayes logloss ({below:.4f})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"scaling_{prefix}{axis}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths
