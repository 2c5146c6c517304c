"""What a latency measurement is asked for (:class:`LatencySettings`) and what it gives (:class:`LatencyResult`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from models import SegArch, arch_from_dict
from scaler.device import parse_device
from scaler.errors import UserError
from scaler.measure.runners import RUNNERS, get_runner
from scaler.measure.stats import SPREAD_STATISTIC

__all__ = [
    "BACKENDS",
    "DEFAULT_LOAD_RETRIES",
    "DEFAULT_MAX_OTHERS_SHARE",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_QUIET_WAIT_S",
    "DEFAULT_TARGET_REL_SPREAD",
    "DEFAULT_TIME_CAP_S",
    "DEFAULT_WARMUP",
    "DTYPES",
    "LOAD_GUARD_KEYS",
    "LatencyResult",
    "LatencySettings",
]

# The backends that ship with lps-scaler, in the order their runners register.
BACKENDS = tuple(RUNNERS)
DTYPES = ("fp32", "fp16", "bf16")

DEFAULT_WARMUP = 5
DEFAULT_MIN_SAMPLES = 10
DEFAULT_MAX_SAMPLES = 200
DEFAULT_TARGET_REL_SPREAD = 0.05
DEFAULT_TIME_CAP_S = 10.0
DEFAULT_MAX_OTHERS_SHARE = 0.2
DEFAULT_LOAD_RETRIES = 2
DEFAULT_QUIET_WAIT_S = 10.0
# LatencySettings fields that say how to cope with a busy CPU (not in the fingerprint or the rule).
LOAD_GUARD_KEYS = ("max_others_share", "load_retries", "quiet_wait_s")


@dataclasses.dataclass(frozen=True)
class LatencySettings:
    """What to measure and how: everything :func:`measure_latency` takes besides the network.

    Args:
        input_hw: Image height and width.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch: Images per forward pass.
        dtype: ``fp32``, ``fp16`` (CUDA only) or ``bf16``.
        backend: A registered runner (:data:`scaler.measure.RUNNERS`): one of :data:`BACKENDS` unless
            more were registered.
        threads: CPU threads (``torch.set_num_threads`` and onnxruntime's intra-op threads);
            ``None`` keeps torch's current count, which is recorded.
        channels_last: Run the torch backends in channels_last memory format.
        include_upsample: Time the final upsample of the logits to the input size too (the paper
            times up to the head's logits, the default).
        deploy: Time the deploy form (BatchNorm folded into the convs); ``False`` times the train
            form in eval mode.
        warmup: Untimed runs before sampling.
        min_samples: Fewest samples before the stopping rule may call the median stable.
        max_samples: Most samples.
        target_rel_spread: Stop once IQR / median of the samples is at most this.
        time_cap_s: Stop sampling after this many seconds (warm-up and building not counted); at
            least one sample is always taken.
        max_others_share: CPU only: the share (0-1) of all CPUs other processes may use while a
            measurement runs. Above it the measurement is taken again after waiting for a quiet
            machine; one still taken under load is flagged (``under_load``) and never cached.
            ``None`` turns the check off. Changes how a measurement is taken, not what it measures.
        load_retries: Measurements taken again at most, when others were busy.
        quiet_wait_s: Longest wait for a quiet machine before each such repeat.

    Raises:
        UserError: A value is malformed or out of range; the message names it.
    """

    input_hw: tuple[int, int]
    device: str = "cpu"
    batch: int = 1
    dtype: str = "fp32"
    backend: str = "torch"
    threads: int | None = None
    channels_last: bool = False
    include_upsample: bool = False
    deploy: bool = True
    warmup: int = DEFAULT_WARMUP
    min_samples: int = DEFAULT_MIN_SAMPLES
    max_samples: int = DEFAULT_MAX_SAMPLES
    target_rel_spread: float = DEFAULT_TARGET_REL_SPREAD
    time_cap_s: float = DEFAULT_TIME_CAP_S
    max_others_share: float | None = DEFAULT_MAX_OTHERS_SHARE
    load_retries: int = DEFAULT_LOAD_RETRIES
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S

    def __post_init__(self) -> None:
        hw = self.input_hw
        if (
            not isinstance(hw, (tuple, list))
            or len(hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw)
        ):
            raise UserError(f"input size must be two integers >= 1 (height, width), got {hw!r}")
        object.__setattr__(self, "input_hw", (int(hw[0]), int(hw[1])))
        get_runner(self.backend)  # an unknown backend is a UserError naming the registered ones
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        object.__setattr__(self, "device", parse_device(self.device))
        _check_int("batch", self.batch, 1)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        _check_int("warmup", self.warmup, 0)
        _check_int("min_samples", self.min_samples, 1)
        _check_int("max_samples", self.max_samples, 1)
        if self.max_samples < self.min_samples:
            raise UserError(f"max_samples ({self.max_samples}) must be >= min_samples ({self.min_samples})")
        for name in ("target_rel_spread", "time_cap_s", "quiet_wait_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UserError(f"{name} must be a number > 0, got {v!r}")
        _check_int("load_retries", self.load_retries, 0)
        share = self.max_others_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1
        ):
            raise UserError(f"max_others_share must be a number in [0, 1] or null, got {share!r}")

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def over_load_limit(self, others_share: float | None) -> bool:
        """Whether other processes' CPU share during a measurement was over ``max_others_share``.

        Always ``False`` on CUDA, with the check off, or when the share is unknown.
        """
        limit = None if self.is_cuda else self.max_others_share
        return limit is not None and others_share is not None and others_share > limit

    def rule(self) -> dict[str, Any]:
        """The stopping rule: settings that change the samples but not what is measured."""
        return {
            "warmup": self.warmup,
            "min_samples": self.min_samples,
            "max_samples": self.max_samples,
            "target_rel_spread": float(self.target_rel_spread),
            "time_cap_s": float(self.time_cap_s),
            "spread_statistic": SPREAD_STATISTIC,
        }


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """One latency measurement. Times are per forward pass of a whole batch, in milliseconds.

    ``rel_spread`` is IQR / median; ``stable`` says whether it fell under the target
    (``stop_reason`` is then ``"stable"``) or sampling stopped at ``"max_samples"`` or
    ``"time_cap"``. ``fingerprint`` names what was measured; ``fingerprint["include_upsample"]``
    says whether the final upsample is in the time. Do not mutate ``fingerprint``.
    ``others_cpu_share`` is the share of all CPUs that other processes used while it was measured
    (``None``: unknown); ``under_load`` says it was over the settings' ``max_others_share`` even
    after waiting, so the times are likely inflated (such a result is not cached).
    """

    arch: SegArch
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    n_samples: int
    samples_ms: tuple[float, ...]
    rel_spread: float
    stable: bool
    stop_reason: str
    rule: dict[str, Any]
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    cache_key: str
    measured_at: str
    elapsed_s: float
    output_max_abs_diff: float | None = None
    from_cache: bool = False
    others_cpu_share: float | None = None
    under_load: bool = False
    load_retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; :meth:`from_dict` inverts it."""
        return {
            "arch": self.arch.to_dict(),
            "arch_hash": self.arch.arch_hash(),
            "inline": self.arch.inline(),
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "iqr_ms": self.iqr_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "n_samples": self.n_samples,
            "rel_spread": self.rel_spread,
            "stable": self.stable,
            "stop_reason": self.stop_reason,
            "rule": dict(self.rule),
            "fingerprint": dict(self.fingerprint),
            "fingerprint_hash": self.fingerprint_hash,
            "cache_key": self.cache_key,
            "measured_at": self.measured_at,
            "elapsed_s": self.elapsed_s,
            "output_max_abs_diff": self.output_max_abs_diff,
            "from_cache": self.from_cache,
            "others_cpu_share": self.others_cpu_share,
            "under_load": self.under_load,
            "load_retries": self.load_retries,
            "samples_ms": list(self.samples_ms),
        }

    def describe_setup(self) -> str:
        """One line naming device, runtime, threads, dtype, input, network form and final upsample."""
        fp = self.fingerprint
        if str(fp["device"]).startswith("cuda"):
            device = f"{fp['device_name']} ({fp['device']}, CUDA {fp['cuda']}, cuDNN {fp['cudnn']})"
        else:
            device = f"{fp['device_name']} (cpu, {fp['logical_cpus']} logical CPUs)"
        runtime = get_runner(fp["backend"]).runtime_label(fp)
        layout = ", channels_last" if fp["channels_last"] else ""
        form = "deploy form (BatchNorm folded)" if fp["deploy"] else "train form (BatchNorm, eval mode)"
        upsample = "up to the head's logits (no final upsample)"
        if fp["include_upsample"]:
            upsample = "with the final upsample"
        shape = "x".join(map(str, fp["input_shape"]))
        return f"{device}; {runtime}, {fp['threads']} threads; {fp['dtype']}{layout}; input {shape}; {form}; {upsample}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such output.
        """
        return cls(
            arch=arch_from_dict(data["arch"]),
            median_ms=float(data["median_ms"]),
            p10_ms=float(data["p10_ms"]),
            p90_ms=float(data["p90_ms"]),
            iqr_ms=float(data["iqr_ms"]),
            mean_ms=float(data["mean_ms"]),
            min_ms=float(data["min_ms"]),
            n_samples=int(data["n_samples"]),
            samples_ms=tuple(float(v) for v in data["samples_ms"]),
            rel_spread=float(data["rel_spread"]),
            stable=bool(data["stable"]),
            stop_reason=str(data["stop_reason"]),
            rule=dict(data["rule"]),
            fingerprint=dict(data["fingerprint"]),
            fingerprint_hash=str(data["fingerprint_hash"]),
            cache_key=str(data["cache_key"]),
            measured_at=str(data["measured_at"]),
            elapsed_s=float(data["elapsed_s"]),
            output_max_abs_diff=None if data.get("output_max_abs_diff") is None else float(data["output_max_abs_diff"]),
            from_cache=bool(data.get("from_cache", False)),
            others_cpu_share=None if data.get("others_cpu_share") is None else float(data["others_cpu_share"]),
            under_load=bool(data.get("under_load", False)),
            load_retries=int(data.get("load_retries", 0)),
        )
