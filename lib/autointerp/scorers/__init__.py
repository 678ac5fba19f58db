"""Scorers, one module each, on one contract (``base``): ``detection``, ``fuzzing``,
``simulation`` and ``intruder`` are LLM judges (their shared plumbing is ``judge``);
``surprisal`` (an LM's loss), ``embedding`` (MiniLM) and ``intervention`` (steering) need none.
Everything in ``base`` is importable from here: ``from autointerp.scorers import run_with_control``.
"""
from .base import *  # noqa: F401,F403
from .base import __all__  # noqa: F401
