"""A study's report: the table (mean ± standard error over seeds, n shown), its JSON, figure, the results
block of its docs page and TensorBoard HParams (configuration and final metrics of every run)."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time

from .execute import RECORD, finished, load_record
from .study import StudyError

__all__ = ["claim", "claims", "collect", "format_table", "gap", "mean_stderr", "page_path", "report", "tabulate",
           "markers", "write_hparams", "write_page_block"]



def markers(name):
    """The comment lines that fence study ``name``'s results block in its docs page (a page may hold several)."""
    return f"<!-- results:begin {name} -->", f"<!-- results:end {name} -->"


def mean_stderr(values):
    """``{"mean", "stderr", "n"}``: the standard error of the mean is ``std(ddof=1) / sqrt(n)`` (0 for n = 1)."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    stderr = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "stderr": stderr, "n": n}


def gap(records, a, b, col="", metric="accuracy", col_b=None):
    """Row ``a`` in column ``col`` minus row ``b`` in column ``col_b`` (default ``col``), paired by seed (a seed
    fixes the data both see): ``mean_stderr`` of the per-seed differences over the seeds both have, or None."""
    def by_seed(row, column):
        return {r["seed"]: r["metrics"][metric] for r in records if r["row"] == row and column in r["cols"]}

    x, y = by_seed(a, col), by_seed(b, col if col_b is None else col_b)
    common = sorted(set(x) & set(y))
    return mean_stderr([x[s] - y[s] for s in common]) if common else None


def claim(records, a, b, col="", metric="accuracy", col_b=None, text=None):
    """``(line, payload)``: whether row ``a`` (column ``col``) is above row ``b`` (column ``col_b``, default
    ``col``) by more than twice the standard error of their seed-paired gap (:func:`gap`) — "shown", else "not
    shown at this budget" — with the figures; ``text`` names the claim (default ``"a > b"``)."""
    text = text or f"{a} > {b}"
    g = gap(records, a, b, col, metric, col_b)
    if g is None:
        return f"{text}: no seed has both runs yet", None
    shown = g["n"] >= 2 and g["mean"] > 2 * g["stderr"]
    verdict = "shown" if shown else "not shown at this budget"
    line = f"{text}: gap {g['mean']:+.1f} ± {g['stderr']:.1f} (s.e. over n={g['n']} seeds) — {verdict}"
    return line, {"claim": text, "a": a, "b": b, "col": col, "col_b": col if col_b is None else col_b, **g,
                  "shown": shown}


def claims(records, pairs, metric="accuracy"):
    """Lines and JSON (``{"claims": [...]}``) of :func:`claim` for ``(a, b, col, col_b, text)`` tuples."""
    lines, payload = [], []
    for a, b, col, col_b, text in pairs:
        line, result = claim(records, a, b, col, metric=metric, col_b=col_b, text=text)
        lines.append(line)
        if result is not None:
            payload.append(result)
    return lines, {"claims": payload}


def collect(study, runs, root, settings):
    """``[{run, config, metrics, cost}]`` of the finished runs (unfinished ones are left out); ``settings`` are
    the study's options plus ``data_dir``, for metrics that analyse a run."""
    records = []
    for run in runs:
        run_dir = os.path.join(root, run.name)
        if not finished(run_dir):
            continue
        with open(os.path.join(run_dir, study.results_file)) as f:
            results = json.load(f)
        record = load_record(run_dir) or {}
        if record.get("config", run.config()) != run.config():
            raise StudyError(f"run {run.name!r} in {run_dir} was made with other settings ({RECORD}); report it with "
                             "the --set / --gin_file / --gin_param it ran with.")
        attempts = record.get("attempts", [])
        cost = {"cpu_s": sum(a["cpu_s"] for a in attempts), "wall_s": sum(a["wall_s"] for a in attempts),
                "peak_rss_mb": max((a["peak_rss_mb"] or 0 for a in attempts), default=None) or None,
                "attempts": len(attempts)}
        records.append({"name": run.name, "dir": run_dir, "row": run.row, "cols": list(run.cols), "seed": run.seed,
                        "config": run.config(), "metrics": study.metrics(results, run_dir, settings), "cost": cost,
                        "machine": record.get("machine"), "commit": record.get("commit")})
    return records


def tabulate(study, records):
    """``{row: {col: {metric: mean_stderr}}}`` over the records in each cell, rows and columns in run order."""
    cells = {}
    for r in records:
        for col in r["cols"]:
            cells.setdefault(r["row"], {}).setdefault(col, []).append(r["metrics"])
    return {row: {col: {m: mean_stderr([x[m] for x in ms]) for m in ms[0]} for col, ms in cols.items()}
            for row, cols in cells.items()}


def _decimals(cell):
    """One decimal for a mean of 10 or more (accuracies in %, returns); below, enough to show the standard
    error to two significant figures (1 to 4), or 3 without one (one seed)."""
    if abs(cell["mean"]) >= 10:
        return 1
    if cell["stderr"] > 1e-12:
        return min(4, max(1, 1 - math.floor(math.log10(cell["stderr"]))))
    return 3


def format_table(study, table, markdown=False):
    cols = list(dict.fromkeys(c for row in table.values() for c in row))
    label = lambda row: study.labels.get(row, row)  # noqa: E731
    cell = lambda s: f"{s['mean']:.{_decimals(s)}f} ± {s['stderr']:.{_decimals(s)}f} (n={s['n']})"  # noqa: E731
    heads = [c if c else study.metric for c in cols]
    if study.columns_title and any(cols):
        heads = [f"{study.columns_title}{c}" for c in cols]
    body = [[label(row)] + [cell(table[row][c][study.metric]) if c in table[row] else "" for c in cols]
            for row in table]
    if markdown:
        lines = ["| " + " | ".join([study.rows_title] + heads) + " |", "|" + "---|" * (len(heads) + 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    width = max([len(r[0]) for r in body] + [4]) + 2
    cw = max([len(x) for r in body for x in r[1:]] + [len(h) for h in heads]) + 2
    lines = [f"{study.rows_title:<{width}}" + "".join(f"{h:>{cw}}" for h in heads)]
    return "\n".join(lines + [f"{r[0]:<{width}}" + "".join(f"{x:>{cw}}" for x in r[1:]) for r in body])


def page_path(study, docs_dir):
    return os.path.join(docs_dir, "experiments", f"{study.page}.md")


def write_page_block(path, text, heading, name):
    """Replace study ``name``'s results block (between :func:`markers`) in ``path`` by ``text``; a page without
    the block gets it appended, and a missing page is created with ``heading``."""
    begin, end = markers(name)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"# {heading}\n")
    with open(path) as f:
        page = f.read()
    if begin not in page and end not in page:
        page = f"{page.rstrip()}\n\n{begin}\n{end}\n"
    if begin not in page or end not in page or page.index(begin) > page.index(end):
        raise ValueError(f"{path}: the results block of study {name!r} is broken (want {begin} ... {end}).")
    head, rest = page.split(begin, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")


def write_hparams(logdir, records):
    """One TensorBoard HParams session per run: its configuration (trainer, gin files, bindings, seed) and its
    final metrics and cost, under ``logdir/<run name>`` (``tensorboard --logdir <root>/hparams``)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter  # EventFileWriter would import TensorFlow

    def session_start(values, name, when):  # the summary tensorboard.plugins.hparams.api.hparams writes, minus TF
        info = plugin_data_pb2.SessionStartInfo(group_name=name, start_time_secs=when)
        for key, value in sorted(values.items()):
            if isinstance(value, (int, float)):
                info.hparams[key].number_value = value
            else:
                info.hparams[key].string_value = str(value)
        summary = summary_pb2.Summary()
        summary.value.add(tag=metadata.SESSION_START_INFO_TAG, tensor=metadata.NULL_TENSOR,
                          metadata=metadata.create_summary_metadata(
                              plugin_data_pb2.HParamsPluginData(session_start_info=info)))
        return summary

    def hparams_of(r):
        c = r["config"]
        values = {"trainer": c["trainer"], "gin_files": ",".join(c["gin_files"]), "seed": int(c["seed"]),
                  "row": r["row"], "col": ",".join(map(str, r["cols"]))}
        for b in c["bindings"]:
            key, _, value = b.partition("=")
            values[key.strip()] = value.strip()
        return values

    for r in records:
        folder = os.path.join(logdir, r["name"])
        shutil.rmtree(folder, ignore_errors=True)  # one session per run, the latest
        os.makedirs(folder)
        when = time.time()
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in r["metrics"].items()]
        values += [summary_pb2.Summary.Value(tag=f"cost/{k}", simple_value=float(v))
                   for k, v in r["cost"].items() if isinstance(v, (int, float))]
        events = [event_pb2.Event(wall_time=when, file_version="brain.Event:2"),
                  event_pb2.Event(wall_time=when, summary=session_start(hparams_of(r), r["name"], when)),
                  event_pb2.Event(wall_time=when, step=0, summary=summary_pb2.Summary(value=values))]
        with open(os.path.join(folder, f"events.out.tfevents.{int(when)}.{platform.node()}"), "wb") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())


def report(study, runs, root, options, docs_dir=None, data_dir=None, say=print):
    """Print the table and write ``<root>/<study>.json``, ``<root>/<study>.png``, the docs page's results block
    and ``<root>/hparams``; returns the JSON payload."""
    records = collect(study, runs, root, dict(options, data_dir=data_dir))
    if not records:
        raise ValueError(f"study {study.name!r}: no finished runs under {root}.")
    table = tabulate(study, records)
    lines, payload_extra = study.extra(table, records, options) if study.extra else ([], {})
    cpu = sum(r["cost"]["cpu_s"] for r in records)
    machines = sorted({f"{r['machine']['cpu']} × {r['machine']['cores']} cores, TensorFlow {r['machine']['tensorflow']}"
                       for r in records if r.get("machine")})
    commits = sorted({r["commit"] for r in records if r.get("commit")})
    seeds = sorted({r["seed"] for r in records})
    date = time.strftime("%Y-%m-%d", time.gmtime())
    payload = {"study": study.name, "title": study.title, "options": options, "metric": study.metric,
               "runs_finished": len(records), "runs_total": len(runs), "seeds": seeds, "cpu_hours": cpu / 3600,
               "machines": machines, "commits": commits, "date": date, "table": table, "runs": records,
               **payload_extra}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{study.name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    figure = None
    if study.figure:
        figure = os.path.join(root, f"{study.name}.png")
        study.figure(figure, table, records, options)
    write_hparams(os.path.join(root, "hparams"), records)
    text = format_table(study, table)
    missing = f" ({len(runs) - len(records)} of {len(runs)} runs unfinished)" if len(records) < len(runs) else ""
    say(f"\n{study.title}{missing}\n{text}")
    for ln in lines:
        say(ln)
    say(f"{len(records)} run{'s' * (len(records) != 1)}, {cpu / 3600:.2f} CPU-hours; {'; '.join(machines)}")
    if docs_dir:
        options_text = ", ".join(f"{k}={v}" for k, v in options.items())
        block = [f"{study.title}: {study.metric}, mean ± standard error over seeds (n runs per cell).", "",
                 format_table(study, table, markdown=True), "", *[f"- {ln}" for ln in lines],
                 f"- options: {options_text}; seeds {seeds}; {len(records)} of {len(runs)} runs finished",
                 f"- {cpu / 3600:.2f} CPU-hours on {'; '.join(machines) or 'unknown'}; commit "
                 f"{', '.join(c[:12] for c in commits) or 'unknown'}; {date}",
                 f"- generated by `python -m studies report {study.name}`"]
        path = page_path(study, docs_dir)
        write_page_block(path, "\n".join(block), study.title, study.name)
        payload["page"] = path
    say(f"json: {os.path.join(root, study.name + '.json')}" + (f"\nfigure: {figure}" if figure else ""))
    return payload
