"""Two optional model contracts, modes and heads, and the wrappers that make any choice among
them look like a plain classifier to attacks, evaluation and exports (see docs/methods.md).

Modes. A model with several sets of mode-specific parameters (adapters: shared ψ plus φ_clean
and φ_robust) declares
    model.modes          tuple of mode names, e.g. ("clean", "robust")
    model.mode           the current mode: a name, a float β or a pair (β1, β2)
    model.set_mode(m)    switch in place (never rebuilds: same parameter objects); a model that
                         cannot mix raises ValueError for a number
For two modes (m0, m1) a float β means the mix β·φ_m0 + (1 − β)·φ_m1 (β=1 is m0, β=0 is m1,
values outside [0, 1] extrapolate) and a pair (β1, β2) means β1·φ_m0 + β2·φ_m1 (:func:`mix_weights`).

Heads. A model with several output heads declares
    model.heads            tuple of head names
    model.default_head     one of them
    model.forward_heads(x) {name: logits} for every head
and ``model(x)`` returns the default head's logits, so every consumer that knows nothing of
heads keeps working.

A model declares a contract when the attribute (``modes`` / ``heads``) is a non-empty tuple; the
helpers here also look through rws's ``Normalized`` wrapper (what ``create_model`` and exports
return) to the network inside it, which is where an architecture declares them.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from rws.attacks.modes import module_modes, restore_modes

Mode = Union[str, float, tuple[float, float]]

# Layers whose train flag HeadSelection turns on for its stochastic passes (and nothing else).
DROPOUT_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


# ----- finding the declaring module ----------------------------------------------------------------
def _declaring(model: nn.Module, attribute: str) -> nn.Module | None:
    """``model`` if it declares ``attribute`` (a non-empty tuple), else the ``net`` inside a
    ``Normalized`` wrapper if that does, else None."""
    from rws.models.normalize import Normalized

    if getattr(model, attribute, ()):
        return model
    if isinstance(model, Normalized) and getattr(model.net, attribute, ()):
        return model.net
    return None


# ----- modes --------------------------------------------------------------------------------------
def has_modes(model: nn.Module) -> bool:
    return _declaring(model, "modes") is not None


def mode_names(model: nn.Module) -> tuple[str, ...]:
    """The model's mode names; () for a model without modes."""
    owner = _declaring(model, "modes")
    return tuple(owner.modes) if owner is not None else ()


def _mode_owner(model: nn.Module) -> nn.Module:
    owner = _declaring(model, "modes")
    if owner is None:
        raise ValueError(f"{type(model).__name__} declares no modes (it has no 'modes'); only models with "
                         f"mode-specific parameters (e.g. adapters) can switch modes")
    return owner


def get_mode(model: nn.Module) -> Mode:
    """The model's current mode."""
    return _mode_owner(model).mode


def check_mode_value(mode: Any, modes: tuple[str, ...], where: str = "mode") -> Mode:
    """``mode`` as a name in ``modes``, a float β or a (β1, β2) pair of floats; ValueError naming the
    valid modes otherwise. (Whether a model can *mix* is for its ``set_mode`` to say.)"""
    valid = f"a mode name ({', '.join(modes)}), a number beta or a pair [beta1, beta2]"
    if isinstance(mode, str):
        if mode not in modes:
            raise ValueError(f"{where}: unknown mode {mode!r}; valid modes: {', '.join(modes)} (or a number beta)")
        return mode
    if isinstance(mode, bool):
        raise ValueError(f"{where} must be {valid}, got {mode!r}")
    if isinstance(mode, (int, float)):
        return float(mode)
    if isinstance(mode, (tuple, list)) and len(mode) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in mode):
        return (float(mode[0]), float(mode[1]))
    raise ValueError(f"{where} must be {valid}, got {mode!r}")


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Switch ``model`` to ``mode`` in place; a clear error names the valid modes."""
    owner = _mode_owner(model)
    owner.set_mode(check_mode_value(mode, tuple(owner.modes)))


@contextmanager
def using_mode(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """Run a block (an attack, an evaluation) in ``mode``; the previous mode comes back afterwards,
    also on error."""
    owner = _mode_owner(model)
    previous = owner.mode
    set_mode(model, mode)
    try:
        yield model
    finally:
        owner.set_mode(previous)


def mix_weights(mode: Mode, modes: tuple[str, ...]) -> tuple[float, float]:
    """The weights (w0, w1) of the two modes' parameters for ``mode``: a name gives (1, 0) or (0, 1),
    β gives (β, 1 − β), a pair is taken as it is. For two-mode models' ``set_mode``/``forward``."""
    if len(modes) != 2:
        raise ValueError(f"mode mixing needs exactly two modes, the model has {len(modes)}: {', '.join(modes)}")
    mode = check_mode_value(mode, modes)
    if isinstance(mode, str):
        return (1.0, 0.0) if mode == modes[0] else (0.0, 1.0)
    if isinstance(mode, float):
        return (mode, 1.0 - mode)
    return mode


class ModeView(nn.Module):
    """``model`` fixed to one mode: every forward sets the mode and restores the previous one, so an
    attack through a ModeView finds its perturbation in that mode and the model's own mode is left
    as it was. A model with heads keeps them (``forward_heads`` also runs in the mode)."""

    def __init__(self, model: nn.Module, mode: Mode) -> None:
        super().__init__()
        self.selected_mode = check_mode_value(mode, mode_names(_mode_owner(model)))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with using_mode(self.model, self.selected_mode):
            return self.model(x)

    @property
    def heads(self) -> tuple[str, ...]:
        return head_names(self.model)

    @property
    def default_head(self) -> str:
        return default_head(self.model)

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with using_mode(self.model, self.selected_mode):
            return forward_heads(self.model, x)

    def extra_repr(self) -> str:
        return f"mode={self.selected_mode!r}"


# ----- heads --------------------------------------------------------------------------------------
def has_heads(model: nn.Module) -> bool:
    return _declaring(model, "heads") is not None


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The model's head names; () for a single-head model."""
    owner = _declaring(model, "heads")
    return tuple(owner.heads) if owner is not None else ()


def _head_owner(model: nn.Module) -> nn.Module:
    owner = _declaring(model, "heads")
    if owner is None:
        raise ValueError(f"{type(model).__name__} declares no heads (it has no 'heads'); only multi-head "
                         f"models (e.g. distillation students) can select a head")
    return owner


def default_head(model: nn.Module) -> str:
    return str(_head_owner(model).default_head)


def check_head(head: Any, heads: tuple[str, ...], where: str = "head") -> str:
    if not isinstance(head, str) or head not in heads:
        raise ValueError(f"{where}: unknown head {head!r}; valid heads: {', '.join(heads)}")
    return head


def forward_heads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{head: logits} for pixels ``x`` in [0, 1] (through a ``Normalized`` wrapper too)."""
    from rws.models.normalize import Normalized

    owner = _head_owner(model)
    if owner is model:
        return owner.forward_heads(x)
    assert isinstance(model, Normalized)
    return owner.forward_heads((x - model.mean) / model.std)  # the arithmetic of Normalized.forward


def head_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The shared features every head reads (pixels ``x`` in [0, 1]), for a model whose heads
    declare ``features`` / ``heads_from_features`` (multi-head students)."""
    from rws.models.normalize import Normalized

    owner = _head_owner(model)
    if owner is model:
        return owner.features(x)
    assert isinstance(model, Normalized)
    return owner.features((x - model.mean) / model.std)


class _PassesModes(nn.Module):
    """A wrapper around ``self.model`` that keeps the model's modes (a head choice of an adapter model)."""

    model: nn.Module

    @property
    def modes(self) -> tuple[str, ...]:
        return mode_names(self.model)

    @property
    def mode(self) -> Mode:
        return get_mode(self.model)

    def set_mode(self, mode: Mode) -> None:
        set_mode(self.model, mode)


class HeadView(_PassesModes):
    """``model`` answering with one head: ``forward(x) == forward_heads(model, x)[head]``."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.head = check_head(head, head_names(_head_owner(model)))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_heads(self.model, x)[self.head]

    def extra_repr(self) -> str:
        return f"head={self.head!r}"


# ----- head selection -------------------------------------------------------------------------------
# rule(probs, heads, **options) -> (B,) int64 index into ``heads``: which head answers each example.
# ``probs`` is (samples, heads, batch, classes) softmax probabilities of the stochastic passes.
SelectionRule = Callable[..., torch.Tensor]
_RULES: dict[str, SelectionRule] = {}


# calibrate(probs, heads, **options) -> options: fills a rule's data-dependent options (thresholds,
# reference scales) from the stochastic passes ``probs`` (S, H, N, C) over calibration examples.
Calibration = Callable[..., dict[str, Any]]
_CALIBRATIONS: dict[str, Calibration] = {}


def register_selection_rule(name: str, rule: SelectionRule, calibrate: Calibration | None = None) -> SelectionRule:
    """Add a head-selection rule under ``name`` (returns it), with an optional ``calibrate`` that
    sets its data-dependent options. A second rule under a taken name is an error."""
    if name in _RULES and _RULES[name] is not rule:
        raise ValueError(f"selection rule {name!r} is already registered ({_RULES[name].__module__})")
    _RULES[name] = rule
    if calibrate is not None:
        _CALIBRATIONS[name] = calibrate
    return rule


def rule_calibration(name: str) -> Calibration | None:
    """The rule's calibration function, None when it has no data-dependent options."""
    return _CALIBRATIONS.get(name)


def selection_rule_names() -> tuple[str, ...]:
    return tuple(_RULES)


def get_selection_rule(name: str) -> SelectionRule:
    if name not in _RULES:
        raise ValueError(f"unknown selection rule {name!r}; rules: {', '.join(_RULES)}")
    return _RULES[name]


def max_confidence(probs: torch.Tensor, heads: tuple[str, ...]) -> torch.Tensor:
    """The head whose mean (over samples) probability vector has the highest maximum; ties go to
    the head listed first."""
    return probs.mean(0).amax(-1).argmax(0)


def fixed(probs: torch.Tensor, heads: tuple[str, ...], head: str) -> torch.Tensor:
    """Always ``head``."""
    j = heads.index(check_head(head, heads, "select.head"))
    return torch.full((probs.shape[2],), j, dtype=torch.long, device=probs.device)


register_selection_rule("max_confidence", max_confidence)
register_selection_rule("fixed", fixed)


class HeadSelection(_PassesModes):
    """A multi-head model as one classifier: per example, a selection rule picks the head that answers.

    ``forward(x)`` runs ``samples`` passes of ``forward_heads``, gives the rule the heads'
    probabilities and returns **log of the chosen head's mean probabilities** (B, classes): its
    argmax is that head's prediction, and cross-entropy on it (what attacks maximize) is the
    negative log of the chosen head's mean probability.

    With ``samples > 1`` the passes are Monte-Carlo dropout: only dropout layers (``DROPOUT_LAYERS``)
    are switched to train during the forward (BN and everything else keep their flags), and every
    flag is restored afterwards. ``samples=1`` is one pass with the flags as they are. The passes
    draw from the global RNG (dropout cannot take a generator), so the forward forks it and seeds
    it with ``seed``: the same batch gives the same answer every call, and the caller's RNG stream
    is untouched.
    """

    def __init__(self, model: nn.Module, rule: str = "max_confidence", samples: int = 1, seed: int = 0,
                 share_trunk: bool = True, **rule_options: Any) -> None:
        super().__init__()
        self.candidate_heads = head_names(_head_owner(model))
        self.rule_name = str(rule)
        self.rule = get_selection_rule(self.rule_name)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"select.samples must be an integer >= 1, got {samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"select.seed must be an integer, got {seed!r}")
        try:
            inspect.signature(self.rule).bind(None, self.candidate_heads, **rule_options)
        except TypeError as e:
            params = [p for p in inspect.signature(self.rule).parameters][2:]
            raise ValueError(f"selection rule {self.rule_name!r} takes options {params or 'none'}, "
                             f"got {sorted(rule_options)}: {e}") from None
        if self.rule is fixed:
            check_head(rule_options["head"], self.candidate_heads, "select.head")
        self.samples, self.seed, self.rule_options = samples, seed, dict(rule_options)
        self.share_trunk = bool(share_trunk)
        self._recorded: list[torch.Tensor] | None = None
        self.model = model

    def head_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(samples, heads, batch, classes) softmax probabilities of the seeded passes."""
        devices = ([x.device.index if x.device.index is not None else torch.cuda.current_device()]
                   if x.device.type == "cuda" else [])
        flags = module_modes(self.model)
        owner = _head_owner(self.model)
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(self.seed)
            if devices:  # pragma: no cover - CUDA only (the CUDA generator of the input's device)
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(self.seed)
            try:
                if self.samples > 1:
                    # A model that names its MC-dropout layers (a student: the heads' dropout) gets
                    # only those switched on; otherwise every dropout layer.
                    layers = (owner.mc_dropout_layers() if hasattr(owner, "mc_dropout_layers")
                              else [m for m in self.model.modules() if isinstance(m, DROPOUT_LAYERS)])
                    for m in layers:
                        m.train()
                passes = []
                if self.trunk_once:
                    # The trunk has no active dropout: run it once and only the heads per sample.
                    # Same RNG draws in the same order as full passes, so the outputs are identical.
                    f = head_features(self.model, x)
                    for _ in range(self.samples):
                        logits = owner.heads_from_features(f, self.candidate_heads)
                        passes.append(torch.stack([logits[h].softmax(-1) for h in self.candidate_heads]))
                else:
                    for _ in range(self.samples):
                        logits = forward_heads(self.model, x)
                        passes.append(torch.stack([logits[h].softmax(-1) for h in self.candidate_heads]))
            finally:
                restore_modes(self.model, flags)
        return torch.stack(passes)

    @property
    def trunk_once(self) -> bool:
        """Whether the passes share one trunk forward (the model splits into features + heads)."""
        owner = _head_owner(self.model)
        return self.share_trunk and hasattr(owner, "features") and hasattr(owner, "heads_from_features")

    @torch.no_grad()
    def calibrate(self, batches: Any) -> dict[str, Any]:
        """Set the rule's data-dependent options from clean calibration ``batches`` of (x, y) (for
        ``mc_dropout_kl``: reference scales and thresholds). Returns the options it set."""
        fn = rule_calibration(self.rule_name)
        if fn is None:
            return {}
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        probs = [self.head_probabilities(x.to(device)) for x, _ in batches]
        if not probs:
            raise ValueError("head-selection calibration got no batches")
        update = fn(torch.cat(probs, dim=2), self.candidate_heads, **self.rule_options)
        self.rule_options.update(update)
        return update

    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log mean probabilities of the chosen head (B, classes), chosen head index (B,) into ``candidate_heads``)."""
        probs = self.head_probabilities(x)
        choice = self.rule(probs, self.candidate_heads, **self.rule_options)
        if self._recorded is not None:
            self._recorded.append(choice.detach().cpu())
        chosen = probs.mean(0)[choice, torch.arange(probs.shape[2], device=probs.device)]
        return chosen.clamp_min(torch.finfo(chosen.dtype).tiny).log(), choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choose(x)[0]

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.rule_options.items())
        return f"rule={self.rule_name!r}, samples={self.samples}, seed={self.seed}{opts}"


@contextmanager
def recording_choices(model: nn.Module) -> Iterator[list[torch.Tensor] | None]:
    """Inside the block, a ``HeadSelection`` appends the (B,) head index it chose for every batch to
    the yielded list (in forward order); any other model yields None."""
    if not isinstance(model, HeadSelection):
        yield None
        return
    previous, model._recorded = model._recorded, []
    try:
        yield model._recorded
    finally:
        model._recorded = previous
