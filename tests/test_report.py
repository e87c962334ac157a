"""report.md from synthetic statistics dicts: the table of settings and seeds first."""

import os

from diffusion_bias.instrument import report


def _stats(onset, test_min, conclusive, others=None):
    """The parts of a statistics dict the report reads, for one run."""
    verdict = dict(
        bias_onset_epoch=onset,
        test_loss_min_epoch=test_min,
        gap_epochs=None if onset is None else test_min - onset,
        conclusive=conclusive,
        reasons=[] if conclusive else ["the test loss is lowest at the last snapshot"],
        bias_statistic="sample_split similarity (peak)",
        other_statistics=others or {},
    )
    if onset is not None:
        verdict.update(
            bias_onset_interval=[onset - 10, onset + 10],
            test_loss_min_interval=[test_min - 20, test_min + 20],
            gap_interval=[test_min - onset - 30, test_min - onset + 30],
        )
    if onset is not None:
        verdict.update(test_loss_min_index=1, test_loss_min_contrast=dict(first=12.5, last=3.25))
    return dict(checkpoints=[10.0, 100.0, 1000.0], verdict=verdict)


def _tokens(stats):
    return dict(
        stats, grammatical_fraction=[0.1, 0.6, 0.9], nearest=dict(copy_fraction=[0, 0.1, 0.5])
    )


def _sections():
    kl = "sample_split KL at the critical time (minimum)"
    return [
        report.Section("digits", "0", _stats(270.0, 630.0, True), [], "digits, seed 0"),
        report.Section("digits", "1", _stats(300.0, 500.0, True), [], "digits, seed 1"),
        report.Section("digits", "2", _stats(400.0, 1000.0, False), [], "digits, seed 2"),
        report.Section(
            "grammar", "0", _stats(None, None, False, {kl: dict(conclusive=True)}), [], "g0"
        ),
        report.Section(
            "grammar", "1", _tokens(_stats(2200.0, 7750.0, True)), [], "grammar, seed 1"
        ),
    ]


def test_seeds_table_has_a_row_per_setting_and_seed_with_intervals_and_verdicts():
    lines = report.seeds_table(_sections())
    rows = [line for line in lines if line.startswith("| digits") or line.startswith("| grammar")]
    assert len(rows) == 5
    assert (
        rows[0] == "| digits | 0 | 270 [260, 280] | 630 [610, 650] | 360 [330, 390] | 12.5 / 3.25 "
        "| n/a | conclusive |"
    )
    assert rows[2].endswith("| 600 [570, 630] | 12.5 / 3.25 | n/a | inconclusive |")
    # No onset: n/a, and the other statistic that is conclusive is named.
    assert rows[3].startswith(
        "| grammar | 0 | n/a | n/a | n/a | n/a | n/a | inconclusive (conclusive by "
    )
    # Tokens: the share grammatical and not a copy at the minimum (0.6 - 0.1).
    assert rows[4].endswith("| 0.5 | conclusive |")


def test_seeds_table_says_in_how_many_seeds_each_setting_is_conclusive_and_the_median_gap():
    text = "\n".join(report.seeds_table(_sections()))
    assert (
        "**digits**: conclusive in 2 of 3 seeds; median gap 360 epochs (range 200 to 600)." in text
    )
    # The median is over the seeds that have a gap, and says so.
    assert (
        "**grammar**: conclusive in 1 of 2 seeds; median gap 5550 epochs "
        "(over the 1 seeds with an onset)." in text
    )


def test_one_seed_per_setting_still_gets_the_table(tmp_path):
    sections = [
        report.Section("digits", "0", _stats(270.0, 630.0, True), [], "digits"),
        report.Section("grammar", "0", _stats(None, None, False), [], "grammar"),
    ]
    path = report.write_report(str(tmp_path), sections, {"digits: training": 62.0})
    assert path == os.path.join(str(tmp_path), "report.md")
    text = open(path).read()
    table = text.index("## Verdicts per setting and seed")
    # The table comes before the first setting's section, one row per setting.
    assert table < text.index("## digits") < text.index("## grammar")
    assert text.count("| digits | 0 |") == 1 and text.count("| grammar | 0 |") == 1
    assert "**digits**: conclusive in 1 of 1 seeds; median gap 360 epochs." in text
    assert "**grammar**: conclusive in 0 of 1 seeds; median gap n/a (no seed has an onset)." in text


def _refined(grid, refined):
    """A run replayed around its extrema: statistics.json with its `refined` entry."""
    entry = dict(refined, steps=[1, 2, 3, 4], checkpoints=[10.0, 50.0, 100.0, 1000.0])
    return dict(grid, steps=[1, 3, 4], refined=entry)


def test_a_refined_run_is_judged_on_its_refined_grid_and_says_what_the_grid_alone_gave():
    grid = _tokens(_stats(2750.0, 3600.0, False))
    fine = _tokens(_stats(2600.0, 3875.0, True))
    fine["grammatical_fraction"] = [0.1, 0.2, 0.7, 0.9]  # the minimum (index 1) moved
    fine["nearest"] = dict(copy_fraction=[0.0, 0.05, 0.1, 0.5])
    sections = [
        report.Section("grammar", "0", _refined(grid, fine), [], "grammar, seed 0"),
        report.Section("grammar", "1", _tokens(_stats(2100.0, 4700.0, False)), [], "g1"),
    ]
    lines = report.seeds_table(sections)
    row = next(line for line in lines if line.startswith("| grammar | 0 |"))
    assert row.startswith("| grammar | 0 | 2600 [2590, 2610] | 3875 [3855, 3895] |")
    # Novel grammatical at the refined minimum (0.2 - 0.05), on the refined grid.
    assert row.endswith("| 0.15 | conclusive, refined (grid alone: inconclusive) |")
    text = "\n".join(lines)
    assert (
        "**grammar**: conclusive in 1 of 2 seeds (refined where replayed; on the log-spaced "
        "grid alone, 0); median gap 1938 epochs" in text
    )
    section = report.setting_section("grammar, seed 0", sections[0].stats, [], "/tmp")
    assert "On the log-spaced grid (the refined verdict is below):" in section
    assert "**Verdict** (refined grid): Conclusive" in section
    assert "On the log-spaced grid alone: Inconclusive" in section


def test_seeds_table_says_what_its_intervals_resample_for_the_number_of_twins():
    def note(twins):
        stats = dict(_stats(270.0, 630.0, True), protocol=dict(twins=twins))
        return report.seeds_table([report.Section("digits", "0", stats, [], "digits")])[-2]

    # Two twins: the bootstrap resamples samples only, so the note points to the seeds.
    assert note(2).startswith("With fewer than 3 twins a run's intervals resample items")
    # Three or more: twins are resampled first, each a training.
    assert note(3).startswith("The intervals resample twins (each a training)")
    # Statistics without a protocol record fall back to the cautious note.
    bare = report.seeds_table([report.Section("digits", "0", _stats(1.0, 2.0, True), [], "d")])
    assert bare[-2].startswith("With fewer than 3 twins")


def test_the_same_split_control_says_where_the_pairs_part_or_that_they_do_not():
    stats = _stats(270.0, 630.0, True)
    assert report.same_split_lines(stats) == []
    stats["same_split"] = dict(
        seeds_per_split=2,
        pairs=dict(cross=4, same=2),
        similarity=dict(
            same=dict(mean=[0.30, 0.50, 0.70], sem=[0.01] * 3),
            cross=dict(mean=[0.30, 0.35, 0.40], sem=[0.01] * 3),
        ),
        part_epoch=100.0,
    )
    line = report.same_split_lines(stats)[0]
    assert "2 same-split and 4 cross-split pairs" in line
    assert "0.7 against 0.4 at the last" in line
    assert "they part at epoch 100" in line and "bias onset 270, test-loss minimum 630" in line
    stats["same_split"]["part_epoch"] = None
    assert "they do not part within the run" in report.same_split_lines(stats)[0]
