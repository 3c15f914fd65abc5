"""The one analysis command: ``python -m analysis STUDY [--experiment NAME] [--tracking-uri URI] [--sweep-id ID]
[--out DIR] [--no-log] [--validate]``.

STUDY is what the launcher takes (``python -m tune_jobs STUDY``): a built-in study's name (its analysis is
``analysis.<name>:ANALYSIS``), ``package.module`` (its ``STUDY``'s analysis) or ``package.module:ATTR`` (a study
declaration, or an ``Analysis``: its study is the declaration in that module carrying it).  A study declaration is
recognised by what it has, a ``name`` and an ``analysis``: this package never imports the launcher (the user's
module may).

The older commands are aliases of it, through the same parser: ``python -m analysis.poison_sensitivity FLAGS``
(and the other two built-ins) is ``python -m analysis poison_sensitivity FLAGS``; ``python -m analysis.validate
STUDY [--experiment NAME] [--tracking-uri URI] [--sweep-id ID]`` runs the analysis in memory and its checks only
(no files, no analysis run).  Exit status: 0, 1 when a check failed, 2 when there is nothing to analyse (an
unknown study, experiment or sweep, no finished runs).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.common import Analysis, has_runs, run_analysis, run_checks
from record.read import SweepNotFound, read_sweep

COMMAND = "python -m analysis"


class UnknownStudy(LookupError):
    """A study reference that names no analysis; the message says what was looked for."""


@dataclass(frozen=True)
class StudyAnalysis:
    """A study reference resolved: the study's name (its sweeps' ``robustlab.study`` tag, the default experiment
    and output folder), its analysis, and the folder of the module declaring it (whose git commit the analysis
    run records)."""

    name: str
    analysis: Analysis
    source: Path


def builtin_studies() -> list[str]:
    """The built-in studies with an analysis: the modules ``analysis.<name>`` that define ``ANALYSIS``."""
    import analysis

    return sorted(info.name for info in pkgutil.iter_modules(analysis.__path__)
                  if info.name.isidentifier() and not info.name.startswith("_")
                  and isinstance(getattr(importlib.import_module(f"analysis.{info.name}"), "ANALYSIS", None), Analysis))


def _folder(module: Any) -> Path:
    return Path(module.__file__).resolve().parent if getattr(module, "__file__", None) else Path.cwd()


def _is_study(value: Any) -> bool:
    """A study declaration, by duck typing: a ``name`` string and an ``analysis`` attribute."""
    return isinstance(getattr(value, "name", None), str) and hasattr(value, "analysis")


def _import(ref: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise UnknownStudy(f"study {ref!r}: no module {module_name!r} on the Python path") from None
        raise


def resolve(ref: str) -> StudyAnalysis:
    """The analysis a study reference names (see the module docstring); :class:`UnknownStudy` says what is wrong."""
    if ":" not in ref and "." not in ref:
        module = None
        if ref.isidentifier() and not ref.startswith("_"):
            try:
                module = importlib.import_module(f"analysis.{ref}")
            except ModuleNotFoundError as error:
                if error.name != f"analysis.{ref}":
                    raise
        if not isinstance(getattr(module, "ANALYSIS", None), Analysis):
            raise UnknownStudy(f"unknown study {ref!r}; built-in: {', '.join(builtin_studies())}; or give "
                               "package.module (its STUDY) or package.module:ATTR")
        return StudyAnalysis(ref, module.ANALYSIS, _folder(module))
    module_name, _, attr = ref.partition(":")
    module = _import(ref, module_name)
    target = getattr(module, attr, None) if attr else (getattr(module, "STUDY", None) or getattr(module, "ANALYSIS", None))
    if isinstance(target, Analysis):  # its study: the declaration in the module that carries it
        names = {v.name for v in vars(module).values() if _is_study(v) and v.analysis is target}
        name = names.pop() if len(names) == 1 else module_name.rpartition(".")[2]
        return StudyAnalysis(name, target, _folder(module))
    if _is_study(target):
        if not isinstance(target.analysis, Analysis):
            raise UnknownStudy(f"study {target.name!r} ({ref}) declares no analysis")
        return StudyAnalysis(target.name, target.analysis, _folder(module))
    raise UnknownStudy(f"study {ref!r}: {module_name} has no study declaration {attr or 'STUDY'} with an analysis"
                       + ("" if attr else " (nor an ANALYSIS)"))


def build_parser(prog: str = COMMAND, study: str | None = None, check_only: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m analysis`` (``study`` None: STUDY is its first argument) and of its aliases
    (``study`` given: ``python -m analysis.STUDY``; ``check_only``: ``python -m analysis.validate``)."""
    shown = study or "STUDY"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(f"Validate a finished sweep of {shown} read back from MLflow: run its analysis in memory and its "
                     "checks; exit 1 if any fails, 2 if there is nothing to validate." if check_only else
                     f"Analyse a sweep of {shown} read back from MLflow: summary.json, markdown and CSV tables, plots; "
                     "the files are also logged as an analysis run nested under the sweep."),
    )
    if study is None:
        parser.add_argument("study", metavar="STUDY",
                            help=f"a built-in study's name ({', '.join(builtin_studies())}), package.module (its "
                                 "STUDY) or package.module:ATTR, as python -m tune_jobs takes")
    parser.add_argument("--experiment", default=None,
                        help=f"MLflow experiment name (default: {study or 'the study name'})")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--sweep-id", default=None, help="the sweep's parent run id (default: the latest sweep)")
    if not check_only:
        parser.add_argument("--out", type=Path, default=None,
                            help=f"output folder (default: results/{study or 'STUDY'}; with --experiment NAME, "
                                 "results/NAME)")
        parser.add_argument("--no-log", action="store_true", help="do not log the outputs back to MLflow")
        parser.add_argument("--validate", action="store_true",
                            help="also run the study's validation checks; exit 1 if any fails")
    return parser


def main(argv: list[str] | None = None, *, study: str | None = None, prog: str = COMMAND,
         check_only: bool = False) -> int:
    """``python -m analysis`` (or an alias: ``study`` fixed, ``check_only`` for ``analysis.validate``) on
    ``argv`` (default: this process's arguments); the exit status."""
    given = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog, study, check_only).parse_args(given)
    ref = study or args.study
    try:
        target = resolve(ref)
        sweep = read_sweep(args.experiment or target.name, args.tracking_uri, args.sweep_id, study=target.name)
    except (UnknownStudy, SweepNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if check_only:
        if not has_runs(sweep):
            return 2
        print(f"validating {target.name} sweep {sweep.sweep_id}: {len(sweep.runs)} finished runs")
        return run_checks(target.analysis.checks(sweep, target.analysis.analyze(sweep)))
    provenance = None
    if not args.no_log:
        from record.provenance import context_tags

        words = shlex.split(prog) + ([] if study else [ref])  # how the command names the study
        provenance = context_tags(shlex.join(words), shlex.join(shlex.split(prog) + given), target.source)
    return run_analysis(target.analysis, sweep, args.out or Path("results") / sweep.experiment, validate=args.validate,
                        log=not args.no_log, provenance=provenance)
