"""`_fastledger`: the deterministic core (see README.md).

`Ledger` is the compiled state machine and `Result` what it answers for each op; `codes` holds the stable numbers it speaks.
"""

from . import codes

try:
    from ._ledger import DEBUG, Ledger, LedgerCorrupt, Result
except ModuleNotFoundError as exc:  # the source tree, imported instead of the installed package
    if exc.name != f"{__name__}._ledger":
        raise
    raise ModuleNotFoundError(
        f"{__name__} at {__path__[0]} has no compiled _ledger module. Either install the package "
        "(`pip install .`) and keep the source tree off sys.path (run tests with "
        "`python -P -m pytest --import-mode=importlib`, or the `pytest` script with "
        "`--import-mode=importlib`), or build in place: `python setup.py build_ext --inplace`.",
        name=exc.name,
    ) from exc

from .codes import *  # noqa: E402,F403  (the stable numbers, re-exported)

__all__ = ["DEBUG", "Ledger", "LedgerCorrupt", "Result", "codes"] + [
    name for name in dir(codes) if name.isupper()
]
