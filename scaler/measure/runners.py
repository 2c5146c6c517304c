"""The runtimes a latency is measured with: one :class:`Runner` class per backend, in a registry.

- ``torch`` (:class:`TorchRunner`, :class:`TorchCudaRunner` on CUDA): eager PyTorch under
  ``torch.inference_mode``. CPU runs are timed with ``time.perf_counter`` around each call; CUDA
  runs with a pair of CUDA events around each call.
- ``cudagraph`` (:class:`CudaGraphRunner`, CUDA only): the forward captured once in a
  ``torch.cuda.CUDAGraph``; replays are timed with CUDA events.
- ``onnxruntime`` (:class:`OnnxRuntimeRunner`): the network exported to ONNX
  (:mod:`scaler.measure.onnx_export`) and run by an ``InferenceSession`` on the CPU or CUDA
  execution provider; checked once against PyTorch's output.
- ``tensorrt`` (:class:`TensorRTRunner`, CUDA only, needs TensorRT): an engine built from the same
  ONNX model.

A runner is built once per measurement from the prepared network, input and settings
(:meth:`Runner.create`), warmed up, asked for one timed forward pass per sample
(:meth:`Runner.time_once`) and closed. :data:`RUNNERS` maps each backend name to its class, in the
order :func:`register_runner` saw them; :data:`scaler.measure.BACKENDS` is its keys.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from scaler.errors import UserError
from scaler.measure.onnx_export import ONNX_OPSET, OutputMismatch, check_output, onnx_bytes

if TYPE_CHECKING:
    from scaler.measure.settings import LatencySettings

__all__ = [
    "OUTPUT_ATOL",
    "OUTPUT_RTOL",
    "RUNNERS",
    "CudaEvents",
    "CudaGraphRunner",
    "OnnxRuntimeRunner",
    "Runner",
    "TensorRTRunner",
    "TorchCudaRunner",
    "TorchRunner",
    "check_runtime_output",
    "get_runner",
    "import_backend",
    "register_runner",
]

# Largest allowed |runtime - torch| relative to max |torch output|: generous enough for TF32 and
# reduced precision, tight enough that a wrong graph (missing path, wrong resize) fails.
OUTPUT_RTOL = {"fp32": 1e-2, "fp16": 5e-2, "bf16": 1e-1}
OUTPUT_ATOL = 1e-5


class Runner:
    """Runs one forward pass per :meth:`time_once` call and returns its time in ms.

    Subclasses take ``(model, x, settings)``: the prepared network (device, dtype and memory format
    already applied), its input, and the resolved :class:`~scaler.measure.LatencySettings`. They
    implement :meth:`run` and :meth:`time_once`, say what they add to the fingerprint
    (:meth:`fingerprint_fields`) and how a result names them (:meth:`runtime_label`), and set
    ``output_max_abs_diff`` when they check their output against PyTorch's.
    """

    output_max_abs_diff: float | None = None
    backend: ClassVar[str] = ""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        raise NotImplementedError

    @classmethod
    def create(cls, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> Runner:
        """The runner for this backend on ``settings.device``; by default an instance of ``cls``."""
        return cls(model, x, settings)

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        """What this runtime adds to a fingerprint (its version and timer), in fingerprint order."""
        raise NotImplementedError

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        """How :meth:`LatencyResult.describe_setup` names this runtime."""
        raise NotImplementedError

    def warm_up(self, n: int) -> None:
        for _ in range(n):
            self.run()

    def run(self) -> None:
        raise NotImplementedError

    def time_once(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Drop every reference to models, tensors, sessions and graphs."""
        self.__dict__.clear()


RUNNERS: dict[str, type[Runner]] = {}
_R = TypeVar("_R", bound=type[Runner])


def register_runner(backend: str) -> Callable[[_R], _R]:
    """Class decorator: register a :class:`Runner` subclass as the runner of ``backend``.

    Raises:
        ValueError: ``backend`` already has a runner.
    """

    def register(cls: _R) -> _R:
        if backend in RUNNERS:
            raise ValueError(f"latency backend {backend!r} is already registered ({RUNNERS[backend].__name__})")
        cls.backend = backend
        RUNNERS[backend] = cls
        return cls

    return register


def get_runner(backend: str) -> type[Runner]:
    """The runner class registered for ``backend``.

    Raises:
        UserError: No runner has that name; the message lists those that do.
    """
    try:
        return RUNNERS[backend]
    except (KeyError, TypeError):
        raise UserError(f"unknown latency backend {backend!r}; choose one of {', '.join(RUNNERS)}") from None


def import_backend(backend: str) -> Any:
    """The Python module a backend needs (``None`` for the torch backends).

    Raises:
        UserError: It is not installed; the message says how to install it.
    """
    if backend == "onnxruntime":
        try:
            return importlib.import_module("onnxruntime")
        except ImportError:
            raise UserError(
                "onnxruntime is not installed; install it with: pip install 'lps-scaler[onnx]' "
                "(onnxruntime-gpu for the CUDA provider)"
            ) from None
    if backend == "tensorrt":
        try:
            return importlib.import_module("tensorrt")
        except ImportError:
            raise UserError(
                "TensorRT is not installed: the 'tensorrt' backend needs NVIDIA TensorRT on a machine with an "
                "NVIDIA GPU (pip install tensorrt); use --backend onnxruntime or torch instead"
            ) from None
    return None


def _module_version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # absent or broken install: the caller reports it where it matters
        return None


def check_runtime_output(out: torch.Tensor, ref: torch.Tensor, settings: LatencySettings, runtime: str) -> float:
    """The largest |out - ref| of a runtime against PyTorch, within :data:`OUTPUT_RTOL` at the settings' dtype.

    Raises:
        UserError: Another shape, or a larger difference: its timing would not be of the same network.
    """
    try:
        return check_output(runtime, out, ref, atol=OUTPUT_ATOL, rtol=OUTPUT_RTOL[settings.dtype]).max_abs_diff
    except OutputMismatch as e:
        if e.shape_differs:
            raise UserError(str(e)) from None
        raise UserError(
            f"{e} at {settings.dtype}; its timing would not be of the same network, so it is not reported"
        ) from None


class CudaEvents:
    """A pair of CUDA events around a callable on ``stream``; the stream is idle before each run."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], Any]) -> float:
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        # Waiting on the end event also leaves the stream idle for the next sample, so no run
        # overlaps another and each time covers one run from launch to completion.
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


def _torch_fields(settings: LatencySettings) -> dict[str, Any]:
    return {"backend_version": torch.__version__, "timer": "cuda_event" if settings.is_cuda else "perf_counter"}


@register_runner("torch")
class TorchRunner(Runner):
    """Eager PyTorch on the CPU, timed with ``perf_counter``; :meth:`create` gives :class:`TorchCudaRunner` on CUDA."""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        self.model, self.x = model, x

    @classmethod
    def create(cls, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> Runner:
        if settings.is_cuda and not issubclass(cls, TorchCudaRunner):
            return TorchCudaRunner(model, x, settings)
        return cls(model, x, settings)

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        return _torch_fields(settings)

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        return f"torch {fingerprint['backend_version']} eager"

    def run(self) -> None:
        self.model(self.x)

    def time_once(self) -> float:
        model, x = self.model, self.x
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * 1e3


class TorchCudaRunner(TorchRunner):
    """Eager PyTorch on CUDA, timed with CUDA events (the ``torch`` backend on a GPU)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        self.model, self.x = model, x
        self.events = CudaEvents(torch.cuda.current_stream(x.device))

    def warm_up(self, n: int) -> None:
        # At least one run: with cudnn.benchmark the first call at a shape tries every algorithm.
        super().warm_up(max(1, n))
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.run)


@register_runner("cudagraph")
class CudaGraphRunner(Runner):
    """The forward captured once in a CUDA graph (after ``settings.warmup`` runs, at least one); replays are timed."""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        device = x.device
        # The graph reads the parameters' and input's memory by address: keep both alive.
        self.model, self.x = model, x
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Capture needs warmed-up kernels (cudnn.benchmark's trials and lazy inits must not run
        # while capturing), done on a side stream as the CUDA-graph docs prescribe.
        with torch.cuda.stream(side):
            for _ in range(max(1, settings.warmup)):
                model(x)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            self.out = model(x)
        torch.cuda.synchronize(device)
        self.events = CudaEvents(torch.cuda.current_stream(device))

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        return _torch_fields(settings)

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        return f"torch {fingerprint['backend_version']} CUDA graph"

    def run(self) -> None:
        self.graph.replay()

    def warm_up(self, n: int) -> None:
        super().warm_up(max(1, n))
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.graph.replay)

    def close(self) -> None:
        if "graph" in self.__dict__:
            torch.cuda.synchronize(self.x.device)
            self.graph.reset()
        super().close()


_NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16"}


@register_runner("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """An onnxruntime session on the CPU or CUDA execution provider, checked against PyTorch's output."""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        import numpy as np

        s = settings
        ort = import_backend("onnxruntime")
        ref = model(x)
        onnx_model = onnx_bytes(model, x)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(s.threads or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if s.is_cuda:
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": x.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(onnx_model, sess_options=so, providers=providers)
        del onnx_model
        wanted = "CUDAExecutionProvider" if s.is_cuda else "CPUExecutionProvider"
        if self.session.get_providers()[0] != wanted:
            raise UserError(f"onnxruntime did not start its {wanted} (got {self.session.get_providers()})")
        self.input_name = self.session.get_inputs()[0].name
        self.cuda = s.is_cuda
        if self.cuda:
            self.x = x.contiguous()
            self.out = torch.empty_like(ref).contiguous()
            elem = getattr(np, _NUMPY_DTYPES[s.dtype])
            index = x.device.index or 0
            self.binding = self.session.io_binding()
            self.binding.bind_input(self.input_name, "cuda", index, elem, tuple(self.x.shape), self.x.data_ptr())
            self.binding.bind_output(
                self.session.get_outputs()[0].name, "cuda", index, elem, tuple(self.out.shape), self.out.data_ptr()
            )
            torch.cuda.synchronize(x.device)
            self.run()
            out = self.out
        else:
            self.feed = {self.input_name: x.detach().cpu().numpy()}
            out = torch.from_numpy(self.session.run(None, self.feed)[0])
        self.output_max_abs_diff = check_runtime_output(out, ref, s, f"onnxruntime {ort.__version__}")

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        return {
            "backend_version": _module_version("onnxruntime"),
            "execution_provider": "CUDAExecutionProvider" if settings.is_cuda else "CPUExecutionProvider",
            "onnx_opset": ONNX_OPSET,
            "timer": "perf_counter",
        }

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        return f"onnxruntime {fingerprint['backend_version']} {fingerprint.get('execution_provider')}"

    def run(self) -> None:
        if self.cuda:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.session.run(None, self.feed)

    def time_once(self) -> float:
        # Wall clock: session.run returns once the outputs are ready, on the CPU and (after the
        # provider's stream sync) on CUDA, and onnxruntime's own stream is not torch's.
        t0 = time.perf_counter()
        self.run()
        return (time.perf_counter() - t0) * 1e3


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


@register_runner("tensorrt")
class TensorRTRunner(Runner):
    """A TensorRT engine built from the exported ONNX model (fp32 input; fp16/bf16 as builder flags)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        s = settings
        trt = import_backend("tensorrt")
        device = x.device
        # The engine takes fp32 input; reduced precision is a builder flag, not the ONNX dtypes.
        model32 = model.float()
        x32 = x.float().contiguous()
        ref = model32(x32)
        onnx_model = onnx_bytes(model32, x32)
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # gone (the only mode) in TRT 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_model):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT {trt.__version__} cannot parse the exported ONNX model: {errors}")
        config = builder.create_builder_config()
        if s.dtype != "fp32":
            flag = {"fp16": "FP16", "bf16": "BF16"}[s.dtype]
            if not hasattr(trt.BuilderFlag, flag):
                raise UserError(f"TensorRT {trt.__version__} has no {flag} mode; use fp32 or fp16")
            config.set_flag(getattr(trt.BuilderFlag, flag))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"TensorRT {trt.__version__} could not build an engine for this network")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        del serialized, onnx_model, parser, network, config, builder
        if not hasattr(self.engine, "num_io_tensors"):
            raise UserError(f"TensorRT {trt.__version__} is too old: the tensorrt backend needs TensorRT >= 8.5")
        self.context = self.engine.create_execution_context()
        self.x = x32
        self.out: torch.Tensor | None = None
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_tensor_address(name, self.x.data_ptr())
            else:
                dtype = _TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name]
                shape = tuple(self.engine.get_tensor_shape(name))
                self.out = torch.empty(shape, dtype=dtype, device=device)
                self.context.set_tensor_address(name, self.out.data_ptr())
        self.stream = torch.cuda.current_stream(device)
        self.events = CudaEvents(self.stream)
        self.run()
        torch.cuda.synchronize(device)
        assert self.out is not None
        self.output_max_abs_diff = check_runtime_output(self.out, ref, s, f"TensorRT {trt.__version__}")

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        return {"backend_version": _module_version("tensorrt"), "onnx_opset": ONNX_OPSET, "timer": "cuda_event"}

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        return f"TensorRT {fingerprint['backend_version']}"

    def run(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)

    def warm_up(self, n: int) -> None:
        super().warm_up(n)
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.run)
