"""The contract every optimizer keeps: genomes in, losses out, exact resume.

An optimizer sees only genes and bounds, never models or recipes, so libraries can be swapped
without touching the search loop. Checkpoints rely on ``state``/``restore`` being exact: a resumed
run must ask the very genomes an uninterrupted one would, or a crash would change the result.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import math
import pickle
import sys
import threading
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from evomerge.errors import EvomergeError
from evomerge.genes import Gene

# 1: one pickle; 2: the payload pickled apart, behind the versions of the libraries it holds
_STATE_FORMAT = 2
# what unpickling bytes that are not (or no longer) a state raises
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    TypeError,
    ValueError,
)


class OptimizerError(EvomergeError, ValueError):
    """An optimizer was asked what it cannot do (bad option, foreign state, wrong batch)."""


def _module_attr(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


# A lock guards a live object, not its state: pickled as a fresh, released one. optuna 5.1's GA
# samplers (NSGA-II/III) hold a ``threading.Lock`` and define no ``__getstate__``.
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


class _StatePickler(pickle.Pickler):
    """Pickle that keeps references to module-level objects the libraries share with us, and
    reduces locks to fresh ones.

    numpy's global RandomState would otherwise be copied (cma stores ``np.random.randn``, a bound
    method of it): a restored cma would draw from a frozen private copy instead of the state we
    swap in. pymoo's ``@default_random_state`` functions lose their qualified name, so plain
    pickle cannot find them; they are named through the module attribute that holds them.
    """

    def reducer_override(self, obj: Any) -> Any:
        if obj is np.random.mtrand._rand:
            return _module_attr, ("numpy.random.mtrand", "_rand")
        if isinstance(obj, _LOCK_TYPES):
            return _new_lock, (isinstance(obj, _LOCK_TYPES[1]),)
        if isinstance(obj, types.FunctionType) and "<locals>" in obj.__qualname__:
            for cell in obj.__closure__ or ():
                try:
                    inner = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if not isinstance(inner, types.FunctionType) or "<locals>" in inner.__qualname__:
                    continue
                module = sys.modules.get(inner.__module__)
                if module is not None and getattr(module, inner.__name__, None) is obj:
                    return _module_attr, (inner.__module__, inner.__name__)
        return NotImplemented


def dumps_state(obj: Any) -> bytes:
    """Pickle optimizer state (see ``_StatePickler`` for why not plain ``pickle.dumps``)."""
    buf = io.BytesIO()
    _StatePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def check_genes(genes: Sequence[Gene]) -> tuple[Gene, ...]:
    """Reject gene sets no optimizer could search, before any library sees them."""
    genes = tuple(genes)
    if not genes:
        raise OptimizerError("an optimizer needs at least one gene")
    seen: set[str] = set()
    for gene in genes:
        if not isinstance(gene, Gene):
            raise OptimizerError(f"expected Gene objects, got {gene!r}")
        if gene.name in seen:
            raise OptimizerError(f"gene name {gene.name!r} appears twice; names must be unique")
        seen.add(gene.name)
        if gene.choices is not None and (
            isinstance(gene.choices, bool)
            or not isinstance(gene.choices, Integral)
            or gene.choices < 2
        ):
            raise OptimizerError(
                f"gene {gene.name!r}: choices must be an integer >= 2 (or None for a real gene), "
                f"got {gene.choices!r}"
            )
    return genes


def clip_genome(genes: Sequence[Gene], x: np.ndarray) -> np.ndarray:
    """Force a library's proposal into bounds: real genes clipped, integer genes rounded."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.shape != (len(genes),):
        raise OptimizerError(f"genome has {x.size} entries, expected {len(genes)}")
    if not np.all(np.isfinite(x)):
        raise OptimizerError(f"the optimizer proposed a non-finite genome {x.tolist()}")
    out = np.empty(len(genes), dtype=np.float64)
    for i, gene in enumerate(genes):
        if gene.choices is None:
            out[i] = min(max(float(x[i]), 0.0), 1.0)
        else:
            out[i] = min(max(float(np.round(x[i])), 0.0), float(gene.choices - 1))
    return out + 0.0  # no -0.0: genomes print and hash the same whatever the library did


def penalty(worst: np.ndarray) -> np.ndarray:
    """A loss worse than every finite loss seen so far, for libraries that need a number."""
    w = np.where(np.isnan(worst), 0.0, worst)
    return w + 1.0 + np.abs(w)


def update_worst(worst: np.ndarray, losses: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per objective, the largest finite loss seen so far (NaN while none)."""
    finite = [loss for loss in losses if loss is not None]
    if not finite:
        return worst
    return np.fmax(worst, np.max(np.stack(finite), axis=0))


def _equal(a: Any, b: Any) -> bool:
    """Equality for identity fields, tolerant of option values like arrays or sampler objects."""
    try:
        if bool(a == b):
            return True
    except (ValueError, TypeError):  # an array compares elementwise: its truth is ambiguous
        pass
    try:
        return pickle.dumps(a) == pickle.dumps(b)
    except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a lambda, a lock
        return False


# -- options -----------------------------------------------------------------------------------


def _integer(minimum: int, *, optional: bool = False) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
        return int(value)

    return check


def _positive_float(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return float(value)


# Option types: ints are not silently truncated from floats, bools are not numbers.
Count = Annotated[int, BeforeValidator(_integer(1))]  # >= 1
NonNegative = Annotated[int, BeforeValidator(_integer(0))]
Size = Annotated[int, BeforeValidator(_integer(2))]  # a population: >= 2
CountOrNone = Annotated[int | None, BeforeValidator(_integer(1, optional=True))]
SizeOrNone = Annotated[int | None, BeforeValidator(_integer(2, optional=True))]
Positive = Annotated[float, BeforeValidator(_positive_float)]  # finite, > 0


class OptimizerOptions(BaseModel):
    """An optimizer's options: one field each, with its default; unknown keys are refused.

    Validators see ``info.context`` = ``{"genes": ..., "n_objectives": ...}`` for options whose
    range depends on the problem.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _options_error(name: str, model: type[OptimizerOptions], e: ValidationError) -> str:
    """A pydantic error as one line naming the optimizer and the key."""
    errors = e.errors()
    unknown = sorted(str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden")
    if unknown:
        accepted = ", ".join(sorted(model.model_fields)) or "(none)"
        return (
            f"optimizer {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {accepted}"
        )
    err = errors[0]
    cause = err.get("ctx", {}).get("error")
    msg = str(cause) if cause is not None else err["msg"]
    where = f"option {err['loc'][0]!r} " if err["loc"] else ""
    return f"optimizer {name!r}: {where}{msg}"


# -- library versions --------------------------------------------------------------------------


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


class Optimizer(ABC):
    """Ask/tell black-box optimizer over a fixed list of genes; losses are minimized.

    Subclasses implement ``_setup``, ``_ask``, ``_tell``, ``_payload`` and ``_load``; this base
    class validates everything the caller hands in, so implementations only see clean input:
    ``_tell`` gets one float array per candidate, or ``None`` where it failed (``None`` or a
    non-finite loss was told).
    """

    name: ClassVar[str]
    multi_objective: ClassVar[bool]
    # the options and their defaults (subclass OptimizerOptions; validated at construction)
    Options: ClassVar[type[OptimizerOptions]] = OptimizerOptions
    # the distributions whose objects the state pickles (numpy always): a state is resumed only
    # under the versions it was written with
    libraries: ClassVar[tuple[str, ...]] = ()
    # asks one candidate at a time and takes its loss in any order (``ask_one``/``tell_one``:
    # ``workers.dispatch: async``); generational optimizers ask whole batches only
    asynchronous: ClassVar[bool] = False

    def __init__(
        self, genes: Sequence[Gene], n_objectives: int, *, seed: int = 0, **options: Any
    ) -> None:
        self.genes = check_genes(genes)
        if (
            isinstance(n_objectives, bool)
            or not isinstance(n_objectives, Integral)
            or n_objectives < 1
        ):
            raise OptimizerError(f"n_objectives must be an integer >= 1, got {n_objectives!r}")
        self.n_objectives = int(n_objectives)
        if not self.multi_objective and self.n_objectives != 1:
            raise OptimizerError(
                f"optimizer {self.name!r} is single-objective but got {self.n_objectives} "
                "objectives; scalarize them into one loss first (or use a multi-objective "
                "optimizer)"
            )
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise OptimizerError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        model = self.options_model()
        try:
            parsed = model.model_validate(
                options, context={"genes": self.genes, "n_objectives": self.n_objectives}
            )
        except ValidationError as e:
            raise OptimizerError(_options_error(self.name, model, e)) from None
        self.options: dict[str, Any] = self._option_values(parsed)
        self._pending: list[np.ndarray] | None = None
        # plain data the driving loop checkpoints with the state (and gets back on restore)
        self.annotations: dict[str, Any] = {}
        # asynchronous mode: ticket -> (genome, the library's handle), asked and not yet told
        self._tickets: dict[int, tuple[np.ndarray, Any]] = {}
        self._serial = 0  # the next ticket
        self._journal_len = 0  # journal records handed out by ``checkpoint``
        self._setup()

    # -- what subclasses provide -------------------------------------------------------------

    @classmethod
    def options_model(cls) -> type[OptimizerOptions]:
        """The pydantic model of the options (``Options`` unless built at run time)."""
        return cls.Options

    def _option_values(self, parsed: OptimizerOptions) -> dict[str, Any]:
        """The options as kept (and compared on restore): every field, defaults included."""
        return dict(parsed)

    @abstractmethod
    def _setup(self) -> None:
        """Build the library objects from genes, n_objectives, seed and options."""

    @abstractmethod
    def _ask(self) -> list[np.ndarray]:
        """Propose one batch (unclipped is fine; the base class clips)."""

    @abstractmethod
    def _tell(self, losses: list[np.ndarray | None]) -> None:
        """Report the losses of the batch ``_ask`` returned last, in order."""

    @abstractmethod
    def _payload(self) -> Any:
        """Everything (picklable) needed to continue exactly, RNG states included."""

    @abstractmethod
    def _load(self, payload: Any) -> None:
        """Inverse of ``_payload`` on a freshly constructed twin."""

    def _checkpoint_payload(self) -> tuple[Any, list[Any]] | None:
        """Optimizers with a journal: (the flat payload, the history records not handed out
        yet); None: ``checkpoint`` is ``state``."""
        return None

    def _load_journaled(self, payload: Any, records: list[Any]) -> None:
        """Inverse of the ``_checkpoint_payload`` calls so far, given all their records."""
        raise OptimizerError(f"optimizer {self.name!r} keeps no journal")

    def _ask_one(self) -> tuple[Any, np.ndarray]:
        """Asynchronous optimizers: one genome and a (picklable) handle ``_tell_one`` gets back."""
        raise OptimizerError(f"optimizer {self.name!r} does not ask one candidate at a time")

    def _tell_one(self, handle: Any, loss: np.ndarray | None) -> None:
        """Asynchronous optimizers: the loss of the genome asked with ``handle``, in any order."""
        raise OptimizerError(f"optimizer {self.name!r} does not ask one candidate at a time")

    # -- public interface --------------------------------------------------------------------

    def ask(self) -> list[np.ndarray]:
        """One batch of genomes to evaluate; tell their losses before asking again."""
        if self._tickets:
            raise OptimizerError(
                f"optimizer {self.name!r}: ask() while {len(self._tickets)} genome(s) asked one "
                "at a time are not told; tell_one() them first"
            )
        if self._pending is not None:
            raise OptimizerError(
                f"optimizer {self.name!r}: ask() called twice; tell() the losses of the "
                f"{len(self._pending)} pending genomes first"
            )
        batch = [clip_genome(self.genes, x) for x in self._ask()]
        if not batch:
            raise OptimizerError(f"optimizer {self.name!r} proposed an empty batch")
        self._pending = batch
        return [x.copy() for x in batch]

    def start_from(self, genomes: Sequence[np.ndarray]) -> int:
        """Before the first ask: propose these genomes first (e.g. a coarser stage's candidates,
        which the archive already holds). Returns how many will be asked; 0 where the optimizer
        cannot start from given genomes (it then starts afresh)."""
        if self._pending is not None or self._tickets:
            raise OptimizerError(f"optimizer {self.name!r}: start_from() while genomes are pending")
        if not genomes:
            return 0
        return self._seed([clip_genome(self.genes, g) for g in genomes])

    def _seed(self, genomes: list[np.ndarray]) -> int:
        return 0

    @property
    def pending(self) -> list[np.ndarray] | None:
        """The batch asked but not yet told (after ``restore`` too), else None."""
        return None if self._pending is None else [x.copy() for x in self._pending]

    def tell(
        self, genomes: Sequence[np.ndarray], losses: Sequence[Sequence[float] | float | None]
    ) -> None:
        """Report minimized losses for exactly the batch last asked; None marks a failure.

        A loss is one value per objective (a bare number is fine for one objective); a
        non-finite value anywhere counts as a failure, like None.
        """
        pending = self._pending
        if pending is None:
            raise OptimizerError(f"optimizer {self.name!r}: tell() without a pending ask()")
        if len(genomes) != len(pending):
            raise OptimizerError(
                f"optimizer {self.name!r}: told {len(genomes)} genomes but the batch asked has "
                f"{len(pending)}"
            )
        for i, (got, want) in enumerate(zip(genomes, pending, strict=True)):
            if not np.array_equal(np.asarray(got, dtype=np.float64), want):
                raise OptimizerError(
                    f"optimizer {self.name!r}: genome {i} told differs from the one asked; tell "
                    "exactly the batch last asked, in order"
                )
        self._tell(self._parse_losses(losses, len(pending)))
        self._pending = None

    def ask_one(self) -> tuple[int, np.ndarray]:
        """One genome and its ticket, for optimizers that are ``asynchronous``: ask again before
        telling, tell (``tell_one``) in any order."""
        if not self.asynchronous:
            raise OptimizerError(
                f"optimizer {self.name!r} asks whole batches (generations); it cannot ask one "
                "candidate at a time"
            )
        if self._pending is not None:
            raise OptimizerError(
                f"optimizer {self.name!r}: ask_one() while a batch is pending; tell() it first"
            )
        handle, x = self._ask_one()
        genome = clip_genome(self.genes, x)
        ticket, self._serial = self._serial, self._serial + 1
        self._tickets[ticket] = (genome, handle)
        return ticket, genome.copy()

    def tell_one(self, ticket: int, loss: Sequence[float] | float | None) -> None:
        """The minimized loss of the genome asked with ``ticket`` (None or non-finite: failed)."""
        if ticket not in self._tickets:
            raise OptimizerError(
                f"optimizer {self.name!r}: tell_one() of ticket {ticket!r}, which is not pending"
            )
        (parsed,) = self._parse_losses([loss], 1)
        self._tell_one(self._tickets[ticket][1], parsed)
        del self._tickets[ticket]

    @property
    def tickets(self) -> dict[int, np.ndarray]:
        """The genomes asked one at a time and not yet told (after ``restore`` too), by ticket."""
        return {t: g.copy() for t, (g, _) in self._tickets.items()}

    def state(self) -> bytes:
        """Opaque bytes from which ``restore`` continues exactly (trusted input: a pickle).

        The library objects are pickled apart from a plain header (identity, library versions,
        pending batch or tickets), so a state is checked before any of them is unpickled.
        """
        return self._header(dumps_state(self._payload()))

    def checkpoint(self) -> tuple[bytes, list[bytes]]:
        """(state, journal records): what a long run saves after each batch.

        Optimizers whose history grows with the run (the optuna studies) keep the state flat:
        the history goes out as records, each handed out once, for the caller to append to a
        journal; ``restore(state, journal)`` needs the journal's records up to this state.
        Others return ``(state(), [])``.
        """
        got = self._checkpoint_payload()
        if got is None:
            return self.state(), []
        payload, records = got
        self._journal_len += len(records)
        return self._header(dumps_state(payload), journal=self._journal_len), [
            dumps_state(r) for r in records
        ]

    @property
    def journal_length(self) -> int:
        """Journal records handed out by ``checkpoint`` (or restored) so far."""
        return self._journal_len

    def _header(self, payload: bytes, journal: int | None = None) -> bytes:
        pending = None if self._pending is None else [x.tolist() for x in self._pending]
        return pickle.dumps(
            {
                "format": _STATE_FORMAT,
                "identity": self._identity(),
                "versions": self.library_versions(),
                "pending": pending,
                "annotations": dict(self.annotations),
                "tickets": [(t, g.tolist(), h) for t, (g, h) in self._tickets.items()],
                "serial": self._serial,
                "payload": payload,
                "journal": journal,  # None: the payload is whole
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore(self, state: bytes, journal: Sequence[bytes] = ()) -> None:
        """Continue from ``state``; call on a fresh optimizer built with the same arguments.

        A state from another optimizer, gene list, objective count, seed or options is refused,
        since continuing it would silently run a different search; so is one written under other
        versions of the libraries it pickles.
        """
        data = self._unpickle(state)
        if (
            not isinstance(data, dict)
            or data.get("format") not in (1, _STATE_FORMAT)
            or not isinstance(data.get("identity"), dict)
        ):
            raise OptimizerError(f"optimizer {self.name!r}: not an optimizer state")
        theirs, ours = data["identity"], self._identity()
        diff = [k for k in ours if k not in theirs or not _equal(theirs[k], ours[k])]
        if diff:
            raise OptimizerError(
                f"optimizer {self.name!r}: the state belongs to a different optimizer "
                f"({', '.join(diff)} differ: state has "
                f"{', '.join(f'{k}={theirs.get(k)!r}' for k in diff)})"
            )
        payload = data["payload"]
        if data["format"] != 1:  # format 1 held the payload inline and no versions
            self._check_versions(data.get("versions") or {})
            payload = self._unpickle(payload)
        n = data.get("journal")
        if n is None:
            self._load(payload)
        else:
            if len(journal) < n:
                raise OptimizerError(
                    f"optimizer {self.name!r}: the checkpoint needs {n} journal records, the "
                    f"journal holds {len(journal)}"
                )
            self._load_journaled(payload, [self._unpickle(r) for r in journal[:n]])
            self._journal_len = n
        pending = data["pending"]
        self._pending = (
            None if pending is None else [np.asarray(x, dtype=np.float64) for x in pending]
        )
        self.annotations = dict(data.get("annotations") or {})
        self._tickets = {
            int(t): (np.asarray(g, dtype=np.float64), h) for t, g, h in data.get("tickets", ())
        }
        self._serial = int(data.get("serial", 0))

    @classmethod
    def library_versions(cls) -> dict[str, str | None]:
        """The installed versions of numpy and of this optimizer's ``libraries``."""
        return {lib: installed_version(lib) for lib in ("numpy", *cls.libraries)}

    def _check_versions(self, written: Mapping[str, str | None]) -> None:
        for lib, version in written.items():
            installed = installed_version(lib)
            if installed != version:
                raise OptimizerError(
                    f"optimizer {self.name!r}: the state was written with {lib} {version}, but "
                    f"{lib} {installed or '(none)'} is installed; a state only resumes under the "
                    f"versions it was written with: install {lib}=={version}, or start a new run"
                )

    def _unpickle(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except _UNPICKLE_ERRORS as exc:
            raise OptimizerError(f"optimizer {self.name!r}: unreadable state ({exc})") from exc

    # -- helpers -----------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {
            "optimizer": self.name,
            "genes": [(g.name, g.choices) for g in self.genes],
            "n_objectives": self.n_objectives,
            "seed": self.seed,
            "options": self.options,
        }

    def _parse_losses(
        self, losses: Sequence[Sequence[float] | float | None], n: int
    ) -> list[np.ndarray | None]:
        if isinstance(losses, (str, bytes)) or len(losses) != n:
            raise OptimizerError(
                f"optimizer {self.name!r}: expected {n} losses (one per genome), got {len(losses)}"
            )
        parsed: list[np.ndarray | None] = []
        for i, loss in enumerate(losses):
            if loss is None:
                parsed.append(None)
                continue
            try:
                arr = np.asarray(loss, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise OptimizerError(
                    f"optimizer {self.name!r}: loss {i} is not numeric: {loss!r}"
                ) from exc
            if arr.ndim == 0 and self.n_objectives == 1:
                arr = arr.reshape(1)
            if arr.shape != (self.n_objectives,):
                raise OptimizerError(
                    f"optimizer {self.name!r}: loss {i} has shape {arr.shape}, expected "
                    f"{self.n_objectives} value(s) (one per objective)"
                )
            parsed.append(arr.copy() if np.all(np.isfinite(arr)) else None)
        return parsed
