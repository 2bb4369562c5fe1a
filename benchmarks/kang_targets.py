"""Issue 18's Kang targets, read off one or more ``trvae validate`` folders (no training).

    python benchmarks/kang_targets.py runs/s16/kang_validate_3seeds runs/s18/val_b256

For each fold (held-out cell type) it takes the decode that ``--decode auto`` would give that fold
(the validation's rule, from the *other* folds: ``chosen_decode.rule_per_fold``), and prints that
decode's full-set R² of the top-DEG means and variances (mean over the validation's seeds) next to
the identity's and the mean shift's (read off the first folder) and scArches TRVAE's seed-0 figures
of issue 18's table, and its r of change over all genes next to the
better of identity and mean shift. Then how many of the 14 R² targets and of the 7 change targets
each folder meets. ``--against references`` makes the R² targets the better of identity and mean
shift on each fold instead (strictly above, as the issue's Haber goal asks), for any data set. The scArches figures are the issue's, measured once (scArches 0.6.1, tutorial
settings); ``peers.py`` re-measures scArches on NK only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Issue 18's table: scArches TRVAE (0.6.1, tutorial settings, seed 0), full-set R² (DEG means, DEG variances).
SCARCHES_SEED0 = {
    "CD14+Mono": (0.976, 0.719), "FCGR3A+Mono": (0.887, 0.627), "B": (0.950, 0.586), "Dendritic": (0.950, 0.749),
    "NK": (0.947, 0.564), "CD4T": (0.946, 0.333), "CD8T": (0.962, 0.541),
}
#: "at or above" is read at the table's three decimals
ROUND = 3


def fold_rows(folder: Path, decode: str = "auto") -> dict[str, dict]:
    """Per fold: the decode ``--decode auto`` gives it (or ``decode`` on every fold), that decode's
    full-set R² of DEG means and variances and r of change (all genes), and the better reference's
    r of change."""
    from trvae_cli.compare import fold_decodes, read_validation
    from trvae_cli.validation_report import entry_value

    report = read_validation(folder)
    decodes, _ = fold_decodes(report)
    out = {}
    for f in report["folds"]:
        d = decodes[f["cell_type"]] if decode == "auto" else decode
        refs = [entry_value(f, m, "change_pearson_all") for m in ("identity", "mean shift")]
        refs = [r for r in refs if r == r]
        out[f["cell_type"]] = {"decode": d, "means": entry_value(f, d, "r2_mean_degs", "full"),
                               "vars": entry_value(f, d, "r2_var_degs", "full"),
                               "change": entry_value(f, d, "change_pearson_all"),
                               "change_ref": max(refs) if refs else float("nan"),
                               "references": {m: (entry_value(f, m, "r2_mean_degs", "full"),
                                                  entry_value(f, m, "r2_var_degs", "full"))
                                              for m in ("identity", "mean shift")}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="trvae validate --out folders")
    p.add_argument("--against", choices=("scarches", "references"), default="scarches",
                   help="the R² targets: scArches' Kang figures (issue 18's table), or the better of identity "
                        "and mean shift on each fold (any data set: issue 18's Haber check)")
    p.add_argument("--decode", choices=("auto", "counterfactual", "mean"), default="auto",
                   help="auto: each fold's decode by the validation's rule, as transform --decode auto gives it; "
                        "else this decode on every fold")
    args = p.parse_args(argv)
    from trvae_cli.errors import TrvaeError

    try:
        tables = {f: fold_rows(f, args.decode) for f in args.folders}
    except TrvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [f.name for f in args.folders]
    target = "scArches" if args.against == "scarches" else "better reference"
    head = (["held out", "identity means / vars", "mean shift means / vars", f"{target} means / vars"]
            + [f"{n}: means / vars / change (ref)" for n in names])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    met = {f: [0, 0, 0, 0] for f in args.folders}     # DEG means, DEG variances, change, cell types compared
    first_table = tables[args.folders[0]]          # the references do not depend on the model's settings
    if args.against == "scarches":
        targets = SCARCHES_SEED0
    else:
        targets = {ct: tuple(max(round(r["references"][m][i], ROUND) for m in ("identity", "mean shift"))
                             for i in (0, 1)) for ct, r in first_table.items()}
    # the issue: "≥ scArches", but "above the better of identity and mean shift"
    if args.against == "scarches":
        def beats(x, t): return round(x, ROUND) >= t
    else:
        def beats(x, t): return round(x, ROUND) > t

    def mark(x, ok): return f"**{x:.3f}**" if ok else f"{x:.3f}"

    for ct, (sm, sv) in targets.items():
        first = first_table.get(ct)
        cells = [ct] + [f"{first['references'][m][0]:.3f} / {first['references'][m][1]:.3f}" if first else "–"
                        for m in ("identity", "mean shift")] + [f"{sm:.3f} / {sv:.3f}"]
        for f in args.folders:
            r = tables[f].get(ct)
            if r is None:
                cells.append("–")
                continue
            ok_m, ok_v = beats(r["means"], sm), beats(r["vars"], sv)
            ok_c = r["change"] > r["change_ref"]
            met[f][0] += ok_m
            met[f][1] += ok_v
            met[f][2] += ok_c
            met[f][3] += 1
            cells.append(f"{mark(r['means'], ok_m)} / {mark(r['vars'], ok_v)} / {mark(r['change'], ok_c)} "
                         f"({r['change_ref']:.3f}) {r['decode']}")
        print("| " + " | ".join(cells) + " |")
    print()
    for f in args.folders:
        m, v, c, n = met[f]
        print(f"{f.name}: R² targets met {m + v} of {2 * n} (DEG means {m}, DEG variances {v}); "
              f"r of change above the better reference on {c} of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
