"""Merge parameters and merge configs: one model shared by the CLI and YAML files.

:class:`MergeParams` holds what the per-tensor kernels need (method, weights, density, λ...);
:class:`MergeConfig` adds what the engine needs (base model, tickets, output dtype). Both are
frozen and validated on construction; errors name the CLI flag (``--weights``...) and the YAML key.

A YAML merge config uses mergekit's vocabulary (see :func:`load_merge_config`); the CLI builds the
same object with :func:`merge_config_from_args`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..errors import MergeConfigError
from .registry import PARAM_BY_NAME, get_method

SEMANTICS = ("peft", "mergekit")
SCOPES = ("tensor", "global")
RESCALES = ("inverse_p", "l1", "none")
#: Sign-election spellings: PEFT's on the left, mergekit's on the right; both accepted.
SIGN_METHODS = {"total": "total", "sum": "total", "frequency": "frequency", "count": "frequency"}
_SEED_LIMIT = 2**63


def _flag(name: str) -> str:
    spec = PARAM_BY_NAME[name]
    return f"{spec.flag} (YAML `{spec.yaml_key}`)"


def _finite(value: object, name: str, what: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MergeConfigError(f"{_flag(name)}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise MergeConfigError(f"{_flag(name)}: {what} must be finite, got {value!r}")
    return out


def _density_value(value: object, where: str) -> float:
    p = _finite(value, "density", where)
    if not 0.0 < p <= 1.0:
        raise MergeConfigError(
            f"{_flag('density')}: {where} must be in (0, 1] (the fraction of each tensor's "
            f"entries kept), got {value!r}"
        )
    return p


@dataclass(frozen=True)
class MergeParams:
    """How tickets are combined, tensor by tensor (validated on construction).

    Attributes:
        method: a name from :data:`lotavec.merge.registry.METHODS` (default ``"sum"``).
        weights: one weight per ticket; ``None`` means 1 for every ticket.
        density: p in (0, 1] for trims and DARE: one float for all tickets or one per ticket.
        lambda_: final scale λ of the merged delta (YAML ``lambda``, CLI ``--lambda``).
        scope: ``"tensor"`` (trim per tensor, like PEFT and mergekit) or ``"global"`` (one top-k
            per ticket over all its tensors, like the TIES paper's code and LoTA).
        semantics: ``"peft"`` or ``"mergekit"`` conventions where the peers differ.
        seed: DARE seed; for DARE methods a random one is drawn and stored here when ``None``.
        majority_sign_method: ``"total"``/``"sum"`` or ``"frequency"``/``"count"``; stored
            canonically as ``"total"`` or ``"frequency"``. ``None`` means ``"total"``.
        normalize: mergekit's flag; ``None`` means the method's mergekit default. Refused under
            ``semantics="peft"`` (PEFT has no such switch).
        rescale: DARE rescale ``"inverse_p"``, ``"l1"`` or ``"none"``; ``None`` means
            ``inverse_p`` under PEFT semantics and ``l1`` under mergekit's.

    Raises:
        MergeConfigError: a value is invalid, or set for a method that does not read it; the
            message names the flag and YAML key.
    """

    method: str = "sum"
    weights: tuple[float, ...] | None = None
    density: float | tuple[float, ...] | None = None
    lambda_: float = 1.0
    scope: str = "tensor"
    semantics: str = "peft"
    seed: int | None = None
    majority_sign_method: str | None = None
    normalize: bool | None = None
    rescale: str | None = None

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        put = object.__setattr__
        if self.weights is not None:
            ws = tuple(_finite(w, "weights", f"weight #{i + 1}") for i, w in
                       enumerate(self._seq(self.weights, "weights")))
            if not ws:
                raise MergeConfigError(f"{_flag('weights')}: empty list of weights")
            put(self, "weights", ws)
        if self.density is not None:
            if isinstance(self.density, (int, float)):
                put(self, "density", _density_value(self.density, "density"))
            else:
                ds = tuple(_density_value(d, f"density #{i + 1}") for i, d in
                           enumerate(self._seq(self.density, "density")))
                if self.weights is not None and len(ds) != len(self.weights):
                    raise MergeConfigError(
                        f"{_flag('density')}: {len(ds)} per-ticket densities but "
                        f"{len(self.weights)} weights; give one of each per ticket")
                put(self, "density", ds)
        put(self, "lambda_", _finite(self.lambda_, "lambda_", "lambda"))
        self._choice("scope", SCOPES)
        self._choice("semantics", SEMANTICS)
        if self.majority_sign_method is not None:
            self._choice("majority_sign_method", tuple(SIGN_METHODS))
            put(self, "majority_sign_method", SIGN_METHODS[self.majority_sign_method])
        if self.rescale is not None:
            self._choice("rescale", RESCALES)
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise MergeConfigError(
                f"{_flag('normalize')}: must be true or false, got {self.normalize!r}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                    0 <= self.seed < _SEED_LIMIT):
                raise MergeConfigError(
                    f"{_flag('seed')}: must be an integer in [0, 2**63), got {self.seed!r}")
        self._check_applicable(spec)
        if spec.density_required and self.density is None:
            raise MergeConfigError(
                f"{_flag('density')}: method {self.method!r} needs a density p in (0, 1]; "
                f"e.g. --density 0.5")
        if spec.sparsify == "random" and self.seed is None:
            put(self, "seed", secrets.randbelow(_SEED_LIMIT))

    @staticmethod
    def _seq(value: object, name: str) -> tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise MergeConfigError(f"{_flag(name)}: expected a list of numbers, got {value!r}")
        return tuple(value)

    def _choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise MergeConfigError(
                f"{_flag(name)}: expected one of {', '.join(allowed)}; got {value!r}")

    def _check_applicable(self, spec) -> None:
        set_params = [n for n in ("density", "seed", "majority_sign_method", "normalize",
                                  "rescale") if getattr(self, n) is not None]
        if self.scope != "tensor":
            set_params.append("scope")
        for name in set_params:
            if name not in spec.params:
                users = [m for m in ("ties", "dare_linear", "dare_ties", "magnitude_prune")
                         if name in get_method(m).params]
                raise MergeConfigError(
                    f"{_flag(name)} has no effect with --method {spec.name}; it is read by: "
                    f"{', '.join(users)}. Remove it or choose one of those methods.")
        if self.normalize is not None and self.semantics == "peft":
            raise MergeConfigError(
                f"{_flag('normalize')} is a mergekit switch (PEFT has none; its ties always "
                f"divides by the count of agreeing tickets); add --semantics mergekit or drop it.")

    # --- resolved values ------------------------------------------------------------------

    def check_tickets(self, n: int) -> None:
        """Check that per-ticket lists match ``n`` tickets.

        Raises:
            MergeConfigError: ``weights`` or per-ticket ``density`` has another length.
        """
        if n < 1:
            raise MergeConfigError("a merge needs at least one ticket")
        if self.weights is not None and len(self.weights) != n:
            raise MergeConfigError(
                f"{_flag('weights')}: {len(self.weights)} weights for {n} tickets; give one "
                f"weight per ticket, in the order the tickets are listed")
        if isinstance(self.density, tuple) and len(self.density) != n:
            raise MergeConfigError(
                f"{_flag('density')}: {len(self.density)} per-ticket densities for {n} "
                f"tickets; give one value, or one per ticket")

    def weight_of(self, i: int) -> float:
        """Weight wᵢ of ticket ``i`` (1 when no weights were given)."""
        return 1.0 if self.weights is None else self.weights[i]

    def density_of(self, i: int) -> float:
        """Density pᵢ of ticket ``i`` (1, i.e. keep everything, when not given)."""
        if self.density is None:
            return 1.0
        return self.density[i] if isinstance(self.density, tuple) else self.density

    @property
    def sign_method(self) -> str:
        """Canonical sign-election method: ``"total"`` or ``"frequency"``."""
        return self.majority_sign_method or "total"

    @property
    def resolved_normalize(self) -> bool:
        """Whether mergekit's divide-by-weight-sum applies (always False under PEFT)."""
        if self.semantics == "peft":
            return False
        if self.normalize is not None:
            return self.normalize
        return get_method(self.method).default_normalize

    @property
    def resolved_rescale(self) -> str:
        """The DARE rescale in effect: ``"inverse_p"``, ``"l1"`` or ``"none"``."""
        if self.rescale is not None:
            return self.rescale
        return "inverse_p" if self.semantics == "peft" else "l1"

    def to_json(self) -> dict:
        """A JSON-able dict of the parameters as given plus the resolved ones (for records)."""
        out = asdict(self)
        out["lambda"] = out.pop("lambda_")
        for key in ("weights", "density"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        out["resolved"] = {"sign_method": self.sign_method,
                           "normalize": self.resolved_normalize,
                           "rescale": self.resolved_rescale}
        return out


@dataclass(frozen=True)
class MergeConfig:
    """A whole merge: base model, tickets (in order), parameters, output dtype.

    Attributes:
        base: local path or Hub id (``org/name[@rev]``) of the base model.
        tickets: ticket paths or Hub ids, in the order the weights refer to.
        params: the :class:`MergeParams`.
        dtype: output dtype name (``bfloat16``, ``float16``, ``float32``) or ``None`` for the
            base's own.
        notes: things accepted but ignored or reinterpreted (e.g. mergekit's ``int8_mask``),
            for the CLI to show and the model card to record.
        source: the YAML file the config came from, if any.
    """

    base: str
    tickets: tuple[str, ...]
    params: MergeParams = field(default_factory=MergeParams)
    dtype: str | None = None
    notes: tuple[str, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, str) or not self.base:
            raise MergeConfigError(f"base model (YAML `base_model`): expected a path or Hub id, "
                                   f"got {self.base!r}")
        tickets = tuple(self.tickets)
        for t in tickets:
            if not isinstance(t, str) or not t:
                raise MergeConfigError(f"ticket (YAML `models[].model`): expected a path or Hub "
                                       f"id, got {t!r}")
        object.__setattr__(self, "tickets", tickets)
        self.params.check_tickets(len(tickets))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise MergeConfigError(
                f"--dtype (YAML `dtype`/`out_dtype`): expected one of {', '.join(DTYPES)}; "
                f"got {self.dtype!r}")
        if self.dtype is not None:
            object.__setattr__(self, "dtype", DTYPES[self.dtype])

    def to_json(self) -> dict:
        """A JSON-able dict (for the output's model card and merge record)."""
        return {"base": self.base, "tickets": list(self.tickets),
                "params": self.params.to_json(), "dtype": self.dtype,
                "notes": list(self.notes), "source": self.source}


#: Accepted output dtype spellings → canonical torch-style name.
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


# --- YAML (mergekit vocabulary) -----------------------------------------------------------

#: mergekit method names → lotavec's (with ``normalize`` forced for ``linear``).
MERGEKIT_METHODS = {"task_arithmetic": "sum", "linear": "sum", "ties": "ties",
                    "dare_linear": "dare_linear", "dare_ties": "dare_ties"}
_TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype")
_TOP_NOTED = {
    "tokenizer_source": "lotavec copies the base model's tokenizer files",
    "tokenizer": "lotavec copies the base model's tokenizer files",
    "chat_template": "lotavec copies the base model's chat template",
    "name": "the output name is the output folder",
}
#: Global ``parameters`` keys → MergeParams field (weight/density act as per-ticket defaults).
_GLOBAL_KEYS = {"weight": "weights", "density": "density", "lambda": "lambda_",
                "normalize": "normalize", "rescale": "rescale", "seed": "seed", "scope": "scope",
                "semantics": "semantics", "majority_sign_method": "majority_sign_method"}
_GLOBAL_NOTED = {"int8_mask": "lotavec keeps sign masks as booleans; int8_mask changes nothing"}
_MODEL_KEYS = ("weight", "density")


def _scalar(value: object, where: str) -> object:
    if isinstance(value, (list, dict)):
        raise MergeConfigError(
            f"{where}: lotavec takes one value per ticket; mergekit's per-layer gradients and "
            f"`filter` lists are not supported (got {value!r})")
    return value


def _mapping(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MergeConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _parse_models(models: object, base: str, notes: list[str]) -> tuple[list[str], list[dict]]:
    if not isinstance(models, list) or not models:
        raise MergeConfigError("`models`: expected a non-empty list of `- model: TICKET` entries")
    tickets, per_ticket = [], []
    for i, entry in enumerate(models):
        where = f"`models[{i}]`"
        if isinstance(entry, str):
            entry = {"model": entry}
        entry = _mapping(entry, where)
        for key in entry:
            if key not in ("model", "parameters"):
                raise MergeConfigError(f"{where}: unknown key {key!r}; allowed: model, parameters")
        model = entry.get("model")
        if not isinstance(model, str) or not model:
            raise MergeConfigError(f"{where}.model: expected a ticket path or Hub id, got {model!r}")
        if model == base:
            notes.append(f"{where} is the base model; skipped (lotavec merges tickets into it)")
            continue
        params = _mapping(entry.get("parameters"), f"{where}.parameters")
        for key, value in params.items():
            if key not in _MODEL_KEYS:
                raise MergeConfigError(f"{where}.parameters: unknown key {key!r}; per-ticket keys "
                                       f"are {', '.join(_MODEL_KEYS)}")
            _scalar(value, f"{where}.parameters.{key}")
        tickets.append(model)
        per_ticket.append(params)
    if not tickets:
        raise MergeConfigError("`models`: no ticket besides the base model")
    return tickets, per_ticket


def _per_ticket(key: str, per_ticket: list[dict], default: object) -> object:
    """One value for all tickets, a tuple when they differ, None when nowhere given."""
    if default is None and not any(key in p for p in per_ticket):
        return None
    fill = 1.0 if default is None else default
    values = tuple(p.get(key, fill) for p in per_ticket)
    return values[0] if key == "density" and len(set(values)) == 1 else values


def parse_merge_config(data: object, *, source: str | None = None) -> MergeConfig:
    """Build a :class:`MergeConfig` from a parsed YAML document in mergekit's vocabulary.

    Keys: ``merge_method`` (``sum``, ``disjoint``, ``mean``, ``ties``, ``dare_linear``,
    ``dare_ties``, ``magnitude_prune``, or mergekit's ``task_arithmetic``/``linear``),
    ``base_model``, ``models`` (``- model: TICKET`` with ``parameters: {weight, density}``),
    ``parameters`` (``weight``/``density`` defaults, ``lambda``, ``normalize``, ``rescale``,
    ``int8_mask``, and lotavec's ``seed``, ``scope``, ``semantics``, ``majority_sign_method``),
    ``dtype``/``out_dtype`` (the output dtype; lotavec always computes in float32).
    A YAML config defaults to ``semantics: mergekit``. Keys mergekit uses for things lotavec
    does differently are accepted and listed in ``notes``; parameters the chosen method does not
    read are dropped with a note, as mergekit ignores them.

    Raises:
        MergeConfigError: unknown key (named), unsupported method, invalid value.
    """
    doc = _mapping(data, source or "merge config")
    notes: list[str] = []
    for key in doc:
        if key in _TOP_NOTED:
            notes.append(f"`{key}` ignored: {_TOP_NOTED[key]}")
        elif key not in _TOP_KEYS:
            raise MergeConfigError(f"{source or 'merge config'}: unknown key {key!r}; lotavec "
                                   f"reads {', '.join(_TOP_KEYS)}")
    method = doc.get("merge_method", "sum")
    kwargs: dict = {"method": MERGEKIT_METHODS.get(method, method), "semantics": "mergekit"}
    if method == "linear":
        kwargs["normalize"] = True
        notes.append("mergekit `linear` = θ₀ + Σᵢ wᵢτᵢ / Σᵢ wᵢ: merged as `sum` with normalize")
    spec = get_method(kwargs["method"])
    base = doc.get("base_model")
    if not isinstance(base, str) or not base:
        raise MergeConfigError("`base_model`: required; the base model the tickets were made for")
    tickets, per_ticket = _parse_models(doc.get("models"), base, notes)
    glob = _mapping(doc.get("parameters"), "`parameters`")
    for key, value in glob.items():
        if key in _GLOBAL_NOTED:
            notes.append(f"`parameters.{key}` ignored: {_GLOBAL_NOTED[key]}")
        elif key not in _GLOBAL_KEYS:
            raise MergeConfigError(f"`parameters`: unknown key {key!r}; known: "
                                   f"{', '.join([*_GLOBAL_KEYS, *_GLOBAL_NOTED])}")
        else:
            kwargs[_GLOBAL_KEYS[key]] = _scalar(value, f"`parameters.{key}`")
    kwargs["weights"] = _per_ticket("weight", per_ticket, kwargs.get("weights"))
    kwargs["density"] = _per_ticket("density", per_ticket, kwargs.get("density"))
    if isinstance(kwargs.get("rescale"), bool):  # mergekit's boolean: on = the semantics' own
        kwargs["rescale"] = None if kwargs["rescale"] else "none"
    for name in ("density", "seed", "normalize", "rescale", "majority_sign_method", "scope"):
        if kwargs.get(name) is not None and name not in spec.params:
            notes.append(f"`{PARAM_BY_NAME[name].yaml_key}` is not read by {spec.name}; ignored")
            kwargs.pop(name)
    if kwargs.get("normalize") is not None and kwargs.get("semantics") == "peft":
        notes.append("`normalize` ignored under semantics peft (PEFT's ties divides by a count)")
        kwargs.pop("normalize")
    dtype = doc.get("out_dtype", doc.get("dtype"))
    if doc.get("dtype") is not None:
        notes.append("lotavec computes in float32; `dtype` sets the output dtype"
                     + (" (overridden by `out_dtype`)" if "out_dtype" in doc else ""))
    return MergeConfig(base=base, tickets=tuple(tickets), params=MergeParams(**kwargs),
                       dtype=dtype, notes=tuple(notes), source=source)


def load_merge_config(path: str) -> MergeConfig:
    """Read and parse a YAML merge config (see :func:`parse_merge_config`).

    Raises:
        NotFoundError: the file does not exist.
        MergeConfigError: invalid YAML or config.
    """
    import yaml

    from ..errors import NotFoundError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise NotFoundError(f"--config: merge config {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise MergeConfigError(f"--config: {path!r} is not valid YAML: {e}") from None
    return parse_merge_config(data, source=str(path))


def _number_list(text: object, name: str) -> object:
    if not isinstance(text, str):
        return text
    parts = [t.strip() for t in text.split(",")]
    try:
        values = tuple(float(t) for t in parts)
    except ValueError:
        raise MergeConfigError(f"{_flag(name)}: expected comma-separated numbers like "
                               f"0.7,0.3; got {text!r}") from None
    return values[0] if name == "density" and len(values) == 1 else values


def merge_config_from_args(base: str, tickets: Sequence[str], *, method: str = "sum",
                           weights: str | Sequence[float] | None = None,
                           density: str | float | Sequence[float] | None = None,
                           lambda_: float = 1.0, scope: str = "tensor", semantics: str = "peft",
                           seed: int | None = None, majority_sign_method: str | None = None,
                           normalize: bool | None = None, rescale: str | None = None,
                           dtype: str | None = None) -> MergeConfig:
    """Build a :class:`MergeConfig` from CLI-style arguments (strings as typed on the CLI).

    ``weights="0.7,0.3"`` and ``density="0.5"`` or ``"0.5,0.2"`` (per ticket) are parsed here,
    so the CLI and YAML share one model. The CLI defaults to ``semantics="peft"``.

    Raises:
        MergeConfigError: invalid value; the message names the flag.
    """
    params = MergeParams(method=method, weights=_number_list(weights, "weights"),
                         density=_number_list(density, "density"), lambda_=lambda_, scope=scope,
                         semantics=semantics, seed=seed,
                         majority_sign_method=majority_sign_method, normalize=normalize,
                         rescale=rescale)
    return MergeConfig(base=base, tickets=tuple(tickets), params=params, dtype=dtype)
