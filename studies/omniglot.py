"""The Omniglot studies (Sec. 4.2, App. F, G): Table 2 and its sweep (Fig. 4 left), Table 3, Table 4, Fig. 9.

Every run is the Omniglot trainer (``trainers/omniglot.py``) with a method's gin file of ``configs/omniglot/``, a
split file (``configs/omniglot/splits/``), a budget (``configs/omniglot/budgets/`` or bindings) and its seed.
"""

from __future__ import annotations

import numpy as np

from .report import claims
from .study import Run, Study, StudyError, gin_values

__all__ = ["ABLATION_ROWS", "BUDGET_SETTINGS", "NGD_ROWS", "SWEEP_METHODS", "STUDIES", "discordant_pairs", "ranks",
           "training_sets"]


def _accuracy(results, run_dir, settings):
    return {"accuracy": 100 * results["held_out_accuracy"]["mean"], "auc": 100 * results["auc"]["mean"],
            "best_step": results["best_step"]}


def _split(path):
    v = gin_values([path], [])
    return (list(v.get("OmniglotTasks.train_alphabets", [])), list(v.get("OmniglotTasks.val_alphabets", [])),
            list(v.get("OmniglotTasks.test_alphabets", [])))


def _budget(options):
    return tuple(options["gin_files"]), tuple(options["bindings"])


# ------------------------------------------------------------------------------------- reduced Table 2


def _table2_runs(o):
    """Seed ``s`` holds out alphabet ``s mod n`` of ``alphabets`` (sorted) and meta-trains on the others."""
    names = sorted(o["alphabets"])
    if len(names) < 2:
        raise StudyError(f"table2: alphabets needs >= 2 names; got {names}.")
    files, binds = _budget(o)
    runs = []
    for s in o["seeds"]:
        test = names[s % len(names)]
        train = [a for a in names if a != test]
        for m in o["methods"]:
            runs.append(Run(f"{m}/seed{s}", "omniglot", (f"configs/omniglot/{m}.gin", *files),
                            (f"OmniglotTasks.test_alphabets={[test]!r}", f"OmniglotTasks.train_alphabets={train!r}",
                             "OmniglotTasks.val_alphabets=[]", f"train_eval.seed={s}", *binds), s, m))
    return runs


TABLE2 = Study(
    name="table2", page="omniglot-multishot", runs=_table2_runs, metrics=_accuracy,
    title="Reduced Table 2 (Sec. 4.2): held-out Omniglot accuracy (%) after the evaluation steps, held-out "
          "alphabet rotated over seeds",
    options={"methods": ["warp_leap", "leap", "reptile"], "seeds": [0, 1, 2],
             "alphabets": _split("configs/omniglot/splits/shared_subset.gin")[0]
             + _split("configs/omniglot/splits/shared_subset.gin")[2],
             "gin_files": ["configs/omniglot/budgets/reduced_cpu.gin"], "bindings": []},
    labels={"warp_leap": "Warp-Leap", "leap": "Leap", "reptile": "Reptile"},
    description="methods × seeds; seed s holds out alphabet s mod n of the 5-alphabet subset "
                "(budgets/reduced_cpu.gin).")


# ------------------------------------------------------------------------------- Table 2 / Fig. 4 left

#: the Omniglot study budget, chosen on validation alphabets by the ``budget`` study (its header says how).
STUDY_BUDGET = "configs/omniglot/budgets/study_cpu.gin"
#: sweep method → (gin file, its own bindings). The paper's SGD and KFAC baselines (App. E) take 4× the task batch
#: and 10× the inner learning rate of whatever budget is loaded: ``sgd4x.gin`` / ``kfac4x.gin`` scale them.
SWEEP_METHODS = {
    "warp_leap": ("configs/omniglot/warp_leap.gin", ()),
    "warp_leap_approx": ("configs/omniglot/warp_leap_approx.gin", ()),
    "warp_leap_online": ("configs/omniglot/warp_leap_online.gin", ()),
    "leap": ("configs/omniglot/leap.gin", ()), "reptile": ("configs/omniglot/reptile.gin", ()),
    "fomaml": ("configs/omniglot/fomaml.gin", ()), "maml": ("configs/omniglot/maml.gin", ()),
    "finetune": ("configs/omniglot/finetune.gin", ()), "sgd": ("configs/omniglot/sgd.gin", ()),
    "sgd4x": ("configs/omniglot/sgd4x.gin", ()), "kfac4x": ("configs/omniglot/kfac4x.gin", ()),
}
#: methods that do not meta-train: one run per seed fills every column.
NO_META = ("sgd", "sgd4x", "kfac4x")


def training_sets(pool, counts, seed, fixed_order=False):
    """``{count: [alphabet, ...]}``: the first ``count`` alphabets of ``pool`` permuted by ``seed`` (unless
    ``fixed_order``), so the sets of one seed are nested and the s.e. over seeds covers the alphabets drawn."""
    order = list(pool)
    if not fixed_order:
        order = [order[i] for i in np.random.default_rng([int(seed), 29]).permutation(len(order))]
    return {n: order[:n] for n in counts}


def _sweep_runs(o):
    pool, val, test = _split(o["split"])
    counts = sorted(set(o["counts"]))
    if not counts or counts[0] < 1:
        raise StudyError(f"sweep: counts must be >= 1; got {o['counts']}.")
    if counts[-1] > len(pool):
        raise StudyError(f"sweep: count {counts[-1]} is larger than the {len(pool)} meta-training alphabets of "
                         f"{o['split']}.")
    for m in o["methods"]:
        if m not in SWEEP_METHODS:
            raise StudyError(f"sweep: unknown method {m!r}; choose from {list(SWEEP_METHODS)}.")
    files, binds = _budget(o)
    runs = []
    for s in o["seeds"]:
        sets = training_sets(pool, counts, s, o["fixed_order"])
        for m in o["methods"]:
            gin_file, own = SWEEP_METHODS[m]
            for n in counts[:1] if m in NO_META else counts:
                name = f"{m}/any/seed{s}" if m in NO_META else f"{m}/n{n}/seed{s}"
                cols = tuple(str(c) for c in counts) if m in NO_META else (str(n),)
                runs.append(Run(name, "omniglot", (gin_file, o["split"], *files),
                                (f"OmniglotTasks.train_alphabets={sets[n]!r}", f"train_eval.seed={s}", *binds, *own),
                                s, m, cols))
    return runs


def _sweep_figure(path, table, records, options):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({int(c) for row in table.values() for c in row})
    fig, ax = plt.subplots(figsize=(6, 4))
    for row, cells in table.items():
        xs = [n for n in counts if str(n) in cells]
        ax.errorbar(xs, [cells[str(n)]["accuracy"]["mean"] for n in xs],
                    yerr=[cells[str(n)]["accuracy"]["stderr"] for n in xs], marker="o", capsize=3,
                    label=SWEEP.labels.get(row, row))
    ax.set_xlabel("number of meta-training alphabets")
    ax.set_ylabel("held-out test accuracy (%)")
    ax.set_xticks(counts)
    ax.set_ylim(0, 100)
    ax.set_title("Omniglot, Table 2 / Fig. 4 (left): mean ± s.e. over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: the paper's Table 2 claims: the WarpGrad row above each baseline at every count >= 5.
SWEEP_BASELINES = ("leap", "reptile", "sgd4x", "kfac4x", "finetune")


def _sweep_extra(table, records, options):
    warp = next((m for m in ("warp_leap_approx", "warp_leap") if m in table), None)
    if warp is None:
        return [], {}
    label = lambda r: SWEEP.labels.get(r, r)  # noqa: E731
    counts = sorted({int(c) for c in table[warp]})
    pairs = [(warp, b, str(n), None, f"{label(warp)} > {label(b)} at n={n}")
             for n in counts if n >= 5 for b in SWEEP_BASELINES if b in table]
    pairs += [(warp, warp, str(hi), str(lo), f"{label(warp)} rises from n={lo} to n={hi}")
              for lo, hi in zip(counts, counts[1:])]
    return claims(records, pairs)


SWEEP = Study(
    name="sweep", page="omniglot-multishot", runs=_sweep_runs, metrics=_accuracy, figure=_sweep_figure,
    extra=_sweep_extra,
    title="Table 2 / Fig. 4 left (Sec. 4.2): held-out Omniglot accuracy (%) against the number of meta-training "
          "alphabets",
    columns_title="n=",
    options={"methods": ["warp_leap_approx", "leap", "reptile", "finetune", "sgd4x", "kfac4x"],
             "counts": [1, 5, 10, 25], "seeds": [0, 1, 2], "split": "configs/omniglot/splits/full_42.gin",
             "fixed_order": False, "gin_files": [STUDY_BUDGET], "bindings": []},
    labels={"warp_leap": "Warp-Leap", "warp_leap_approx": "Warp-Leap (Eq. 12)", "leap": "Leap",
            "reptile": "Reptile", "finetune": "Fine-tuning", "sgd": "SGD", "sgd4x": "SGD (4x batch, 10x lr)",
            "kfac4x": "KFAC (4x batch, 10x lr)", "maml": "MAML", "fomaml": "FOMAML"},
    description="methods × counts × seeds on the split's meta-training alphabets (nested per seed), scored on "
                "its test alphabets; SGD/KFAC run once per seed and fill every column.")


# ------------------------------------------------------------------------------ budget (validation only)

#: meta-training budgets compared at equal CPU (issue: 20 vs 100 task steps per task in meta-training);
#: evaluation adapts for 100 steps in both.
BUDGET_SETTINGS = {"k20": ("train_eval.inner_steps=20", "train_eval.meta_steps=150"),
                   "k100": ("train_eval.inner_steps=100", "train_eval.meta_steps=30")}


def _budget_runs(o):
    pool, val, _ = _split(o["split"])
    if not val:
        raise StudyError(f"budget: {o['split']} has no validation alphabets to choose a budget on.")
    files, binds = _budget(o)
    runs = []
    for s in o["seeds"]:
        train = training_sets(pool, [o["count"]], s)[o["count"]]
        for m in o["methods"]:
            gin_file, own = SWEEP_METHODS[m]
            for name in o["settings"]:
                if name not in BUDGET_SETTINGS:
                    raise StudyError(f"budget: unknown setting {name!r}; choose from {list(BUDGET_SETTINGS)}.")
                runs.append(Run(f"{m}/{name}/seed{s}", "omniglot", (gin_file, o["split"], *files),
                                (f"OmniglotTasks.train_alphabets={train!r}", f"OmniglotTasks.test_alphabets={val!r}",
                                 "OmniglotTasks.val_alphabets=[]", f"train_eval.seed={s}", *binds, *own,
                                 *BUDGET_SETTINGS[name]), s, m, (name,)))
    return runs


BUDGET = Study(
    name="budget", page="omniglot-multishot", runs=_budget_runs, metrics=_accuracy,
    title="Choosing the study budget on validation alphabets: meta-training with 20 or 100 task steps per task at "
          "equal CPU, held-out accuracy (%) on the split's validation alphabets after 100 steps",
    columns_title="setting=",
    options={"methods": ["warp_leap_approx", "leap"], "settings": list(BUDGET_SETTINGS), "seeds": [0, 1],
             "count": 10, "split": "configs/omniglot/splits/full_42.gin",
             "gin_files": ["configs/omniglot/budgets/sweep_cpu.gin"],
             "bindings": ["train_eval.eval_every=1000", "train_eval.checkpoint_every=10"]},
    labels={"warp_leap_approx": "Warp-Leap (Eq. 12)", "leap": "Leap"},
    description="k20: 150 meta-steps of 5 tasks × 20 steps; k100: 30 meta-steps of 5 tasks × 100 steps (equal "
                "task steps); meta-trained on `count` of the split's train alphabets, scored on its validation "
                "alphabets only (the test alphabets are not run).")


# ------------------------------------------------------------------------------------------- Table 3

#: row → (Table 3's architecture / meta-training / meta-objective, paper accuracy mean, ± std over 4 runs).
ABLATION_ROWS = {
    "leap": ("None (Leap), online, none", 74.8, 2.7),
    "conv3x3": ("3x3 conv (default), offline, full (Eq. 11)", 84.4, 1.7),
    "approx": ("3x3 conv, offline, approx (Eq. 12)", 83.1, 2.7),
    "online": ("3x3 conv, online, full", 76.3, 2.1),
    "learned_alpha": ("3x3 conv, offline, full, learned alpha", 83.1, 3.3),
    "scale": ("Scaling, offline, full", 77.5, 1.8),
    "conv1x1": ("1x1 conv, offline, full", 79.4, 2.2),
    "relu": ("3x3 conv + ReLU, offline, full", 83.4, 1.6),
    "bn": ("3x3 conv + BN, offline, full", 84.7, 1.7),
    "bn_relu": ("3x3 conv + BN + ReLU, offline, full", 85.0, 0.9),
    "bn_res_relu": ("3x3 conv + BN + Res + ReLU, offline, full", 86.3, 1.1),
    "2layer_bn_res": ("2-layer 3x3 conv + BN + Res, offline, full", 88.0, 1.0),
    "film": ("2-layer 3x3 conv + BN + Res + FiLM, offline, full", 88.1, 1.0),
}


def ranks(values):
    """``{key: rank}`` (1 = highest value; ties share the better rank)."""
    return {k: 1 + sum(other > v for other in values.values()) for k, v in values.items()}


def discordant_pairs(ours, paper):
    """Pairs ``(a, b)`` that the paper orders ``a > b`` but ``ours`` orders ``a < b`` (ties in either: not counted)."""
    keys = list(ours)
    return [(a, b) for a in keys for b in keys if paper[a] > paper[b] and ours[a] < ours[b]]


#: Table 3's claims the study checks (issue 30): offline above online meta-training, 2-layer warps above linear.
ABLATION_CLAIMS = (("conv3x3", "online"), ("approx", "online"), ("2layer_bn_res", "conv3x3"), ("conv3x3", "leap"))


def _ablation_runs(o):
    files, binds = _budget(o)
    runs = []
    for row in o["rows"]:
        if row not in ABLATION_ROWS:
            raise StudyError(f"ablation: unknown row {row!r}; choose from {list(ABLATION_ROWS)}.")
        runs += [Run(f"{row}/seed{s}", "omniglot", (f"configs/omniglot/ablation/{row}.gin", o["split"], *files),
                     (f"train_eval.seed={s}", *binds), s, row) for s in o["seeds"]]
    return runs


def _ablation_extra(table, records, options):
    ours = {k: round(v[""]["accuracy"]["mean"], 1) for k, v in table.items()}  # ties at the printed precision tie
    paper = {k: ABLATION_ROWS[k][1] for k in table}
    our_rank, paper_rank = ranks(ours), ranks(paper)
    pairs = discordant_pairs(ours, paper)
    lines = [f"{ABLATION_ROWS[k][0]}: rank {our_rank[k]} (paper {paper[k]:.1f} ± {ABLATION_ROWS[k][2]:.1f}, rank "
             f"{paper_rank[k]})" for k in table]
    lines.append(f"{len(pairs)} of {len(table) * (len(table) - 1) // 2} row pairs ordered against the paper"
                 + (": " + "; ".join(f"{a} < {b}" for a, b in pairs) if pairs else "."))
    claim_lines, found = claims(records, [(a, b, "", None, f"{a} > {b}") for a, b in ABLATION_CLAIMS
                                            if a in table and b in table])
    return lines + claim_lines, {**found, "paper": {k: ABLATION_ROWS[k][1:] for k in table}, "ranks": our_rank,
                                 "paper_ranks": paper_rank, "discordant_pairs": pairs}


ABLATION = Study(
    name="ablation", page="omniglot-multishot", runs=_ablation_runs, metrics=_accuracy, extra=_ablation_extra,
    title="Table 3 (App. F): warp-layer, meta-objective and meta-training ablation, held-out Omniglot accuracy (%)",
    options={"rows": ["leap", "conv3x3", "approx", "online", "2layer_bn_res"], "seeds": [0, 1, 2],
             "split": "configs/omniglot/splits/full_42.gin", "gin_files": [STUDY_BUDGET], "bindings": []},
    labels={k: v[0] for k, v in ABLATION_ROWS.items()}, rows_title="row (warp, meta-training, meta-objective)",
    description="rows of configs/omniglot/ablation/ (any of them: --set rows=...) meta-trained on the split's 25 "
                "train alphabets at the study budget; ranks against the paper's and its claims as seed-paired gaps.")


# ------------------------------------------------------------------------------------------- Table 4

#: hidden width of the non-linear warps: twice the study budget's 32 filters, as the paper's 128 for 64 filters.
NONLINEAR_WIDTH = ("omniglot_convnet.warp_kwargs={'hidden_units': 64}",)
#: row → (gin file, own bindings, label, paper mean, paper std). WarpGrad rows: Alg. 2 (offline, η = 1, Eq. 11).
NGD_ROWS = {
    "sgd": ("configs/omniglot/sgd.gin", (), "SGD", 40.1, 6.1),
    "kfac": ("configs/omniglot/kfac.gin", (), "KFAC (NGD)", 58.2, 3.2),
    "warpgrad_linear": ("configs/omniglot/warp_leap.gin", ("train_eval.method='warpgrad'", "train_eval.preset=None",
                                                           "train_eval.warp='conv3x3'"), "WarpGrad, linear warps",
                        68.0, 4.4),
    "warpgrad_nonlinear": ("configs/omniglot/warp_leap.gin",
                           ("train_eval.method='warpgrad'", "train_eval.preset=None", "train_eval.warp='2layer_bn_res'",
                            *NONLINEAR_WIDTH), "WarpGrad, non-linear warps", 81.3, 4.0),
}
#: the reduced 2-core budget (meta-training only; evaluation keeps 100 steps at batch 200). Meta-validation
#: adapts for the full 100 steps on one validation alphabet (after 10 or 30 steps at lr 1.0 every row is
#: still at chance).
NGD_BUDGET = ["omniglot_convnet.filters=16", "train_eval.meta_steps=6", "train_eval.meta_batch_size=2",
              "train_eval.inner_steps=10", "train_eval.eval_every=6", "train_eval.val_steps=100",
              "OmniglotTasks.val_alphabets=['Armenian']", "train_eval.eval_steps=100", "train_eval.checkpoint_every=6",
              "train_eval.task_batch_size=200", "train_eval.shared_init=True"]


def _ngd_runs(o):
    files, binds = _budget(o)
    runs = []
    for row in o["rows"]:
        if row not in NGD_ROWS:
            raise StudyError(f"ngd: unknown row {row!r}; choose from {list(NGD_ROWS)}.")
        gin_file, own = NGD_ROWS[row][:2]
        lr = o["kfac_lr"] if row == "kfac" and o["kfac_lr"] else o["lr"]
        runs += [Run(f"{row}/seed{s}", "omniglot", (gin_file, o["split"], *files),
                     (f"train_eval.seed={s}", *binds, *own, f"train_eval.inner_lr={float(lr)!r}"), s, row)
                 for s in o["seeds"]]
    return runs


def _ngd_extra(table, records, options):
    lines = [f"{NGD_ROWS[k][2]}: paper {NGD_ROWS[k][3]:.1f} ± {NGD_ROWS[k][4]:.1f}" for k in table]
    means = [table[r][""]["accuracy"]["mean"] for r in NGD_ROWS if r in table]
    ordered = all(a < b for a, b in zip(means, means[1:])) if len(means) == len(NGD_ROWS) else None
    if ordered is not None:
        lines.append("paper's ordering SGD < KFAC < WarpGrad linear < WarpGrad non-linear (means): "
                     f"{'holds' if ordered else 'does not hold'} at this budget")
    rows = [r for r in NGD_ROWS if r in table]
    claim_lines, found = claims(records, [(b, a, "", None, f"{NGD.labels[b]} > {NGD.labels[a]}")
                                            for a, b in zip(rows, rows[1:])])
    return lines + claim_lines, {"paper": {k: NGD_ROWS[k][3:] for k in table}, "paper_ordering_holds": ordered,
                                 **found}


NGD = Study(
    name="ngd", page="omniglot-multishot", runs=_ngd_runs, metrics=_accuracy, extra=_ngd_extra,
    title="Table 4 (App. G): WarpGrad against natural gradient from one fixed random initialisation, held-out "
          "Omniglot accuracy (%)",
    options={"rows": list(NGD_ROWS), "seeds": [0, 1, 2], "lr": 0.1, "kfac_lr": 0.0,
             "split": "configs/omniglot/splits/full_42.gin", "gin_files": [STUDY_BUDGET],
             "bindings": ["train_eval.shared_init=True"]},
    labels={k: v[2] for k, v in NGD_ROWS.items()},
    description="SGD, KFAC and warps-only WarpGrad (θ0 fixed, drawn once per seed) at the study budget and one "
                "inner lr (kfac_lr for KFAC if set); the earlier 16-filter budget is NGD_BUDGET (--set).")


# ------------------------------------------------------------------------------------------- Fig. 9


def _fig9_runs(o):
    files, binds = _budget(o)
    return [Run(f"warp_leap/seed{s}", "omniglot", ("configs/omniglot/warp_leap.gin", o["split"], *files),
                (f"train_eval.seed={s}", *binds), s, "warp_leap") for s in o["seeds"]]


def _fig9_metrics(results, run_dir, settings):
    from . import fisher

    if not settings.get("data_dir"):
        raise StudyError("fig9: report needs --data_dir (the analysis adapts on the run's test alphabets).")
    summary = fisher.analyse(run_dir, settings["data_dir"], settings["steps"], settings["every"])["summary"]
    out = {}
    for layer, s in summary.items():
        for where in ("pre", "post"):
            for key in ("mean", "schatten1"):
                out[f"{layer}/{where}/{key}"] = s[where][key]
    out["schatten1_post_over_pre"] = float(np.mean([s["post"]["schatten1"] / s["pre"]["schatten1"]
                                                    for s in summary.values()]))
    return out


def _fig9_layers(table):
    cell = next(iter(table.values()))[""]
    return list(dict.fromkeys(k.split("/")[0] for k in cell if "/" in k)), cell


def _fig9_extra(table, records, options):
    layers, cell = _fig9_layers(table)
    lines = [f"{n}: mean pre {cell[f'{n}/pre/mean']['mean']:.3f}, post {cell[f'{n}/post/mean']['mean']:.3f}; "
             f"‖C−I‖* pre {cell[f'{n}/pre/schatten1']['mean']:.2f}, post {cell[f'{n}/post/schatten1']['mean']:.2f}"
             for n in layers]
    return lines, {}


def _fig9_figure(path, table, records, options):
    from . import fisher

    layers, cell = _fig9_layers(table)
    summary = {n: {w: {k: cell[f"{n}/{w}/{k}"]["mean"] for k in ("mean", "schatten1")} for w in ("pre", "post")}
               for n in layers}
    fisher.plot(path, summary, f"Warp-Leap, held-out alphabets; averaged over tasks, steps and {len(records)} runs")


FIG9 = Study(
    name="fig9", page="omniglot-multishot", runs=_fig9_runs, metrics=_fig9_metrics, extra=_fig9_extra,
    figure=_fig9_figure, metric="schatten1_post_over_pre",
    title="Fig. 9 (App. G): pre- vs post-warp activation statistics of trained Warp-Leap runs",
    options={"seeds": [0], "split": "configs/omniglot/splits/background.gin",
             "gin_files": ["configs/omniglot/budgets/reduced_cpu.gin"], "bindings": [], "steps": 100, "every": 10},
    labels={"warp_leap": "Warp-Leap (3x3 conv warps)"}, rows_title="run",
    description="trains Warp-Leap, then (report, needs --data_dir) adapts on the test alphabets and taps every "
                "warp layer: mean activation and ‖Cov − I‖* pre and post warp.")

STUDIES = {s.name: s for s in (TABLE2, SWEEP, BUDGET, ABLATION, NGD, FIG9)}
