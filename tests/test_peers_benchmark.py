"""``benchmarks/peers.py``: its pure helpers (arguments, seeds, order, timings, the table); no scArches, no training."""

import math

import pytest

from cli_helpers import load_benchmark

@pytest.fixture(scope="module")
def peers():
    return load_benchmark("peers")


def test_arguments_defaults_and_train_args(peers):
    args = peers.parse(["--trvae-args", "--beta 2", "--", "--epochs", "5"])
    assert args.seed_list == [0, 1, 2] and args.cell_type == "NK"
    assert args.train_args == ["--beta", "2", "--epochs", "5"]
    assert args.out.endswith("runs/peers")
    assert peers.parse(["--smoke"]).out.endswith("runs/peers-smoke")


@pytest.mark.parametrize("reps, seeds, expected", [(None, None, [0, 1, 2]), (5, None, [0, 1, 2, 3, 4]),
                                                  (None, "3,7", [3, 7]), (2, "3,7", [3, 7])])
def test_seed_list(peers, reps, seeds, expected):
    assert peers.seed_list(reps, seeds) == expected


@pytest.mark.parametrize("reps, seeds", [(3, "1,2"), (None, "1,1"), (0, None)])
def test_seed_list_refuses(peers, reps, seeds):
    with pytest.raises(ValueError):
        peers.seed_list(reps, seeds)


def test_sides_alternate_and_threads_are_capped(peers):
    assert [peers.side_order(r)[0] for r in range(4)] == ["trvae", "scArches", "trvae", "scArches"]
    env = peers.thread_env(3, {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and all(env[v] == "3" for v in peers.THREAD_VARIABLES)


def test_epoch_times_and_median(peers):
    assert peers.epoch_times([9.0, 1.0, 3.0, 2.0]) == (9.0, 2.0)
    first, rest = peers.epoch_times([4.0])
    assert first == 4.0 and math.isnan(rest)
    assert peers.median([3, 1, 2, 10]) == 2.5


def _row(side, label, seed, wall, r2):
    return {"side": side, "label": label, "seed": seed, "train_wall_s": wall, "train_cpu_s": 2 * wall,
            "train_sys_s": wall / 10, "train_cores": 2.0, "transform_wall_s": wall / 10, "epochs": 100, "r2_mean_degs": r2,
            "r2_var_degs": r2 / 2, "r2_mean_all": r2, "r2_var_all": r2}


def test_summary_table_and_ratio(peers):
    rows = [_row("trvae", "trvae", s, w, 0.95) for s, w in enumerate((100.0, 120.0, 110.0))]
    rows += [_row("scArches", "scArches", s, w, 0.9) for s, w in enumerate((50.0, 60.0, 55.0))]
    rows.append({"side": "trvae_mean", "label": "trvae (mean)", "seed": 0, "r2_mean_degs": 0.94})
    md = peers.summary_markdown(rows)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| side"))
    assert lines[lines.index(header) + 1].count("|---") == header.count("|") - 1
    assert "| trvae | 100.0 / 110.0 | 220.0 | 11.0 | 2.00 |" in md
    assert "| trvae (mean) | (same model) |" in md
    assert "| scArches | 50.0 / 55.0 |" in md
    assert "median training wall time: **2.00**" in md
    old = [{k: v for k, v in r.items() if k != "train_sys_s"} for r in rows]   # a CSV from before the column
    assert "| trvae | 100.0 / 110.0 | 220.0 | – | 2.00 |" in peers.summary_markdown(old)
    assert "0.950 ± 0.000" in md
