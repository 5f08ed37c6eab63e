"""Typed configuration: ``params.yaml`` sections, environment overrides, one-sentence errors.

Precedence, highest first: command-line flags, environment variables (a ``.env`` file in the
working directory is loaded into the environment by the CLI, never overriding what is already
set), ``params.yaml``, then the defaults below. Environment overrides are named
``CHARLIE_<SECTION>__<KEY>``, for example ``CHARLIE_PARSE__STRICT=true``; the seed's names
(``TRAIN_START_DATE``, ``TRAIN_END_DATE``, ``TEST_START_DATE``, ``TEST_END_DATE``) work too, and
the ``CHARLIE_`` form wins when both are set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from charlie.errors import CharlieError, ConfigError, did_you_mean
from charlie.prices.registry import PROVIDERS

ENV_PREFIX = "CHARLIE_"
ENV_NESTING = "__"
DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=Section)


class SampleParams(Section):
    """``charlie sample``: the synthetic corpus (theses XML + prices). See charlie.sample."""

    out_dir: Path = Field(Path("data/samples"), description="Writes xml/ and prices/ here.")
    seed: int = Field(7, description="Everything generated follows from this seed.")
    tickers: int = Field(
        6, ge=1, description="How many tickers (fictional names; past 20, ACME2, BOLT2, ...)."
    )
    start: dt.date = Field(dt.date(2023, 10, 24), description="First thesis date.")
    end: dt.date = Field(dt.date(2025, 4, 24), description="Last thesis date.")
    detail: Literal["compact", "full"] = Field(
        "compact", description="Reasoning per thesis: compact ≈ 0.5 kB, full ≈ 2.2 kB."
    )
    ipo_ticker: bool = Field(
        True, description="List the last ticker mid-period, so early theses lack history."
    )
    edge_bps: float = Field(
        20.0, ge=0, le=100, description="Next-day drift per unit of the rule's position."
    )
    label_noise: float = Field(
        0.1, ge=0, le=1, description="Share of theses whose action is moved one notch."
    )
    dirty_rate: float = Field(
        0.02, ge=0, le=0.5, description="Share of theses with a defect the parser must reject."
    )

    @model_validator(mode="after")
    def _dates_ordered(self) -> SampleParams:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class ParseParams(Section):
    """``charlie parse``: XML theses to JSONL records."""

    input_dir: str = Field(
        "data/samples/xml",
        description="Reads every *.xml here: a local directory or an s3://bucket/prefix/; with "
        "dvc_repo, the DVC-tracked path inside that repository.",
        json_schema_extra={"metavar": "PATH|s3://BUCKET/PREFIX/"},
    )
    dvc_repo: str = Field(
        "",
        description="A git repository (URL or path) whose DVC-tracked input_dir to `dvc get`; "
        "empty: off.",
        json_schema_extra={"metavar": "URL"},
    )
    dvc_rev: str = Field(
        "",
        description="The dvc_repo revision (branch, tag or commit); empty: its default branch.",
        json_schema_extra={"metavar": "REV"},
    )
    out: Path = Field(Path("data/jsonl/records.jsonl"), description="The records JSONL to write.")
    rejects: Path = Field(
        Path("data/jsonl/rejects.jsonl"), description="The rejects JSONL to write."
    )
    report: Path = Field(
        Path("data/jsonl/parse_report.json"),
        description="The accounting report JSON (a DVC metric).",
    )
    strict: bool = Field(False, description="Exit 1 when any thesis or file was rejected.")

    @field_validator("input_dir")
    @classmethod
    def _location(cls, value: str) -> str:
        return _location(value, "input_dir")

    @model_validator(mode="after")
    def _dvc(self) -> ParseParams:
        if self.dvc_repo and "://" in self.input_dir:
            raise ValueError(
                f"with dvc_repo, input_dir is a path inside that repository, not {self.input_dir}"
            )
        if self.dvc_rev and not self.dvc_repo:
            raise ValueError(f"dvc_rev ({self.dvc_rev}) needs dvc_repo, the repository to read")
        return self


def _location(value: str, key: str) -> str:
    """A local path (normalised as a Path would be) or an s3:// URI (kept as written)."""
    value = str(value).strip()
    if not value:
        raise ValueError(f"{key} is empty")
    if "://" in value:
        if not value.startswith("s3://") or len(value) == len("s3://"):
            raise ValueError("a URI must be s3://bucket/prefix/ (the only remote kind)")
        return value
    return str(Path(value))


class EodhdParams(Section):
    """The eodhd.com client. The key comes from ``EODHD_API_KEY``, never from a file."""

    base_url: str = Field("https://eodhd.com", description="API root (a stand-in in tests).")
    exchange: str = Field("US", description="Exchange suffix: ACME -> ACME.US.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, le=10, description="Retries on 429, 5xx and timeouts.")
    backoff_s: float = Field(0.5, ge=0, description="First backoff; doubles, with jitter.")


class YFinanceParams(Section):
    """The yfinance fallback."""

    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout.")


class PricesParams(Section):
    """Where daily prices come from: providers tried in order, network ones cached."""

    providers: list[str] = Field(
        ["file"],
        min_length=1,
        description=f"Tried in order, from {', '.join(PROVIDERS)}; the seed's is eodhd,yfinance.",
    )
    file_dir: str = Field(
        "data/samples/prices",
        description="The file provider's directory: local, or an s3://bucket/prefix/ "
        "downloaded once per version under cache_dir/file/s3/.",
        json_schema_extra={"metavar": "PATH|s3://BUCKET/PREFIX/"},
    )
    cache_dir: Path = Field(
        Path("data/price_cache"),
        description="Parquet cache per provider and ticker, consulted before any network call "
        "(a persistent volume on Kubeflow).",
    )
    history_days: int = Field(
        400, ge=0, description="Calendar days of bars before a ticker's first record."
    )
    forward_days: int = Field(
        60, ge=0, description="Calendar days of bars after its last record (forward returns)."
    )
    calendar: str = Field(
        "auto",
        description="The exchange's trading calendar (an exchange_calendars name: XNYS, XLON, "
        "XTKS, ...) that embargo and purge windows count sessions on; auto: the one "
        "eodhd.exchange trades on (US: XNYS).",
    )
    eodhd: EodhdParams = EodhdParams()
    yfinance: YFinanceParams = YFinanceParams()

    @field_validator("file_dir")
    @classmethod
    def _file_dir(cls, value: str) -> str:
        return _location(value, "file_dir")

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _local_cache(cls, value: Any) -> Any:
        if "://" in str(value):
            raise ValueError("the cache must be a local directory (a mounted volume), not a URI")
        return value

    @field_validator("providers")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in PROVIDERS:
                raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")
        return names


PRICE_FLAGS = {"price_providers": "providers", "price_dir": "file_dir",
               "price_cache_dir": "cache_dir"}  # fmt: skip
"""The ``prices`` settings a Kubeflow run changes, as flags of the stages that read prices."""


class DatasetParams(Section):
    """``charlie dataset``: chronological splits of snapshot prompts and thesis completions."""

    records: Path = Field(
        Path("data/jsonl/records.jsonl"), description="The records JSONL (`charlie parse`)."
    )
    out: Path = Field(
        Path("data/hf_datasets/sft_dataset"),
        description="The SFT DatasetDict directory (`charlie dataset` writes it).",
    )
    card: Path = Field(
        Path("data/hf_datasets/dataset_card.json"),
        description="The dataset card JSON; its .md beside it.",
    )
    train_start: dt.date = Field(
        dt.date(2023, 10, 24), json_schema_extra={"env": "TRAIN_START_DATE"}
    )
    train_end: dt.date = Field(dt.date(2024, 12, 31), json_schema_extra={"env": "TRAIN_END_DATE"})
    validation_days: int | Literal["auto"] = Field(
        "auto",
        description="The last N calendar days of the training period validate, or auto: the "
        "last 2 x (longest forward window + embargo_days) trading days, so that as many "
        "validation sessions survive the purge and embargo before the test period.",
    )
    test_start: dt.date = Field(dt.date(2025, 1, 1), json_schema_extra={"env": "TEST_START_DATE"})
    test_end: dt.date | None = Field(
        dt.date(2025, 4, 24), json_schema_extra={"env": "TEST_END_DATE"}
    )
    embargo_days: int = Field(
        0, ge=0, description="Drop records this many trading days before each later split."
    )
    max_no_history_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Fail when more than this share of prompts have no price bar on or "
        'before their date ("No price history"): the prices do not cover the theses.',
    )
    outside_splits: Literal["error", "drop"] = Field(
        "error", description="Records dated outside every split: stop, or drop and count."
    )

    @field_validator("validation_days", mode="before")
    @classmethod
    def _auto_or_days(cls, value: object) -> object:
        return auto_or_count(value, "validation_days", "days")

    @model_validator(mode="after")
    def _ordered(self) -> DatasetParams:
        if self.train_end >= self.test_start:
            raise ValueError(
                f"train_end ({self.train_end}) must be before test_start ({self.test_start})"
            )
        if self.train_start > self.train_end:
            raise ValueError(f"train_start ({self.train_start}) is after train_end")
        if self.test_end is not None and self.test_end < self.test_start:
            raise ValueError(f"test_end ({self.test_end}) is before test_start")
        return self


class InitModelParams(Section):
    """``charlie init-model``: the tiny local base model and tokenizer for CPU runs."""

    dataset: Path = Field(
        Path("data/hf_datasets/sft_dataset"),
        description="The DatasetDict whose train split to learn from.",
    )
    out: Path = Field(Path("models/tiny"), description="The output directory (save_pretrained).")
    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary (upper bound).")
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(352, ge=16)
    max_positions: int = Field(1024, ge=64)
    seed: int = 0


class TrainParams(Section):
    """``charlie tokenize`` and ``charlie train``: which training config the pipeline runs.

    ``dataset_dir`` and ``output_dir`` replace the config's (unless null): they are the
    pipeline's paths (dvc.yaml reads them), so switching ``config`` alone keeps it whole.
    """

    config: Path = Field(
        Path("configs/sft_tiny_lora_cpu.yaml"),
        description="The training config (a configs/sft_*.yaml file).",
    )
    dataset_dir: Path | None = Field(
        Path("data/hf_datasets/tokenized"),
        description="The tokenized DatasetDict; replaces the config's dataset_dir (null: keep it).",
    )
    output_dir: Path | None = Field(
        Path("checkpoints/sft"),
        description="The training run's output; replaces the config's output_dir (null: keep it).",
    )
    num_shards: int = Field(1, ge=1, description="Shards per split of the tokenized dataset.")
    num_proc: int = Field(2, ge=1, description="Processes for tokenization.")
    # Hyperparameters as DVC params (`dvc exp run -S train.learning_rate=1e-3`): each replaces
    # the config's key when set; null keeps the config's value.
    learning_rate: float | None = Field(None, gt=0, description="Replaces the config's.")
    num_train_epochs: float | None = Field(None, gt=0, description="Replaces the config's.")
    lora_r: int | None = Field(None, ge=1, description="Replaces the config's.")
    lora_alpha: int | None = Field(None, ge=1, description="Replaces the config's.")
    max_length: int | Literal["auto"] | None = Field(None, description="Replaces the config's.")
    seed: int | None = Field(None, ge=0, description="Replaces the config's.")


class GRPOParams(Section):
    """``charlie grpo``: which GRPO config runs, and the pipeline's paths (null: the config's)."""

    config: Path = Field(
        Path("configs/grpo_tiny_cpu.yaml"), description="The GRPO config (configs/grpo_*.yaml)."
    )
    sft_model: Path | None = Field(
        Path("checkpoints/sft"),
        description="The SFT model GRPO starts from; replaces the config's (null: keep it).",
    )
    dataset_dir: Path | None = Field(
        Path("data/hf_datasets/sft_dataset"),
        description="The DatasetDict of prompts; replaces the config's (null: keep it).",
    )
    output_dir: Path | None = Field(
        Path("checkpoints/grpo"),
        description="Where the GRPO adapter goes; replaces the config's (null: keep it).",
    )


class EvaluateParams(Section):
    """``charlie evaluate``: which eval config the pipeline runs (its settings live there)."""

    config: Path = Field(Path("configs/eval_config.yaml"), description="The eval config file.")


class BacktestParams(Section):
    """``charlie backtest``: its paths; costs, sizing and the action mapping are in ``config``."""

    eval_csv: Path = Field(
        Path("results/eval_results.csv"), description="Predictions from `charlie evaluate`."
    )
    config: Path = Field(
        Path("configs/backtest_config.yaml"), description="Costs, sizing and action mapping."
    )
    out: Path = Field(
        Path("backtests/baseline.csv"),
        description="The daily CSV; the other outputs are named after its stem, beside it.",
    )


class CompareParams(Section):
    """``charlie compare``: two models' evaluations (and backtests) on the same rows."""

    config: Path = Field(
        Path("configs/eval_config.yaml"),
        description="The eval config: forward windows, bootstrap settings and the strategy.",
    )
    baseline: str = Field("sft", min_length=1, description="The baseline model's name.")
    candidate: str = Field("grpo", min_length=1, description="The candidate model's name.")
    baseline_eval: Path = Field(
        Path("results/eval_results.csv"), description="The baseline's eval_results.csv."
    )
    candidate_eval: Path = Field(
        Path("results/grpo/eval_results.csv"), description="The candidate's eval_results.csv."
    )
    baseline_backtest: Path | None = Field(
        Path("backtests/baseline.csv"),
        description="The baseline's backtest daily CSV (null or '': the evaluations only).",
    )
    candidate_backtest: Path | None = Field(
        Path("backtests/grpo/baseline.csv"),
        description="The candidate's backtest daily CSV (null or '': the evaluations only).",
    )

    @field_validator("baseline_backtest", "candidate_backtest", mode="before")
    @classmethod
    def _no_backtest(cls, value: object) -> object:
        """``--candidate-backtest ''`` (or null) as a flag says none, as null does in YAML."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "null") else value

    out: Path = Field(
        Path("results/compare/comparison.md"),
        description="The report; comparison.json, compare_headline.json and the equity plot "
        "go beside it.",
    )


def train_settings(params: Params) -> dict[str, tuple[Any, str]]:
    """What params.yaml's ``train`` section sets in the training config (see TrainParams)."""
    return {key: (getattr(params.train, key), f"params.yaml train.{key}")
            for key in ("dataset_dir", "output_dir", *HYPERPARAMETERS)}  # fmt: skip


HYPERPARAMETERS = ("learning_rate", "num_train_epochs", "lora_r", "lora_alpha", "max_length",
                   "seed")  # fmt: skip
"""params.yaml ``train`` keys that replace the training config's when set (DVC params)."""


class Params(Section):
    """The whole ``params.yaml``: one section per stage."""

    sample: SampleParams = SampleParams()
    parse: ParseParams = ParseParams()
    prices: PricesParams = PricesParams()
    dataset: DatasetParams = DatasetParams()
    init_model: InitModelParams = InitModelParams()
    train: TrainParams = TrainParams()
    grpo: GRPOParams = GRPOParams()
    evaluate: EvaluateParams = EvaluateParams()
    backtest: BacktestParams = BacktestParams()
    compare: CompareParams = CompareParams()


def _seed_aliases() -> dict[str, tuple[str, ...]]:
    """The seed's .env names (TRAIN_END_DATE, ...) for the fields that declare one."""
    aliases = {}
    for section, field in Params.model_fields.items():
        model = field.annotation
        for key, info in model.model_fields.items():  # type: ignore[union-attr]
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "env" in extra:
                aliases[str(extra["env"])] = (section, key)
    return aliases


def load_params(
    path: Path | str | argparse.Namespace = DEFAULT_PARAMS,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | argparse.Namespace | None = None,
) -> Params:
    """Load and validate ``params.yaml`` with environment and command-line overrides.

    Args:
        path: The params file (a missing file means "all defaults"), or a stage's parsed
            arguments: their ``--params`` file, with their flags as the overrides.
        env: Environment to read ``CHARLIE_<SECTION>__<KEY>`` overrides from (default
            ``os.environ``).
        overrides: The parsed arguments of a stage whose flags :func:`add_flags` made (every
            params section's flags are taken), or dotted keys (``"parse.strict"``); ``None``
            values are ignored so unset flags fall through.

    Returns:
        The validated parameters.

    Raises:
        ConfigError: One sentence naming the offending key, where it came from, and what is
            allowed.
    """
    if isinstance(path, argparse.Namespace):
        path, overrides = getattr(path, "params", None) or DEFAULT_PARAMS, path
    path = Path(path)
    data = _read_yaml(path) if path.is_file() else {}
    sources: dict[tuple[str, ...], str] = {}

    env = os.environ if env is None else env
    for name, keys in _seed_aliases().items():
        if env.get(name):
            _set(data, keys, env[name])
            sources[keys] = f"environment variable {name}"
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or ENV_NESTING not in name:
            continue
        keys = tuple(k.lower() for k in name[len(ENV_PREFIX) :].split(ENV_NESTING))
        _set(data, keys, value)
        sources[keys] = f"environment variable {name}"
    for keys, (value, flag) in _flag_values(overrides, set(Params.model_fields)).items():
        _set(data, keys, value)
        sources[keys] = flag

    return _validate(Params, data, sources, str(path))


def load_config(
    path: Path | str,
    model: type[M],
    *,
    overrides: Mapping[str, Any] | argparse.Namespace | None = None,
    settings: Mapping[str, tuple[Any, str]] | None = None,
) -> M:
    """Load a stage's config file (``configs/*.yaml``) into its typed model.

    Precedence, highest first: ``overrides`` (flags), ``settings`` (params.yaml), the file.

    Args:
        path: The YAML file; it must exist.
        model: The :class:`Section` subclass that describes the file.
        overrides: The stage's parsed arguments (the flags :func:`add_flags` made for
            ``model`` under :data:`CONFIG`), or a mapping of its keys; ``None`` values fall
            through to the file.
        settings: Keys that params.yaml sets for the file, as ``(value, where)``; ``None``
            values fall through.

    Raises:
        ConfigError: The file is missing, is not YAML, or a key or value is not allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    data, sources = _read_yaml(path), {}
    for key, (value, where) in (settings or {}).items():
        if value is not None:
            data[key] = value
            sources[(key,)] = where
    if isinstance(overrides, Mapping):
        overrides = {f"{CONFIG}.{key}": value for key, value in overrides.items()}
    for keys, (value, flag) in _flag_values(overrides, {CONFIG}).items():
        data[keys[1]] = value
        sources[keys[1:]] = flag
    return _validate(model, data, sources, str(path))


# ---------------------------------------------------------------- command-line flags

CONFIG = "config"
"""The section name :func:`add_flags` files a stage's config-file fields under."""
_FLAGS = "_charlie_flags"  # argparse default: dest → the flag's name, for error messages


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    section: str,
    fields: Sequence[str] | Mapping[str, str] | None = None,
) -> None:
    """Declare command-line flags from a config section's fields: one declaration, no copies.

    Each flag takes its type from the field (a bool is ``--x/--no-x``, a Literal lists its
    choices, a list is comma-separated), its help from the field's description and shows the
    default; an unset flag is ``None`` and falls through to params.yaml or the config file.
    :func:`load_params` and :func:`load_config` take the parsed arguments as overrides.

    Args:
        parser: The stage's parser.
        model: The section (a params.yaml section, or a config file's model).
        section: Its name in params.yaml, or :data:`CONFIG` for the stage's --config file.
        fields: The fields to expose (default: every one a flag can set); a mapping
            ``{flag name: field}`` renames flags.
    """
    names = _field_names(model, fields)
    registered = dict(parser.get_default(_FLAGS) or {})
    for flag_name, key in names.items():
        info = model.model_fields[key]
        kwargs = _flag_kwargs(info)
        if kwargs is None:
            if fields is None:
                continue
            raise TypeError(f"{model.__name__}.{key} cannot be a command-line flag")
        flag, dest = f"--{flag_name.replace('_', '-')}", f"{section}.{key}"
        where = (
            f"the --config file's {key}" if section == CONFIG else f"params.yaml {section}.{key}"
        )
        default = "" if info.is_required() else f"; {_shown(info.default)} if unset"
        text = (info.description or key.replace("_", " ").capitalize() + ".").replace("%", "%%")
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "metavar" in extra and "metavar" in kwargs:
            kwargs["metavar"] = str(extra["metavar"])
        parser.add_argument(flag, dest=dest, default=None, help=f"{text} (default: {where}{default})",
                            **kwargs)  # fmt: skip
        registered[dest] = flag
    parser.set_defaults(**{_FLAGS: registered})


def _field_names(
    model: type[BaseModel], fields: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    if fields is None:
        return {key: key for key in model.model_fields}
    if isinstance(fields, Mapping):
        return dict(fields)
    return {key: key for key in fields}


def _flag_kwargs(info: FieldInfo) -> dict[str, Any] | None:
    """argparse keywords for a field, or None when a flag cannot set it (a nested section)."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) != 1:
            # A number or a word (max_length: 512 or auto) is passed on as text, which the
            # field's own validation reads; other unions cannot be flags.
            literals = [a for a in options if typing.get_origin(a) is Literal]
            numbers = [a for a in options if a in (int, float)]
            if not numbers or len(numbers) + len(literals) != len(options):
                return None
            words = [str(w) for a in literals for w in typing.get_args(a)]
            return {"metavar": "|".join(["N", *words])}
        annotation = options[0]
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation, "metavar": "N"}
    if origin is Literal:
        return {"choices": [str(c) for c in typing.get_args(annotation)]}
    if origin is list and typing.get_args(annotation)[0] in (int, float, str):
        return {"type": _comma_list, "metavar": "A,B,..."}
    if annotation in (str, Path, dt.date):
        return {"metavar": {Path: "PATH", dt.date: "YYYY-MM-DD"}.get(annotation, "TEXT")}
    return None


def auto_or_count(value: object, name: str, unit: str) -> int | str:
    """``auto``, or a whole number of ``unit`` >= 1 (also as text, as a flag or variable gives it).

    Raises:
        ValueError: Anything else, naming ``name`` (pydantic turns it into one sentence).
    """
    text = str(value).strip()
    if text == "auto":
        return "auto"
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be auto or a whole number of {unit} >= 1")
    return int(text)


def positive(value: str) -> int:
    """An argparse type for a count that must be at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def switch(value: str) -> bool:
    """An argparse type for ``--flag=VALUE`` as a pipeline passes it: true/false, 1/0, yes/no."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def refuse_passthrough_keys(
    given: Iterable[str],
    known: Iterable[str],
    ours: Iterable[str],
    charlie_sets: Mapping[str, str],
    *,
    config: str,
    target: str,
    see: str,
) -> None:
    """Refuse, in one sentence, a key a config file passes through to a library's arguments
    (``target``: ``trl.SFTConfig``, ``trl.GRPOConfig``) that is not one of its ``known``
    fields (naming the closest of ``known`` and ``ours``), or that Charlie sets itself
    (``charlie_sets``: key -> why)."""
    given = list(given)
    clash = [k for k in given if k in charlie_sets]
    if clash:
        raise CharlieError(
            f"the {config} sets {clash[0]}, which Charlie sets itself "
            f"({charlie_sets[clash[0]]}): remove it."
        )
    known = set(known)
    unknown = sorted(set(given) - known)
    if unknown:
        names = [*known, *ours]
        hints = "; ".join(f"'{k}'{did_you_mean(k, names)}" for k in unknown)
        raise CharlieError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in the {config}: {hints}: "
            f"neither Charlie's (see {see}) nor a {target} field."
        )


def add_resume_flags(parser: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--no-resume`` (dest ``resume``: True, False, or None when neither), for
    the stages that checkpoint (train, grpo)."""
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_const", const=True, dest="resume",
        help="continue from the latest checkpoint (error if there is none)",
    )  # fmt: skip
    resume.add_argument(
        "--no-resume", action="store_const", const=False, dest="resume",
        help="start over even if checkpoints exist (default: continue when one exists)",
    )  # fmt: skip


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if value == "":
        return "empty"
    return "none" if value is None else str(value)


def _flag_values(
    overrides: Mapping[str, Any] | argparse.Namespace | None, sections: set[str]
) -> dict[tuple[str, ...], tuple[Any, str]]:
    """Dotted keys of ``sections`` → (value, where it came from), unset values left out."""
    if overrides is None:
        return {}
    if isinstance(overrides, argparse.Namespace):
        flags = getattr(overrides, _FLAGS, None) or {}
        items = [(dest, getattr(overrides, dest), flag) for dest, flag in flags.items()]
    else:
        items = [(k, v, f"--{k.split('.')[-1].replace('_', '-')}") for k, v in overrides.items()]
    out = {}
    for dotted, value, flag in items:
        keys = tuple(dotted.split("."))
        if value is not None and keys[0] in sections:
            out[keys] = (value, flag)
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without aliases: ``*name`` refers back to an anchor, and nine of them nested
    nine deep (a "billion laughs") make a document that validation walks for minutes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"alias at line {mark.line + 1}")
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text.") from None
    try:
        loaded = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        if str(exc).startswith("alias at line"):
            raise ConfigError(f"{path}: YAML aliases (*name) are not allowed ({exc}); write "
                              "the value out.") from None  # fmt: skip
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}.") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path} must be a mapping of keys, not {type(loaded).__name__}.")
    return loaded or {}


def _validate(
    model: type[M], data: dict[str, Any], sources: Mapping[tuple[str, ...], str], source: str
) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_sentence(model, exc, sources, source)) from None


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _one_sentence(
    model: type[BaseModel],
    exc: ValidationError,
    sources: Mapping[tuple[str, ...], str],
    default_source: str,
) -> str:
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc) or "(top level)"
    # an unknown section is reported at its own key: the variable that set a key below it
    below = [where for keys, where in sources.items() if keys[: len(loc)] == loc]
    source = sources.get(loc) or (below[0] if below else default_source)
    more = len(exc.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"])
        hint = did_you_mean(loc[-1], allowed) if loc else ""
        return (f"{source}: unknown key '{key}'{hint}; allowed keys here are: "
                f"{', '.join(allowed)}{tail}.")  # fmt: skip
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "model_type" or not loc:
        return f"{source}: section '{key}' is invalid: {message}{tail}."
    return f"{source}: '{key}' = {error['input']!r} is not allowed: {message}{tail}."
