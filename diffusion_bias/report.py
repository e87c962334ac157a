"""report.md from the statistics and figures of one or more settings.

Reads only what `analysis` and `figures` wrote, so it can be rewritten without
recomputing anything.
"""

import collections
import datetime
import os
import platform

import jax
import numpy as np

from diffusion_bias import verdict


# One run of one setting: `name` heads its section ("digits", or "digits, seed 1"
# when a setting runs with several seeds); `seed` is what the seeds table shows.
Section = collections.namedtuple("Section", "setting seed stats figure_paths name")


def _fmt(x, digits=3):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        # Epochs and other large values in full (10000, not 1e+04).
        return f"{x:.0f}" if 10**digits <= abs(x) < 1e9 else f"{x:.{digits}g}"
    return str(x)


def _interval(pair):
    return "n/a" if not pair else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def protocol_text(protocol):
    """One paragraph: the chain, sample counts, U-turn, sampler and onset gate used."""
    if not protocol:
        return "Protocol: not recorded in these statistics."
    total, chain = protocol.get("num_steps"), protocol.get("chain_steps")
    parts = [
        (
            f"full reverse chain of T = {total} steps"
            if chain == total
            else f"reverse chain respaced to {chain} of T = {total} steps"
        ),
        f"{protocol.get('num_samples')} coupled samples per twin, {protocol.get('twins')} twins"
        + (
            " (intervals resample twins, or twin pairs, then samples)"
            if (protocol.get("twins") or 0) >= verdict.MIN_RESAMPLED_UNITS
            else ""
        ),
    ]
    if "uturn_items" in protocol:
        ratios = ", ".join(f"{r:g}" for r in protocol.get("uturn_ratios", []))
        parts.append(
            f"U-turn on {protocol['uturn_items']} sequences x {protocol.get('uturn_repeats', 1)} "
            f"noise repetitions at t/T = {ratios}"
        )
        gate = protocol.get("min_grammatical")
        parts.append(
            f"onset searched where >= {gate:g} of the samples are grammatical (the paper: no gate)"
            if gate
            else "onset searched at every snapshot (no grammaticality gate, as the paper)"
        )
    else:
        sampler = protocol.get("image_sampler") or "the package's DDPM sampler"
        clip = protocol.get("clip_x0")
        parts.append(
            f"sampler: {sampler}, "
            + (f"predicted x0 clipped to [-{clip:g}, {clip:g}]" if clip else "no clipping")
        )
    return "Protocol: " + "; ".join(parts) + "."


def stopping_rules_table(stats):
    """Lines of the table: what stopping by each rule would have cost on this run."""
    rows = stats.get("stopping_rules")
    if not rows:
        return []
    quality = "grammatical share" if stats.get("setting") == "tokens" else "sample quality"
    lines = [
        "What each stopping rule would have cost (replayed over the snapshots as it would "
        "run online, `config.monitor` settings; test loss relative to its minimum; "
        f"{quality}: "
        + (
            "share of samples the grammar allows"
            if stats.get("setting") == "tokens"
            else "mean confidence of a classifier of the held-out items"
        )
        + "):",
        "",
        f"| rule | stops at epoch | keeps epoch | test loss over its minimum | membership AUC "
        f"| memorised fraction | closer to own set | {quality} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        excess = r.get("test_loss_excess")
        lines.append(
            f"| {r['rule']} | {_fmt(r.get('stop_epoch'))} | {_fmt(r.get('kept_epoch'))} | "
            f"{'-' if excess is None else f'{100 * excess:+.1f}%'} | "
            f"{_fmt(r.get('membership_auc'))} | {_fmt(r.get('memorized_fraction'))} | "
            f"{_fmt(r.get('closer_to_own'))} | {_fmt(r.get('quality'))} |"
        )
    return lines + [""]


def setting_section(name, stats, figure_paths, report_dir):
    """Markdown of one setting: its verdict table and its figures."""
    v = stats["verdict"]
    at = stats.get("at_onset_and_test_min", {})
    mem = at.get("memorized_fraction", [None, None])
    copies = at.get("copy_fraction", [None, None])
    auc = at.get("membership_auc", [None, None])
    lines = [
        f"## {name}",
        "",
        f"Bias statistic: {v.get('bias_statistic', 'n/a')}; {len(stats['checkpoints'])} "
        f"snapshots from epoch {_fmt(stats['checkpoints'][0])} to "
        f"{_fmt(stats['checkpoints'][-1])}.",
        "",
        protocol_text(stats.get("protocol")),
        "",
        "| | epoch | 95% interval | memorised fraction (d1/d2 < 1/3) | exact copies "
        "(d1 = 0) | membership AUC |",
        "|---|---|---|---|---|---|",
        f"| bias onset | {_fmt(v.get('bias_onset_epoch'))} | "
        f"{_interval(v.get('bias_onset_interval'))} | {_fmt(mem[0])} | {_fmt(copies[0])} | "
        f"{_fmt(auc[0])} |",
        f"| test-loss minimum | {_fmt(v.get('test_loss_min_epoch'))} | "
        f"{_interval(v.get('test_loss_min_interval'))} | {_fmt(mem[1])} | {_fmt(copies[1])} | "
        f"{_fmt(auc[1])} |",
        f"| gap (test-loss minimum - onset) | {_fmt(v.get('gap_epochs'))} | "
        f"{_interval(v.get('gap_interval'))} | | | |",
        "",
    ]
    ungated = v.get("ungated")
    if v.get("grammaticality_gate") and ungated:
        lines += [
            f"The onset above is searched where at least {_fmt(v['grammaticality_gate'])} of the "
            "samples are grammatical. Without that gate (the paper's definition): onset at epoch "
            f"{_fmt(ungated.get('bias_onset_epoch'))} "
            f"{_interval(ungated.get('bias_onset_interval'))}, gap "
            f"{_fmt(ungated.get('gap_epochs'))} {_interval(ungated.get('gap_interval'))}, "
            + ("conclusive." if ungated.get("conclusive") else "inconclusive."),
            "",
        ]
    along_t = stats.get("kl_bp_along_t")
    if along_t:
        peaks = "; ".join(
            f"epoch {_fmt(e)}: "
            + ", ".join(f"k={k} at {_fmt(p)}" for k, p in zip(along_t["k"], row))
            for e, row in zip(along_t["epochs"], along_t["peak_ratio"])
        )
        lines += [f"Critical time (t/T of the peak of KL(BP_k || model)): {peaks}.", ""]
    others = v.get("other_statistics", {})
    if others:
        lines += [
            "Other onset statistics of the paper:",
            "",
            "| statistic | onset epoch | 95% interval | gap to the test-loss minimum | verdict |",
            "|---|---|---|---|---|",
        ]
        for name, o in others.items():
            state = "conclusive" if o.get("conclusive") else "inconclusive"
            lines.append(
                f"| {name} | {_fmt(o.get('bias_onset_epoch'))} | "
                f"{_interval(o.get('bias_onset_interval'))} | {_fmt(o.get('gap_epochs'))} "
                f"{_interval(o.get('gap_interval'))} | {state} |"
            )
        lines.append("")
    if v.get("conclusive"):
        lines.append("**Verdict: conclusive.** Bias sets in before the test-loss minimum.")
    else:
        lines.append("**Verdict: inconclusive.** " + "; ".join(v.get("reasons", [])) + ".")
    if "grammatical_fraction" in stats:
        g = stats["grammatical_fraction"]
        lines.append(
            f"\nGrammatical share of generated sequences: {_fmt(g[0])} at the first snapshot, "
            f"{_fmt(max(g))} at best, {_fmt(g[-1])} at the last."
        )
    lines.append("")
    lines += stopping_rules_table(stats)
    for path in figure_paths:
        rel = os.path.relpath(path, report_dir)
        title = os.path.splitext(os.path.basename(path))[0].replace("_", " ")
        lines += [f"![{title}]({rel})", ""]
    return "\n".join(lines)


def _with_interval(value, interval):
    return f"{_fmt(value)} {_interval(interval)}" if value is not None else "n/a"


def _verdict_cell(v):
    if v.get("conclusive"):
        return "conclusive"
    others = [name for name, o in v.get("other_statistics", {}).items() if o.get("conclusive")]
    return "inconclusive" + (f" (conclusive by {'; '.join(others)})" if others else "")


def seeds_table(sections):
    """Lines: a row per setting and seed, then per setting how many seeds are conclusive.

    Args:
        sections: [Section]; their order within a setting is kept.

    The gap's median is over the seeds that have one (an onset and a
    test-loss minimum); the count says how many that is when some have none.
    """
    by_setting = collections.defaultdict(list)
    for section in sections:
        by_setting[section.setting].append(section)
    lines = [
        "| setting | seed | bias onset (95% interval) | test-loss minimum (95% interval) "
        "| gap, epochs (95% interval) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for setting, rows in by_setting.items():
        for section in rows:
            v = section.stats["verdict"]
            lines.append(
                f"| {setting} | {section.seed} | "
                f"{_with_interval(v.get('bias_onset_epoch'), v.get('bias_onset_interval'))} | "
                f"{_with_interval(v.get('test_loss_min_epoch'), v.get('test_loss_min_interval'))}"
                f" | {_with_interval(v.get('gap_epochs'), v.get('gap_interval'))} | "
                f"{_verdict_cell(v)} |"
            )
        verdicts = [section.stats["verdict"] for section in rows]
        gaps = [v["gap_epochs"] for v in verdicts if v.get("gap_epochs") is not None]
        conclusive = sum(bool(v.get("conclusive")) for v in verdicts)
        line = f"**{setting}**: conclusive in {conclusive} of {len(rows)} seeds; median gap "
        line += (f"{_fmt(float(np.median(gaps)))} epochs") if gaps else "n/a (no seed has an onset)"
        if gaps and len(gaps) < len(rows):
            line += f" (over the {len(gaps)} seeds with an onset)"
        summary.append(line + ".")
    return lines + [""] + [line for s in summary for line in (s, "")]


def write_report(report_dir, sections, timings=None):
    """Writes report_dir/report.md.

    Args:
        report_dir: where report.md goes; figure links are relative to it.
        sections: [Section], one per run: the table of seeds lists them all,
            then each has its own section.
        timings: optional dict stage -> seconds, reported as measured.

    Returns:
        The path of report.md.
    """
    lines = [
        "# Biased generalisation: reproduction report",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on "
        f"{platform.node() or 'this machine'} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, JAX devices: {', '.join(str(d) for d in jax.devices())}).",
        "",
        "Each setting trains K twin models on disjoint splits, then reads every snapshot: "
        "coupled samples (same x_T, same noise) for every twin, their nearest training "
        "items, and the held-out denoising loss on a fixed grid. The bias onset is where the "
        "twins' samples start to part (similarity peak) or to leave the held-out "
        "distribution of distances (NN-divergence minimum); the verdict compares it with the "
        "test-loss minimum, with bootstrap intervals.",
        "",
        "## Verdicts per setting and seed",
        "",
        *seeds_table(sections),
    ]
    for section in sections:
        lines.append(setting_section(section.name, section.stats, section.figure_paths, report_dir))
    if timings:
        lines += ["## Time taken (measured in this run)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]
        lines.append("")
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
