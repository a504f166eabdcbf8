#!/usr/bin/python3
"""Plots a `dsi sweep` JSON: latency per token and speedup against the number of MPI ranks
(GPUs + 1: the coordinator computes nothing), measured beside the closed forms of docs/dsi.md
and the simulator's predictions. Usage: plot_sweep.py SWEEP.json OUT.png (Debian's
python3-matplotlib; run with /usr/bin/python3)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def main(src, dst):
    d = json.load(open(src))
    cfg, rows = d["config"], d["rows"]
    non = next(r for r in rows if r["mode"] == "nonsi")
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_ranks = sorted({r["ranks"] for r in rows})
    lo, hi = min(all_ranks) - 0.3, max(all_ranks) + 0.3

    ax_l.axhline(non["latency_ms"], color="black", lw=1.2, label=f"non-SI measured ({non['latency_ms']:.2f} ms)")
    ax_l.axhline(non["formula_ms"], color="black", lw=0.8, ls=":", label="non-SI closed form")
    ax_s.axhline(1.0, color="black", lw=1.0, ls=":", label="non-SI")
    ax_l.plot([non["ranks"]], [non["latency_ms"]], "o", color="black", ms=7)
    chains = [r for r in rows if not r.get("tree")]
    for i, k in enumerate(d["lookaheads"]):
        col = colors[i % len(colors)]
        si = next(r for r in chains if r["mode"] == "si" and r["k"] == k)
        ds = sorted((r for r in chains if r["mode"] == "dsi" and r["k"] == k), key=lambda r: r["ranks"])
        ax_l.plot([si["ranks"]], [si["latency_ms"]], "s", color=col, ms=7, label=f"SI k={k} measured")
        ax_l.axhline(si["formula_ms"], color=col, lw=0.8, ls="-.", label=f"SI k={k} closed form")
        ax_s.plot([si["ranks"]], [si["speedup_vs_nonsi"]], "s", color=col, ms=7, label=f"SI k={k} measured")
        if not ds:
            continue
        x = [r["ranks"] for r in ds]
        ax_l.plot(x, [r["latency_ms"] for r in ds], "o-", color=col, lw=2, label=f"DSI k={k} measured")
        ax_l.plot(x, [r["sim_same_tokens_ms"] for r in ds], "x--", color=col, lw=1,
                  label=f"DSI k={k} simulated (same tokens)")
        ax_l.plot(x, [r["sim_iid_ms"] for r in ds], "+:", color=col, lw=1, ms=9,
                  label=f"DSI k={k} simulated (i.i.d.)")
        ax_l.hlines(ds[0]["formula_ms"], lo, hi, color=col, lw=0.8, ls="--",
                    label=f"DSI k={k} closed form (SP >= {ds[0]['sp_needed']})")
        ax_s.plot(x, [r["speedup_vs_nonsi"] for r in ds], "o-", color=col, lw=2, label=f"DSI k={k} measured")
        ax_s.plot(x, [non["sim_iid_ms"] / r["sim_iid_ms"] for r in ds], "+:", color=col, ms=9,
                  label=f"DSI k={k} simulated (i.i.d.)")
        ax_s.hlines(non["formula_ms"] / ds[0]["formula_ms"], lo, hi, color=col, lw=0.8, ls="--",
                    label=f"DSI k={k} closed form")
    # Token trees (--trees): measured and simulated (same tokens); no closed form.
    shapes = list(dict.fromkeys(r["tree"] for r in rows if r.get("tree")))
    for j, shape in enumerate(shapes):
        col = colors[(len(d["lookaheads"]) + j) % len(colors)]
        si = next(r for r in rows if r["mode"] == "si" and r.get("tree") == shape)
        ds = sorted((r for r in rows if r["mode"] == "dsi" and r.get("tree") == shape),
                    key=lambda r: r["ranks"])
        ax_l.plot([si["ranks"]], [si["latency_ms"]], "D", color=col, ms=7, label=f"SI tree [{shape}] measured")
        ax_s.plot([si["ranks"]], [si["speedup_vs_nonsi"]], "D", color=col, ms=7, label=f"SI tree [{shape}] measured")
        if not ds:
            continue
        x = [r["ranks"] for r in ds]
        ax_l.plot(x, [r["latency_ms"] for r in ds], "D-", color=col, lw=2, label=f"DSI tree [{shape}] measured")
        ax_l.plot(x, [r["sim_same_tokens_ms"] for r in ds], "x--", color=col, lw=1,
                  label=f"DSI tree [{shape}] simulated (same tokens)")
        ax_s.plot(x, [r["speedup_vs_nonsi"] for r in ds], "D-", color=col, lw=2, label=f"DSI tree [{shape}] measured")
    for ax in (ax_l, ax_s):
        ax.set_xlabel("MPI ranks (coordinator + drafter + SP targets; GPUs = ranks - 1)")
        ax.set_xticks(all_ranks)
        ax.set_xlim(lo, hi)
        ax.grid(alpha=0.3)
    ax_l.set_ylabel("latency per token (ms, log scale)")
    ax_l.set_yscale("log")
    ax_l.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_l.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_s.set_ylabel("speedup vs non-SI (each against its own non-SI)")
    ax_s.set_ylim(bottom=0)
    ax_l.set_title("latency per token")
    ax_s.set_title("speedup vs non-SI")
    ax_l.legend(fontsize=7, loc="best")
    ax_s.legend(fontsize=7, loc="best")
    fig.suptitle(f"dsi sweep: {cfg['engine']} engine, t = {cfg['t_ms']:g} ms, c = {cfg['c']:g} t, "
                 f"a = {cfg['a']:g}, {cfg['tokens']} tokens/run, queue {cfg['queue']} ({cfg['path']})")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot written to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_sweep.py SWEEP.json OUT.png")
    main(sys.argv[1], sys.argv[2])
