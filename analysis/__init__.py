"""Fitting library for the Fitting paradigm of arXiv 2601.05049: load sweep results,
fit Eq. 2 / Eq. 4 / Eq. 6, compare with published laws, draw the figures, write reports.

    from lrscale.analysis import load_results, fit_sweep, write_report
    sf = fit_sweep(load_results("sweeps/fitting_sp"), "n_active_nonembed")
"""

from lrscale.analysis.fitting import (
    CurvedLawFit,
    DataFit,
    FitWarning,
    InsufficientDataError,
    LawFit,
    LrFit,
    SearchCost,
    SweepFit,
    fit_all_n_kinds,
    fit_curved_lr_law,
    fit_loss_vs_tokens,
    fit_lr_curve,
    fit_lr_law,
    fit_sweep,
    leave_one_size_out,
    search_cost,
)
from lrscale.analysis.laws import (
    PUBLISHED_LAWS,
    PublishedLaw,
    bjorck_law,
    choose_reference_point,
    compare_exponents,
    rescale_law,
)
from lrscale.analysis.report import write_report
from lrscale.analysis.results import N_KINDS, REQUIRED_COLUMNS, load_results, usable_mask

__all__ = [
    "CurvedLawFit", "DataFit", "FitWarning", "InsufficientDataError", "LawFit", "LrFit",
    "SearchCost", "SweepFit", "fit_all_n_kinds", "fit_curved_lr_law", "fit_loss_vs_tokens",
    "fit_lr_curve", "fit_lr_law", "fit_sweep", "leave_one_size_out", "search_cost",
    "PUBLISHED_LAWS", "PublishedLaw", "bjorck_law", "choose_reference_point",
    "compare_exponents", "rescale_law", "write_report",
    "N_KINDS", "REQUIRED_COLUMNS", "load_results", "usable_mask",
]
