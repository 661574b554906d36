"""The merge methods lotavec knows, as a plain list (grep for ``name=``).

Each :class:`MethodSpec` states the method's formula, the paper it comes from, which peer
implementation it matches under each ``semantics`` and which parameters it reads. The kernels live
in :mod:`lotavec.merge.methods`; the parameters are validated by
:class:`lotavec.merge.config.MergeParams` against :data:`PARAMS` and the method's ``params``.

Notation: τᵢ is ticket i's delta (θᵢ − θ₀) on one tensor, wᵢ its weight, p the density, λ the
final scale, Tᵢ = trim_p(τᵢ) (the k = ⌊p·numel⌋ largest |τᵢ| of the *dense* tensor, so a ticket
with nnz ≤ k is left whole), Dᵢ = DARE(τᵢ) (Bernoulli(p) keep mask over the stored entries, then
rescaled), s the elected sign, Mᵢ = [sgn(·ᵢ) = s] (zeros never match).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MergeConfigError

TIES_PAPER = "https://arxiv.org/abs/2306.01708"
TASK_ARITHMETIC_PAPER = "https://arxiv.org/abs/2212.04089"
DARE_PAPER = "https://arxiv.org/abs/2311.03099"
LOTA_PAPER = "https://arxiv.org/abs/2406.16797"


@dataclass(frozen=True)
class ParamSpec:
    """One merge parameter: its :class:`MergeParams` field, CLI flag and mergekit YAML key.

    Attributes:
        name: field of :class:`~lotavec.merge.config.MergeParams`.
        flag: the CLI option that sets it (named in error messages).
        yaml_key: the key in a merge YAML (mergekit's vocabulary where mergekit has one).
        default: value used when not given (``None``: depends on method/semantics, see doc).
        doc: one line for help texts.
    """

    name: str
    flag: str
    yaml_key: str
    default: object
    doc: str


#: Every parameter a merge method may read.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("weights", "--weights", "weight", None,
              "per-ticket weights wᵢ, comma separated (default: 1 for every ticket)"),
    ParamSpec("density", "--density", "density", None,
              "fraction p in (0, 1] of each tensor's entries kept by the trim / DARE "
              "(one value, or one per ticket)"),
    ParamSpec("lambda_", "--lambda", "lambda", 1.0, "scale λ applied to the merged delta"),
    ParamSpec("scope", "--scope", "scope", "tensor",
              "trim threshold per tensor (PEFT, mergekit) or one global top-k per ticket "
              "(TIES paper, LoTA)"),
    ParamSpec("semantics", "--semantics", "semantics", "peft",
              "peer conventions where PEFT and mergekit differ: peft | mergekit"),
    ParamSpec("seed", "--seed", "seed", None,
              "seed of the DARE masks (drawn at random and recorded when not given)"),
    ParamSpec("majority_sign_method", "--majority-sign-method", "majority_sign_method",
              "total", "sign election: total|sum (signed mass) or frequency|count (votes)"),
    ParamSpec("normalize", "--normalize", "normalize", None,
              "mergekit: divide by the weight sum (default: true for ties, else false)"),
    ParamSpec("rescale", "--rescale", "rescale", None,
              "DARE rescale: inverse_p (PEFT, default there), l1 (mergekit, default there), none"),
)

PARAM_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class MethodSpec:
    """Declaration of one merge method.

    Attributes:
        name: the ``--method`` / ``merge_method`` value.
        formula: one line, in the notation of this module.
        paper: URL of the paper the method comes from (``None`` for lotavec's own).
        peers: for each ``semantics``, the peer function it matches (or how it differs);
            trimming methods also say which ``scope`` they use under ``"scope"``.
        params: names of the :data:`PARAMS` the method reads; others are refused.
        sparsify: ``"magnitude"`` (trim), ``"random"`` (DARE) or ``None``.
        consensus: whether a sign election precedes the disjoint mean.
        density_required: whether ``--density`` must be given.
        default_normalize: mergekit's default for ``normalize``.
    """

    name: str
    formula: str
    paper: str | None
    peers: dict[str, str]
    params: tuple[str, ...]
    sparsify: str | None = None
    consensus: bool = False
    density_required: bool = False
    default_normalize: bool = False


_LINEAR = ("weights", "lambda_", "semantics", "normalize")
_TRIM = ("density", "scope")
_ELECT = ("majority_sign_method",)
_DARE = ("density", "seed", "rescale")

#: The merge methods, in the order the CLI lists them. ``sum`` is the default.
METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="sum",
        formula="λ · Σᵢ wᵢ·τᵢ",
        paper=TASK_ARITHMETIC_PAPER,
        peers={"peft": "peft.utils.merge_utils.task_arithmetic",
               "mergekit": "merge_method: task_arithmetic (normalize: false; with normalize: "
                           "÷ Σᵢ wᵢ)"},
        params=_LINEAR,
    ),
    MethodSpec(
        name="disjoint",
        formula="λ · Σᵢ wᵢ·τᵢ, refusing tickets whose supports intersect (DisjointnessError)",
        paper=LOTA_PAPER,
        peers={"peft": "task_arithmetic, guarded", "mergekit": "task_arithmetic, guarded"},
        params=_LINEAR,
    ),
    MethodSpec(
        name="mean",
        formula="λ · Σᵢ wᵢ·τᵢ / Σ_{i stores the entry} wᵢ, per entry (|divisor| < 1e-8 → 1); "
                "an entry only one ticket stores keeps its τᵢ",
        paper=None,
        peers={"peft": "none (lotavec's own)", "mergekit": "none (lotavec's own)"},
        params=("weights", "lambda_", "semantics"),
    ),
    MethodSpec(
        name="ties",
        formula="peft: λ·Σᵢ wᵢTᵢMᵢ / max(ΣᵢMᵢ, 1), s elected on unweighted Tᵢ; "
                "mergekit: λ·Σᵢ wᵢTᵢMᵢ [/ Σᵢ wᵢMᵢ if normalize], s elected on wᵢTᵢ",
        paper=TIES_PAPER,
        peers={"peft": "peft.utils.merge_utils.ties",
               "mergekit": "merge_method: ties (normalize on by default: on disjoint tickets "
                           "the weights cancel, giving Σⱼ τⱼ; PEFT gives Σᵢ wᵢτᵢ)",
               "scope": "trim per tensor (PEFT, mergekit) or --scope global (TIES paper, LoTA)"},
        params=_LINEAR + _TRIM + _ELECT,
        sparsify="magnitude",
        consensus=True,
        default_normalize=True,
    ),
    MethodSpec(
        name="dare_linear",
        formula="λ · Σᵢ wᵢ·Dᵢ (Dᵢ = Bᵢ⊙τᵢ ÷ p, or × ‖τᵢ‖₁/‖Bᵢ⊙τᵢ‖₁ with rescale l1); "
                "Bᵢ from dare_keep_mask(seed, i, tensor)",
        paper=DARE_PAPER,
        peers={"peft": "peft.utils.merge_utils.dare_linear",
               "mergekit": "merge_method: dare_linear"},
        params=_LINEAR + _DARE,
        sparsify="random",
        density_required=True,
    ),
    MethodSpec(
        name="dare_ties",
        formula="TIES' election and disjoint mean applied to Dᵢ instead of Tᵢ",
        paper=DARE_PAPER,
        peers={"peft": "peft.utils.merge_utils.dare_ties",
               "mergekit": "merge_method: dare_ties"},
        params=_LINEAR + _DARE + _ELECT,
        sparsify="random",
        consensus=True,
        density_required=True,
    ),
    MethodSpec(
        name="magnitude_prune",
        formula="λ · Σᵢ wᵢ·Tᵢ",
        paper=TIES_PAPER,
        peers={"peft": "peft.utils.merge_utils.magnitude_prune",
               "mergekit": "no mergekit method; generalized task arithmetic with magnitude "
                           "sparsification and no consensus",
               "scope": "trim per tensor (PEFT) or --scope global (TIES paper, LoTA)"},
        params=_LINEAR + _TRIM,
        sparsify="magnitude",
        density_required=True,
    ),
)

METHOD_BY_NAME: dict[str, MethodSpec] = {m.name: m for m in METHODS}


def get_method(name: str) -> MethodSpec:
    """The declaration of merge method ``name``.

    Raises:
        MergeConfigError: unknown method (the message lists the known ones).
    """
    try:
        return METHOD_BY_NAME[name]
    except KeyError:
        raise MergeConfigError(
            f"--method: unknown merge method {name!r}; known: {', '.join(METHOD_BY_NAME)}"
        ) from None


def method_help(name: str | None = None) -> str:
    """Help text for one method, or all of them: formula, peers, paper (for ``--help``).

    Raises:
        MergeConfigError: unknown method.
    """
    specs = METHODS if name is None else (get_method(name),)
    blocks = []
    for m in specs:
        lines = [f"{m.name}: {m.formula}"]
        lines += [f"  {sem}: {peer}" for sem, peer in m.peers.items()]
        if m.paper:
            lines.append(f"  paper: {m.paper}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
