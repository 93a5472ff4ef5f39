"""What every exported file goes through: a default place beside its input and the weight budget."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BUDGET_MB = 100.0
MB = 1024 * 1024


class ExportError(Exception):
    """An export step could not produce a usable artifact; the message is one line saying why."""


class BudgetExceeded(ExportError):
    """An artifact is larger than the weight budget. The file is kept, so that it can be inspected."""


def default_out(source: str | Path, suffix: str) -> Path:
    """The default output beside the input: ``person.pt`` + ``.onnx`` -> ``person.onnx``.

    Args:
        source: The input file.
        suffix: What replaces the input's suffix, e.g. ".onnx", "_int8.onnx", "_fp16.engine".
    """
    p = Path(source)
    return p.with_name(p.stem + suffix)


def check_budget(path: str | Path, budget_mb: float) -> float:
    """Size of an artifact in MiB, after checking it against the budget.

    Raises:
        BudgetExceeded: The file is larger than budget_mb.
    """
    size_mb = Path(path).stat().st_size / MB
    if budget_mb is not None and size_mb > budget_mb:
        raise BudgetExceeded(
            f"{path}: {size_mb:.1f} MB is over the weight budget of {budget_mb:g} MB (--budget-mb); the file "
            "is kept for inspection, but choose a smaller model or input size, or raise the budget knowingly"
        )
    return size_mb
