"""Model interface shared by the whole zoo: :class:`FeatureLayout` and :class:`RankingModel`.

Every model maps a batch ``(categorical [B, n_id_columns] int64, dense [B, n_dense] float32)`` to logits ``[B]``;
``n_id_columns == n_cat`` unless the layout has multi-hot fields (``bag_sizes``).
Extra training losses (MoE sparsity regularisers, auxiliary towers) are exposed through
:meth:`RankingModel.auxiliary_loss`; parameter and FLOP counts are analytic.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureLayout:
    """Shape of one example's features.

    Args:
        cardinalities: vocabulary size per categorical field, *including* id 0, the OOV/unknown
            bucket; ids are int64 in ``[0, card)``.
        n_dense: number of dense (float) features, may be 0.
        bag_sizes: id columns per categorical field in ``categorical`` (a multi-hot field of ``max_len``
            ids occupies ``max_len`` consecutive columns, padded with 0); empty means 1 for every field.
            Layouts whose bags are all 1 are stored with ``bag_sizes=()``, so equal layouts compare equal.

    Each categorical field, single or multi-hot, is one embedding row (token) of the models: ``n_cat`` is
    the number of fields, ``n_id_columns`` the width of the ``categorical`` input.
    """

    cardinalities: tuple[int, ...] = ()
    n_dense: int = 0
    bag_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        cards = tuple(int(c) for c in self.cardinalities)
        object.__setattr__(self, "cardinalities", cards)
        if any(c < 1 for c in cards):
            raise ValueError(f"cardinalities must all be >= 1 (index 0 is the OOV bucket), got {cards}")
        if int(self.n_dense) < 0:
            raise ValueError(f"n_dense must be >= 0, got {self.n_dense}")
        object.__setattr__(self, "n_dense", int(self.n_dense))
        if not cards and self.n_dense == 0:
            raise ValueError("a FeatureLayout needs at least one categorical or dense field")
        try:
            bags = tuple(int(b) for b in self.bag_sizes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bag_sizes must be a sequence of ints, got {self.bag_sizes!r}") from err
        if bags and len(bags) != len(cards):
            raise ValueError(f"bag_sizes must give one size per categorical field ({len(cards)}), "
                             f"got {len(bags)}: {bags}")
        bad = [j for j, b in enumerate(bags) if b < 1]
        if bad:
            raise ValueError(f"bag_sizes must all be >= 1, got {bags[bad[0]]} for categorical field {bad[0]}")
        object.__setattr__(self, "bag_sizes", () if all(b == 1 for b in bags) else bags)

    @property
    def n_cat(self) -> int:
        return len(self.cardinalities)

    @property
    def bags(self) -> tuple[int, ...]:
        """Id columns per categorical field (1 for a single-valued field)."""
        return self.bag_sizes or (1,) * self.n_cat

    @property
    def n_id_columns(self) -> int:
        """Width of the ``categorical`` input: the sum of the bag sizes."""
        return sum(self.bags)

    @property
    def column_fields(self) -> tuple[int, ...]:
        """The categorical field of each id column, ``(n_id_columns,)``."""
        return tuple(f for f, b in enumerate(self.bags) for _ in range(b))

    @property
    def num_fields(self) -> int:
        """Categorical plus dense fields (each becomes one embedding row)."""
        return self.n_cat + self.n_dense


def check(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond``: the one way configs are validated."""
    if not cond:
        raise ValueError(msg)


def as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from err
    check(all(v > 0 for v in out), f"{name} must contain positive ints, got {value!r}")
    return out


_Init = TypeVar("_Init", bound=Callable[..., None])


def inherits_keywords(parent: type) -> Callable[[_Init], _Init]:
    """Decorate a subclass constructor ``__init__(self, layout, *, <keywords>, **kwargs)`` that passes ``kwargs``
    on to ``parent.__init__``: its signature becomes the parent's keywords (with the defaults the subclass
    restates) followed by its new ones. :func:`build_model` checks keywords and ``config()`` records them from
    that signature, so a subclass states only the keywords it adds or whose default it changes."""

    def decorate(init: _Init) -> _Init:
        inherited = inspect.signature(parent.__init__)
        own = {n: p for n, p in inspect.signature(init).parameters.items() if p.kind is p.KEYWORD_ONLY}
        params = [own.pop(n, p) for n, p in inherited.parameters.items()] + list(own.values())
        init.__signature__ = inherited.replace(parameters=params)  # type: ignore[attr-defined]
        return init

    return decorate


def check_ids(layout: FeatureLayout, categorical: Tensor) -> None:
    """Raise ``ValueError`` naming the first field whose id is outside ``[0, card)``.

    ``categorical`` [B, n_id_columns] int64. Reads the tensor on the host: call it on the data path (CPU
    batches), not inside a GPU forward.
    """
    cards = torch.tensor([layout.cardinalities[f] for f in layout.column_fields], dtype=torch.long)
    bad = (categorical < 0) | (categorical >= cards.to(categorical.device))
    if bool(bad.any()):
        column = int(bad.any(0).nonzero()[0, 0])
        field = layout.column_fields[column]
        where = f" (id column {column})" if layout.bag_sizes else ""
        raise ValueError(
            f"categorical id out of range in field {field}{where}: ids must be in "
            f"[0, {layout.cardinalities[field]}) (0 = OOV bucket)"
        )


class RankingModel(nn.Module):
    """Base class of every ranking model.

    Subclasses implement ``_forward(categorical, dense) -> logits [B]`` and ``_flops() -> int``,
    and call ``self._store_config(locals())`` first thing in ``__init__`` (after ``super().__init__``); a
    subclass of a model that adds keywords (:func:`inherits_keywords`) calls it again for its own.

    Training-only state that must survive checkpoints (temperature step, adaptive MoE lambda) lives in
    registered buffers of the subclass and only advances in ``self.training`` forwards.
    """

    name: ClassVar[str] = ""
    validate_ids: bool = True  # False: skip the id range check of CPU forwards (the data path already checked)

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        if not isinstance(layout, FeatureLayout):
            raise TypeError(f"layout must be a FeatureLayout, got {type(layout).__name__}")
        self.layout = layout
        self._hparams: dict[str, Any] = {}
        self._aux_loss: Tensor | None = None  # label-free auxiliary loss of the last training forward
        self._aux_logits: list[Tensor] = []  # auxiliary-tower logits of the last training forward
        self._aux_logit_weight: float = 0.0
        self._last_labels: Tensor | None = None

    # ----------------------------------------------------------------- config
    def _store_config(self, local_vars: dict[str, Any]) -> None:
        """Record the constructor keywords of ``type(self)`` found in ``local_vars`` (added to those recorded)."""
        sig = inspect.signature(type(self).__init__)
        self._hparams.update(
            {k: local_vars[k] for k in sig.parameters if k not in ("self", "layout") and k in local_vars}
        )

    def config(self) -> dict[str, Any]:
        """``{"name": registry name, "kwargs": constructor kwargs}``; with the layout it rebuilds the model."""
        kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._hparams.items()}
        return {"name": self.name, "kwargs": kwargs}

    def _init_linears(self, style: str) -> None:
        """``linear_init`` of the baselines: ``"torch"`` keeps PyTorch's default (Kaiming-uniform weights and
        biases); ``"xavier"`` gives every ``nn.Linear`` Xavier-normal weights and zero biases, as FuxiCTR's
        ``BaseModel.reset_parameters`` does (the BARS configurations were tuned with it)."""
        check(style in ("torch", "xavier"), f"linear_init must be 'torch' or 'xavier', got {style!r}")
        if style == "xavier":
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, nn.Linear):
                        nn.init.xavier_normal_(module.weight)
                        if module.bias is not None:
                            module.bias.zero_()

    def _zero_biases(self, *modules: nn.Module) -> None:
        """Zero the additive biases of ``modules`` (tokenizers, per-token FFNs): ``zero_bias_init=True``."""
        with torch.no_grad():
            for module in modules:
                for name, p in module.named_parameters():
                    if name.rsplit(".", 1)[-1] in ("bias", "b1", "b2"):
                        p.zero_()

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, categorical: Tensor, dense: Tensor | None) -> tuple[Tensor, Tensor]:
        lay = self.layout
        if categorical.dim() != 2 or categorical.shape[1] != lay.n_id_columns:
            bags = f" ({lay.n_cat} fields, bag sizes {lay.bag_sizes})" if lay.bag_sizes else ""
            raise ValueError(
                f"categorical must have shape [B, {lay.n_id_columns}]{bags}, got {tuple(categorical.shape)}"
            )
        if categorical.dtype.is_floating_point or categorical.dtype == torch.bool:
            raise ValueError(f"categorical must be an integer tensor, got {categorical.dtype}")
        categorical = categorical.long()
        b = categorical.shape[0]
        if dense is None:
            dense = categorical.new_zeros((b, 0), dtype=torch.float32)
        if dense.dim() != 2 or dense.shape != (b, lay.n_dense):
            raise ValueError(f"dense must have shape [{b}, {lay.n_dense}], got {tuple(dense.shape)}")
        # Range check only for CPU inputs in eager mode: there it costs no device sync. On an accelerator, or
        # under torch.compile, the data path checks ids (check_ids; the preprocessor maps unknowns to 0).
        if self.validate_ids and lay.n_cat and b and categorical.device.type == "cpu" and not torch.compiler.is_compiling():
            check_ids(lay, categorical)
        return categorical, dense.float()

    def forward(self, categorical: Tensor, dense: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """categorical [B, n_id_columns] int64, dense [B, n_dense] float -> logits [B].

        ``labels`` ([B], optional) is only needed by models with auxiliary towers (TokenMixer-Large);
        they can be passed here or to :meth:`auxiliary_loss`.
        """
        categorical, dense = self._check_inputs(categorical, dense)
        if self.training:
            self._aux_loss = None
            self._aux_logits = []
            self._last_labels = labels
        return self._forward(categorical, dense)

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # ---------------------------------------------------------- extra losses
    def auxiliary_loss(self, labels: Tensor | None = None) -> Tensor:
        """Scalar to add to the main BCE loss; reflects the last *training* forward (0 when none)."""
        dev = next(self.parameters()).device
        loss = torch.zeros((), device=dev)
        if self._aux_loss is not None:
            loss = loss + self._aux_loss
        if labels is None:
            labels = self._last_labels
        if self._aux_logits and labels is not None and self._aux_logit_weight > 0:
            y = labels.float().reshape(-1)
            for logit in self._aux_logits:
                loss = loss + self._aux_logit_weight * F.binary_cross_entropy_with_logits(logit, y)
        elif self._aux_logits:
            # no labels: keep the auxiliary towers in the graph with zero weight (DDP needs every
            # parameter to receive a gradient, even a zero one)
            loss = loss + 0.0 * sum(logit.sum() for logit in self._aux_logits)
        return loss

    # ------------------------------------------------------------------ counts
    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameter count; ``embeddings=False`` leaves out the embedding table (the non-embedding count
        that scaling laws are usually fitted against, since the table grows with the vocabulary, not the model)."""
        table = None if embeddings else self.embedding.table.weight
        return sum(p.numel() for p in self.parameters() if p is not table)

    def flops_per_example(self) -> int:
        """Analytic forward FLOPs per example of the inference (eval) forward; multiply-add = 2.

        Counts the matrix products (what ``FlopCounterMode`` counts); element-wise ops, norms and
        embedding lookups (with their multi-hot pooling) are not counted. Per-step work independent of the
        batch (e.g. composing UniMixing-Lite matrices) is excluded.
        """
        return int(self._flops())

    def _flops(self) -> int:  # pragma: no cover
        raise NotImplementedError

    def active_flops_per_example(self) -> int:
        """FLOPs per example of the active experts only (MoE models; ``flops_per_example`` otherwise): equal to
        ``flops_per_example`` when the MoE runs sparse, less when it runs the masked dense reference."""
        return self.flops_per_example()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layout={self.layout}"
