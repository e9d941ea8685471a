"""The training report: what a data scientist reads on a training run, drawn on the validation split the
candidate was chosen on.

One self-contained page at the top of the run, `training_report.html` (`pipelines.pages`: the pictures inline
as base64 PNGs, so it reads the same in the MLflow artifact viewer, offline or from a copy), and each picture
beside it as `training_report/NAME.png`:

- text classifiers (`classifier_report`; log-anomaly, failure-rca): the contenders compared on the headline
  metrics (`comparison`), their precision-recall curves with the served operating point (`pr_curve`; micro-averaged
  over the labels of a multi-label model), the confusion matrix at the tuned threshold(s) (`confusion_matrix`;
  micro-averaged counts, plus each label's `label_counts`, for a multi-label model) and the per-epoch curves
  (`training_curves`);
- the forecaster (`forecast_report`): the served family against the contenders and baselines (`comparison`),
  forecast against actual with the p10..p90 band for the series worst and best on validation MAE
  (`forecast_worst`, `forecast_best`) and the per-epoch curves.

Pictures are `matplotlib.figure.Figure` objects (`pipelines.pages.figure`), never pyplot. The per-epoch metrics
MLflow charts are named by `pipelines.training.loop.epoch_metric_names`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from pipelines.pages import CURRENT_COLOUR, REFERENCE_COLOUR, esc, figure, fmt, number, page, png, table
from pipelines.telemetry import get_logger
from pipelines.training.loop import EPOCH_LOSSES

log = get_logger("train")

REPORT_PATH = "training_report.html"  # the page, at the top of the run
PLOTS_DIR = "training_report"  # each picture as PLOTS_DIR/NAME.png
OTHER_COLOURS = ("#ef6c00", "#6a1b9a", "#2e7d32", "#c62828", "#00838f", "#6d4c41")  # contenders beside the served one
BASELINE_COLOURS = (REFERENCE_COLOUR, "#546e7a", "#cfd8dc")  # baselines: greys
MAX_SERIES_ROWS = 50  # rows of the forecaster's per-series table


@dataclass
class TrainingReport:
    """A training report being built: HTML blocks in order and the pictures by name (`add_plot`)."""

    title: str
    blocks: list[str] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure

    def add(self, html: str) -> None:
        """Append `html` (already HTML) to the page."""
        self.blocks.append(html)

    def add_facts(self, facts: Mapping[str, Any]) -> None:
        """A table of `facts`, one {what: value} a row (numbers formatted with `pipelines.pages.fmt`)."""
        self.add("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in facts.items()) + "</table>")

    def add_plot(self, name: str, fig, caption: str) -> None:
        """`fig` on the page under `caption` (in `<figure id='plot-NAME'>`), and as `PLOTS_DIR/NAME.png` on the run.

        Raises:
            ValueError: `name` already used in this report.
        """
        if name in self.plots:
            raise ValueError(f"training report {self.title!r}: two plots named {name!r}")
        self.plots[name] = fig
        self.add(f"<figure id='plot-{esc(name)}'>{png(fig, caption)}<figcaption class='small muted'>{esc(caption)}</figcaption></figure>")

    def html(self) -> str:
        """The whole page (`pipelines.pages.page`)."""
        return page(self.title, f"<h1>{esc(self.title)}</h1>{''.join(self.blocks)}")

    def log(self) -> None:
        """Log the page as `REPORT_PATH` and each picture as `PLOTS_DIR/NAME.png` to the active MLflow run."""
        import mlflow

        mlflow.log_text(self.html(), REPORT_PATH)
        for name, fig in self.plots.items():
            mlflow.log_figure(fig, f"{PLOTS_DIR}/{name}.png")


def log_report(task: str, build: Callable[[], TrainingReport]) -> bool:
    """Build `task`'s training report and log it to the active MLflow run (`TrainingReport.log`), so that a picture
    that cannot be drawn or written never costs the night its model: a failure is logged with its traceback and
    tagged on the run (`report.training` = failed). Returns whether the report was logged."""
    import mlflow

    try:
        build().log()
        return True
    except Exception:  # the report is for people; the model it describes is registered all the same
        log.warning("training report not logged", exc_info=True, extra={"task": task})
        mlflow.set_tag("report.training", "failed")
        return False


# ---- pictures --------------------------------------------------------------------------------

def _colours(names: Sequence[str], served: str) -> dict[str, str]:
    others = iter(OTHER_COLOURS * (len(names) // len(OTHER_COLOURS) + 1))
    greys = iter(BASELINE_COLOURS * (len(names) // len(BASELINE_COLOURS) + 1))
    return {n: CURRENT_COLOUR if n == served else (next(greys) if "baseline" in n else next(others)) for n in names}


def comparison(scores: Mapping[str, Mapping[str, float]], metrics: Sequence[str], served: str, title: str):
    """Grouped bars: each contender's value of each of `metrics` (scores {contender: {metric: value}}; missing or
    non-finite values left out), the `served` contender in the candidate colour and outlined, baselines hatched
    (a name holding "baseline"). Returns a Figure."""
    names = list(scores)
    colours = _colours(names, served)
    fig = figure(min(max(5.0, 1.3 * len(metrics) * max(len(names), 2) / 2.5), 9.0) + 2.0, 3.4)  # + the legend
    ax = fig.add_subplot()
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(names):
        values = np.array([float(scores[name].get(m, np.nan)) for m in metrics], dtype=float)
        shown = np.isfinite(values)
        label = f"{name} (served)" if name == served else name
        bars = ax.bar(x[shown] + (i - (len(names) - 1) / 2) * width, values[shown], width, label=label, color=colours[name],
                      edgecolor="#212121" if name == served else "none", hatch="//" if "baseline" in name else None)
        for bar, value in zip(bars, values[shown] if len(names) <= 5 else []):  # more bars than that: the table has the numbers
            ax.annotate(fmt(float(value), 3), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, list(metrics), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def pr_curve(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], served: str, point: tuple[float, float] | None, title: str,
             prevalence: float | None = None):
    """Precision against recall of each contender (curves {name: (targets (n,) 0/1, scores (n,))}), average precision
    in the legend; the served contender's operating point (`point`: its recall, precision) marked, and the
    positive rate `prevalence` (a model that guesses) as a dotted line. Returns a Figure.

    Raises:
        ValueError: a curve whose targets are all of one class (no curve exists).
    """
    colours = _colours(list(curves), served)
    fig = figure(5.6, 4.2)
    ax = fig.add_subplot()
    for name, (y, p) in curves.items():
        y = np.asarray(y).astype(bool)
        if y.all() or not y.any():
            raise ValueError(f"precision-recall curve of {name}: the targets hold one class only")
        precision, recall, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p)
        ax.step(recall, precision, where="post", color=colours[name], lw=2.2 if name == served else 1.2,
                label=f"{name}{' (served)' if name == served else ''}: AP {ap:.3f}")
    if point is not None and all(np.isfinite(point)):
        ax.plot(*point, marker="o", ms=8, color=CURRENT_COLOUR, markeredgecolor="#212121", ls="none",
                label=f"served at its threshold: P {point[1]:.3f}, R {point[0]:.3f}")
    if prevalence is not None:
        ax.axhline(prevalence, color="#9e9e9e", ls=":", lw=1, label=f"guessing ({prevalence:.3f})")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def confusion_matrix(counts: Sequence[Sequence[int]] | np.ndarray, classes: tuple[str, str], title: str):
    """A 2x2 confusion matrix: `counts` [[TN, FP], [FN, TP]] (rows actual, columns predicted), each cell with its
    count and its share of the actual row. Returns a Figure."""
    counts = np.asarray(counts, dtype=np.int64).reshape(2, 2)
    rows = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(rows, 1)
    fig = figure(4.4, 3.8)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{n:,}\n{share[i, j]:.1%} of actual", ha="center", va="center", fontsize=9,
                color="white" if share[i, j] > 0.6 else "#212121")
    ax.set_xticks([0, 1], [f"predicted {c}" for c in classes], fontsize=8)
    ax.set_yticks([0, 1], [f"actual {c}" for c in classes], fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def label_counts(labels: Sequence[str], tp: np.ndarray, fn: np.ndarray, fp: np.ndarray, title: str):
    """Per label, stacked horizontal bars: true positives, missed (false negatives), then false alarms (false
    positives); labels with none of the three left out. Returns a Figure."""
    keep = [i for i in range(len(labels)) if tp[i] + fn[i] + fp[i] > 0] or list(range(len(labels)))
    fig = figure(6.5, 1.0 + 0.32 * max(len(keep), 1))
    ax = fig.add_subplot()
    y = np.arange(len(keep))
    t, f, a = (np.asarray(v)[keep] for v in (tp, fn, fp))
    ax.barh(y, t, color="#2e7d32", label="found (TP)")
    ax.barh(y, f, left=t, color="#ef6c00", label="missed (FN)")
    ax.barh(y, a, left=t + f, color="#c62828", label="false alarm (FP)")
    ax.set_yticks(y, [labels[i] for i in keep], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("jobs")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def training_curves(history: Sequence[Mapping[str, float]], best_epoch: int, metrics: Sequence[str], title: str):
    """Per epoch (from 1): the training and validation losses (left), the validation `metrics` present in `history`
    (right), the kept epoch `best_epoch` marked. Returns a Figure."""
    from matplotlib.ticker import MaxNLocator  # matplotlib loads on first drawing (`pipelines.pages.figure`)

    epochs = np.arange(1, len(history) + 1)
    fig = figure(8.0, 3.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax, keys in ((left, EPOCH_LOSSES), (right, [m for m in metrics if any(m in h for h in history)])):
        for key in keys:
            values = np.array([float(h.get(key, np.nan)) for h in history])
            ax.plot(epochs, values, marker="o", ms=3, label=key if key in EPOCH_LOSSES else f"val_{key}")
        if best_epoch:
            ax.axvline(best_epoch, color="#9e9e9e", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("loss", fontsize=10)
    right.set_title("validation", fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig


@dataclass
class SeriesForecast:
    """One series' validation forecasts for `forecast_plot`, in original units: the series itself over `times`
    (epoch seconds, (T,); NaN where it has no point), and non-overlapping forecasts `bands` (W, H, 3: p10, p50, p90)
    for the steps `forecast_times` (W, H); `cut`: when validation starts (epoch seconds); `mae`: its validation MAE
    in robust-scaled units."""

    series: str
    mae: float
    times: np.ndarray
    actual: np.ndarray
    forecast_times: np.ndarray
    bands: np.ndarray
    cut: float


def _datetimes(seconds: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(seconds, dtype=np.float64)).astype("int64").astype("datetime64[s]")


def forecast_plot(s: SeriesForecast, title: str):
    """The actual series against the forecast median and its p10..p90 band, validation shaded from `s.cut`.
    Returns a Figure."""
    fig = figure(8.0, 3.2)
    ax = fig.add_subplot()
    ax.axvspan(_datetimes(np.array([s.cut]))[0], _datetimes(s.times[-1:])[0], color="#f5f5f5", label="validation")
    ax.plot(_datetimes(s.times), s.actual, color="#212121", lw=1.2, label="actual")
    for w in range(len(s.forecast_times)):
        t = _datetimes(s.forecast_times[w])
        ax.fill_between(t, s.bands[w, :, 0], s.bands[w, :, 2], color=CURRENT_COLOUR, alpha=0.22, lw=0,
                        label="p10..p90" if w == 0 else None)
        ax.plot(t, s.bands[w, :, 1], color=CURRENT_COLOUR, lw=1.4, label="forecast p50" if w == 0 else None)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    return fig


# ---- reports ---------------------------------------------------------------------------------

@dataclass
class Scored:
    """One contender on the validation split: its `metrics`, and where known its probabilities `probs` (N, K)."""

    metrics: Mapping[str, float]
    probs: np.ndarray | None = None


def _comparison_table(scores: Mapping[str, Mapping[str, float]], metrics: Sequence[str], served: str) -> str:
    rows = [[f"{name} (served)" if name == served else name, *[number(s.get(m)) for m in metrics]] for name, s in scores.items()]
    return table(["contender", *metrics], rows, numeric=range(1, len(metrics) + 1))


def classifier_report(task: str, y: np.ndarray, labels: Sequence[str], served: str, scored: Mapping[str, Scored],
                      thresholds: Sequence[float], headline: Sequence[str], facts: Mapping[str, Any],
                      history: Sequence[Mapping[str, float]] = (), best_epoch: int = 0, curve_metrics: Sequence[str] = (),
                      trained: str = "bert") -> TrainingReport:
    """The training report of a text classifier on its validation split: `y` (N, K) 0/1 targets of `labels` (K),
    the served contender `served` (a key of `scored`, with `probs` (N, K)) deciding at `thresholds` (K).

    Plots: `comparison` (every contender on `headline`, when there are two or more), `pr_curve` (each contender
    with probabilities; with K > 1 micro-averaged over all labels), `confusion_matrix` (K = 1: the label against
    the rest; K > 1: micro-averaged counts of the N x K label decisions, with `label_counts` and a per-label table),
    and `training_curves` when `history` (of the contender `trained`, served or not) holds epochs (losses, then
    `curve_metrics`). `facts` head the page.

    Raises:
        ValueError: `served` has no probabilities, or their shape differs from `y`'s.
    """
    y = np.asarray(y).astype(bool)
    probs = scored[served].probs
    if probs is None or np.shape(probs) != y.shape:
        raise ValueError(f"{task}: the served contender {served!r} needs probabilities shaped like the targets {y.shape}")
    pred = np.asarray(probs) >= np.asarray(thresholds, dtype=float)[None, :]
    multi = y.shape[1] > 1
    report = TrainingReport(f"{task}: training report")
    report.add_facts(facts)

    scores = {name: s.metrics for name, s in scored.items()}
    report.add("<h2>Contenders on the validation split</h2>")
    report.add(_comparison_table(scores, headline, served))
    if len(scored) > 1:
        report.add_plot("comparison", comparison(scores, headline, served, f"{task}: contenders on validation"),
                        f"{task}: each contender's validation {', '.join(headline)}; the served one outlined")

    report.add("<h2>Precision and recall</h2>")
    curves = {name: (y.ravel(), np.asarray(s.probs, dtype=float).ravel()) for name, s in scored.items()
              if s.probs is not None and np.shape(s.probs) == y.shape}
    if y.all() or not y.any():
        report.add("<p class='muted'>No precision-recall curve: the validation targets hold one class only.</p>")
    else:
        served_metrics = scored[served].metrics
        recall_key, precision_key = ("micro_recall", "micro_precision") if multi else ("recall", "precision")
        point = (float(served_metrics.get(recall_key, np.nan)), float(served_metrics.get(precision_key, np.nan)))
        what = "micro-averaged over the labels" if multi else labels[0]
        report.add_plot("pr_curve", pr_curve(curves, served, point, f"{task}: precision-recall on validation\n({what})",
                                             prevalence=float(y.mean())),
                        f"{task}: precision against recall on the validation split ({what}); the dot is the served model "
                        f"at its tuned threshold{'s' if multi else ''}")

    report.add("<h2>Decisions at the tuned threshold" + ("s" if multi else "") + "</h2>")
    tp, fp, fn = (y & pred).sum(0), (~y & pred).sum(0), (y & ~pred).sum(0)
    tn = (~y & ~pred).sum(0)
    if not multi:
        classes = ("normal", labels[0])
        report.add_plot("confusion_matrix", confusion_matrix([[tn[0], fp[0]], [fn[0], tp[0]]], classes,
                                                             f"{task} at threshold {fmt(float(thresholds[0]), 3)}"),
                        f"{task}: validation rows by actual and predicted class at the tuned threshold {fmt(float(thresholds[0]), 4)}")
    else:
        report.add_plot("confusion_matrix", confusion_matrix([[tn.sum(), fp.sum()], [fn.sum(), tp.sum()]], ("no", "yes"),
                                                             f"{task}: every (job, label) decision, micro-averaged"),
                        f"{task}: the {y.shape[0]:,} validation jobs x {y.shape[1]} labels as yes/no decisions at each label's threshold")
        report.add_plot("label_counts", label_counts(labels, tp, fn, fp, f"{task}: per label on validation"),
                        f"{task}: per label, the validation jobs found, missed and falsely flagged")
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        rows = [[label, int(tp[k] + fn[k]), int(tp[k]), int(fn[k]), int(fp[k]), number(precision[k]), number(recall[k]), number(f1[k]),
                 number(thresholds[k])] for k, label in enumerate(labels)]
        report.add(table(["label", "support", "found (TP)", "missed (FN)", "false alarms (FP)", "precision", "recall", "F1", "threshold"],
                         rows, numeric=range(1, 9)))

    if any("train_loss" in h for h in history):
        report.add("<h2>Training curves</h2>")
        report.add_plot("training_curves", training_curves(history, best_epoch, curve_metrics, f"{task} ({trained}): per epoch"),
                        f"{task}: {trained}'s losses and validation metrics per epoch; the dashed line is the epoch kept")
    return report


def forecast_report(task: str, served: str, scores: Mapping[str, Mapping[str, float]], metrics: Sequence[str],
                    plot_metrics: Sequence[str], series: Sequence[SeriesForecast], per_series_mae: Mapping[str, float],
                    facts: Mapping[str, Any], history: Sequence[Mapping[str, float]] = (), best_epoch: int = 0) -> TrainingReport:
    """The training report of the forecaster on its validation windows: `scores` {family or baseline: {metric:
    value}} in a table of `metrics` and compared on `plot_metrics` (`comparison`; errors on one scale, lower is
    better), a `forecast_plot` per entry of `series` (worst first: named `forecast_worst`, then `forecast_best`),
    each series' validation MAE (`per_series_mae`, worst first, up to `MAX_SERIES_ROWS`), and `training_curves` when
    `history` holds epochs. `facts` head the page."""
    report = TrainingReport(f"{task}: training report")
    report.add_facts(facts)
    report.add("<h2>Families and baselines on the validation windows</h2>")
    report.add(_comparison_table(scores, metrics, served))
    report.add_plot("comparison", comparison(scores, plot_metrics, served, f"{task}: errors on validation (lower is better)"),
                    f"{task}: each family's and baseline's validation {', '.join(plot_metrics)}; the served one outlined")

    report.add("<h2>Forecast against actual</h2>")
    for s, name in zip(series, ("forecast_worst", "forecast_best")):
        which = "only" if len(series) == 1 else ("worst" if name == "forecast_worst" else "best")
        report.add_plot(name, forecast_plot(s, f"{which} series by validation MAE ({fmt(s.mae, 3)}): {s.series}"),
                        f"{task}: the {which} series on validation MAE, {s.series}: actual against the served forecast's "
                        "median and p10..p90 band, from forecast origins one horizon apart")
    ranked = sorted(per_series_mae.items(), key=lambda kv: -kv[1] if np.isfinite(kv[1]) else np.inf)
    report.add(table(["series", "validation MAE (robust-scaled)"], [(sid, number(v)) for sid, v in ranked[:MAX_SERIES_ROWS]], numeric=(1,)))
    if len(ranked) > MAX_SERIES_ROWS:
        report.add(f"<p class='muted small'>The worst {MAX_SERIES_ROWS} of {len(ranked):,} series.</p>")

    if any("train_loss" in h for h in history):
        report.add("<h2>Training curves</h2>")
        report.add_plot("training_curves", training_curves(history, best_epoch, ("mae", "coverage"), f"{task}: per epoch"),
                        f"{task}: pinball losses and validation metrics per epoch; the dashed line is the epoch kept")
    return report
