"""``benchmarks/decode_rules.py``: validate's per-cell-type rule over a holdout table, on the tiny data."""

import anndata as ad
import numpy as np
import pandas as pd
from cli_helpers import load_benchmark


def test_rule_over_a_holdout_table(tiny_h5ad, tmp_path, capsys):
    bench = load_benchmark("decode_rules")
    obs = ad.read_h5ad(tiny_h5ad).obs
    types = sorted(obs["cell_type"].astype(str).unique())
    conditions = obs["condition"].astype(str).unique()
    # every type: counterfactual 0.8 / mean 0.6, except the first, which wants mean; two seeds averaged
    rows = []
    for t in types:
        for seed in (0, 1):
            for preset, v in (("trvae", 0.8), ("trvae (mean)", 0.6)):
                if t == types[0]:
                    v = 1.4 - v
                rows.append({"preset": preset, "cell_type": t, "seed": seed, "r2_mean_degs_full": v + 0.01 * seed,
                             "r2_var_degs_full": v})
    rows.append({"preset": "identity", "cell_type": types[0], "seed": 0, "r2_mean_degs_full": 0.1,
                 "r2_var_degs_full": 0.1})
    table = tmp_path / "holdout.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    assert bench.main([str(table), "--data", str(tiny_h5ad), "--from", str(conditions[0])]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in types}
    assert set(lines) == set(types)
    # with one type wanting mean, one choice for the data set is counterfactual for every type
    assert all(line.split()[2] == "counterfactual" for line in lines.values())
    assert "adopted:" in out and "mean over 4 (data set)" in out
    # the data set's choice (counterfactual) as each type scores it: (DEG-mean R², the seeds' mean, + DEG-var R²) / 2
    expected = np.mean([(0.805 + 0.8) / 2] * 3 + [(0.605 + 0.6) / 2])
    assert f"criterion {expected:.4f}" in out.splitlines()[-3]
