"""Evaluation: suites (clean, corruptions, adversarial hook), metrics (TA, RA, mCE, union robust
accuracy, flip rate), long-format results (``ResultsWriter``) and summaries. See docs/evaluation.md.

Submodules are imported where used (``rws.evaluation.suites`` etc.) so that reading results or
building tables does not import the data or corruption stacks.
"""
