"""The terminal table and the log-log figure of `transformer-mt bench layers` (the paper's Table 1).

Both read the results dict of `bench.layers.run` (the same dict the JSON file holds), so a figure
can be redrawn from a saved JSON: `plot_layers(json.load(open(path)), "table1.png")`.
"""

from __future__ import annotations

from typing import Any

from transformer_mt.bench.layer_probes import LAYER_TYPES


def require_matplotlib() -> None:
    """matplotlib is in the `bench` extra, not a dependency of the package."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "the plot needs matplotlib: pip install 'transformer-mt[bench]' (or pass plot=null)"
        ) from None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"


def _points(rows: list[dict], key: str, layer: str, d: int | None = None) -> tuple[list, list]:
    """(n values, `key` values) of one layer (at width d), leaving out missing values."""
    points = [
        (r["n"], r[key])
        for r in rows
        if r["layer"] == layer and d in (None, r.get("d")) and r[key] is not None
    ]
    return [n for n, _ in points], [y for _, y in points]


def report(results: dict[str, Any]) -> str:
    """Every measurement, the fitted slopes, the structure probes and the crossovers, as text."""
    env, cfg = results["environment"], results["config"]
    lines = [
        f"Table 1 measured on {env['device']} ({env['device_name']}, threads={env['threads']}, "
        f"torch {env['torch']}), batch {cfg['batch']}, heads {cfg['heads']}, r = {cfg['window']}, "
        f"k = {cfg['kernel']}, {env['date']}",
        "",
        f"{'layer':<22}{'d':>6}{'n':>7}{'GFLOP':>10}{'fwd ms':>10}{'fwd+bwd ms':>12}{'saved MiB':>11}",
    ]
    for row in results["measurements"]:
        lines.append(
            f"{row['layer']:<22}{row['d']:>6}{row['n']:>7}{row['flops'] / 1e9:>10.4f}"
            f"{row['forward_s'] * 1e3:>10.3f}{row['forward_backward_s'] * 1e3:>12.3f}"
            f"{row['saved_activation_bytes'] / 2**20:>11.3f}"
        )

    fit = cfg["lengths"][-cfg["fit_points"] :]
    lines += [
        "",
        f"Slopes of log(cost) against log(n), fitted on n = {fit}:",
        f"{'layer':<22}{'d':>6}{'fwd time':>10}{'fwd+bwd':>10}{'FLOPs':>8}{'memory':>8}   paper",
    ]
    for s in results["slopes_vs_n"]:
        lines.append(
            f"{s['layer']:<22}{s['d']:>6}{_fmt(s['forward_s']):>10}{_fmt(s['forward_backward_s']):>10}"
            f"{_fmt(s['flops']):>8}{_fmt(s['saved_activation_bytes']):>8}   "
            f"{results['theory'][s['layer']]['complexity']}"
        )

    lines += ["", f"Sequential operations (dependent kernels on the critical path) at n = {cfg['lengths']}:"]
    for layer, theory in results["theory"].items():
        kernels = _points(results["sequential_ops"], "kernels", layer)[1]
        slope = results["structure_slopes_vs_n"][layer]["kernels_vs_n"]
        lines.append(f"  {layer:<22}{str(kernels):<44} slope {_fmt(slope)}   paper {theory['sequential']}")
    lines += ["", f"Maximum path length (stacked layers, probed by gradient) at n = {cfg['probe_lengths']}:"]
    for layer, theory in results["theory"].items():
        depths = [
            p["path_length"] for p in results["path_length"] if p["layer"] == layer
        ]  # None: not reached
        slope = results["structure_slopes_vs_n"][layer]["path_length_vs_n"]
        lines.append(f"  {layer:<22}{str(depths):<44} slope {_fmt(slope)}   paper {theory['path']}")

    recurrent = [c for c in results["crossovers"] if c["versus"] == "recurrent"]
    if recurrent:
        first, last = cfg["lengths"][0], cfg["lengths"][-1]
        lines += [
            "",
            "Self-attention against the recurrent layer (the paper: self-attention is cheaper while n < d):",
            f"{'d':>7}  {'cost':<22}{'dearer from n':>14}{f'ratio at n={first}':>18}{f'ratio at n={last}':>18}",
        ]
        for c in recurrent:
            for metric, name in (
                ("flops", "FLOPs"),
                ("forward_s", "forward time"),
                ("forward_backward_s", "fwd+bwd time"),
            ):
                at = "-" if c[metric]["n"] is None else f"{c[metric]['n']:.0f}"
                lines.append(
                    f"{c['d']:>7}  {name:<22}{at:>14}{c[metric]['ratio_first']:>18.2f}{c[metric]['ratio_last']:>18.2f}"
                )
    return "\n".join(lines)


def _draw(ax: Any, title: str, lines: list[tuple[str, list, list, str]], mark: int | None = None) -> None:
    """Log-log lines (layer, n values, y values, label) on base-2 n axes; a dashed line at n = mark."""
    from matplotlib.ticker import ScalarFormatter

    for layer, ns, ys, label in lines:
        ax.plot(ns, ys, "o-", ms=3, color=f"C{LAYER_TYPES.index(layer)}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    if mark is not None:
        ax.axvline(mark, color="grey", ls="--", lw=1)
        ax.text(mark, ax.get_ylim()[1], " n = d", va="top", fontsize=8, color="grey")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("n")
    ax.legend(fontsize=7)


def plot_layers(results: dict[str, Any], path: str) -> None:
    """Forward time and FLOPs against n per width (fitted slopes in the legend, n = d marked), then
    sequential operations, path length and saved activations against n."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, env, rows = results["config"], results["environment"], results["measurements"]
    widths, layers = cfg["widths"], list(results["theory"])
    slopes = {(s["layer"], s["d"]): s for s in results["slopes_vs_n"]}
    columns = max(len(widths), 3)
    fig, axes = plt.subplots(3, columns, figsize=(4.5 * columns, 12), squeeze=False)

    for col, d in enumerate(widths):
        for row, (metric, what) in enumerate((("forward_s", "forward time (s)"), ("flops", "FLOPs"))):
            lines = [
                (
                    layer,
                    *_points(rows, metric, layer, d),
                    f"{layer} (slope {_fmt(slopes[(layer, d)][metric])})",
                )
                for layer in layers
            ]
            _draw(axes[row][col], f"{what}, d = {d}", lines, mark=d)
    structure = (
        ("sequential operations (dependent kernels)", results["sequential_ops"], "kernels", None),
        ("maximum path length (stacked layers)", results["path_length"], "path_length", None),
        (
            f"activations saved for backward (bytes), d = {widths[-1]}",
            rows,
            "saved_activation_bytes",
            widths[-1],
        ),
    )
    for col, (title, section, key, d) in enumerate(structure):
        _draw(axes[2][col], title, [(layer, *_points(section, key, layer, d), layer) for layer in layers])
    for ax in axes.flat:
        if not ax.has_data():
            ax.axis("off")

    fig.suptitle(
        f"Table 1 measured: {env['device_name']} ({env['device']}, threads={env['threads']}), "
        f"torch {env['torch']}, batch {cfg['batch']}, r = {cfg['window']}, k = {cfg['kernel']}, {env['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
