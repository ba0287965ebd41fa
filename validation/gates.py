"""CI gates for ``xscale run --gate`` and the ``[gates]`` config table; parsing and
messages here, the evaluation in :func:`reports.check_gates`."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path

from reports import ReportError
from reports.gates import Gate, GateResult, check_gates, gate_from_item
from reports.gates import parse_gate as _parse_gate
from validation.errors import UserError

__all__ = ["Gate", "GateResult", "parse_gate", "parse_gate_table", "evaluate", "add_gate_argument"]


def parse_gate(text: str) -> Gate:
    """Parse ``"label:metric.statistic<op>value"``, e.g. ``"csd8:peak_f1.median>=0.8"``.

    Operators: ``>=``, ``<=``, ``>``, ``<``, ``==``, ``!=``. Statistics: median, mean,
    iqr_low, iqr_high, n, n_undefined, rank.

    Raises
    ------
    UserError
        One line naming the gate and what is wrong with it.
    """
    try:
        return _parse_gate(text)
    except ReportError as exc:
        raise UserError(str(exc)) from None


def parse_gate_table(table: Mapping[str, object]) -> list[Gate]:
    """Gates of a config's ``[gates]`` table, ``{"csd8:peak_f1.median": ">= 0.8"}``.

    Raises
    ------
    UserError
        For a malformed entry (its value must be a string such as ``">= 0.8"``).
    """
    if not isinstance(table, Mapping):
        raise UserError("[gates] must be a table of 'label:metric.statistic' = '<op> value'")
    gates = []
    for key, condition in table.items():
        if not isinstance(condition, str):
            raise UserError(
                f"[gates] {key!r}: the condition must be a string such as '>= 0.8', "
                f"got {condition!r}"
            )
        try:
            gates.append(gate_from_item(key, condition))
        except ReportError as exc:
            raise UserError(f"[gates] {exc}") from None
    return gates


def evaluate(
    run_dir: str | Path, gates: Iterable[Gate | str] | Mapping[str, str]
) -> tuple[bool, list[str]]:
    """Check gates against a finished run directory.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (scores.csv is read; nothing is recomputed).
    gates : iterable of Gate or str, or mapping
        Parsed gates, gate strings, or a ``[gates]`` table.

    Returns
    -------
    ok : bool
        True when every gate holds (also when there are none).
    messages : list of str
        One line per gate, those that do not hold first, e.g.
        ``gate csd8:peak_f1.median>=0.8 does not hold: value 0.712``.

    Raises
    ------
    UserError
        A malformed gate or one naming a model or metric that the run does not have.
    """
    if isinstance(gates, Mapping):
        parsed = parse_gate_table(gates)
    else:
        parsed = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    if not parsed:
        return True, []
    try:
        results = check_gates(run_dir, parsed)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    failed = [r.message for r in results if not r.passed]
    held = [r.message for r in results if r.passed]
    return not failed, failed + held


def add_gate_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--gate "label:metric.statistic>=value"`` option."""
    parser.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="GATE",
        help='condition that must hold, e.g. "csd8:peak_f1.median>=0.8" (repeatable; '
        "exit 1 when one does not)",
    )
