"""report.md from the statistics and figures of one or more settings.

Reads only what `analysis` and `figures` wrote, so it can be rewritten without
recomputing anything.
"""

import collections
from collections.abc import Mapping
from collections.abc import Sequence
import datetime
import os
import platform
from typing import Any

import jax
import numpy as np

from diffusion_bias import files
from diffusion_bias.instrument import verdict
from diffusion_bias import setting as setting_lib

# One run of one setting: `name` heads its section ("digits", or "digits, seed 1"
# when a setting runs with several seeds); `seed` is what the seeds table shows.
Section = collections.namedtuple("Section", "setting seed stats figure_paths name")


def protocol_text(protocol: Mapping[str, Any] | None) -> str:
    """One paragraph: the chain, sample counts, aggregate, U-turn, sampler and onset gate used."""
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
            f" ({protocol['splits']} splits x {protocol['seeds_per_split']} seeds; the pair "
            "statistics over cross-split pairs)"
            if protocol.get("seeds_per_split", 1) > 1
            else ""
        )
        + (
            " (intervals resample twins, or twin pairs, then samples)"
            if (protocol.get("twins") or 0) >= verdict.MIN_RESAMPLED_UNITS
            else ""
        ),
    ]
    if protocol.get("test_loss_every_step_items"):
        parts.append(
            f"test loss at every step 1..T on {protocol['test_loss_every_step_items']} "
            "held-out items, one noise draw a step"
        )
    aggregate = protocol.get("aggregate")
    if aggregate is not None:
        # Fewer than 3 units: the median of one or two values is their mean.
        few = (protocol.get("twins") or 0) < verdict.MIN_RESAMPLED_UNITS
        parts.append(
            f"verdict curves: the {aggregate} over twins and twin pairs"
            + (" (with 2 twins, the mean)" if aggregate == "median" and few else "")
        )
    if "uturn_items" in protocol:
        ratios = ", ".join(f"{r:g}" for r in protocol.get("uturn_ratios", []))
        parts.append(
            f"U-turn on {protocol['uturn_items']} sequences x {protocol.get('uturn_repeats', 1)} "
            f"noise repetitions at t/T = {ratios}"
        )
        if "kl_items" in protocol:
            parts.append(
                f"KLs at the critical time on {protocol['kl_items']} held-out sequences x "
                f"{protocol['kl_repeats']} noisings; loss decomposition on "
                f"{protocol['decomposition_items']} items a set"
            )
        gate = protocol.get("min_grammatical")
        parts.append(
            f"onset searched where >= {gate:g} of the samples are grammatical (the paper: no gate)"
            if gate
            else "onset searched at every snapshot (no grammaticality gate, as the paper)"
        )
    else:
        if "eval_centering_items" in protocol:
            first = protocol["eval_centering_items"]
            parts.append(
                "the test loss at every step and the score cosine centred by the mean of "
                + (f"the pool's first {first} items" if first else "the whole pool")
                + " for every twin"
            )
        sampler = protocol.get("image_sampler") or "the package's DDPM sampler"
        clip = protocol.get("clip_x0")
        parts.append(
            f"sampler: {sampler}, "
            + (f"predicted x0 clipped to [-{clip:g}, {clip:g}]" if clip else "no clipping")
        )
    return "Protocol: " + "; ".join(parts) + "."


def stopping_rules_table(stats: dict[str, Any]) -> list[str]:
    """Lines of the table: what stopping by each rule would have cost on this run."""
    rows = stats.get("stopping_rules")
    if not rows:
        return []
    setting = setting_lib.of(stats["setting"])
    quality = setting.quality_name
    lines = [
        "What each stopping rule would have cost (replayed over the snapshots as it would "
        "run online, `config.monitor` settings; test loss relative to its minimum; "
        f"{quality}: " + setting.quality_meaning + "):",
        "",
        f"| rule | stops at epoch | keeps epoch | test loss over its minimum | membership AUC "
        f"| TPR at 1% FPR | epsilon >= | memorised fraction | closer to own set | {quality} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        excess = r.get("test_loss_excess")
        lines.append(
            f"| {r['rule']} | {verdict.number(r.get('stop_epoch'))} | "
            f"{verdict.number(r.get('kept_epoch'))} | "
            f"{'-' if excess is None else f'{100 * excess:+.1f}%'} | "
            f"{verdict.number(r.get('membership_auc'))} | "
            f"{verdict.number(r.get('tpr'))} | {verdict.number(r.get('epsilon'))} | "
            f"{verdict.number(r.get('memorized_fraction'))} | "
            f"{verdict.number(r.get('closer_to_own'))} | {verdict.number(r.get('quality'))} |"
        )
    return lines + [""]


def privacy_table(stats: dict[str, Any]) -> list[str]:
    """Lines: the membership audit at the onset, the test-loss minimum and the last snapshot."""
    p, v = stats.get("privacy"), stats["verdict"]
    if not p:
        return []
    last = len(stats["checkpoints"]) - 1
    where = [
        ("bias onset", v.get("bias_onset_index")),
        ("test-loss minimum", v.get("test_loss_min_index")),
        ("last snapshot", last),
    ]
    confidence = f"{100 * p['confidence']:g}%"
    lines = [
        f"Membership audit (the strongest attack score of each snapshot, chosen on half of "
        f"the items and measured on the other half; {confidence} bootstrap intervals; the "
        f"one-run epsilon lower bound at {confidence} confidence, delta = {p['delta']:g}, "
        "from the twins' split; docs/privacy.md):",
        "",
        "| | epoch | score | AUC | TPR at 1% FPR | TPR at 0.1% FPR | epsilon >= (score) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, i in where:
        if i is None:
            continue
        score = p["strongest"][i]
        tpr, tpr_iv = p["tpr"][score][i], p["tpr_interval"][i]
        lines.append(
            f"| {name} | {verdict.number(stats['checkpoints'][i])} | {score} | "
            f"{verdict.with_interval(p['auc'][score][i], p['auc_interval'][i])} | "
            f"{verdict.with_interval(tpr[0], tpr_iv[0])} | "
            f"{verdict.with_interval(tpr[1], tpr_iv[1])} | "
            f"{verdict.number(p['epsilon'][i])} ({p['epsilon_score'][i]}) |"
        )
    onset, test_min = v.get("bias_onset_index"), v.get("test_loss_min_index")
    if onset is not None and test_min is not None:
        lines += [
            "",
            f"At the test-loss minimum the one-run audit gives epsilon >= "
            f"{verdict.number(p['epsilon'][test_min])} ({confidence}); at the bias onset, "
            f"{verdict.number(p['epsilon'][onset])}.",
        ]
    return lines + [""]


def uturn_random_lines(stats: dict[str, Any]) -> list[str]:
    """Lines on the U-turn on random sequences (Fig. 11), where the run has it; else []."""
    entry = stats.get("uturn_random")
    if not entry:
        return []
    ratios = entry["ratios"]

    def span(values):
        return f"{verdict.number(values[0])} to {verdict.number(values[-1])}"

    models = "; ".join(
        f"at epoch {verdict.number(e)} {span(m)}" for e, m in zip(entry["epochs"], entry["model"])
    )
    return [
        f"U-turn on {entry['items']} uniform random sequences (the paper's Fig. 11), the "
        f"share of tokens recovered from t/T = {ratios[0]:g} to {ratios[-1]:g}: the model "
        f"{models}; exact BP {span(entry['bp'][0])}; the memorising denoiser "
        f"({entry['memorizing_items']} training sequences) {span(entry['memorizing'])}.",
        "",
    ]


def same_split_lines(stats: dict[str, Any]) -> list[str]:
    """Lines on the same-split control (Fig. 1b), where the run has one; else []."""
    entry = stats.get("same_split")
    if not entry:
        return []
    sim = entry["similarity"]
    same, cross = sim["same"]["mean"], sim["cross"]["mean"]
    v = stats["verdict"]
    where = (
        f"they part at epoch {verdict.number(entry['part_epoch'])} (the same-split pairs "
        "at least 3 paired standard errors more alike at it and at every later snapshot)"
        if entry.get("part_epoch") is not None
        else "they do not part within the run (never 3 paired standard errors apart to the end)"
    )
    return [
        f"Same-split control ({entry['seeds_per_split']} seeds a split; "
        f"{entry['pairs']['same']} same-split and {entry['pairs']['cross']} cross-split pairs): "
        f"similarity {verdict.number(same[0])} against {verdict.number(cross[0])} at the first "
        f"snapshot, {verdict.number(same[-1])} against {verdict.number(cross[-1])} at the last; "
        f"{where}; bias onset {verdict.number(v.get('bias_onset_epoch'))}, test-loss minimum "
        f"{verdict.number(v.get('test_loss_min_epoch'))}.",
        "",
    ]


def _onset_table(v, at):
    """Markdown rows: onset, test-loss minimum and gap, with memorisation at the first two."""
    mem = at.get("memorized_fraction", [None, None])
    copies = at.get("copy_fraction", [None, None])
    auc = at.get("membership_auc", [None, None])
    return [
        "| | epoch | 95% interval | memorised fraction (d1/d2 < 1/3) | exact copies "
        "(d1 = 0) | membership AUC |",
        "|---|---|---|---|---|---|",
        f"| bias onset | {verdict.number(v.get('bias_onset_epoch'))} | "
        f"{verdict.interval(v.get('bias_onset_interval'))} | {verdict.number(mem[0])} | "
        f"{verdict.number(copies[0])} | "
        f"{verdict.number(auc[0])} |",
        f"| test-loss minimum | {verdict.number(v.get('test_loss_min_epoch'))} | "
        f"{verdict.interval(v.get('test_loss_min_interval'))} | {verdict.number(mem[1])} | "
        f"{verdict.number(copies[1])} | "
        f"{verdict.number(auc[1])} |",
        f"| gap (test-loss minimum - onset) | {verdict.number(v.get('gap_epochs'))} | "
        f"{verdict.interval(v.get('gap_interval'))} | | | |",
        "",
    ]


def _other_statistics_table(others):
    """Markdown rows of the paper's other onset statistics; none when there are none."""
    if not others:
        return []
    lines = [
        "Other onset statistics of the paper:",
        "",
        "| statistic | onset epoch | 95% interval | gap to the test-loss minimum | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, o in others.items():
        state = verdict.conclusion(o)
        lines.append(
            f"| {name} | {verdict.number(o.get('bias_onset_epoch'))} | "
            f"{verdict.interval(o.get('bias_onset_interval'))} | "
            f"{verdict.number(o.get('gap_epochs'))} "
            f"{verdict.interval(o.get('gap_interval'))} | {state} |"
        )
    return lines + [""]


def setting_section(
    name: str, stats: dict[str, Any], figure_paths: Sequence[str], report_dir: str
) -> str:
    """Markdown of one setting: its verdict table and its figures."""
    v = stats["verdict"]
    lines = [
        f"## {name}",
        "",
        f"Bias statistic: {v.get('bias_statistic', 'n/a')}; {len(stats['checkpoints'])} "
        f"snapshots from epoch {verdict.number(stats['checkpoints'][0])} to "
        f"{verdict.number(stats['checkpoints'][-1])}.",
        "",
        protocol_text(stats.get("protocol")),
        "",
    ]
    for d in stats.get("damaged_snapshots", []):
        lines += [
            f"Left out: the snapshot at epoch {verdict.number(d['epoch'])}, {d['reason']}.",
            "",
        ]
    if stats.get("refined"):
        # The tables below read the analysed grid; the replayed snapshots add the
        # refined onset, minimum and verdict further down.
        lines += ["On the log-spaced grid (the refined verdict is below):", ""]
    lines += _onset_table(v, stats.get("at_onset_and_test_min", {}))
    words = verdict.in_words(v)
    if "gate" in words:
        lines += [words["gate"], ""]
    along_t = stats.get("kl_bp_along_t")
    if along_t:
        peaks = "; ".join(
            f"epoch {verdict.number(e)}: "
            + ", ".join(f"k={k} at {verdict.number(p)}" for k, p in zip(along_t["k"], row))
            for e, row in zip(along_t["epochs"], along_t["peak_ratio"])
        )
        lines += [f"Critical time (t/T of the peak of KL(BP_k || model)): {peaks}.", ""]
        exact = along_t.get("from_exact")
        if exact:
            bp_peaks = ", ".join(
                f"k={k} at {verdict.number(p)}" for k, p in zip(exact["k"], exact["bp_peak_ratio"])
            )
            lines += [
                "The authors' critical time, from exact BP alone (t/T of the peak of "
                f"KL(BP_0 || BP_k)): {bp_peaks}.",
                "",
            ]
    lines += uturn_random_lines(stats)
    lines += _other_statistics_table(v.get("other_statistics", {}))
    if "minimum" in words:
        lines += [words["minimum"], ""]
    refined = stats.get("refined")
    if refined:
        added = len(refined["steps"]) - len(stats["steps"])
        lines += [
            f"Refined ({added} snapshots replayed around the extrema, "
            f"{len(refined['steps'])} in all): {verdict.sentence(refined['verdict'])}",
            "",
            "**Verdict** (refined grid): " + verdict.in_words(refined["verdict"])["conclusion"],
            f"On the log-spaced grid alone: {words['conclusion']}",
        ]
    else:
        lines.append("**Verdict:** " + words["conclusion"])
    if "grammatical_fraction" in stats:
        g = stats["grammatical_fraction"]
        lines.append(
            "\nGrammatical share of generated sequences: "
            f"{verdict.number(g[0])} at the first snapshot, "
            f"{verdict.number(max(g))} at best, {verdict.number(g[-1])} at the last."
        )
    lines.append("")
    lines += same_split_lines(stats)
    lines += privacy_table(stats)
    lines += stopping_rules_table(stats)
    for path in figure_paths:
        rel = os.path.relpath(path, report_dir)
        title = os.path.splitext(os.path.basename(path))[0].replace("_", " ")
        lines += [f"![{title}]({rel})", ""]
    return "\n".join(lines)


def seeds_table(sections: Sequence[Section]) -> list[str]:
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
        "| gap, epochs (95% interval) | first / last snapshot over the minimum "
        "(paired s.e.) | novel grammatical at the minimum | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for setting, rows in by_setting.items():
        for section in rows:
            v, grid = verdict.final(section.stats)
            contrast = v.get("test_loss_min_contrast")
            ends = (
                f"{verdict.number(contrast['first'])} / {verdict.number(contrast['last'])}"
                if contrast
                else "n/a"
            )
            lines.append(
                f"| {setting} | {section.seed} | "
                f"{verdict.with_interval(v.get('bias_onset_epoch'), v.get('bias_onset_interval'))}"
                " | "
                + verdict.with_interval(
                    v.get("test_loss_min_epoch"), v.get("test_loss_min_interval")
                )
                + f" | {verdict.with_interval(v.get('gap_epochs'), v.get('gap_interval'))} | "
                f"{ends} | {_novel_grammatical_at_minimum(grid)} | "
                f"{verdict.conclusion(v)}{_grid_note(section.stats, grid)} |"
            )
        verdicts = [verdict.final(section.stats)[0] for section in rows]
        gaps = [v["gap_epochs"] for v in verdicts if v.get("gap_epochs") is not None]
        conclusive = sum(bool(v.get("conclusive")) for v in verdicts)
        line = f"**{setting}**: conclusive in {conclusive} of {len(rows)} seeds"
        if any(section.stats.get("refined") for section in rows):
            on_grid = sum(bool(section.stats["verdict"].get("conclusive")) for section in rows)
            line += f" (refined where replayed; on the log-spaced grid alone, {on_grid})"
        line += "; median gap "
        if gaps:
            line += f"{verdict.number(float(np.median(gaps)))} epochs"
            if len(gaps) > 1:
                line += f" (range {verdict.number(min(gaps))} to {verdict.number(max(gaps))})"
        else:
            line += "n/a (no seed has an onset)"
        if gaps and len(gaps) < len(rows):
            line += f" (over the {len(gaps)} seeds with an onset)"
        summary.append(line + ".")
    twins = {(section.stats.get("protocol") or {}).get("twins") for section in sections}
    if all((k or 0) >= verdict.MIN_RESAMPLED_UNITS for k in twins):
        note = (
            "The intervals resample twins (each a training), then samples: they include "
            "a few trainings' spread; the spread over seeds is the wider measure."
        )
    else:
        note = (
            "With fewer than 3 twins a run's intervals resample items and samples, not "
            "trainings: how far another training would move the extrema shows in the "
            "spread over seeds."
        )
    return lines + [""] + [line for s in summary for line in (s, "")] + [note, ""]


def _grid_note(stats, grid):
    """ ", refined (grid alone: ...)" when the verdict is the refined grid's."""
    if grid is stats:
        return ""
    alone = "conclusive" if stats["verdict"].get("conclusive") else "inconclusive"
    return f", refined (grid alone: {alone})"


def _novel_grammatical_at_minimum(grid):
    """The share of samples grammatical and not a copy of a training sequence at the minimum.

    Args:
        grid: statistics.json, or its `refined` entry: the verdict's indices point into it.
    """
    index = grid["verdict"].get("test_loss_min_index")
    if "grammatical_fraction" not in grid or index is None:
        return "n/a"
    novel = grid["grammatical_fraction"][index] - grid["nearest"]["copy_fraction"][index]
    return verdict.number(novel, 2)


def write_report(
    report_dir: str, sections: Sequence[Section], timings: Mapping[str, float] | None = None
) -> str:
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
    with files.atomic_write(path) as f:
        f.write("\n".join(lines))
    return path
